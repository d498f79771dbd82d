"""Choosing the next token from the logits: greedy, temperature, top-k, top-p (nucleus).

The filters apply in the usual order (temperature, then top-k, then top-p over what is left),
and the draw is one uniform number from a seeded numpy Generator mapped through the
cumulative distribution in token order, so a seed fixes the whole generated text. Plain
temperature sampling is one native kernel over the vocabulary (kernels.sample_softmax: a
262k vocabulary costs a fraction of a millisecond, not the milliseconds of NumPy's float64
exp and cumsum); top-k and top-p work on a partial selection of the candidates, never a sort
of the whole vocabulary. Greedy and plain temperature sampling allocate nothing per token.
"""

import numbers

import numpy as np

from .. import kernels
from ..errors import SmallMindError

# Below this temperature sampling is greedy: dividing the logits by a temperature near 0
# overflows to infinity (1e-300 does), and the softmax of the rest is one-hot anyway.
GREEDY_BELOW = 1e-6
# top-p alone first looks at this many of the most likely tokens, then 8 times more while
# they do not yet hold top_p of the mass
NUCLEUS_FIRST = 64


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
        self.scale = 0.0 if self.temperature == 0.0 else 1.0 / self.temperature
        self.probs = np.empty(vocab_size, dtype=np.float32)   # the kernels' (V,) output, made once
        # top-p over the whole vocabulary needs the scaled logits as a (1,V) softmax input
        self.scaled = np.empty((1, vocab_size), dtype=np.float32) if self.top_p is not None else None

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
            # exactly k survive, even when values tie at the k-th place
            kept = np.sort(np.argpartition(logits, -self.top_k)[-self.top_k:])
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
        # and their probabilities. Candidates are the n most likely with every tie of the n-th,
        # in id order, so that sorted by probability they are exactly the head of the stable
        # sort of the whole vocabulary; n grows until the cut falls inside them.
        probs, V = self.probs, self.probs.shape[0]
        np.multiply(logits, self.scale, out=self.scaled[0])
        kernels.softmax(self.scaled, probs.reshape(1, V))
        total = float(probs.sum(dtype=np.float64))
        if not 0.0 < total < np.inf:
            raise SmallMindError("the logits hold a NaN or an infinity: nothing to sample from")
        n = min(NUCLEUS_FIRST, V)
        while True:
            floor = probs[np.argpartition(probs, V - n)[V - n:]].min()
            candidates = np.flatnonzero(probs >= floor)
            p = probs[candidates].astype(np.float64)
            keep = self._top_mass(p, np.argsort(-p, kind="stable"), total)
            if keep.shape[0] < candidates.shape[0] or candidates.shape[0] == V:
                keep.sort()
                return candidates[keep], p[keep]
            n = min(8 * n, V)

    def _top_mass(self, p: np.ndarray, order: np.ndarray, total: float) -> np.ndarray:
        # p (n,) probabilities, order (n,) their ranking -> the ranked positions kept: a token
        # stays while the mass ranked above it is still short of top_p of `total` (the first always)
        ranked = p[order]
        mass_before = np.cumsum(ranked) - ranked
        return order[:max(1, int(np.count_nonzero(mass_before < self.top_p * total)))]
