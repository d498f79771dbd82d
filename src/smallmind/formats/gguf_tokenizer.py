"""The tokenizer of a GGUF model, built from its metadata, giving llama.cpp's ids and text.

`tokenizer_from_gguf(meta)` reads `tokenizer.ggml.*` and returns a GGUFTokenizer for
`tokenizer.ggml.model` = "llama" (SentencePiece-style, spm_merge) or "gpt2" (byte-level BPE,
gguf_bpe). Both share llama.cpp's outer rules, kept here:
  - special tokens: before the text tokenizer runs, the text is cut at special-token strings, the
    longest first. USER_DEFINED tokens are always cut out; CONTROL and UNKNOWN ones only when
    special=True (otherwise their text is tokenized like any other text).
  - output: a token contributes its text (SPM: U+2581 back to space, <0xXX> as its byte; BPE: the
    GPT-2 byte alphabet back to bytes); CONTROL and UNKNOWN tokens contribute nothing unless
    special=True. decode() is llama.cpp's detokenize (first leading space dropped when the vocabulary
    adds a space prefix; some BPE pre-tokenizers clean spaces before punctuation); token_bytes() is
    one token's raw piece, for streaming.
"""

import re

import numpy as np

from ..errors import TokenizerError
from .gguf_vocab import (ATTR_BYTE, ATTR_HIDDEN, ATTR_NORMAL, ATTR_SPECIAL_CANDIDATE,
                         ATTR_USER_DEFINED, KEY_ADD_BOS, KEY_MERGES, KEY_MODEL, KEY_PRE,
                         GGUFVocab, read_bool, read_vocab)
from .spm_merge import SPMMerger
from .string_array import compact_offsets

SPM_SPACE = "\u2581"
# Special tokens are found by a prefilter on their first PREFIX_CHARS characters: a token whose
# prefix is not among the text's substrings of that length cannot occur in it.
PREFIX_CHARS = 3
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def gpt2_byte_alphabet() -> dict:
    """GPT-2's printable stand-in character for each byte -> the byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class SpecialTokenIndex:
    """Special tokens eligible for matching, with a cheap test of which can occur in a text."""

    def __init__(self, tokens: list, ids: np.ndarray):
        # llama.cpp tries longer (in UTF-8 bytes) tokens first; equal lengths by id for stability
        order = sorted(ids.tolist(), key=lambda i: (-len(tokens[i].encode("utf-8")), i))
        self.rank = {i: r for r, i in enumerate(order)}
        self.short = [(tokens[i], i) for i in order if len(tokens[i]) < PREFIX_CHARS]
        self.by_prefix = {}
        for i in order:
            if len(tokens[i]) >= PREFIX_CHARS:
                self.by_prefix.setdefault(tokens[i][:PREFIX_CHARS], []).append((tokens[i], i))

    def present_in(self, text: str) -> list:
        """(text, id) of the tokens occurring in text, in llama.cpp's matching order."""
        found = [(t, i) for t, i in self.short if t in text]
        prefixes = {text[p:p + PREFIX_CHARS] for p in range(len(text) - PREFIX_CHARS + 1)}
        for prefix in prefixes & self.by_prefix.keys():
            found.extend((t, i) for t, i in self.by_prefix[prefix] if t in text)
        found.sort(key=lambda pair: self.rank[pair[1]])
        return found


