"""Quantized-weight kernels (QTensor weights): the NumPy twins against gguf's reference decoder
and a float64 product, the native kernels against the twins on every ISA this CPU runs, and the
refusals of bad input.

Tolerances: for the block formats the native product computes the same exact integer block
sums and the same float32 expressions in the same order as the twin, so the two must agree bit
for bit (any difference is a bug, not rounding). For F16/BF16 weights both round the
activations identically but sum K float products in different orders (float64 in the twin,
float32 lanes natively), so they agree within K float32 roundings of sum |x w|.
"""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from model_files import gemma3_path, smollm2_path

from smallmind import kernels
from smallmind.errors import KernelInputError
from smallmind.formats.gguf import GGUFFile
from smallmind.kernels import quant_reference as qr
from smallmind.kernels.qtensor import QTYPES, QTensor

native = pytest.importorskip("smallmind.kernels.native")

FORMATS = tuple(QTYPES)
BLOCK_FORMATS = tuple(q for q in FORMATS if q not in ("F16", "BF16"))
# where each format's scale halves sit in a block: (offset, log10 magnitude range)
HALVES = {"Q4_0": [(0, -3, -1)], "Q5_0": [(0, -3, -1)], "Q8_0": [(0, -3, -1)],
          "Q4_1": [(0, -3, -1), (2, -3, -1)], "Q5_1": [(0, -3, -1), (2, -3, -1)],
          "Q4_K": [(0, -4, -2), (2, -4, -2)], "Q5_K": [(0, -4, -2), (2, -4, -2)], "Q6_K": [(208, -4, -2)]}


def _selected(current, select, name):
    # a kernel build selected for one test, the previous one restored after it
    previous = current()
    select(name)
    yield name
    select(previous)


@pytest.fixture(params=native.supported_isas())
def isa(request):
    yield from _selected(native.isa, native.select_isa, request.param)


