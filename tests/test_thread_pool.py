"""The native thread pool (kernels/csrc/pool.c): every chunk of a job runs once, inside it.

Its races are a few nanoseconds wide, so the tests widen them with the pool's test pauses
(native.pool_stalls): a claimer pauses after reading the job counter, a caller between setting
up a job and publishing it. A worker that read the exhausted counter of the last job and then
compared its chunk with the next job's count (set up, not yet published) claimed a chunk
outside any job: it ran twice, or the caller returned while it still read the caller's stack
(the server's engine crashed that way, once in about ten minutes of 8-stream decoding).
"""

import numpy as np
import pytest

from smallmind.kernels.quantize import quantize

native = pytest.importorskip("smallmind.kernels.native")


@pytest.fixture
def rng():
    return np.random.default_rng(12)


@pytest.fixture
def widened_pool():
    # two threads, every product on the pool, and both pauses; all restored after
    threads = native.get_threads()
    old = native.tuning(-1, -1, 0, -1)
    native.set_threads(2)
    native.pool_stalls(50_000, 300_000)
    try:
        yield
    finally:
        native.pool_stalls(0, 0)
        native.tuning(-1, -1, old[2], -1)
        native.set_threads(threads)


def test_each_chunk_runs_once_when_a_bigger_job_follows_a_finished_one(widened_pool, rng):
    # a 2-chunk product, then an 8-chunk one that accumulates into zeros: a chunk run twice
    # doubles its columns, a job left early keeps zeros
    K = 256
    small = quantize(rng.standard_normal((16, K)).astype(np.float32), "Q8_0")
    big = quantize(rng.standard_normal((1024, K)).astype(np.float32), "Q8_0")
    x = rng.standard_normal((1, K)).astype(np.float32)
    out_small, out_big = np.empty((1, 16), np.float32), np.zeros((1, 1024), np.float32)
    native.quant_linear(x, big, None, out_big, False)
    expect = out_big.copy()
    wrong = 0
    for _ in range(200):
        native.quant_linear(x, small, None, out_small, False)
        out_big.fill(0.0)
        native.quant_linear(x, big, None, out_big, True)
        wrong += not np.array_equal(out_big, expect)
    assert wrong == 0


def test_pool_stalls_refuses_bad_pauses():
    with pytest.raises(Exception, match="pool_stalls"):
        native.pool_stalls(-1, 0)
    with pytest.raises(Exception, match="pool_stalls"):
        native.pool_stalls(0, 2_000_000_000)
    with pytest.raises(TypeError):
        native.pool_stalls(0)
