/* Portable build of the training attention: the compiler's baseline ISA. */
#define SM_TSUFFIX generic
#define SM_TISA_NAME "generic"
#include "train_attention_impl.h"
