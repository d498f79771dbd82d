import numpy as np
import pytest

from smallmind.errors import SmallMindError
from smallmind.models.gpt import GPT, init_params, preset
from smallmind.runtime.kv_pool import KVPool


@pytest.fixture
def net():
    return GPT(init_params(preset("tiny"), seed=3))


def filled(pool, ids):
    # a request for `ids` runs and finishes: its slot keeps the whole prompt's KV
    slot, kept = pool.acquire(ids)
    pool.sessions[slot].prefill(np.asarray(ids[kept:], np.int32))
    pool.release(slot)
    return slot, kept


def test_the_pool_is_one_allocation_shared_by_its_slots(net):
    pool = KVPool(net, 3, 32, net.workspace(8))
    assert pool.k.shape == (3, 2, 4, 32, 32)
    for i, session in enumerate(pool.sessions):
        assert np.shares_memory(session.kv.k, pool.k[i]) and session.capacity == 32
    assert pool.nbytes == 2 * pool.k.nbytes


def test_a_prompt_extending_a_cached_sequence_reuses_its_slot_and_prefix(net):
    pool = KVPool(net, 2, 32, net.workspace(8))
    first, _ = filled(pool, [5, 6, 7, 8])
    filled(pool, [1, 2])
    slot, kept = pool.acquire([5, 6, 7, 8, 9, 10])
    assert (slot, kept) == (first, 4)
    assert pool.sessions[slot].length == 4


def test_a_repeated_prompt_keeps_all_but_its_last_token(net):
    pool = KVPool(net, 1, 32, net.workspace(8))
    filled(pool, [5, 6, 7])
    assert pool.acquire([5, 6, 7]) == (0, 2)


def test_without_a_shared_prefix_the_least_recently_used_free_slot_is_evicted(net):
    pool = KVPool(net, 2, 32, net.workspace(8))
    a, _ = filled(pool, [1, 2, 3])
    b, _ = filled(pool, [4, 5, 6])
    filled(pool, [1, 2, 3, 9])           # reuses a's slot: b is now the least recently used
    slot, kept = pool.acquire([20, 21])
    assert (slot, kept) == (b, 0) and pool.sessions[b].length == 0


def test_busy_slots_are_never_handed_out(net):
    pool = KVPool(net, 1, 32, net.workspace(8))
    pool.acquire([1, 2])
    with pytest.raises(SmallMindError, match="in use"):
        pool.acquire([1, 2, 3])



# ---- the prefix store: conversations evicted from their slots stay reusable

def stored_pool(net, slots=1, budget=1 << 20):
    pool = KVPool(net, slots, 32, net.workspace(8), cache_bytes=budget)
    pool.store.min_positions = 1   # these tests' sequences are a few ids long
    return pool


def test_a_conversation_that_lost_its_slot_is_restored_from_the_store_with_the_same_kv(net):
    pool = stored_pool(net)
    slot, _ = filled(pool, [5, 6, 7, 8, 9])
    k, v = pool.k[slot, :, :, :5].copy(), pool.v[slot, :, :, :5].copy()
    filled(pool, [1, 2, 3])                  # another conversation takes the only slot
    assert len(pool.store) == 1 and pool.sessions[0].length == 3
    slot, kept = pool.acquire([5, 6, 7, 8, 9, 10])
    assert kept == 5 and pool.sessions[slot].length == 5
    assert list(pool.sessions[slot].ids[:5]) == [5, 6, 7, 8, 9]
    np.testing.assert_array_equal(pool.k[slot, :, :, :5], k)
    np.testing.assert_array_equal(pool.v[slot, :, :, :5], v)
    # and what the slot held before (the other conversation) went to the store in its turn
    assert pool.store.find([1, 2, 3, 4])[1] == 3


def test_restored_kv_decodes_as_a_fresh_prefill_does(net):
    pool = stored_pool(net)
    filled(pool, [5, 6, 7, 8, 9])
    filled(pool, [1, 2, 3])
    slot, kept = pool.acquire([5, 6, 7, 8, 9, 10])
    assert kept == 5
    logits = pool.sessions[slot].prefill(np.asarray([10], np.int32)).copy()
    fresh = KVPool(net, 1, 32, net.workspace(8))
    expected = fresh.sessions[0].prefill(np.asarray([5, 6, 7, 8, 9, 10], np.int32))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_without_a_store_an_evicted_conversation_is_recomputed(net):
    pool = KVPool(net, 1, 32, net.workspace(8))
    assert pool.store is None
    filled(pool, [5, 6, 7, 8, 9])
    filled(pool, [1, 2, 3])
    assert pool.acquire([5, 6, 7, 8, 9, 10]) == (0, 0)


