/* AMX build of the GEMM micro-kernels: the 16-float vector tile for float32 products (16 rows,
 * an AMX tile's) and the BF16 products on AMX-BF16 tiles (gemm_impl.h, SM_GEMM_AMX). Chosen
 * only where the CPU has AMX-BF16 and AVX512-BF16, the OS saves the tile state and Linux
 * granted this process the tile data (module.c). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi2,prefer-vector-width=512")
#define SM_GEMM_V16 1
#define SM_GEMM_BF16 1
#define SM_GEMM_AMX 1
#define SM_GSUFFIX amx
#define SM_GISA_NAME "amx"
#include "gemm_impl.h"
#endif
