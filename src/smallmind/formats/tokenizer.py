"""Tokenizers: character-level and byte-level BPE, each saved as one JSON file.

The file records its kind, so `load_tokenizer` needs no other hint:
  {"format": "smallmind-tokenizer", "version": 1, "kind": "char", "chars": [...]}
  {"format": "smallmind-tokenizer", "version": 1, "kind": "bpe", "tokenizer": {<HF tokenizers JSON>}}

Both decode any list of valid ids without raising, including a prefix that ends inside a
multi-byte character (BPE gives U+FFFD there), so a generator can decode a growing list.
"""

import json
from pathlib import Path

import numpy as np

from ..errors import TokenizerError

FORMAT = "smallmind-tokenizer"
VERSION = 1
KINDS = ("char", "bpe")
# The byte-level alphabet: a BPE vocabulary is these 256 symbols plus its merges.
BYTE_ALPHABET_SIZE = 256
# BPE encodes long text in chunks that end at a newline followed by a non-space character:
# no GPT-2 pre-token spans such a point, so chunked ids equal whole-text ids.
ENCODE_CHUNK_CHARS = 1 << 16


class Tokenizer:
    """What every tokenizer offers: .kind, .vocab_size, .encode, .decode, .token_bytes, .save.

    These tokenizers have no special tokens: no BOS (add_bos and special are accepted, and
    change nothing, so that the runtime drives them like a GGUF file's tokenizer) and no
    end-of-generation token."""

    kind: str
    bos_id = None
    eos_id = None
    eog_ids = frozenset()
    add_bos = False

    def save(self, path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, **self.to_dict()})


class CharTokenizer(Tokenizer):
    """One id per distinct character of the training text, in sorted code-point order."""

    kind = "char"

    def __init__(self, chars: list[str]):
        if len(chars) < 2 or sorted(set(chars)) != chars or any(len(c) != 1 for c in chars):
            raise TokenizerError("a char tokenizer needs at least 2 distinct single characters, sorted")
        self.chars = chars
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        self._table = np.array(chars, dtype="<U1")

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        return self.chars[token].encode("utf-8", errors="surrogatepass")

    def encode(self, text: str, add_bos: bool = False, special: bool = False) -> np.ndarray:
        # text (n chars) -> ids (n,) int32, by binary search of each code point in the sorted vocab
        # surrogatepass: a lone surrogate (undecodable bytes in argv) is reported as unknown below
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        np.minimum(ids, len(self._codes) - 1, out=ids)
        unknown = np.flatnonzero(self._codes[ids] != codes)
        if unknown.size:
            i = int(unknown[0])
            raise TokenizerError(
                f"cannot encode character {text[i]!r} (U+{ord(text[i]):04X}) at position {i}: "
                f"it is not in this char tokenizer's vocabulary")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        # ids (n,) int -> text of n characters
        ids = _checked_ids(ids, self.vocab_size)
        return "".join(self._table[ids].tolist())

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 pre-tokenization) backed by the HF `tokenizers` library."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        # the model indexes its embedding table by id: the ids must be exactly 0..vocab_size-1
        ids = sorted(hf_tokenizer.get_vocab(with_added_tokens=True).values())
        n = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        if ids != list(range(n)):
            beyond = [i for i in ids if not 0 <= i < n]
            missing = sorted(set(range(n)) - set(ids))
            raise TokenizerError(
                f"the BPE vocabulary's ids must be 0..{n - 1}, each once; "
                + (f"it holds id {beyond[0]}" if beyond else f"id {missing[0]} is missing"))
        self._hf = hf_tokenizer
        self._bytes = None

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size()

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        if self._bytes is None:
            byte_of = _byte_level_decoder()
            self._bytes = [bytes(byte_of[c] for c in self._hf.id_to_token(i)) for i in range(self.vocab_size)]
        return self._bytes[token]

    def encode(self, text: str, add_bos: bool = False, special: bool = False) -> np.ndarray:
        # text -> ids (n,) int32; long text is encoded in parallel chunks with identical result
        _refuse_surrogates(text)
        chunks = _split_for_encoding(text)
        encodings = self._hf.encode_batch(chunks, add_special_tokens=False)
        counts = [len(e.ids) for e in encodings]
        ids = np.empty(sum(counts), dtype=np.int32)
        start = 0
        for e, n in zip(encodings, counts):
            ids[start:start + n] = e.ids
            start += n
        return ids

    def decode(self, ids) -> str:
        # ids (n,) int -> text; a prefix ending inside a character decodes it as U+FFFD
        ids = _checked_ids(ids, self.vocab_size)
        return self._hf.decode(ids.tolist(), skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self._hf.to_str())}


