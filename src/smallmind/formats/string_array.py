"""A read-only array of strings kept as one UTF-8 blob and an offsets array.

A 262k-token vocabulary as a list of str costs ~20 MB of Python objects (a header of 50-75
bytes per string); as one blob and (n+1,) offsets it costs its text plus 4 bytes a string.
Strings are decoded on access, so code that reads a few (token texts, special tokens) pays
little, and code that needs them all works on `blob` and `offsets` with NumPy.
"""

from collections.abc import Sequence
from itertools import pairwise

import numpy as np


class StringArray(Sequence):
    """Item i is blob[offsets[i]:offsets[i + 1]] decoded as UTF-8 (valid UTF-8 is checked once)."""

    __slots__ = ("blob", "offsets")

    def __init__(self, blob: bytes, offsets: np.ndarray):
        # offsets (n+1,) integers, non-decreasing, offsets[0] == 0, offsets[-1] == len(blob); each
        # item's bytes valid UTF-8 (the constructors below check both)
        self.blob = blob
        self.offsets = compact_offsets(offsets)

    @classmethod
    def from_strings(cls, strings) -> "StringArray":
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(b"".join(encoded), offsets)

    @classmethod
    def from_utf8_parts(cls, blob: bytes, offsets: np.ndarray) -> "StringArray | None":
        """The array, or None when some item is not valid UTF-8. The whole blob is decoded once:
        every item is valid exactly when the blob is and no item starts inside a character."""
        try:
            blob.decode("utf-8")
        except UnicodeDecodeError:
            return None
        data = np.frombuffer(blob, np.uint8)
        starts = offsets[:-1][offsets[:-1] < len(blob)]
        if np.any((data[starts] & 0xC0) == 0x80):
            return None
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.bytes_at(index).decode("utf-8")

    def bytes_at(self, index) -> bytes:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"string index {index} is out of range for {n} strings")
        index = int(index) % n
        return self.blob[self.offsets[index]:self.offsets[index + 1]]

    def __iter__(self):
        blob = self.blob
        for a, b in pairwise(self.offsets.tolist()):
            yield blob[a:b].decode("utf-8")

    def __contains__(self, text) -> bool:
        if not isinstance(text, str):
            return False
        return self.index_of(text) is not None

    def index_of(self, text: str) -> int | None:
        """The first index whose string is `text`, or None (a search of the blob, not a loop)."""
        target = text.encode("utf-8")
        start = 0
        while True:
            at = self.blob.find(target, start)
            if at < 0:
                return None
            # an item starts at `at` and ends where the match does
            i = int(np.searchsorted(self.offsets, at, side="left"))
            while i < len(self) and self.offsets[i] == at:
                if self.offsets[i + 1] == at + len(target):
                    return i
                i += 1
            start = at + 1

    def __eq__(self, other) -> bool:
        if isinstance(other, StringArray):
            return self.blob == other.blob and np.array_equal(self.offsets, other.offsets)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings, {len(self.blob)} bytes)"


def compact_offsets(offsets: np.ndarray) -> np.ndarray:
    # (n+1,) non-decreasing offsets -> the same as int32 when the last fits (half the memory of int64)
    return offsets.astype(np.int32 if offsets[-1] < 2**31 else np.int64, copy=False)
