"""Named timing scopes through the engine: `with scope("matmul.qkv"): ...`.

When no profiler is recording, `scope` returns one shared no-op object, so an
instrumented hot path pays one call and an empty `with` (about 100 ns; `smallmind
profile` measures and reports it). The profiler installs a recorder with
`set_recorder` (smallmind.profiler.recorder.recording); scopes nest, and the recorder
aggregates by full path (e.g. decode/block/matmul.qkv).

Scope names used by the engine (keep this list true):
  containers : prefill, decode, forward, backward, block, step (group others; their
               own time is not counted as covered)
  inference  : tokenize, embedding, norm, matmul.qkv, kv_cache, attention,
               matmul.attn_out, matmul.mlp_up, activation, matmul.mlp_down,
               matmul.lm_head, sampling (softmax runs inside the attention kernel)
  training   : the same operation names inside forward/backward, plus loss, and
               optimizer (a leaf: AdamW over all parameters, and the gradient clip)
"""


class _NullScope:
    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, exc_type, exc, tb):
        return False


_NULL = _NullScope()
_recorder = None


def scope(name: str):
    """Context manager timing `name` when a recorder is installed; free otherwise."""
    if _recorder is None:
        return _NULL
    return _recorder.scope(name)


def set_recorder(recorder) -> None:
    """Install (or with None, remove) the object whose .scope(name) times scopes."""
    global _recorder
    _recorder = recorder


def recording() -> bool:
    return _recorder is not None
