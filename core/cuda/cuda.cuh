// cuda/cuda.cuh — the kernels of the cuda backend: every sl__cuda_<fn> of
// ops.def, generated from it. Each is defined in its family's file
// (cuda/<family>.cu); backend.cu builds the table from the same rows.
#ifndef SL_CUDA_CUH
#define SL_CUDA_CUH

extern "C" {
#include "../internal.h"
}

#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc) sl_status sl__cuda_##fn(const sl__kargs *a);
#include "../ops.def"
#undef SL_OP

#endif
