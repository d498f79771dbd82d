/* Portable build of the kernels: the compiler's baseline ISA for the target. */
#define SM_SUFFIX generic
#define SM_ISA_NAME "generic"
#include "kernels_impl.h"