class GGUFTokenizer:
    """encode/decode like llama.cpp for one GGUF vocabulary (see the module docstring)."""

    def __init__(self, vocab: GGUFVocab, pieces: tuple, add_bos: bool, clean_spaces: bool):
        # pieces: (blob, (n+1,) offsets), the bytes each token renders as when special output
        # is on, in one blob (a bytes object per token of a 262k vocabulary is 10 MB)
        self.vocab = vocab
        self.bos_id = vocab.bos_id
        self.eos_id = vocab.eos_id
        self.eog_ids = vocab.eog_ids
        self.add_bos = add_bos
        self.clean_spaces = clean_spaces
        # memoryviews: indexing one gives a Python int, several times faster than a NumPy scalar
        self.piece_blob, self.piece_offsets = pieces[0], memoryview(pieces[1])
        hidden = (vocab.attrs & ATTR_HIDDEN) != 0
        candidates = (vocab.attrs & ATTR_SPECIAL_CANDIDATE) != 0
        self.special_all = SpecialTokenIndex(vocab.tokens, np.nonzero(candidates)[0])
        self.special_user = SpecialTokenIndex(vocab.tokens, np.nonzero(candidates & ~hidden)[0])
        self.hidden = memoryview(hidden.view(np.uint8))   # id -> 1 if it renders only with special

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    def token_text(self, token_id: int) -> str:
        return self.vocab.tokens[self.check_id(token_id)]

    def check_id(self, token_id) -> int:
        if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)):
            raise TokenizerError(f"token id must be an integer, got {token_id!r}")
        if not 0 <= token_id < self.vocab.size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab.size - 1})")
        return int(token_id)

    def encode(self, text: str, add_bos: bool = False, special: bool = False) -> list:
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TokenizerError(f"text has a lone surrogate at character {exc.start}: not valid Unicode") from None
        ids = []
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("this vocabulary has no BOS token (tokenizer.ggml.bos_token_id)")
            ids.append(self.bos_id)
        parts = []
        after_special = True    # SPM adds its space prefix at the start and after special tokens
        for fragment in self.split_special(text, special):
            if isinstance(fragment, int):
                parts.append(fragment)
                after_special = True
            else:
                parts.append(self.prepare_text(fragment, after_special))
                after_special = False
        encoded = iter(self.encode_texts([p for p in parts if isinstance(p, str)]))
        for part in parts:
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(next(encoded))
        return ids

    def split_special(self, text: str, special: bool) -> list:
        """text -> fragments: str (plain text) or int (a special token's id), in order."""
        if not text:
            return []
        index = self.special_all if special else self.special_user
        fragments = [text]
        for token, token_id in index.present_in(text):
            cut = []
            for fragment in fragments:
                if isinstance(fragment, int) or token not in fragment:
                    cut.append(fragment)
                    continue
                for k, part in enumerate(fragment.split(token)):
                    if k:
                        cut.append(token_id)
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    def prepare_text(self, text: str, after_special: bool) -> str:
        """A plain-text fragment as the text tokenizer takes it."""
        raise NotImplementedError

    def encode_texts(self, texts: list) -> list:
        """Prepared fragments -> a list of ids for each."""
        raise NotImplementedError

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        token_id = self.check_id(token_id)
        if self.hidden[token_id] and not special:
            return b""
        return self.piece_blob[self.piece_offsets[token_id]:self.piece_offsets[token_id + 1]]

    def decode(self, ids, special: bool = False) -> str:
        # every piece gathered from the blob at once, not a bytes object per token
        ids = np.array([self.check_id(i) for i in ids], np.int64)
        offsets, hidden = np.asarray(self.piece_offsets), np.asarray(self.hidden)
        starts, ends = offsets[ids].astype(np.int64), offsets[ids + 1].astype(np.int64)
        if not special:
            ends = np.where(hidden[ids] != 0, starts, ends)
        # llama.cpp drops one leading space of the first token when it adds a space prefix
        if self.vocab.add_space_prefix and len(ids) and self.piece_blob[starts[0]:ends[0]][:1] == b" ":
            starts[0] += 1
        sizes = ends - starts
        at = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
        text = np.frombuffer(self.piece_blob, np.uint8)[at].tobytes()
        if self.clean_spaces:
            text = clean_up_spaces(text)
        return text.decode("utf-8", errors="replace")


def clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_spaces passes: ' ?' -> '?' (also !.,), " ' " -> "'", " 's" -> "'s" (also 'm 're 've)."""
    text = re.sub(rb" (?=[?!.,])", b"", text)
    text = re.sub(rb" ' ", b"'", text)
    return re.sub(rb" '(?=[sm]|re|ve)", b"'", text)


class SPMTokenizer(GGUFTokenizer):
    """tokenizer.ggml.model = "llama": spaces become U+2581, then score-ordered bigram merges."""

    def __init__(self, vocab: GGUFVocab, add_bos: bool):
        byte_ids = [vocab.lookup.get(f"<0x{b:02X}>") for b in range(256)]
        byte_ids = [vocab.lookup.get(chr(b)) if i is None and b < 128 else i for b, i in enumerate(byte_ids)]
        self.merger = SPMMerger(vocab.lookup, vocab.scores, byte_ids)
        super().__init__(vocab, spm_pieces(vocab), add_bos, clean_spaces=False)

    def prepare_text(self, text: str, after_special: bool) -> str:
        if self.vocab.add_space_prefix and after_special:
            text = " " + text
        return text.replace(" ", SPM_SPACE)

    def encode_texts(self, texts: list) -> list:
        return self.merger.encode(texts)


class BPETokenizer(GGUFTokenizer):
    """tokenizer.ggml.model = "gpt2": regex pre-tokenizer, GPT-2 byte alphabet, ranked merges."""

    def __init__(self, vocab: GGUFVocab, merges, add_bos: bool):
        # imported here: the tokenizers library is only needed for BPE vocabularies
        from .gguf_bpe import build_bpe, pre_tokenizer_for

        pre = pre_tokenizer_for(vocab.pre)
        # the tokenizers library keeps its own copy: this dict lives only while it is built
        self.bpe = build_bpe({t: i for i, t in enumerate(vocab.tokens)}, merges, pre)
        super().__init__(vocab, bpe_pieces(vocab), add_bos, clean_spaces=pre.clean_spaces)

    def prepare_text(self, text: str, after_special: bool) -> str:
        return text

    def encode_texts(self, texts: list) -> list:
        return [self.bpe.encode(text, add_special_tokens=False).ids for text in texts]


def byte_token_value(vocab: GGUFVocab, token_id: int) -> int:
    match = BYTE_TOKEN.fullmatch(vocab.tokens[token_id])
    if match is None:
        raise TokenizerError(f"tokenizer.ggml.token_type marks token {token_id} "
                             f"{vocab.tokens[token_id]!r} as BYTE, but it is not <0xXX>")
    return int(match.group(1), 16)


def spm_pieces(vocab: GGUFVocab) -> tuple:
    """(blob, offsets) of the rendered bytes of each id of an SPM vocabulary (llama.cpp's
    token_to_piece, special=True), made from the vocabulary's blob with NumPy, not a loop."""
    data = np.frombuffer(vocab.tokens.blob, np.uint8)
    offsets = vocab.tokens.offsets
    attrs = vocab.attrs
    # each token's rendering: its text as is, its text with U+2581 as a space, its byte, or nothing
    raw = (attrs & (ATTR_HIDDEN | ATTR_USER_DEFINED)) != 0
    normal = ~raw & ((attrs & ATTR_NORMAL) != 0)
    byte = ~raw & ~normal & ((attrs & ATTR_BYTE) != 0)
    sizes = np.diff(offsets)
    out = data.copy()
    keep = np.repeat(raw | normal, sizes)
    # U+2581 is E2 96 81 in UTF-8; a token is valid UTF-8, so the three bytes lie in one token
    space = np.flatnonzero((data[:-2] == 0xE2) & (data[1:-1] == 0x96) & (data[2:] == 0x81)
                           & np.repeat(normal, sizes)[:-2])
    out[space] = ord(" ")
    keep[space + 1] = False
    keep[space + 2] = False
    byte_ids = np.flatnonzero(byte)
    out[offsets[byte_ids]] = [byte_token_value(vocab, int(i)) for i in byte_ids]
    keep[offsets[byte_ids]] = True
    kept = np.zeros(len(data) + 1, np.int64)
    np.cumsum(keep, out=kept[1:])
    return out[keep].tobytes(), compact_offsets(kept[offsets])


def bpe_pieces(vocab: GGUFVocab) -> tuple:
    """(blob, offsets) of the rendered bytes of each id of a byte-level BPE vocabulary
    (llama.cpp's token_to_piece, special=True)."""
    to_byte = gpt2_byte_alphabet()
    pieces = []
    for token_id, (text, attr) in enumerate(zip(vocab.tokens, vocab.attrs.tolist())):
        if attr & (ATTR_HIDDEN | ATTR_USER_DEFINED):
            pieces.append(text.encode("utf-8"))
        elif attr & ATTR_NORMAL:
            pieces.append(gpt2_text_bytes(text, to_byte))
        elif attr & ATTR_BYTE:
            pieces.append(bytes([byte_token_value(vocab, token_id)]))
        else:
            pieces.append(b"")
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    return b"".join(pieces), compact_offsets(offsets)


def gpt2_text_bytes(text: str, to_byte: dict) -> bytes:
    try:
        return bytes(to_byte[c] for c in text)
    except KeyError:
        # llama.cpp's llama_decode_text marks each character outside the byte alphabet this way
        out = bytearray()
        for c in text:
            if c in to_byte:
                out.append(to_byte[c])
            else:
                out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        return bytes(out)


def tokenizer_from_gguf(meta) -> GGUFTokenizer:
    """The tokenizer described by a GGUF file's metadata (anything with .get(key, default))."""
    model = meta.get(KEY_MODEL)
    if model is None:
        raise TokenizerError(f"GGUF metadata has no {KEY_MODEL}: the file carries no tokenizer")
    pre = meta.get(KEY_PRE, "")
    if not isinstance(pre, str):
        raise TokenizerError(f"{KEY_PRE} must be a string, got {pre!r}")
    if model == "llama":
        vocab = read_vocab(meta, model, default_bos=1, default_eos=2, default_add_space_prefix=True)
        return SPMTokenizer(vocab, add_bos=read_bool(meta, KEY_ADD_BOS, True))
    if model == "gpt2":
        from .gguf_bpe import pre_tokenizer_for

        pre_row = pre_tokenizer_for(pre)
        vocab = read_vocab(meta, model, default_bos=11, default_eos=11, default_add_space_prefix=False)
        return BPETokenizer(vocab, meta.get(KEY_MERGES), read_bool(meta, KEY_ADD_BOS, pre_row.add_bos))
    raise TokenizerError(f"{KEY_MODEL} = {model!r} is not supported (SmallMind reads 'llama' and 'gpt2')")
