"""The native GEMM against NumPy's BLAS on training's product shapes, per direction.

    .venv/bin/python benchmarks/gemm_vs_blas.py [--preset seed] [--threads 2] [--repeats 15] [--gemm-isa avx512]

For each linear layer of the preset at bench.train's batch (16 x min(128, context) rows):
the forward (x @ w.T), the input gradient (dout @ w) and the weight gradient (dout.T @ x),
bare products only (no fused work), best of --repeats, in GFLOPS. This is the measurement
behind the kernels' gemm_min_rows table (kernels/csrc/module.c): where the native GEMM is
about as fast as BLAS bare, its fused epilogues make it the faster choice. --gemm-isa picks
the micro-kernel build (native.supported_gemm_isas(); default: the one the kernels' ISA uses):
on an AVX-512 machine, `--gemm-isa avx512` measures the AVX-512 tile that BLAS still stands in
for there. --bf16 runs the native side's products in BF16 (kernels.bf16_products: the AMX or
AVX512-BF16 tile of builds that have one; refused on builds without).
"""

import argparse

import numpy as np
from side_by_side import call_times, cpu_model, positive_int

from smallmind import kernels
from smallmind.bench.train import BATCH, SEQ
from smallmind.kernels import native
from smallmind.models.gpt import PRESETS, preset


def best_ms(fn, repeats):
    return min(call_times(fn, repeats)) * 1e3


def bf16_builds():
    # the GEMM builds this CPU runs that have a BF16 tile
    current, found = native.gemm_isa(), []
    for name in native.supported_gemm_isas():
        native.select_gemm_isa(name)
        if native.gemm_bf16_tile():
            found.append(name)
    native.select_gemm_isa(current)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=15)
    parser.add_argument("--gemm-isa", default=None, help="the GEMM micro-kernel build to measure")
    parser.add_argument("--bf16", action="store_true", help="the native products in BF16")
    args = parser.parse_args()
    if args.threads > kernels.MAX_THREADS:
        raise SystemExit(f"gemm_vs_blas: --threads must be at most {kernels.MAX_THREADS}")
    if args.repeats > 1000:
        raise SystemExit("gemm_vs_blas: --repeats must be at most 1000")
    if args.gemm_isa:
        try:
            native.select_gemm_isa(args.gemm_isa)
        except ValueError:
            raise SystemExit(f"gemm_vs_blas: this CPU does not run the GEMM build {args.gemm_isa!r}; it runs "
                             f"{', '.join(native.supported_gemm_isas())}") from None
    if args.bf16 and not native.gemm_bf16_tile():
        raise SystemExit(f"gemm_vs_blas: the GEMM build {native.gemm_isa()!r} has no BF16 tile (builds with one "
                         f"here: {', '.join(bf16_builds()) or 'none'})")
    kernels.set_threads(args.threads)
    cfg = preset(args.preset)
    T, C = BATCH * min(SEQ, cfg.context_length), cfg.d_model
    rng = np.random.default_rng(0)
    native.gemm_min_rows(0)
    print(f"CPU: {cpu_model()}")
    print(f"preset {args.preset}, {T} rows, threads {args.threads}, kernels {kernels.path}, GEMM micro-kernel "
          f"{native.gemm_isa()}{' in BF16' if args.bf16 else ''}; GFLOPS, best of {args.repeats}")
    print(f"{'layer (K -> N)':22s} {'fwd gemm':>9s} {'blas':>7s} {'dx gemm':>9s} {'blas':>7s} {'dw gemm':>9s} {'blas':>7s}")
    for name, K, N in (("qkv", C, 3 * C), ("proj", C, C), ("mlp up", C, 4 * C), ("mlp down", 4 * C, C),
                       ("lm head", C, cfg.vocab_size)):
        x, w = rng.standard_normal((T, K), dtype=np.float32), rng.standard_normal((N, K), dtype=np.float32)
        d, out = rng.standard_normal((T, N), dtype=np.float32), np.empty((T, N), np.float32)
        dx, dw = np.empty((T, K), np.float32), np.zeros((N, K), np.float32)
        flop = 2e-6 * T * K * N
        calls = (
            lambda: native._gemm_linear(x, w, None, None, out, None, False),  # noqa: B023 (called at once)
            lambda: np.matmul(x, w.T, out=out),  # noqa: B023
            lambda: native._gemm_dx(d, w, dx, 1.0, None),  # noqa: B023
            lambda: np.matmul(d, w, out=dx),  # noqa: B023
            lambda: native._gemm_dw(d, x, dw, None, 1.0),  # noqa: B023
            lambda: np.matmul(d.T, x, out=dw),  # noqa: B023
        )
        with kernels.bf16_products(args.bf16):
            row = [best_ms(call, args.repeats) for call in calls]
        print(f"{f'{name} ({K} -> {N})':22s} " + " ".join(f"{flop / ms:{9 if i % 2 == 0 else 7}.1f}"
                                                        for i, ms in enumerate(row)))


if __name__ == "__main__":
    main()
