"""kernels/quantize.py: bytes equal to the reference quantizers, round trips within each
format's error, bad input refused."""

import ctypes
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from smallmind import kernels
from smallmind.errors import KernelInputError
from smallmind.kernels import quantize as quantize_mod
from smallmind.kernels.qtensor import QTYPES
from smallmind.kernels.quantize import quantize

GGUF_HAS = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
K_FORMATS = ("Q4_K", "Q5_K", "Q6_K")
# relative RMS error of a round trip on Gaussian weights: about 3/4 of each bound
RMS_BOUND = {"F16": 5e-4, "BF16": 4e-3, "Q8_0": 0.008, "Q4_0": 0.115, "Q4_1": 0.105, "Q5_0": 0.058,
             "Q5_1": 0.052, "Q4_K": 0.095, "Q5_K": 0.05, "Q6_K": 0.025}


def weights(rows=16, cols=512, seed=0):
    # Gaussian rows of different scales, with the awkward blocks: all zero, constant, one spike
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 2.0, (rows, 1))).astype(np.float32)
    w[1, :256] = 0.0
    w[2, :32] = 0.25
    w[3, 40] = 50.0
    w[4, 64:96] = -np.abs(w[4, 64:96])
    return w


@pytest.mark.parametrize("qtype", GGUF_HAS)
def test_equals_gguf_reference_quantizer(qtype):
    w = weights()
    ref = gguf_quantize(w, GGMLQuantizationType(QTYPES[qtype][0])).view(np.uint8).reshape(w.shape[0], -1)
    assert np.array_equal(quantize(w, qtype).data, ref)


def _ggml():
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None:
        pytest.skip("llama-cpp-python (ggml's quantizers) is not installed")
    lib = ctypes.CDLL(str(Path(spec.submodule_search_locations[0]) / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


LLAMA_CPP_BYTES = json.loads((Path(__file__).parent / "reference" / "quant_llamacpp.json").read_text())


@pytest.mark.parametrize("qtype", K_FORMATS + GGUF_HAS)
def test_equals_the_committed_bytes_of_llama_cpps_quantizer(qtype):
    # made by tests/reference/make_quant_refs.py with ggml's own quantizers
    w = weights(seed=1)
    assert hashlib.sha256(w.tobytes()).hexdigest() == LLAMA_CPP_BYTES["matrix_sha256"]
    assert quantize(w, qtype).data.tobytes().hex() == LLAMA_CPP_BYTES["bytes"][qtype]


@pytest.mark.slow
@pytest.mark.parametrize("qtype", K_FORMATS + GGUF_HAS)
def test_equals_llama_cpp_reference_quantizer(qtype):
    lib = _ggml()
    w = weights(seed=1)
    ours = quantize(w, qtype).data
    ref = np.zeros_like(ours)
    lib.ggml_quantize_chunk(QTYPES[qtype][0], w.ctypes.data, ref.ctypes.data, 0, w.shape[0], w.shape[1], None)
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_round_trip_stays_within_the_formats_error(qtype):
    w = np.random.default_rng(2).standard_normal((32, 1024)).astype(np.float32)
    q = quantize(w, qtype)
    back = kernels.dequantize(q, np.empty(w.shape, np.float32))
    rel = np.sqrt(np.square(back - w).sum() / np.square(w).sum())
    assert rel < RMS_BOUND[qtype]


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_all_zero_matrix_round_trips_to_zero(qtype):
    q = quantize(np.zeros((2, 256), np.float32), qtype)
    assert not kernels.dequantize(q, np.empty((2, 256), np.float32)).any()


def test_slices_of_rows_give_the_same_bytes_as_one_pass(monkeypatch):
    w = weights(rows=8)
    whole = quantize(w, "Q4_K").data
    monkeypatch.setattr(quantize_mod, "SLICE_VALUES", 3 * 512)
    assert np.array_equal(quantize(w, "Q4_K").data, whole)


def test_width_not_a_whole_number_of_blocks_is_refused():
    with pytest.raises(KernelInputError, match="not a whole number of Q4_K blocks of 256"):
        quantize(np.zeros((2, 128), np.float32), "Q4_K", "blk.0.ffn_up.weight")


def test_non_finite_values_are_refused_naming_the_tensor():
    w = np.zeros((1, 32), np.float32)
    w[0, 3] = np.nan
    with pytest.raises(KernelInputError, match="output.weight: holds NaN"):
        quantize(w, "Q8_0", "output.weight")


def test_unknown_format_and_bad_shapes_are_refused():
    with pytest.raises(KernelInputError, match="cannot quantize to 'Q3_K'"):
        quantize(np.zeros((1, 256), np.float32), "Q3_K")
    with pytest.raises(KernelInputError, match="2-D"):
        quantize(np.zeros(32, np.float32), "Q8_0")
    with pytest.raises(KernelInputError, match="floating-point"):
        quantize(np.zeros((1, 32), np.int32), "Q8_0")
