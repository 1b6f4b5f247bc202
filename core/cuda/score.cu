// cuda/score.cu — CUDA kernels of issue 4's estimators (score.pooled, score.rows, score.last_q, score.exact),
// reductions (reduce.columns, reduce.diagonals, reduce.block, reduce.heads) and selectors (select.topk,
// select.topp, select.threshold), with their host side (every tensor staged to the device and back per call, as
// backend.cu does). Plain kernels: pooling one CTA per block, scores one CTA per output row with block-wide
// max/sum reductions, score.exact one CTA per query block (a log-sum-exp pass, then a second pass folding the
// probabilities into key blocks in shared memory), reductions one thread per output, selectors one CTA per row:
// each entry gets a unique 64-bit key (value order, then lower index first), top-k finds the k-th largest key by
// a bitwise search and top-p searches the shortest prefix by bisection on its length. Compiled with
// `make CUDA=1`; unverified on a device.
#include "dialect.cuh"
#include "score.cuh"

extern "C" {
#include "../internal.h"
}

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

const char *op_name(const sl__kargs *a) { return sl_op_info_get(a->op)->name; }

sl_status fail(const sl__kargs *a, cudaError_t err, const char *what)
{
    return sl_ctx_fail(a->ctx, err == cudaErrorMemoryAllocation ? SL_EDEVMEM : SL_EDEVICE, "%s[cuda]: %s: %s",
                       op_name(a), what, cudaGetErrorString(err));
}

// Device copies of a call's inputs and outputs plus scratch, freed on every path.
struct staged {
    void *in[SL_OP_MAX_INPUTS] = {};
    void *out[4] = {};
    void *scratch = nullptr;
    ~staged()
    {
        for (void *p : in)
            cudaFree(p);
        for (void *p : out)
            cudaFree(p);
        cudaFree(scratch);
    }
};

sl_status stage(const sl__kargs *a, staged *st, size_t scratch_bytes)
{
    const sl_op_info *info = sl_op_info_get(a->op);
    (void)cudaGetLastError();  // a stale error from earlier work must not be blamed on this call
    for (int i = 0; i < info->n_in; i++) {
        size_t bytes = a->in[i].buf ? sl_tensor_nbytes(&a->in[i]) : 0;
        if (!bytes)
            continue;
        cudaError_t err = cudaMalloc(&st->in[i], bytes);
        if (err == cudaSuccess)
            err = cudaMemcpy(st->in[i], a->in[i].data, bytes, cudaMemcpyHostToDevice);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            return fail(a, err, "staging an input");
        }
    }
    for (int i = 0; i < info->n_out; i++) {
        size_t bytes = sl_tensor_nbytes(&a->out[i]);
        if (!bytes)
            continue;
        cudaError_t err = cudaMalloc(&st->out[i], bytes);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            return fail(a, err, "allocating an output");
        }
    }
    if (scratch_bytes) {
        cudaError_t err = cudaMalloc(&st->scratch, scratch_bytes);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            return fail(a, err, "allocating scratch");
        }
    }
    return SL_OK;
}

sl_status finish(const sl__kargs *a, staged *st)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fail(a, err, "kernel launch failed");
    if ((err = cudaStreamSynchronize(0)) != cudaSuccess)
        return fail(a, err, "kernel failed");
    const sl_op_info *info = sl_op_info_get(a->op);
    for (int i = 0; i < info->n_out; i++) {
        size_t bytes = sl_tensor_nbytes(&a->out[i]);
        if (bytes && (err = cudaMemcpy(a->out[i].data, st->out[i], bytes, cudaMemcpyDeviceToHost)) != cudaSuccess)
            return fail(a, err, "copying an output to the host");
    }
    return SL_OK;
}

sl_status too_big(const sl__kargs *a, const char *what)
{
    return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: %s", op_name(a), what);
}

int grid_of(int64_t n) { return (int)((n + kThreads - 1) / kThreads); }

// ---- block-wide reductions (every thread gets the result) ----

