"""formats.gguf: metadata and tensors as gguf's own writer and reader see them, weights used in
place, and every damaged file refused with a GGUFError."""

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize
from gguf_tiny import write_tiny
from model_files import gemma3_path, smollm2_path

from smallmind.errors import GGUFError, SmallMindError
from smallmind import memory
from smallmind.formats.gguf import GGML_TYPES, HUGE_PAGE, GGUFFile
from smallmind.formats.string_array import StringArray
from smallmind.kernels import QTensor
from smallmind.models import family

GEMMA = gemma3_path()


@pytest.fixture
def sample(tmp_path):
    """A small file with a value of every type and tensors of several storage types."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(tmp_path / "sample.gguf"), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5, 1.5])
    w.add_array("t.strs", ["a", "", "ñ"])
    arrays = {
        "mat": rng.standard_normal((3, 32)).astype(np.float32),
        "vec": rng.standard_normal(7).astype(np.float32),
        "half": rng.standard_normal((2, 8)).astype(np.float16),
        "half_vec": rng.standard_normal(5).astype(np.float16),
    }
    for name, a in arrays.items():
        w.add_tensor(name, a)
    q = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("q8", quantize(q, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp_path / "sample.gguf", arrays, q


# ------------------------------------------------------------------ metadata

def test_reads_every_value_type(sample):
    path, _, _ = sample
    with GGUFFile(path) as f:
        assert f.version == 3 and f.architecture == "llama"
        expect = {"t.u8": 200, "t.i8": -5, "t.u16": 60000, "t.i16": -30000, "t.u32": 4000000000,
                  "t.i32": -2000000000, "t.f32": 0.25, "t.u64": 1 << 40, "t.i64": -(1 << 40),
                  "t.f64": 1e-300, "t.bool": True, "t.str": "héllo", "t.strs": ["a", "", "ñ"]}
        for key, value in expect.items():
            assert f.get(key) == value, key
        np.testing.assert_array_equal(f.get("t.ints"), [1, 2, 3])
        np.testing.assert_array_equal(f.get("t.floats"), [0.5, 1.5])


def test_missing_required_key_is_named(sample):
    with GGUFFile(sample[0]) as f:
        assert f.get("no.such", 7) == 7
        with pytest.raises(GGUFError, match="'no.such' is missing"):
            f.get("no.such")


def test_get_int_checks_type_and_bounds(sample):
    with GGUFFile(sample[0]) as f:
        assert f.get_int("t.u8", min=1, max=255) == 200
        with pytest.raises(GGUFError, match="t.u8"):
            f.get_int("t.u8", max=100)
        with pytest.raises(GGUFError, match="t.str"):
            f.get_int("t.str")
        with pytest.raises(GGUFError, match="t.bool"):
            f.get_float("t.bool")


# ------------------------------------------------------------------ tensors

def test_f32_tensors_are_read_only_views_of_the_file(sample):
    path, arrays, _ = sample
    with GGUFFile(path) as f:
        mat, vec = f.tensor("mat", (3, 32)), f.tensor("vec")
        np.testing.assert_array_equal(mat, arrays["mat"])
        np.testing.assert_array_equal(vec, arrays["vec"])
        assert not mat.flags.writeable and not mat.flags.owndata


def test_16_bit_and_quantized_matrices_are_qtensors(sample):
    path, arrays, q = sample
    with GGUFFile(path) as f:
        half, q8 = f.tensor("half"), f.tensor("q8", (4, 64))
        assert isinstance(half, QTensor) and half.qtype == "F16" and half.shape == (2, 8)
        assert isinstance(q8, QTensor) and q8.qtype == "Q8_0" and q8.shape == (4, 64)
        np.testing.assert_array_equal(half.data.view(np.float16), arrays["half"])
        np.testing.assert_array_equal(dequantize(q8.data, GGMLQuantizationType.Q8_0),
                                      dequantize(quantize(q, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0))


def test_a_16_bit_vector_comes_back_as_float32(sample):
    path, arrays, _ = sample
    with GGUFFile(path) as f:
        v = f.tensor("half_vec")
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, arrays["half_vec"].astype(np.float32))


def test_tensor_shape_mismatch_and_missing_tensor_are_named(sample):
    with GGUFFile(sample[0]) as f:
        with pytest.raises(GGUFError, match="'mat' has shape"):
            f.tensor("mat", (32, 3))
        with pytest.raises(GGUFError, match="'nope' is missing"):
            f.tensor("nope")
        assert f.has_tensor("mat") and not f.has_tensor("nope")
        info = {t.name: t for t in f.tensor_infos}
        assert info["q8"].type_name == "Q8_0" and info["q8"].nbytes == 4 * 2 * 34


def test_tensors_handed_out_outlive_close_and_new_reads_are_refused(sample):
    path, arrays, _ = sample
    f = GGUFFile(path)
    mat = f.tensor("mat")
    f.close()
    np.testing.assert_array_equal(mat, arrays["mat"])  # the map lives while a view does
    with pytest.raises(GGUFError, match="closed"):
        f.tensor("mat")


def test_read_into_memory_gives_the_same_tensors_from_an_aligned_read_only_copy(sample):
    path, arrays, _ = sample
    with GGUFFile(path) as mapped, GGUFFile(path) as f:
        assert not f.in_memory
        f.read_into_memory()
        f.read_into_memory()  # a second call keeps the copy
        assert f.in_memory and not mapped.in_memory
        assert f.data_bytes == path.stat().st_size - f._data_start
        names = [t.name for t in f.tensor_infos]
        first = min(f.tensor_infos, key=lambda t: t.offset)
        for name in names:
            ours, theirs = f.tensor(name), mapped.tensor(name)
            a, b = (ours.data, theirs.data) if isinstance(ours, QTensor) else (ours, theirs)
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype and a.shape == b.shape
            if isinstance(ours, QTensor) or ours.ndim == 2 or name == "vec":
                assert not a.flags.writeable
        # the data section starts on a 2 MiB boundary (huge pages), so every tensor keeps the
        # file's alignment in memory too
        start = f.tensor(first.name)
        start = start.data if isinstance(start, QTensor) else start
        assert start.ctypes.data % HUGE_PAGE == first.offset % HUGE_PAGE
        kept = f.tensor("mat")
    np.testing.assert_array_equal(kept, arrays["mat"])  # the copy lives while a view does
    with pytest.raises(GGUFError, match="closed"):
        f.read_into_memory()


def test_read_into_memory_refuses_a_file_that_shrank_after_it_was_opened(sample, tmp_path):
    path = tmp_path / "shrinking.gguf"
    path.write_bytes(sample[0].read_bytes())
    with GGUFFile(path) as f:
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size - 10)
        with pytest.raises(GGUFError, match="ended 10 bytes before the end of its tensors"):
            f.read_into_memory()
        assert not f.in_memory


def test_read_into_memory_refuses_more_than_the_memory_available(sample, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)
    with GGUFFile(sample[0]) as f:
        with pytest.raises(SmallMindError, match="into memory would need .* load it mapped instead"):
            f.read_into_memory()
        assert not f.in_memory and f.tensor("mat").shape == (3, 32)


def test_string_arrays_come_back_as_one_blob(sample):
    with GGUFFile(sample[0]) as f:
        strings = f.get("t.strs")
    assert isinstance(strings, StringArray)
    assert (strings.blob, strings.offsets.tolist()) == ("añ".encode(), [0, 1, 1, 3])


def test_ggml_type_table_matches_the_gguf_package():
    theirs = {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType}
    assert GGML_TYPES == theirs


# ------------------------------------------------------------------ the real files against gguf's reader

def _compare_with_gguf_reader(path):
    ours, theirs = GGUFFile(path), GGUFReader(path)
    their_keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert ours.keys == their_keys
    for key in their_keys:
        field = theirs.fields[key]
        value = ours.get(key)
        if field.types[0] == GGUFValueType.ARRAY:
            expect = field.contents()
            if isinstance(value, StringArray):
                assert list(value) == expect, key
            else:
                np.testing.assert_array_equal(value, np.array(expect), err_msg=key)
        else:
            assert value == pytest.approx(field.contents()), key
    tensors = {t.name: t for t in ours.tensor_infos}
    assert list(tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        mine = tensors[t.name]
        assert mine.type_name == t.tensor_type.name
        assert mine.shape == tuple(int(n) for n in reversed(t.shape))
        assert mine.nbytes == t.n_bytes
        assert ours._data_start + mine.offset == t.data_offset
    ours.close()


def test_smollm2_parses_like_gguf_reader():
    _compare_with_gguf_reader(smollm2_path())


@pytest.mark.slow  # gguf's reader takes about 40 s on the 262k-token vocabulary
def test_gemma3_parses_like_gguf_reader():
    _compare_with_gguf_reader(GEMMA)


def test_real_files_open_with_their_weights_in_place():
    for path in (smollm2_path(), GEMMA):
        with GGUFFile(path) as f:
            emb = f.tensor("token_embd.weight")
            assert isinstance(emb, QTensor) and emb.data.base is not None and not emb.data.flags.writeable


# ------------------------------------------------------------------ refusals

def test_refuses_what_is_not_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(tmp_path / "x.gguf")
    (tmp_path / "short.gguf").write_bytes(b"GGUF")
    with pytest.raises(GGUFError, match="too short"):
        GGUFFile(tmp_path / "short.gguf")
    with pytest.raises(GGUFError, match="cannot read"):
        GGUFFile(tmp_path / "absent.gguf")


def test_a_string_array_element_that_is_not_utf8_is_named(sample, tmp_path):
    data = sample[0].read_bytes()
    assert data.count("ñ".encode()) == 1   # element 2 of t.strs
    (tmp_path / "bad.gguf").write_bytes(data.replace("ñ".encode(), "ñ".encode()[::-1]))
    with pytest.raises(GGUFError, match=r"array 't.strs': element 2 is not valid UTF-8$"):
        GGUFFile(tmp_path / "bad.gguf")


def test_refuses_version_1(sample, tmp_path):
    data = bytearray(sample[0].read_bytes())
    data[4:8] = struct.pack("<I", 1)
    (tmp_path / "v1.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="version 1"):
        GGUFFile(tmp_path / "v1.gguf")


def test_refuses_big_endian_files(sample, tmp_path):
    data = bytearray(sample[0].read_bytes())
    data[4:8] = struct.pack(">I", 3)
    (tmp_path / "be.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="big-endian"):
        GGUFFile(tmp_path / "be.gguf")


def test_refuses_overlapping_tensors(tmp_path):
    path = write_tiny(tmp_path / "m.gguf", "llama")
    theirs = GGUFReader(path)
    first, second = theirs.tensors[0], theirs.tensors[1]
    data = bytearray(Path(path).read_bytes())
    # point the second tensor's offset at the first one's
    offset_field = second.field.parts[-1]
    pos = offset_field.ctypes.data - theirs.data.ctypes.data
    data[pos:pos + 8] = struct.pack("<Q", int(first.data_offset - theirs.data_offset))
    del theirs
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="overlap"):
        GGUFFile(tmp_path / "bad.gguf")


def _header_end(path) -> int:
    with GGUFFile(path) as f:
        return f._data_start


def _damaged(data: bytes, rng, header_end: int):
    """A stream of damaged copies: truncations, flipped bytes and huge counts in the
    header, key/value and tensor-info regions."""
    n = len(data)
    for cut in sorted(set(rng.integers(0, n, 40).tolist()) | {0, 8, 16, 24, header_end - 1, n - 1}):
        yield data[:cut]
    for _ in range(300):
        d = bytearray(data)
        for pos in rng.integers(0, header_end, rng.integers(1, 4)):
            d[pos] ^= 1 << int(rng.integers(0, 8))
        yield bytes(d)
    for _ in range(60):
        d = bytearray(data)
        pos = int(rng.integers(8, header_end - 8))
        huge = (2**63, 2**64 - 1, 2**40, 2**32 + 1)[int(rng.integers(0, 4))]
        d[pos:pos + 8] = struct.pack("<Q", huge)
        yield bytes(d)


def test_damaged_files_raise_gguf_error_or_load(tmp_path):
    path = write_tiny(tmp_path / "m.gguf", "llama")
    data = Path(path).read_bytes()
    rng = np.random.default_rng(7)
    target = tmp_path / "damaged.gguf"
    outcomes = {"refused": 0, "loaded": 0}
    for damaged in _damaged(data, rng, _header_end(path)):
        target.write_bytes(damaged)
        try:
            with GGUFFile(target) as f:
                for info in f.tensor_infos:
                    try:
                        f.tensor(info.name)
                    except GGUFError:
                        pass
                try:
                    family(f.architecture).from_gguf(f)
                except SmallMindError:
                    pass
            outcomes["loaded"] += 1
        except GGUFError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 0
