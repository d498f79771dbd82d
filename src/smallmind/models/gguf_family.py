"""What every GGUF family shares: reading its weights (shapes checked, every missing name
reported), refusing bad metadata, and checking the KV cache it is handed.

Each model file then says only which tensors and keys it wants.
"""

import numpy as np

from ..errors import ContextLengthError, GGUFError, SmallMindError


class WeightReader:
    """`read(name, shape)` returns the tensor in place (float32 array or QTensor) after
    checking its shape; a missing tensor is noted and None returned, so that `finish()`
    can name every missing tensor in one error rather than the first alone."""

    def __init__(self, gguf_file):
        self.file = gguf_file
        self.missing: list[str] = []
        self.loaded: list[tuple[str, object]] = []

    def read(self, name: str, shape: tuple, *, optional: bool = False):
        if not self.file.has_tensor(name):
            if not optional:
                self.missing.append(name)
            return None
        tensor = self.file.tensor(name, shape)
        self.loaded.append((name, tensor))
        return tensor

    def vector(self, name: str, n: int, *, optional: bool = False):
        # a norm weight or bias: (n,) float32, whatever its stored type
        return self.read(name, (n,), optional=optional)

    def finish(self) -> list[tuple[str, object]]:
        """Raise GGUFError naming the missing tensors, else return (name, tensor) of all read."""
        if self.missing:
            shown = ", ".join(self.missing[:6])
            more = f" and {len(self.missing) - 6} more" if len(self.missing) > 6 else ""
            raise GGUFError(f"{self.file.path}: {self.file.architecture} model lacks tensors {shown}{more}")
        return self.loaded


def check_config(arch: str, checks) -> None:
    # checks: [(ok, message)] -> GGUFError on the first failure, naming the architecture
    for ok, message in checks:
        if not ok:
            raise GGUFError(f"bad {arch} model metadata: {message}")


def check_kv_cache(kv, spec) -> None:
    # kv: runtime.kv_cache.KVCache, spec: the network's kv_spec (n_layers, n_kv_heads, head_dim)
    n_layers, n_kv_heads, head_dim = spec
    if kv.k.shape[0] != n_layers or kv.k.shape[1] != n_kv_heads or kv.k.shape[3] != head_dim:
        raise SmallMindError(f"the KV cache has shape {kv.k.shape}, but this model needs "
                             f"(layers, kv heads, positions, head dim) = ({n_layers}, {n_kv_heads}, *, {head_dim})")


def step_views(ws, T: int, views):
    # the workspace's views for a forward of T tokens: the decode set (T = 1) is made once
    if T == 1:
        return ws.step
    if 1 < T <= ws.max_tokens:
        return views(ws, T)
    raise ContextLengthError(f"a forward takes 1..{ws.max_tokens} tokens with this workspace, not {T}")


def check_forward(net, ws, kv, pos0: int, T: int) -> None:
    """The workspace is this network's, the cache has its shape (bound to the workspace's layers
    once per cache) and positions pos0..pos0+T-1 follow the cached ones within its capacity."""
    if ws.config is not net.config:
        raise SmallMindError("this workspace was made for another model")
    if ws.kv is not kv:
        check_kv_cache(kv, net.kv_spec)
        ws.bind(kv, net.layers)
    if not 0 <= pos0 <= kv.length or pos0 + T > kv.capacity:
        raise ContextLengthError(f"positions {pos0}..{pos0 + T - 1} do not follow the {kv.length} cached "
                                 f"positions within the cache's {kv.capacity}")


def kv_dtype_for(weights) -> type:
    """The KV cache's dtype for a network of these (name, tensor) weights: float16, llama.cpp's
    default, unless every matrix is stored in float32; a full-precision file keeps a float32
    cache, so that its results are those of the arithmetic it was written for."""
    full = all(isinstance(t, np.ndarray) and t.dtype == np.float32 for _, t in weights)
    return np.float32 if full else np.float16
