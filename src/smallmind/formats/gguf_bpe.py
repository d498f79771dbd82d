"""Byte-level BPE for GGUF `gpt2` vocabularies, with llama.cpp's pre-tokenizer for each
`tokenizer.ggml.pre` name.

The splitting regexes and per-name flags are llama.cpp's (llm_tokenizer_bpe and llama_vocab::load):
a text is split by each regex in turn (matches and the gaps between them both become pieces), the
pieces are mapped byte by byte to GPT-2's printable alphabet, and each is merged by the rank of
`tokenizer.ggml.merges` (lowest rank first, leftmost on ties). The `tokenizers` library does those
three steps exactly, in Rust; this module only configures it.

Known difference: the regexes' letter, number and punctuation classes use the tokenizers library's Unicode 15.0
tables, llama.cpp's its own Unicode 16 ones; they agree on every character assigned by Unicode 15.0
and may split text differently around the ~4,400 characters added since (Todhri, Garay, ...).
"""

from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from ..errors import TokenizerError
from .gguf_vocab import KEY_MERGES, KEY_PRE
from .string_array import StringArray

GPT2_SPLIT = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """One row of llama.cpp's pre-tokenizer table."""

    splits: tuple                 # regexes applied in turn
    clean_spaces: bool = True     # detokenizer drops spaces before ?!., and in contractions
    ignore_merges: bool = False   # a piece that is itself a token is emitted whole
    add_bos: bool = False         # default of tokenizer.ggml.add_bos_token


DEFAULT = PreTokenizer(splits=(r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"))
GPT2 = PreTokenizer(splits=(GPT2_SPLIT,))
LLAMA3 = PreTokenizer(splits=(LLAMA3_SPLIT,), ignore_merges=True, add_bos=True)
QWEN2 = PreTokenizer(splits=(QWEN2_SPLIT,), clean_spaces=False)
STARCODER = PreTokenizer(splits=(r"\p{N}", GPT2_SPLIT))
SMOLLM = PreTokenizer(splits=(r"\p{N}", GPT2_SPLIT), clean_spaces=False)

# tokenizer.ggml.pre names -> rows (the names llama.cpp maps to the same row share it)
PRE_TOKENIZERS = {
    "default": DEFAULT,
    "gpt-2": GPT2, "phi-2": GPT2, "jina-es": GPT2, "jina-de": GPT2, "gigachat": GPT2,
    "jina-v2-es": GPT2, "jina-v2-de": GPT2, "a.x-4.0": GPT2, "mellum": GPT2, "modern-bert": GPT2,
    "llama3": LLAMA3, "llama-v3": LLAMA3, "llama-bpe": LLAMA3, "falcon3": LLAMA3,
    "falcon-h1": LLAMA3, "pixtral": LLAMA3, "midm-2.0": LLAMA3, "lfm2": LLAMA3,
    "qwen2": QWEN2, "deepseek-r1-qwen": QWEN2, "kormo": QWEN2, "f2llmv2": QWEN2,
    "starcoder": STARCODER, "refact": STARCODER,
    "smollm": SMOLLM,
}


def pre_tokenizer_for(name: str) -> PreTokenizer:
    # llama.cpp falls back to "default" (with a loud warning) when the key is missing
    if name == "":
        return DEFAULT
    row = PRE_TOKENIZERS.get(name)
    if row is None:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise TokenizerError(f"{KEY_PRE} = {name!r} is not a pre-tokenizer SmallMind knows ({known})")
    return row


def parse_merges(merges) -> list:
    """tokenizer.ggml.merges strings 'left right' -> (left, right) pairs, as llama.cpp splits them."""
    if not isinstance(merges, (list, StringArray)) or not all(isinstance(m, str) for m in merges):
        raise TokenizerError(f"{KEY_MERGES} must be an array of strings")
    pairs = []
    for i, merge in enumerate(merges):
        # the first part may itself be a space character's byte symbol, so search from index 1
        cut = merge.find(" ", 1)
        if cut < 0:
            raise TokenizerError(f"{KEY_MERGES}[{i}] = {merge!r} is not two symbols separated by a space")
        pairs.append((merge[:cut], merge[cut + 1:]))
    return pairs


def build_bpe(token_to_id: dict, merges, pre: PreTokenizer) -> Tokenizer:
    """A tokenizers.Tokenizer that maps one plain-text fragment to llama.cpp's BPE ids."""
    if merges is None:
        raise TokenizerError(f"GGUF metadata has no {KEY_MERGES}: a gpt2 vocabulary needs its merges")
    pairs = parse_merges(merges)
    for i, (left, right) in enumerate(pairs):
        for part in (left, right, left + right):
            if part not in token_to_id:
                raise TokenizerError(f"{KEY_MERGES}[{i}] = '{left} {right}' uses {part!r}, "
                                     "which is not in the vocabulary")
    tokenizer = Tokenizer(models.BPE(vocab=token_to_id, merges=pairs, ignore_merges=pre.ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return tokenizer
