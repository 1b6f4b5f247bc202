// cuda/stripe.cuh — host entry points of the CUDA kernels in stripe.cu
// (score.antidiag, score.strided, score.anchor, gather.rows), for backend.cu's kernel table.
#ifndef SL_CUDA_EXTRA_A_CUH
#define SL_CUDA_EXTRA_A_CUH

extern "C" {
#include "../internal.h"
}

sl_status sl__cuda_score_antidiag(const sl__kargs *a);
sl_status sl__cuda_score_strided(const sl__kargs *a);
sl_status sl__cuda_score_anchor(const sl__kargs *a);
sl_status sl__cuda_gather_rows(const sl__kargs *a);

#endif
