"""The KV memory of a server: a fixed number of slots, each a whole sequence's cache, allocated
once at start; prefix reuse and least-recently-used eviction decide which slot a request gets.

A finished sequence leaves its keys and values (and the ids they stand for) in its slot. A new
request takes the free slot whose cached ids share the longest prefix with its prompt and keeps
that prefix: no recompute, and no copy either, the slot itself is reused. Copying a prefix into
another slot would only pay when the owner is still running, and the case prefix reuse exists
for (the next turn of a chat, a shared system prompt sent again) finds the earlier sequence
finished. With no shared prefix the free slot used least recently is overwritten (evicted).
"""

import math

import numpy as np

from ..errors import SmallMindError
from ..memory import require
from .kv_cache import KVCache, kv_dtype
from .session import Session


class KVPool:
    """`slots` sessions of `ctx` positions over one allocation; `workspace` is the prefill
    workspace every slot's session shares (the engine runs them from one thread)."""

    def __init__(self, net, slots: int, ctx: int, workspace):
        n_layers, n_kv_heads, head_dim = net.kv_spec
        if slots < 1:
            raise SmallMindError(f"a KV pool needs at least one slot, not {slots}")
        shape = (slots, n_layers, n_kv_heads, ctx, head_dim)
        dtype = kv_dtype(net)
        require(2 * dtype.itemsize * math.prod(shape), f"a KV pool of {slots} slots x {ctx} positions")
        self.k = np.zeros(shape, dtype)
        self.v = np.zeros(shape, dtype)
        self.sessions = tuple(
            Session(net, ctx, kv=KVCache(n_layers, n_kv_heads, ctx, head_dim, k=self.k[i], v=self.v[i], dtype=dtype),
                    ws=workspace)
            for i in range(slots))
        self.busy = [False] * slots
        self.last_used = [0] * slots   # a clock tick; 0 = never used (taken before any eviction)
        self.clock = 0

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def free(self) -> int:
        return self.busy.count(False)

    def acquire(self, ids) -> tuple[int, int]:
        """A free slot for a sequence starting with `ids` -> (slot, positions kept from its cache).
        At least the last id is left to prefill (its logits are needed)."""
        best, best_kept = -1, 0
        for slot, session in enumerate(self.sessions):
            if self.busy[slot]:
                continue
            kept = _shared_prefix(session, ids)
            if kept > best_kept or best < 0 or (kept == best_kept and self.last_used[slot] < self.last_used[best]):
                best, best_kept = slot, kept
        if best < 0:
            raise SmallMindError("every KV slot is in use")
        session = self.sessions[best]
        session.rewind(best_kept)
        self.busy[best] = True
        self.clock += 1
        self.last_used[best] = self.clock
        return best, best_kept

    def release(self, slot: int) -> None:
        """The slot's sequence is done; its cache stays for a later request to reuse."""
        self.busy[slot] = False
        self.clock += 1
        self.last_used[slot] = self.clock


def _shared_prefix(session: Session, ids) -> int:
    # how many leading positions of the session's cache equal ids (leaving at least one id)
    n = min(session.length, len(ids) - 1)
    if n <= 0:
        return 0
    differ = np.flatnonzero(session.ids[:n] != np.asarray(ids[:n]))
    return int(differ[0]) if differ.size else n
