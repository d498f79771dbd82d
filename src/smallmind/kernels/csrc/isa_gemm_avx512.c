/* AVX-512 build of the GEMM micro-kernel: a 12 x 16 tile on 16-float vectors (gemm_impl.h,
 * SM_GEMM_V16). Runs where the float kernels' AVX-512 build does; whether a product takes
 * the native GEMM or BLAS is module.c's gemm_min_rows, by measurement. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2,prefer-vector-width=512")
#define SM_GEMM_V16 1
#define SM_GSUFFIX avx512
#define SM_GISA_NAME "avx512"
#include "gemm_impl.h"
#endif
