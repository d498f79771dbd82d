"""Named timing scopes through the engine: `with scope("matmul.qkv"): ...`.

When no profiler is recording, `scope` returns one shared no-op object, so an
instrumented hot path pays one call and an empty `with` (about 60 ns with the native
scope log, 100 ns without; `smallmind profile` measures and reports it). The profiler
installs a recorder with `set_recorder` (smallmind.profiler.recorder.recording): an object
with a `scope_table`, a dict from scope name to context manager whose __missing__ makes
new entries. Scopes nest, and the recorder aggregates by full path (e.g. decode/matmul.qkv).

Scope names used by the engine (keep this list true):
  containers : prefill, decode, forward, backward, step (group others; their
               own time is not counted as covered)
  inference  : tokenize, embedding, norm, matmul.qkv, rope, kv_cache, attention,
               matmul.attn_out, matmul.mlp_up, activation, matmul.mlp_down,
               matmul.lm_head, sampling (softmax runs inside the attention kernel)
  training   : the same operation names inside forward/backward, plus loss, and
               optimizer (a leaf: AdamW over all parameters, and the gradient clip)
"""

_recorder = None

try:
    # scope() in C: no Python frame per scope entered, recording or not
    from ._scopelog import scope
    from ._scopelog import set_table as _set_table
except ImportError:
    class _NullScope:
        __slots__ = ()

        def __enter__(self):
            return None

        def __exit__(self, exc_type, exc, tb):
            return False

    _NULL = _NullScope()
    _table = None

    def scope(name: str):
        """Context manager timing `name` when a recorder is installed; free otherwise."""
        if _table is None:
            return _NULL
        return _table[name]

    def _set_table(table) -> None:
        global _table
        _table = table


def set_recorder(recorder) -> None:
    """Install (or with None, remove) the recorder whose scope_table times scopes."""
    global _recorder
    _set_table(None if recorder is None else recorder.scope_table)
    _recorder = recorder


def recording() -> bool:
    return _recorder is not None
