"""Text generation: prompt in, a stream of text pieces out.

    for piece in generate(load_checkpoint("runs/x"), "def main(", max_new_tokens=100):
        print(piece, end="", flush=True)

The prompt is prefilled through a runtime Session, then each step samples a token and feeds it
back through a decode step over the same workspace and KV cache. Text comes out as soon as it
is complete: the tokens' bytes are joined and cut after the last whole UTF-8 character, so a
character split across tokens is held back until it is whole, and the text streamed is the
bytes the tokens stand for, exactly. A stop string ends generation when the generated text
contains it; it is not emitted, even when it arrives split across several pieces. An
end-of-generation token (EOS, end of turn) ends it too, unprinted.
"""

from typing import Iterable, Iterator

from ..errors import SmallMindError
from ..scope import scope
from .sampler import Sampler
from .session import sample_tokens


def generate(model, prompt: str, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | Iterable[str] | None = None) -> Iterator[str]:
    """Stream the continuation of `prompt` as text pieces; greedy when temperature == 0.

    `model` is what smallmind.load returns, a Checkpoint from load_checkpoint, anything with
    .config, .params and .tokenizer, or a (config, params, tokenizer) tuple. Bad arguments, an
    unencodable prompt and a prompt plus max_new_tokens longer than the context raise here,
    before the first piece is asked for.
    """
    from .model import as_model

    return as_model(model).generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_k=top_k, top_p=top_p, seed=seed, stop=stop)


def stream_text(session, tokenizer, prompt_ids, sampler: Sampler, max_new_tokens: int,
                stops: tuple[str, ...]) -> Iterator[str]:
    """Generate after `prompt_ids` in `session`, as text pieces (see the module docstring)."""
    detokenizer = Detokenizer(tokenizer)
    guard = StopGuard(stops)
    eog = tokenizer.eog_ids
    for token in sample_tokens(session, prompt_ids, sampler, max_new_tokens, eog):
        if token in eog:
            break
        with scope("tokenize"):
            piece = detokenizer.push(token)
        if piece:
            text = guard.push(piece)
            if text:
                yield text
            if guard.stopped:
                return
    text = guard.push(detokenizer.flush()) + guard.flush()
    if text:
        yield text


def utf8_complete(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte < 0x80:
            return n                     # ASCII: nothing open
        if byte >= 0xC0:                 # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return n if back >= need else n - back
    return n  # only continuation bytes: invalid either way, decoded as U+FFFD


class Detokenizer:
    """Turns a stream of token ids into text pieces that never end inside a character: each
    token's bytes (tokenizer.token_bytes) are appended and everything up to the last complete
    UTF-8 character is emitted."""

    def __init__(self, tokenizer):
        self.token_bytes = tokenizer.token_bytes
        self.pending = b""

    def push(self, token: int) -> str:
        data = self.token_bytes(token)
        if not self.pending and data and data[-1] < 0x80:
            return data.decode("utf-8", errors="replace")   # the usual case: nothing held, ends in ASCII
        self.pending += data
        cut = utf8_complete(self.pending)
        if cut == 0:
            return ""
        text = self.pending[:cut].decode("utf-8", errors="replace")
        self.pending = self.pending[cut:]
        return text

    def flush(self) -> str:
        """The held-back tail at the end of generation (an incomplete character as U+FFFD)."""
        text = self.pending.decode("utf-8", errors="replace")
        self.pending = b""
        return text


class StopGuard:
    """Passes text through until a stop string appears; holds back any tail that could be the
    start of one, so a stop string split across pieces is never partly emitted."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if not self.stops:
            return piece
        # A stop string can only begin inside `pending`: anything that could start one was held.
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            text = self.pending[:min(found)]
            self.pending = ""
            self.stopped = True
            return text
        keep = self._longest_stop_prefix_suffix()
        cut = len(self.pending) - keep
        text, self.pending = self.pending[:cut], self.pending[cut:]
        return text

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text

    def _longest_stop_prefix_suffix(self) -> int:
        # length of the longest tail of `pending` that is a proper prefix of some stop string
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:k]):
                    best = k
                    break
        return best


def stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise SmallMindError(f"stop strings must be non-empty text, got {s!r}")
    return stops
