"""Native kernels against their NumPy references, on every ISA path this CPU runs, with
awkward sizes, strided and misaligned views; and the refusals of bad input."""

import subprocess
import threading
import sys

import numpy as np
import pytest

from smallmind import kernels
from smallmind.errors import KernelInputError
from smallmind.kernels import reference as ref

native = pytest.importorskip("smallmind.kernels.native")


ISA_LIST = native.supported_isas()


@pytest.fixture(params=ISA_LIST)
def isa(request):
    previous = native.isa()
    native.select_isa(request.param)
    yield request.param
    native.select_isa(previous)


def view(rng, shape, *, pad=0, scale=1.0, dtype=np.float32):
    # shape -> float32 array of that shape living at a one-float offset inside a bigger
    # buffer (misaligned), with `pad` extra floats between rows (strided leading dims)
    shape = tuple(shape)
    last = shape[-1] if shape else 1
    lead = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    buf = np.empty(1 + lead * (last + pad), dtype=dtype)
    body = buf[1:].reshape(lead, last + pad)[:, :last]
    body[...] = (rng.standard_normal(body.shape) * scale).astype(dtype)
    out = body.reshape(shape)
    assert out.base is not None and np.shares_memory(out, buf)  # a view, never a copy
    return out


def close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ------------------------------------------------------------------ agreement with the references

@pytest.mark.parametrize("T", [1, 4, 7, 17, 40, 130])
@pytest.mark.parametrize("K,N", [(1, 7), (33, 31), (256, 768), (1024, 33)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("accumulate", [False, True])
def test_linear_matches_reference(isa, rng, T, K, N, bias, accumulate):
    x, w = view(rng, (T, K), pad=3), view(rng, (N, K), pad=1)
    b = view(rng, (N,)) if bias else None
    out = view(rng, (T, N), pad=2)
    expect = out.copy()
    ref.linear(x, w, b, expect, accumulate)
    got = native.linear(x, w, b, out, accumulate)
    assert got is out
    close(out, expect, atol=1e-4 * np.sqrt(K))


@pytest.mark.parametrize("T,pos0", [(1, 0), (1, 5), (1, 130), (7, 0), (33, 10), (130, 0)])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("D", [8, 32, 33])  # 8 and 32: eight keys a step, one and four vectors deep
def test_attention_matches_reference(isa, rng, T, pos0, H, Hkv, D):
    smax = pos0 + T + 3
    qkv = view(rng, (T, 3, H, D))
    q = qkv[:, 0]  # a strided view, as when q is split out of a fused qkv buffer
    k_cache, v_cache = view(rng, (Hkv, smax, D), pad=2), view(rng, (Hkv, smax, D))
    out, expect = view(rng, (T, H, D)), np.empty((T, H, D), np.float32)
    ref.attention(q, k_cache, v_cache, pos0, expect, 0.3)
    native.attention(q, k_cache, v_cache, pos0, out, 0.3)
    close(out, expect)


@pytest.mark.parametrize("T", [2, 5, 20])  # per-query path, then the blocked prefill path
def test_attention_ignores_positions_beyond_the_query(isa, rng, T):
    q, k, v = view(rng, (T, 2, 8)), view(rng, (2, T + 10, 8)), view(rng, (2, T + 10, 8))
    out1, out2 = np.empty((T, 2, 8), np.float32), np.empty((T, 2, 8), np.float32)
    native.attention(q, k, v, 3, out1, 0.5)
    k[:, T + 3:], v[:, T + 3:] = np.nan, np.inf  # beyond the last query's position
    native.attention(q, k, v, 3, out2, 0.5)
    np.testing.assert_array_equal(out1, out2)
    assert np.isfinite(out1).all()


def test_attention_prefill_with_a_wide_head_matches_reference(isa, rng):
    # head dim above the blocked path's stack tile: the per-query path serves prefill too
    q, k, v = view(rng, (5, 2, 130)), view(rng, (1, 9, 130)), view(rng, (1, 9, 130))
    out, expect = np.empty((5, 2, 130), np.float32), np.empty((5, 2, 130), np.float32)
    ref.attention(q, k, v, 2, expect, 0.1)
    native.attention(q, k, v, 2, out, 0.1)
    close(out, expect)


@pytest.mark.parametrize("T,pos0,window", [(1, 0, 1), (1, 40, 7), (5, 3, 4), (20, 0, 6), (37, 70, 64), (20, 5, 100)])
def test_sliding_window_attention_matches_reference(isa, rng, T, pos0, window):
    # per-query (T < 4) and blocked prefill paths; windows smaller and larger than a key tile
    q = view(rng, (T, 4, 16), pad=1)
    k_cache, v_cache = view(rng, (2, pos0 + T + 2, 16)), view(rng, (2, pos0 + T + 2, 16), pad=3)
    out, expect = np.empty((T, 4, 16), np.float32), np.empty((T, 4, 16), np.float32)
    ref.attention(q, k_cache, v_cache, pos0, expect, 0.4, window)
    native.attention(q, k_cache, v_cache, pos0, out, 0.4, window)
    close(out, expect)


@pytest.mark.parametrize("T", [2, 20])
def test_sliding_window_attention_ignores_keys_before_the_window(isa, rng, T):
    pos0, window = 30, 5
    q, k, v = view(rng, (T, 2, 8)), view(rng, (1, pos0 + T, 8)), view(rng, (1, pos0 + T, 8))
    out1, out2 = np.empty((T, 2, 8), np.float32), np.empty((T, 2, 8), np.float32)
    native.attention(q, k, v, pos0, out1, 0.5, window)
    k[:, :pos0 + 1 - window], v[:, :pos0 + 1 - window] = np.nan, np.inf  # before the first query's window
    native.attention(q, k, v, pos0, out2, 0.5, window)
    np.testing.assert_array_equal(out1, out2)
    assert np.isfinite(out1).all()


def test_sliding_window_of_one_attends_to_the_own_position_only(rng):
    q, k, v = view(rng, (3, 1, 4)), view(rng, (1, 5, 4)), view(rng, (1, 5, 4))
    out = np.empty((3, 1, 4), np.float32)
    ref.attention(q, k, v, 2, out, 1.0, 1)
    close(out[:, 0], v[0, 2:5])


def test_attention_refuses_a_negative_window(rng):
    q, k = view(rng, (1, 1, 4)), view(rng, (1, 3, 4))
    with pytest.raises(KernelInputError, match="window"):
        native.attention(q, k, k.copy(), 0, np.empty((1, 1, 4), np.float32), 1.0, -1)


def _mostly_equal(got, expect, share=0.99):
    # a half cache's attention rounds q and the probabilities to f16: where native and
    # reference exponentials differ in the last bit a probability may round the other way
    # (one f16 step), so nearly all values agree to float precision and the rest closely
    exact = np.abs(got - expect) <= 1e-5 + 1e-5 * np.abs(expect)
    assert exact.mean() >= share, f"only {exact.mean():.1%} agree to float precision"
    close(got, expect, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("T,pos0,window", [(1, 0, 0), (1, 130, 0), (1, 40, 7), (7, 0, 0), (33, 10, 0),
                                           (20, 5, 6), (130, 0, 64)])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 2)])
@pytest.mark.parametrize("D", [8, 33, 64])
def test_attention_over_a_half_cache_matches_reference(isa, rng, T, pos0, window, H, Hkv, D):
    smax = pos0 + T + 3
    q = view(rng, (T, 3, H, D))[:, 0]
    k_cache = view(rng, (Hkv, smax, D), pad=2, dtype=np.float16)
    v_cache = view(rng, (Hkv, smax, D), dtype=np.float16)
    out, expect = view(rng, (T, H, D)), np.empty((T, H, D), np.float32)
    ref.attention(q, k_cache, v_cache, pos0, expect, 0.3, window)
    native.attention(q, k_cache, v_cache, pos0, out, 0.3, window)
    _mostly_equal(out, expect)


def test_half_cache_attention_rounds_q_and_probabilities_to_f16(rng):
    # the reference, against llama.cpp's recipe written out: K16 . f16(q), exact softmax,
    # f16(probabilities) . V16 (a float32 cache of the same values would skip both roundings)
    q, k, v = view(rng, (3, 2, 16)), view(rng, (1, 9, 16), dtype=np.float16), view(rng, (1, 9, 16), dtype=np.float16)
    got = np.empty((3, 2, 16), np.float32)
    ref.attention(q, k, v, 6, got, 0.25)
    qh = q.astype(np.float16).astype(np.float64)
    for t in range(3):
        for h in range(2):
            s = (k[0, :7 + t].astype(np.float64) @ qh[t, h]).astype(np.float32) * np.float32(0.25)
            e = np.exp(s - s.max())
            p = (e * np.float32(1.0 / e.sum(dtype=np.float64))).astype(np.float16).astype(np.float64)
            close(got[t, h], p @ v[0, :7 + t].astype(np.float64))
    unrounded = np.empty_like(got)
    ref.attention(q, k.astype(np.float32), v.astype(np.float32), 6, unrounded, 0.25)
    assert np.abs(unrounded - got).max() > 1e-5  # the roundings are there to see


def test_half_cache_attention_beyond_the_stacked_scores_matches_reference(isa, rng):
    # a span longer than SM_ATTN_SCORES (8192): the native kernel recomputes scores per pass
    pos0 = 8300
    q = view(rng, (1, 2, 8))
    k, v = view(rng, (1, pos0 + 1, 8), dtype=np.float16), view(rng, (1, pos0 + 1, 8), dtype=np.float16)
    out, expect = np.empty((1, 2, 8), np.float32), np.empty((1, 2, 8), np.float32)
    ref.attention(q, k, v, pos0, expect, 2.0)
    native.attention(q, k, v, pos0, out, 2.0)
    _mostly_equal(out, expect, share=0.9)


@pytest.mark.parametrize("T,pos0,window", [(1, 130, 0), (1, 2500, 0), (1, 9000, 600), (6, 3000, 0), (20, 40, 7)])
@pytest.mark.parametrize("H,Hkv,D", [(4, 1, 256), (9, 3, 24), (8, 2, 33)])
def test_half_cache_attention_gives_the_same_bits_whatever_heads_share_a_key(isa, rng, T, pos0, window, H, Hkv,
                                                                                 D):
    # one thread takes a KV group's query heads together (each key and value widened once for
    # all of them, scores kept in chunks of 8192 / heads); eight threads take them one by one
    q = view(rng, (T, H, D), pad=1)
    k = view(rng, (Hkv, pos0 + T, D), dtype=np.float16)
    v = view(rng, (Hkv, pos0 + T, D), dtype=np.float16)
    outs = []
    before = kernels.get_threads()
    try:
        for threads in (1, 8):
            kernels.set_threads(threads)
            assert kernels.get_threads() == threads
            out = np.empty((T, H, D), np.float32)
            native.attention(q, k, v, pos0, out, 0.3, window)
            outs.append(out)
    finally:
        kernels.set_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.isfinite(outs[0]).all()


def test_attention_refuses_caches_of_different_dtypes(rng):
    q, k = view(rng, (1, 1, 4)), view(rng, (1, 3, 4))
    with pytest.raises(KernelInputError, match="same dtype"):
        native.attention(q, k, k.astype(np.float16), 0, np.empty((1, 1, 4), np.float32), 1.0, 0)
    with pytest.raises(KernelInputError, match="float32 or float16"):
        native.attention(q, k.astype(np.float64), k.astype(np.float64), 0, np.empty((1, 1, 4), np.float32), 1.0, 0)


