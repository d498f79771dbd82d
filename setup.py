"""Build of the optional native kernel core, smallmind.kernels._native.

The metadata lives in pyproject.toml. Two extensions: the kernels, and the profiler's scope
event log (smallmind._scopelog). Both are `optional`: where no C compiler
is present the build of it is skipped, the package still installs, and at import the
kernels run on their NumPy references (and say so once).
"""

import sys

import numpy
from setuptools import Extension, setup

CSRC = "src/smallmind/kernels/csrc"

if sys.platform == "win32":
    extra_compile_args = ["/O2"]
    extra_link_args = []
else:
    # -fopenmp-simd honours `omp simd` (vectorized reductions) without linking an OpenMP
    # runtime; -fno-math-errno lets sqrtf vectorize and -fno-trapping-math lets float
    # selects if-convert on AVX2 (neither changes any result). No -ffast-math: NaN and inf
    # results must stay what the references give.
    extra_compile_args = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-pthread",
                          "-std=gnu11"]
    extra_link_args = ["-pthread"]

native = Extension(
    "smallmind.kernels._native",
    sources=[f"{CSRC}/{name}.c" for name in ("module", "pool", "isa_generic", "isa_avx2", "isa_avx512",
                                                      "quant", "isa_quant_generic", "isa_quant_avx2",
                                                      "isa_quant_avx512", "isa_quant_vnni_emulated",
                                                      "isa_quant_amx", "isa_quant_amx_emulated",
                                                      "gemm", "isa_gemm_generic", "isa_gemm_avx2", "isa_gemm_avx512",
                                                      "isa_gemm_avx512_emulated", "isa_gemm_avx512bf16",
                                                      "isa_gemm_amx", "isa_gemm_amx_emulated",
                                                      "train_attention", "isa_tattn_generic", "isa_tattn_avx2")],
    depends=[f"{CSRC}/{name}.h" for name in ("kernels", "kernels_impl", "pool", "quant", "quant_impl", "quant_amx_impl", "amx", "gemm",
                                                          "gemm_impl", "sm_math", "train_attention",
                                                          "train_attention_impl")],
    include_dirs=[numpy.get_include(), CSRC],
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
    optional=True,
)

scopelog = Extension(
    "smallmind._scopelog",
    sources=["src/smallmind/csrc/scopelog.c"],
    extra_compile_args=extra_compile_args,
    optional=True,
)

setup(ext_modules=[native, scopelog])
