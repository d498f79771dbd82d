"""llama.cpp's SentencePiece-style tokenizer: greedy bigram merging by vocabulary score.

Start from one symbol per character; repeatedly merge the adjacent pair whose concatenation is a
vocabulary token of the highest score (ties: the leftmost pair), until no pair forms a token. Each
final symbol is its token, or, if it is not one, its UTF-8 bytes as <0xXX> byte tokens. This is
llama.cpp's llm_tokenizer_spm_session, not SentencePiece's own algorithm: it may form any token of
the vocabulary (CONTROL ones included), exactly as llama.cpp does.

The vocabulary is looked up in batches (token_lookup), not one span at a time: first every span
that merging could ever form is found, length by length (a span of L characters can form only if
it is a token made of two such spans; a short text simply has all its spans looked up at once);
then the text is cut where no such span crosses. Merges never cross those cuts, so each piece is
merged on its own, with a small dict of its spans.
"""

from heapq import heapify, heappop, heappush

import numpy as np

from ..errors import TokenizerError
from .token_lookup import TokenLookup

# the text is merged in pieces of at least this many characters (cut where no token can cross)
PIECE_CHARS = 512
# a text with at most this many (start, length) spans has them all looked up in one batch: for a
# short text, one batch costs less than finding the formable spans length by length
ALL_SPANS_LIMIT = 1 << 16