def test_the_next_turn_that_keeps_most_of_its_slot_copies_nothing_into_the_store(net):
    pool = stored_pool(net)
    filled(pool, [5, 6, 7, 8, 9])
    _, kept = pool.acquire([5, 6, 7, 8, 11])   # keeps 4 of 5: the same conversation
    assert kept == 4 and len(pool.store) == 0


def test_the_store_keeps_to_its_budget_dropping_the_least_recently_used(net):
    position = pool_position_bytes(net)
    pool = stored_pool(net, budget=7 * position)   # room for seven positions
    filled(pool, [1, 2, 3])
    filled(pool, [4, 5, 6])                    # [1, 2, 3] stored (3 positions)
    filled(pool, [7, 8, 9])                    # [4, 5, 6] stored (6 positions)
    filled(pool, [10, 11, 12])                 # [7, 8, 9] needs room: [1, 2, 3] is dropped
    assert pool.store.nbytes <= 7 * position and len(pool.store) == 2
    assert pool.store.find([1, 2, 3, 0])[1] == 0
    assert pool.store.find([4, 5, 6, 0])[1] == 3 and pool.store.find([7, 8, 9, 0])[1] == 3


def test_a_sequence_longer_than_the_whole_budget_is_not_stored(net):
    pool = stored_pool(net, budget=2 * pool_position_bytes(net))
    filled(pool, [1, 2, 3])
    filled(pool, [4, 5, 6])
    assert len(pool.store) == 0 and pool.store.nbytes == 0


def test_a_stored_sequence_is_replaced_by_one_that_extends_it(net):
    pool = stored_pool(net)
    filled(pool, [1, 2, 3])
    filled(pool, [9, 9])                       # [1, 2, 3] stored
    filled(pool, [1, 2, 3, 4, 5])              # [9, 9] stored; [1, 2, 3] restored and extended
    filled(pool, [8, 8, 8, 8])                 # [1, 2, 3, 4, 5] stored: it serves all [1, 2, 3] did
    entries = [[int(i) for i in e.ids] for e in pool.store.entries.values()]
    assert entries == [[9, 9], [1, 2, 3, 4, 5]]


def test_a_negative_budget_is_refused(net):
    with pytest.raises(SmallMindError, match="budget"):
        KVPool(net, 1, 32, net.workspace(8), cache_bytes=-1)


def test_a_budget_beyond_the_machines_memory_is_refused_before_allocating(net):
    with pytest.raises(SmallMindError, match="prefix cache"):
        KVPool(net, 1, 32, net.workspace(8), cache_bytes=1 << 60)


def pool_position_bytes(net):
    # an id and its keys and values in every layer
    n_layers, n_kv_heads, head_dim = net.kv_spec
    return 4 + 2 * 4 * n_layers * n_kv_heads * head_dim


def test_short_sequences_are_not_stored_and_the_entries_are_capped(net):
    pool = KVPool(net, 1, 32, net.workspace(8), cache_bytes=1 << 20)
    filled(pool, list(range(1, 16)))            # 15 positions: cheaper to prefill again
    filled(pool, list(range(100, 120)))
    assert len(pool.store) == 0
    pool.store.max_entries = 2
    for start in (200, 300, 400):
        filled(pool, list(range(start, start + 20)))
    assert [int(e.ids[0]) for e in pool.store.entries.values()] == [200, 300]
    filled(pool, [7] * 20)                      # a third entry: the least recently used goes
    assert [int(e.ids[0]) for e in pool.store.entries.values()] == [300, 400]


