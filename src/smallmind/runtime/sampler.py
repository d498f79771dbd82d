"""Choosing the next token from the logits: greedy, temperature, top-k, top-p (nucleus).

The filters apply in the usual order (temperature, then top-k, then top-p over what is left),
and the draw is one uniform number from a seeded numpy Generator mapped through the
cumulative distribution, so a seed fixes the whole generated text. Working buffers are made
once per sampler; greedy decoding allocates nothing per token.
"""

import numbers

import numpy as np

from ..errors import SmallMindError

# Below this temperature sampling is greedy: dividing the logits by a temperature near 0
# overflows to infinity (1e-300 does), and the softmax of the rest is one-hot anyway.
GREEDY_BELOW = 1e-6


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


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
        self.probs = np.empty(vocab_size, dtype=np.float64)   # float64: the cdf of a big vocab stays exact
        self.cdf = np.empty(vocab_size, dtype=np.float64)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sample(self, logits: np.ndarray) -> int:
        # logits (V,) float32 -> one token id
        if self.temperature == 0.0:
            return int(logits.argmax())
        probs, cdf = self.probs, self.cdf
        np.multiply(logits, 1.0 / self.temperature, out=probs)
        if self.top_k is not None:
            # exactly k survive, even when values tie at the k-th place
            probs[np.argpartition(probs, -self.top_k)[:-self.top_k]] = -np.inf
        probs -= probs.max()
        np.exp(probs, out=probs)
        if self.top_p is not None:
            self._nucleus(probs)
        np.cumsum(probs, out=cdf)
        # side="right" never lands on a zero-probability token: its cdf equals its predecessor's
        index = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return min(index, cdf.shape[0] - 1)

    def _nucleus(self, probs: np.ndarray) -> None:
        # probs (V,) unnormalised, zeroed in place outside the smallest top set holding top_p of the mass
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        mass_before = np.cumsum(sorted_probs) - sorted_probs
        # keep a token while the mass ranked above it is still short of top_p (the first always stays)
        cut = sorted_probs.shape[0] - int(np.count_nonzero(mass_before >= self.top_p * sorted_probs.sum()))
        probs[order[cut:]] = 0.0