def test_kv_cache_store_rounds_to_nearest_even_half(isa, rng):
    # ties, subnormals, the largest half and overflow, infinities, NaN: as numpy's astype, on
    # every kernel path (the vector conversion and its scalar tail: 32 values a head plus 5)
    tiny = 2.0 ** -24
    special = np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 65504, 65519.99, 65520, 1e6, -1e6, np.inf, -np.inf, 0.0,
                        -0.0, tiny, tiny / 2, tiny * 0.5001, tiny * 1.5, tiny * 2.5, 2 ** -14 * (1 - 2 ** -11),
                        2 ** -14, 1e-30, 3.14159, -2.71828, np.nan], np.float32)
    values = np.concatenate([special, (rng.standard_normal(1024 - special.size) * 10).astype(np.float32)])
    k = values.reshape(16, 2, 32)
    caches = [np.zeros((2, 20, 32), np.float16) for _ in range(2)]
    native.kv_cache_store(k, -k, *caches, 3)
    with np.errstate(over="ignore"):
        expect = k.transpose(1, 0, 2).astype(np.float16)
    nan = np.isnan(expect)
    np.testing.assert_array_equal(caches[0][:, 3:19].view(np.uint16)[~nan], expect.view(np.uint16)[~nan])
    np.testing.assert_array_equal(caches[1][:, 3:19].view(np.uint16)[~nan], (-expect).view(np.uint16)[~nan])
    assert np.isnan(caches[0][:, 3:19][nan]).all()
    assert not caches[0][:, :3].any() and not caches[0][:, 19:].any()
    twin = [np.zeros((2, 20, 32), np.float16) for _ in range(2)]
    ref.kv_cache_store(k, -k, *twin, 3)
    np.testing.assert_array_equal(twin[0][:, 3:19].view(np.uint16)[~nan], expect.view(np.uint16)[~nan])
    # the batched store, a head dim with a scalar tail: each row into its own cache at its position
    rows = np.concatenate([special, special[::-1]])[:37].reshape(1, 1, 37).repeat(3, axis=0)
    rows[1] *= -3.0
    rows[2] /= 7.0
    k_caches = [np.zeros((2, 1, 9, 37), np.float16) for _ in range(3)]
    v_caches = [np.zeros((2, 1, 9, 37), np.float16) for _ in range(3)]
    native.kv_cache_store_rows(rows, -rows, k_caches, v_caches, 1, np.array([0, 8, 4]))
    with np.errstate(over="ignore"):
        want = rows.astype(np.float16)
    for b, p in enumerate((0, 8, 4)):
        for got, sign in ((k_caches[b], 1), (v_caches[b], -1)):
            w = (sign * want[b, 0]).view(np.uint16)
            ok = ~np.isnan(want[b, 0])
            np.testing.assert_array_equal(got[1, 0, p].view(np.uint16)[ok], w[ok])
            assert np.isnan(got[1, 0, p][~ok]).all()
            assert np.count_nonzero(got.view(np.uint16)) == np.count_nonzero(got[1, 0, p].view(np.uint16))


@pytest.mark.parametrize("T,Hkv,D,pos0", [(1, 3, 8, 0), (5, 2, 33, 7)])
def test_kv_cache_store_matches_reference(rng, T, Hkv, D, pos0):
    k, v = view(rng, (T, Hkv, D)), view(rng, (T, Hkv, D), pad=2)
    caches = [view(rng, (Hkv, 20, D), pad=1) for _ in range(2)]
    expect = [c.copy() for c in caches]
    ref.kv_cache_store(k, v, *expect, pos0)
    native.kv_cache_store(k, v, *caches, pos0)
    np.testing.assert_array_equal(caches[0], expect[0])
    np.testing.assert_array_equal(caches[1], expect[1])


def test_kv_cache_store_refuses_a_full_cache(rng):
    k = view(rng, (3, 2, 4))
    cache = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(IndexError):
        native.kv_cache_store(k, k, cache, cache.copy(), 2)
    assert not cache.any()


@pytest.mark.parametrize("T,C", [(1, 1), (7, 33), (31, 256), (3, 4097)])
def test_layer_norm_matches_reference(isa, rng, T, C):
    x, w, b = view(rng, (T, C), pad=1, scale=3.0), view(rng, (C,)), view(rng, (C,))
    out, mean, rstd = view(rng, (T, C), pad=5), view(rng, (T,)), view(rng, (T,))
    e_out, e_mean, e_rstd = (np.empty_like(a) for a in (out, mean, rstd))
    ref.layer_norm(x, w, b, e_out, 1e-5, e_mean, e_rstd)
    native.layer_norm(x, w, b, out, 1e-5, mean, rstd)
    close(out, e_out)
    close(mean, e_mean)
    close(rstd, e_rstd)


def test_layer_norm_in_place(isa, rng):
    x = view(rng, (5, 40))
    w, b = view(rng, (40,)), view(rng, (40,))
    expect = np.empty_like(x)
    ref.layer_norm(x, w, b, expect)
    native.layer_norm(x, w, b, x)
    close(x, expect)


@pytest.mark.parametrize("T,C", [(1, 1), (7, 33), (64, 256), (2, 4097), (3000, 40)])
def test_layer_norm_backward_matches_reference(isa, rng, T, C):
    x, w, dout = view(rng, (T, C), pad=2), view(rng, (C,)), view(rng, (T, C), pad=1)
    mean, rstd = np.empty(T, np.float32), np.empty(T, np.float32)
    ref.layer_norm(x, w, w, np.empty((T, C), np.float32), 1e-5, mean, rstd)
    grads = [view(rng, (T, C), pad=3), view(rng, (C,)), view(rng, (C,))]
    expect = [g.copy() for g in grads]
    ref.layer_norm_backward(dout, x, w, mean, rstd, *expect)
    native.layer_norm_backward(dout, x, w, mean, rstd, *grads)
    for g, e in zip(grads, expect):
        close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T", [31, 33, 2048, 5000])
def test_layer_norm_backward_gives_the_same_bits_however_the_threads_split_the_rows(isa, rng, T):
    # blocks of rows fixed by T alone, their parameter-gradient sums added in block order
    x, w, dout = view(rng, (T, 24)), view(rng, (24,)), view(rng, (T, 24))
    mean, rstd = np.empty(T, np.float32), np.empty(T, np.float32)
    ref.layer_norm(x, w, w, np.empty((T, 24), np.float32), 1e-5, mean, rstd)
    before, results = kernels.get_threads(), []
    try:
        for threads in (1, 2, 3):
            kernels.set_threads(threads)
            grads = [np.ones((T, 24), np.float32), np.ones(24, np.float32), np.ones(24, np.float32)]
            native.layer_norm_backward(dout, x, w, mean, rstd, *grads)
            results.append(grads)
    finally:
        kernels.set_threads(before)
    for other in results[1:]:
        for got, first in zip(other, results[0]):
            np.testing.assert_array_equal(got, first)


@pytest.mark.parametrize("T,C", [(1, 7), (9, 4097)])
def test_rms_norm_matches_reference(isa, rng, T, C):
    x, w, out = view(rng, (T, C), pad=1), view(rng, (C,)), view(rng, (T, C))
    expect = np.empty_like(out)
    ref.rms_norm(x, w, expect, 1e-6)
    native.rms_norm(x, w, out, 1e-6)
    # both sum the squares in double and round the mean to float, as ggml does: equal bits
    np.testing.assert_array_equal(out, expect)


UNARY = ["gelu", "silu"]
BINARY = ["gelu_backward", "swiglu", "geglu"]


@pytest.mark.parametrize("name", UNARY + BINARY)
@pytest.mark.parametrize("shape", [(1,), (31,), (7, 33), (2, 3, 4097), (70000,)])
def test_elementwise_matches_reference(isa, rng, name, shape):
    args = [view(rng, shape, scale=4.0) for _ in range(1 if name in UNARY else 2)]
    out = view(rng, shape)
    getattr(native, name)(*args, out)
    close(out, ref_f64(name, *args), atol=1e-6)


def ref_f64(name, *args):
    # the reference evaluated in float64: the float32 reference itself loses relative
    # accuracy in the tails (1 + tanh near tanh = -1), which the native kernels do not
    args64 = [a.astype(np.float64) for a in args]
    out = np.empty(args[0].shape, np.float64)
    with np.errstate(all="ignore"):
        getattr(ref, name)(*args64, out)
    return out


@pytest.mark.parametrize("name", UNARY + BINARY)
def test_elementwise_on_strided_last_dim_and_in_place(isa, rng, name):
    big = view(rng, (9, 66), scale=3.0)
    args = [big[:, ::2]] + ([big[:, 1::2]] if name in BINARY else [])  # last dim stride 2
    expect = ref_f64(name, *args)
    getattr(native, name)(*args, args[0])  # out is the first input itself
    close(args[0], expect, atol=1e-6)


@pytest.mark.parametrize("name", UNARY)
def test_activations_keep_nan_inf_and_tails(isa, name):
    x = np.array([-np.inf, -1000, -104, -88, -30, -9, -1e-7, 0, 1e-7, 0.5, 20, 88, 1000, np.inf, np.nan],
                 np.float32)
    got = np.empty_like(x)
    getattr(native, name)(x, got)
    np.testing.assert_allclose(got, ref_f64(name, x), rtol=1e-6, atol=1e-20)


def test_exp_accuracy_over_a_sweep(isa):
    # softmax of a 2-element row [x, 0] is sigmoid(x): exercises exp over its whole range
    x = np.linspace(-87, 87, 200001, dtype=np.float32)
    rows = np.stack([x, np.zeros_like(x)], axis=1)
    got, expect = np.empty_like(rows), np.empty_like(rows)
    native.softmax(rows, got)
    ref.softmax(rows, expect)
    np.testing.assert_allclose(got, expect, rtol=3e-6, atol=1e-37)


@pytest.mark.parametrize("R,N", [(1, 1), (7, 33), (5, 4097)])
def test_softmax_matches_reference(isa, rng, R, N):
    x, out = view(rng, (R, N), pad=1, scale=5.0), view(rng, (R, N))
    expect = np.empty_like(out)
    ref.softmax(x, expect)
    native.softmax(x, out)
    close(out, expect)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("T,H,D,pos0", [(1, 1, 2, 0), (7, 3, 34, 5), (3, 2, 128, 1000)])
def test_rope_matches_reference(isa, rng, neox, T, H, D, pos0):
    big = view(rng, (T, H + 1, D))
    x, out = big[:, 1:], view(rng, (T, H, D))
    expect = np.empty((T, H, D), np.float32)
    ref.rope(x, pos0, 10000.0, expect, neox)
    native.rope(x, pos0, 10000.0, out, neox)
    close(out, expect)
    native.rope(x, pos0, 10000.0, x, neox)  # in place
    close(x, expect)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_with_frequency_factors_matches_reference(isa, rng, neox):
    x, out = view(rng, (5, 3, 16), pad=2), np.empty((5, 3, 16), np.float32)
    factors = rng.uniform(1.0, 8.0, 8).astype(np.float32)
    expect = np.empty((5, 3, 16), np.float32)
    ref.rope(x, 300, 500000.0, expect, neox, factors)
    native.rope(x, 300, 500000.0, out, neox, factors)
    close(out, expect)


def test_rope_frequency_factor_divides_the_frequency(rng):
    # factor f on every pair at position p equals no factor at position p / f
    x = view(rng, (1, 2, 8))
    scaled, plain = np.empty((1, 2, 8), np.float32), np.empty((1, 2, 8), np.float32)
    ref.rope(x, 12, 10000.0, scaled, False, np.full(4, 4.0, np.float32))
    ref.rope(x, 3, 10000.0, plain, False)
    close(scaled, plain)


@pytest.mark.parametrize("bad", [np.zeros(4, np.float32), np.ones(3, np.float32), np.full(4, np.inf, np.float32)])
def test_rope_refuses_bad_frequency_factors(rng, bad):
    x = view(rng, (1, 1, 8))
    with pytest.raises(KernelInputError, match="freq_factors"):
        native.rope(x, 0, 10000.0, np.empty((1, 1, 8), np.float32), False, bad)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("with_wpe", [True, False])
def test_embedding_matches_reference(rng, dtype, with_wpe):
    wte, wpe = view(rng, (50, 33), pad=1), view(rng, (20, 33)) if with_wpe else None
    tokens = rng.integers(0, 50, size=14).astype(dtype)[::2]
    out, expect = view(rng, (7, 33)), np.empty((7, 33), np.float32)
    ref.embedding(tokens, wte, wpe, 4, expect)
    native.embedding(tokens, wte, wpe, 4, out)
    close(out, expect, rtol=0, atol=0)


