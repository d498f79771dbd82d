"""The vocabulary record of a GGUF file: token strings, scores, attributes and special ids.

Reads the `tokenizer.ggml.*` metadata the way llama.cpp's llama_vocab::load does, including its
text-based fix-ups (end-of-generation tokens found by their text and forced to CONTROL), so the
tokenizers built on top (SPM, byte-level BPE) see the same attributes llama.cpp's do. Bad metadata
raises TokenizerError naming the key.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import TokenizerError
from .string_array import StringArray
from .token_lookup import TokenLookup

KEY_MODEL = "tokenizer.ggml.model"
KEY_PRE = "tokenizer.ggml.pre"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_SCORES = "tokenizer.ggml.scores"
KEY_TOKEN_TYPE = "tokenizer.ggml.token_type"
KEY_MERGES = "tokenizer.ggml.merges"
KEY_ADD_BOS = "tokenizer.ggml.add_bos_token"
KEY_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"

# Token attributes: llama.cpp's llama_token_attr bit flags.
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
# GGUF token_type codes (NORMAL=1 ... BYTE=6) -> attributes; anything else is UNDEFINED (0).
TYPE_TO_ATTR = np.array([0, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED,
                         ATTR_UNUSED, ATTR_BYTE], dtype=np.int32)
# Tokens that may be matched as whole special tokens before the text tokenizer runs.
ATTR_SPECIAL_CANDIDATE = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN
# Tokens that render as nothing unless special output is asked for.
ATTR_HIDDEN = ATTR_CONTROL | ATTR_UNKNOWN

# End-of-turn / end-of-generation tokens llama.cpp recognises by their text (llama-vocab.cpp).
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
             "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
             "<end_of_utterance>")
EOM_TEXTS = ("<|eom_id|>",)
FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
FIM_SEP_TEXTS = ("<|file_sep|>",)
EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))
# gpt-oss channel markers llama.cpp always renders (it re-types them USER_DEFINED).
ALWAYS_RENDERED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


@dataclass
class GGUFVocab:
    """Everything about the vocabulary that does not depend on the tokenization algorithm."""

    model: str            # tokenizer.ggml.model: "llama" (SPM) or "gpt2" (byte-level BPE)
    pre: str              # tokenizer.ggml.pre ("" when absent)
    tokens: StringArray   # id -> vocabulary string (empty strings renamed as llama.cpp does)
    lookup: TokenLookup   # string -> id; a repeated string maps to its last id, as in llama.cpp
    scores: np.ndarray    # (n,) float32
    attrs: np.ndarray     # (n,) int32 llama_token_attr flags after llama.cpp's fix-ups
    bos_id: int | None
    eos_id: int | None
    eog_ids: frozenset
    add_space_prefix: bool

    @property
    def size(self) -> int:
        return len(self.tokens)


def read_tokens(meta) -> StringArray:
    # a GGUFFile gives a StringArray; metadata made in Python may give a list of str
    tokens = meta.get(KEY_TOKENS)
    if tokens is None:
        raise TokenizerError(f"GGUF metadata has no {KEY_TOKENS}: the file carries no vocabulary")
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        tokens = StringArray.from_strings(tokens)
    if not isinstance(tokens, StringArray) or len(tokens) == 0:
        raise TokenizerError(f"{KEY_TOKENS} must be a non-empty array of strings")
    empty = set(np.flatnonzero(np.diff(tokens.offsets) == 0).tolist())
    if empty:
        tokens = StringArray.from_strings([f"[EMPTY_{i}]" if i in empty else t for i, t in enumerate(tokens)])
    return tokens


def read_per_token_array(meta, key: str, n_tokens: int, dtype) -> np.ndarray | None:
    # (n_tokens,) dtype, or None when the key is absent
    values = meta.get(key)
    if values is None:
        return None
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):
        raise TokenizerError(f"{key} must be a numeric array") from None
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise TokenizerError(f"{key} must be a 1-D numeric array, got {array.dtype} shape {array.shape}")
    if len(array) != n_tokens:
        raise TokenizerError(f"{key} has {len(array)} entries but {KEY_TOKENS} has {n_tokens}")
    return array.astype(dtype, copy=False)   # a view of the file when it is stored as dtype


def read_bool(meta, key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise TokenizerError(f"{key} must be a boolean, got {value!r}")
    return bool(value)


def read_token_id(meta, name: str, default: int | None, n_tokens: int) -> int | None:
    """tokenizer.ggml.<name>_token_id, or llama.cpp's default (dropped when outside the vocab)."""
    key = f"tokenizer.ggml.{name}_token_id"
    value = meta.get(key)
    if value is None:
        return default if default is not None and default < n_tokens else None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TokenizerError(f"{key} must be an integer token id, got {value!r}")
    if not 0 <= value < n_tokens:
        raise TokenizerError(f"{key} = {value} is outside the vocabulary (0..{n_tokens - 1})")
    return int(value)


