/* Portable build of the GEMM micro-kernel: the compiler's baseline ISA. */
#define SM_GSUFFIX generic
#define SM_GISA_NAME "generic"
#include "gemm_impl.h"
