"""Training throughput, SmallMind vs PyTorch eager, each in its own process, interleaved.

Both sides train the same GPT (same preset, same initial weights) with AdamW on the same
random batch (bench.train's: 16 x min(128, context)), at the same thread budget. Each side is
a worker process of its own (side_by_side.py); the parent asks them in turn for one timed
repetition of --steps steps, so machine noise hits both alike, and prints medians, the ratio,
the CPU model and the load average.

With --precision bf16, SmallMind trains with BF16 products and is compared with PyTorch eager
float32 and with PyTorch under BF16 autocast.

    .venv/bin/python benchmarks/train_vs_torch.py --preset seed --threads 2 --repeats 7
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from side_by_side import Worker, cpu_model, load_average, positive_int, preset_names, serve  # noqa: E402


class TorchTrainStep:
    """The PyTorch peer of bench.train.TrainStep: same weights, batch and optimizer settings."""

    def __init__(self, params, tokens, targets, autocast_bf16=False):
        import numpy as np
        import torch
        from torch_gpt import TorchGPT

        self.torch = torch
        self.model = TorchGPT.from_params(params).train()
        decayed = [p for n, p in self.model.param_map().items() if p.ndim == 2 and n not in ("wte", "wpe")]
        others = [p for n, p in self.model.param_map().items() if not (p.ndim == 2 and n not in ("wte", "wpe"))]
        self.optimizer = torch.optim.AdamW(
            [{"params": decayed, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.targets = torch.from_numpy(targets.astype(np.int64))
        self.autocast_bf16 = autocast_bf16

    def run(self) -> float:
        import torch.nn.functional as F

        self.optimizer.zero_grad(set_to_none=True)
        with self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.autocast_bf16):
            logits = self.model(self.tokens)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), self.targets.view(-1))
        loss.backward()
        self.optimizer.step()
        return loss.item()


def worker(side: str, preset_name: str, threads: int, precision: str) -> None:
    from smallmind import kernels
    from smallmind.bench.train import BATCH, SEQ, TrainStep, random_batch
    from smallmind.models.gpt import init_params, preset

    cfg = preset(preset_name)
    seq = min(SEQ, cfg.context_length)
    if side == "smallmind":
        kernels.set_threads(threads)
        step = TrainStep(cfg, BATCH, seq, precision=precision)
        about = {"params": step.params.count, "kernels": kernels.path, "precision": precision}
    else:
        import torch

        torch.set_num_threads(threads)
        tokens, targets = random_batch(cfg, BATCH, seq)
        step = TorchTrainStep(init_params(cfg, 0), tokens, targets, autocast_bf16=side == "torch-bf16")
        about = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    first = step.run()  # the same weights and batch give the same first loss: both sides do the same work
    step.run()

    def timed(request):
        start = time.perf_counter()
        for _ in range(request["steps"]):
            loss = step.run()
        return {"seconds": (time.perf_counter() - start) / request["steps"], "loss": loss}

    serve(timed, {**about, "first_loss": first, "tokens": BATCH * seq})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed", choices=preset_names())
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=3, help="training steps per timed repetition")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.preset, args.threads, args.precision)

    sides = ["smallmind", "torch"] + (["torch-bf16"] if args.precision == "bf16" else [])
    workers = [Worker(__file__, side, ["--preset", args.preset, "--threads", args.threads,
                                       "--precision", args.precision]) for side in sides]
    try:
        times = {w.side: [] for w in workers}
        for _ in range(args.repeats):
            for w in workers:
                times[w.side].append(w.ask(steps=args.steps)["seconds"])
    finally:
        for w in workers:
            w.close()

    ours = workers[0].ready
    tokens = ours["tokens"]
    print(f"CPU {cpu_model()}; load average at the end {load_average()}")
    print(f"preset {args.preset} ({ours['params']:,} params), batch of {tokens} tokens, AdamW, threads {args.threads}, "
          f"smallmind {ours['kernels']} {ours['precision']}, torch {workers[1].ready['torch']}; "
          f"each side in its own process, {args.repeats} interleaved repeats of {args.steps} steps")
    print("first-step loss: " + "  ".join(f"{w.side} {w.ready['first_loss']:.5f}" for w in workers))
    print(f"{'':11s} {'ms/step (median)':>17s} {'tok/s':>9s}   per repeat ms")
    medians = {}
    for side, ts in times.items():
        medians[side] = statistics.median(ts)
        runs = " ".join(f"{t * 1e3:.0f}" for t in ts)
        print(f"{side:11s} {medians[side] * 1e3:17.1f} {tokens / medians[side]:9.0f}   {runs}")
    for side in sides[1:]:
        print(f"ratio smallmind/{side} tokens/s: {medians[side] / medians['smallmind']:.2f}x")


if __name__ == "__main__":
    main()
