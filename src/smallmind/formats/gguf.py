"""GGUF files: header, metadata and tensor directory parsed from a read-only memory map.

Weights are used in place: `tensor(name)` returns a float32 view (F32) or a QTensor over the
mapped bytes (F16, BF16 and the block formats), so opening a model copies nothing but its
metadata. After `read_into_memory()` the data section is instead read once into memory the
process owns, aligned to 2 MiB and (on Linux, through NumPy) advised for transparent huge pages,
and the tensors are views of that copy: a mapped file's 4 KiB pages stop the hardware prefetcher
at every page boundary and cost a TLB walk per page, which slows decode, whose products stream
every weight once a token (in a diagnosis run on a 2-core AMD EPYC, the 178 MB output product of
Gemma 3 270M took 9.5-9.8 ms from the map and 7.8-8.6 ms from such a copy). The copy takes the
resident memory the mapped weights take once touched.

gguf.GGUFReader is not used to open files: it builds a numpy array per string of the vocabulary
(seconds and hundreds of MB for a 262k-token vocabulary); this parser keeps numeric arrays as
numpy views and string arrays as StringArrays (one blob, not a str each).

Everything read from the file is checked before it is used (counts and lengths against the
bytes left, tensor extents inside the data section and disjoint, known types): a damaged
or hostile file raises GGUFError naming what is wrong, never another exception.
"""

import mmap
import os
import struct
from array import array
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ..errors import GGUFError
from ..kernels.qtensor import QTYPES, QTensor
from ..memory import format_bytes, require
from .string_array import StringArray

MAX_DIMS = 4  # GGML_MAX_DIMS
HUGE_PAGE = 2 << 20          # x86-64's transparent huge page; the in-memory data section starts on one
READ_CHUNK = 64 << 20        # bytes a read call asks for when the data section is read into memory
_REQUIRED = object()
# The format's constants, written here rather than imported from the gguf package: importing it
# brings yaml, hashlib and more, ~4 MB of resident memory that reading a file does not need.
GGUF_MAGIC = 0x46554747            # b"GGUF" read as a little-endian uint32
GGUF_DEFAULT_ALIGNMENT = 32
# GGML type id -> (name, values per block, bytes per block), ggml's type_traits
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}


