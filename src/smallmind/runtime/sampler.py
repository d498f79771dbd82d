"""Choosing the next token from the logits: greedy, temperature, top-k, top-p (nucleus).

The filters apply in the usual order (temperature, then top-k, then top-p over what is left),
and the draw is one uniform number from a seeded numpy Generator mapped through the
cumulative distribution in token order, so a seed fixes the whole generated text. Plain
temperature sampling is one native kernel over the vocabulary (kernels.sample_softmax: a
262k vocabulary costs a fraction of a millisecond, not the milliseconds of NumPy's float64
exp and cumsum); top-k and top-p sort only the candidates that one comparison of the whole
vocabulary with a floor leaves (see TOP_K_SPANS), never the vocabulary itself. Greedy and plain
temperature sampling allocate nothing per token.
"""

import numbers

import numpy as np

from .. import kernels
from ..errors import SmallMindError

# Below this temperature sampling is greedy: dividing the logits by a temperature near 0
# overflows to infinity (1e-300 does), and the softmax of the rest is one-hot anyway.
GREEDY_BELOW = 1e-6
# Candidates are found by comparing the whole vocabulary once with a floor (a vectorized pass,
# a fraction of a millisecond over 262k ids) rather than by selecting among all of it
# (numpy's argpartition of 262k values takes milliseconds): top-k keeps what lies within
# TOP_K_SPANS[i] of the largest logit, the next span while that is fewer than k; top-p keeps the
# probabilities within NUCLEUS_SPANS[i] powers of two of the largest, the next span while the
# cut does not fall inside them. The last, infinite, span is the whole vocabulary.
TOP_K_SPANS = (8.0, 32.0, float("inf"))
NUCLEUS_SPANS = (10.0, 30.0, float("inf"))


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def largest(values: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest of `values` (V,), 1 <= k <= V, in id order; of values tied at
    the k-th place the lower ids, so that exactly k are kept. A NaN or an infinity among them
    is refused with a one-line SmallMindError."""
    top = float(values.max())
    if not np.isfinite(top):
        raise SmallMindError("the logits hold a NaN or an infinity: nothing to sample from")
    for span in TOP_K_SPANS:
        candidates = np.flatnonzero(values >= top - span)   # all values from the k-th largest on, once k are in
        if candidates.shape[0] >= k:
            break
    if candidates.shape[0] < k:   # a NaN compares false with everything: the last span left it out
        raise SmallMindError("the logits hold a NaN or an infinity: nothing to sample from")
    kept = values[candidates]
    kth = np.partition(kept, kept.shape[0] - k)[kept.shape[0] - k]
    above = candidates[kept > kth]
    return np.sort(np.concatenate((above, candidates[kept == kth][:k - above.shape[0]])))


class Sampler:
    """Draws token ids from (V,) logits. A temperature of 0 (or below GREEDY_BELOW) is greedy (argmax)."""

    def __init__(self, vocab_size: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None):
        if not (_is_real(temperature) and temperature >= 0.0 and np.isfinite(temperature)):
            raise SmallMindError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and not (_is_int(top_k) and top_k >= 1):
            raise SmallMindError(f"top_k must be an integer of at least 1, got {top_k!r}")
        if top_p is not None and not (_is_real(top_p) and 0.0 < top_p <= 1.0):
            raise SmallMindError(f"top_p must be a number in (0, 1], got {top_p!r}")
        if seed is not None and not (_is_int(seed) and seed >= 0):
            raise SmallMindError(f"seed must be a non-negative integer, got {seed!r}")
        self.temperature = 0.0 if temperature < GREEDY_BELOW else float(temperature)
        self.top_k = None if top_k is None or top_k >= vocab_size else int(top_k)
        self.top_p = None if top_p is None or top_p >= 1.0 else float(top_p)
        self.rng = np.random.default_rng(seed)
        self.scale = 0.0 if self.temperature == 0.0 else 1.0 / self.temperature
        self.probs = np.empty(vocab_size, dtype=np.float32)   # the kernels' (V,) output, made once

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sample(self, logits: np.ndarray) -> int:
        # logits (V,) float32 -> one token id
        if self.temperature == 0.0:
            return int(logits.argmax())
        u = self.rng.random()
        if self.top_k is None and self.top_p is None:
            return kernels.sample_softmax(logits, self.scale, u, self.probs)
        if self.top_k is None:
            kept, weights = self._nucleus(logits)
        else:
            kept = largest(logits, self.top_k)
            x = logits[kept].astype(np.float64) * self.scale
            weights = np.exp(x - x.max())
            if self.top_p is not None:
                keep = np.sort(self._top_mass(weights, np.argsort(-weights, kind="stable"), weights.sum()))
                kept, weights = kept[keep], weights[keep]
        running = np.cumsum(weights)
        # side="right" never lands on a zero-probability token: its running sum equals its predecessor's
        index = int(np.searchsorted(running, u * running[-1], side="right"))
        return int(kept[min(index, kept.shape[0] - 1)])

    def _nucleus(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # logits (V,) -> the ids of the smallest top set holding top_p of the mass (in id order)
        # and their weights (the probabilities times one constant). Candidates are every id whose probability reaches a floor, in
        # id order, so that sorted by probability they are exactly the head of the stable sort
        # of the whole vocabulary; the floor falls until the cut lies inside them.
        probs = self.probs
        # exp(scale * logits - max) into probs, on the thread pool (sample_softmax's first two
        # passes; the token it draws at u = 0 is not used): the nucleus needs only the ratios
        kernels.sample_softmax(logits, self.scale, 0.0, probs)
        total = float(probs.sum(dtype=np.float64))
        top = float(probs.max())
        for span in NUCLEUS_SPANS:
            candidates = np.flatnonzero(probs >= top * 2.0 ** -span)   # the last span: a floor of 0
            p = probs[candidates].astype(np.float64)
            keep = self._top_mass(p, np.argsort(-p, kind="stable"), total)
            if keep.shape[0] < candidates.shape[0] or span == NUCLEUS_SPANS[-1]:
                keep.sort()
                return candidates[keep], p[keep]

    def _top_mass(self, p: np.ndarray, order: np.ndarray, total: float) -> np.ndarray:
        # p (n,) probabilities, order (n,) their ranking -> the ranked positions kept: a token
        # stays while the mass ranked above it is still short of top_p of `total` (the first always)
        ranked = p[order]
        mass_before = np.cumsum(ranked) - ranked
        return order[:max(1, int(np.count_nonzero(mass_before < self.top_p * total)))]
