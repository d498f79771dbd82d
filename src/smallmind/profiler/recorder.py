"""The scope recorder: timed scopes logged as events, then aggregated into a tree.

While recording, `scope(name)` returns a handle whose __enter__/__exit__ append (id, ns) and
(~id, ns) to a preallocated event log (smallmind._scopelog, in C: no allocation, no Python
frame, so a timed scope costs little more than the `with` itself; a list-based log in Python
where the extension is not built). The clock is CLOCK_MONOTONIC, time.perf_counter_ns's.

Reading the recorder (nodes(), root, ...) drains the log into a tree: each node is one full
path (decode/matmul.qkv) holding total, calls, min, max and the time spent in its child
scopes (self = total - child).
"""

from array import array
from contextlib import contextmanager
from time import perf_counter_ns

from .. import scope as scope_module
from ..errors import SmallMindError

try:
    from .._scopelog import EventLog
except ImportError:  # the extension was not built: the same log in Python
    EventLog = None

# Scopes that only group others; their time is not "covered" by an operation.
CONTAINERS = frozenset({"prefill", "decode", "forward", "backward", "optimizer", "step"})

LOG_CAPACITY = 1 << 21  # events held between drains (24 MB); a drain empties the log


class PathNode:
    """A node of a scope tree: its name, parent and children by name."""

    __slots__ = ("name", "parent", "children")

    def __init__(self, name: str, parent: "PathNode | None"):
        self.name = name
        self.parent = parent
        self.children: dict[str, PathNode] = {}

    @property
    def path(self) -> str:
        parts = []
        node = self
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))


class ScopeTable(dict):
    """name -> the context manager for that scope, made by `make(name)` on first use.
    smallmind.scope looks names up here (a plain dict lookup, in C where built)."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, name: str):
        made = self[name] = self.make(name)
        return made


class ScopeNode(PathNode):
    __slots__ = ("total_ns", "child_ns", "calls", "min_ns", "max_ns")

    def __init__(self, name: str, parent: "ScopeNode | None"):
        super().__init__(name, parent)
        self.total_ns = 0
        self.child_ns = 0
        self.calls = 0
        self.min_ns = 1 << 62
        self.max_ns = 0

    @property
    def self_ns(self) -> int:
        return self.total_ns - self.child_ns

    @property
    def is_container(self) -> bool:
        # "optimizer" is a container when it groups per-segment scopes, an operation when it is a leaf
        return self.name in CONTAINERS and bool(self.children)


class _PyScopeHandle:
    __slots__ = ("log", "id")

    def __init__(self, log: "_PyEventLog", scope_id: int):
        self.log = log
        self.id = scope_id

    def __enter__(self):
        self.log.ids.append(self.id)
        self.log.times.append(perf_counter_ns())

    def __exit__(self, exc_type, exc, tb):
        self.log.times.append(perf_counter_ns())
        self.log.ids.append(~self.id)
        return False


class _PyEventLog:
    """The event log of smallmind._scopelog, in Python (same interface, never overflows)."""

    overflowed = False

    def __init__(self, capacity: int):
        self.ids, self.times = [], []

    @property
    def size(self) -> int:
        return len(self.ids)

    def handle(self, scope_id: int) -> _PyScopeHandle:
        return _PyScopeHandle(self, scope_id)

    def drain(self) -> tuple[list, list]:
        drained = self.ids, self.times
        self.ids, self.times = [], []
        return drained


class Recorder:
    """Aggregates scopes by full path. Install with `recording(recorder)` (or scope.set_recorder).

    `recorder.scope(name)` returns the context manager timing `name` at the current depth.
    """

    def __init__(self, capacity: int = LOG_CAPACITY):
        self.log = EventLog(capacity) if EventLog is not None else _PyEventLog(capacity)
        self.capacity = capacity
        self.names: list[str] = []
        self._root = ScopeNode("", None)
        self._open: list[tuple[ScopeNode, int]] = []  # scopes entered and not yet exited
        self.scope_table = ScopeTable(self._new_handle)
        self.scope = self.scope_table.__getitem__

    def _new_handle(self, name: str):
        self.names.append(name)
        return self.log.handle(len(self.names) - 1)

    def flush(self) -> None:
        """Aggregate the logged events into the tree and empty the log."""
        ids, times = self.log.drain()
        if self.log.overflowed:
            raise SmallMindError(f"the profiler's scope log overflowed ({self.capacity:,} events "
                                 "between reads); profile fewer tokens or steps")
        if isinstance(ids, bytes):
            ids, times = array("i", ids).tolist(), array("q", times).tolist()
        names, open_ = self.names, self._open
        current = open_[-1][0] if open_ else self._root
        for scope_id, t in zip(ids, times):
            if scope_id >= 0:
                name = names[scope_id]
                node = current.children.get(name)
                if node is None:
                    node = current.children[name] = ScopeNode(name, current)
                open_.append((node, t))
                current = node
                continue
            if not open_ or names[~scope_id] != current.name:
                raise SmallMindError(f"scope {names[~scope_id]!r} exited out of order "
                                     "(a generator suspended inside a scope?)")
            node, t0 = open_.pop()
            dt = t - t0
            node.total_ns += dt
            node.calls += 1
            if dt < node.min_ns:
                node.min_ns = dt
            if dt > node.max_ns:
                node.max_ns = dt
            current = node.parent
            current.child_ns += dt

    @property
    def root(self) -> ScopeNode:
        self.flush()
        return self._root

    @property
    def current(self) -> ScopeNode:
        """The innermost open scope (the root when none is open)."""
        self.flush()
        return self._open[-1][0] if self._open else self._root

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
