"""Test-only: a GGUF file's metadata entries as raw bytes, to write tensor-less copies of it with
some values replaced (llama.cpp loads such a copy with vocab_only=True, so a vocabulary can be
tried under another tokenizer.ggml.pre)."""

import mmap
import struct

import numpy as np

GGUF_MAGIC = b"GGUF"
# GGUF value type codes -> numpy dtypes of the fixed-size kinds
NUMERIC_TYPES = {
    0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
    6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64,
}
STRING_TYPE = 8
ARRAY_TYPE = 9


class _Cursor:
    """Reads little-endian GGUF values from a buffer, advancing an offset."""

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def u32(self) -> int:
        (value,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return value

    def u64(self) -> int:
        (value,) = struct.unpack_from("<Q", self.buf, self.pos)
        self.pos += 8
        return value

    def string(self) -> str:
        n = self.u64()
        text = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def numbers(self, vtype: int, count: int) -> np.ndarray:
        dtype = np.dtype(NUMERIC_TYPES[vtype]).newbyteorder("<")
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        return values

    def value(self, vtype: int):
        if vtype == STRING_TYPE:
            return self.string()
        if vtype == ARRAY_TYPE:
            item_type = self.u32()
            count = self.u64()
            if item_type == STRING_TYPE:
                return [self.string() for _ in range(count)]
            return self.numbers(item_type, count)
        return self.numbers(vtype, 1)[0].item()


def read_gguf_entries(path) -> list:
    """(key, value, raw bytes of the whole key/value entry) for each metadata entry, in file order."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cursor = _Cursor(buf)
        if bytes(buf[:4]) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        cursor.pos = 4
        cursor.u32()  # version
        cursor.u64()  # tensor count
        n_kv = cursor.u64()
        entries = []
        for _ in range(n_kv):
            start = cursor.pos
            key = cursor.string()
            value = cursor.value(cursor.u32())
            entries.append((key, value, bytes(buf[start:cursor.pos])))
        return entries


def write_metadata_only_copy(path, out_path, string_overrides: dict) -> None:
    """A tensor-less GGUF holding path's metadata, with some string values replaced.

    llama.cpp loads such a file with vocab_only=True, so a vocabulary can be tried under another
    tokenizer.ggml.pre without a model that uses it.
    """
    def string(text: str) -> bytes:
        data = text.encode("utf-8")
        return struct.pack("<Q", len(data)) + data

    entries = []
    for key, _, raw in read_gguf_entries(path):
        if key in string_overrides:
            raw = string(key) + struct.pack("<I", STRING_TYPE) + string(string_overrides[key])
        entries.append(raw)
    with open(out_path, "wb") as out:
        out.write(GGUF_MAGIC + struct.pack("<IQQ", 3, 0, len(entries)) + b"".join(entries))
