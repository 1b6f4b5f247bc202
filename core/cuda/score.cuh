// cuda/score.cuh — host entry points of cuda/score.cu (the estimators, reductions and selectors of issue 4), for
// backend.cu's kernel table.
#ifndef SL_CUDA_SCORE_CUH
#define SL_CUDA_SCORE_CUH

extern "C" {
#include "../internal.h"
}

sl_status sl__cuda_score_pooled(const sl__kargs *a);
sl_status sl__cuda_score_last_q(const sl__kargs *a);
sl_status sl__cuda_score_rows(const sl__kargs *a);
sl_status sl__cuda_score_exact(const sl__kargs *a);
sl_status sl__cuda_reduce_columns(const sl__kargs *a);
sl_status sl__cuda_reduce_diagonals(const sl__kargs *a);
sl_status sl__cuda_reduce_block(const sl__kargs *a);
sl_status sl__cuda_reduce_heads(const sl__kargs *a);
sl_status sl__cuda_select_topk(const sl__kargs *a);
sl_status sl__cuda_select_topp(const sl__kargs *a);
sl_status sl__cuda_select_threshold(const sl__kargs *a);

#endif
