"""One decode step for several sessions at once (the server's continuous batch).

A network with `forward_batch` (models/__init__.py) runs the B new tokens through one forward:
every linear layer reads its weights once for all B rows, which is what makes a batch of 8
nearly as fast per step as one sequence on a CPU, where decode is bound by reading weights. A
network without it is stepped one session at a time, and its logits are copied into a buffer
of the same (B,V) shape, so callers see one interface.
"""

import numpy as np

from ..errors import SmallMindError
from ..scope import scope


class BatchDecoder:
    """Steps up to `max_rows` sessions of `net` by one token each."""

    def __init__(self, net, max_rows: int):
        if max_rows < 1 or max_rows > net.config.context_length:
            raise SmallMindError(f"a decode batch holds 1..{net.config.context_length} sequences, not {max_rows}")
        self.net = net
        self.max_rows = max_rows
        self.batched = callable(getattr(net, "forward_batch", None))
        self.ws = net.workspace(max_rows) if self.batched else None
        self.logits = None if self.batched else np.zeros((max_rows, net.config.vocab_size), np.float32)
        tokens = np.zeros(max_rows, np.int32)
        positions = np.zeros(max_rows, np.int64)
        # views of the first B entries, made once (a slice per step would be a new object each time)
        self.tokens = (None,) + tuple(tokens[:n] for n in range(1, max_rows + 1))
        self.positions = (None,) + tuple(positions[:n] for n in range(1, max_rows + 1))

    def step(self, sessions, tokens) -> np.ndarray:
        # sessions: B Sessions, tokens: B ints (each session's next token) -> (B,V) logits (a view)
        B = len(sessions)
        if not 1 <= B <= self.max_rows or len(tokens) != B:
            raise SmallMindError(f"a decode step takes 1..{self.max_rows} sessions and a token each")
        if not self.batched:
            for b, (session, token) in enumerate(zip(sessions, tokens)):
                self.logits[b] = session.step(token)
            return self.logits[:B]
        tok, pos = self.tokens[B], self.positions[B]
        for b, (session, token) in enumerate(zip(sessions, tokens)):
            if session.length >= session.capacity:
                raise SmallMindError(f"the context of {session.capacity} positions is full")
            tok[b] = token
            pos[b] = session.length
            session.ids[session.length] = token
        with scope("batch"):
            return self.net.forward_batch(self.ws, [s.kv for s in sessions], tok, pos)