@pytest.fixture(params=native.supported_quant_isas())
def qisa(request):
    # every build of the quantized kernels this CPU runs, and the VNNI and AMX kernels
    # emulated on AVX2 (their instructions replaced by exact stand-ins) on every AVX2 CPU
    yield from _selected(native.quant_isa, native.select_quant_isa, request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def random_qtensor(rng, qtype, rows, cols):
    # random bytes for the quants, finite half scales of a plausible size
    _, block, size = QTYPES[qtype]
    if qtype == "F16":
        data = rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    elif qtype == "BF16":
        bits = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16
        data = bits.astype(np.uint16).view(np.uint8)
    else:
        data = rng.integers(0, 256, (rows, cols // block * size), dtype=np.uint8)
        blocks = data.reshape(rows, cols // block, size)
        for off, lo, hi in HALVES[qtype]:
            mag = 10.0 ** rng.uniform(lo, hi, blocks.shape[:2])
            half = (rng.choice([-1.0, 1.0], blocks.shape[:2]) * mag).astype(np.float16)
            blocks[..., off:off + 2] = half[..., None].view(np.uint8).reshape(blocks.shape[:2] + (2,))
    return QTensor(qtype, (rows, cols), np.ascontiguousarray(data.reshape(rows, -1)))


def gguf_values(w):
    # w (N,K) QTensor -> (N,K) float32 from gguf's decoder
    return gguf_dequantize(w.data, GGMLQuantizationType(QTYPES[w.qtype][0])).reshape(w.shape)


def bits_equal(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def cols_for(qtype, blocks):
    return blocks * QTYPES[qtype][1] if QTYPES[qtype][1] > 1 else blocks * 32


# ------------------------------------------------------------------ real files

def _real_path(which):
    return gemma3_path() if which == "gemma" else smollm2_path()


@functools.lru_cache(maxsize=None)
def _real_samples(which):
    # the file's first tensor of each quantized format, at most 96 rows of it
    samples = {}
    with GGUFFile(_real_path(which)) as f:
        for info in f.tensor_infos:
            if info.type_name in QTYPES and info.type_name not in samples and len(info.shape) == 2:
                w = f.tensor(info.name)
                rows = min(w.shape[0], 96)
                samples[w.qtype] = QTensor(w.qtype, (rows, w.shape[1]), np.array(w.data[:rows]), info.name)
    return samples


# the formats each real file holds (Gemma 3 270M Q4_K_M, SmolLM2 135M Q4_1)
REAL = [("gemma", "Q8_0"), ("gemma", "Q5_0"), ("gemma", "Q4_K"), ("gemma", "Q6_K"),
        ("smollm", "Q4_1"), ("smollm", "Q8_0")]


def real_tensor(which, qtype):
    w = _real_samples(which).get(qtype)
    if w is None:
        pytest.skip(f"no {which} GGUF file with a {qtype} tensor on this machine")
    return w


# ------------------------------------------------------------------ dequantize: the twin is gguf's decoder

@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("blocks", [1, 3])
def test_dequantize_twin_matches_gguf_bit_for_bit(rng, qtype, blocks):
    w = random_qtensor(rng, qtype, 9, cols_for(qtype, blocks))
    out = np.empty(w.shape, np.float32)
    qr.dequantize(w, out)
    assert bits_equal(out, gguf_values(w))


@pytest.mark.parametrize("which,qtype", REAL)
def test_dequantize_twin_matches_gguf_on_real_tensors(which, qtype):
    w = real_tensor(which, qtype)
    out = np.empty(w.shape, np.float32)
    qr.dequantize(w, out)
    assert bits_equal(out, gguf_values(w))


@pytest.mark.parametrize("qtype", FORMATS)
def test_native_dequantize_matches_twin_bit_for_bit(qisa, rng, qtype):
    w = random_qtensor(rng, qtype, 37, cols_for(qtype, 3))
    expect, got = np.empty(w.shape, np.float32), np.full(w.shape, np.nan, np.float32)
    qr.dequantize(w, expect)
    native.quant_dequantize(w, got)
    assert bits_equal(got, expect)


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("with_wpe", [False, True])
def test_embedding_rows_are_the_dequantized_rows(qisa, rng, qtype, with_wpe):
    w = random_qtensor(rng, qtype, 50, cols_for(qtype, 2))
    C = w.shape[1]
    tokens = np.array([3, 0, 49, 3, 17], np.int64)
    wpe = rng.standard_normal((12, C)).astype(np.float32) if with_wpe else None
    table = gguf_values(w)
    expect = table[tokens] + wpe[4:9] if with_wpe else table[tokens]  # (adding 0 would turn -0 into +0)
    twin, got = np.empty((5, C), np.float32), np.empty((5, C), np.float32)
    qr.embedding(tokens, w, wpe, 4, twin)
    native.quant_embedding(tokens, w, wpe, 4, got)
    assert bits_equal(twin, expect.astype(np.float32))
    assert bits_equal(got, twin)


# ------------------------------------------------------------------ activation quantization

def test_q8_0_activations_round_to_the_nearest_step(rng):
    x = (rng.standard_normal((3, 128)) * 10.0 ** rng.uniform(-3, 2, (3, 128))).astype(np.float32)
    x[1, 32:64] = 0.0                                   # an all-zero block quantizes to zeros
    d, q = qr.quantize_q8_0(x)
    step = np.abs(x.reshape(3, 4, 32)).max(axis=-1) / 127.0
    assert np.array_equal(d, step.astype(np.float32).astype(np.float16).astype(np.float32))
    assert np.abs(q.astype(int)).max() == 127
    err = np.abs(q * step[..., None] - x.reshape(3, 4, 32))
    assert np.all(err <= 0.5 * step[..., None] * (1 + 1e-5))
    assert not q[1, 1].any() and d[1, 1] == 0


def test_q8_0_activations_break_ties_to_even():
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [127.0, 2.5, 3.5, -2.5]                  # scale 1: halves land exactly on ties
    _, q = qr.quantize_q8_0(x)
    assert q[0, 0, :4].tolist() == [127, 2, 4, -2]


def test_q8_1_sum_term_is_the_scaled_quant_sum(rng):
    x = rng.standard_normal((2, 64)).astype(np.float32)
    d, s, q = qr.quantize_q8_1(x)
    amax = np.abs(x.reshape(2, 2, 32)).max(axis=-1)
    unrounded = (amax / np.float32(127)).astype(np.float32) * q.astype(np.int32).sum(-1).astype(np.float32)
    assert np.array_equal(s, unrounded.astype(np.float16).astype(np.float32))


def test_q8_k_activations_map_the_largest_magnitude_to_minus_127(rng):
    x = rng.standard_normal((2, 512)).astype(np.float32)
    x[0, 7] = -9.0                                      # block 0's peak is negative
    x[1, 300] = 8.0                                     # block 1 of row 1: positive peak
    d, q, bsums = qr.quantize_q8_k(x)
    assert q[0, 0, 7] == -127 and q[1, 1, 300 - 256] == -127
    assert np.isclose(d[0, 0], 9.0 / 127) and np.isclose(d[1, 1], -8.0 / 127)
    assert np.array_equal(bsums, q.reshape(2, 2, 16, 16).astype(int).sum(-1))
    assert np.abs(q.astype(np.float64) * d[..., None] - x.reshape(2, 2, 256)).max() <= 0.5 * 9.0 / 127 * 1.0001


# ------------------------------------------------------------------ the twin's product

def _activation_values(qtype, x):
    # x (T,K) -> (T,K) float64 values the quantized activations hold, and the Q8_1 m*s term
    act = qr.quantize_activations(qtype, x)
    kind = qr.VEC_DOT_TYPE[qtype]
    if kind in ("F16", "BF16"):
        return act.astype(np.float64), None
    d, q = (act[0], act[2]) if kind == "Q8_1" else (act[0], act[1])
    values = (q.astype(np.float64) * d[..., None].astype(np.float64)).reshape(x.shape)
    return values, (act[1] if kind == "Q8_1" else None)


@pytest.mark.parametrize("qtype", FORMATS)
def test_twin_linear_is_the_product_of_the_quantized_values(rng, qtype):
    # float64 product of what the weights and the quantized activations hold: the twin may
    # differ only by float32 rounding, except that llama.cpp keeps Q8_1's d*sum(q) as a half
    T, N, K = 5, 23, cols_for(qtype, 3)
    w = random_qtensor(rng, qtype, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    wv = gguf_values(w).astype(np.float64)
    xv, s = _activation_values(qtype, x)
    expect = xv @ wv.T
    bound = 1e-5 * (np.abs(xv) @ np.abs(wv).T)
    if s is not None:
        # the min term m * sum(x) is taken from the half s = half(d * sum q): 2^-11 relative
        m = w.data.reshape(N, -1, QTYPES[qtype][2])[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        d, _, q = qr.quantize_q8_1(x)
        exact_s = q.astype(np.float64).sum(-1) * d     # what xv's values sum to, block by block
        expect += (s.astype(np.float64) - exact_s) @ m.T
        # the twin rounds d*q and m*s apart, and |d q| <= |w| + |m| can exceed |w|
        bound += 1e-5 * (np.abs(xv) @ np.repeat(np.abs(m), 32, axis=1).T + np.abs(s) @ np.abs(m).T)
    out = np.empty((T, N), np.float32)
    qr.linear(x, w, None, out)
    assert np.all(np.abs(out - expect) <= bound)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q6_K"])
def test_twin_linear_is_close_to_the_float_product(rng, qtype):
    # against the unquantized activations: off by at most the activations' quantization error
    T, N, K = 3, 17, 512
    w = random_qtensor(rng, qtype, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    wv = gguf_values(w).astype(np.float64)
    xv, _ = _activation_values(qtype, x)
    out = np.empty((T, N), np.float32)
    qr.linear(x, w, None, out)
    err = np.abs(out - x.astype(np.float64) @ wv.T)
    assert np.all(err <= np.abs(x - xv) @ np.abs(wv).T + 1e-5 * (np.abs(x) @ np.abs(wv).T))


def test_twin_linear_adds_bias_and_accumulates(rng):
    w = random_qtensor(rng, "Q4_0", 11, 64)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    b = rng.standard_normal(11).astype(np.float32)
    plain = np.empty((2, 11), np.float32)
    qr.linear(x, w, None, plain)
    out = np.ones((2, 11), np.float32)
    qr.linear(x, w, b, out, accumulate=True)
    assert bits_equal(out, (1.0 + (plain + b)).astype(np.float32))


# ------------------------------------------------------------------ native products against the twin

def _check_native_linear(w, x, b, accumulate, rng):
    T, N = x.shape[0], w.shape[0]
    start = rng.standard_normal((T, N)).astype(np.float32)
    expect, got = start.copy(), start.copy()
    qr.linear(x, w, b, expect, accumulate)
    assert native.quant_linear(x, w, b, got, accumulate) is got
    if w.qtype in ("F16", "BF16"):
        wv = gguf_values(w).astype(np.float64)
        scale = np.abs(x.astype(np.float64)) @ np.abs(wv).T + (np.abs(start) if accumulate else 0)
        assert np.all(np.abs(got - expect) <= 1.2e-7 * (w.shape[1] + 2) * scale)
    else:
        assert bits_equal(got, expect)


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 16, 17, 33, 100])
def test_native_linear_matches_twin(qisa, rng, qtype, T):
    w = random_qtensor(rng, qtype, 37, cols_for(qtype, 2))
    x = rng.standard_normal((T, w.shape[1])).astype(np.float32)
    _check_native_linear(w, x, None, False, rng)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q6_K", "F16"])
@pytest.mark.parametrize("linear", [qr.linear, native.quant_linear])
def test_linear_takes_no_rows_and_gives_zero_for_zero_activations(rng, qtype, linear):
    w = random_qtensor(rng, qtype, 9, 256)
    linear(np.zeros((0, 256), np.float32), w, None, np.zeros((0, 9), np.float32), False)
    out = np.full((2, 9), np.nan, np.float32)
    linear(np.zeros((2, 256), np.float32), w, None, out, False)
    assert not out.any()


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("blocks,N", [(1, 1), (1, 193), (9, 50)])
@pytest.mark.parametrize("T", [5, 40])
def test_native_linear_matches_twin_on_block_counts_bias_and_accumulate(qisa, rng, qtype, blocks, N, T):
    w = random_qtensor(rng, qtype, N, cols_for(qtype, blocks))
    x = rng.standard_normal((T, w.shape[1])).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    _check_native_linear(w, x, b, True, rng)


def test_native_linear_takes_strided_activations_and_outputs(qisa, rng):
    w = random_qtensor(rng, "Q4_K", 40, 512)
    xbuf = rng.standard_normal((7, 600)).astype(np.float32)
    x = xbuf[:, 3:515]
    obuf = np.zeros((7, 50), np.float32)
    out = obuf[:, 5:45]
    expect = np.empty((7, 40), np.float32)
    qr.linear(x, w, None, expect)
    native.quant_linear(x, w, None, out, False)
    assert bits_equal(np.ascontiguousarray(out), expect)
    assert not obuf[:, :5].any() and not obuf[:, 45:].any()


@pytest.mark.parametrize("which,qtype", REAL)
def test_native_linear_matches_twin_on_real_tensors(qisa, rng, which, qtype):
    w = real_tensor(which, qtype)
    for T in (1, 7, 21):
        x = rng.standard_normal((T, w.shape[1])).astype(np.float32)
        _check_native_linear(w, x, None, False, rng)


def awkward_activations(K):
    # (5, K): a zero row, rounding ties (largest magnitude 127, so the scale is exactly 1),
    # the largest magnitude reached with both signs (the first decides Q8_K's sign), a
    # lone nonzero value, and values of wildly different sizes
    x = np.zeros((5, K), np.float32)
    ties = np.resize(np.array([2.5, -3.5, 0.5, -0.5, 126.5, 127.0, -1.5, 4.5], np.float32), K)
    ties[::32] = 127.0
    x[1] = ties
    x[2, ::2], x[2, 1::2] = -9.0, 9.0
    x[2, 1::64] = 3.0
    x[3, K // 2] = -2.0
    x[4] = np.resize(np.array([1e-30, 300.0, -7e-3, 1.0], np.float32), K)
    return x


@pytest.mark.parametrize("qtype", BLOCK_FORMATS)
def test_native_linear_matches_twin_on_awkward_activations(qisa, rng, qtype):
    w = random_qtensor(rng, qtype, 35, cols_for(qtype, 2))
    x = awkward_activations(w.shape[1])
    _check_native_linear(w, x, None, False, rng)
    # and in a product of many rows (the tiles of the AMX build, the L2 blocks of the others)
    _check_native_linear(w, np.tile(x, (4, 1)), None, False, rng)


@pytest.mark.parametrize("qtype", ["Q6_K", "Q8_0", "Q5_0"])
@pytest.mark.parametrize("T", [1, 6, 20, 130])
def test_native_linear_gives_the_same_bits_on_one_and_two_threads(qisa, rng, qtype, T):
    w = random_qtensor(rng, qtype, 1001, 512)
    x = rng.standard_normal((T, 512)).astype(np.float32)
    threads = native.get_threads()
    try:
        results = []
        for n in (1, 2):
            native.set_threads(n)
            out = np.empty((T, 1001), np.float32)
            native.quant_linear(x, w, None, out, False)
            results.append(out)
    finally:
        native.set_threads(threads)
    assert bits_equal(results[0], results[1])


def test_quantized_kernels_follow_the_selected_isa(isa):
    # AVX-512 machines run the AMX build where the process may use AMX-INT8, else the VNNI
    # build where the CPU has VNNI, else the AVX2 build
    found = native.supported_quant_isas()
    best512 = "amx" if "amx" in found else "avx512vnni" if "avx512vnni" in found else "avx2"
    expect = {"generic": "generic", "avx2": "avx2", "avx512": best512}[isa]
    assert native.quant_isa() == expect


def test_quantized_kernels_are_chosen_alone_and_refuse_unknown_builds():
    previous, float_isa = native.quant_isa(), native.isa()
    try:
        assert native.select_quant_isa("generic") == "generic" and native.quant_isa() == "generic"
        assert native.isa() == float_isa
        assert native.select_quant_isa("best") == previous
        with pytest.raises(ValueError, match="not supported"):
            native.select_quant_isa("avx1024")
        assert native.quant_isa() == previous
    finally:
        native.select_quant_isa(previous)


def test_the_emulated_builds_run_wherever_avx2_does():
    # the VNNI and AMX kernels' logic is tested on every AVX2 machine, VNNI and AMX or not
    found = native.supported_quant_isas()
    assert ("avx2" in found) == ("avx512vnni-emulated" in found) == ("amx-emulated" in found)
    if "avx512vnni" in found:
        assert native.cpu_features()["avx512vnni"]
    if "amx" in found:
        assert "avx512vnni" in found


def test_kernels_entry_points_route_qtensors_to_the_native_kernels(rng):
    w = random_qtensor(rng, "Q5_0", 8, 64)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    a, b = np.empty((2, 8), np.float32), np.empty((2, 8), np.float32)
    kernels.linear(x, w, None, a)
    native.quant_linear(x, w, None, b, False)
    assert bits_equal(a, b)
    d = np.empty(w.shape, np.float32)
    assert kernels.dequantize(w, d) is d and bits_equal(d, gguf_values(w))


def test_numpy_path_runs_the_twins():
    code = ("import numpy as np; from smallmind import kernels; "
            "from smallmind.kernels import quant_reference as qr; from smallmind.kernels.qtensor import QTensor; "
            "r = np.random.default_rng(0); d = r.integers(0, 256, (4, 34), dtype=np.uint8); d[:, 0:2] = 0; "
            "d[:, 1] = 0x20; w = QTensor('Q8_0', (4, 32), d); x = r.standard_normal((3, 32)).astype(np.float32); "
            "a = np.empty((3, 4), np.float32); b = np.empty((3, 4), np.float32); kernels.linear(x, w, None, a); "
            "qr.linear(x, w, None, b); print(kernels.path, kernels._quant_linear is qr.linear, (a == b).all())")
    env = dict(os.environ, SMALLMIND_KERNELS="numpy")
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["numpy", "True", "True"], done.stderr


# ------------------------------------------------------------------ refusals (twin and native alike)

LINEARS = [pytest.param(qr.linear, id="twin"), pytest.param(native.quant_linear, id="native")]


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_refuses_data_of_the_wrong_size(rng, linear):
    w = random_qtensor(rng, "Q4_1", 4, 64)
    w.data = np.zeros((4, 39), np.uint8)
    with pytest.raises(KernelInputError, match="data must be"):
        linear(np.zeros((1, 64), np.float32), w, None, np.zeros((1, 4), np.float32), False)


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_refuses_data_of_the_wrong_dtype_and_unknown_formats(rng, linear):
    w = random_qtensor(rng, "Q8_0", 4, 64)
    good = w.data
    w.data = good.view(np.int8)
    with pytest.raises(KernelInputError, match="data must be"):
        linear(np.zeros((1, 64), np.float32), w, None, np.zeros((1, 4), np.float32), False)
    w.data, w.qtype = good, "Q3_K"
    with pytest.raises(KernelInputError, match="unknown block format"):
        linear(np.zeros((1, 64), np.float32), w, None, np.zeros((1, 4), np.float32), False)


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_refuses_float64_x_and_a_wrong_width(rng, linear):
    w = random_qtensor(rng, "Q4_0", 4, 64)
    with pytest.raises(KernelInputError, match="x must be"):
        linear(np.zeros((1, 64)), w, None, np.zeros((1, 4), np.float32), False)
    with pytest.raises(KernelInputError, match="64"):
        linear(np.zeros((1, 32), np.float32), w, None, np.zeros((1, 4), np.float32), False)
    with pytest.raises(KernelInputError, match="out"):
        linear(np.zeros((2, 64), np.float32), w, None, np.zeros((2, 5), np.float32), False)


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_refuses_out_overlapping_x(rng, linear):
    w = random_qtensor(rng, "Q4_0", 32, 32)
    buf = rng.standard_normal((2, 32)).astype(np.float32)
    with pytest.raises(KernelInputError, match="overlap x"):
        linear(buf, w, None, buf, False)


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_refuses_out_overlapping_the_weight_bytes(rng, linear):
    # out is w's own bytes seen as float32: writing it would corrupt the weights mid-product
    w = random_qtensor(rng, "Q8_0", 4, 64)        # 4 rows of 68 bytes = 68 floats
    out = w.data.reshape(-1).view(np.float32)[:68].reshape(17, 4)
    with pytest.raises(KernelInputError, match="overlap w"):
        linear(np.zeros((17, 64), np.float32), w, None, out, False)


EMBEDDINGS = [pytest.param(qr.embedding, id="twin"), pytest.param(native.quant_embedding, id="native")]


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("bad", [-1, 10])
def test_embedding_refuses_token_ids_out_of_range(rng, embedding, bad):
    w = random_qtensor(rng, "Q6_K", 10, 256)
    with pytest.raises(IndexError):
        embedding(np.array([0, bad], np.int32), w, None, 0, np.zeros((2, 256), np.float32))


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_embedding_refuses_out_overlapping_the_table(rng, embedding):
    w = random_qtensor(rng, "F16", 10, 64)
    out = w.data.reshape(-1).view(np.float32)[:128].reshape(2, 64)
    with pytest.raises(KernelInputError, match="overlap"):
        embedding(np.array([1, 2], np.int64), w, None, 0, out)


@pytest.mark.parametrize("dequantize", [pytest.param(qr.dequantize, id="twin"),
                                        pytest.param(native.quant_dequantize, id="native")])
def test_dequantize_refuses_a_wrong_shape_and_overlap(rng, dequantize):
    w = random_qtensor(rng, "Q5_1", 4, 64)
    with pytest.raises(KernelInputError):
        dequantize(w, np.zeros((4, 32), np.float32))
    buf = np.zeros(8 * 64 * 4, np.uint8)       # out spans the table's bytes (and more)
    w2 = QTensor("F16", (8, 64), buf[:8 * 128].reshape(8, 128))
    with pytest.raises(KernelInputError, match="overlap"):
        dequantize(w2, buf.view(np.float32).reshape(8, 64))
