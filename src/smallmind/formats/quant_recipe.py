"""Which block format each tensor of a model gets for a file type: llama.cpp's mixtures.

    plan = tensor_types([(name, shape), ...], "Q4_K_M", n_layers)   # {name: TensorChoice}

This follows llama_tensor_get_type in llama.cpp's src/llama-quant.cpp (the version
llama-cpp-python 0.3.36 ships) for the file types SmallMind writes:

  - only matrices whose name ends in "weight" are quantized; norms ("_norm.weight"),
    position embeddings ("position_embd.weight") and token types stay as they are
  - the output matrix, or the token embedding when the head is tied to it, gets Q6_K for
    every quantized type except Q8_0 (which keeps Q8_0)
  - Q4_K_M and Q5_K_M: the attention value matrices (attn_v, or the fused attn_qkv/attn_kv_b)
    and ffn_down get Q6_K in the layers use_more_bits picks: the first and last eighth, and
    every third layer between
  - Q4_K (llama.cpp's Q4_K_S): attn_v of the first four layers and ffn_down of the first
    eighth get Q5_K; Q5_K (Q5_K_S) and Q6_K are the base type alone
  - a width that is not a whole number of the chosen format's blocks falls back:
    Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and to F16 if even 32 does not divide it
    (the output/tied embedding goes straight to Q8_0 when the base type's block does not fit)
F32, F16 and BF16 file types store every quantizable matrix in that type, with no mixture.
"""

import re
from dataclasses import dataclass

from ..errors import SmallMindError
from ..kernels.qtensor import QTYPES

# SmallMind's type name -> (llama_ftype stored as general.file_type, base block format)
FILE_TYPES = {
    "F32": (0, "F32"),
    "F16": (1, "F16"),
    "BF16": (32, "BF16"),
    "Q4_0": (2, "Q4_0"),
    "Q4_1": (3, "Q4_1"),
    "Q8_0": (7, "Q8_0"),
    "Q5_0": (8, "Q5_0"),
    "Q5_1": (9, "Q5_1"),
    "Q4_K": (14, "Q4_K"),     # LLAMA_FTYPE_MOSTLY_Q4_K_S
    "Q4_K_M": (15, "Q4_K"),
    "Q5_K": (16, "Q5_K"),     # LLAMA_FTYPE_MOSTLY_Q5_K_S
    "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_LAYER = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorChoice:
    qtype: str                 # the format to store: "F32" or a QTYPES name
    wanted: str | None = None  # the format the mixture chose, when a width forced a fallback


def check_file_type(name: str) -> str:
    if name not in FILE_TYPES:
        raise SmallMindError(f"unknown type {name!r}; choose one of {', '.join(FILE_TYPES)}")
    return name


def _block(qtype: str) -> int:
    return 1 if qtype == "F32" else QTYPES[qtype][1]


def quantizable(name: str, shape: tuple) -> bool:
    """Whether llama.cpp's quantize would convert this tensor (else it is copied as stored)."""
    return (len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and name not in ("position_embd.weight", "token_types.weight")
            and "ffn_gate_inp.weight" not in name)


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _is_attn_v(name: str) -> bool:
    return any(k in name for k in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"))


def tensor_types(tensors, file_type: str, n_layers: int) -> dict[str, TensorChoice]:
    """{name: TensorChoice} for the (name, shape) pairs of a model (shape in PyTorch order,
    columns last) quantized as `file_type`; tensors left unquantized are absent."""
    ftype = check_file_type(file_type)
    base = FILE_TYPES[ftype][1]
    tensors = [(name, tuple(shape)) for name, shape in tensors]
    names = {name for name, _ in tensors}
    tied = "output.weight" not in names
    n_attn_v = sum(_is_attn_v(name) for name in names)
    # llama.cpp walks the tensors by layer, then by name; its layer counters follow that order
    order = sorted(tensors, key=lambda t: (int(m.group(1)) if (m := _LAYER.match(t[0])) else -1, t[0]))
    i_attn_v = i_ffn_down = 0
    out = {}
    for name, shape in order:
        if not quantizable(name, shape):
            continue
        cols = shape[-1]
        qtype = base
        if base in ("F32", "F16", "BF16"):
            out[name] = TensorChoice(qtype)
            continue
        if name == "output.weight" or (tied and name in ("token_embd.weight", "per_layer_token_embd.weight")):
            if cols % _block(base):
                qtype = "Q8_0"
            elif base != "Q8_0":
                qtype = "Q6_K"
        elif name in ("token_embd.weight", "per_layer_token_embd.weight"):
            pass
        elif _is_attn_v(name):
            if ftype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_attn_v, n_attn_v):
                qtype = "Q6_K"
            elif ftype == "Q4_K" and i_attn_v < 4:
                qtype = "Q5_K"
            i_attn_v += 1
        elif "ffn_down" in name:
            if ftype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_ffn_down, n_layers):
                qtype = "Q6_K"
            elif ftype == "Q4_K" and i_ffn_down < n_layers // 8:
                qtype = "Q5_K"
            i_ffn_down += 1
        out[name] = _fitting(qtype, cols)
    return out


def _fitting(qtype: str, cols: int) -> TensorChoice:
    # llama.cpp's tensor_type_fallback: the nearest 32-value format, then F16
    if cols % _block(qtype) == 0:
        return TensorChoice(qtype)
    fallback = FALLBACK.get(qtype, qtype)
    if cols % _block(fallback):
        fallback = "F16"
    return TensorChoice(fallback, wanted=qtype)
