/* The AVX-512 VNNI kernels (isa_quant_avx512.c) built for AVX2 CPUs, dpbusd and dpwssd
 * replaced by exact AVX2 stand-ins: the same integer steps, so the tests check the VNNI
 * kernels' logic against the NumPy twins on machines without VNNI. Never chosen by
 * dispatch; only select_quant_isa("avx512vnni-emulated") runs it. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi2")
#define SM_QUANT_AVX2 1
#define SM_QUANT_VNNI 1
#define SM_QUANT_VNNI_EMULATED 1
#define SM_QSUFFIX vnni_emulated
#define SM_QISA_NAME "avx512vnni-emulated"
#include "quant_impl.h"
#endif