def test_embedding_backward_matches_reference(rng):
    tokens = rng.integers(0, 9, size=40).astype(np.int64)  # repeated ids must all accumulate
    dout, dwte = view(rng, (40, 33), pad=1), view(rng, (9, 33))
    expect = dwte.copy()
    ref.embedding_backward(tokens, dout, expect)
    native.embedding_backward(tokens, dout, dwte)
    close(dwte, expect)


@pytest.mark.parametrize("N,V", [(1, 2), (7, 33), (5, 4097)])
@pytest.mark.parametrize("grad", ["none", "separate", "in_place"])
def test_cross_entropy_matches_reference(isa, rng, N, V, grad):
    logits = view(rng, (N, V), pad=1, scale=4.0)
    targets = rng.integers(0, V, size=N).astype(np.int32)
    losses, e_losses = view(rng, (N,)), np.empty(N, np.float32)
    e_d = np.empty((N, V), np.float32)
    ref.cross_entropy(logits, targets, e_losses, e_d, 0.25)
    d = {"none": None, "separate": view(rng, (N, V)), "in_place": logits}[grad]
    native.cross_entropy(logits, targets, losses, d, 0.25)
    close(losses, e_losses)
    if d is not None:
        close(d, e_d)


@pytest.mark.parametrize("shape", [(1,), (4097,), (70001,), (3, 33)])
def test_adamw_step_matches_reference(isa, rng, shape):
    p, g, m = view(rng, shape), view(rng, shape), view(rng, shape, scale=0.1)
    v = np.abs(view(rng, shape, scale=0.1))
    expect = [a.copy() for a in (p, g, m, v)]
    ref.adamw_step(*expect, 3e-3, 0.9, 0.95, 1e-8, 0.1, 7)
    native.adamw_step(p, g, m, v, 3e-3, 0.9, 0.95, 1e-8, 0.1, 7)
    for got, e in zip((p, m, v), (expect[0], expect[2], expect[3])):
        close(got, e, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ rows kernels (a decode batch)

def _rows_caches(rng, B, n_layers, Hkv, S, D, dtype):
    # B pairs of (n_layers, Hkv, S, D) caches, misaligned by one element and padded between rows
    return ([view(rng, (n_layers, Hkv, S, D), pad=3, dtype=dtype) for _ in range(B)],
            [view(rng, (n_layers, Hkv, S, D), pad=1, dtype=dtype) for _ in range(B)])


def _rope_rows_afresh(x, positions, theta, neox, freqs):
    # padded to more rows than module.c's angle tables hold: every row's angles made anew
    pad = 65 - x.shape[0]
    xx = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.float32)])
    pp = np.concatenate([positions, np.zeros(pad, positions.dtype)])
    out = np.empty_like(xx)
    native.rope_rows(xx, pp, theta, out, neox, freqs)
    return out[:x.shape[0]]


def test_rope_angle_tables_serve_only_calls_of_the_same_angles(isa, rng):
    # each call after the first changes one thing its angles depend on (the arrays in place
    # too), and must still equal the rotation computed afresh
    x = view(rng, (4, 2, 16))
    positions = np.array([3, 9, 4, 100], np.int64)
    freqs = rng.uniform(1.0, 8.0, 8).astype(np.float32)
    calls = [(10000.0, freqs), (10000.0, freqs), (10000.0, None), (500000.0, None), (500000.0, freqs)]
    for step, (theta, ff) in enumerate(calls + [(10000.0, freqs)] * 3):
        if step == 5:
            positions[2] = 5          # the same array, one position moved
        if step == 6:
            freqs[7] *= 2.0           # the same factors array, one factor changed
        rows = 3 if step == 7 else 4  # fewer rows at the same positions
        out = np.empty((rows, 2, 16), np.float32)
        native.rope_rows(x[:rows], positions[:rows], theta, out, True, ff)
        np.testing.assert_array_equal(out, _rope_rows_afresh(x[:rows], positions[:rows], theta, True, ff))
        pos0_out = np.empty((rows, 2, 16), np.float32)
        native.rope(x[:rows], 7, theta, pos0_out, False, ff)
        np.testing.assert_array_equal(pos0_out, _rope_rows_afresh(x[:rows], np.arange(7, 7 + rows), theta, False, ff))


def test_rope_angle_tables_hold_while_threads_rotate_at_other_angles(rng):
    # one thread's long rotation lets go of the GIL while the other cycles through more bases
    # than there are tables: the table in use is the least recently taken, and must not be
    # the one the other thread rewrites
    big = rng.standard_normal((64, 256, 64)).astype(np.float32)
    small = rng.standard_normal((64, 1, 64)).astype(np.float32)   # a whole table's rows, one head
    thetas = [10000.0, 500000.0, 1000000.0, 20000.0, 777.0, 123456.0]
    expect_big = np.empty_like(big)
    ref.rope(big, 11, 31.0, expect_big, False)
    expect_small = {}
    for theta in thetas:
        expect_small[theta] = np.empty_like(small)
        ref.rope(small, 5, theta, expect_small[theta], False)
    wrong, running = [], threading.Event()

    def long_rotations():
        out = np.empty_like(big)
        for _ in range(15):
            native.rope(big, 11, 31.0, out, False)
            if not np.allclose(out, expect_big, rtol=1e-5, atol=1e-5):
                wrong.append("long")
        running.set()

    def short_rotations():
        out = np.empty_like(small)
        i = 0
        while not running.is_set():
            theta = thetas[i % len(thetas)]
            native.rope(small, 5, theta, out, False)
            if not np.allclose(out, expect_small[theta], rtol=1e-5, atol=1e-5):
                wrong.append(theta)
            i += 1

    threads = [threading.Thread(target=long_rotations), threading.Thread(target=short_rotations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("pos_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("B,H,D,factors", [(1, 1, 2, False), (3, 4, 34, True), (8, 2, 256, False)])
def test_rope_rows_equals_rope_per_row_bit_for_bit(isa, rng, neox, pos_dtype, B, H, D, factors):
    x = view(rng, (B, H + 1, D))[:, 1:]
    positions = rng.integers(0, 5000, B).astype(pos_dtype)
    freqs = rng.uniform(1.0, 8.0, D // 2).astype(np.float32) if factors else None
    out, per_row, twin = (np.empty((B, H, D), np.float32) for _ in range(3))
    native.rope_rows(x, positions, 10000.0, out, neox, freqs)
    for b in range(B):
        native.rope(x[b:b + 1], int(positions[b]), 10000.0, per_row[b:b + 1], neox, freqs)
    ref.rope_rows(x, positions, 10000.0, twin, neox, freqs)
    np.testing.assert_array_equal(out, per_row)
    close(out, twin)
    inplace = x.copy()
    native.rope_rows(inplace, positions, 10000.0, inplace, neox, freqs)
    np.testing.assert_array_equal(inplace, per_row)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("B,Hkv,D", [(1, 1, 8), (3, 2, 33), (8, 1, 256)])
def test_kv_cache_store_rows_equals_the_store_per_row(isa, rng, dtype, B, Hkv, D):
    k, v = view(rng, (B, Hkv, D)), view(rng, (B, Hkv, D), pad=2)
    k_caches, v_caches = _rows_caches(rng, B, 3, Hkv, 20, D, dtype)
    positions = rng.permutation(20)[:B].astype(np.int64)
    per_row = [c.copy() for c in k_caches + v_caches]
    twin = [c.copy() for c in k_caches + v_caches]
    native.kv_cache_store_rows(k, v, k_caches, v_caches, 2, positions)
    for b in range(B):
        native.kv_cache_store(k[b:b + 1], v[b:b + 1], per_row[b][2], per_row[B + b][2], int(positions[b]))
    ref.kv_cache_store_rows(k, v, twin[:B], twin[B:], 2, positions)
    for got, want, ref_got in zip(k_caches + v_caches, per_row, twin):
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
        np.testing.assert_array_equal(got.view(np.uint8), ref_got.view(np.uint8))


def test_kv_cache_store_rows_writes_one_cache_at_two_positions(rng):
    k, v = view(rng, (2, 2, 8)), view(rng, (2, 2, 8))
    kc, vc = np.zeros((1, 2, 6, 8), np.float32), np.zeros((1, 2, 6, 8), np.float32)
    native.kv_cache_store_rows(k, v, [kc, kc], [vc, vc], 0, np.array([1, 4]))
    np.testing.assert_array_equal(kc[0][:, [1, 4]], k.transpose(1, 0, 2))
    np.testing.assert_array_equal(vc[0][:, [1, 4]], v.transpose(1, 0, 2))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("B,H,Hkv,D", [(1, 1, 1, 8), (3, 4, 2, 33), (8, 4, 1, 256), (5, 6, 3, 64)])
def test_attention_rows_equals_attention_per_row_bit_for_bit(isa, rng, threads, dtype, window, B, H, Hkv, D):
    q = view(rng, (B, H + 2, D))[:, 1:H + 1]
    k_caches, v_caches = _rows_caches(rng, B, 2, Hkv, 300, D, dtype)
    positions = np.array([0, 299, 17, 4, 130, 64, 1, 200][:B], np.int32)
    out, per_row, twin = (np.empty((B, H, D), np.float32) for _ in range(3))
    before = kernels.get_threads()
    try:
        kernels.set_threads(threads)
        native.attention_rows(q, k_caches, v_caches, 1, positions, out, 0.125, window)
        for b in range(B):
            native.attention(q[b:b + 1], k_caches[b][1], v_caches[b][1], int(positions[b]), per_row[b:b + 1],
                             0.125, window)
    finally:
        kernels.set_threads(before)
    ref.attention_rows(q, k_caches, v_caches, 1, positions, twin, 0.125, window)
    np.testing.assert_array_equal(out, per_row)
    if dtype == np.float16:   # one probability rounded the other way moves a whole head (1/32 of 8 rows x 4)
        _mostly_equal(out, twin, share=0.9)
    else:
        close(out, twin, rtol=1e-4, atol=1e-5)


def _caches(B, n_layers=2, Hkv=2, S=6, D=8, dtype=np.float32):
    return [np.zeros((n_layers, Hkv, S, D), dtype) for _ in range(B)]


def _pos(*p):
    return np.array(p, np.int64)


ROWS_REFUSALS = {
    "rope_rows: positions of another length": lambda k: k.rope_rows(_f(2, 1, 4), _pos(0), 1e4, _f(2, 1, 4)),
    "rope_rows: a negative position": lambda k: k.rope_rows(_f(2, 1, 4), _pos(0, -1), 1e4, _f(2, 1, 4)),
    "rope_rows: float positions": lambda k: k.rope_rows(_f(1, 1, 4), np.zeros(1, np.float32), 1e4, _f(1, 1, 4)),
    "rope_rows: out of another shape": lambda k: k.rope_rows(_f(2, 1, 4), _pos(0, 1), 1e4, _f(2, 2, 4)),
    "store: a cache per row missing": lambda k: k.kv_cache_store_rows(_f(2, 2, 8), _f(2, 2, 8), _caches(1),
                                                                      _caches(2), 0, _pos(0, 1)),
    "store: a float64 cache": lambda k: k.kv_cache_store_rows(_f(1, 2, 8), _f(1, 2, 8), _caches(1, dtype=np.float64),
                                                              _caches(1, dtype=np.float64), 0, _pos(0)),
    "store: caches of two dtypes": lambda k: k.kv_cache_store_rows(
        _f(2, 2, 8), _f(2, 2, 8), _caches(1) + _caches(1, dtype=np.float16), _caches(2), 0, _pos(0, 1)),
    "store: another head dim": lambda k: k.kv_cache_store_rows(_f(1, 2, 4), _f(1, 2, 4), _caches(1), _caches(1), 0,
                                                               _pos(0)),
    "store: other KV heads": lambda k: k.kv_cache_store_rows(_f(1, 1, 8), _f(1, 1, 8), _caches(1), _caches(1), 0,
                                                             _pos(0)),
    "store: a layer beyond the caches": lambda k: k.kv_cache_store_rows(_f(1, 2, 8), _f(1, 2, 8), _caches(1),
                                                                        _caches(1), 2, _pos(0)),
    "store: a negative layer": lambda k: k.kv_cache_store_rows(_f(1, 2, 8), _f(1, 2, 8), _caches(1), _caches(1), -1,
                                                               _pos(0)),
    "store: a position beyond the cache": lambda k: k.kv_cache_store_rows(_f(1, 2, 8), _f(1, 2, 8), _caches(1),
                                                                          _caches(1), 0, _pos(6)),
    "store: a read-only cache": lambda k: k.kv_cache_store_rows(
        _f(1, 2, 8), _f(1, 2, 8), [np.broadcast_to(_f(2, 2, 6, 8), (2, 2, 6, 8))], _caches(1), 0, _pos(0)),
    "store: caches that are not a sequence": lambda k: k.kv_cache_store_rows(_f(1, 2, 8), _f(1, 2, 8), 3, 4, 0,
                                                                             _pos(0)),
    "attention_rows: heads not a multiple of the KV heads": lambda k: k.attention_rows(
        _f(1, 3, 8), _caches(1), _caches(1), 0, _pos(0), _f(1, 3, 8), 1.0, 0),
    "attention_rows: a position beyond the cache": lambda k: k.attention_rows(
        _f(2, 2, 8), _caches(2), _caches(2), 0, _pos(0, 6), _f(2, 2, 8), 1.0, 0),
    "attention_rows: v cache of another shape": lambda k: k.attention_rows(
        _f(1, 2, 8), _caches(1), _caches(1, S=5), 0, _pos(0), _f(1, 2, 8), 1.0, 0),
    "attention_rows: a negative window": lambda k: k.attention_rows(
        _f(1, 2, 8), _caches(1), _caches(1), 0, _pos(0), _f(1, 2, 8), 1.0, -1),
    "attention_rows: out of another shape": lambda k: k.attention_rows(
        _f(2, 2, 8), _caches(2), _caches(2), 0, _pos(0, 0), _f(1, 2, 8), 1.0, 0),
    "attention_rows: a layer beyond the caches": lambda k: k.attention_rows(
        _f(1, 2, 8), _caches(1), _caches(1), 5, _pos(0), _f(1, 2, 8), 1.0, 0),
}


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "numpy"])
@pytest.mark.parametrize("case", ROWS_REFUSALS, ids=list(ROWS_REFUSALS))
def test_rows_kernels_refuse_bad_input(impl, case):
    with pytest.raises(KernelInputError):
        ROWS_REFUSALS[case](impl)


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "numpy"])
def test_kv_cache_store_rows_refuses_two_writes_to_one_slot_before_writing(impl, rng):
    k = view(rng, (2, 2, 8))
    kc, vc = _caches(1)[0], _caches(1)[0]
    with pytest.raises(KernelInputError, match="same position"):
        impl.kv_cache_store_rows(k, k, [kc, kc], [vc, vc.copy()], 0, _pos(3, 3))
    with pytest.raises(KernelInputError, match="same position"):   # keys and values in one array
        impl.kv_cache_store_rows(k, k, [kc, _caches(1)[0]], [kc, vc], 0, _pos(3, 4))
    assert not kc.any() and not vc.any()


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "numpy"])
def test_rows_kernels_refuse_outputs_overlapping_their_inputs(impl, rng):
    kc, vc = _caches(2), _caches(2)
    inside = kc[0][0, :, :2].transpose(1, 0, 2)   # (2, 2, 8): k rows living inside a cache they are written to
    with pytest.raises(KernelInputError, match="overlap"):
        impl.kv_cache_store_rows(inside, _f(2, 2, 8), kc, vc, 1, _pos(0, 1))
    with pytest.raises(KernelInputError, match="overlap"):
        impl.kv_cache_store_rows(_f(2, 2, 8), kc[1][1, :, :2].transpose(1, 0, 2), kc, vc, 1, _pos(4, 5))
    flat = _f(2 * 2 * 6 * 8 + 8)
    shifted = [flat[i:i + 2 * 2 * 6 * 8].reshape(2, 2, 6, 8) for i in (0, 8)]
    with pytest.raises(KernelInputError, match="overlap"):   # two caches sharing memory, not one array
        impl.kv_cache_store_rows(_f(2, 2, 8), _f(2, 2, 8), shifted, vc, 0, _pos(0, 1))
    out_in_cache = kc[1][1, :, :2].transpose(1, 0, 2)   # (2, 2, 8) view of a cache
    with pytest.raises(KernelInputError, match="overlap"):
        impl.attention_rows(_f(2, 2, 8), kc, vc, 0, _pos(0, 1), out_in_cache, 1.0, 0)
    buf = _f(3, 2, 8)
    with pytest.raises(KernelInputError, match="overlap"):
        impl.attention_rows(buf[:2], kc, vc, 0, _pos(0, 1), buf[1:], 1.0, 0)
    positions = np.zeros(4, np.int64)
    with pytest.raises(KernelInputError, match="overlap"):
        impl.rope_rows(_f(2, 1, 4), positions[:2], 1e4, positions.view(np.float32).reshape(2, 1, 4))


