/* AVX2 + FMA build of the kernels (selected at import when the CPU has them). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi2")
#define SM_SUFFIX avx2
#define SM_ISA_NAME "avx2"
#define SM_LINEAR_AVX2 1
#include "kernels_impl.h"
#endif
