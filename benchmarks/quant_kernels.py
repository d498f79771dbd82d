"""Quantized-weight products (kernels.linear with a QTensor) per block format and shape: time
per product, effective GB/s of weight bytes read, at 1 and 2 threads, beside the float32 kernel
on the same shape (whose weights are 4 bytes a value).

Shapes: decode (T=1) on 2048x640 (2048x768 for the K-quants) and 640x2048 (Gemma 3 270M's
FFN), a few rows (T=8), prefills (T=128 and T=512), and the 262144x640 Q8_0 embedding-sized output
product at T=1 and T=8. Random bytes with finite half scales stand in for weights (the speed
does not depend on the values).

With --builds, the quantized-kernel builds named (native.supported_quant_isas(): "amx",
"avx512vnni", "avx2", "generic", and the emulated "amx-emulated" / "avx512vnni-emulated", which
only check logic and are slow) run the same products in turn, repetitions interleaved, at
--threads threads: median time per product for each build and its speed against the first.

Run: .venv/bin/python benchmarks/quant_kernels.py [--formats Q8_0 Q4_K] [--repeats 5]
     .venv/bin/python benchmarks/quant_kernels.py --builds avx2 avx512vnni amx --formats Q4_K Q6_K Q8_0
"""

import argparse
import statistics
import time

import numpy as np
from side_by_side import cpu_model, positive_int

from smallmind import kernels
from smallmind.kernels.qtensor import QTYPES, QTensor