template <typename T> __device__ T block_max(T x, T *sh)
{
    for (int w = 16; w > 0; w /= 2) {
        T y = __shfl_xor_sync(0xffffffffu, x, w);
        x = y > x ? y : x;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        sh[threadIdx.x / 32] = x;
    __syncthreads();
    T m = sh[0];
    for (int i = 1; i < kWarps; i++)
        m = sh[i] > m ? sh[i] : m;
    return m;
}

template <typename T> __device__ T block_sum(T x, T *sh)
{
    for (int w = 16; w > 0; w /= 2)
        x += __shfl_xor_sync(0xffffffffu, x, w);
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        sh[threadIdx.x / 32] = x;
    __syncthreads();
    T s = 0;
    for (int i = 0; i < kWarps; i++)
        s += sh[i];
    return s;
}

// Softmax in place over row[0, vis) (vis >= 1), zeros in row[vis, n).
__device__ void row_softmax(float *row, int64_t vis, int64_t n, float *shf)
{
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < vis; j += kThreads)
        m = fmaxf(m, row[j]);
    m = block_max(m, shf);
    float s = 0;
    for (int64_t j = threadIdx.x; j < vis; j += kThreads)
        s += expf(row[j] - m);
    s = block_sum(s, shf);
    for (int64_t j = threadIdx.x; j < n; j += kThreads)
        row[j] = j < vis ? expf(row[j] - m) / s : 0.f;
}

// ---- score.pooled ----

// One CTA per block of rows: hi = mean (or max), lo = min of each channel.
__global__ void pool_kernel(const float *x, int64_t n, int64_t d, int64_t b, int64_t nb, int pool, int pad, float *hi,
                            float *lo)
{
    int64_t item = blockIdx.x, h = item / nb, c = item % nb, r0 = c * b, r1 = min(r0 + b, n);
    const float *xh = x + h * n * d;
    for (int64_t t = threadIdx.x; t < d; t += kThreads) {
        float s = 0, mx = -INFINITY, mn = INFINITY;
        for (int64_t r = r0; r < r1; r++) {
            float v = xh[r * d + t];
            s += v;
            mx = fmaxf(mx, v);
            mn = fminf(mn, v);
        }
        hi[item * d + t] = pool == 0 ? s / (float)(pad ? b : r1 - r0) : mx;
        if (pool == 2)
            lo[item * d + t] = mn;
    }
}

struct pooled_args {
    const float *qhi, *qlo, *khi, *klo;
    float *out;
    int64_t nq, nk, d, bq, bk, nqb, nkb, group, offset;
    float scale;
    int pool, causal, softmax;
};

__global__ void pooled_kernel(pooled_args a)
{
    SL_SHARED(float, shf, [kWarps]);
    int64_t item = blockIdx.x, h = item / a.nqb, r = item % a.nqb, g = h / a.group;
    const float *qa = a.qhi + item * a.d, *qb = a.qlo + item * a.d;
    float *row = a.out + item * a.nkb;
    int64_t vis = a.nkb;
    if (a.causal)
        vis = min(a.nkb, (a.offset + min((r + 1) * a.bq, a.nq) - 1) / a.bk + 1);
    for (int64_t c = threadIdx.x; c < a.nkb; c += kThreads) {
        const float *ka = a.khi + (g * a.nkb + c) * a.d, *kb = a.klo + (g * a.nkb + c) * a.d;
        float s = 0;
        for (int64_t t = 0; t < a.d; t++) {
            if (a.pool == 2) {
                float m = fmaxf(fmaxf(qa[t] * ka[t], qa[t] * kb[t]), fmaxf(qb[t] * ka[t], qb[t] * kb[t]));
                s += m;
            } else
                s += qa[t] * ka[t];
        }
        row[c] = c < vis ? a.scale * s : -INFINITY;
    }
    if (a.softmax) {
        __syncthreads();
        if (vis > 0)
            row_softmax(row, vis, a.nkb, shf);
    }
}

// ---- score.rows, score.last_q ----

struct prob_args {
    const float *q, *k;
    const int32_t *rows;  // null: rows first .. first + n_rows - 1
    float *out;
    int64_t hq, nq, nk, d, group, offset, first, n_rows;
    float scale;
    int causal;
};

