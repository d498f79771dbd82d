"""Decode and prefill speed, SmallMind vs PyTorch eager, same weights, same threads, each in
its own process.

    .venv/bin/python benchmarks/decode_vs_torch.py [--preset seed] [--threads 2] [--repeats 7]

Decode: a 32-token prompt is prefilled, then 50 new tokens are decoded greedily; the time
counts the 50 decode steps (sampling included). PyTorch runs torch_gpt.TorchGPT's KV-cache
path (prefill + decode_step under inference_mode). Prefill: one forward over 128 tokens into
an empty cache. Each side is a worker process of its own (side_by_side.py); the parent asks
them in turn, each sample after a short idle pause (--pause) and made of --rounds runs back
to back, so that a thread pool waking from idle weighs little. Medians, ranges, the ratio,
the CPU model and whether both sides picked the same tokens are printed.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from side_by_side import Worker, cpu_model, load_average, positive_int, preset_names, serve  # noqa: E402


class SmallMindSide:
    def __init__(self, params, threads, prefill_tokens):
        import numpy as np

        from smallmind import kernels
        from smallmind.models.gpt import Workspace
        from smallmind.runtime.kv_cache import KVCache
        from smallmind.runtime.sampler import Sampler

        kernels.set_threads(threads)
        cfg = params.cfg
        self.params = params
        self.ws = Workspace(cfg, max(prefill_tokens, 1))
        self.kv = KVCache(cfg.n_layers, cfg.n_heads, cfg.context_length, cfg.head_dim)
        self.sampler = Sampler(params.cfg.vocab_size, temperature=0.0)
        self.token = np.zeros(1, np.int32)  # the decode step's input, reused
        self.about = {"kernels": kernels.path}

    def decode(self, prompt, new_tokens):
        # prompt (P,) int32 -> (seconds of the decode steps, generated ids)
        from smallmind.models.gpt import forward

        self.kv.reset()
        logits = forward(self.params, self.ws, self.kv, prompt, 0)
        pos, token, ids = prompt.shape[0], self.token, []
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            next_id = self.sampler.sample(logits)
            ids.append(next_id)
            token[0] = next_id
            logits = forward(self.params, self.ws, self.kv, token, pos)
            pos += 1
        return time.perf_counter() - t0, ids

    def prefill(self, prompt):
        from smallmind.models.gpt import forward

        self.kv.reset()
        t0 = time.perf_counter()
        forward(self.params, self.ws, self.kv, prompt, 0)
        return time.perf_counter() - t0


class TorchSide:
    def __init__(self, params, threads, prefill_tokens):
        import torch
        import torch_gpt

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = torch_gpt.TorchGPT.from_params(params).eval()
        self.about = {"torch": torch.__version__}

    def decode(self, prompt, new_tokens):
        logits = self.model.prefill(prompt)
        ids = []
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            for _ in range(new_tokens):
                next_id = int(logits.argmax())
                ids.append(next_id)
                logits = self.model.decode_step(next_id)
        return time.perf_counter() - t0, ids

    def prefill(self, prompt):
        t0 = time.perf_counter()
        self.model.prefill(prompt)
        return time.perf_counter() - t0


def worker(side, args):
    import numpy as np

    from smallmind.models.gpt import init_params, preset

    cfg = preset(args.preset)
    params = init_params(cfg, seed=0)
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, cfg.vocab_size, args.prompt_tokens, dtype=np.int32)
    long_prompt = rng.integers(0, cfg.vocab_size, args.prefill_tokens, dtype=np.int32)
    impl = (SmallMindSide if side == "smallmind" else TorchSide)(params, args.threads, args.prefill_tokens)

    def handle(request):
        if request["task"] == "decode":
            runs = [impl.decode(prompt, args.new_tokens) for _ in range(args.rounds)]
            return {"tok_s": args.rounds * args.new_tokens / sum(r[0] for r in runs), "ids": runs[0][1]}
        seconds = sum(impl.prefill(long_prompt) for _ in range(args.rounds))
        return {"tok_s": args.rounds * args.prefill_tokens / seconds}

    serve(handle, {**impl.about, "params": params.count})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed", choices=preset_names())
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count())
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--prompt-tokens", type=positive_int, default=32)
    parser.add_argument("--new-tokens", type=positive_int, default=50)
    parser.add_argument("--prefill-tokens", type=positive_int, default=128)
    parser.add_argument("--rounds", type=positive_int, default=5, help="runs back to back in one timed sample")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds of idle before each timed sample")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)

    passed = ["--preset", args.preset, "--threads", args.threads, "--prompt-tokens", args.prompt_tokens,
              "--new-tokens", args.new_tokens, "--prefill-tokens", args.prefill_tokens, "--rounds", args.rounds]
    workers = [Worker(__file__, side, passed) for side in ("smallmind", "torch")]
    decode = {w.side: [] for w in workers}
    prefill = {w.side: [] for w in workers}
    same_tokens = True
    try:
        for rep in range(args.repeats + 1):  # the first round warms both up and is not counted
            picked = {}
            for task, runs in (("decode", decode), ("prefill", prefill)):
                for w in workers:
                    # a pause first: a pool that spins after its last task would still hold the cores
                    time.sleep(args.pause)
                    result = w.ask(task=task)
                    if rep:
                        runs[w.side].append(result["tok_s"])
                    if task == "decode":
                        picked[w.side] = result["ids"]
            same_tokens &= picked["smallmind"] == picked["torch"]
    finally:
        for w in workers:
            w.close()

    ours, theirs = workers[0].ready, workers[1].ready
    print(f"CPU {cpu_model()}; load average at the end {load_average()}")
    print(f"preset {args.preset} ({ours['params'] / 1e6:.2f}M params), threads {args.threads}, kernels {ours['kernels']}, "
          f"torch {theirs['torch']}; each side in its own process, repeats {args.repeats} (+1 warm-up) of "
          f"{args.rounds} runs each")

    def report(title, runs):
        a, b = statistics.median(runs["smallmind"]), statistics.median(runs["torch"])
        print(f"{title}\n  median  smallmind {a:9.1f} tok/s   torch {b:9.1f} tok/s   ratio {a / b:5.2f}x")
        print(f"  range   smallmind {min(runs['smallmind']):.0f}..{max(runs['smallmind']):.0f}   "
              f"torch {min(runs['torch']):.0f}..{max(runs['torch']):.0f}")

    report(f"decode ({args.prompt_tokens} prompt + {args.new_tokens} new, greedy)", decode)
    report(f"prefill ({args.prefill_tokens} tokens)", prefill)
    print(f"greedy tokens identical to torch's: {same_tokens}")


if __name__ == "__main__":
    main()
