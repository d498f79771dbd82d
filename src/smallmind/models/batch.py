"""What every family's batched decode step shares: its argument checks and its per-row views.

A batched step (net.forward_batch, models/__init__.py) runs B sequences' next tokens through one
workspace: the products over all B rows at once, and the position-dependent work (RoPE, the KV
store, attention) row by row against each row's own KV cache. The views it needs are made once
per workspace, so a step allocates nothing.
"""

from ..errors import ContextLengthError, SmallMindError


class BatchViews:
    """`first[B]`: the step views of rows 0..B-1; `rows[b]`: those of row b alone."""

    def __init__(self, ws, step_views):
        self.first = [None] + [step_views(ws, B) for B in range(1, ws.max_tokens + 1)]
        self.rows = [step_views(ws, 1, b) for b in range(ws.max_tokens)]


def batch_views(ws, step_views) -> BatchViews:
    # made on first use: a workspace that never decodes a batch never pays for them
    views = getattr(ws, "batch", None)
    if views is None:
        views = ws.batch = BatchViews(ws, step_views)
    return views


def check_step(ws, kvs, tokens, positions) -> int:
    """The batch size B, after checking one cache and one position per token and that each
    position follows its cache's cached positions within its capacity."""
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
    return B