__global__ void prob_kernel(prob_args a)
{
    SL_DYN_SMEM(float, qs);
    SL_SHARED(float, shf, [kWarps]);
    int64_t item = blockIdx.x, h = item / a.n_rows, t = item % a.n_rows;
    int64_t r = a.rows ? a.rows[t] : a.first + t;
    const float *qr = a.q + (h * a.nq + r) * a.d, *kh = a.k + (h / a.group) * a.nk * a.d;
    for (int64_t c = threadIdx.x; c < a.d; c += kThreads)
        qs[c] = qr[c];
    __syncthreads();
    int64_t lim = a.causal ? min(a.offset + r + 1, a.nk) : a.nk;
    float *row = a.out + item * a.nk;
    for (int64_t j = threadIdx.x; j < lim; j += kThreads) {
        float s = 0;
        for (int64_t c = 0; c < a.d; c++)
            s += qs[c] * kh[j * a.d + c];
        row[j] = a.scale * s;
    }
    __syncthreads();
    if (lim > 0)
        row_softmax(row, lim, a.nk, shf);
}

// ---- score.exact ----

struct exact_args {
    const float *q, *k;
    float *out;
    int64_t nq, nk, d, group, offset, bq, bk, nqb, nkb;
    float scale;
    int causal, reduce, normalize;
};

__global__ void exact_kernel(exact_args a)
{
    SL_DYN_SMEM(float, sh);  // d floats of q, then nkb accumulators
    SL_SHARED(float, shf, [kWarps]);
    float *qs = sh, *acc = sh + a.d;
    int64_t item = blockIdx.x, h = item / a.nqb, rb = item % a.nqb;
    const float *kh = a.k + (h / a.group) * a.nk * a.d;
    for (int64_t c = threadIdx.x; c < a.nkb; c += kThreads)
        acc[c] = 0;
    for (int64_t i = rb * a.bq; i < min((rb + 1) * a.bq, a.nq); i++) {
        __syncthreads();
        for (int64_t c = threadIdx.x; c < a.d; c += kThreads)
            qs[c] = a.q[(h * a.nq + i) * a.d + c];
        __syncthreads();
        int64_t lim = a.causal ? min(a.offset + i + 1, a.nk) : a.nk;
        // pass one: the row's log-sum-exp by an online max and sum per thread
        float m = -INFINITY, l = 0;
        for (int64_t j = threadIdx.x; j < lim; j += kThreads) {
            float s = 0;
            for (int64_t c = 0; c < a.d; c++)
                s += qs[c] * kh[j * a.d + c];
            s *= a.scale;
            if (s > m) {
                l = l * expf(m - s) + 1.f;
                m = s;
            } else
                l += expf(s - m);
        }
        float bm = block_max(m, shf);
        float bl = block_sum(m == -INFINITY ? 0.f : l * expf(m - bm), shf);
        float lse = bm + logf(bl);
        // pass two: probabilities into their key blocks
        for (int64_t j = threadIdx.x; j < lim; j += kThreads) {
            float s = 0;
            for (int64_t c = 0; c < a.d; c++)
                s += qs[c] * kh[j * a.d + c];
            float p = expf(a.scale * s - lse);
            if (a.reduce == 0)
                atomicAdd(&acc[j / a.bk], p);
            else  // p >= 0: the int order of its bits is the float order
                atomicMax(reinterpret_cast<int *>(&acc[j / a.bk]), __float_as_int(p));
        }
    }
    __syncthreads();
    float tot = 0;
    for (int64_t c = threadIdx.x; c < a.nkb; c += kThreads)
        tot += acc[c];
    tot = block_sum(tot, shf);
    float *row = a.out + item * a.nkb;
    for (int64_t c = threadIdx.x; c < a.nkb; c += kThreads)
        row[c] = a.normalize && tot > 0 ? acc[c] / tot : acc[c];
}

// ---- reductions ----

__global__ void columns_kernel(const float *x, float *y, int64_t H, int64_t R, int64_t C)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= H * C)
        return;
    int64_t h = i / C, j = i % C;
    double s = 0;
    for (int64_t r = 0; r < R; r++)
        s += x[(h * R + r) * C + j];
    y[i] = (float)s;
}

