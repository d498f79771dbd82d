"""A recorder that attributes traced memory to scopes instead of time (tracemalloc must be on).

A scope's allocation is the peak of traced memory during the scope above the traced memory at
its entry: buffers made and freed inside count, as does anything kept. Peaks nest: tracemalloc's
peak is reset at each entry, and a child's peak is carried up to its parent on exit, so a
parent's figure includes its children's. The recorder's own bookkeeping adds a few bytes per
call (an empty scope reads about 16 B).
"""

import tracemalloc

from .recorder import PathNode, ScopeTable

_traced = tracemalloc.get_traced_memory
_reset_peak = tracemalloc.reset_peak


class AllocNode(PathNode):
    __slots__ = ("bytes", "calls", "start", "peak")

    def __init__(self, name: str, parent: "AllocNode | None"):
        super().__init__(name, parent)
        self.bytes = 0
        self.calls = 0
        self.start = 0
        self.peak = 0


class _AllocScope:
    __slots__ = ("recorder", "name")

    def __init__(self, recorder: "AllocRecorder", name: str):
        self.recorder = recorder
        self.name = name

    def __enter__(self):
        recorder = self.recorder
        parent = recorder.current
        node = parent.children.get(self.name)
        if node is None:
            node = parent.children[self.name] = AllocNode(self.name, parent)
        current, peak = _traced()
        if peak > parent.peak:
            parent.peak = peak  # the parent's peak so far, before the reset hides it
        node.start = node.peak = current
        recorder.current = node
        _reset_peak()

    def __exit__(self, exc_type, exc, tb):
        peak = _traced()[1]
        recorder = self.recorder
        node = recorder.current
        if peak > node.peak:
            node.peak = peak
        node.bytes += node.peak - node.start
        node.calls += 1
        parent = node.parent
        if node.peak > parent.peak:
            parent.peak = node.peak
        recorder.current = parent
        return False


class AllocRecorder:
    """Install with profiler.recorder.recording(AllocRecorder()) while tracemalloc traces."""

    def __init__(self):
        self.root = AllocNode("", None)
        self.current = self.root
        self.scope_table = ScopeTable(lambda name: _AllocScope(self, name))
        self.scope = self.scope_table.__getitem__

    def nodes(self) -> list[AllocNode]:
        out, stack = [], list(reversed(self.root.children.values()))
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children.values()))
        return out
