/* The AMX build (isa_quant_amx.c) for AVX2 CPUs: the tile instructions and the VNNI ones
 * replaced by plain C and AVX2 stand-ins with their exact integer semantics, so the tests
 * check the AMX kernels' logic against the NumPy twins on machines without AMX. Never chosen
 * by dispatch; only select_quant_isa("amx-emulated") runs it. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi2")
#define SM_QUANT_AVX2 1
#define SM_QUANT_VNNI 1
#define SM_QUANT_VNNI_EMULATED 1
#define SM_QUANT_AMX 1
#define SM_AMX_EMULATED 1
#define SM_QSUFFIX amx_emulated
#define SM_QISA_NAME "amx-emulated"
#include "quant_impl.h"
#endif
