"""get_info(): the machine and libraries the kernels run on, for `smallmind doctor`."""

import platform

import numpy as np

FLAG_NAMES = {
    # /proc/cpuinfo spelling -> the names get_info reports (as __builtin_cpu_supports spells them)
    "sse4_2": "sse4.2", "avx": "avx", "avx2": "avx2", "fma": "fma", "avx512f": "avx512f",
    "avx512bw": "avx512bw", "avx512vl": "avx512vl", "avx512dq": "avx512dq",
    "avx512_vnni": "avx512vnni", "avx512_bf16": "avx512bf16",
}


def cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and its /proc/cpuinfo feature flags (empty where unreadable)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _blas() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [
        {"name": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads"),
         "library": p.get("filepath")}
        for p in threadpool_info() if p.get("user_api") == "blas"
    ]


def collect(native, path: str, threads: int) -> dict:
    # native: the smallmind.kernels.native module or None
    model, flags = cpuinfo()
    if native is not None:
        features = dict(native.cpu_features())
    else:
        features = {name: flag in flags for flag, name in FLAG_NAMES.items()}
    return {
        "cpu": model,
        "machine": platform.machine(),
        "cpu_features": features,
        "kernel_path": path,
        "quant_kernels": native.quant_isa() if native is not None else "numpy",
        "gemm_kernels": native.gemm_isa() if native is not None else "numpy",
        "native_available": native is not None,
        "native_threads": threads if native is not None else 0,
        "threads": threads,
        "compiler": native.compiler if native is not None else None,
        "blas": _blas(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