__global__ void diagonals_kernel(const float *x, float *y, int64_t H, int64_t R, int64_t C, int64_t pos0)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= H * C)
        return;
    int64_t h = i / C, o = i % C;
    double s = 0;
    for (int64_t r = 0; r < R; r++) {
        int64_t j = pos0 + r - o;
        if (j >= 0 && j < C)
            s += x[(h * R + r) * C + j];
    }
    y[i] = (float)s;
}

__global__ void block_kernel(const float *x, float *y, int64_t H, int64_t R, int64_t C, int64_t br, int64_t bc,
                             int64_t nr, int64_t nc, int mode)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= H * nr * nc)
        return;
    int64_t h = i / (nr * nc), a = i / nc % nr, b = i % nc;
    int64_t r1 = min((a + 1) * br, R), c1 = min((b + 1) * bc, C);
    double s = mode == 1 ? -INFINITY : 0;
    for (int64_t r = a * br; r < r1; r++)
        for (int64_t c = b * bc; c < c1; c++) {
            double v = x[(h * R + r) * C + c];
            s = mode == 1 ? fmax(s, v) : s + v;
        }
    y[i] = (float)(mode == 2 ? s / (double)((r1 - a * br) * (c1 - b * bc)) : s);
}

__global__ void heads_kernel(const float *x, float *y, int64_t n_out, int64_t RC, int64_t g, int mode)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= n_out * RC)
        return;
    int64_t o = i / RC, e = i % RC;
    double s = mode == 1 ? -INFINITY : 0;
    for (int64_t h = o * g; h < (o + 1) * g; h++) {
        double v = x[h * RC + e];
        s = mode == 1 ? fmax(s, v) : s + v;
    }
    y[i] = (float)(mode == 2 ? s / (double)g : s);
}

// ---- selectors ----

// A key per entry whose unsigned order is the row's order: the value's bits
// made monotone in the high word, the complemented index in the low word (a
// lower index wins a tie). -inf gets key 0: never counted; finite keys are >= 1.
__device__ uint64_t entry_key(float v, int64_t j)
{
    if (v == -INFINITY)
        return 0;
    uint32_t u = v == 0.f ? 0u : __float_as_uint(v);  // -0 ties with +0, as the host's comparison sort has it
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)u << 32) | (uint64_t)(0xffffffffu - (uint32_t)j);
}

// Entries of row with key >= t (t > 0), block-wide.
__device__ int64_t count_ge(const float *row, int64_t C, uint64_t t, unsigned long long *shu)
{
    unsigned long long n = 0;
    for (int64_t j = threadIdx.x; j < C; j += kThreads)
        n += entry_key(row[j], j) >= t;
    return (int64_t)block_sum(n, shu);
}

// The k-th largest key of the row (1 <= k <= finite entries): the largest t
// with count_ge(t) >= k, found bit by bit from the top.
__device__ uint64_t kth_key(const float *row, int64_t C, int64_t k, unsigned long long *shu)
{
    uint64_t t = 0;
    for (int bit = 63; bit >= 0; bit--) {
        uint64_t c = t | ((uint64_t)1 << bit);
        if (count_ge(row, C, c, shu) >= k)
            t = c;
    }
    return t;
}

struct select_args {
    const float *x;
    const void *opt;   // opt.k (i32) or opt.p (f32) per head, or null
    uint8_t *keep;
    int64_t rph, C;
    int64_t k;
    double ratio, p, t;
    int normalize, relative;
};

__global__ void topk_kernel(select_args a)
{
    SL_SHARED(unsigned long long, shu, [kWarps]);
    int64_t item = blockIdx.x;
    const float *row = a.x + item * a.C;
    uint8_t *keep = a.keep + item * a.C;
    int64_t finite = 0;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        finite += row[j] != -INFINITY;
    finite = (int64_t)block_sum((unsigned long long)finite, shu);
    int64_t k = a.k;
    if (a.opt)
        k = static_cast<const int32_t *>(a.opt)[item / a.rph];
    else if (a.ratio > 0)
        k = (int64_t)ceil(a.ratio * (double)finite - 1e-9);
    k = k < finite ? k : finite;
    uint64_t t = k > 0 ? kth_key(row, a.C, k, shu) : ~(uint64_t)0;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        keep[j] = k > 0 && entry_key(row[j], j) >= t;
}

