"""What every family's batched decode step shares: its argument checks and its per-row views.

A batched step (net.forward_batch, models/__init__.py) runs B sequences' next tokens through one
workspace: the products over all B rows at once, and the position-dependent work (RoPE, the KV
store, attention) with the rows kernels (kernels.rope_rows, kv_cache_store_rows, attention_rows),
one call a layer in which each row has its own position and KV cache. The views it needs are made
once per workspace, so a step allocates only the two tuples of its caches' arrays.
"""

import numpy as np

from ..errors import ContextLengthError, SmallMindError


class BatchViews:
    """`first[B]`: the step views of rows 0..B-1."""

    def __init__(self, ws, step_views):
        self.first = [None] + [step_views(ws, B) for B in range(1, ws.max_tokens + 1)]


def batch_views(ws, step_views) -> BatchViews:
    # made on first use: a workspace that never decodes a batch never pays for them
    views = getattr(ws, "batch", None)
    if views is None:
        views = ws.batch = BatchViews(ws, step_views)
    return views


def check_step(ws, kvs, tokens, positions) -> tuple:
    """(B, positions as an int64 array, the caller's own when it is one), after checking one
    cache and one position per token and that each position follows its cache's cached
    positions within its capacity."""
    B = len(tokens)
    if not 1 <= B <= ws.max_tokens or len(kvs) != B or len(positions) != B:
        raise ContextLengthError(
            f"a batched step takes 1..{ws.max_tokens} rows with this workspace and one cache and "
            f"position per token, not {B} tokens, {len(kvs)} caches and {len(positions)} positions")
    if len(set(map(id, kvs))) != B:
        raise SmallMindError("each row of a batched step needs its own KV cache")
    for kv, pos in zip(kvs, positions):
        if not 0 <= pos <= kv.length or pos >= kv.capacity:
            raise ContextLengthError(
                f"position {pos} does not follow the {kv.length} cached positions within the "
                f"context length {kv.capacity} of its KV cache")
    return B, np.asarray(positions, np.int64)


def cache_arrays(kvs) -> tuple:
    """(the B caches' key arrays, their value arrays), each (n_layers, Hkv, S_max, D): what every
    layer's rows kernels take, made once per step."""
    return tuple(kv.k for kv in kvs), tuple(kv.v for kv in kvs)
