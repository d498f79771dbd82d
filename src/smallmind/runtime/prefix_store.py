"""The server's prefix cache beyond its KV slots: the keys and values of finished sequences,
kept within a memory budget, the least recently used dropped first.

The pool (runtime/kv_pool.py) has one slot per sequence decoded at once, and a finished
sequence's KV stays in its slot until another request takes that slot. With more
conversations than slots, each would be evicted before its next turn comes. So when a slot is
about to be given to another conversation, the pool first copies what the slot holds into this
store (`keep`), and a later request that extends it gets its prefix copied back (`restore`):
a copy of the positions, where a prefill would recompute them through every layer.

An entry is exactly as long as the sequence it keeps (ids, keys, values), so the budget holds
as many positions as it can afford, whatever the --ctx. Within the budget, `keep` drops the
entries least recently kept or restored until the new one fits; an entry whose ids begin
another's, all but its last, is dropped for the longer one (which serves every request the
shorter could, but for that last position).
Sequences shorter than MIN_POSITIONS are not kept (their prefill is cheap), and at most
MAX_ENTRIES are. The first HEAD ids of every entry are kept side by side in one array, so a
look-up compares a request with all entries in one vectorized step, and only entries that
share all HEAD ids are compared one by one past them.
"""

import collections

import numpy as np

from ..errors import SmallMindError
from .session import common_prefix

MIN_POSITIONS = 16
MAX_ENTRIES = 1024
HEAD = 32   # leading ids of each entry in the shared array


class _Entry:
    __slots__ = ("ids", "k", "v")

    def __init__(self, ids: np.ndarray, k: np.ndarray, v: np.ndarray):
        self.ids, self.k, self.v = ids, k, v

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.k.nbytes + self.v.nbytes


def _copy(session, n: int) -> _Entry:
    # the session's first n positions: ids, keys and values, in arrays of their own
    kv = session.kv
    return _Entry(session.ids[:n].copy(), np.ascontiguousarray(kv.k[:, :, :n]), np.ascontiguousarray(kv.v[:, :, :n]))


class PrefixStore:
    """Sequences' KV of `position_bytes` a position (keys, values and the id) within `budget`
    bytes; entries are numbered in the order they were made."""

    def __init__(self, budget: int, position_bytes: int):
        if budget < 0 or position_bytes < 1:
            raise SmallMindError("a prefix store needs a budget >= 0 and positions of at least one byte")
        self.budget = int(budget)
        self.position_bytes = int(position_bytes)
        self.entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()  # least recent first
        self.nbytes = 0
        self.counter = 0
        self.min_positions = MIN_POSITIONS
        self.max_entries = MAX_ENTRIES
        self.heads = np.full((16, HEAD), -1, np.int64)   # row r: an entry's first HEAD ids, -1 past its end
        self.row_of: dict[int, int] = {}                 # entry key -> its row of heads
        self.key_of_row = [0] * 16
        self.free_rows = list(range(15, -1, -1))

    def __len__(self) -> int:
        return len(self.entries)

    def keep(self, session, protect: int | None = None) -> bool:
        """Copy the session's cached positions into the store -> whether it now holds them
        (False when they are too few, or do not fit beside entry `protect`, which stays, as the
        caller is about to restore it). The session is not changed."""
        n = session.length
        if n == 0 or n < self.min_positions or n * self.position_bytes > self.budget:
            return False
        ids = session.ids[:n]
        shared = self._shared(ids)
        for key, entry in list(self.entries.items()):
            m, c = entry.ids.shape[0], shared[self.row_of[key]]
            if m >= n and c == n:
                self.entries.move_to_end(key)   # already held, by this entry or a longer one
                return True
            if m <= n and key != protect and c >= m - 1:
                # the new entry serves whatever this one did, but for its last position (the
                # next turn of a chat shares all of the last turn's positions but the final
                # token, which was generated and never fed back)
                self._drop(key)
        need = n * self.position_bytes
        protected = self.entries[protect].nbytes if protect is not None else 0
        if need + protected > self.budget:
            return False
        for key in [k for k in self.entries if k != protect]:   # least recently used first
            if self.nbytes + need <= self.budget and len(self.entries) < self.max_entries:
                break
            self._drop(key)
        if len(self.entries) >= self.max_entries:
            return False
        try:
            entry = _copy(session, n)
        except MemoryError:   # the machine is short of memory: the conversation is recomputed later
            return False
        self.counter += 1
        self.entries[self.counter] = entry
        self.nbytes += entry.nbytes
        if not self.free_rows:   # more entries than rows: twice the rows
            rows = self.heads.shape[0]
            self.heads = np.concatenate([self.heads, np.full_like(self.heads, -1)])
            self.key_of_row += [0] * rows
            self.free_rows = list(range(2 * rows - 1, rows - 1, -1))
        row = self.row_of[self.counter] = self.free_rows.pop()
        self.key_of_row[row] = self.counter
        head = entry.ids[:HEAD]
        self.heads[row, :head.shape[0]] = head
        return True

    def find(self, ids) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with `ids`, leaving at least the last id to
        prefill -> (its key, positions shared), or (None, 0)."""
        ids = np.asarray(ids)
        if not self.entries or ids.shape[0] < 2:
            return None, 0
        shared = self._shared(ids[:-1])
        best_kept = int(shared.max())
        if best_kept == 0:
            return None, 0
        for key in self.entries:   # the least recently used of those sharing the most
            if shared[self.row_of[key]] == best_kept:
                return key, best_kept
        raise AssertionError("a row of heads without its entry")

    def restore(self, key: int, kept: int, session) -> None:
        """Put the first `kept` positions of entry `key` into the session's cache (its
        positions from `kept` on are forgotten)."""
        entry = self.entries[key]
        if not 0 < kept <= min(entry.ids.shape[0], session.capacity):
            raise SmallMindError(f"entry {key} holds {entry.ids.shape[0]} positions; cannot restore {kept}")
        kv = session.kv
        kv.k[:, :, :kept] = entry.k[:, :, :kept]
        kv.v[:, :, :kept] = entry.v[:, :, :kept]
        session.ids[:kept] = entry.ids[:kept]
        kv.length = kept
        self.entries.move_to_end(key)

    def _drop(self, key: int) -> None:
        self.nbytes -= self.entries.pop(key).nbytes
        row = self.row_of.pop(key)
        self.heads[row] = -1
        self.free_rows.append(row)

    def _shared(self, ids: np.ndarray) -> np.ndarray:
        # ids (L,) -> (rows,): how many leading ids each row's entry shares with ids (0 for a
        # free row): the heads in one comparison, then past them an entry at a time
        h = min(HEAD, ids.shape[0])
        same = self.heads[:, :h] == ids[:h]
        shared = np.where(same.all(axis=1), h, same.argmin(axis=1))
        if h == HEAD:
            for row in np.flatnonzero(shared == HEAD):
                entry = self.entries[self.key_of_row[row]].ids
                stop = min(entry.shape[0], ids.shape[0])
                shared[row] = HEAD + common_prefix(entry[HEAD:stop], ids[HEAD:stop])
        return shared
