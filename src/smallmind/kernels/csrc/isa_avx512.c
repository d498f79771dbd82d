/* AVX-512 (F/BW/VL/DQ) build of the kernels with 512-bit vectors. VNNI is left for the
 * int8 kernels; nothing here is integer dot products. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2,prefer-vector-width=512")
#define SM_SUFFIX avx512
#define SM_ISA_NAME "avx512"
#define SM_LINEAR_AVX2 1
#include "kernels_impl.h"
#endif
