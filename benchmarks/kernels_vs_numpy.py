"""Native kernels against their NumPy references (and linear against BLAS) at the seed
preset's shapes, plus the per-call overhead and the shared-thread-budget check.

Every comparison is interleaved (A, B, A, B, ...) in one run, several repetitions, and
prints medians and the ratio. Run: .venv/bin/python benchmarks/kernels_vs_numpy.py
[--repeats 7] [--threads 1] [--section kernels linear threads overhead]
"""

import argparse
import time

import numpy as np

from smallmind import kernels
from smallmind.kernels import reference as ref

try:
    from smallmind.kernels import native
except ImportError:
    native = None


def timed(fn, min_time=0.02):
    # fn() -> seconds per call, calling it enough times to last about min_time
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time:
            return t / n
        n *= 2 if t == 0 else max(2, int(min_time / t * 1.2))


def compare(fa, fb, repeats):
    # interleaved repetitions -> (median seconds of a, median seconds of b)
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(fa))
        tb.append(timed(fb))
    return float(np.median(ta)), float(np.median(tb))


def row(label, ta, tb, na="native", nb="numpy"):
    print(f"  {label:<44} {na} {ta * 1e6:9.2f} us   {nb} {tb * 1e6:9.2f} us   {nb}/{na} {tb / ta:6.2f}x")


def seed_cases(rng):
    # (name, args builder) at the seed preset: d 256, 8 heads of 32, ffn 1024, vocab 512, context 128
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    C, H, D, V, S, T = 256, 8, 32, 512, 128, 64
    toks = rng.integers(0, V, size=T).astype(np.int32)
    mean, rstd = np.empty(T, np.float32), np.empty(T, np.float32)
    ref.layer_norm(f(T, C), np.ones(C, np.float32), np.zeros(C, np.float32), f(T, C), 1e-5, mean, rstd)
    kc, vc = f(H, S, D), f(H, S, D)
    return [
        ("embedding T=64", lambda: (toks, f(V, C), f(S, C), 0, f(T, C))),
        ("embedding_backward T=64", lambda: (toks, f(T, C), f(V, C))),
        ("layer_norm T=1", lambda: (f(1, C), f(C), f(C), f(1, C))),
        ("layer_norm T=64", lambda: (f(T, C), f(C), f(C), f(T, C), 1e-5, np.empty(T, np.float32),
                                     np.empty(T, np.float32))),
        ("layer_norm_backward T=64", lambda: (f(T, C), f(T, C), f(C), mean, rstd, f(T, C), f(C), f(C))),
        ("rms_norm T=64", lambda: (f(T, C), f(C), f(T, C))),
        ("gelu 1x1024", lambda: (f(1, 4 * C), f(1, 4 * C))),
        ("gelu 64x1024", lambda: (f(T, 4 * C), f(T, 4 * C))),
        ("gelu_backward 64x1024", lambda: (f(T, 4 * C), f(T, 4 * C), f(T, 4 * C))),
        ("silu 64x1024", lambda: (f(T, 4 * C), f(T, 4 * C))),
        ("swiglu 64x1024", lambda: (f(T, 4 * C), f(T, 4 * C), f(T, 4 * C))),
        ("geglu 64x1024", lambda: (f(T, 4 * C), f(T, 4 * C), f(T, 4 * C))),
        ("softmax 1x512 (logits)", lambda: (f(1, V), f(1, V))),
        ("rope T=1 (8 heads of 32)", lambda: (f(1, H, D), 100, 10000.0, f(1, H, D))),
        ("rope T=64", lambda: (f(T, H, D), 0, 10000.0, f(T, H, D))),
        ("kv_cache_store T=1", lambda: (f(1, H, D), f(1, H, D), f(H, S, D), f(H, S, D), 100)),
        ("attention decode T=1 pos 127", lambda: (f(1, H, D), kc, vc, 127, f(1, H, D), 0.17)),
        ("attention prefill T=128", lambda: (f(S, H, D), kc, vc, 0, f(S, H, D), 0.17)),
        ("cross_entropy 4096x512 + grad", lambda: (f(4096, V), rng.integers(0, V, 4096).astype(np.int32),
                                                   np.empty(4096, np.float32), f(4096, V), 1 / 4096)),
        ("adamw_step 3.3M params", lambda: (f(3_300_000), f(3_300_000), f(3_300_000) * 0.01,
                                            np.abs(f(3_300_000)) * 0.01, 1e-3, 0.9, 0.95, 1e-8, 0.1, 10)),
    ]


