import tracemalloc

import numpy as np
import pytest

from smallmind.errors import SmallMindError
from smallmind.runtime.sampler import Sampler, largest

V = 50


def random_logits(seed, n=V):
    return np.random.default_rng(seed).normal(0.0, 2.0, n).astype(np.float32)


def draws(sampler, logits, n):
    return np.array([sampler.sample(logits) for _ in range(n)])


def test_greedy_is_argmax():
    sampler = Sampler(V, temperature=0.0, seed=0)
    for seed in range(20):
        logits = random_logits(seed)
        assert sampler.sample(logits) == int(np.argmax(logits))


def test_greedy_ignores_top_k_top_p_and_the_seed():
    logits = random_logits(1)
    a = Sampler(V, temperature=0.0, top_k=3, top_p=0.5, seed=1)
    b = Sampler(V, temperature=0.0, seed=2)
    assert draws(a, logits, 10).tolist() == draws(b, logits, 10).tolist() == [int(np.argmax(logits))] * 10


def _traced_memory_of_100_samples(sampler, logits):
    # -> (peak, after, before) traced bytes around 100 draws, after one warm-up draw
    sampler.sample(logits)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(100):
            sampler.sample(logits)
        peak, after = tracemalloc.get_traced_memory()[1], tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return peak, after, before


def test_greedy_allocates_nothing_that_outlives_a_step():
    sampler = Sampler(V, temperature=0.0)
    logits = random_logits(2)
    peak, after, before = _traced_memory_of_100_samples(sampler, logits)
    # the loop's iterator, the argmax scalar and the int made from it, freed at once; a (V,)
    # working array (400 bytes of data plus its header) would not fit under this
    assert peak - before < 256
    assert after - before <= 0


def test_temperature_sampling_follows_the_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    counts = np.bincount(draws(Sampler(3, temperature=1.0, seed=0), logits, 20000), minlength=3)
    assert np.allclose(counts / 20000, [0.5, 0.3, 0.2], atol=0.015)


def test_low_temperature_sharpens_and_high_temperature_flattens():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    cold = np.bincount(draws(Sampler(3, temperature=0.25, seed=0), logits, 5000), minlength=3) / 5000
    hot = np.bincount(draws(Sampler(3, temperature=4.0, seed=0), logits, 5000), minlength=3) / 5000
    expected_cold = np.array([0.5, 0.3, 0.2]) ** 4 / (np.array([0.5, 0.3, 0.2]) ** 4).sum()
    assert np.allclose(cold, expected_cold, atol=0.02)
    assert hot.max() - hot.min() < 0.1


def test_top_k_never_picks_outside_the_k_largest():
    logits = random_logits(3)
    allowed = set(np.argsort(logits)[-5:].tolist())
    picked = draws(Sampler(V, temperature=2.0, top_k=5, seed=0), logits, 3000)
    assert set(picked.tolist()) == allowed  # only those, and at a high temperature each of them


def test_top_k_keeps_exactly_k_when_values_tie():
    logits = np.zeros(V, dtype=np.float32)
    picked = draws(Sampler(V, temperature=1.0, top_k=4, seed=0), logits, 2000)
    assert len(set(picked.tolist())) == 4


def test_top_p_never_picks_outside_the_nucleus():
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02], dtype=np.float64)
    logits = np.log(probs).astype(np.float32)
    # the smallest top set holding 0.75: 0.4 + 0.25 = 0.65 is short, adding 0.15 reaches 0.8
    picked = draws(Sampler(7, temperature=1.0, top_p=0.75, seed=0), logits, 4000)
    assert set(picked.tolist()) == {0, 1, 2}
    freq = np.bincount(picked, minlength=3)[:3] / 4000
    assert np.allclose(freq, probs[:3] / probs[:3].sum(), atol=0.03)


def test_top_p_keeps_the_top_token_even_below_its_mass():
    logits = np.log(np.array([0.6, 0.3, 0.1], dtype=np.float32))
    assert set(draws(Sampler(3, temperature=1.0, top_p=0.1, seed=0), logits, 500).tolist()) == {0}


def test_top_k_then_top_p_apply_together():
    probs = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    logits = np.log(probs).astype(np.float32)
    # top-3 renormalised: 0.3/0.75=0.4, 0.25/0.75=0.33, 0.2/0.75=0.27; top_p 0.6 keeps the first two
    picked = draws(Sampler(5, temperature=1.0, top_k=3, top_p=0.6, seed=0), logits, 2000)
    assert set(picked.tolist()) == {0, 1}


def test_same_seed_same_tokens_and_another_seed_other_tokens():
    logits = random_logits(4)
    a, b, c = (draws(Sampler(V, temperature=1.0, top_p=0.9, seed=s), logits, 50) for s in (7, 7, 8))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
])
def test_nonsense_settings_are_refused(kwargs, message):
    with pytest.raises(SmallMindError, match=message):
        Sampler(V, **kwargs)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-7])
def test_a_temperature_below_the_epsilon_is_greedy_not_overflow(temperature):
    sampler = Sampler(V, temperature=temperature, seed=1)
    assert sampler.greedy
    for seed in range(5):
        logits = random_logits(seed)
        assert sampler.sample(logits) == int(np.argmax(logits))


