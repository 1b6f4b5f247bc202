// cuda/correct.cuh — the correction kernels of cuda/correct.cu: their arguments and launchers.
#ifndef SL_CUDA_CORRECT_CUH
#define SL_CUDA_CORRECT_CUH

#include <cuda_runtime.h>
#include <stdint.h>

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
