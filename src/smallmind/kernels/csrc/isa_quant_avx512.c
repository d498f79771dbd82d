/* AVX-512 VNNI build of the quantized-weight kernels: the AVX2 kernels' 256-bit layout with
 * their integer dot products in dpbusd / dpwssd (quant_impl.h, SM_QUANT_VNNI). Chosen at run
 * time where the CPU has AVX512-VNNI and AVX512-VL and the OS saves the AVX-512 state. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,bmi2")
#define SM_QUANT_AVX2 1
#define SM_QUANT_VNNI 1
#define SM_QSUFFIX avx512vnni
#define SM_QISA_NAME "avx512vnni"
#include "quant_impl.h"
#endif