def test_a_machine_short_of_memory_skips_the_store_instead_of_failing_the_request(net, monkeypatch):
    from smallmind.runtime import prefix_store

    def no_memory(session, n):
        raise MemoryError

    pool = stored_pool(net)
    filled(pool, [1, 2, 3])
    monkeypatch.setattr(prefix_store, "_copy", no_memory)
    slot, kept = pool.acquire([4, 5, 6])        # the eviction's copy fails: the slot is taken anyway
    assert (slot, kept) == (0, 0) and len(pool.store) == 0 and pool.store.nbytes == 0


def test_the_entry_being_restored_is_never_dropped_to_make_room_for_the_slots_conversation(net):
    position = pool_position_bytes(net)
    pool = stored_pool(net, budget=8 * position)   # room for one of the two conversations below
    a = [1, 2, 3, 4, 5]
    filled(pool, a)
    filled(pool, [6, 7, 8, 9, 10])              # a stored; the slot holds the other one
    slot, kept = pool.acquire(a + [11])         # storing the other would need a's room: it is not stored
    assert kept == 5 and list(pool.sessions[slot].ids[:5]) == a
    assert [[int(i) for i in e.ids] for e in pool.store.entries.values()] == [a]


def test_a_roomy_store_keeps_both_the_restored_entry_and_the_slots_conversation(net):
    pool = stored_pool(net)
    a = [1, 2, 3, 4, 5]
    filled(pool, a)
    filled(pool, [6, 7, 8, 9, 10])
    pool.acquire(a + [11])
    assert sorted(int(e.ids[0]) for e in pool.store.entries.values()) == [1, 6]


def test_the_next_turn_replaces_a_stored_turn_that_differs_only_in_its_last_position(net):
    pool = stored_pool(net, slots=2)
    turn1 = [1, 2, 3, 4, 5, 6]                  # its last token generated, never fed back
    filled(pool, turn1)
    filled(pool, [20, 21, 22, 23])
    filled(pool, [30, 31, 32, 33])              # turn1's slot goes to another: turn1 stored
    assert [[int(i) for i in e.ids] for e in pool.store.entries.values()] == [turn1]
    turn2 = [1, 2, 3, 4, 5, 9, 10]              # turn1 but its last, then the next question
    filled(pool, turn2)                         # restored from the store (5 kept), and filled
    filled(pool, [40, 41, 42, 43])
    filled(pool, [50, 51, 52, 53])              # turn2 evicted in its turn: it replaces turn1
    assert [int(e.ids[0]) for e in pool.store.entries.values()].count(1) == 1
    assert pool.store.find([1, 2, 3, 4, 5, 9, 10, 11])[1] == 7


@pytest.mark.parametrize("budget_positions, slots", [(12, 1), (40, 2), (200, 3)])
def test_random_conversations_always_get_the_kv_a_fresh_prefill_gives(net, budget_positions, slots):
    # many short conversations over few symbols (so prefixes are shared), each turn either a new
    # conversation or the next turn of an earlier one; whatever a request keeps or restores
    # must be exactly the keys and values of its prompt's prefix
    rng = np.random.default_rng(budget_positions)
    position = pool_position_bytes(net)
    pool = stored_pool(net, slots=slots, budget=budget_positions * position)
    fresh = KVPool(net, 1, 32, net.workspace(8))
    history = []
    for _ in range(60):
        if history and rng.random() < 0.6:
            base = history[rng.integers(len(history))]
            ids = base[:rng.integers(1, len(base) + 1)] + list(rng.integers(0, 4, rng.integers(1, 5)))
        else:
            ids = list(rng.integers(0, 4, rng.integers(2, 12)))
        ids = ids[:30]
        slot, kept = pool.acquire(ids)
        session = pool.sessions[slot]
        assert session.length == kept and list(session.ids[:kept]) == ids[:kept] and kept < len(ids)
        if kept:
            fresh.sessions[0].reset()
            fresh.sessions[0].prefill(np.asarray(ids[:kept], np.int32), logits=False)
            np.testing.assert_allclose(session.kv.k[:, :, :kept], fresh.k[0, :, :, :kept], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(session.kv.v[:, :, :kept], fresh.v[0, :, :, :kept], rtol=1e-5, atol=1e-6)
        session.prefill(np.asarray(ids[kept:], np.int32), logits=False)
        pool.release(slot)
        history.append(ids)
        store = pool.store
        assert store.nbytes == sum(e.nbytes for e in store.entries.values()) <= store.budget
