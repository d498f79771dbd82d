from types import SimpleNamespace

import numpy as np
import pytest

from smallmind.runtime.prefix_store import HEAD, PrefixStore


def session(ids):
    # what the store reads of a session: its ids, length and (L, H, ctx, D) keys and values
    ids = np.asarray(ids, np.int32)
    kv = np.arange(ids.shape[0], dtype=np.float32).reshape(1, 1, -1, 1)
    return SimpleNamespace(ids=ids, length=ids.shape[0], capacity=ids.shape[0], kv=SimpleNamespace(k=kv, v=kv.copy()))


def full_scan(store, ids):
    # the look-up as a scan of every entry: the least recently used of those sharing the most
    # ids, at least the last id of `ids` left over
    best, best_kept = None, 0
    for key, entry in store.entries.items():
        n = min(entry.ids.shape[0], len(ids) - 1)
        same = entry.ids[:n] == np.asarray(ids[:n])
        kept = n if same.all() else int(same.argmin())
        if kept > best_kept:
            best, best_kept = key, kept
    return best, best_kept


@pytest.mark.parametrize("seed", range(4))
def test_find_is_the_full_scans_answer_around_the_head_length(seed):
    # conversations sharing prefixes shorter and longer than the HEAD ids compared together
    rng = np.random.default_rng(seed)
    bases = [rng.integers(0, 5, 3 * HEAD) for _ in range(3)]   # few ids: long shared runs
    store = PrefixStore(1 << 30, 12)   # an id, a key and a value of 4 bytes each
    store.min_positions = 1
    for _ in range(60):
        base = bases[rng.integers(len(bases))]
        cut = int(rng.integers(1, base.shape[0]))
        ids = np.concatenate([base[:cut], rng.integers(0, 5, int(rng.integers(0, 10)))])
        if rng.random() < 0.7:
            store.keep(session(ids))
        else:
            expected = full_scan(store, list(ids))
            key, kept = store.find(ids)
            assert (key, kept) == expected
            if key is not None:
                store.restore(key, kept, session(np.zeros(len(ids), np.int32)))


def test_keep_holds_the_sequence_and_drops_the_entries_it_extends():
    store = PrefixStore(1 << 30, 12)   # an id, a key and a value of 4 bytes each
    store.min_positions = 1
    long = list(range(1, 2 * HEAD + 5))
    store.keep(session(long[:HEAD + 3]))              # a turn ...
    store.keep(session(long[:HEAD + 2] + [999]))      # ... replaced by one that differs in its last id
    assert [list(e.ids) for e in store.entries.values()] == [long[:HEAD + 2] + [999]]
    assert store.keep(session(long[:5]))              # held already: the entry begins with it
    assert store.keep(session(long))                  # the next turn: it serves the entry's requests
    assert [list(e.ids) for e in store.entries.values()] == [long]
    assert store.keep(session(long[:HEAD + 7]))       # held by the longer entry
    assert len(store) == 1
    assert store.find(long + [7]) == (next(iter(store.entries)), len(long))


def test_entries_that_part_after_the_head_are_told_apart():
    store = PrefixStore(1 << 30, 12)
    store.min_positions = 1
    long = list(range(1, 2 * HEAD + 5))
    store.keep(session(long[:HEAD + 10]))
    store.keep(session(long[:HEAD + 4] + [77] * 6))
    assert len(store) == 2
    first, second = list(store.entries)
    assert store.find(long[:HEAD + 8]) == (first, HEAD + 7)
    assert store.find(long[:HEAD + 4] + [77, 77, 5]) == (second, HEAD + 6)
    assert store.find(long[:HEAD - 3] + [0]) == (first, HEAD - 3)   # both share it: the older


def test_the_head_rows_grow_with_the_entries_and_are_reused_when_dropped():
    store = PrefixStore(1 << 30, 12)   # an id, a key and a value of 4 bytes each
    store.min_positions = 1
    for i in range(40):   # past the 16 rows it starts with
        store.keep(session([i + 1] * 3 + [0]))
    assert len(store) == 40 and store.find([7, 7, 7, 0, 5]) == (list(store.entries)[6], 4)
    store.budget = 10 * 4 * 12   # room for ten: the least recently used go, their rows free
    store.keep(session([500] * 4))
    assert len(store) == 10 and len(store.row_of) == 10
    assert store.find([40, 40, 40, 0, 1]) == (list(store.entries)[-2], 4)
    assert store.find([1, 1, 1, 0, 1]) == (None, 0)
