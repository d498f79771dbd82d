/* AVX2 + FMA build of the GEMM micro-kernel: a 6 x 16 tile (AVX-512 machines run
 * isa_gemm_avx512.c's 12 x 16 one). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi2")
#define SM_GEMM_AVX2 1
#define SM_GSUFFIX avx2
#define SM_GISA_NAME "avx2"
#include "gemm_impl.h"
#endif
