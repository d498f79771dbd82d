"""The scope recorder: a tree of open and finished scopes, timed with perf_counter_ns.

Each node is one full path (decode/block/matmul.qkv) holding total, calls, min, max and
the time spent in its child scopes (self = total - child). A node's start time lives on
the node itself: a path cannot be open twice at once (a scope nested in itself is a new,
deeper path), so no separate stack is needed and enter/exit allocate nothing after the
first call of each path.
"""

from contextlib import contextmanager
from time import perf_counter_ns

from .. import scope as scope_module

# Scopes that only group others; their time is not "covered" by an operation.
CONTAINERS = frozenset({"prefill", "decode", "forward", "backward", "optimizer", "block", "step"})


class ScopeNode:
    __slots__ = ("name", "parent", "children", "total_ns", "child_ns", "calls", "min_ns", "max_ns", "t0")

    def __init__(self, name: str, parent: "ScopeNode | None"):
        self.name = name
        self.parent = parent
        self.children: dict[str, ScopeNode] = {}
        self.total_ns = 0
        self.child_ns = 0
        self.calls = 0
        self.min_ns = 1 << 62
        self.max_ns = 0
        self.t0 = 0

    @property
    def path(self) -> str:
        parts = []
        node = self
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))

    @property
    def self_ns(self) -> int:
        return self.total_ns - self.child_ns

    @property
    def is_container(self) -> bool:
        # "optimizer" is a container when it groups per-segment scopes, an operation when it is a leaf
        return self.name in CONTAINERS and bool(self.children)


class _TimedScope:
    """The context manager for one scope name; shared by every path ending in that name."""

    __slots__ = ("recorder", "name")

    def __init__(self, recorder: "Recorder", name: str):
        self.recorder = recorder
        self.name = name

    def __enter__(self):
        recorder = self.recorder
        parent = recorder.current
        node = parent.children.get(self.name)
        if node is None:
            node = parent.children[self.name] = ScopeNode(self.name, parent)
        recorder.current = node
        node.t0 = perf_counter_ns()

    def __exit__(self, exc_type, exc, tb):
        t1 = perf_counter_ns()
        recorder = self.recorder
        node = recorder.current
        dt = t1 - node.t0
        node.total_ns += dt
        node.calls += 1
        if dt < node.min_ns:
            node.min_ns = dt
        if dt > node.max_ns:
            node.max_ns = dt
        parent = node.parent
        parent.child_ns += dt
        recorder.current = parent
        return False


class _ScopeTable(dict):
    """name -> _TimedScope, made on first use; its C-level __getitem__ is Recorder.scope."""

    def __init__(self, recorder: "Recorder"):
        super().__init__()
        self.recorder = recorder

    def __missing__(self, name: str) -> _TimedScope:
        timed = self[name] = _TimedScope(self.recorder, name)
        return timed


class Recorder:
    """Aggregates scopes by full path. Install with `recording(recorder)` (or scope.set_recorder).

    `recorder.scope(name)` returns the context manager timing `name` at the current depth.
    """

    def __init__(self):
        self.root = ScopeNode("", None)
        self.current = self.root
        # a bound dict lookup rather than a method: one Python frame fewer per scope entry
        self.scope = _ScopeTable(self).__getitem__

    def nodes(self) -> list[ScopeNode]:
        """Every recorded node, depth first, children in order of first entry."""
        out = []
        stack = list(reversed(self.root.children.values()))
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children.values()))
        return out

    def total_calls(self) -> int:
        return sum(node.calls for node in self.nodes())

    def operation_ns(self) -> int:
        """Time inside operation scopes: the outermost scopes that are not containers."""
        total = 0
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.is_container:
                stack.extend(node.children.values())
            else:
                total += node.total_ns
        return total


@contextmanager
def recording(recorder: Recorder):
    """Install `recorder` for the block, then restore whatever was installed before."""
    previous = scope_module._recorder
    scope_module.set_recorder(recorder)
    try:
        yield recorder
    finally:
        scope_module.set_recorder(previous)


def scope_cost_ns(iterations: int = 100_000) -> dict:
    """What one scope costs (ns per enter+exit, the empty loop subtracted), best of 3.

    off_ns: with no recorder (the price every engine run pays); on_ns: with a recorder;
    inside_ns: the part of on_ns that falls inside the scope's own measured interval (what an
    empty scope records). on_ns - inside_ns - off_ns is the time recording adds outside any
    measured interval, which the profile subtracts from the profiled wall time.
    """
    scope = scope_module.scope

    def loop_ns(body: bool) -> int:
        t0 = perf_counter_ns()
        if body:
            for _ in range(iterations):
                with scope("probe"):
                    pass
        else:
            for _ in range(iterations):
                pass
        return perf_counter_ns() - t0

    empty = min(loop_ns(False) for _ in range(3))
    with recording(None):
        off = min(loop_ns(True) for _ in range(3))
    inside, on = [], []
    for _ in range(3):
        with recording(Recorder()) as recorder:
            on.append(loop_ns(True))
        inside.append(recorder.root.children["probe"].total_ns)
    return {
        "off_ns": max(off - empty, 0) / iterations,
        "on_ns": max(min(on) - empty, 0) / iterations,
        "inside_ns": min(inside) / iterations,
    }
