/* The AVX-512 GEMM micro-kernels (isa_gemm_avx512bf16.c) built for AVX2 CPUs: the same
 * 16-float vector code on register pairs, and dpbf16ps by its exact steps, so the tests check
 * the tiles, the BF16 packing and the fused stores on machines without AVX-512. Never chosen
 * by dispatch; only select_gemm_isa("avx512-emulated"). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi2")
#pragma GCC diagnostic ignored "-Wpsabi"
#define SM_GEMM_V16 1
#define SM_GEMM_BF16 1
#define SM_GEMM_BF16_EMULATED 1
#define SM_GSUFFIX avx512_emulated
#define SM_GISA_NAME "avx512-emulated"
#include "gemm_impl.h"
#endif
