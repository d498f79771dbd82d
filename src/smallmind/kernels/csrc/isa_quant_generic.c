/* Portable build of the quantized-weight kernels: the compiler's baseline ISA. */
#define SM_QSUFFIX generic
#define SM_QISA_NAME "generic"
#include "quant_impl.h"
