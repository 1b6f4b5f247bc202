/* cuda/none.c — the cuda backend of a build without CUDA=1: never available, no kernels. */
#include "../internal.h"

#include <stddef.h>

static int none_available(void) { return 0; }
static const char *none_status(void) { return "built without CUDA=1"; }

static const sl__kernel_fn none_kernels[SL_OP__COUNT] = {NULL};

const sl__backend sl__backend_cuda = {"cuda", none_available, none_status, none_kernels, NULL, NULL};