def test_kv_cache_store_rows_refuses_a_cache_it_cannot_write_in_place():
    strided = np.zeros((2, 2, 6, 16), np.float32)[..., ::2]
    with pytest.raises(KernelInputError, match="in place"):
        native.kv_cache_store_rows(_f(1, 2, 8), _f(1, 2, 8), [strided], _caches(1), 0, _pos(0))


# ------------------------------------------------------------------ training attention

def _train_attention_arrays(rng, B, H, T, D, pad=0):
    # -> qkv (B*T,3HD), probs (B,H,T,T), out (B*T,HD), dout (B*T,HD), dqkv (B*T,3HD), mask: strided views
    C = H * D
    mask = ((rng.random((B, H, T, T)) >= 0.2) / 0.8).astype(np.float32)
    return (view(rng, (B * T, 3 * C), pad=pad), view(rng, (B, H, T, T), pad=pad), view(rng, (B * T, C), pad=pad),
            view(rng, (B * T, C), pad=pad), view(rng, (B * T, 3 * C), pad=pad), mask)


# T=1, D=1, odd D, T not a multiple of the tiles (6 rows, 16 columns), T past 128, B*H odd
TRAIN_ATTENTION_SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (3, 2, 17, 33), (1, 2, 40, 64), (1, 1, 130, 8), (3, 1, 9, 3),
                          (2, 2, 16, 16)]


@pytest.mark.parametrize("B,H,T,D", TRAIN_ATTENTION_SHAPES)
@pytest.mark.parametrize("dropout", [False, True])
def test_attention_train_forward_matches_reference(isa, rng, B, H, T, D, dropout):
    qkv, probs, out, _, _, mask = _train_attention_arrays(rng, B, H, T, D, pad=3)
    mask = mask if dropout else None
    e_probs, e_out = np.empty_like(probs), np.empty_like(out)
    ref.attention_train_forward(qkv, e_probs, e_out, 0.4, mask)
    assert native.attention_train_forward(qkv, probs, out, 0.4, mask) is out
    close(probs, e_probs)
    close(out, e_out)


@pytest.mark.parametrize("B,H,T,D", TRAIN_ATTENTION_SHAPES)
@pytest.mark.parametrize("dropout", [False, True])
def test_attention_train_backward_matches_reference(isa, rng, B, H, T, D, dropout):
    qkv, probs, out, dout, dqkv, mask = _train_attention_arrays(rng, B, H, T, D, pad=2)
    mask = mask if dropout else None
    ref.attention_train_forward(qkv, probs, out, 0.4, mask)
    expect = np.empty_like(dqkv)
    ref.attention_train_backward(dout, qkv, probs, expect, 0.4, mask)
    dqkv[...] = np.nan  # written, not accumulated
    assert native.attention_train_backward(dout, qkv, probs, dqkv, 0.4, mask) is dqkv
    close(dqkv, expect, atol=1e-5 * np.sqrt(T))


def test_attention_train_forward_keeps_the_undropped_probabilities(rng):
    qkv, probs, out, _, _, mask = _train_attention_arrays(rng, 2, 2, 9, 4)
    plain_probs, plain_out = np.empty_like(probs), np.empty_like(out)
    native.attention_train_forward(qkv, plain_probs, plain_out, 0.5)
    native.attention_train_forward(qkv, probs, out, 0.5, mask)
    np.testing.assert_array_equal(probs, plain_probs)
    assert np.triu(probs, 1).max() == 0.0 and not np.allclose(out, plain_out)


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "numpy"])
def test_attention_train_backward_reads_only_the_causal_part(impl, rng):
    qkv, probs, out, dout, dqkv, mask = _train_attention_arrays(rng, 2, 3, 11, 5)
    impl.attention_train_forward(qkv, probs, out, 0.3, mask)
    expect = np.empty_like(dqkv)
    impl.attention_train_backward(dout, qkv, probs, expect, 0.3, mask)
    upper = np.triu(np.ones((11, 11), bool), 1)
    probs[:, :, upper], mask[:, :, upper] = np.nan, np.inf
    impl.attention_train_backward(dout, qkv, probs, dqkv, 0.3, mask)
    np.testing.assert_array_equal(dqkv, expect)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_attention_train_gives_the_same_bits_on_any_thread_count(isa, rng, threads):
    # 5 sequences x 3 heads: 15 pairs, not a multiple of the threads
    qkv, probs, out, dout, dqkv, mask = _train_attention_arrays(rng, 5, 3, 20, 8)
    e_probs, e_out, e_dqkv = np.empty_like(probs), np.empty_like(out), np.empty_like(dqkv)
    before = kernels.get_threads()
    try:
        kernels.set_threads(1)
        native.attention_train_forward(qkv, e_probs, e_out, 0.3, mask)
        native.attention_train_backward(dout, qkv, e_probs, e_dqkv, 0.3, mask)
        kernels.set_threads(threads)
        native.attention_train_forward(qkv, probs, out, 0.3, mask)
        native.attention_train_backward(dout, qkv, probs, dqkv, 0.3, mask)
    finally:
        kernels.set_threads(before)
    np.testing.assert_array_equal(probs, e_probs)
    np.testing.assert_array_equal(out, e_out)
    np.testing.assert_array_equal(dqkv, e_dqkv)


def test_attention_train_works_on_strided_last_dims_and_writes_them_back(rng):
    # every array with a non-unit last stride: worked on as contiguous copies, outputs copied back
    qkv, probs, out, dout, dqkv, mask = _train_attention_arrays(rng, 2, 2, 6, 3)
    s_qkv, s_probs, s_out, s_dout, s_dqkv, s_mask = (np.repeat(a, 2, axis=-1)[..., ::2]
                                                     for a in (qkv, probs, out, dout, dqkv, mask))
    native.attention_train_forward(s_qkv, s_probs, s_out, 0.3, s_mask)
    native.attention_train_backward(s_dout, s_qkv, s_probs, s_dqkv, 0.3, s_mask)
    ref.attention_train_forward(qkv, probs, out, 0.3, mask)
    ref.attention_train_backward(dout, qkv, probs, dqkv, 0.3, mask)
    close(s_probs, probs)
    close(s_out, out)
    close(s_dqkv, dqkv)


