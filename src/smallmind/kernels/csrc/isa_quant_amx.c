/* AMX-INT8 build of the quantized-weight kernels: the AVX-512 VNNI kernels, with the many-row
 * products of the 32-value formats on AMX tiles (quant_amx_impl.h). Chosen at run time only
 * where the CPU has AMX-TILE and AMX-INT8, the OS saves the tile state and Linux granted this
 * process the tile data (module.c): a tile instruction without that grant kills the process. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,bmi2")
#define SM_QUANT_AVX2 1
#define SM_QUANT_VNNI 1
#define SM_QUANT_AMX 1
#define SM_QSUFFIX amx
#define SM_QISA_NAME "amx"
#include "quant_impl.h"
#endif