def _byte_level_decoder() -> dict[str, int]:
    # GPT-2's byte-to-character table, inverted: printable Latin-1 bytes stand for themselves,
    # the other bytes, in order, for U+0100 onwards
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(0x100 + i): b for i, b in enumerate(others)})
    return table


def train_tokenizer(kind: str, text: str, vocab_size: int) -> Tokenizer:
    """A tokenizer for `text`. For "char" the vocabulary is the text's distinct characters
    (an error if there are more than vocab_size); for "bpe" it is at most vocab_size ids."""
    if kind == "char":
        chars = sorted(set(text))
        if len(chars) > vocab_size:
            raise TokenizerError(
                f"the text has {len(chars)} distinct characters, more than the vocabulary size "
                f"{vocab_size}; use the bpe tokenizer or a larger preset")
        return CharTokenizer(chars)
    if kind == "bpe":
        return _train_bpe(text, vocab_size)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")


def _train_bpe(text: str, vocab_size: int) -> BPETokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < BYTE_ALPHABET_SIZE + 1:
        raise TokenizerError(
            f"a byte-level BPE vocabulary needs more than {BYTE_ALPHABET_SIZE} ids, got {vocab_size}")
    if not text:
        raise TokenizerError("cannot train a tokenizer on empty text")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    hf.train_from_iterator(_split_for_encoding(text), trainer)
    return BPETokenizer(hf)


def _split_for_encoding(text: str) -> list[str]:
    # Cut after a "\n" that is followed by a non-whitespace character, about every
    # ENCODE_CHUNK_CHARS; without such a point the text stays whole.
    chunks, start = [], 0
    while len(text) - start > ENCODE_CHUNK_CHARS:
        cut = start + ENCODE_CHUNK_CHARS
        while True:
            cut = text.find("\n", cut)
            if cut < 0 or cut + 1 >= len(text) or not text[cut + 1].isspace():
                break
            cut += 1
        if cut < 0 or cut + 1 >= len(text):
            break
        chunks.append(text[start:cut + 1])
        start = cut + 1
    chunks.append(text[start:])
    return chunks


def _refuse_surrogates(text: str) -> None:
    # byte-level BPE encodes any real character; a lone surrogate (from undecodable bytes) has no bytes
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(
            f"cannot encode character {text[e.start]!r} at position {e.start}: it is not valid Unicode text") from None


def _checked_ids(ids, vocab_size: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise TokenizerError("decode expects a 1-D sequence of integer token ids")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise TokenizerError(f"token id {bad} is outside the vocabulary (size {vocab_size})")
    return ids


def load_tokenizer(path) -> Tokenizer:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from None
    return tokenizer_from_json(text, source=str(path))


def tokenizer_from_json(text: str, source: str = "tokenizer JSON") -> Tokenizer:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{source} is not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise TokenizerError(f"{source} is not a SmallMind tokenizer file")
    if d.get("version") != VERSION:
        raise TokenizerError(f"{source} has tokenizer format version {d.get('version')!r}; expected {VERSION}")
    kind = d.get("kind")
    if kind == "char":
        chars = d.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise TokenizerError(f"{source}: a char tokenizer needs a list of characters")
        return CharTokenizer(chars)
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return BPETokenizer(HFTokenizer.from_str(json.dumps(d.get("tokenizer"))))
        except Exception as e:  # the HF loader raises its own exception type for any malformed JSON
            raise TokenizerError(f"{source}: bad BPE tokenizer ({e})") from None
    raise TokenizerError(f"{source}: unknown tokenizer kind {kind!r}")
