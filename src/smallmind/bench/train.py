"""Training throughput: forward + backward + AdamW on random tokens, tokens per second."""

import time

import numpy as np

from .. import kernels
from ..models.gpt import init_params, preset
from ..models.gpt_train import TrainWorkspace, backward, forward
from ..runtime.optim import AdamW

BATCH, SEQ = 16, 128


class TrainStep:
    """One model, workspace, optimizer and batch: `run()` is one full training step."""

    def __init__(self, cfg, batch=BATCH, seq=None, seed=0):
        seq = min(SEQ, cfg.context_length) if seq is None else seq
        self.params = init_params(cfg, seed)
        self.grads = self.params.zeros_like()
        self.ws = TrainWorkspace(cfg, batch, seq)
        self.optimizer = AdamW(self.params)
        rng = np.random.default_rng(seed)
        data = rng.integers(0, cfg.vocab_size, (batch, seq + 1), dtype=np.int32)
        self.tokens, self.targets = data[:, :-1], data[:, 1:]

    def run(self) -> float:
        self.grads.flat.fill(0.0)
        loss = forward(self.params, self.ws, self.tokens, self.targets)
        backward(self.params, self.grads, self.ws)
        self.optimizer.step(self.grads, 3e-4)
        return loss


def bench_train(preset_name: str, threads=None, repeats=3, warmup=2, steps_per_repeat=3) -> dict:
    """Median tokens/s of full training steps at batch 16 x min(128, context)."""
    if threads is not None:
        kernels.set_threads(threads)
    step = TrainStep(preset(preset_name))
    seq = step.ws.seq
    for _ in range(warmup):
        step.run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps_per_repeat):
            step.run()
        times.append((time.perf_counter() - start) / steps_per_repeat)
    seconds = float(np.median(times))
    return {
        "preset": preset_name,
        "params": step.params.count,
        "batch": BATCH,
        "seq": seq,
        "threads": kernels.get_threads(),
        "kernel_path": kernels.path,
        "ms_per_step": round(seconds * 1e3, 2),
        "tok_s": round(BATCH * seq / seconds, 1),
    }
