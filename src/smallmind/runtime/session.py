"""A session: one sequence running through a network, with the KV cache the runtime owns.

Every face drives a network through a Session (generate, chat, bench, the profiler; the server
holds one per sequence), so the decode loop exists once:

    s = Session(net, ctx=2048)
    logits = s.prefill(prompt_ids)      # (V,) logits after the last prompt token
    s.prefill(more_ids, logits=False)   # positions only: no final norm, no LM head
    logits = s.step(token)              # one decode step: (V,) logits after `token`

The network (models/__init__.py has its contract) owns nothing between calls: the KV cache, its
length and the ids it holds live here, and a workspace made once serves every forward, so a
decode step allocates nothing. Long prompts are prefilled in chunks of the workspace's size.
"""

from typing import Iterator

import numpy as np

from ..errors import ContextLengthError, SmallMindError
from ..scope import scope
from .kv_cache import KVCache, kv_dtype

DEFAULT_PREFILL_CHUNK = 512
# all_logits runs forwards of at most this many rows: a (rows, vocab) block of a 262k vocabulary
# is 67 MB at 64 rows
ALL_LOGITS_CHUNK = 64


class Session:
    """One sequence of at most `ctx` positions through `net`."""

    def __init__(self, net, ctx: int, *, prefill_chunk: int = DEFAULT_PREFILL_CHUNK, kv=None, ws=None):
        """kv and ws, when given, are a cache of `ctx` positions and a workspace to use instead
        of making them: the server's engine gives each sequence a cache from its pool, and one
        workspace serves all its sequences (one thread runs them)."""
        limit = net.config.context_length
        if isinstance(ctx, bool) or not isinstance(ctx, (int, np.integer)) or not 1 <= ctx <= limit:
            raise ContextLengthError(f"the context must be 1..{limit} positions (the model's), got {ctx!r}")
        n_layers, n_kv_heads, head_dim = net.kv_spec
        self.net = net
        self.kv = KVCache(n_layers, n_kv_heads, int(ctx), head_dim, dtype=kv_dtype(net)) if kv is None else kv
        if self.kv.capacity != ctx:
            raise ContextLengthError(f"the KV cache holds {self.kv.capacity} positions, not the context's {ctx}")
        self.ws = net.workspace(max(1, min(prefill_chunk, int(ctx)))) if ws is None else ws
        self.ids = np.zeros(int(ctx), np.int32)   # the ids at positions 0..length-1
        self.token = np.zeros(1, np.int32)         # a decode step's input (no array per step)

    @property
    def capacity(self) -> int:
        return self.kv.capacity

    @property
    def length(self) -> int:
        """Positions held in the KV cache."""
        return self.kv.length

    @property
    def room(self) -> int:
        return self.kv.capacity - self.kv.length

    def reset(self) -> None:
        """Forget the sequence (the buffers stay for the next one)."""
        self.kv.length = 0

    def rewind(self, length: int) -> None:
        """Keep the first `length` positions and forget the rest."""
        if not 0 <= length <= self.kv.length:
            raise SmallMindError(f"cannot rewind to {length}: the session holds {self.kv.length} positions")
        self.kv.length = length

    def shared_prefix(self, ids) -> int:
        """How many leading positions held equal `ids`, leaving at least one id of `ids` to
        prefill (its logits are needed)."""
        ids = np.asarray(ids)
        n = min(self.kv.length, ids.shape[0] - 1)
        return common_prefix(self.ids[:n], ids[:n]) if n > 0 else 0

    def reuse_prefix(self, ids) -> int:
        """Rewind to the longest prefix of `ids` already held, leaving at least one id of `ids`
        to prefill (its logits are needed); returns how many positions were kept."""
        keep = self.shared_prefix(ids)
        self.kv.length = keep
        return keep

    def prefill(self, ids, logits: bool = True) -> np.ndarray | None:
        # ids (T,) int appended after the cached positions -> (V,) logits of the last one (a view),
        # or None without logits; only the last chunk's forward computes them
        ids = self._checked(ids)
        start, chunk, T = self.kv.length, self.ws.max_tokens, ids.shape[0]
        out = None
        for a in range(0, T, chunk):
            out = self.net.forward(self.ws, self.kv, ids[a:a + chunk], start + a, logits=logits and a + chunk >= T)
        self.ids[start:start + T] = ids
        return out

    def step(self, token: int) -> np.ndarray:
        # one decode step: token at the next position -> (V,) logits (a view, overwritten next step)
        pos = self.kv.length
        if pos >= self.kv.capacity:
            raise ContextLengthError(f"the context of {self.kv.capacity} positions is full")
        self.token[0] = token
        self.ids[pos] = token
        return self.net.forward(self.ws, self.kv, self.token, pos)

    def all_logits(self, ids) -> np.ndarray:
        # ids (T,) appended after the cached positions -> (T,V) float32 logits at every one (a new array)
        ids = self._checked(ids)
        start, chunk = self.kv.length, min(self.ws.max_tokens, ALL_LOGITS_CHUNK)
        out = np.empty((ids.shape[0], self.net.config.vocab_size), np.float32)
        for a in range(0, ids.shape[0], chunk):
            part = ids[a:a + chunk]
            out[a:a + part.shape[0]] = self.net.forward(self.ws, self.kv, part, start + a, all_logits=True)
        self.ids[start:start + ids.shape[0]] = ids
        return out

    def _checked(self, ids) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if ids.ndim != 1 or ids.shape[0] == 0:
            raise SmallMindError("a prefill needs a non-empty 1-D sequence of token ids")
        vocab = self.net.config.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise SmallMindError(f"token id {bad} is outside the model's vocabulary of {vocab}")
        if ids.shape[0] > self.room:
            raise ContextLengthError(
                f"{ids.shape[0]} more tokens do not fit: {self.kv.length} of the context's "
                f"{self.kv.capacity} positions are in use")
        return ids


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    # a, b (n,) ids -> how many leading positions agree
    differ = np.flatnonzero(a != b)
    return int(differ[0]) if differ.size else a.shape[0]


def sample_tokens(session: Session, prompt_ids, sampler, max_new_tokens: int,
                  stop_ids=frozenset()) -> Iterator[int]:
    """Prefill `prompt_ids` (after whatever the session holds), then yield up to max_new_tokens
    sampled ids; an id in `stop_ids` ends the run (it is yielded, and not fed back)."""
    logits = session.prefill(prompt_ids)
    for step in range(max_new_tokens):
        with scope("sampling"):
            token = sampler.sample(logits)
        yield token
        if token in stop_ids or step + 1 == max_new_tokens:
            return
        logits = session.step(token)
