"""Vocabulary string -> token id, as a sorted hash table in NumPy arrays (12 bytes a token).

A Python dict over a 262k-token vocabulary costs ~35 MB (a str key and an int value object per
token, plus the table); this costs 3 MB. Lookups come in batches: the SentencePiece merger asks
for thousands of text spans at once (`find`), hashing them from prefix sums of the text.

The hash of a byte string s is sum((s[t] + 1) * B**t) mod 2**64. Every hit is confirmed by
comparing the bytes, so a hash collision can cost a miss check but never a wrong id; and the
base is chosen so that no two different vocabulary strings share a hash.
"""

import numpy as np

from ..errors import TokenizerError
from .string_array import StringArray

_MASK = (1 << 64) - 1
# odd (invertible mod 2**64) bases, tried in turn until the vocabulary's hashes are distinct
_BASES = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)


# _LOW_BYTES[k]: the low k bytes of a little-endian word set (k = 0..8)
_LOW_BYTES = np.array([(1 << 8 * k) - 1 for k in range(9)], np.uint64)


def _words(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    # data (N,) uint8, starts (M,) with starts + 8 <= N -> (M,) uint64: the 8 bytes at each start
    windows = np.lib.stride_tricks.sliding_window_view(data, 8)
    return windows[starts].view("<u8").ravel()


class TextHashes:
    """Prefix sums of one text's bytes, from which any span's hash is two array reads."""

    __slots__ = ("data", "inv_powers", "prefix")

    def __init__(self, data: np.ndarray, base: int):
        # data (N,) uint8 -> prefix (N+1,) uint64 with prefix[j] = sum over t < j of (data[t]+1) * B**t,
        # inv_powers (N+1,) uint64 = B**-i, so hash(data[i:j]) = (prefix[j] - prefix[i]) * B**-i
        n = len(data)
        powers = np.empty(n + 1, np.uint64)
        powers[0] = 1
        powers[1:] = base
        np.cumprod(powers, out=powers)
        self.prefix = np.zeros(n + 1, np.uint64)
        np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[:n], out=self.prefix[1:])
        self.inv_powers = powers
        self.inv_powers[1:] = pow(base, -1, 1 << 64)
        np.cumprod(self.inv_powers, out=self.inv_powers)
        self.data = data

    def spans(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        # starts, ends (M,) byte offsets -> (M,) uint64 hashes of data[starts:ends]
        return (self.prefix[ends] - self.prefix[starts]) * self.inv_powers[starts]


class TokenLookup:
    """id of a vocabulary string (the last id when a string repeats, as in llama.cpp)."""

    def __init__(self, strings: StringArray):
        self.strings = strings
        self.data = np.frombuffer(strings.blob, np.uint8)
        offsets = strings.offsets
        lengths = np.diff(offsets)
        chars = np.zeros(len(self.data) + 1, np.int64)
        np.cumsum((self.data & 0xC0) != 0x80, out=chars[1:])
        self.max_chars = int((chars[offsets[1:]] - chars[offsets[:-1]]).max(initial=0))
        for base in _BASES:
            hashes = self._string_hashes(base, offsets, lengths)
            order = np.argsort(hashes, kind="stable")
            hashes = hashes[order]
            # runs of one hash: keep the run's last (highest) id; a run must be one string
            last = np.ones(len(hashes), bool)
            last[:-1] = hashes[1:] != hashes[:-1]
            same = np.flatnonzero(~last)
            if all(strings.bytes_at(int(order[i])) == strings.bytes_at(int(order[i + 1])) for i in same):
                break
        else:
            raise TokenizerError("the vocabulary's strings could not be given distinct hashes")
        self.base = base
        self.hashes = hashes[last]
        self.ids = order[last].astype(np.int32)

    def _string_hashes(self, base: int, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        # -> (n,) uint64 hash of each string, one byte position at a time over the strings that long
        hashes = np.zeros(len(lengths), np.uint64)
        power = 1
        for t in range(int(lengths.max(initial=0))):
            rows = np.flatnonzero(lengths > t)
            hashes[rows] += (self.data[offsets[rows] + t].astype(np.uint64) + np.uint64(1)) * np.uint64(power)
            power = power * base & _MASK
        return hashes

    def text_hashes(self, data: np.ndarray) -> TextHashes:
        return TextHashes(data, self.base)

    def find(self, text: TextHashes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        # starts, ends (M,) byte offsets into text.data -> (M,) int64 ids of text.data[starts:ends], -1 if none
        if len(self.hashes) == 0 or len(starts) == 0:
            return np.full(len(starts), -1, np.int64)
        wanted = text.spans(starts, ends)
        slot = np.minimum(np.searchsorted(self.hashes, wanted), len(self.hashes) - 1)
        ids = np.where(self.hashes[slot] == wanted, self.ids[slot].astype(np.int64), -1)
        hit = np.flatnonzero(ids >= 0)
        token_start = self.strings.offsets[ids[hit]]
        size = ends[hit] - starts[hit]
        hit_size = self.strings.offsets[ids[hit] + 1] - token_start
        ids[hit[hit_size != size]] = -1
        hit, token_start, size = (a[hit_size == size] for a in (hit, token_start, size))
        text_start = starts[hit]
        # most hits are at most 8 bytes: compare those as one masked word each
        short = (size <= 8) & (text_start + 8 <= len(text.data)) & (token_start + 8 <= len(self.data))
        if short.any():
            mask = _LOW_BYTES[size[short]]
            differ = (_words(text.data, text_start[short]) ^ _words(self.data, token_start[short])) & mask != 0
            ids[hit[short][differ]] = -1
        hit, token_start, size, text_start = (a[~short] for a in (hit, token_start, size, text_start))
        # the rest byte by byte, all at once
        total = int(size.sum())
        if total:
            row = np.repeat(np.arange(len(hit)), size)
            within = np.arange(total) - np.repeat(np.cumsum(size) - size, size)
            differ = text.data[text_start[row] + within] != self.data[token_start[row] + within]
            ids[hit[np.bincount(row, weights=differ, minlength=len(hit)) > 0]] = -1
        return ids

    def get(self, text: str) -> int | None:
        """The id of `text`, or None when it is not a vocabulary string."""
        data = np.frombuffer(text.encode("utf-8"), np.uint8)
        found = int(self.find(self.text_hashes(data), np.zeros(1, np.int64), np.full(1, len(data), np.int64))[0])
        return None if found < 0 else found

    def __contains__(self, text: str) -> bool:
        return self.get(text) is not None