// Mass of the entries with key >= t (double, block-wide).
__device__ double mass_ge(const float *row, int64_t C, uint64_t t, int normalize, float m, double *shd)
{
    double s = 0;
    for (int64_t j = threadIdx.x; j < C; j += kThreads)
        if (entry_key(row[j], j) >= t)
            s += normalize ? exp((double)row[j] - (double)m) : (double)row[j];
    return block_sum(s, shd);
}

__global__ void topp_kernel(select_args a)
{
    SL_SHARED(unsigned long long, shu, [kWarps]);
    SL_SHARED(double, shd, [kWarps]);
    SL_SHARED(float, shf, [kWarps]);
    int64_t item = blockIdx.x;
    const float *row = a.x + item * a.C;
    uint8_t *keep = a.keep + item * a.C;
    float m = -INFINITY;
    int64_t finite = 0;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads) {
        m = fmaxf(m, row[j]);
        finite += row[j] != -INFINITY;
    }
    m = block_max(m, shf);
    finite = (int64_t)block_sum((unsigned long long)finite, shu);
    double p = a.opt ? (double)static_cast<const float *>(a.opt)[item / a.rph] : a.p;
    double target = p * (finite > 0 ? mass_ge(row, a.C, 1, a.normalize, m, shd) : 0);
    // the shortest prefix of length n with mass >= target (0 when target is 0)
    int64_t lo = 0, hi = finite;
    if (target > 0)
        while (lo < hi) {
            int64_t mid = (lo + hi) / 2;
            double s = mid > 0 ? mass_ge(row, a.C, kth_key(row, a.C, mid, shu), a.normalize, m, shd) : 0;
            if (s >= target)
                hi = mid;
            else
                lo = mid + 1;
        }
    else
        lo = 0;
    uint64_t t = lo > 0 ? kth_key(row, a.C, lo, shu) : ~(uint64_t)0;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        keep[j] = lo > 0 && entry_key(row[j], j) >= t;
}

__global__ void threshold_kernel(select_args a)
{
    SL_SHARED(float, shf, [kWarps]);
    int64_t item = blockIdx.x;
    const float *row = a.x + item * a.C;
    uint8_t *keep = a.keep + item * a.C;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        m = fmaxf(m, row[j]);
    m = block_max(m, shf);
    double t = a.relative ? a.t * (double)m : a.t;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        keep[j] = row[j] != -INFINITY && (double)row[j] >= t;
}

// ---- host side ----

bool grid_ok(int64_t n) { return n <= INT32_MAX; }

}  // namespace

sl_status sl__cuda_score_pooled(const sl__kargs *a)
{
    const sl_score_pooled_params *p = static_cast<const sl_score_pooled_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t nqb = (dm.nq + p->bq - 1) / p->bq, nkb = (dm.nk + p->bk - 1) / p->bk;
    if (!grid_ok(dm.hq * nqb) || !grid_ok(dm.hkv * nkb))
        return too_big(a, "more than 2^31 - 1 blocks");
    if (dm.hq * nqb == 0)
        return SL_OK;
    size_t qf = (size_t)(dm.hq * nqb * dm.d), kf = (size_t)(dm.hkv * nkb * dm.d);
    staged st;
    sl_status s = stage(a, &st, 2 * (qf + kf) * sizeof(float));
    if (s)
        return s;
    float *qhi = static_cast<float *>(st.scratch), *qlo = qhi + qf, *khi = qlo + qf, *klo = khi + kf;
    const float *q = static_cast<const float *>(st.in[0]), *k = static_cast<const float *>(st.in[1]);
    SL_LAUNCH(pool_kernel, (int)(dm.hq * nqb), kThreads, 0, 0)(q, dm.nq, dm.d, p->bq, nqb, (int)p->pool, (int)p->pad, qhi, qlo);
    if (nkb > 0)
        SL_LAUNCH(pool_kernel, (int)(dm.hkv * nkb), kThreads, 0, 0)(k, dm.nk, dm.d, p->bk, nkb, (int)p->pool, (int)p->pad, khi, klo);
    pooled_args pa = {qhi, qlo, khi, klo, static_cast<float *>(st.out[0]), dm.nq, dm.nk, dm.d, p->bq, p->bk, nqb, nkb,
                      dm.group, dm.offset, (float)dm.scale, (int)p->pool, (int)p->causal, (int)p->softmax};
    SL_LAUNCH(pooled_kernel, (int)(dm.hq * nqb), kThreads, 0, 0)(pa);
    return finish(a, &st);
}

