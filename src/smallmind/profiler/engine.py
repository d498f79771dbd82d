"""Runs the engine for a profile: a generation (timed plain and under the recorder, interleaved),
an allocation-traced generation, and optionally some training steps.

The generation is the loop runtime/generate.py runs, over token ids: tokenize (with a
tokenizer, BOS first where it wants one), prefill the prompt, sample the first token, then decode a token at a time with
greedy sampling (and, with a tokenizer, turn each token back into text). Timing, the recorder
and tracemalloc each get their own runs so that none distorts another's figures.
"""

import gc
import resource
import statistics
import tracemalloc
from dataclasses import dataclass, field
from time import perf_counter_ns

import numpy as np

from ..errors import ContextLengthError, SmallMindError
from ..models.gpt import GPTConfig, Params
from ..runtime.generate import Detokenizer
from ..runtime.sampler import Sampler
from ..runtime.session import Session
from ..scope import scope
from .allocations import AllocRecorder
from .recorder import Recorder, recording


@dataclass
class GenerationTimes:
    """One generation's wall-clock split (ns)."""

    tokenize_ns: int = 0
    prefill_ns: int = 0
    ttft_ns: int = 0
    decode_ns: int = 0
    forward_ns: int = 0
    wall_ns: int = 0
    gc_collections: int = 0
    tokens: list = field(default_factory=list)


class _GCCounter:
    """Counts garbage collections (any generation) while installed in gc.callbacks."""

    def __init__(self):
        self.count = 0

    def __call__(self, phase, info):
        if phase == "start":
            self.count += 1

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)
        return False


class Generation:
    """One network set up to generate: session (workspace, KV cache) and sampler made once,
    reused by every run."""

    def __init__(self, net, prompt_ids: np.ndarray, new_tokens: int,
                 *, prompt_text: str | None = None, tokenizer=None):
        cfg = net.config
        if new_tokens < 2:
            raise SmallMindError("a profile generates at least 2 tokens (one from prefill, one decoded)")
        if prompt_ids.shape[0] < 1:
            raise SmallMindError("the prompt must hold at least one token")
        if prompt_ids.shape[0] + new_tokens > cfg.context_length:
            raise ContextLengthError(
                f"{prompt_ids.shape[0]} prompt tokens + {new_tokens} new tokens exceed the context "
                f"length {cfg.context_length} of this model")
        self.net, self.cfg = net, cfg
        self.prompt_ids = np.ascontiguousarray(prompt_ids, dtype=np.int32)
        self.prompt_text, self.tokenizer = prompt_text, tokenizer
        self.new_tokens = new_tokens
        self.session = Session(net, self.prompt_ids.shape[0] + new_tokens, prefill_chunk=self.prompt_ids.shape[0])
        self.sampler = Sampler(cfg.vocab_size, temperature=0.0)
        self.out_tokens = np.zeros(new_tokens, dtype=np.int64)

    @property
    def prompt_tokens(self) -> int:
        return int(self.prompt_ids.shape[0])

    def run(self) -> GenerationTimes:
        """Tokenize, prefill, then decode new_tokens - 1 more tokens greedily; times each part.

        With a tokenizer each token is also turned back into text, as runtime/generate.py does
        (its Detokenizer, under the "tokenize" scope)."""
        session, sampler, out = self.session, self.sampler, self.out_tokens
        detokenizer = Detokenizer(self.tokenizer) if self.tokenizer is not None else None
        session.reset()
        times = GenerationTimes()
        with _GCCounter() as collections:
            t0 = perf_counter_ns()
            prompt = self.prompt_ids
            if detokenizer is not None:
                with scope("tokenize"):
                    prompt = np.asarray(self.tokenizer.encode(self.prompt_text, add_bos=self.tokenizer.add_bos)
                                        [:self.prompt_tokens], np.int32)
            t1 = perf_counter_ns()
            logits = session.prefill(prompt)
            t2 = perf_counter_ns()
            with scope("sampling"):
                out[0] = sampler.sample(logits)
            if detokenizer is not None:
                with scope("tokenize"):
                    detokenizer.push(int(out[0]))
            t3 = perf_counter_ns()
            forward_ns = 0
            for i in range(1, self.new_tokens):
                f0 = perf_counter_ns()
                logits = session.step(out[i - 1])
                forward_ns += perf_counter_ns() - f0
                with scope("sampling"):
                    out[i] = sampler.sample(logits)
                if detokenizer is not None:
                    with scope("tokenize"):
                        detokenizer.push(int(out[i]))
            t4 = perf_counter_ns()
        times.tokenize_ns, times.prefill_ns = t1 - t0, t2 - t1
        times.ttft_ns, times.decode_ns, times.wall_ns = t3 - t0, t4 - t3, t4 - t0
        times.forward_ns = forward_ns
        times.gc_collections = collections.count
        times.tokens = out.tolist()
        return times


