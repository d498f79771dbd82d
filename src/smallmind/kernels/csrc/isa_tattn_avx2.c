/* AVX2 + FMA build of the training attention (AVX-512 machines run it too: no AVX-512
 * variant is dispatched until one is measured on such a machine). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi2")
#define SM_TSUFFIX avx2
#define SM_TISA_NAME "avx2"
#include "train_attention_impl.h"
#endif
