// cuda/attn.cuh — the attention kernels of cuda/attn.cu: their arguments and launchers.
#ifndef SL_CUDA_ATTN_CUH
#define SL_CUDA_ATTN_CUH

#include <cuda_runtime.h>
#include <stdint.h>

// Device pointers and sizes of one attention call (validated and range-checked
// by the caller). Tensors are contiguous f32: q [hq, nq, d], k and v [hkv, nk, d],
// o [hq, nq, d], lse [hq, nq]. The mask fields are read by attn.block_sparse
// and attn.vs_mixed, the list and option fields by attn.vs_mixed only.
struct sl__cuda_attn {
    const float *q, *k, *v;
    float *o, *lse;
    int hq, hkv, nq, nk, d;
    int causal;          // attn.dense: key j visible to row r iff j <= nk - nq + r
    float scale_log2;    // score scale times log2(e): softmax runs in base 2
    const int32_t *row_ptr, *col_idx, *part;  // the block mask (see sl_mask)
    const uint8_t *bits;
    int hm, bq, bk, n_qb;
    float pv_skip_log2;  // attn.block_sparse's pv_skip times log2(e); 0 = off
    const int32_t *list_ptr, *list_col;  // attn.vs_mixed: index lists, one entry per mask query block
    int hl;                              // list heads
    const float *bias;                   // [bias_heads, nq, nk] or null
    int bias_heads;
    const float *state_o, *state_lse;    // [hq, nq, d], [hq, nq] or null
};

// NULL when the kernels handle these sizes, else why not (one phrase). bq and
// n_qb are the block mask's (0 for attn.dense).
const char *sl__cuda_attn_unsupported(int64_t hq, int64_t nq, int64_t nk, int64_t d, int64_t bq, int64_t n_qb);
// Launch on stream st; return the launch's error (execution errors surface at the next sync).
cudaError_t sl__cuda_attn_dense(const sl__cuda_attn &a, cudaStream_t st);
// attn.block_sparse, with pv_skip when pv_skip_log2 > 0; attn.vs_mixed when list_ptr is set.
cudaError_t sl__cuda_attn_block_sparse(const sl__cuda_attn &a, cudaStream_t st);

#endif
