// cuda/token_score.cuh — host entry points of the CUDA kernels in token_score.cu
// (pool.tokens, score.lowbit, score.hash, attn.bucket), for backend.cu's kernel table.
#ifndef SL_CUDA_EXTRA2_CUH
#define SL_CUDA_EXTRA2_CUH

extern "C" {
#include "../internal.h"
}

sl_status sl__cuda_pool_tokens(const sl__kargs *a);
sl_status sl__cuda_score_lowbit(const sl__kargs *a);
sl_status sl__cuda_attn_bucket(const sl__kargs *a);
sl_status sl__cuda_score_hash(const sl__kargs *a);

#endif
