"""Inference benchmarks behind `smallmind bench decode|prefill`: on a model file (`--model`: a
GGUF file or a checkpoint) or on random weights of a preset (speed does not depend on the values).
The prompt is random token ids.

Figures:
  tok_s, ms_per_token   median over `repeats` measured runs after one warm-up run
  alloc_bytes_per_token Python-heap bytes (tracemalloc: NumPy buffers and Python objects)
                        per decoded token: for every step, reset the peak, run the step and
                        take (peak - traced bytes before the step), i.e. the most the step had
                        allocated at once, temporaries and whatever it keeps alike; averaged
                        over the steps. A step is a decode forward plus greedy sampling, as in
                        generation. alloc_net_growth_bytes is what the whole loop left behind.
  gc_collections        garbage-collector runs (any generation, counted with gc.callbacks)
                        during one decode of `new_tokens` tokens
  matmul_gflops         (float32 models) the model's largest linear (by weight size) timed alone
                        on a prefill-sized batch through kernels.linear
"""

import gc
import statistics
import time
import tracemalloc

import numpy as np

from .. import kernels
from ..errors import ContextLengthError, SmallMindError
from ..models.gpt import GPT, init_params
from ..models.gpt import preset as get_preset
from ..runtime.sampler import Sampler
from ..runtime.session import Session


def bench_decode(preset: str | None = "seed", threads: int | None = None, repeats: int = 3,
                 prompt_tokens: int = 32, new_tokens: int = 50, model=None) -> dict:
    """Greedy decoding of `new_tokens` after a `prompt_tokens` prefill; time counts decode steps only.
    `model` (a smallmind.load Model) replaces the preset's random weights."""
    _check_counts(repeats=repeats, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    net, name = _network(preset, model, prompt_tokens + new_tokens)
    used_threads = _threads(threads)
    prompt = _prompt(net.config, prompt_tokens)
    # one position more than the run: the allocation trace warms up with an extra step
    session = Session(net, min(prompt_tokens + new_tokens + 1, net.config.context_length), prefill_chunk=prompt_tokens)
    sampler = Sampler(net.config.vocab_size, temperature=0.0)
    times = [decode_seconds(session, sampler, prompt, new_tokens) for _ in range(repeats + 1)][1:]
    seconds = statistics.median(times)
    alloc = decode_allocations(session, sampler, prompt, new_tokens)
    return {
        "model": name,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "tok_s": round(new_tokens / seconds, 1),
        "ms_per_token": round(1e3 * seconds / new_tokens, 4),
        "alloc_bytes_per_token": round(alloc["bytes_per_token"], 1),
        "alloc_net_growth_bytes": alloc["net_growth"],
        "gc_collections": decode_gc_collections(session, sampler, prompt, new_tokens),
        "matmul_gflops": _matmul_gflops(net, min(128, net.config.context_length)),
        "kernel_path": kernels.path,
        "threads": used_threads,
    }


def bench_prefill(preset: str | None = "seed", threads: int | None = None, repeats: int = 3,
                  tokens: int = 128, model=None) -> dict:
    """One forward over a `tokens`-long prompt into an empty KV cache (logits of the last position)."""
    _check_counts(repeats=repeats, tokens=tokens)
    net, name = _network(preset, model, tokens)
    used_threads = _threads(threads)
    prompt = _prompt(net.config, tokens)
    session = Session(net, tokens, prefill_chunk=tokens)
    times = []
    for _ in range(repeats + 1):
        session.reset()
        t0 = time.perf_counter()
        session.prefill(prompt)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[1:])
    return {
        "model": name,
        "tokens": tokens,
        "tok_s": round(tokens / seconds, 1),
        "ms_per_token": round(1e3 * seconds / tokens, 4),
        "ms_total": round(1e3 * seconds, 3),
        "matmul_gflops": _matmul_gflops(net, tokens),
        "kernel_path": kernels.path,
        "threads": used_threads,
    }


def decode_seconds(session, sampler, prompt, new_tokens) -> float:
    """Wall time of `new_tokens` decode steps (prefill excluded) with greedy sampling."""
    logits = _prefill(session, prompt)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        logits = session.step(sampler.sample(logits))
    return time.perf_counter() - t0


def decode_allocations(session, sampler, prompt, new_tokens) -> dict:
    """Bytes allocated per decoded token (see the module docstring for the definition)."""
    logits = _prefill(session, prompt)
    # one step before tracing: first calls may fill caches that later steps reuse
    logits = session.step(sampler.sample(logits))
    steps = min(new_tokens, session.room)
    step_peaks = 0
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(steps):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            logits = session.step(sampler.sample(logits))
            step_peaks += tracemalloc.get_traced_memory()[1] - before
        net_growth = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    return {"bytes_per_token": step_peaks / steps, "net_growth": net_growth, "steps": steps}


def decode_gc_collections(session, sampler, prompt, new_tokens) -> int:
    """Garbage-collector runs during `new_tokens` decode steps."""
    runs = []

    def count(phase, info):
        if phase == "start":
            runs.append(info["generation"])

    logits = _prefill(session, prompt)
    gc.collect()  # start from an empty young generation, as a long-running session would after a while
    gc.callbacks.append(count)
    try:
        for _ in range(new_tokens):
            logits = session.step(sampler.sample(logits))
    finally:
        gc.callbacks.remove(count)
    return len(runs)


def largest_matmul_gflops(params, tokens: int, min_seconds: float = 0.05) -> float:
    """GFLOP/s of kernels.linear on the model's largest weight matrix over `tokens` rows."""
    name, w = max(((n, v) for n, v in params.items() if v.ndim == 2 and n != "wpe"),
                  key=lambda item: item[1].size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((tokens, w.shape[1]), dtype=np.float32)
    out = np.empty((tokens, w.shape[0]), dtype=np.float32)
    bias = params[name.replace(".weight", ".bias")] if name.endswith(".weight") else None
    kernels.linear(x, w, bias, out)
    calls, t0 = 0, time.perf_counter()
    while True:
        kernels.linear(x, w, bias, out)
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return 2.0 * tokens * w.shape[0] * w.shape[1] * calls / elapsed / 1e9


def _matmul_gflops(net, tokens):
    params = getattr(net, "params", None)  # float32 models only: a quantized product is timed by its own benchmark
    return round(largest_matmul_gflops(params, tokens), 2) if params is not None else None


def _prefill(session, prompt):
    # prompt (T,) int32 -> logits (V,) of its last position, the KV cache restarted
    session.reset()
    return session.prefill(prompt)


def _network(preset, model, positions):
    if model is not None:
        net, name = model.net, model.name
    else:
        net, name = GPT(init_params(get_preset(preset), seed=0)), preset
    if positions > net.config.context_length:
        raise ContextLengthError(
            f"the benchmark needs {positions} positions but {name!r} has a context of "
            f"{net.config.context_length}")
    return net, name


def _check_counts(**counts):
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SmallMindError(f"{name} must be a positive integer, got {value!r}")


def _prompt(cfg, tokens):
    return np.random.default_rng(1).integers(0, cfg.vocab_size, tokens, dtype=np.int32)


def _threads(threads):
    if threads is not None:
        kernels.set_threads(threads)
    return kernels.get_threads()
