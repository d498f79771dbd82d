/* AVX-512 build of the GEMM micro-kernels with the BF16 tile (dpbf16ps) beside the float32
 * one: chosen on CPUs with AVX512-BF16 enabled by the OS, where `--precision bf16` training
 * runs its products on it (module.c bf16_products). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi2,prefer-vector-width=512")
#define SM_GEMM_V16 1
#define SM_GEMM_BF16 1
#define SM_GSUFFIX avx512bf16
#define SM_GISA_NAME "avx512bf16"
#include "gemm_impl.h"
#endif
