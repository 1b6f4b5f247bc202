// cuda/kernels.cuh — what the CUDA backend's files share: the attention kernels' arguments and launchers.
#ifndef SL_CUDA_KERNELS_CUH
#define SL_CUDA_KERNELS_CUH

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

// attn.token_sparse and attn.rows (cuda/sparse.cu): device pointers and
// sizes; each split of the keys writes a partial (O, L) that sl__cuda_merge
// combines. part_o [n_split, hq, n_out, d], part_lse [n_split, hq, n_out].
struct sl__cuda_gather {
    const float *q, *k, *v;
    const float *bias;   // [bias_heads, nq, nk] or null
    float *part_o, *part_lse;
    int hq, hkv, nq, nk, d, n_out, bias_heads, n_split;
    float scale_log2;
    const int32_t *row_ptr, *col;  // token_sparse: index lists (see sparselab.h)
    int hm, n_e, b, n_rg;          // list heads, entries, rows per entry, row groups per entry
    const int32_t *rows, *limits;  // attn.rows: [hr, n_out] each
    int hr;
};

// O, L of rows rows from n_part partials (o1 [n_part, rows, d], lse1 [n_part,
// rows]) and an optional pair (o2, lse2; null when absent), by log-sum-exp.
struct sl__cuda_merge_args {
    const float *o1, *lse1, *o2, *lse2;
    float *o, *lse;
    int64_t rows;
    int d, n_part;
};

// NULL when the gather kernels handle these sizes, else why not.
const char *sl__cuda_gather_unsupported(int64_t hq, int64_t d, int64_t row_groups);
int sl__cuda_gather_rows_per_cta(void);
cudaError_t sl__cuda_token_sparse(const sl__cuda_gather &a, cudaStream_t st);
cudaError_t sl__cuda_rows(const sl__cuda_gather &a, cudaStream_t st);
cudaError_t sl__cuda_merge(const sl__cuda_merge_args &a, cudaStream_t st);

// correct.delta (cuda/correct.cu): device pointers of the staged inputs and
// outputs and the layout of sl_correct_delta_layout.
struct sl__cuda_delta {
    const float *o_sparse, *lse_sparse, *o_rows, *lse_rows;
    float *o, *lse;
    int64_t h, n, d, gamma, s_p, g_n, r_n;
    int smooth, mode;
};
cudaError_t sl__cuda_correct_delta(const sl__cuda_delta &a, cudaStream_t st);

// correct.rectify: staged inputs/outputs plus device scratch for the pooled
// blocks (kbar, kdev, vbar [hkv, nkb, d]; qbar, qdev [hq, nqb, d]), the pooled
// logits [hq, nqb, nkb] and a flag per block pair (1 in C, 2 restored).
struct sl__cuda_rectify {
    const float *q, *k, *v, *o_sparse;
    const int32_t *row_ptr, *col_idx;
    float *o, *r, *rest, *trusted;
    float *kbar, *kdev, *vbar, *qbar, *qdev, *score;
    uint8_t *flag;
    int hq, hkv, nq, nk, d, bq, bk, nqb, nkb, hm, causal, ipar, gapr;
    float scale;
};
cudaError_t sl__cuda_correct_rectify(const sl__cuda_rectify &a, cudaStream_t st);

// correct.compensate: cum [hkv, nk, d] scratch (prefix sums of V) when vmc.
struct sl__cuda_comp {
    const float *o_in, *lse, *lse_ref, *v;
    float *o, *lse_out, *lost, *cum;
    int hq, hkv, nq, nk, d, estimate, vmc, causal;
    int64_t min_len;
    double sdc_scale;
};
cudaError_t sl__cuda_correct_compensate(const sl__cuda_comp &a, cudaStream_t st);

// correct.smooth_k: mean [hkv, d] scratch; lse null when left out.
struct sl__cuda_smooth {
    const float *q, *k, *lse;
    float *k_out, *lse_out, *mean;
    int hq, hkv, nq, nk, d;
    float scale;
};
cudaError_t sl__cuda_correct_smooth_k(const sl__cuda_smooth &a, cudaStream_t st);

// correct.lepe: w null when left out (uniform 1/kernel).
struct sl__cuda_lepe {
    const float *o_in, *v, *w;
    float *o;
    int hq, hkv, nq, nk, d, kernel, causal, w_heads;
    float alpha;
};
cudaError_t sl__cuda_correct_lepe(const sl__cuda_lepe &a, cudaStream_t st);

#endif
