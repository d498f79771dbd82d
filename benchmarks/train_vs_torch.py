"""Training throughput, SmallMind vs PyTorch eager, side by side on the same model and batch.

Both sides train the same GPT (same preset, same initial weights) with AdamW on the same
random batch, at the same thread budget. Repetitions are interleaved (ours, torch, ours,
torch ...) so machine noise hits both alike; medians and the ratio are printed.

    .venv/bin/python benchmarks/train_vs_torch.py --preset seed --threads 2 --repeats 7
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_gpt import TorchGPT  # noqa: E402

from smallmind import kernels  # noqa: E402
from smallmind.bench.train import BATCH, SEQ, TrainStep  # noqa: E402
from smallmind.models.gpt import preset  # noqa: E402


class TorchTrainStep:
    """The PyTorch peer of bench.train.TrainStep: same weights, batch and optimizer settings."""

    def __init__(self, params, tokens, targets):
        self.model = TorchGPT.from_params(params).train()
        decayed = [p for n, p in self.model.param_map().items() if p.ndim == 2 and n not in ("wte", "wpe")]
        others = [p for n, p in self.model.param_map().items() if not (p.ndim == 2 and n not in ("wte", "wpe"))]
        self.optimizer = torch.optim.AdamW(
            [{"params": decayed, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.targets = torch.from_numpy(targets.astype(np.int64))

    def run(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(self.tokens)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), self.targets.view(-1))
        loss.backward()
        self.optimizer.step()
        return loss.item()


def seconds_per_step(step, n):
    start = time.perf_counter()
    for _ in range(n):
        step.run()
    return (time.perf_counter() - start) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed repetition")
    args = parser.parse_args()

    kernels.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    seq = min(SEQ, cfg.context_length)
    ours = TrainStep(cfg, BATCH, seq)
    peer = TorchTrainStep(ours.params, ours.tokens, ours.targets)
    # the same weights and batch give the same first loss: both sides do the same work
    first_ours, first_torch = ours.run(), peer.run()
    for _ in range(2):
        ours.run(), peer.run()

    times = {"smallmind": [], "torch": []}
    for _ in range(args.repeats):
        times["smallmind"].append(seconds_per_step(ours, args.steps))
        times["torch"].append(seconds_per_step(peer, args.steps))

    tokens = BATCH * seq
    print(f"preset {args.preset} ({ours.params.count:,} params), batch {BATCH} x {seq}, AdamW, "
          f"threads {args.threads} (smallmind budget {kernels.get_threads()}, torch {torch.get_num_threads()}), "
          f"kernels {kernels.path}, torch {torch.__version__}")
    print(f"first-step loss: smallmind {first_ours:.5f}  torch {first_torch:.5f}")
    print(f"{'':10s} {'ms/step (median)':>17s} {'tok/s':>9s}   per repeat ms")
    medians = {}
    for name, ts in times.items():
        medians[name] = statistics.median(ts)
        runs = " ".join(f"{t * 1e3:.0f}" for t in ts)
        print(f"{name:10s} {medians[name] * 1e3:17.1f} {tokens / medians[name]:9.0f}   {runs}")
    print(f"ratio smallmind/torch tokens/s: {medians['torch'] / medians['smallmind']:.2f}x")


if __name__ == "__main__":
    main()
