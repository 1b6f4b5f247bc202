// cuda/act.cu — the act family on CUDA (issue 17): act.topk one CTA per row
// (a bitwise search for the k-th largest key, keys monotone in the score,
// then the entries above it and the first ties in index order over
// per-thread contiguous chunks), act.threshold one thread per entry,
// act.delta one thread per channel through the steps.
// Compiled with `make CUDA=1`; run under the CUDA simulator by
// `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "../act_quantile.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace {

constexpr int kThreads = 256;

// unsigned order = score order: |x| (abs) or x
__device__ uint32_t score_key(float v, bool abs_rank)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    if (abs_rank)
        return b & 0x7fffffffu;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ unsigned long long block_sum(unsigned long long v, unsigned long long *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long s = 0;
        for (int i = 0; i < kThreads; i++)
            s += sh[i];
        sh[kThreads] = s;
    }
    __syncthreads();
    unsigned long long s = sh[kThreads];
    __syncthreads();
    return s;
}

__global__ void topk_kernel(const float *x, float *y, int64_t m, int64_t k, bool abs_rank)
{
    SL_SHARED(unsigned long long, sh, [kThreads + 1]);
    const float *r = x + (int64_t)blockIdx.x * m;
    float *o = y + (int64_t)blockIdx.x * m;
    int t = threadIdx.x;
    uint32_t theta = 0;
    for (int b = 31; b >= 0; b--) {
        uint32_t cand = theta | (1u << b);
        unsigned long long c = 0;
        for (int64_t i = t; i < m; i += kThreads)
            c += score_key(r[i], abs_rank) >= cand;
        if (block_sum(c, sh) >= (unsigned long long)k)
            theta = cand;
    }
    int64_t chunk = (m + kThreads - 1) / kThreads, lo = t * chunk, hi = lo + chunk < m ? lo + chunk : m;
    unsigned long long above = 0, ties = 0;
    for (int64_t i = lo; i < hi; i++) {
        uint32_t key = score_key(r[i], abs_rank);
        above += key > theta;
        ties += key == theta;
    }
    unsigned long long total_above = block_sum(above, sh);
    sh[t] = ties;
    __syncthreads();
    if (t == 0) {
        unsigned long long run = 0;
        for (int i = 0; i < kThreads; i++) {
            unsigned long long c = sh[i];
            sh[i] = run;
            run += c;
        }
    }
    __syncthreads();
    long long quota = (long long)k - (long long)total_above - (long long)sh[t];
    for (int64_t i = lo; i < hi; i++) {
        uint32_t key = score_key(r[i], abs_rank);
        bool keep = k > 0 && (key > theta || (key == theta && quota-- > 0));
        o[i] = keep ? r[i] : 0.f;
    }
}

__global__ void threshold_kernel(const float *x, const float *th, float *y, int64_t n, int64_t m)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e < n)
        y[e] = fabsf(x[e]) >= th[e % m] ? x[e] : 0.f;
}

// one thread per channel through the steps
__global__ void delta_kernel(const float *x, const float *th, float *delta, float *xhat, int64_t T, int64_t m)
{
    int64_t j = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (j >= m)
        return;
    float ref = x[j];
    delta[j] = ref;
    xhat[j] = ref;
    for (int64_t t = 1; t < T; t++) {
        float d = x[t * m + j] - ref, sent = fabsf(d) > th[j] ? d : 0.f;
        ref += sent;
        delta[t * m + j] = sent;
        xhat[t * m + j] = ref;
    }
}

}  // namespace

sl_status sl__cuda_act_topk(const sl__kargs *a)
{
    const sl_act_topk_params *p = (const sl_act_topk_params *)a->params;
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1];
    if (T > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 rows");
    if (T * m == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(topk_kernel, (unsigned)T, kThreads, 0, 0)(st.input<float>(0), st.output<float>(0), m,
                                                        p->k < m ? p->k : m, p->abs != 0);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

// act.stat_topk: one warp per row would reorder the sums; one thread per row
// keeps the reference's two float64 passes in order.
__global__ void stat_topk_kernel(const float *x, float *y, int64_t T, int64_t m, double q)
{
    int64_t t = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (t >= T)
        return;
    const float *r = x + t * m;
    double mu = 0, var = 0;
    for (int64_t j = 0; j < m; j++)
        mu += r[j];
    mu /= (double)m;
    for (int64_t j = 0; j < m; j++)
        var += ((double)r[j] - mu) * ((double)r[j] - mu);
    double theta = mu + sqrt(var / (double)m) * q;
    for (int64_t j = 0; j < m; j++) {
        double v = (double)r[j] - theta;
        y[t * m + j] = v > 0 ? (float)v : 0.f;
    }
}

sl_status sl__cuda_act_stat_topk(const sl__kargs *a)
{
    const sl_act_stat_params *p = (const sl_act_stat_params *)a->params;
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1];
    if (T * m == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(stat_topk_kernel, (unsigned)((T + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<float>(0), st.output<float>(0), T, m, sl__normal_quantile(p->sparsity));
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_act_threshold(const sl__kargs *a)
{
    int64_t n = sl_tensor_numel(&a->in[0]), m = a->in[0].shape[1];
    if (n > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^38 entries");
    if (n == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(threshold_kernel, (unsigned)((n + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.output<float>(0), n, m);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_act_delta(const sl__kargs *a)
{
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1];
    if (m > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^38 channels");
    if (T * m == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(delta_kernel, (unsigned)((m + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.output<float>(0), st.output<float>(1), T, m);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

// act.spark_score (issue 17, session 4): one thread per output entry, the
// partial dots summed in float64 in input order (the reference's order).
__global__ void spark_score_kernel(const float *x, const float *w1, const float *w3, float *z, int64_t T, int64_t D,
                                   int64_t N, int64_t r)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e >= T * N)
        return;
    int64_t t = e / N, j = e % N;
    double g = 0, u = 0;
    for (int64_t i = 0; i < r; i++)
        g += (double)x[t * D + i] * (double)w1[j * D + i];
    if (w3) {
        for (int64_t i = 0; i < r; i++)
            u += (double)x[t * D + i] * (double)w3[j * D + i];
        g = fabs(g / (1 + exp(-g)) * u);
    }
    z[e] = (float)g;
}

sl_status sl__cuda_act_spark_score(const sl__kargs *a)
{
    const sl_act_spark_params *p = (const sl_act_spark_params *)a->params;
    int64_t T = a->in[0].shape[0], D = a->in[0].shape[1], N = a->in[1].shape[0];
    int64_t n = T * N;
    if (n > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^38 scores");
    if (n == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    const float *w3 = a->in[2].buf ? st.input<float>(2) : nullptr;
    SL_LAUNCH(spark_score_kernel, (unsigned)((n + kThreads - 1) / kThreads), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), w3, st.output<float>(0), T, D, N,
        (int64_t)sl__act_spark_dims(p->r, D));
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
