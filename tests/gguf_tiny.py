"""Tiny random GGUF models of every supported architecture, written with gguf.GGUFWriter.

Sizes are the smallest that still exercise each family's shape rules (GQA, a head width
independent of d_model for qwen3, a sliding window shorter than the test sequences and a
global layer for gemma3). Matrices are stored as F32, F16 or Q8_0 (d_model a multiple of 32).
"""

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

C, F, V, CTX = 64, 96, 80, 48
SIZES = {  # arch -> (layers, heads, kv heads, head width)
    "llama": (2, 4, 2, 16),
    "qwen2": (2, 4, 2, 16),
    "qwen3": (2, 4, 1, 32),
    "gemma3": (6, 2, 1, 32),
    "gpt2": (2, 4, 4, 16),
}
SLIDING_WINDOW = 5


def tensor_names(arch: str, tied: bool = True) -> list[str]:
    """Every tensor a tiny `arch` model holds."""
    return [name for name, _ in _shapes(arch, tied)]


def _shapes(arch, tied):
    L, H, Hkv, D = SIZES[arch]
    HD, KD = H * D, Hkv * D
    out = [("token_embd.weight", (V, C)), ("output_norm.weight", (C,))]
    if not tied:
        out.append(("output.weight", (V, C)))
    if arch == "gpt2":
        out += [("position_embd.weight", (CTX, C)), ("output_norm.bias", (C,))]
    if arch == "llama":
        out.append(("rope_freqs.weight", (D // 2,)))
    for i in range(L):
        b = f"blk.{i}."
        if arch == "gpt2":
            out += [(b + "attn_norm.weight", (C,)), (b + "attn_norm.bias", (C,)),
                    (b + "attn_qkv.weight", (3 * C, C)), (b + "attn_qkv.bias", (3 * C,)),
                    (b + "attn_output.weight", (C, C)), (b + "attn_output.bias", (C,)),
                    (b + "ffn_norm.weight", (C,)), (b + "ffn_norm.bias", (C,)),
                    (b + "ffn_up.weight", (F, C)), (b + "ffn_up.bias", (F,)),
                    (b + "ffn_down.weight", (C, F)), (b + "ffn_down.bias", (C,))]
            continue
        out += [(b + "attn_norm.weight", (C,)), (b + "attn_q.weight", (HD, C)),
                (b + "attn_k.weight", (KD, C)), (b + "attn_v.weight", (KD, C)),
                (b + "attn_output.weight", (C, HD)), (b + "ffn_norm.weight", (C,)),
                (b + "ffn_gate.weight", (F, C)), (b + "ffn_up.weight", (F, C)), (b + "ffn_down.weight", (C, F))]
        if arch == "qwen2":
            out += [(b + "attn_q.bias", (HD,)), (b + "attn_k.bias", (KD,)), (b + "attn_v.bias", (KD,))]
        if arch in ("qwen3", "gemma3"):
            out += [(b + "attn_q_norm.weight", (D,)), (b + "attn_k_norm.weight", (D,))]
        if arch == "gemma3":
            out += [(b + "post_attention_norm.weight", (C,)), (b + "post_ffw_norm.weight", (C,))]
    return out


def write_tiny(path, arch: str, *, qtype: str = "F32", tied: bool = True, seed: int = 0,
               drop: tuple = (), metadata: dict | None = None) -> str:
    """Write a random `arch` model to `path`; `drop` leaves tensors out, `metadata` overrides
    or adds keys ({key: value}; value None removes the key)."""
    rng = np.random.default_rng(seed)
    L, H, Hkv, D = SIZES[arch]
    p = arch + "."
    keys = {
        p + "context_length": CTX, p + "embedding_length": C, p + "block_count": L,
        p + "feed_forward_length": F, p + "attention.head_count": H, p + "attention.head_count_kv": Hkv,
    }
    if arch == "gpt2":
        keys[p + "attention.layer_norm_epsilon"] = 1e-5
    else:
        keys[p + "attention.layer_norm_rms_epsilon"] = 1e-6
        keys[p + "rope.freq_base"] = 10000.0
        keys[p + "attention.key_length"] = D
        keys[p + "attention.value_length"] = D
    if arch == "gemma3":
        keys[p + "attention.sliding_window"] = SLIDING_WINDOW
    keys.update(metadata or {})
    w = GGUFWriter(str(path), arch)
    for key, value in keys.items():
        if value is None:
            continue
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, value)
    for name, shape in _shapes(arch, tied):
        if name == "rope_freqs.weight":
            data = rng.uniform(1.0, 4.0, shape).astype(np.float32)
        elif len(shape) == 1 and "norm" in name:
            data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            data = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        if name in drop:  # after drawing its values, so that the other tensors stay the same
            continue
        if len(shape) == 2 and qtype != "F32":
            gtype = GGMLQuantizationType[qtype]
            w.add_tensor(name, quantize(data, gtype), raw_dtype=gtype)  # shape from the bytes
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
