"""Perplexity over a text in windows of the context, as llama.cpp's perplexity tool reports it.

    result = perplexity(model, text, ctx=512)      # result.perplexity, result.tokens, ...

llama.cpp's tools/perplexity/perplexity.cpp (its default path, no --ppl-stride) does this:
  - the whole text is tokenized once, with BOS first where the model adds one;
  - it is cut into n_chunk = len(tokens) // ctx windows of ctx tokens, back to back (the tail
    that does not fill a window is dropped); at least 2 * ctx tokens are required;
  - each window is evaluated from an empty cache, its first token replaced by BOS where the
    model adds one;
  - only the second half is scored: the logits at positions ctx/2 .. ctx-2 predict the tokens
    after them, so every window scores ctx - 1 - ctx/2 tokens and the model always has at
    least half a window of context;
  - perplexity = exp(mean negative log-likelihood over all scored tokens), with the error
    estimate it prints beside it (the standard error of the mean NLL, scaled by perplexity).

The first half of a window is prefilled without logits and the scored half is run in slices
of at most SCORE_SLICE positions, so that a large vocabulary's (ctx, V) logits never exist
at once.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import SmallMindError
from .session import Session

SCORE_SLICE = 64


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    uncertainty: float      # llama.cpp's "+/-"
    tokens: int             # tokens scored
    chunks: int             # windows evaluated
    ctx: int
    text_tokens: int        # tokens of the whole text

    def to_dict(self) -> dict:
        return asdict(self)


def text_ids(model, text: str) -> np.ndarray:
    # text -> (N,) int32: the ids llama.cpp's perplexity tool evaluates (BOS first if the model adds one)
    return np.asarray(model.tokenize(text, add_bos=model.tokenizer.add_bos), np.int32)


def chunk_count(n_tokens: int, ctx: int, chunks: int | None = None) -> int:
    """How many windows of ctx tokens a text of n_tokens gives (at most `chunks`)."""
    if isinstance(ctx, bool) or not isinstance(ctx, (int, np.integer)) or ctx < 4:
        raise SmallMindError(f"the perplexity context must be at least 4 tokens, got {ctx!r}")
    if n_tokens < 2 * ctx:
        raise SmallMindError(f"the text has {n_tokens} tokens; perplexity in windows of {ctx} needs at "
                             f"least {2 * ctx} (give more text or a smaller --ctx)")
    n = n_tokens // ctx
    return n if chunks is None else min(n, chunks)


def window_nll(session: Session, window: np.ndarray) -> np.ndarray:
    # window (ctx,) int32 -> (ctx - 1 - ctx/2,) float64: -log p of each token of the scored half
    ctx = window.shape[0]
    first = ctx // 2
    session.reset()
    session.prefill(window[:first])
    out = np.empty(ctx - 1 - first, np.float64)
    for a in range(first, ctx - 1, SCORE_SLICE):
        b = min(a + SCORE_SLICE, ctx - 1)
        logits = session.all_logits(window[a:b]).astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        targets = window[a + 1:b + 1]
        out[a - first:b - first] = log_z - logits[np.arange(b - a), targets]
    return out


def perplexity(model, text: str, ctx: int, *, chunks: int | None = None, progress=None) -> PerplexityResult:
    """llama.cpp's perplexity of `model` (a runtime Model) on `text` in windows of ctx tokens.
    `progress(done, total)` is called after each window."""
    if ctx > model.context_length:
        raise SmallMindError(f"--ctx {ctx} exceeds the model's context of {model.context_length}")
    ids = text_ids(model, text)
    n_chunk = chunk_count(ids.shape[0], ctx, chunks)
    session = Session(model.net, ctx, prefill_chunk=min(ctx, SCORE_SLICE))
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    window = np.empty(ctx, np.int32)
    nll = nll2 = 0.0
    count = 0
    for i in range(n_chunk):
        window[:] = ids[i * ctx:(i + 1) * ctx]
        if bos is not None:
            window[0] = bos
        losses = window_nll(session, window)
        nll += float(losses.sum())
        nll2 += float(np.square(losses).sum())
        count += losses.shape[0]
        if progress is not None:
            progress(i + 1, n_chunk)
    mean = nll / count
    ppl = math.exp(mean)
    var = nll2 / count - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return PerplexityResult(ppl, err, count, n_chunk, ctx, int(ids.shape[0]))
