"""Text generation: prompt in, a stream of text pieces out.

    for piece in generate(load_checkpoint("runs/x"), "def main(", max_new_tokens=100):
        print(piece, end="", flush=True)

The prompt is prefilled in one forward, then each step samples a token and feeds it back
through a decode forward over the same workspace and KV cache. Text comes out as soon as it
is decodable: a multi-byte character split across tokens is held back until complete. A stop
string ends generation when the generated text contains it; it is not emitted, even when it
arrives split across several pieces.

An empty prompt is refused (SmallMindError): this GPT has no begin-of-text token to start from.
"""

from typing import Iterable, Iterator

import numpy as np

from ..errors import ContextLengthError, SmallMindError
from ..models.gpt import Params, Workspace, forward
from ..scope import scope
from .sampler import Sampler

REPLACEMENT = "\ufffd"  # what a decoder makes of an incomplete UTF-8 sequence


def generate(checkpoint_or_model, prompt: str, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | Iterable[str] | None = None) -> Iterator[str]:
    """Stream the continuation of `prompt` as text pieces; greedy when temperature == 0.

    `checkpoint_or_model` is a Checkpoint from smallmind.formats.checkpoint.load_checkpoint or
    anything with .config, .params and .tokenizer, or a (config, params, tokenizer) tuple.
    Bad arguments, an unencodable prompt and a prompt plus max_new_tokens longer than the
    context raise here, before the first piece is asked for.
    """
    params, tokenizer = _unpack(checkpoint_or_model)
    cfg = params.cfg
    if not isinstance(prompt, str):
        raise SmallMindError(f"the prompt must be text (a str), got {type(prompt).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or max_new_tokens < 1:
        raise SmallMindError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    stops = _stop_strings(stop)
    sampler = Sampler(cfg.vocab_size, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    with scope("tokenize"):
        prompt_ids = np.asarray(tokenizer.encode(prompt), dtype=np.int32)
    if prompt_ids.size == 0:
        raise SmallMindError("the prompt is empty: give at least one character to continue from")
    total = prompt_ids.size + int(max_new_tokens)
    if total > cfg.context_length:
        raise ContextLengthError(
            f"the prompt is {prompt_ids.size} tokens and {max_new_tokens} new tokens were asked for: "
            f"{total} exceeds the model's context length of {cfg.context_length}")
    return _stream(params, tokenizer, prompt_ids, int(max_new_tokens), sampler, stops)


def _stream(params, tokenizer, prompt_ids, max_new_tokens, sampler, stops) -> Iterator[str]:
    ws = Workspace(params.cfg, prompt_ids.size)
    detokenizer = Detokenizer(tokenizer)
    guard = StopGuard(stops)
    logits = forward(params, ws, prompt_ids, 0)
    pos = prompt_ids.size
    for step in range(max_new_tokens):
        with scope("sampling"):
            token = sampler.sample(logits)
        with scope("tokenize"):
            piece = detokenizer.push(token)
        if piece:
            text = guard.push(piece)
            if text:
                yield text
            if guard.stopped:
                return
        if step + 1 < max_new_tokens:  # the last token needs no forward
            ws.token[0] = token
            logits = forward(params, ws, ws.token, pos)
            pos += 1
    text = guard.push(detokenizer.flush()) + guard.flush()
    if text:
        yield text


class Detokenizer:
    """Turns a stream of token ids into text pieces that never end inside a character.

    Each push decodes a short window of the latest ids (decoding in context, as tokenizers
    with merged spaces or byte fallback need) and emits what the window adds to the text
    already emitted, unless it ends in U+FFFD: then the last token ends mid-character and
    the text waits for the next one.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: ids before it are emitted and no longer needed as context
        self.read = 0    # ids before it are emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        emitted = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if len(text) <= len(emitted) or text.endswith(REPLACEMENT):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(emitted):]

    def flush(self) -> str:
        """The held-back tail at the end of generation, as the tokenizer decodes it."""
        emitted = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(emitted):]


class StopGuard:
    """Passes text through until a stop string appears; holds back any tail that could be the
    start of one, so a stop string split across pieces is never partly emitted."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""
        self.stopped = False

    def push(self, piece: str) -> str:
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


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise SmallMindError(f"stop strings must be non-empty text, got {s!r}")
    return stops


def _unpack(model) -> tuple[Params, object]:
    if isinstance(model, tuple) and len(model) == 3:
        config, params, tokenizer = model
    else:
        try:
            config, params, tokenizer = model.config, model.params, model.tokenizer
        except AttributeError:
            raise SmallMindError(
                "generate needs a checkpoint or a (config, params, tokenizer) model, "
                f"not {type(model).__name__}") from None
    if not isinstance(params, Params):
        raise SmallMindError(f"the model's params must be a smallmind Params, not {type(params).__name__}")
    if config != params.cfg:
        raise SmallMindError("the model's config does not match its params")
    if tokenizer.vocab_size > params.cfg.vocab_size:
        raise SmallMindError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {params.cfg.vocab_size}")
    return params, tokenizer