def bench_kernels(rng, repeats):
    print("kernels at the seed preset's shapes: native vs the NumPy reference")
    for label, build in seed_cases(rng):
        name = label.split()[0]
        args_n, args_r = build(), build()
        with np.errstate(all="ignore"):
            tn, tr = compare(lambda: getattr(native, name)(*args_n), lambda: getattr(ref, name)(*args_r), repeats)
        row(label, tn, tr)


def bench_linear(rng, repeats):
    # the own kernel at every T (cut-over to BLAS lifted), to show where the cut-over belongs
    print("linear: own native kernel (x @ w.T + b, at every T) vs np.matmul(x, w.T, out=) + bias (BLAS)")
    old = native.tuning(1 << 30, 1 << 30, -1, -1)
    try:
        _bench_linear(rng, repeats)
    finally:
        native.tuning(*old)


def _bench_linear(rng, repeats):
    shapes = [("seed qkv", 256, 768), ("seed attn-out", 256, 256), ("seed mlp-up", 256, 1024),
              ("seed lm-head", 256, 512), ("seed mlp-down", 1024, 256), ("small qkv", 512, 1536),
              ("small mlp-down", 2048, 512)]
    for label, K, N in shapes:
        w, b = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal(N).astype(np.float32)
        for T in (1, 4, 16, 128):
            x = rng.standard_normal((T, K)).astype(np.float32)
            o1, o2 = np.empty((T, N), np.float32), np.empty((T, N), np.float32)

            def blas():
                np.matmul(x, w.T, out=o2)
                np.add(o2, b, out=o2)

            tn, tb = compare(lambda: native.linear(x, w, b, o1), blas, repeats)
            row(f"{label} K={K} N={N} T={T}", tn, tb, nb="blas")


def bench_overhead(repeats):
    print("per-call cost of a tiny kernel (gelu on 8 floats): mostly wrapper + validation")
    x, o = np.ones(8, np.float32), np.empty(8, np.float32)
    tn, tr = compare(lambda: native.gelu(x, o), lambda: ref.gelu(x, o), repeats)
    row("gelu 8 floats", tn, tr)
    tk, tc = compare(lambda: kernels.gelu(x, o), lambda: native._gelu(x, o), repeats)
    row("kernels.gelu vs the C entry point", tk, tc, na="kernels.gelu", nb="C")


def bench_threads(rng, repeats):
    # Alternating BLAS gemm and native kernels at 2 threads must not be slower than the
    # same sequence at 1 thread: two pools spinning against each other would show here.
    print("shared thread budget: BLAS gemm alternating with native kernels, 1 vs 2 threads")
    a, bm = rng.standard_normal((256, 256)).astype(np.float32), rng.standard_normal((256, 1024)).astype(np.float32)
    c = np.empty((256, 1024), np.float32)
    x, w = rng.standard_normal((4, 512)).astype(np.float32), rng.standard_normal((2048, 512)).astype(np.float32)
    y = np.empty((4, 2048), np.float32)
    g = rng.standard_normal((256, 1024)).astype(np.float32)
    gout = np.empty_like(g)

    def gemm():
        np.matmul(a, bm, out=c)

    def own():
        native.linear(x, w, None, y)
        native.gelu(g, gout)

    def mixed():
        gemm()
        own()

    before = kernels.get_threads()
    try:
        results = {}
        for name, fn in (("gemm only", gemm), ("native only", own), ("alternating", mixed)):
            def at(n, fn=fn):
                kernels.set_threads(n)
                return timed(fn)
            t1, t2 = [], []
            for _ in range(repeats):
                t1.append(at(1))
                t2.append(at(2))
            results[name] = (float(np.median(t1)), float(np.median(t2)))
            row(name, results[name][1], results[name][0], na="2 threads", nb="1 thread")
    finally:
        kernels.set_threads(before)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="thread budget for the kernel sections")
    p.add_argument("--section", nargs="*", default=["overhead", "kernels", "linear", "threads"],
                   choices=["overhead", "kernels", "linear", "threads"])
    args = p.parse_args()
    if native is None:
        raise SystemExit("the native kernels are not built: nothing to compare")
    if args.threads:
        kernels.set_threads(args.threads)
    info = kernels.get_info()
    print(f"path {kernels.path}, threads {kernels.get_threads()}, cpu {info['cpu']}, "
          f"blas {[b['name'] + ' ' + str(b['version']) for b in info['blas']]}, repeats {args.repeats}")
    rng = np.random.default_rng(0)
    for section in args.section:
        {"overhead": lambda: bench_overhead(args.repeats), "kernels": lambda: bench_kernels(rng, args.repeats),
         "linear": lambda: bench_linear(rng, args.repeats), "threads": lambda: bench_threads(rng, args.repeats)}[section]()


if __name__ == "__main__":
    main()