static sl_status cuda_prob_rows(const sl__kargs *a, double scale, int causal, bool listed, int64_t first,
                                int64_t n_rows)
{
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale);
    if (!grid_ok(dm.hq * n_rows))
        return too_big(a, "more than 2^31 - 1 output rows");
    if (dm.d * sizeof(float) > 32768)
        return too_big(a, "head_dim over 8192");
    if (dm.hq * n_rows == 0)
        return SL_OK;
    staged st;
    sl_status s = stage(a, &st, 0);
    if (s)
        return s;
    prob_args pa = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                    listed ? static_cast<const int32_t *>(st.in[2]) : nullptr, static_cast<float *>(st.out[0]), dm.hq,
                    dm.nq, dm.nk, dm.d, dm.group, dm.offset, first, n_rows, (float)dm.scale, causal};
    SL_LAUNCH(prob_kernel, (int)(dm.hq * n_rows), kThreads, (size_t)dm.d * sizeof(float), 0)(pa);
    return finish(a, &st);
}

sl_status sl__cuda_score_rows(const sl__kargs *a)
{
    const sl_score_rows_params *p = static_cast<const sl_score_rows_params *>(a->params);
    return cuda_prob_rows(a, p->scale, (int)p->causal, true, 0, a->in[2].shape[0]);
}

sl_status sl__cuda_score_last_q(const sl__kargs *a)
{
    const sl_score_last_q_params *p = static_cast<const sl_score_last_q_params *>(a->params);
    int64_t nq = a->in[0].shape[1], n = p->last < nq ? p->last : nq;
    return cuda_prob_rows(a, p->scale, (int)p->causal, false, nq - n, n);
}

sl_status sl__cuda_score_exact(const sl__kargs *a)
{
    const sl_score_exact_params *p = static_cast<const sl_score_exact_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t nqb = (dm.nq + p->bq - 1) / p->bq, nkb = (dm.nk + p->bk - 1) / p->bk;
    size_t shm = (size_t)(dm.d + nkb) * sizeof(float);
    if (shm > 48 * 1024)
        return too_big(a, "head_dim + key blocks over 12288 (shared memory)");
    if (!grid_ok(dm.hq * nqb))
        return too_big(a, "more than 2^31 - 1 blocks");
    if (dm.hq * nqb == 0)
        return SL_OK;
    staged st;
    sl_status s = stage(a, &st, 0);
    if (s)
        return s;
    exact_args ea = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                     static_cast<float *>(st.out[0]), dm.nq, dm.nk, dm.d, dm.group, dm.offset, p->bq, p->bk, nqb, nkb,
                     (float)dm.scale, (int)p->causal, (int)p->reduce, (int)p->normalize};
    SL_LAUNCH(exact_kernel, (int)(dm.hq * nqb), kThreads, shm, 0)(ea);
    return finish(a, &st);
}