def first_id_with_text(lookup: TokenLookup, texts) -> int | None:
    # llama.cpp takes whichever its hash map yields first; the lowest id is the stable choice
    ids = [i for i in map(lookup.get, texts) if i is not None]
    return min(ids) if ids else None


def read_vocab(meta, model: str, default_bos: int | None, default_eos: int | None,
               default_add_space_prefix: bool) -> GGUFVocab:
    tokens = read_tokens(meta)
    n = len(tokens)
    lookup = TokenLookup(tokens)
    scores = read_per_token_array(meta, KEY_SCORES, n, np.float32)
    if scores is None:
        scores = np.zeros(n, dtype=np.float32)
    types = read_per_token_array(meta, KEY_TOKEN_TYPE, n, np.int64)
    if types is None:
        attrs = np.full(n, ATTR_NORMAL, dtype=np.int32)
    else:
        known = (types >= 0) & (types < len(TYPE_TO_ATTR))
        attrs = np.where(known, TYPE_TO_ATTR[np.where(known, types, 0)], 0).astype(np.int32)

    bos_id = read_token_id(meta, "bos", default_bos, n)
    eos_id = read_token_id(meta, "eos", default_eos, n)
    for name in ("unknown", "seperator", "padding", "mask"):
        read_token_id(meta, name, None, n)  # validated only: llama.cpp keeps them, we need none
    eog_ids = find_eog_ids(meta, tokens, lookup, attrs, eos_id)
    for text in ALWAYS_RENDERED_TEXTS:
        token_id = lookup.get(text)
        if token_id is not None:
            attrs[token_id] = ATTR_USER_DEFINED
    return GGUFVocab(
        model=model, pre=meta.get(KEY_PRE, "") or "", tokens=tokens, lookup=lookup,
        scores=scores, attrs=attrs, bos_id=bos_id, eos_id=eos_id, eog_ids=eog_ids,
        add_space_prefix=read_bool(meta, KEY_ADD_SPACE_PREFIX, default_add_space_prefix),
    )


def find_eog_ids(meta, tokens: StringArray, lookup: TokenLookup, attrs: np.ndarray, eos_id) -> frozenset:
    """llama.cpp's end-of-generation set; marks the tokens it finds by text as CONTROL in attrs."""
    n = len(tokens)

    def special(name: str, texts) -> int | None:
        token_id = read_token_id(meta, name, None, n)
        if token_id is None:
            token_id = first_id_with_text(lookup, texts)
            if token_id is not None:
                attrs[token_id] |= ATTR_CONTROL
        return token_id

    eot_id = special("eot", EOT_TEXTS)
    eom_id = special("eom", EOM_TEXTS)
    fim_ids = [special(name, texts) for name, texts in
               (("fim_pad", FIM_PAD_TEXTS), ("fim_rep", FIM_REP_TEXTS), ("fim_sep", FIM_SEP_TEXTS))]

    eog = {i for i in fim_ids if i is not None}
    for text in EOG_TEXTS:
        token_id = lookup.get(text)
        if token_id is not None:
            eog.add(token_id)
            attrs[token_id] |= ATTR_CONTROL
    eog.update(i for i in (eos_id, eot_id, eom_id) if i is not None)

    # o200k_harmony and solar-open end turns with <|end|> but keep generating: not EOG there
    eog_texts = {tokens[i] for i in eog}
    has_call = "<|call|>" in eog_texts or "<|calls|>" in eog_texts
    if "<|end|>" in eog_texts and has_call and ("<|return|>" in eog_texts or "<|flush|>" in eog_texts):
        end_id = lookup.get("<|end|>")
        eog.discard(end_id)
        attrs[end_id] = ATTR_USER_DEFINED
    # gemma4 and plamo use </s> as an ordinary token
    if "</s>" in eog_texts and eog_texts & {"<|tool_response>", "<|plamo:eos|>"}:
        s_id = lookup.get("</s>")
        eog.discard(s_id)
        attrs[s_id] = ATTR_NORMAL
    return frozenset(eog)