def test_a_small_temperature_above_the_epsilon_still_samples():
    logits = np.zeros(V, np.float32)  # a tie everywhere: only a real draw spreads over the ids
    assert len(set(draws(Sampler(V, temperature=1e-3, seed=1), logits, 200).tolist())) > 10


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 2.5}, "top_k must be an integer"),
    ({"top_k": True}, "top_k must be an integer"),
    ({"top_p": "0.5"}, "top_p must be a number"),
    ({"temperature": None}, "temperature must be a finite number"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"seed": 1.5}, "seed must be a non-negative integer"),
])
def test_settings_of_the_wrong_type_are_refused(kwargs, message):
    with pytest.raises(SmallMindError, match=message):
        Sampler(V, **kwargs)


def test_temperature_sampling_allocates_nothing_that_outlives_a_step():
    sampler = Sampler(V, temperature=0.8, seed=0)
    logits = random_logits(5)
    peak, after, before = _traced_memory_of_100_samples(sampler, logits)
    assert peak - before < 256   # a (V,) float array would not fit under this
    assert after - before <= 0


def full_sort_nucleus(logits, temperature, top_p):
    # the definition: the smallest head of the stable descending sort holding top_p of the mass
    p = np.exp((logits.astype(np.float64) - logits.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    mass_before = np.cumsum(p[order]) - p[order]
    return set(order[:max(1, int(np.count_nonzero(mass_before < top_p)))].tolist())


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_top_p_over_a_big_vocabulary_keeps_exactly_the_nucleus(top_p):
    # a flat distribution over 5000 ids: the nucleus holds far more than the first candidates
    n = 5000
    logits = np.random.default_rng(6).normal(0.0, 0.3, n).astype(np.float32)
    nucleus = full_sort_nucleus(logits, 1.0, top_p)
    assert len(nucleus) > 64
    sampler = Sampler(n, temperature=1.0, top_p=top_p, seed=0)
    kept, _ = sampler._nucleus(logits)
    assert set(kept.tolist()) == nucleus


def test_top_p_keeps_the_lower_ids_of_a_tie_at_the_cut():
    logits = np.zeros(200, np.float32)
    logits[[150, 20]] = 3.0   # two leaders, then 198 ties
    kept, _ = Sampler(200, temperature=1.0, top_p=0.5, seed=0)._nucleus(logits)
    expected = full_sort_nucleus(logits, 1.0, 0.5)
    assert set(kept.tolist()) == expected and {20, 150} <= expected and max(expected - {150}) < 150


@pytest.mark.parametrize("kwargs", [{}, {"top_p": 0.9}])
def test_nan_logits_raise_instead_of_hanging(kwargs):
    logits = random_logits(7)
    logits[3] = np.nan
    with pytest.raises(SmallMindError, match="NaN"):
        Sampler(V, temperature=1.0, seed=0, **kwargs).sample(logits)


def full_sort_largest(values, k):
    # the definition: the head of the stable descending sort, in id order
    return np.sort(np.argsort(-values, kind="stable")[:k])


@pytest.mark.parametrize("scale, k", [(0.5, 40), (3.0, 40), (50.0, 200), (50.0, 4999), (1.0, 5000)])
def test_largest_is_the_head_of_the_stable_sort(scale, k):
    # scale 50: few values lie near the top, so the candidates widen span by span
    values = np.random.default_rng(int(scale * 10) + k).normal(0.0, scale, 5000).astype(np.float32)
    values[[10, 700, 4000]] = values.max()   # ties at the top
    assert np.array_equal(largest(values, k), full_sort_largest(values, k))


def test_largest_keeps_the_lower_ids_of_a_tie_at_the_kth_place():
    values = np.zeros(1000, np.float32)
    values[[900, 5]] = 2.0
    values[[999, 3]] = -1.0
    assert largest(values, 6).tolist() == [0, 1, 2, 4, 5, 900]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_largest_refuses_a_nan_or_an_infinity(bad):
    values = random_logits(8)
    values[7] = bad
    with pytest.raises(SmallMindError, match="NaN"):
        largest(values, 3)
    with pytest.raises(SmallMindError, match="NaN"):
        Sampler(V, temperature=1.0, top_k=3, seed=0).sample(values)


def test_top_p_widens_its_candidates_until_the_cut_falls_inside():
    # one token holds half the mass; the other half is spread so thin (each below 2^-10 of the
    # top) that the first candidates are the top token alone
    n = 3000
    probs = np.full(n, 0.5 / (n - 1))
    probs[1234] = 0.5
    logits = np.log(probs).astype(np.float32)
    for top_p in (0.4, 0.9):
        kept, _ = Sampler(n, temperature=1.0, top_p=top_p, seed=0)._nucleus(logits)
        assert set(kept.tolist()) == full_sort_nucleus(logits, 1.0, top_p)
    assert len(kept) > 1000


def test_top_p_over_a_peaked_big_vocabulary_keeps_exactly_the_nucleus():
    n = 262144
    logits = np.random.default_rng(9).normal(0.0, 3.0, n).astype(np.float32)
    logits[:5] += 25.0   # a handful of likely tokens, as a language model's next token
    for top_p in (0.5, 0.95):
        kept, _ = Sampler(n, temperature=1.0, top_p=top_p, seed=0)._nucleus(logits)
        assert set(kept.tolist()) == full_sort_nucleus(logits, 1.0, top_p)
