"""The training attention (kernels.attention_train_forward / _backward) natively against its NumPy
twin, at the seed (B=16, T=128, H=8, D=32) and small (D=64) shapes.

Interleaved repetitions, medians in ms per call, and GFLOPS counted over the full (T, T) products
(forward: q k^T and P v; backward: four products), as the profiler counts attention: the native
kernel skips the upper triangle, so its useful work is about half of that. The twin's batched
np.matmul runs its B*H tiny products on one BLAS thread (a threaded BLAS wakes its threads for
each, and on a busy machine stalls on every one).
Run: .venv/bin/python benchmarks/train_attention.py [--threads 2] [--repeats 5]
"""

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from smallmind import kernels
from smallmind.kernels import reference as ref

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels_vs_numpy import compare  # noqa: E402

SHAPES = {"seed": (16, 128, 8, 32), "small": (16, 128, 8, 64)}


def call(impl, what, arrays, scale, mask):
    # one training attention call of impl (native kernels or the twin) on arrays (qkv, probs, out, dout, dqkv)
    qkv, probs, out, dout, dqkv = arrays
    if what == "forward":
        impl.attention_train_forward(qkv, probs, out, scale, mask)
    else:
        impl.attention_train_backward(dout, qkv, probs, dqkv, scale, mask)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    kernels.set_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"kernels {kernels.path}, {args.threads} threads; ms per call (GFLOPS over the full square)")
    for name, (B, T, H, D) in SHAPES.items():
        C = H * D
        qkv = rng.standard_normal((B * T, 3 * C)).astype(np.float32)
        dout = rng.standard_normal((B * T, C)).astype(np.float32)
        probs, out, dqkv = np.zeros((B, H, T, T), np.float32), np.zeros((B * T, C), np.float32), np.zeros_like(qkv)
        mask = ((rng.random((B, H, T, T)) >= 0.1) / 0.9).astype(np.float32)
        scale = 1.0 / np.sqrt(D)
        flops = 2.0 * B * H * T * T * D * 2
        for label, m in (("", None), (" +dropout", mask)):
            for what, n in (("forward", flops), ("backward", 2 * flops)):
                arrays = (qkv, probs, out, dout, dqkv)
                with threadpool_limits(limits=1, user_api="blas"):
                    tn, tr = compare(partial(call, kernels, what, arrays, scale, m),
                                     partial(call, ref, what, arrays, scale, m), args.repeats)
                print(f"  {name:<6} B={B} T={T} H={H} D={D} {what + label:<18} native {tn * 1e3:7.2f} ms "
                      f"({n / tn / 1e9:5.1f})   numpy {tr * 1e3:7.2f} ms ({n / tr / 1e9:5.1f})   {tr / tn:5.2f}x")


if __name__ == "__main__":
    main()