def time_generation(gen: Generation, repeats: int) -> dict:
    """Plain and profiled runs interleaved (plain, profiled, plain, ...) after one warm-up each.

    Returns the plain runs' medians (the headline speed), the recorder that saw every profiled
    run, the profiled wall times and the overhead of recording: the median over neighbouring
    (plain, profiled) pairs of profiled / plain - 1, which load drifting between pairs can't skew.
    """
    gen.run()
    with recording(Recorder()):
        gen.run()
    recorder = Recorder()
    plain, profiled = [], []
    for _ in range(repeats):
        plain.append(gen.run())
        with recording(recorder):
            profiled.append(gen.run())
    decode_steps = gen.new_tokens - 1

    def median(key):
        return statistics.median(getattr(t, key) for t in plain)

    overhead = statistics.median(p.wall_ns / q.wall_ns - 1.0 for p, q in zip(profiled, plain))
    return {
        "recorder": recorder,
        "runs": repeats,
        "profiled_wall_ns": sum(t.wall_ns for t in profiled),
        "prefill_tok_s": gen.prompt_tokens / (median("prefill_ns") / 1e9),
        "decode_tok_s": decode_steps / (median("decode_ns") / 1e9),
        "ttft_ms": median("ttft_ns") / 1e6,
        "forward_ms": median("forward_ns") / decode_steps / 1e6,
        "wall_ms": median("wall_ns") / 1e6,
        "phases_ms": {"tokenize": median("tokenize_ns") / 1e6, "prefill": median("prefill_ns") / 1e6,
                      "decode": median("decode_ns") / 1e6},
        "gc_collections": max(t.gc_collections for t in plain + profiled),
        "overhead_pct": 100.0 * overhead,
        "tokens": plain[-1].tokens,
    }


def trace_allocations(gen: Generation, top: int = 10) -> dict:
    """Bytes allocated per generated token during decode, and the top allocators by bytes.

    bytes per decoded token = (sum over decode steps of the step's peak traced memory above its
    start + the net growth of traced memory over the decode) / decode steps. Transient buffers
    (made and freed inside a step) count through the peak, kept ones through the growth.
    Top allocators: (1) by scope, the same measure per scope call (a second traced decode under
    an AllocRecorder); (2) by file:line, traced memory a fresh session still holds that was not
    held before it (workspace, KV cache, ...), tracemalloc's and the profiler's frames left out.
    """
    gen.run()  # warm: every lazily made object exists before tracing starts
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        fresh = Generation(gen.net, gen.prompt_ids, gen.new_tokens,
                           prompt_text=gen.prompt_text, tokenizer=gen.tokenizer)
        session, sampler = fresh.session, fresh.sampler
        token = sampler.sample(session.prefill(fresh.prompt_ids))
        steps = gen.new_tokens - 1
        start_current = tracemalloc.get_traced_memory()[0]
        transient = 0
        for _ in range(steps):
            step_start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            token = sampler.sample(session.step(token))
            transient += tracemalloc.get_traced_memory()[1] - step_start
        growth = tracemalloc.get_traced_memory()[0] - start_current
        after = tracemalloc.take_snapshot()
        by_scope = AllocRecorder()
        with recording(by_scope):
            fresh.run()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    keep = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    stats = after.filter_traces(keep).compare_to(before.filter_traces(keep), "lineno")
    allocators = [
        {"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "bytes": s.size_diff,
         "blocks": s.count_diff}
        for s in sorted(stats, key=lambda s: -s.size_diff) if s.size_diff > 0
    ][:top]
    scopes = [{"name": n.path, "calls": n.calls, "bytes": n.bytes, "bytes_per_call": n.bytes / n.calls}
              for n in by_scope.nodes() if not n.children]
    scopes.sort(key=lambda r: -r["bytes"])
    return {
        "alloc_bytes_per_token": (transient + max(growth, 0)) / steps,
        "transient_bytes": transient,
        "growth_bytes": growth,
        "top_allocators": allocators,
        "top_scopes": scopes[:top],
    }


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark (Linux reports KiB, macOS bytes)."""
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def profile_training(cfg: GPTConfig, params: Params, *, batch: int, seq: int, steps: int,
                     lr: float = 1e-3, seed: int = 0) -> dict:
    """Training steps as runtime/trainer.py takes them (zero grads, forward, backward, clip, AdamW),
    all under one recorder, after one unrecorded warm-up step. The model learns one fixed random
    batch, so the losses fall and the loss curve shows the steps did train."""
    from ..models import gpt_train
    from ..runtime.optim import AdamW, clip_grad_norm

    if seq > cfg.context_length:
        raise ContextLengthError(f"a training sequence of {seq} tokens exceeds the context length "
                                 f"{cfg.context_length}")
    weights = Params(cfg, params.flat.copy())  # the caller's model stays as it was
    grads = weights.zeros_like()
    ws = gpt_train.TrainWorkspace(cfg, batch, seq)
    optimizer = AdamW(weights)
    data = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq + 1), dtype=np.int32)
    x, y = np.ascontiguousarray(data[:, :-1]), np.ascontiguousarray(data[:, 1:])

    def step() -> float:
        with scope("step"):
            grads.flat.fill(0.0)
            loss = gpt_train.forward(weights, ws, x, y)
            gpt_train.backward(weights, grads, ws)
            clip_grad_norm(grads.flat, 1.0)
            optimizer.step(grads, lr)
        return loss

    step()
    recorder = Recorder()
    losses = []
    with recording(recorder):
        t0 = perf_counter_ns()
        for _ in range(steps):
            losses.append(float(step()))
        wall_ns = perf_counter_ns() - t0
    return {"recorder": recorder, "wall_ns": wall_ns, "losses": losses, "batch": batch, "seq": seq,
            "steps": steps, "tok_s": batch * seq * steps / (wall_ns / 1e9)}