TRAIN_ATTENTION_REFUSALS = {
    "probs not 4D": lambda k: k.attention_train_forward(_f(4, 6), _f(2, 2, 2), _f(4, 2), 1.0),
    "probs not square": lambda k: k.attention_train_forward(_f(4, 6), _f(2, 1, 2, 3), _f(4, 2), 1.0),
    "no heads": lambda k: k.attention_train_forward(_f(4, 6), _f(2, 0, 2, 2), _f(4, 2), 1.0),
    "qkv rows not B*T": lambda k: k.attention_train_forward(_f(5, 6), _f(2, 1, 2, 2), _f(4, 2), 1.0),
    "qkv columns not 3*H*D": lambda k: k.attention_train_forward(_f(4, 7), _f(2, 1, 2, 2), _f(4, 2), 1.0),
    "qkv narrower than the heads": lambda k: k.attention_train_forward(_f(4, 3), _f(2, 2, 2, 2), _f(4, 1), 1.0),
    "out of another width": lambda k: k.attention_train_forward(_f(4, 6), _f(2, 1, 2, 2), _f(4, 3), 1.0),
    "mask of another shape": lambda k: k.attention_train_forward(_f(4, 6), _f(2, 1, 2, 2), _f(4, 2), 1.0,
                                                                 _f(2, 1, 2, 3)),
    "float64 qkv": lambda k: k.attention_train_forward(_f(4, 6).astype(np.float64), _f(2, 1, 2, 2), _f(4, 2), 1.0),
    "float16 mask": lambda k: k.attention_train_forward(_f(4, 6), _f(2, 1, 2, 2), _f(4, 2), 1.0,
                                                        _f(2, 1, 2, 2).astype(np.float16)),
    "a list for qkv": lambda k: k.attention_train_forward([[0.0] * 6] * 4, _f(2, 1, 2, 2), _f(4, 2), 1.0),
    "a string for scale": lambda k: k.attention_train_forward(_f(4, 6), _f(2, 1, 2, 2), _f(4, 2), "x"),
    "read-only probs": lambda k: k.attention_train_forward(_f(4, 6), np.broadcast_to(_f(1, 1, 2, 2), (2, 1, 2, 2)),
                                                           _f(4, 2), 1.0),
    "backward: dout of another width": lambda k: k.attention_train_backward(_f(4, 3), _f(4, 6), _f(2, 1, 2, 2),
                                                                            _f(4, 6), 1.0),
    "backward: dqkv of another shape": lambda k: k.attention_train_backward(_f(4, 2), _f(4, 6), _f(2, 1, 2, 2),
                                                                            _f(4, 3), 1.0),
    "backward: int32 dqkv": lambda k: k.attention_train_backward(_f(4, 2), _f(4, 6), _f(2, 1, 2, 2),
                                                                 _f(4, 6).astype(np.int32), 1.0),
    "backward: mask of another shape": lambda k: k.attention_train_backward(_f(4, 2), _f(4, 6), _f(2, 1, 2, 2),
                                                                            _f(4, 6), 1.0, _f(1, 1, 2, 2)),
}


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "numpy"])
@pytest.mark.parametrize("case", TRAIN_ATTENTION_REFUSALS, ids=list(TRAIN_ATTENTION_REFUSALS))
def test_attention_train_refuses_bad_input(impl, case):
    with pytest.raises(KernelInputError):
        TRAIN_ATTENTION_REFUSALS[case](impl)


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "numpy"])
def test_attention_train_refuses_outputs_overlapping_other_arrays(impl):
    buf = _f(8 * 6 + 2 * 2 * 2 * 2)
    qkv, probs = buf[:48].reshape(8, 6), buf[48:].reshape(2, 2, 2, 2)
    with pytest.raises(KernelInputError, match="out must not overlap qkv"):
        impl.attention_train_forward(qkv[:4], _f(2, 1, 2, 2), qkv[:4, 4:], 1.0)
    with pytest.raises(KernelInputError, match="overlap"):  # probs sharing the mask's memory
        impl.attention_train_forward(_f(4, 6), probs[0:1].reshape(2, 1, 2, 2), _f(4, 2), 1.0,
                                     buf[46:54].reshape(2, 1, 2, 2))
    with pytest.raises(KernelInputError, match="overlap"):  # dqkv written over qkv
        impl.attention_train_backward(_f(4, 2), qkv[:4], _f(2, 1, 2, 2), qkv[:4], 1.0)
    with pytest.raises(KernelInputError, match="overlap"):  # dqkv over part of dout
        impl.attention_train_backward(buf[:8].reshape(4, 2), _f(4, 6), _f(2, 1, 2, 2), buf[4:28].reshape(4, 6), 1.0)


# ------------------------------------------------------------------ refusals

def _f(*shape):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize("call", [
    lambda: native.linear(_f(2, 3), _f(4, 5), None, _f(2, 4)),                  # K mismatch
    lambda: native.linear(_f(2, 3), _f(4, 3), _f(5), _f(2, 4)),                 # bias length
    lambda: native.linear(_f(2, 3), _f(4, 3), None, _f(2, 5)),                  # out shape
    lambda: native.linear(_f(2, 3).astype(np.float64), _f(4, 3), None, _f(2, 4)),  # dtype
    lambda: native.linear([[1.0, 2.0]], _f(4, 2), None, _f(1, 4)),              # not an array
    lambda: native.linear(_f(3), _f(4, 3), None, _f(1, 4)),                     # rank
    lambda: native.attention(_f(1, 3, 8), _f(2, 4, 8), _f(2, 4, 8), 0, _f(1, 3, 8), 1.0),  # GQA
    lambda: native.attention(_f(2, 2, 8), _f(2, 4, 8), _f(2, 4, 8), 3, _f(2, 2, 8), 1.0),  # past cache
    lambda: native.attention(_f(1, 2, 8), _f(2, 4, 8), _f(2, 4, 4), 0, _f(1, 2, 8), 1.0),  # v shape
    lambda: native.layer_norm(_f(2, 3), _f(4), _f(3), _f(2, 3)),
    lambda: native.layer_norm(_f(2, 3), _f(3), _f(3), _f(2, 3), 1e-5, _f(3)),
    lambda: native.gelu(_f(3), _f(4)),
    lambda: native.gelu(_f(3).astype(np.float16), _f(3)),
    lambda: native.swiglu(_f(3), _f(2), _f(3)),
    lambda: native.rope(_f(1, 1, 3), 0, 1e4, _f(1, 1, 3)),                      # odd head dim
    lambda: native.rope(_f(1, 1, 4), -1, 1e4, _f(1, 1, 4)),                     # negative position
    lambda: native.embedding(np.zeros(2, np.float32), _f(4, 3), None, 0, _f(2, 3)),  # float ids
    lambda: native.embedding(np.zeros(2, np.int16), _f(4, 3), None, 0, _f(2, 3)),    # int16 ids
    lambda: native.cross_entropy(_f(2, 3), np.zeros(3, np.int32), _f(2)),
    lambda: native.adamw_step(_f(3), _f(3), _f(3), _f(3), 1e-3, 0.9, 0.95, 1e-8, 0.0, 0),  # step 0
    lambda: native.adamw_step(_f(3), _f(3), _f(4), _f(3), 1e-3, 0.9, 0.95, 1e-8, 0.0, 1),
    lambda: native.softmax(_f(2, 3), _f(3, 2)),
])
def test_invalid_input_is_refused(call):
    with pytest.raises(KernelInputError):
        call()


def test_read_only_output_is_refused():
    out = _f(2, 4)
    out.setflags(write=False)
    with pytest.raises(KernelInputError, match="read-only"):
        native.linear(_f(2, 3), _f(4, 3), None, out)


@pytest.mark.parametrize("bad", [-1, 4])
def test_embedding_refuses_out_of_range_tokens_without_writing(bad):
    out = _f(3, 2)
    with pytest.raises(IndexError):
        native.embedding(np.array([0, bad, 1], np.int32), np.ones((4, 2), np.float32), None, 0, out)
    assert not out.any()


def test_embedding_refuses_positions_beyond_the_table():
    with pytest.raises(IndexError):
        native.embedding(np.array([0, 1], np.int64), _f(4, 2), _f(3, 2), 2, _f(2, 2))


def test_cross_entropy_refuses_out_of_range_targets():
    with pytest.raises(IndexError):
        native.cross_entropy(_f(2, 3), np.array([0, 3], np.int64), _f(2))


def test_embedding_backward_refuses_out_of_range_tokens():
    with pytest.raises(IndexError):
        native.embedding_backward(np.array([5], np.int32), _f(1, 2), _f(5, 2))


def test_overlapping_output_is_refused():
    buf = _f(4, 8)
    with pytest.raises(KernelInputError, match="overlap"):
        native.linear(buf[:, :4], _f(3, 4), None, buf[:, 2:5])
    with pytest.raises(KernelInputError, match="overlap"):
        native.gelu(buf[0, 1:], buf[0, :-1])  # shifted by one: neither in place nor disjoint
    with pytest.raises(KernelInputError, match="overlap"):
        native.adamw_step(buf[0], buf[1], buf[0], buf[2], 1e-3, 0.9, 0.95, 1e-8, 0.0, 1)


def _ids_inside(out, n):
    # n int32 token ids 0..n-1 living in the first bytes of the float32 array `out`
    ids = out.reshape(-1).view(np.int32)[:n]
    ids[:] = np.arange(n)
    return ids


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "numpy"])
@pytest.mark.parametrize("call", [
    lambda k, out: k.embedding(_ids_inside(out, 8), np.full((50, 16), 3.0, np.float32), None, 0, out),
    lambda k, out: k.embedding_backward(_ids_inside(out, 8), np.ones((8, 16), np.float32), out),
    lambda k, out: k.cross_entropy(np.zeros((8, 16), np.float32), _ids_inside(out, 8), out[:, 0].copy(), out),
    lambda k, out: k.cross_entropy(np.zeros((16, 16), np.float32), _ids_inside(out, 16), out.reshape(-1)[8:24],
                                   None),
], ids=["embedding", "embedding_backward", "cross_entropy_dlogits", "cross_entropy_losses"])
def test_token_ids_inside_an_output_are_refused_before_anything_is_written(impl, call):
    # the ids would be overwritten mid-kernel and index far outside the tables
    out = np.zeros((8, 16), np.float32)
    with pytest.raises(KernelInputError, match="overlap"):
        call(impl, out)
    assert (out.reshape(-1).view(np.int32)[:8] == np.arange(8)).all()
    assert not out.reshape(-1)[16:].any()


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "numpy"])
def test_an_output_overlapping_another_output_or_an_input_of_another_dtype_is_refused(impl):
    buf = _f(4, 8)
    with pytest.raises(KernelInputError, match="mean must not overlap rstd"):
        impl.layer_norm(_f(3, 8), _f(8), _f(8), _f(3, 8), 1e-5, buf[0, :3], buf[0, 2:5])
    with pytest.raises(KernelInputError, match="overlap"):  # the same bytes seen as int64 ids
        impl.embedding(buf.reshape(-1).view(np.int64)[:2], _f(4, 8), None, 0, buf[:2])
    with pytest.raises(KernelInputError, match="out must be x itself or not overlap it"):
        impl.gelu(buf[0], buf[0, ::-1])


def test_disjoint_views_of_one_buffer_are_accepted(rng):
    buf = view(rng, (5, 12))
    expect = np.empty((5, 6), np.float32)
    ref.gelu(buf[:, :6], expect)
    native.gelu(buf[:, :6], buf[:, 6:])  # interleaved rows, disjoint memory
    close(buf[:, 6:], expect)


def test_non_contiguous_output_is_written_back(rng):
    x, w = view(rng, (3, 8)), view(rng, (5, 8))
    big = np.zeros((3, 10), np.float32)
    out = big[:, ::2]
    native.linear(x, w, None, out)
    close(out, x @ w.T, atol=1e-5)
    assert not big[:, 1::2].any()


def test_byte_misaligned_arrays_are_handled(rng):
    raw = np.zeros(4 * 33 + 1, np.uint8)[1:].view(np.float32)  # data pointer not 4-byte aligned
    raw[...] = rng.standard_normal(33)
    out, expect = np.empty(33, np.float32), np.empty(33, np.float32)
    ref.gelu(raw, expect)
    native.gelu(raw, out)
    close(out, expect)


# ------------------------------------------------------------------ dispatch and threads

def test_select_isa_refuses_unknown_names():
    with pytest.raises(ValueError):
        native.select_isa("sse1")


def test_kernels_path_names_the_native_isa():
    assert kernels.path in ("numpy",) + tuple(f"native-{i}" for i in kernels.ISAS)
    if kernels.path != "numpy":
        # float32 weights go straight to the native kernels, QTensors to the quantized ones
        assert kernels._f32_linear is native.linear and kernels._f32_embedding is native.embedding
        assert kernels._quant_linear is native.quant_linear


def _clean_env(**env):
    # the caller's environment without the kernel switches, plus `env`
    import os
    base = {k: v for k, v in os.environ.items() if k not in ("SMALLMIND_KERNELS", "SMALLMIND_ISA")}
    return {**base, **env}


