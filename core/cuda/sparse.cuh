// cuda/sparse.cuh — the gathered attention kernels of cuda/sparse.cu (attn.token_sparse, attn.rows) and the log-sum-exp merge.
#ifndef SL_CUDA_SPARSE_CUH
#define SL_CUDA_SPARSE_CUH

#include <cuda_runtime.h>
#include <stdint.h>

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

#endif
