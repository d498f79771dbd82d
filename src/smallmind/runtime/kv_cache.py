"""The KV cache: every layer's keys and values for the positions seen so far.

Allocated once, to the model's context length, when a generation session starts; a decode
step writes one position per layer into it (kernels.kv_cache_store) and attends over the
filled prefix (kernels.attention). Layout per layer is (Hkv, S_max, D), so a head's keys
are one contiguous (S, D) block, the order the attention kernel streams them in.

The dtype is the network's choice (its `kv_dtype`): float16 for the GGUF families, whose
reference (llama.cpp) stores K and V as IEEE half by default, float32 for the trainable GPT.
"""

import math

import numpy as np

from ..errors import SmallMindError
from ..memory import require


def kv_dtype(net) -> np.dtype:
    """The dtype `net` keeps its K/V in: its `kv_dtype`, float32 when it names none."""
    return np.dtype(getattr(net, "kv_dtype", np.float32))


class KVCache:
    """Keys and values of `n_layers` layers for positions 0..length-1 (capacity `max_len`)."""

    def __init__(self, n_layers: int, n_kv_heads: int, max_len: int, head_dim: int, *, k=None, v=None,
                 dtype=np.float32):
        # k, v: (n_layers, n_kv_heads, max_len, head_dim) buffers of `dtype` (float32 or float16)
        # to hold the cache in (a slot of runtime.kv_pool.KVPool); by default the cache
        # allocates its own
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise SmallMindError(f"KV cache dtype must be float32 or float16, not {dtype}")
        shape = (n_layers, n_kv_heads, max_len, head_dim)
        if k is None or v is None:
            require(2 * dtype.itemsize * math.prod(shape), f"a KV cache of {max_len} positions")
        self.k = np.zeros(shape, dtype=dtype) if k is None else k
        self.v = np.zeros(shape, dtype=dtype) if v is None else v
        if self.k.shape != shape or self.v.shape != shape or self.k.dtype != dtype or self.v.dtype != dtype:
            raise SmallMindError(f"KV cache buffers must be {dtype} of shape {shape}")
        self.dtype = dtype
        # indexing makes a new view object each time: make the per-layer views once
        self.k_layers = tuple(self.k[i] for i in range(n_layers))
        self.v_layers = tuple(self.v[i] for i in range(n_layers))
        self.capacity = max_len
        self.length = 0

    def reset(self) -> None:
        """Forget every position (the buffers are kept and overwritten by the next session)."""
        self.length = 0

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