SCALE_AT = {"Q4_0": [0], "Q5_0": [0], "Q8_0": [0], "Q4_1": [0, 2], "Q5_1": [0, 2],
            "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def random_qtensor(rng, qtype, rows, cols):
    # rows x cols of random quants with small finite half scales
    _, block, size = QTYPES[qtype]
    if qtype in ("F16", "BF16"):
        data = rng.integers(0, 1 << 14, (rows, cols), dtype=np.uint16).view(np.uint8)
        if qtype == "BF16":
            data = (rng.integers(0x3C00, 0x3F80, (rows, cols), dtype=np.uint16)).view(np.uint8)
        return QTensor(qtype, (rows, cols), np.ascontiguousarray(data))
    data = rng.integers(0, 256, (rows, cols // block * size), dtype=np.uint8)
    blocks = data.reshape(rows, cols // block, size)
    half = np.array([0.01], np.float16).view(np.uint8)
    for off in SCALE_AT[qtype]:
        blocks[..., off], blocks[..., off + 1] = half[0], half[1]
    return QTensor(qtype, (rows, cols), data)


def per_call(fn, min_time=0.05):
    # fn() -> (wall seconds, CPU seconds of this process) per call, over about min_time
    fn()
    n = 1
    while True:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        if t >= min_time:
            return t / n, c / n
        n = max(2 * n, int(n * min_time / max(t, 1e-9) * 1.2))


def median_time(fn, repeats):
    # medians of wall and CPU seconds per call
    runs = [per_call(fn) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--formats", nargs="+", default=list(QTYPES), choices=list(QTYPES), metavar="FORMAT")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--builds", nargs="+", metavar="BUILD",
                   help="quantized-kernel builds to compare (the first is the baseline)")
    p.add_argument("--threads", type=positive_int, default=2, help="threads for --builds (default 2)")
    args = p.parse_args()
    if args.repeats > 100:
        raise SystemExit("quant_kernels: --repeats must be at most 100")
    if args.threads > kernels.MAX_THREADS:
        raise SystemExit(f"quant_kernels: --threads must be at most {kernels.MAX_THREADS}")
    rng = np.random.default_rng(0)
    # the K-quants need whole super-blocks of 256: 2048x768 stands in for 2048x640
    cases = [(q, N, K if QTYPES[q][1] <= 32 or K % 256 == 0 else 768, T)
             for q in args.formats for (N, K) in ((2048, 640), (640, 2048)) for T in (1, 8, 128, 512)]
    if "Q8_0" in args.formats:
        # Gemma 3's tied LM head: once a token (T=1) and for 8 sequences decoded together (T=8)
        cases[:0] = [("Q8_0", 262144, 640, 1), ("Q8_0", 262144, 640, 8)]
    print(f"CPU: {cpu_model()}")
    if args.builds:
        return compare_builds(args, cases, rng)
    print(f"kernel path: {kernels.path}")
    # "cpu GB/s": weight bytes per CPU-second of this process on one thread, which stays
    # meaningful when other processes share the cores (wall figures then understate)
    print(f"{'format':6} {'N x K':>12} {'T':>4} | {'1 thread':>10} {'GB/s':>6} {'cpu GB/s':>8} | "
          f"{'2 threads':>10} {'GB/s':>6} | {'f32 2 thr':>10} {'GB/s':>6}")
    f32_cache = {}
    threads = kernels.get_threads()
    try:
        for qtype, N, K, T in cases:
            w = random_qtensor(rng, qtype, N, K)
            x = rng.standard_normal((T, K)).astype(np.float32)
            out = np.empty((T, N), np.float32)
            kernels.set_threads(1)
            t1, c1 = median_time(lambda: kernels.linear(x, w, None, out), args.repeats)
            kernels.set_threads(2)
            t2, _ = median_time(lambda: kernels.linear(x, w, None, out), args.repeats)
            if (N, K, T) not in f32_cache:
                wf = rng.standard_normal((N, K)).astype(np.float32)
                f, _ = median_time(lambda: kernels.linear(x, wf, None, out), args.repeats)
                f32_cache[(N, K, T)] = (f, wf.nbytes / f / 1e9)
                del wf
            f, fgb = f32_cache[(N, K, T)]
            gb = w.nbytes / 1e9
            print(f"{qtype:6} {f'{N}x{K}':>12} {T:>4} | {t1 * 1e6:8.1f}us {gb / t1:6.2f} {gb / c1:8.2f} | "
                  f"{t2 * 1e6:8.1f}us {gb / t2:6.2f} | {f * 1e6:8.1f}us {fgb:6.2f}")
    finally:
        kernels.set_threads(threads)


def compare_builds(args, cases, rng):
    native = kernels._backend
    if native is None:
        raise SystemExit("quant_kernels: --builds needs the native kernels (they are not in use)")
    found = native.supported_quant_isas()
    unknown = [b for b in args.builds if b not in found]
    if unknown:
        raise SystemExit(f"quant_kernels: this CPU does not run the build(s) {', '.join(unknown)}; "
                         f"it runs {', '.join(found)}")
    previous, threads = native.quant_isa(), kernels.get_threads()
    print(f"{args.threads} threads, median us per product over {args.repeats} interleaved repetitions; "
          f"speed against {args.builds[0]}")
    print(f"{'format':6} {'N x K':>12} {'T':>4} | " + " | ".join(f"{b:>20}" for b in args.builds))
    kernels.set_threads(args.threads)
    try:
        for qtype, N, K, T in cases:
            w = random_qtensor(rng, qtype, N, K)
            x = rng.standard_normal((T, K)).astype(np.float32)
            out = np.empty((T, N), np.float32)
            times = {b: [] for b in args.builds}
            for _ in range(args.repeats):
                for b in args.builds:
                    native.select_quant_isa(b)
                    times[b].append(per_call(lambda: kernels.linear(x, w, None, out))[0])  # noqa: B023
            med = {b: statistics.median(v) for b, v in times.items()}
            base = med[args.builds[0]]
            cells = [f"{med[b] * 1e6:9.1f}us {base / med[b]:5.2f}x" for b in args.builds]
            print(f"{qtype:6} {f'{N}x{K}':>12} {T:>4} | " + " | ".join(f"{c:>20}" for c in cells))
    finally:
        native.select_quant_isa(previous)
        kernels.set_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
