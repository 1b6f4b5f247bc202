// cuda/correct_ext.cuh — host entry points of cuda/correct_ext.cu (the ops of issue 5 for cards re_ttention,
// flashblock, salad and psa_pyramid), for backend.cu's kernel table.
#ifndef SL_CUDA_CORRECT_EXT_CUH
#define SL_CUDA_CORRECT_EXT_CUH

extern "C" {
#include "../internal.h"
}

sl_status sl__cuda_correct_reshape(const sl__kargs *a);
sl_status sl__cuda_correct_cache_reuse(const sl__kargs *a);
sl_status sl__cuda_correct_linear_branch(const sl__kargs *a);
sl_status sl__cuda_attn_linear(const sl__kargs *a);
sl_status sl__cuda_attn_pooled_kv(const sl__kargs *a);

#endif