// The reductions: one thread per output element.
static sl_status run_reduce(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], R = x->shape[1], C = x->shape[2], n = sl_tensor_numel(&a->out[0]);
    if (!grid_ok(grid_of(n)) || n > ((int64_t)1 << 40))
        return too_big(a, "output too large");
    if (n == 0)
        return SL_OK;
    staged st;
    sl_status s = stage(a, &st, 0);
    if (s)
        return s;
    const float *xd = static_cast<const float *>(st.in[0]);
    float *y = static_cast<float *>(st.out[0]);
    if (sl_tensor_numel(x) == 0) {
        // nothing to read: sums are 0 (a max over no entries, -inf, cannot occur: tiles are never empty)
        if (cudaMemset(y, 0, (size_t)n * sizeof(float)) != cudaSuccess)
            return fail(a, cudaGetLastError(), "clearing the output");
        return finish(a, &st);
    }
    switch (a->op) {
    case SL_OP_REDUCE_COLUMNS: SL_LAUNCH(columns_kernel, grid_of(n), kThreads, 0, 0)(xd, y, H, R, C); break;
    case SL_OP_REDUCE_DIAGONALS: {
        const sl_reduce_diag_params *p = static_cast<const sl_reduce_diag_params *>(a->params);
        SL_LAUNCH(diagonals_kernel, grid_of(n), kThreads, 0, 0)(xd, y, H, R, C, p->row_pos0 < 0 ? C - R : p->row_pos0);
        break;
    }
    case SL_OP_REDUCE_BLOCK: {
        const sl_reduce_block_params *p = static_cast<const sl_reduce_block_params *>(a->params);
        int64_t nr = (R + p->br - 1) / p->br, nc = (C + p->bc - 1) / p->bc;
        SL_LAUNCH(block_kernel, grid_of(n), kThreads, 0, 0)(xd, y, H, R, C, p->br, p->bc, nr, nc, (int)p->mode);
        break;
    }
    default: {
        const sl_reduce_heads_params *p = static_cast<const sl_reduce_heads_params *>(a->params);
        int64_t g = p->group ? p->group : H;
        SL_LAUNCH(heads_kernel, grid_of(n), kThreads, 0, 0)(xd, y, H / g, R * C, g, (int)p->mode);
        break;
    }
    }
    return finish(a, &st);
}

sl_status sl__cuda_reduce_columns(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_diagonals(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_block(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_heads(const sl__kargs *a) { return run_reduce(a); }

// The selectors: one CTA per row.
static sl_status run_select(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t C = x->shape[x->ndim - 1], rph = x->ndim == 3 ? x->shape[1] : 1, rows = x->shape[0] * rph;
    if (!grid_ok(rows))
        return too_big(a, "more than 2^31 - 1 rows");
    if (C > 0xfffffffeLL)
        return too_big(a, "rows longer than 2^32 - 2");
    if (rows == 0 || C == 0)
        return SL_OK;
    staged st;
    sl_status s = stage(a, &st, 0);
    if (s)
        return s;
    select_args sa = {};
    sa.x = static_cast<const float *>(st.in[0]);
    sa.keep = static_cast<uint8_t *>(st.out[0]);
    sa.rph = rph;
    sa.C = C;
    if (a->op == SL_OP_SELECT_TOPK) {
        const sl_select_topk_params *p = static_cast<const sl_select_topk_params *>(a->params);
        sa.opt = st.in[1];
        sa.k = p->k;
        sa.ratio = p->ratio;
        SL_LAUNCH(topk_kernel, (int)rows, kThreads, 0, 0)(sa);
    } else if (a->op == SL_OP_SELECT_TOPP) {
        const sl_select_topp_params *p = static_cast<const sl_select_topp_params *>(a->params);
        sa.opt = st.in[1];
        sa.p = p->p;
        sa.normalize = (int)p->normalize;
        SL_LAUNCH(topp_kernel, (int)rows, kThreads, 0, 0)(sa);
    } else {
        const sl_select_threshold_params *p = static_cast<const sl_select_threshold_params *>(a->params);
        sa.t = p->t;
        sa.relative = (int)p->relative;
        SL_LAUNCH(threshold_kernel, (int)rows, kThreads, 0, 0)(sa);
    }
    return finish(a, &st);
}

sl_status sl__cuda_select_topk(const sl__kargs *a) { return run_select(a); }
sl_status sl__cuda_select_topp(const sl__kargs *a) { return run_select(a); }
sl_status sl__cuda_select_threshold(const sl__kargs *a) { return run_select(a); }
