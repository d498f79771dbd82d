"""Training throughput: forward + backward + AdamW on random tokens, tokens per second, and
the model FLOPs utilisation against the machine's measured float32 GEMM peak."""

import time

import numpy as np

from .. import kernels
from ..errors import SmallMindError
from ..models.gpt import init_params, preset
from ..models.gpt_train import TrainWorkspace, backward, forward, train_flops_per_token
from ..runtime.optim import AdamW
from ..runtime.trainer import bf16_refusal, mfu

BATCH, SEQ = 16, 128


def random_batch(cfg, batch: int, seq: int, seed: int = 0):
    # -> tokens, targets (batch, seq) int32: uniform random ids, targets shifted by one
    rng = np.random.default_rng(seed)
    data = rng.integers(0, cfg.vocab_size, (batch, seq + 1), dtype=np.int32)
    return data[:, :-1], data[:, 1:]


class TrainStep:
    """One model, workspace, optimizer and batch: `run()` is one full training step."""

    def __init__(self, cfg, batch=BATCH, seq=None, seed=0, precision="fp32"):
        seq = min(SEQ, cfg.context_length) if seq is None else seq
        self.params = init_params(cfg, seed)
        self.grads = self.params.zeros_like()
        self.ws = TrainWorkspace(cfg, batch, seq, precision)
        self.optimizer = AdamW(self.params)
        self.tokens, self.targets = random_batch(cfg, batch, seq, seed)

    def run(self) -> float:
        self.grads.flat.fill(0.0)
        loss = forward(self.params, self.ws, self.tokens, self.targets)
        backward(self.params, self.grads, self.ws)
        self.optimizer.step(self.grads, 3e-4)
        return loss


def bench_train(preset_name: str, threads=None, repeats=3, warmup=2, steps_per_repeat=3, precision="fp32",
                peak_gflops=None) -> dict:
    """Median tokens/s of full training steps at batch 16 x min(128, context); peak_gflops
    (None: measured here, at the thread budget) is what the MFU is taken against."""
    if precision == "bf16" and bf16_refusal():
        raise SmallMindError(bf16_refusal())
    if threads is not None:
        kernels.set_threads(threads)
    if peak_gflops is None:
        from ..profiler.machine import gemm_gflops

        peak_gflops = gemm_gflops()
    step = TrainStep(preset(preset_name), precision=precision)
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
    tok_s = BATCH * seq / seconds
    utilisation = mfu(tok_s, train_flops_per_token(step.params.cfg, seq), peak_gflops)
    return {
        "preset": preset_name,
        "params": step.params.count,
        "batch": BATCH,
        "seq": seq,
        "threads": kernels.get_threads(),
        "kernel_path": kernels.path,
        "precision": precision,
        "peak_gflops": round(peak_gflops, 1),
        "mfu": round(utilisation, 4),
        "ms_per_step": round(seconds * 1e3, 2),
        "tok_s": round(tok_s, 1),
    }
