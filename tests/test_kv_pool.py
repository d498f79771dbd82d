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

