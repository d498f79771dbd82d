"""What the profile ran on, and what the machine can do at best (measured, not looked up)."""

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..kernels import get_threads
from ..kernels.info import cpuinfo

# Highest first: the first level whose flags are all present names the machine's SIMD level.
_SIMD_LEVELS = (
    ("AVX-512", ("avx512f",)),
    ("AVX2+FMA", ("avx2", "fma")),
    ("AVX", ("avx",)),
    ("SSE4.2", ("sse4_2",)),
    ("NEON", ("asimd",)),
)
_SIMD_EXTRAS = (("VNNI", "avx512_vnni"), ("BF16", "avx512_bf16"))


def simd_level(flags: set[str]) -> str:
    for name, needed in _SIMD_LEVELS:
        if all(f in flags for f in needed):
            extras = [label for label, flag in _SIMD_EXTRAS if name == "AVX-512" and flag in flags]
            return f"{name} ({', '.join(extras)})" if extras else name
    return "scalar"


def system_info() -> dict:
    """CPU model and SIMD level, cores, BLAS and its threads, kernel path, Python and NumPy."""
    from threadpoolctl import threadpool_info

    from .. import kernels

    model, flags = cpuinfo()
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return {
        "cpu": model,
        "simd": simd_level(flags),
        "cores": os.cpu_count() or 1,
        "threads": kernels.get_threads(),  # the one budget for native kernels and BLAS
        "blas": f"{blas[0]['internal_api']} {blas[0]['version']} ({blas[0]['num_threads']} threads)"
        if blas else "none found",
        "kernel_path": kernels.path,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def measure_peaks(gemm_n: int = 2048, copy_mb: int = 128, cache_copy_mb: int = 4, repeats: int = 3,
                  threads: int | None = None) -> dict:
    """Best-of-`repeats` float32 GEMM GFLOPS (np.matmul, all BLAS threads) and memory GB/s.

    Two streams far larger than L3 are timed: a copy of `copy_mb` MB between two buffers
    (bytes moved count the read and the write, 2 x size, the same convention the cost model uses
    for every scope) and a read of the same size split over `threads` threads (default: the
    kernels' thread budget), which is what decode does with the weights. The memory roof `gbps`
    is the better of the two: the most this machine has been seen to move. The same copy of
    `cache_copy_mb` MB, which stays in cache, is reported beside it as cache_gbps: a scope whose
    data lives in cache can beat the roof.
    """
    threads = threads or get_threads()
    gflops = gemm_gflops(gemm_n, repeats)
    copy_gbps = _copy_gbps(copy_mb, repeats)
    read_gbps = _read_gbps(copy_mb, repeats, threads)
    return {
        "gflops": gflops,
        "gbps": max(copy_gbps, read_gbps),
        "copy_gbps": copy_gbps,
        "read_gbps": read_gbps,
        "read_threads": threads,
        "cache_gbps": _copy_gbps(cache_copy_mb, repeats * 10),
        "gemm_n": gemm_n,
        "copy_mb": copy_mb,
        "cache_copy_mb": cache_copy_mb,
    }


def gemm_gflops(gemm_n: int = 2048, repeats: int = 3) -> float:
    """Best-of-`repeats` float32 GEMM GFLOPS of an n x n product (np.matmul, all BLAS threads):
    the compute peak the roofline and training's model FLOPs utilisation are measured against."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((gemm_n, gemm_n), dtype=np.float32)
    b = rng.standard_normal((gemm_n, gemm_n), dtype=np.float32)
    c = np.empty((gemm_n, gemm_n), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm: BLAS threads up, pages touched
    gemm_s = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(repeats))
    return 2.0 * gemm_n ** 3 / gemm_s / 1e9


def _copy_gbps(mb: int, repeats: int) -> float:
    n = mb * (1 << 20) // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)
    np.copyto(dst, src)
    seconds = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2.0 * n * 4 / seconds / 1e9


def _read_gbps(mb: int, repeats: int, threads: int) -> float:
    # reading only, `threads` slices at once (NumPy's reduction lets go of the GIL while it runs)
    words = np.ones(mb * (1 << 20) // 8, dtype=np.int64)
    slices = np.array_split(words, threads)
    with ThreadPoolExecutor(threads) as pool:
        def read_all():
            for _ in pool.map(np.bitwise_or.reduce, slices):
                pass

        read_all()
        seconds = min(_timed(read_all) for _ in range(repeats))
    return words.nbytes / seconds / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