def _env_path(**env):
    code = "from smallmind import kernels; print(kernels.path)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_clean_env(**env), timeout=60)
    return res.stdout.strip(), res.stderr


def test_environment_forces_numpy_and_lower_isas():
    assert _env_path(SMALLMIND_KERNELS="numpy")[0] == "numpy"
    assert _env_path(SMALLMIND_ISA="generic")[0] == "native-generic"
    path, err = _env_path(SMALLMIND_ISA="bogus")
    assert path.startswith("native-") and "SMALLMIND_ISA" in err


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_thread_count(rng, threads):
    x, w = view(rng, (3, 512)), view(rng, (1000, 512))
    q, kc = view(rng, (1, 8, 64)), view(rng, (8, 300, 64))
    before = kernels.get_threads()
    try:
        kernels.set_threads(threads)
        assert kernels.get_threads() == threads
        out = native.linear(x, w, None, _f(3, 1000))
        att = native.attention(q, kc, kc, 299, _f(1, 8, 64), 0.125)
    finally:
        kernels.set_threads(before)
    e_out, e_att = _f(3, 1000), _f(1, 8, 64)
    ref.linear(x, w, None, e_out)
    ref.attention(q, kc, kc, 299, e_att, 0.125)
    close(out, e_out, atol=1e-3)
    close(att, e_att)


def test_set_threads_refuses_nonsense():
    from smallmind.errors import SmallMindError
    with pytest.raises(SmallMindError):
        kernels.set_threads(0)


def test_get_info_reports_path_features_and_blas():
    info = kernels.get_info()
    assert info["kernel_path"] == kernels.path
    assert "avx2" in info["cpu_features"] or info["machine"] != "x86_64"
    assert info["threads"] == kernels.get_threads()
    assert isinstance(info["blas"], list)


