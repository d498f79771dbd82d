"""Decode and prefill speed, SmallMind vs PyTorch eager, same weights, same threads.

    .venv/bin/python benchmarks/decode_vs_torch.py [--preset seed] [--threads 2] [--repeats 7]

Decode: a 32-token prompt is prefilled, then 50 new tokens are decoded greedily; the time
counts the 50 decode steps (sampling included). PyTorch runs torch_gpt.TorchGPT's KV-cache
path (prefill + decode_step under inference_mode). Prefill: one forward over 128 tokens into
an empty cache. Repetitions alternate ours / torch, each after a short idle pause (--pause);
each timed sample is --rounds runs back to back, so that a thread pool waking from idle
(either side's) weighs little; medians, ranges and the ratio are printed, and whether both
sides picked the same tokens.
"""

import argparse
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `import smallmind` sets it, before NumPy loads
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_gpt  # noqa: E402

from smallmind import kernels  # noqa: E402
from smallmind.models.gpt import Workspace, forward, init_params, preset  # noqa: E402
from smallmind.runtime.sampler import Sampler  # noqa: E402


def ours_decode(params, ws, sampler, prompt, new_tokens):
    # prompt (P,) int32 -> (seconds of the decode steps, generated ids)
    ws.reset()
    logits = forward(params, ws, prompt, 0)
    pos, token, ids = prompt.shape[0], ws.token, []
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        next_id = sampler.sample(logits)
        ids.append(next_id)
        token[0] = next_id
        logits = forward(params, ws, token, pos)
        pos += 1
    return time.perf_counter() - t0, ids


def torch_decode(model, prompt, new_tokens):
    # prompt (P,) int32 -> (seconds of the decode steps, generated ids)
    logits = model.prefill(prompt)
    ids = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(new_tokens):
            next_id = int(logits.argmax())
            ids.append(next_id)
            logits = model.decode_step(next_id)
    return time.perf_counter() - t0, ids


def ours_prefill(params, ws, prompt):
    ws.reset()
    t0 = time.perf_counter()
    forward(params, ws, prompt, 0)
    return time.perf_counter() - t0


def torch_prefill(model, prompt):
    t0 = time.perf_counter()
    model.prefill(prompt)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--prefill-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="runs back to back in one timed sample")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds of idle before each timed sample")
    args = parser.parse_args()

    kernels.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    params = init_params(cfg, seed=0)
    model = torch_gpt.TorchGPT.from_params(params).eval()
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, cfg.vocab_size, args.prompt_tokens, dtype=np.int32)
    long_prompt = rng.integers(0, cfg.vocab_size, args.prefill_tokens, dtype=np.int32)
    sampler = Sampler(cfg.vocab_size, temperature=0.0)
    ws = Workspace(cfg, args.prefill_tokens)

    print(f"preset {args.preset} ({params.count / 1e6:.2f}M params), threads {args.threads}, "
          f"kernels {kernels.path}, torch {torch.__version__}, repeats {args.repeats} (+1 warm-up) "
          f"of {args.rounds} runs each")

    decode = {"smallmind": [], "torch": []}
    prefill = {"smallmind": [], "torch": []}
    same_tokens = True
    def settled(run, *run_args):
        # A pause first: thread pools that spin-wait after their last task (torch's OpenMP,
        # our pool) would otherwise still hold the cores when the other side starts. Each
        # sample is `rounds` runs, so the first tokens after idle (a pool waking) weigh little.
        time.sleep(args.pause)
        results = [run(*run_args) for _ in range(args.rounds)]
        if isinstance(results[0], tuple):
            return sum(r[0] for r in results), results[0][1]
        return sum(results)

    for rep in range(args.repeats + 1):
        t_ours, ids_ours = settled(ours_decode, params, ws, sampler, prompt, args.new_tokens)
        t_torch, ids_torch = settled(torch_decode, model, prompt, args.new_tokens)
        p_ours = settled(ours_prefill, params, ws, long_prompt)
        p_torch = settled(torch_prefill, model, long_prompt)
        same_tokens &= ids_ours == ids_torch
        if rep:
            decode["smallmind"].append(args.rounds * args.new_tokens / t_ours)
            decode["torch"].append(args.rounds * args.new_tokens / t_torch)
            prefill["smallmind"].append(args.rounds * args.prefill_tokens / p_ours)
            prefill["torch"].append(args.rounds * args.prefill_tokens / p_torch)

    def report(title, runs):
        ours, theirs = statistics.median(runs["smallmind"]), statistics.median(runs["torch"])
        print(f"{title}\n  median  smallmind {ours:9.1f} tok/s   torch {theirs:9.1f} tok/s   "
              f"ratio {ours / theirs:5.2f}x")
        print(f"  range   smallmind {min(runs['smallmind']):.0f}..{max(runs['smallmind']):.0f}   "
              f"torch {min(runs['torch']):.0f}..{max(runs['torch']):.0f}")

    report(f"decode ({args.prompt_tokens} prompt + {args.new_tokens} new, greedy)", decode)
    report(f"prefill ({args.prefill_tokens} tokens)", prefill)
    print(f"greedy tokens identical to torch's: {same_tokens}")


if __name__ == "__main__":
    main()