class GGUFValueType(IntEnum):
    """The type code of a metadata value."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# numeric value types -> numpy little-endian dtype
_NUMERIC = {
    GGUFValueType.UINT8: np.dtype("<u1"), GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"), GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"), GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"), GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"), GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
_SCALAR_FORMAT = {  # struct formats (numpy's type chars differ in size: 'L' is 8 bytes there, 4 here)
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<B",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str         # GGML name: F32, F16, Q4_K, ...
    shape: tuple           # PyTorch order: (ne1, ne0) for a matrix, (ne0,) for a vector
    offset: int            # from the start of the data section
    nbytes: int


class _Cursor:
    """Reads little-endian values from the map, checking each length against what is left."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, pos: int, end: int):
        self.buf, self.pos, self.end = buf, pos, end

    def take(self, n: int, what: str) -> int:
        if n < 0 or n > self.end - self.pos:
            raise GGUFError(f"{what} runs past the end of the file ({n} bytes at offset {self.pos})")
        start = self.pos
        self.pos += n
        return start

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        start = self.take(n, what)
        try:
            return self.buf[start:start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{what} is not valid UTF-8 (at offset {start})") from None


class GGUFFile:
    """A GGUF v2/v3 file, memory-mapped read-only (read_into_memory() reads its tensors into
    process memory: see the module's note). Use as a context manager or call close()."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._data = None  # the data section once read into memory, else None
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < 24:
                    raise GGUFError(f"{self.path}: {size} bytes is too short for a GGUF header")
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"cannot read {self.path}: {e.strerror or e}") from None
        try:
            self._parse(size)
        except GGUFError as e:
            self.close()
            raise GGUFError(f"{self.path}: {e}") from None
        self._size = size

    def read_into_memory(self) -> None:
        """Read the data section into memory the process owns; the tensors handed out from then
        on are views of it (those handed out before stay views of the map). GGUFError if the
        file cannot be read or has shrunk, SmallMindError if the memory is not available."""
        if self._map is None:
            raise GGUFError(f"{self.path}: the file is closed")
        if self._data is None:
            self._data = self._read_data(self._size - self._data_start)

    def _read_data(self, n: int) -> np.ndarray:
        # one buffer with a huge page's slack, the section placed on a huge-page boundary of it:
        # NumPy advises buffers of 4 MiB and more for huge pages, and the reads below fault them in
        require(n + HUGE_PAGE, f"reading the {format_bytes(n)} of tensors of {self.path} into memory",
                "load it mapped instead (mmap=True)")
        buf = np.empty(n + HUGE_PAGE, np.uint8)
        skip = -buf.ctypes.data % HUGE_PAGE
        data = buf[skip:skip + n]
        view = memoryview(data)
        got = 0
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._data_start)
                while got < n:
                    k = fh.readinto(view[got:got + READ_CHUNK])
                    if not k:
                        raise GGUFError(f"{self.path} ended {n - got} bytes before the end of its tensors "
                                        "while they were read (was it changed on disk?)")
                    got += k
        except OSError as e:
            raise GGUFError(f"cannot read {self.path}: {e.strerror or e}") from None
        finally:
            view.release()
        data.flags.writeable = False
        return data

    @property
    def data_bytes(self) -> int:
        """Bytes of the data section (the tensors, with their alignment padding)."""
        return self._size - self._data_start

    @property
    def in_memory(self) -> bool:
        """True when the tensors are views of a copy in process memory, not of the file's map."""
        return self._data is not None

    # ------------------------------------------------------------------------------ parsing

    def _parse(self, size: int) -> None:
        cur = _Cursor(self._map, 0, size)
        magic = cur.u32("magic")
        if magic != GGUF_MAGIC:
            raise GGUFError(f"not a GGUF file (magic {magic:#010x})")
        self.version = cur.u32("version")
        if self.version not in (2, 3) and int.from_bytes(self.version.to_bytes(4, "little"), "big") in (2, 3):
            raise GGUFError("big-endian GGUF files are not supported")
        if self.version not in (2, 3):
            raise GGUFError(f"GGUF version {self.version} is not supported (only 2 and 3)")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # every entry takes at least this many bytes: refuse impossible counts before looping
        if n_kv > (size - cur.pos) // 13:
            raise GGUFError(f"metadata count {n_kv} cannot fit in a file of {size} bytes")
        if n_tensors > (size - cur.pos) // 24:
            raise GGUFError(f"tensor count {n_tensors} cannot fit in a file of {size} bytes")
        self._kv = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in self._kv:
                raise GGUFError(f"metadata key {key!r} appears twice")
            self._kv[key] = self._value(cur, cur.u32(f"type of {key!r}"), key)
        alignment = self._kv.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1
                or alignment & (alignment - 1)):
            raise GGUFError(f"general.alignment must be a positive power of two, got {alignment!r}")
        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        data_start = -(-cur.pos // alignment) * alignment
        data_size = size - data_start
        self._infos = {}
        for name, type_name, shape, offset, nbytes in infos:
            if name in self._infos:
                raise GGUFError(f"tensor {name!r} appears twice")
            if offset % alignment:
                raise GGUFError(f"tensor {name!r}: offset {offset} is not a multiple of the alignment {alignment}")
            if offset > data_size or nbytes > data_size - offset:
                raise GGUFError(f"tensor {name!r}: bytes {offset}..{offset + nbytes} lie outside the "
                                f"data section of {max(data_size, 0)} bytes (file truncated?)")
            self._infos[name] = TensorInfo(name, type_name, shape, offset, nbytes)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self._infos.values() if t.nbytes)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise GGUFError(f"tensors {a!r} and {b!r} overlap")
        self._data_start = data_start
        self.architecture = self.get("general.architecture", "")
        if not isinstance(self.architecture, str):
            raise GGUFError("general.architecture must be a string")

    def _value(self, cur: _Cursor, vtype: int, key: str):
        if vtype == GGUFValueType.STRING:
            return cur.string(f"value of {key!r}")
        if vtype in _SCALAR_FORMAT:
            fmt = _SCALAR_FORMAT[vtype]
            value = struct.unpack_from(fmt, self._map, cur.take(struct.calcsize(fmt), f"value of {key!r}"))[0]
            return bool(value) if vtype == GGUFValueType.BOOL else value
        if vtype == GGUFValueType.ARRAY:
            etype = cur.u32(f"element type of {key!r}")
            count = cur.u64(f"length of {key!r}")
            if etype == GGUFValueType.STRING:
                return self._strings(cur, count, key)
            if etype in _NUMERIC:
                dtype = _NUMERIC[etype]
                if count > (cur.end - cur.pos) // dtype.itemsize:
                    raise GGUFError(f"array {key!r} of {count} values runs past the end of the file")
                start = cur.take(count * dtype.itemsize, f"array {key!r}")
                values = np.frombuffer(self._map, dtype, count, start)
                return values.astype(bool) if etype == GGUFValueType.BOOL else values
            raise GGUFError(f"array {key!r} has unsupported element type {etype} (nested arrays are not read)")
        raise GGUFError(f"metadata {key!r} has unknown value type {vtype}")

    def _strings(self, cur: _Cursor, count: int, key: str) -> StringArray:
        # the vocabulary: hundreds of thousands of strings, so one tight loop that only finds
        # where each one is; the bytes are copied once into one blob (see string_array)
        buf, pos, end, unpack = self._map, cur.pos, cur.end, _U64.unpack_from
        if count > (end - pos) // 8:
            raise GGUFError(f"array {key!r} of {count} strings cannot fit in the file")
        starts = array("q")
        for i in range(count):
            if end - pos < 8:
                raise GGUFError(f"array {key!r} runs past the end of the file at element {i}")
            n = unpack(buf, pos)[0]
            pos += 8
            if n > end - pos:
                raise GGUFError(f"array {key!r}: element {i} runs past the end of the file")
            starts.append(pos)
            pos += n
        first = cur.pos
        cur.pos = pos
        # the region holds each element as its 8-byte length, then its bytes: drop the lengths
        region = np.frombuffer(self._map, np.uint8, pos - first, first)
        starts_in = np.frombuffer(starts, np.int64) - first
        keep = np.ones(len(region), bool)
        for k in range(1, 9):
            keep[starts_in - k] = False
        blob = region[keep].tobytes()
        offsets = np.empty(count + 1, np.int64)
        offsets[:-1] = starts_in - 8 * np.arange(1, count + 1)
        offsets[-1] = len(blob)
        strings = StringArray.from_utf8_parts(blob, offsets)
        if strings is None:
            for i in range(count):  # name the first bad element
                try:
                    blob[offsets[i]:offsets[i + 1]].decode("utf-8")
                except UnicodeDecodeError:
                    raise GGUFError(f"array {key!r}: element {i} is not valid UTF-8") from None
        return strings

    def _tensor_info(self, cur: _Cursor, i: int):
        name = cur.string(f"name of tensor #{i}")
        n_dims = cur.u32(f"rank of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"tensor {name!r}: rank {n_dims} is not 1..{MAX_DIMS}")
        dims = [cur.u64(f"shape of tensor {name!r}") for _ in range(n_dims)]
        type_id = cur.u32(f"type of tensor {name!r}")
        offset = cur.u64(f"offset of tensor {name!r}")
        if type_id not in GGML_TYPES:
            raise GGUFError(f"tensor {name!r}: unknown type id {type_id}")
        type_name, block, block_bytes = GGML_TYPES[type_id]
        count = 1
        for n in dims:
            if n < 1:
                raise GGUFError(f"tensor {name!r}: dimension {n} in shape {dims} is not positive")
            count *= n
            if count > 1 << 48:
                raise GGUFError(f"tensor {name!r}: shape {dims} is implausibly large")
        if dims[0] % block:
            raise GGUFError(f"tensor {name!r}: {dims[0]} columns is not a whole number of {type_name} "
                            f"blocks of {block}")
        return name, type_name, tuple(reversed(dims)), offset, count // block * block_bytes

    # ------------------------------------------------------------------------------ metadata

    @property
    def keys(self) -> list[str]:
        return list(self._kv)

    @property
    def metadata(self) -> dict:
        """Every key and its value (a plain dict: .get(key) gives None for a missing key)."""
        return self._kv

    def get(self, key: str, default=_REQUIRED):
        """The value of `key`: int, float, bool, str, a numpy array or a StringArray."""
        if key in self._kv:
            return self._kv[key]
        if default is _REQUIRED:
            raise GGUFError(f"{self.path}: metadata key {key!r} is missing")
        return default

    def get_int(self, key: str, default=_REQUIRED, *, min: int | None = None, max: int | None = None) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise GGUFError(f"{self.path}: metadata {key!r} must be an integer, got {value!r}")
        if (min is not None and value < min) or (max is not None and value > max):
            raise GGUFError(f"{self.path}: metadata {key!r} = {value} is outside {min}..{max}")
        return int(value)

    def get_float(self, key: str, default=_REQUIRED, *, min: float | None = None) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise GGUFError(f"{self.path}: metadata {key!r} must be a number, got {value!r}")
        if not np.isfinite(value) or (min is not None and value < min):
            raise GGUFError(f"{self.path}: metadata {key!r} = {value} is not a finite number >= {min}")
        return float(value)

    # ------------------------------------------------------------------------------ tensors

    @property
    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def has_tensor(self, name: str) -> bool:
        return name in self._infos

    def tensor_info(self, name: str) -> TensorInfo:
        info = self._infos.get(name)
        if info is None:
            raise GGUFError(f"{self.path}: tensor {name!r} is missing")
        return info

    def tensor(self, name: str, shape: tuple | None = None):
        """The tensor `name` in place: a read-only float32 array (F32), or a QTensor (rows, cols)
        for a 16-bit or block-quantized matrix. A 1-D tensor stored in F16/BF16 comes back as a
        float32 vector (norms and biases are a few KB; the kernels take them as float32)."""
        info = self.tensor_info(name)
        if self._map is None:
            raise GGUFError(f"{self.path}: the file is closed")
        if shape is not None and tuple(shape) != info.shape:
            raise GGUFError(f"{self.path}: tensor {name!r} has shape {info.shape}, expected {tuple(shape)}")
        if self._data is not None:
            buf, start = self._data, info.offset
        else:
            buf, start = self._map, self._data_start + info.offset
        if info.type_name == "F32":
            count = info.nbytes // 4
            return np.frombuffer(buf, np.float32, count, start).reshape(info.shape)
        if info.type_name not in QTYPES:
            raise GGUFError(f"{self.path}: tensor {name!r} has type {info.type_name}, which is not supported "
                            f"(F32, {', '.join(QTYPES)})")
        cols = info.shape[-1]
        rows = int(np.prod(info.shape[:-1], dtype=np.int64))
        data = np.frombuffer(buf, np.uint8, info.nbytes, start).reshape(rows, -1)
        if len(info.shape) == 1:
            from .. import kernels

            return kernels.dequantize(QTensor(info.type_name, (1, cols), data, name),
                                      np.empty((1, cols), np.float32))[0]
        return QTensor(info.type_name, (rows, cols), data, name)

    # ------------------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Unmap the file (and drop the in-memory copy). Arrays handed out keep their own
        reference to the map or the copy, so the memory is released when the last of them goes."""
        self._map = None
        self._data = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self) -> str:
        return f"GGUFFile({self.path!r}, v{self.version}, {self.architecture}, {len(self._infos)} tensors)"