def test_missing_extension_falls_back_to_numpy_with_one_warning(tmp_path):
    import shutil
    from pathlib import Path

    import smallmind
    shutil.copytree(Path(smallmind.__file__).parent, tmp_path / "smallmind",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    code = ("import numpy as np; from smallmind import kernels; import smallmind.models.gpt;"
            "x = np.ones(4, np.float32); print(kernels.path, kernels.gelu(x, np.empty_like(x))[0])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=_clean_env(PYTHONPATH=str(tmp_path)), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "numpy"
    assert abs(float(res.stdout.split()[1]) - 0.841192) < 1e-5
    assert res.stderr.count("native kernels are not built") == 1


FUZZ = r"""
import sys
import warnings
import numpy as np
from smallmind.errors import SmallMindError
from smallmind.kernels import native, reference

warnings.simplefilter("ignore")
np.seterr(all="ignore")
rng = np.random.default_rng(int(sys.argv[1]))
f = lambda *s: rng.standard_normal(s).astype(np.float32)
ids = lambda n, hi: rng.integers(0, hi, n).astype(np.int32)

# the arguments each kernel writes
OUTPUTS = {"linear": [3], "embedding": [4], "embedding_backward": [2], "layer_norm": [3, 5, 6],
           "layer_norm_backward": [5, 6, 7], "rms_norm": [2], "gelu": [1], "gelu_backward": [2], "silu": [1],
           "swiglu": [2], "geglu": [2], "softmax": [1],
           "rope": [3], "kv_cache_store": [2, 3], "attention": [4], "cross_entropy": [2, 3],
           "adamw_step": [0, 2, 3], "rope_rows": [3], "kv_cache_store_rows": [2, 3], "attention_rows": [5],
           "attention_train_forward": [1, 2], "attention_train_backward": [3]}

def valid(name):
    # a correct argument list for each kernel, at small random sizes
    T, K, N, C, H, D = (int(rng.integers(1, 9)) for _ in range(6))
    S = T + int(rng.integers(0, 5))
    return {
        "linear": lambda: [f(T, K), f(N, K), f(N), f(T, N), bool(rng.integers(2))],
        "embedding": lambda: [ids(T, 5), f(5, C), f(T + 2, C), 2, f(T, C)],
        "embedding_backward": lambda: [ids(T, 5), f(T, C), f(5, C)],
        "layer_norm": lambda: [f(T, C), f(C), f(C), f(T, C), 1e-5, f(T), f(T)],
        "layer_norm_backward": lambda: [f(T, C), f(T, C), f(C), f(T), np.abs(f(T)), f(T, C), f(C), f(C)],
        "rms_norm": lambda: [f(T, C), f(C), f(T, C), 1e-6],
        "gelu": lambda: [f(T, C), f(T, C)],
        "gelu_backward": lambda: [f(T, C), f(T, C), f(T, C)],
        "silu": lambda: [f(T, C), f(T, C)],
        "swiglu": lambda: [f(T, C), f(T, C), f(T, C)],
        "geglu": lambda: [f(T, C), f(T, C), f(T, C)],
        "softmax": lambda: [f(T, C), f(T, C)],
        "rope": lambda: [f(T, H, 2 * D), 3, 1e4, f(T, H, 2 * D), bool(rng.integers(2))],
        "kv_cache_store": lambda: [f(T, H, D), f(T, H, D), f(H, S, D), f(H, S, D), S - T],
        "attention": lambda: [f(T, 2 * H, D), f(H, S, D), f(H, S, D), S - T, f(T, 2 * H, D), 0.3],
        "cross_entropy": lambda: [f(T, C), ids(T, C), f(T), f(T, C), 0.5],
        "adamw_step": lambda: [f(N), f(N), f(N), np.abs(f(N)), 1e-3, 0.9, 0.95, 1e-8, 0.1, 3],
        "rope_rows": lambda: [f(T, H, 2 * D), ids(T, 5000), 1e4, f(T, H, 2 * D), bool(rng.integers(2))],
        "kv_cache_store_rows": lambda: [f(T, H, D), f(T, H, D), [f(3, H, S, D) for _ in range(T)],
                                        [f(3, H, S, D) for _ in range(T)], int(rng.integers(3)),
                                        rng.permutation(S)[:T]],
        "attention_rows": lambda: [f(T, 2 * H, D), [f(2, H, S, D) for _ in range(T)],
                                   [f(2, H, S, D) for _ in range(T)], int(rng.integers(2)), ids(T, S),
                                   f(T, 2 * H, D), 0.3, int(rng.integers(3))],
        "attention_train_forward": lambda: [f(N * T, 3 * H * D), f(N, H, T, T), f(N * T, H * D), 0.3,
                                            None if rng.integers(2) else f(N, H, T, T)],
        "attention_train_backward": lambda: [f(N * T, H * D), f(N * T, 3 * H * D), f(N, H, T, T),
                                             f(N * T, 3 * H * D), 0.3, None if rng.integers(2) else f(N, H, T, T)],
    }[name]()

def mutate(a):
    r = rng.random()
    if isinstance(a, list):  # the rows kernels' caches: one mutated, one dropped, or one array twice
        if not a:
            return a
        a = list(a)
        i = int(rng.integers(len(a)))
        if r < 0.6:
            a[i] = mutate(a[i])
        elif r < 0.8:
            del a[i]
        else:
            a[i] = a[int(rng.integers(len(a)))]
        return a
    if not isinstance(a, np.ndarray):
        return [None, -1, 0, 2**62, -2**62, float("nan"), float("inf"), 1e300, "x", 10**30][rng.integers(10)]
    if r < 0.2:
        return a.astype([np.float64, np.float16, np.int64, np.int32, np.int8, np.complex64][rng.integers(6)])
    if r < 0.4:
        shape = list(a.shape) or [1]
        i = int(rng.integers(len(shape)))
        shape[i] = max(0, shape[i] + int(rng.choice([-1, 1, 5])))
        return np.resize(a, shape)
    if r < 0.5:
        return a[None]
    if r < 0.6 and a.ndim:
        return a[..., ::-1]
    if r < 0.7 and a.ndim:
        return np.repeat(a, 2, axis=-1)[..., ::2]  # strided last dim
    if r < 0.8:
        b = a.copy(); b.setflags(write=False); return b
    if r < 0.9 and a.ndim:
        return np.broadcast_to(a[..., :1], a.shape)
    if a.dtype.kind == "i":
        return (a.astype(np.int64) + int(rng.choice([-100, 100, 2**31 - 1]))).astype(a.dtype)
    return a * np.float32(rng.choice([np.nan, np.inf, 1e30]))

def share_buffer(args, name):
    # an output and another array argument become views of one byte buffer, at byte offsets
    # that make them overlap or not, each keeping its own dtype (int ids under float outputs too)
    arrays = [j for j, a in enumerate(args) if isinstance(a, np.ndarray)]
    outs = [j for j in OUTPUTS[name] if j in arrays]
    if not outs or len(arrays) < 2:
        return
    j = int(rng.choice(outs))
    k = int(rng.choice([i for i in arrays if i != j]))
    a, b = np.ascontiguousarray(args[k]), np.ascontiguousarray(args[j])
    start = int(rng.integers(0, a.nbytes + 8)) // b.itemsize * b.itemsize  # from inside a to past its end
    buf = np.zeros(max(a.nbytes, start + b.nbytes) + 8, np.uint8)
    va = buf[:a.nbytes].view(a.dtype).reshape(a.shape)
    vb = buf[start:start + b.nbytes].view(b.dtype).reshape(b.shape)
    vb[...] = b
    va[...] = a
    args[k], args[j] = va, vb

def layout(a):
    return (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)

def tame(args):
    # every value finite and moderate: then the native result must equal the reference's
    for a in [x for a in args for x in (a if isinstance(a, list) else [a])]:
        if isinstance(a, np.ndarray):
            if a.size == 0 or (a.dtype.kind == "f" and not (np.isfinite(a).all() and np.abs(a).max() < 1e4)):
                return False
        elif isinstance(a, (int, float)) and not abs(a) < 1e5:
            return False
    return True

def reference_twin(args):
    # copies of the arguments that alias each other exactly where the originals do
    copies = {}
    twin = lambda a: copies.setdefault(layout(a), np.array(a)) if isinstance(a, np.ndarray) else a
    return [[twin(x) for x in a] if isinstance(a, list) else twin(a) for a in args]

def overlap_accepted(name, args):
    # an output sharing memory with another argument that is not exactly it (same layout)
    arrays = [j for j, a in enumerate(args) if isinstance(a, np.ndarray)]
    for j in OUTPUTS[name]:
        if j not in arrays:
            continue
        for k in arrays:
            if k != j and layout(args[k]) != layout(args[j]) and np.shares_memory(args[j], args[k]):
                return f"{name}: argument {j} overlaps argument {k} and was accepted"
    return None

names = list(OUTPUTS)
ok = refused = compared = 0
for i in range(4000):
    name = names[i % len(names)]
    args = valid(name)
    for _ in range(int(rng.integers(0, 3))):
        j = int(rng.integers(len(args)))
        args[j] = mutate(args[j])
    r = rng.random()
    if r < 0.1:  # the same array as input and output
        arrays = [j for j, a in enumerate(args) if isinstance(a, np.ndarray)]
        if len(arrays) >= 2:
            j, k = rng.choice(arrays, 2, replace=False)
            args[j] = args[k]
    elif r < 0.3:
        share_buffer(args, name)
    twin = reference_twin(args) if tame(args) else None
    try:
        getattr(native, name)(*args)
        ok += 1
    except (SmallMindError, IndexError, TypeError):
        refused += 1
        continue
    problem = overlap_accepted(name, args)
    if problem is None and twin is not None:
        try:
            getattr(reference, name)(*twin)
        except Exception as e:
            problem = f"{name}: native accepted what the reference refuses ({type(e).__name__}: {e})"
        else:
            compared += 1
            pairs = [(j, g, w) for j, (got, want) in enumerate(zip(args, twin))
                     for g, w in (zip(got, want) if isinstance(got, list) else [(got, want)])]
            for j, got, want in pairs:
                if isinstance(got, np.ndarray) and not np.allclose(got, want, rtol=2e-3, atol=2e-4, equal_nan=True):
                    problem = f"{name}: argument {j} differs from the reference by {np.nanmax(np.abs(got - want))}"
                    break
    if problem:
        print(problem, [(a.shape, a.strides, a.dtype.str) if isinstance(a, np.ndarray) else a for a in args],
              file=sys.stderr)
        sys.exit(1)
print("survived", ok, refused, compared)
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_random_garbage_and_aliased_inputs_never_crash_and_match_the_reference(seed):
    # in a subprocess, so a segfault fails this test instead of killing the run; an accepted
    # call must leave every array as the NumPy twin does on copies aliased the same way
    res = subprocess.run([sys.executable, "-c", FUZZ, str(seed)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    survived, ok, refused, compared = res.stdout.split()
    assert int(ok) > 500 and int(refused) > 500 and int(compared) > 500  # every path was exercised


def test_select_isa_switches_the_reported_path():
    if kernels.path == "numpy":
        pytest.skip("the references are in use")
    before = native.isa()
    try:
        assert kernels.select_isa("generic") == "native-generic" == kernels.path
        assert native.isa() == "generic"
    finally:
        kernels.select_isa(before)
    assert kernels.path == f"native-{before}"


def test_set_threads_sets_blas_and_native_together():
    from threadpoolctl import threadpool_info
    before = kernels.get_threads()
    try:
        kernels.set_threads(1)
        assert native.get_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    finally:
        kernels.set_threads(before)


# ------------------------------------------------------------------ GEMM with fused epilogues

@pytest.fixture(params=["gemm", "blas", "gemm-avx512-emulated", "gemm-amx-emulated"])
def products(request, isa):
    # the native GEMM (forced on every ISA, the portable build included), the BLAS hand-over,
    # or the AVX-512 and AMX micro-kernels' emulated builds (their 16-float vector code on
    # AVX2 register pairs, 12 and 16 rows a tile) beside the AVX2 kernels, so those tiles are
    # checked on CPUs without AVX-512
    emulated = request.param.partition("gemm-")[2]
    if emulated and (isa != "avx2" or emulated not in native.supported_gemm_isas()):
        pytest.skip("the emulated GEMM tiles run beside the avx2 kernels")
    previous = native.gemm_min_rows(1 << 62 if request.param == "blas" else 0)
    if emulated:
        native.select_gemm_isa(emulated)
    yield request.param
    native.gemm_min_rows(previous)
    native.select_gemm_isa("best")


# (T, K, N): one micro-tile and less, ragged edges on every side, several k blocks (K > 256)
# and column blocks (N > 1024), and training's shapes
GEMM_SHAPES = [(1, 1, 1), (5, 3, 17), (7, 33, 31), (50, 300, 70), (13, 520, 1100), (256, 64, 192)]


@pytest.mark.parametrize("T,K,N", GEMM_SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_linear_on_many_rows_matches_reference(isa, products, rng, T, K, N, accumulate):
    x, w, b = view(rng, (T, K), pad=3), view(rng, (N, K), pad=1), view(rng, (N,))
    out = view(rng, (T, N), pad=2)
    expect = out.copy()
    ref.linear(x, w, b, expect, accumulate)
    previous = native.tuning(0, 0, -1, -1)  # past the few-row kernel at once
    try:
        native.linear(x, w, b, out, accumulate)
    finally:
        native.tuning(*previous[:2], -1, -1)
    close(out, expect, atol=1e-4 * np.sqrt(K))


@pytest.mark.parametrize("T,K,N", GEMM_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gelu_matches_reference(isa, products, rng, T, K, N, bias):
    x, w = view(rng, (T, K), pad=3), view(rng, (N, K), pad=1)
    b = view(rng, (N,)) if bias else None
    pre, out = view(rng, (T, N), pad=2), view(rng, (T, N))
    pre_ref, out_ref = np.empty_like(pre), np.empty_like(out)
    ref.linear_gelu(x, w, b, pre_ref, out_ref)
    assert native.linear_gelu(x, w, b, pre, out) is out
    close(pre, pre_ref, atol=1e-4 * np.sqrt(K))
    close(out, out_ref, atol=1e-4 * np.sqrt(K))


@pytest.mark.parametrize("T,K,N", GEMM_SHAPES)
def test_linear_residual_matches_reference(isa, products, rng, T, K, N):
    x, w, b = view(rng, (T, K), pad=3), view(rng, (N, K), pad=1), view(rng, (N,))
    resid, out = view(rng, (T, N), pad=5), view(rng, (T, N), pad=2)
    expect = np.empty_like(out)
    ref.linear_residual(x, w, b, resid, expect)
    assert native.linear_residual(x, w, b, resid, out) is out
    close(out, expect, atol=1e-4 * np.sqrt(K))


@pytest.mark.parametrize("T,K,N", GEMM_SHAPES)
@pytest.mark.parametrize("scale,with_gelu", [(1.0, False), (0.25, True)])
def test_linear_backward_input_matches_reference(isa, products, rng, T, K, N, scale, with_gelu):
    dout, w = view(rng, (T, N), pad=3), view(rng, (N, K), pad=1)
    gelu_x = view(rng, (T, K), pad=2) if with_gelu else None
    dx, expect = view(rng, (T, K), pad=4), np.empty((T, K), np.float32)
    ref.linear_backward_input(dout, w, expect, scale, gelu_x)
    assert native.linear_backward_input(dout, w, dx, scale, gelu_x) is dx
    close(dx, expect, atol=1e-4 * np.sqrt(N))


# the weight gradient's depth is T: past one k block (SM_GEMM_KC) with a ragged last one, whose
# k count is not a multiple of the packed tile's four k a trip
@pytest.mark.parametrize("T,K,N", GEMM_SHAPES + [(1031, 40, 30)])
@pytest.mark.parametrize("scale,with_bias", [(1.0, True), (0.5, True), (1.0, False)])
def test_linear_backward_weight_accumulates_like_reference(isa, products, rng, T, K, N, scale, with_bias):
    dout, x = view(rng, (T, N), pad=3), view(rng, (T, K), pad=1)
    dw, db = view(rng, (N, K), pad=2), view(rng, (N,)) if with_bias else None
    dw_ref, db_ref = dw.copy(), None if db is None else db.copy()
    ref.linear_backward_weight(dout, x, dw_ref, db_ref, scale)
    assert native.linear_backward_weight(dout, x, dw, db, scale) is dw
    close(dw, dw_ref, atol=1e-4 * np.sqrt(T))
    if with_bias:
        close(db, db_ref, atol=1e-4 * np.sqrt(T))


@pytest.mark.parametrize("T,K,N", [(50, 300, 70), (13, 520, 1100), (256, 64, 192), (97, 1024, 40)])
def test_gemm_products_give_the_same_bits_however_the_threads_split_them(isa, products, rng, T, K, N):
    # one part of C per thread, split by rows or by columns (the bias gradient summed while
    # packing): every element's sums run in the same order whatever the split
    if products == "blas":
        pytest.skip("the native GEMM's splits (BLAS makes its own)")
    x, w, b = view(rng, (T, K), pad=3), view(rng, (N, K), pad=1), view(rng, (N,))
    dout, gelu_x = view(rng, (T, N), pad=2), view(rng, (T, K))
    previous, before = native.gemm_min_rows(0), kernels.get_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            kernels.set_threads(threads)
            pre, act = np.empty((T, N), np.float32), np.empty((T, N), np.float32)
            dx, dw, db = np.empty((T, K), np.float32), np.ones((N, K), np.float32), np.ones(N, np.float32)
            native.linear_gelu(x, w, b, pre, act)
            native.linear_backward_input(dout, w, dx, 0.5, gelu_x)
            native.linear_backward_weight(dout, x, dw, db, 0.5)
            results.append((pre, act, dx, dw, db))
    finally:
        kernels.set_threads(before)
        native.gemm_min_rows(previous)
    for other in results[1:]:
        for got, first in zip(other, results[0]):
            np.testing.assert_array_equal(got, first)
    dw_ref, db_ref = np.ones((N, K), np.float32), np.ones(N, np.float32)
    ref.linear_backward_weight(dout, x, dw_ref, db_ref, 0.5)
    close(results[0][4], db_ref, atol=1e-4 * np.sqrt(T))


BF16_GEMMS = [b for b in native.supported_gemm_isas() if b in ("amx", "avx512bf16", "amx-emulated", "avx512-emulated")]


def _rounded(a):
    out = np.empty_like(a)
    ref.round_bf16(np.ascontiguousarray(a), out)
    return out


@pytest.fixture(params=BF16_GEMMS or [pytest.param(None, marks=pytest.mark.skip("no BF16 GEMM tile here"))])
def bf16_gemm(request):
    # the GEMM builds with a BF16 tile: the AMX and AVX512-BF16 ones where the CPU has them,
    # and their emulated builds (dpbf16ps by its steps on AVX2, the AMX tiles in C) on every
    # AVX2 machine
    previous_rows = native.gemm_min_rows(0)
    native.select_gemm_isa(request.param)
    assert native.gemm_bf16_tile()
    yield request.param
    native.select_gemm_isa("best")
    native.gemm_min_rows(previous_rows)


@pytest.mark.parametrize("T,K,N", GEMM_SHAPES)
def test_bf16_products_are_float32_sums_of_the_bf16_rounded_inputs(bf16_gemm, rng, T, K, N):
    # unrounded inputs: the BF16 tile reads them rounded to nearest even, sums in float32
    x, w, b = view(rng, (T, K), pad=3), view(rng, (N, K), pad=1), view(rng, (N,))
    dout, gelu_x = view(rng, (T, N), pad=2), view(rng, (T, K))
    xr, wr, doutr = _rounded(x), _rounded(w), _rounded(dout)
    pre, act = np.empty((T, N), np.float32), np.empty((T, N), np.float32)
    dx, dw, db = np.empty((T, K), np.float32), np.ones((N, K), np.float32), np.ones(N, np.float32)
    previous = native.tuning(0, 0, -1, -1)  # past the few-row kernel at once
    try:
        with kernels.bf16_products():
            native.linear_gelu(x, w, b, pre, act)
            native.linear_backward_input(dout, w, dx, 0.5, gelu_x)
            native.linear_backward_weight(dout, x, dw, db, 0.5)
        plain = np.empty((T, N), np.float32)
        native.linear(x, w, b, plain, False)  # outside the block: float32 again
    finally:
        native.tuning(*previous[:2], -1, -1)
    pre_ref, act_ref = np.empty_like(pre), np.empty_like(act)
    ref.linear_gelu(xr, wr, b, pre_ref, act_ref)
    dx_ref, dw_ref, db_ref = np.empty_like(dx), np.ones_like(dw), np.ones_like(db)
    ref.linear_backward_input(doutr, wr, dx_ref, 0.5, gelu_x)
    ref.linear_backward_weight(doutr, xr, dw_ref, None, 0.5)
    ref.linear_backward_weight(dout, x, np.ones_like(dw), db_ref, 0.5)  # a sum, not a product: of dout as given
    close(pre, pre_ref, atol=1e-4 * np.sqrt(K))
    close(act, act_ref, atol=1e-4 * np.sqrt(K))
    close(dx, dx_ref, atol=1e-4 * np.sqrt(N))
    close(dw, dw_ref, atol=1e-4 * np.sqrt(T))
    close(db, db_ref, atol=1e-4 * np.sqrt(T))
    expect = np.empty_like(plain)
    ref.linear(x, w, b, expect)
    close(plain, expect, atol=1e-4 * np.sqrt(K))
    if K >= 33:  # the rounding is really there: float32 products of these inputs differ by more
        assert np.abs(pre - expect).max() > 1e-3


def test_bf16_products_nest_and_restore_the_setting_on_an_error():
    assert native.bf16_products(False) is False  # off by default
    with kernels.bf16_products():
        assert native.bf16_products(True) is True
        with kernels.bf16_products(False):
            assert native.bf16_products(False) is False
        assert native.bf16_products(True) is True
        with pytest.raises(ZeroDivisionError), kernels.bf16_products(False):
            1 / 0
        assert native.bf16_products(True) is True
    assert native.bf16_products(False) is False


def test_bf16_products_change_nothing_on_a_gemm_without_a_bf16_tile(isa, rng):
    if native.gemm_bf16_tile():
        pytest.skip("this ISA's GEMM has a BF16 tile")
    x, w = view(rng, (256, 96)), view(rng, (64, 96))
    previous = native.gemm_min_rows(0)
    try:
        a, b = np.empty((256, 64), np.float32), np.empty((256, 64), np.float32)
        native.linear_residual(x, w, None, np.zeros((256, 64), np.float32), a)
        with kernels.bf16_products():
            native.linear_residual(x, w, None, np.zeros((256, 64), np.float32), b)
    finally:
        native.gemm_min_rows(previous)
    np.testing.assert_array_equal(a, b)


def test_fused_products_refuse_an_output_overlapping_an_input(rng):
    x, w = rng.standard_normal((8, 16), dtype=np.float32), rng.standard_normal((16, 16), dtype=np.float32)
    buf = np.zeros((8, 16), np.float32)
    for impl in (native, ref):
        with pytest.raises(KernelInputError, match="out must not overlap resid"):
            impl.linear_residual(x, w, None, buf, buf)
        with pytest.raises(KernelInputError, match="must not overlap"):
            impl.linear_gelu(x, w, None, buf, buf)
        with pytest.raises(KernelInputError, match="dx must not overlap gelu_x"):
            impl.linear_backward_input(x, w, buf, 1.0, buf)


@pytest.mark.parametrize("call", [
    lambda z: native.linear_gelu(z((4, 8)), z((5, 9)), None, z((4, 5)), z((4, 5))),
    lambda z: native.linear_residual(z((4, 8)), z((5, 8)), None, z((4, 6)), z((4, 5))),
    lambda z: native.linear_backward_input(z((4, 5)), z((6, 8)), z((4, 8))),
    lambda z: native.linear_backward_weight(z((4, 5)), z((3, 8)), z((5, 8)), None),
    lambda z: native.linear_backward_weight(z((4, 5)), z((4, 8)), z((5, 8)), z((4,))),
    lambda z: native.round_bf16(z((4, 5)), z((5, 4))),
    lambda z: native.linear_gelu(z((4, 8)).astype(np.float64), z((5, 8)), None, z((4, 5)), z((4, 5))),
])
def test_fused_products_refuse_mismatched_shapes_and_dtypes(call):
    with pytest.raises(KernelInputError):
        call(lambda shape: np.zeros(shape, np.float32))


def test_few_row_products_cost_one_weight_pass_and_match_reference(isa, rng):
    # 1..16 rows (the server's batched decode) through the few-row kernel, every remainder of 3
    w, b = view(rng, (37, 259), pad=1), view(rng, (37,))
    for T in range(1, 17):
        x, out = view(rng, (T, 259), pad=2), view(rng, (T, 37))
        expect = np.empty_like(out)
        ref.linear(x, w, b, expect)
        native.linear(x, w, b, out)
        close(out, expect, atol=1e-4 * np.sqrt(259))


# ------------------------------------------------------------------ BF16 rounding

def test_round_bf16_rounds_to_nearest_with_ties_to_even(isa):
    one = np.float32(1.0)
    ulp = np.float32(2.0 ** -7)  # BF16's spacing just above 1
    x = np.array([one + ulp / 2, one + ulp + ulp / 2, one + ulp / 4, one + 3 * ulp / 4, -(one + ulp / 2),
                  np.float32(3.4e38), np.inf, -np.inf, 0.0, -0.0], np.float32)
    expect = np.array([one, one + 2 * ulp, one, one + ulp, -one, np.inf, np.inf, -np.inf, 0.0, -0.0], np.float32)
    for impl in (native, ref):
        out = impl.round_bf16(x, np.empty_like(x))
        np.testing.assert_array_equal(out, expect)
        assert np.signbit(out[-1])


def test_round_bf16_keeps_nan_and_matches_reference_bit_for_bit(isa, rng):
    x = view(rng, (9, 1027), pad=3, scale=100.0)
    x[0, :3] = [np.nan, -np.nan, 1e-40]
    out, expect = view(rng, (9, 1027), pad=1), np.empty((9, 1027), np.float32)
    ref.round_bf16(x, expect)
    native.round_bf16(x, out)
    assert np.isnan(out[0, 0]) and np.isnan(out[0, 1])
    np.testing.assert_array_equal(out.view(np.uint32)[:, 2:], expect.view(np.uint32)[:, 2:])
    assert not (out.view(np.uint32) & 0xFFFF).any()
    native.round_bf16(x, x)  # in place
    np.testing.assert_array_equal(x[:, 2:], expect[:, 2:])


def test_bf16_support_reports_both_instruction_sets():
    support = kernels.bf16_support()
    assert set(support) == {"avx512_bf16", "amx_bf16"} and all(isinstance(v, bool) for v in support.values())
    from smallmind.kernels.info import cpuinfo

    flags = cpuinfo()[1]  # Linux lists only what the CPU has and the OS enables
    if "avx512_bf16" not in flags:
        assert not support["avx512_bf16"]
    if "amx_bf16" not in flags:
        assert not support["amx_bf16"]


# ------------------------------------------------------------------ sample_softmax

def _drawable_tokens(rng, logits, scale, n):
    # up to n ids of probability >= 1e-4 and the u at the middle of each one's interval of the
    # float64 cumulative distribution: any correct draw maps that u to that id, whatever the
    # rounding of the sums
    x = logits.astype(np.float64) * scale
    p = np.exp(x - x.max())
    p /= p.sum()
    running = np.cumsum(p)
    likely = np.flatnonzero(p >= 1e-4)
    tokens = sorted(set(rng.choice(likely, min(n, likely.size), replace=False).tolist()))
    return [(t, running[t] - p[t] / 2) for t in tokens]


@pytest.mark.parametrize("V", [1, 7, 255, 256, 257, 4097, 70001])
@pytest.mark.parametrize("scale", [1.0, 0.37, 5.0])
def test_sample_softmax_matches_reference(isa, rng, V, scale):
    logits = view(rng, (V,), scale=2.0)
    for token, u in _drawable_tokens(rng, logits, scale, 8):
        got_probs, ref_probs = np.empty(V, np.float32), np.empty(V, np.float32)
        assert native.sample_softmax(logits, scale, u, got_probs) == token
        assert ref.sample_softmax(logits, scale, u, ref_probs) == token
        close(got_probs, ref_probs, rtol=1e-5, atol=1e-30)


def test_sample_softmax_draws_follow_the_softmax(isa):
    probs = np.array([0.5, 0.0, 0.3, 0.2], np.float64)
    with np.errstate(divide="ignore"):
        logits = np.log(probs).astype(np.float32)   # id 1 is -inf: never drawn
    work = np.empty(4, np.float32)
    us = np.random.default_rng(3).random(20000)
    counts = np.bincount([native.sample_softmax(logits, 1.0, u, work) for u in us], minlength=4)
    assert counts[1] == 0
    np.testing.assert_allclose(counts / us.size, probs, atol=0.015)


def test_sample_softmax_never_draws_a_zero_probability_token_at_the_edges(isa):
    logits = np.full(600, -np.inf, np.float32)
    logits[[5, 300]] = 0.0   # zero-probability ids before, between and after, across blocks
    work = np.empty(600, np.float32)
    assert native.sample_softmax(logits, 1.0, 0.0, work) == 5
    assert native.sample_softmax(logits, 1.0, np.nextafter(1.0, 0.0), work) == 300
    assert ref.sample_softmax(logits, 1.0, np.nextafter(1.0, 0.0), work) == 300


@pytest.mark.parametrize("impl", [native, ref], ids=["native", "reference"])
@pytest.mark.parametrize("call, message", [
    (lambda k: k.sample_softmax(_f(4), 1.0, 0.5, _f(5)), "shape"),
    (lambda k: k.sample_softmax(_f(0), 1.0, 0.5, _f(0)), "V >= 1|at least one"),
    (lambda k: k.sample_softmax(_f(2, 3), 1.0, 0.5, _f(2, 3)), "(V,)|1D"),
    (lambda k: k.sample_softmax(_f(4), 0.0, 0.5, _f(4)), "scale"),
    (lambda k: k.sample_softmax(_f(4), float("inf"), 0.5, _f(4)), "scale"),
    (lambda k: k.sample_softmax(_f(4), 1.0, 1.0, _f(4)), "u must be in"),
    (lambda k: k.sample_softmax(_f(4), 1.0, -0.1, _f(4)), "u must be in"),
    (lambda k: k.sample_softmax(np.array([0.0, np.nan], np.float32), 1.0, 0.5, _f(2)), "NaN"),
    (lambda k: k.sample_softmax(np.array([0.0, np.inf], np.float32), 1.0, 0.5, _f(2)), "NaN"),
    (lambda k: k.sample_softmax(np.full(3, -np.inf, np.float32), 1.0, 0.5, _f(3)), "finite"),
    (lambda k: k.sample_softmax(_f(4).astype(np.float64), 1.0, 0.5, _f(4)), "float32"),
])
def test_sample_softmax_refuses_bad_input(impl, call, message):
    with pytest.raises(KernelInputError, match=message):
        call(impl)


def test_sample_softmax_refuses_probs_overlapping_the_logits():
    buf = _f(8)
    for impl in (native, ref):
        with pytest.raises(KernelInputError, match="overlap"):
            impl.sample_softmax(buf, 1.0, 0.5, buf)


GIL_PROBE = """
import sys, threading, time
import numpy as np
from smallmind import kernels
from smallmind.kernels import native

# one kernel thread leaves the second core to the other Python thread
kernels.set_threads(1)
# with a switch interval of a minute the other thread runs only when a call lets go of the GIL
ran, stop = [0], threading.Event()

def other():
    while not stop.is_set():
        ran[0] += 1
        time.sleep(0)

rng = np.random.default_rng(0)
q, out = rng.standard_normal((1, 8, 32)).astype(np.float32), np.empty((1, 8, 32), np.float32)
kc = rng.standard_normal((8, 128, 32)).astype(np.float32)
x, w, y = np.ones((8, 1024), np.float32), np.ones((1024, 1024), np.float32), np.empty((8, 1024), np.float32)
sys.setswitchinterval(60.0)
thread = threading.Thread(target=other)
thread.start()
before = ran[0]
for _ in range(200):
    SHORT_CALL   # tens of microseconds of work
short = ran[0] - before
before = ran[0]
# milliseconds of work a call, repeated for up to 10 s until the other thread is seen to run: the
# waiting thread must be scheduled while a call holds no GIL, which a fast CPU makes a short window
deadline = time.monotonic() + 10.0
while ran[0] == before and time.monotonic() < deadline:
    native.linear(x, w, None, y)
long = ran[0] - before
stop.set()
sys.setswitchinterval(0.005)
thread.join()
print(short, long)
"""


@pytest.mark.parametrize("short_call", [
    "native.attention(q, kc, kc, 60, out, 0.1)",
    # a decode batch's 8 rows: 8 times the work, and the GIL kept as by the per-row calls it replaces
    ("native.attention_rows(x[:, :256].reshape(8, 8, 32), [kc[None]] * 8, [kc[None]] * 8, 0, np.full(8, 60), "
     "y[:, :256].reshape(8, 8, 32), 0.1, 0)"),
], ids=["attention", "attention_rows"])
def test_a_short_kernel_keeps_the_gil_and_a_long_one_lets_other_threads_run(short_call):
    # in a fresh interpreter: no thread of another test may take the GIL meanwhile
    probe = GIL_PROBE.replace("SHORT_CALL", short_call)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    short, long = map(int, result.stdout.split())
    assert short == 0 and long > 0


@pytest.mark.parametrize("T", [1, 3, 4, 8, 13])
def test_linear_gives_the_same_bits_however_the_threads_split_the_columns(isa, rng, T):
    x, w, b = view(rng, (T, 300)), view(rng, (100, 300)), view(rng, (100,))
    before = kernels.get_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            kernels.set_threads(threads)
            outs.append(native.linear(x, w, b, np.empty((T, 100), np.float32)).copy())
    finally:
        kernels.set_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
