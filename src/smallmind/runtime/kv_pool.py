"""The KV memory of a server: a fixed number of slots, each a whole sequence's cache, allocated
once at start; prefix reuse and least-recently-used eviction decide which slot a request gets.

A finished sequence leaves its keys and values (and the ids they stand for) in its slot. A new
request takes the free slot whose cached ids share the longest prefix with its prompt and keeps
that prefix: no recompute, and no copy either, the slot itself is reused. With no shared prefix
the free slot used least recently is overwritten (evicted).

With a prefix store (runtime/prefix_store.py, `cache_bytes` > 0) an evicted conversation is not
lost: a slot about to be given to a request that keeps less than half of what it holds first
copies its positions into the store, and a request sharing a longer prefix with a stored
sequence than with any free slot gets that prefix copied into the least recently used free
slot. The common next turn of a chat, which keeps (nearly) all of its slot, copies nothing.
"""

import math

import numpy as np

from ..errors import SmallMindError
from ..memory import require
from .kv_cache import KVCache, kv_dtype
from .prefix_store import PrefixStore
from .session import Session


class KVPool:
    """`slots` sessions of `ctx` positions over one allocation; `workspace` is the prefill
    workspace every slot's session shares (the engine runs them from one thread); finished
    sequences evicted from their slots are kept in a prefix store of `cache_bytes` (0: none)."""

    def __init__(self, net, slots: int, ctx: int, workspace, cache_bytes: int = 0):
        n_layers, n_kv_heads, head_dim = net.kv_spec
        if slots < 1:
            raise SmallMindError(f"a KV pool needs at least one slot, not {slots}")
        if cache_bytes < 0:
            raise SmallMindError(f"the prefix cache's budget must be >= 0 bytes, not {cache_bytes}")
        shape = (slots, n_layers, n_kv_heads, ctx, head_dim)
        dtype = kv_dtype(net)
        pool_bytes = 2 * dtype.itemsize * math.prod(shape)
        require(pool_bytes, f"a KV pool of {slots} slots x {ctx} positions")
        if cache_bytes:
            require(pool_bytes + cache_bytes,
                    f"a KV pool of {slots} slots x {ctx} positions and a prefix cache of "
                    f"{cache_bytes / 2**20:.0f} MiB", "give the prefix cache a smaller budget")
        self.k = np.zeros(shape, dtype)
        self.v = np.zeros(shape, dtype)
        self.sessions = tuple(
            Session(net, ctx, kv=KVCache(n_layers, n_kv_heads, ctx, head_dim, k=self.k[i], v=self.v[i], dtype=dtype),
                    ws=workspace)
            for i in range(slots))
        position = 4 + 2 * dtype.itemsize * n_layers * n_kv_heads * head_dim   # an id, its keys and values
        self.store = PrefixStore(cache_bytes, position) if cache_bytes else None
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
        """A free slot for a sequence starting with `ids` -> (slot, positions kept from its cache
        or restored from the prefix store). At least the last id is left to prefill (its logits
        are needed)."""
        best, best_kept, shared = -1, 0, {}
        for slot, session in enumerate(self.sessions):
            if self.busy[slot]:
                continue
            kept = shared[slot] = session.shared_prefix(ids)
            if kept > best_kept or best < 0 or (kept == best_kept and self.last_used[slot] < self.last_used[best]):
                best, best_kept = slot, kept
        if best < 0:
            raise SmallMindError("every KV slot is in use")
        key, stored = self.store.find(ids) if self.store else (None, 0)
        if stored > best_kept:
            best = min(shared, key=self.last_used.__getitem__)   # the least recently used free slot
            session = self.sessions[best]
            self._evict(session, shared[best], protect=key)
            self.store.restore(key, stored, session)
            best_kept = stored
        else:
            session = self.sessions[best]
            self._evict(session, best_kept)
            session.rewind(best_kept)
        self.busy[best] = True
        self.clock += 1
        self.last_used[best] = self.clock
        return best, best_kept

    def _evict(self, session: Session, kept: int, protect: int | None = None) -> None:
        # the session's slot is about to keep only `kept` of its positions: when that is less
        # than half, another conversation takes the slot, and the store keeps this one (never
        # at the cost of entry `protect`, about to be restored into the slot)
        if self.store is not None and kept < session.length // 2:
            self.store.keep(session, protect)

    def release(self, slot: int) -> None:
        """The slot's sequence is done; its cache stays for a later request to reuse."""
        self.busy[slot] = False
        self.clock += 1
        self.last_used[slot] = self.clock