class SPMMerger:
    """Encodes text (spaces already replaced by U+2581) to ids with llama.cpp's SPM rule."""

    def __init__(self, lookup: TokenLookup, scores: np.ndarray, byte_ids: list):
        self.lookup = lookup
        self.scores = scores        # (n,) float32 score of each id
        self.byte_ids = byte_ids    # byte value -> id of its <0xXX> token, or None
        self.stride = lookup.max_chars + 1   # a span's key is start * stride + its length

    def encode(self, texts: list) -> list:
        """texts: list of str -> a list of ids for each (merged apart: no token spans two texts).
        One call does the vocabulary lookups of all of them (a text cut at special tokens comes
        in many short fragments, and each batch of lookups has a fixed cost)."""
        text = "".join(texts)
        n = len(text)
        firsts = np.zeros(len(texts) + 1, np.int64)
        np.cumsum([len(t) for t in texts], out=firsts[1:])
        outs = [[] for _ in texts]
        if n == 0:
            return outs
        fragment = np.repeat(np.arange(len(texts)), np.diff(firsts))     # (n,) which text a character is in
        data = np.frombuffer(text.encode("utf-8"), np.uint8)
        bounds = np.append(np.flatnonzero((data & 0xC0) != 0x80), len(data))   # (n+1,) char -> byte
        hashes = self.lookup.text_hashes(data)
        single = self.lookup.find(hashes, bounds[:-1], bounds[1:])
        if n * self.lookup.max_chars <= ALL_SPANS_LIMIT:
            starts, lengths, ids = self.token_spans(hashes, bounds, fragment)
        else:
            starts, lengths, ids = self.formable_spans(hashes, bounds, fragment)
        # inside[p] > 0: some formable span covers characters p-1 and p, so no cut at p
        inside = np.cumsum(np.bincount(starts + 1, minlength=n + 1) - np.bincount(starts + lengths, minlength=n + 1))
        safe = np.flatnonzero(inside[1:n] == 0) + 1
        cuts = [0]
        while True:
            j = int(np.searchsorted(safe, cuts[-1] + PIECE_CHARS))
            if j == len(safe):
                break
            cuts.append(int(safe[j]))
        cuts = sorted(set(cuts).union(firsts.tolist()))
        order = np.argsort(starts, kind="stable")
        starts, lengths, ids = starts[order], lengths[order], ids[order]
        cut_at = np.array(cuts)
        # each span's key within its piece, and everything the pieces need as Python lists, at once
        piece_start = cut_at[np.searchsorted(cut_at, starts, side="right") - 1]
        keys = ((starts - piece_start) * self.stride + lengths).tolist()
        neg_scores = (-self.scores[ids]).tolist()
        edges = np.searchsorted(starts, cut_at).tolist()
        owners = (np.searchsorted(firsts, cut_at[:-1], side="right") - 1).tolist()
        ids, single = ids.tolist(), single.tolist()
        for k in range(len(cuts) - 1):
            a, b = cuts[k], cuts[k + 1]
            span = slice(edges[k], edges[k + 1])
            self.merge(text, a, b, dict(zip(keys[span], ids[span])), dict(zip(keys[span], neg_scores[span])),
                       single[a:b], outs[owners[k]])
        return outs

    def token_spans(self, hashes, bounds: np.ndarray, fragment: np.ndarray):
        # -> starts, lengths, ids (M,) int64 of every span of 2+ characters that is a token (within
        # one fragment): a superset of the formable spans, which serves the merge as well
        n = len(fragment)
        start = np.arange(n)[:, None]
        length = np.arange(2, min(n, self.lookup.max_chars) + 1)[None, :]
        end = start + length
        inside = (end <= n) & (fragment[start] == fragment[np.minimum(end, n) - 1])
        starts, lengths = np.broadcast_to(start, inside.shape)[inside], np.broadcast_to(length, inside.shape)[inside]
        ids = self.lookup.find(hashes, bounds[starts], bounds[starts + lengths])
        hit = ids >= 0
        return starts[hit], lengths[hit], ids[hit]

    def formable_spans(self, hashes, bounds: np.ndarray, fragment: np.ndarray):
        # -> starts, lengths, ids (M,) int64 of every span of 2+ characters merging could form
        # (within one fragment: fragment (n,) numbers the text each character belongs to)
        n = len(fragment)
        formable = [None, np.ones(n, bool)]     # formable[L][a]: span (a, L) can become a symbol
        found = [None, True]                    # whether any span of length L can
        starts, lengths, ids = [], [], []
        for L in range(2, min(n, self.lookup.max_chars) + 1):
            # a formable span has a formable part of at least half its length
            if not any(found[(L + 1) // 2:L]):
                break
            m = n - L + 1
            candidate = fragment[:m] == fragment[L - 1:]
            grown = np.zeros(m, bool)
            for k in range(1, L):
                if found[k] and found[L - k]:
                    grown |= formable[k][:m] & formable[L - k][k:k + m]
            at = np.flatnonzero(candidate & grown)
            span_ids = self.lookup.find(hashes, bounds[at], bounds[at + L])
            hit = span_ids >= 0
            formable.append(np.zeros(m, bool))
            formable[L][at[hit]] = True
            found.append(bool(hit.any()))
            starts.append(at[hit])
            lengths.append(np.full(int(hit.sum()), L, np.int64))
            ids.append(span_ids[hit])
        if not starts:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        return np.concatenate(starts), np.concatenate(lengths), np.concatenate(ids)

    def merge(self, text: str, a: int, b: int, span_ids: dict, neg_scores: dict, single: list, out: list):
        """Merge text[a:b] (no formable span crosses its ends) and append its ids to out.
        span_ids and neg_scores: key (start - a) * stride + length -> id and -score."""
        n, stride = b - a, self.stride
        # symbol i starts at character a + i; length[i] == 0 once merged into its left neighbour
        length = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        # heap entries (-score, left, right, merged length): highest score, then leftmost, first
        heap = [(neg_scores[i * stride + 2], i, i + 1, 2) for i in range(n - 1) if i * stride + 2 in neg_scores]
        heapify(heap)

        while heap:
            _, left, right, size = heappop(heap)
            # stale: one side was merged away or grew since this pair was queued
            if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
                continue
            length[left] = size
            length[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            # a span longer than any token is no token (and its key would alias another's)
            before = prv[left]
            if before >= 0 and size + length[before] < stride:
                merged = size + length[before]
                score = neg_scores.get(before * stride + merged)
                if score is not None:
                    heappush(heap, (score, before, left, merged))
            if after >= 0 and size + length[after] < stride:
                merged = size + length[after]
                score = neg_scores.get(left * stride + merged)
                if score is not None:
                    heappush(heap, (score, left, after, merged))

        i = 0
        while i != -1:
            if length[i] > 1:
                out.append(span_ids[i * stride + length[i]])
            elif single[i] >= 0:
                out.append(single[i])
            else:
                out.extend(self.byte_token(byte) for byte in text[a + i].encode("utf-8"))
            i = nxt[i]

    def byte_token(self, byte: int) -> int:
        token_id = self.byte_ids[byte]
        if token_id is None:
            raise TokenizerError(f"the vocabulary has no byte token <0x{byte:02X}> for a character "
                                 "it cannot spell otherwise")
        return token_id
