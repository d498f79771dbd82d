/* AVX2 + FMA + F16C build of the quantized-weight kernels: integer dot products through
 * maddubs/madd. AVX-512 machines without VNNI run this build too. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi2")
#define SM_QUANT_AVX2 1
#define SM_QSUFFIX avx2
#define SM_QISA_NAME "avx2"
#include "quant_impl.h"
#endif
