/* The AMX GEMM build (isa_gemm_amx.c) for AVX2 CPUs: its vector tile on register pairs and
 * its BF16 tiles in C (amx.h's stand-in), so the tests check its packing and tiles on machines
 * without AMX. Never chosen by dispatch; only select_gemm_isa("amx-emulated"). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi2")
#pragma GCC diagnostic ignored "-Wpsabi"
#define SM_GEMM_V16 1
#define SM_GEMM_BF16 1
#define SM_GEMM_AMX 1
#define SM_AMX_EMULATED 1
#define SM_GSUFFIX amx_emulated
#define SM_GISA_NAME "amx-emulated"
#include "gemm_impl.h"
#endif
