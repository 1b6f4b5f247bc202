// cuda/score.cu — the score family on CUDA (contracts in sparselab.h):
//   score.pooled    pooling one CTA per block, then one CTA per pooled query row;
//   score.rows,     one CTA per output row with block-wide max/sum reductions;
//   score.last_q
//   score.exact     one CTA per query block: a log-sum-exp pass, then a second
//                   pass folding the probabilities into key blocks in shared memory;
//   score.antidiag, one warp per score row (max, sum and scatter passes
//   score.strided,  recompute the dot products instead of storing the row),
//   score.anchor    atomics into the output tiles;
//   score.lowbit    quantised on the host by the contract's f32 rule (its own
//                   code: lowbit_quantise below), so the device sees exactly
//                   the values the contract defines; one CTA per block pair;
//   score.hash      one thread per token.
// Compiled with `make CUDA=1`; run under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "warp.cuh"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

bool grid_ok(int64_t n) { return n <= INT32_MAX; }

bool too_big(int64_t x) { return x > (1 << 30); }

// ---- score.pooled, score.rows, score.last_q, score.exact ----

// Softmax in place over row[0, vis) (vis >= 1), zeros in row[vis, n).
__device__ void row_softmax(float *row, int64_t vis, int64_t n, float *shf)
{
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < vis; j += kThreads)
        m = fmaxf(m, row[j]);
    m = block_max<kWarps>(m, shf);
    float s = 0;
    for (int64_t j = threadIdx.x; j < vis; j += kThreads)
        s += expf(row[j] - m);
    s = block_sum<kWarps>(s, shf);
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
        float bm = block_max<kWarps>(m, shf);
        float bl = block_sum<kWarps>(m == -INFINITY ? 0.f : l * expf(m - bm), shf);
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
    tot = block_sum<kWarps>(tot, shf);
    float *row = a.out + item * a.nkb;
    for (int64_t c = threadIdx.x; c < a.nkb; c += kThreads)
        row[c] = a.normalize && tot > 0 ? acc[c] / tot : acc[c];
}

// ---- score.antidiag, score.strided, score.anchor ----

// s(i, j) of score.antidiag: Σ_t q[iS+S-1-t]·k[jS+t], missing rows zero.
__device__ float antidiag_dot(const float *q, const float *k, int i, int j, int S, int nq, int nk, int d)
{
    float x = 0.f;
    for (int t = 0; t < S; t++) {
        int qi = i * S + S - 1 - t, kj = j * S + t;
        if (qi >= nq || kj >= nk)
            continue;
        const float *a = q + (size_t)qi * d, *b = k + (size_t)kj * d;
        for (int c = 0; c < d; c++)
            x += a[c] * b[c];
    }
    return x;
}

// One warp per (super-row i, head h): grid (Mq, Hq), 32 threads.
__global__ void antidiag_kernel(const float *q, const float *k, float *out, int nq, int nk, int d, int S, int B,
                                int group, int causal, int off, float scale, int nqb, int nkb)
{
    int i = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    int Mk = (nk + S - 1) / S;
    int n_vis = causal ? min(Mk, (off + i * S) / S + 1) : Mk;
    if (n_vis < 1)
        return;
    const float *qh = q + (size_t)h * nq * d, *kh = k + (size_t)(h / group) * nk * d;
    float m = -INFINITY;
    for (int j = lane; j < n_vis; j += 32)
        m = fmaxf(m, scale * antidiag_dot(qh, kh, i, j, S, nq, nk, d));
    m = warp_max(m);
    float z = 0.f;
    for (int j = lane; j < n_vis; j += 32)
        z += expf(scale * antidiag_dot(qh, kh, i, j, S, nq, nk, d) - m);
    z = warp_sum(z);
    float *row = out + ((size_t)h * nqb + (size_t)(i * S) / B) * nkb;
    for (int j = lane; j < n_vis; j += 32)
        atomicAdd(row + (j * S) / B, expf(scale * antidiag_dot(qh, kh, i, j, S, nq, nk, d) - m) / z);
}

__device__ float dot_rows(const float *a, const float *b, int d)
{
    float x = 0.f;
    for (int c = 0; c < d; c++)
        x += a[c] * b[c];
    return x;
}

// One warp per (sampled row i, head h); the max into a tile by integer
// atomicMax on the bits (probabilities are >= 0, so int order = float order).
__global__ void strided_kernel(const float *q, const float *k, float *out, int nq, int nk, int d, int S, int bq, int bk,
                               int group, int causal, int off, float scale, int nqb, int nkb)
{
    int i = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    int Mk = (nk + S - 1) / S;
    int n_vis = causal ? min(Mk, (off + i * S) / S + 1) : Mk;
    if (n_vis < 1)
        return;
    const float *qi = q + ((size_t)h * nq + (size_t)i * S) * d, *kh = k + (size_t)(h / group) * nk * d;
    float m = -INFINITY;
    for (int j = lane; j < n_vis; j += 32)
        m = fmaxf(m, scale * dot_rows(qi, kh + (size_t)j * S * d, d));
    m = warp_max(m);
    float z = 0.f;
    for (int j = lane; j < n_vis; j += 32)
        z += expf(scale * dot_rows(qi, kh + (size_t)j * S * d, d) - m);
    z = warp_sum(z);
    int *row = reinterpret_cast<int *>(out + ((size_t)h * nqb + (size_t)(i * S) / bq) * nkb);
    for (int j = lane; j < n_vis; j += 32) {
        float pr = expf(scale * dot_rows(qi, kh + (size_t)j * S * d, d) - m) / z;
        atomicMax(row + (j * S) / bk, __float_as_int(pr));
    }
}

// Anchors: one warp per (row i, head h): max over the structured keys.
__global__ void anchor_rows_kernel(const float *q, const float *k, float *anchor, int N, int d, int G, int group,
                                   int init_cnt, int local_cnt, float scale)
{
    int i = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    int b = i / G, init_end = init_cnt * G, local0 = max(0, (b - local_cnt + 1) * G);
    const float *qi = q + ((size_t)h * N + i) * d, *kh = k + (size_t)(h / group) * N * d;
    float m = -INFINITY;
    for (int j = lane; j <= i; j += 32)
        if (j < init_end || j >= local0)
            m = fmaxf(m, scale * dot_rows(qi, kh + (size_t)j * d, d));
    m = warp_max(m);
    if (lane == 0)
        anchor[(size_t)h * N + i] = m;
}

// Pooled queries and anchors: one thread block per (sub-block, big block, head).
__global__ void anchor_pool_kernel(const float *q, const float *anchor, float *qbar, float *xbar, int N, int d, int B,
                                   int G, int step, int nb)
{
    int t = blockIdx.x, b = blockIdx.y, h = blockIdx.z;
    int i0 = b * G + t * B, i1 = min(min(i0 + B, (b + 1) * G), N);
    if (i0 >= i1)
        return;
    size_t slot = ((size_t)h * nb + b) * step + t;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.f;
        for (int i = i0; i < i1; i++)
            acc += q[((size_t)h * N + i) * d + c];
        qbar[slot * d + c] = acc / (float)(i1 - i0);
    }
    if (threadIdx.x == 0) {
        float acc = 0.f;
        for (int i = i0; i < i1; i++)
            acc += anchor[(size_t)h * N + i];
        xbar[slot] = acc / (float)(i1 - i0);
    }
}

// The scan: one thread per (middle key j, big block b, head h).
__global__ void anchor_scan_kernel(const float *k, const float *qbar, const float *xbar, uint8_t *out, int N, int d,
                                   int B, int G, int step, int nb, int group, int init_cnt, int local_cnt,
                                   int overlap, float scale, float theta)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y, h = blockIdx.z;
    int r0 = b * G, nt = (min(r0 + G, N) - r0 + B - 1) / B;
    int local0 = max(0, (b - local_cnt + 1) * G);
    int m0 = overlap ? B : init_cnt * G, m1 = min(overlap ? local0 - B : local0, r0);
    if (j >= N || j < m0 || j >= m1)
        return;
    const float *kj = k + ((size_t)(h / group) * N + j) * d;
    size_t slot = ((size_t)h * nb + b) * step;
    uint8_t keep = 0;
    for (int t = 0; t < nt && !keep; t++)
        keep = scale * dot_rows(qbar + (slot + t) * d, kj, d) + theta >= xbar[slot + t];
    out[((size_t)h * nb + b) * N + j] = keep;
}

// ---- score.lowbit, score.hash ----

// score.lowbit's quantiser on the host (the contract in sparselab.h, in f32):
// per group of rows, step = max|x| / qmax, x~ = step . clamp(roundf(x / step)).
void lowbit_quantise(const float *x, int64_t rows, int64_t d, int64_t group, int bits, float *out)
{
    const int64_t n_all = rows * d;
    if (bits >= 16) {
        for (int64_t i = 0; i < n_all; i++)
            out[i] = x[i];
        return;
    }
    const float qmax = (float)((1 << (bits - 1)) - 1);
    for (int64_t first = 0; first < n_all; first += group * d) {
        const int64_t last = first + group * d < n_all ? first + group * d : n_all;
        float amax = 0.0f;
        for (int64_t i = first; i < last; i++)
            amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        float step = amax / qmax;
        if (step == 0.0f)
            step = 1.0f;  // an all-zero group, or one whose step underflows f32
        for (int64_t i = first; i < last; i++) {
            float level = roundf(x[i] / step);
            level = level > qmax ? qmax : (level < -qmax ? -qmax : level);
            out[i] = level * step;
        }
    }
}

// K' = K - mean over tokens per channel (double sums stored as f32); mean 0 without smoothing.
void lowbit_prepare(const float *k, int64_t nk, int64_t d, int smooth, float *ks, float *mean)
{
    for (int64_t c = 0; c < d; c++) {
        double acc = 0;
        if (smooth)
            for (int64_t t = 0; t < nk; t++)
                acc += k[t * d + c];
        mean[c] = smooth && nk > 0 ? (float)(acc / (double)nk) : 0.0f;
        for (int64_t t = 0; t < nk; t++)
            ks[t * d + c] = k[t * d + c] - mean[c];
    }
}

__global__ void lowbit_kernel(const float *qq, const float *kq, const float *corr, const float *lse, float *out,
                              int hq, int group, int nq, int nk, int d, int bq, int bk, int causal, float scale,
                              int nqb, int nkb, int qb0)
{
    SL_SHARED(float, red, [128]);
    // nqb: the output's query blocks, query block qb0 + blockIdx.y
    int c = blockIdx.x, r = qb0 + (int)blockIdx.y, h = blockIdx.z, off = nk - nq;
    const float *K = kq + (size_t)(h / group) * nk * d;
    float best = -INFINITY;
    for (int i = r * bq + threadIdx.x; i < min((r + 1) * bq, nq); i += blockDim.x) {
        float base = lse ? lse[(size_t)h * nq + i] : 0.f;
        if (base == -INFINITY)
            continue;
        int j1 = min((c + 1) * bk, nk);
        if (causal)
            j1 = min(j1, off + i + 1);
        const float *q = qq + ((size_t)h * nq + i) * d;
        float m = -INFINITY;
        for (int j = c * bk; j < j1; j++) {
            float s = 0.f;
            for (int t = 0; t < d; t++)
                s += q[t] * K[(size_t)j * d + t];
            m = fmaxf(m, s);
        }
        if (m > -INFINITY)
            best = fmaxf(best, (float)(((double)m + corr[(size_t)h * nq + i]) * scale - base));
    }
    red[threadIdx.x] = best;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w)
            red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
        __syncthreads();
    }
    if (threadIdx.x == 0)
        out[((size_t)h * nqb + blockIdx.y) * nkb + c] = red[0];
}

__global__ void hash_kernel(const float *x, const float *rot, int32_t *out, int hx, int hr, int n, int d, int m)
{
    int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (int64_t)hr * n)
        return;
    int h = (int)(item / n), t = (int)(item % n);
    const float *xt = x + ((size_t)(h / (hr / hx)) * n + t) * d, *R = rot + (size_t)h * d * m;
    double bp = -INFINITY, bn = -INFINITY;
    int ap = 0, an = 0;
    for (int c = 0; c < m; c++) {
        double v = 0;
        for (int e = 0; e < d; e++)
            v += (double)xt[e] * R[(size_t)e * m + c];
        if (v > bp)
            bp = v, ap = c;
        if (-v > bn)
            bn = -v, an = c;
    }
    out[item] = bp >= bn ? ap : m + an;
}

sl_status cuda_prob_rows(const sl__kargs *a, double scale, int causal, bool listed, int64_t first,
                                int64_t n_rows)
{
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale);
    if (!grid_ok(dm.hq * n_rows))
        return sl__cuda_unsupported(a, "more than 2^31 - 1 output rows");
    if (dm.d * sizeof(float) > 32768)
        return sl__cuda_unsupported(a, "head_dim over 8192");
    if (dm.hq * n_rows == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    prob_args pa = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                    listed ? static_cast<const int32_t *>(st.in[2]) : nullptr, static_cast<float *>(st.out[0]), dm.hq,
                    dm.nq, dm.nk, dm.d, dm.group, dm.offset, first, n_rows, (float)dm.scale, causal};
    SL_LAUNCH(prob_kernel, (int)(dm.hq * n_rows), kThreads, (size_t)dm.d * sizeof(float), 0)(pa);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

// Stages q and k and a zeroed output (the kernels accumulate into it or write part of it).
sl_status stage_zeroed(sl__cuda_stage *st)
{
    sl_status s = sl__cuda_stage_in(st);
    return s != SL_OK ? s : sl__cuda_clear_out(st, 0);
}

}  // namespace

sl_status sl__cuda_score_pooled(const sl__kargs *a)
{
    const sl_score_pooled_params *p = static_cast<const sl_score_pooled_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t nqb = (dm.nq + p->bq - 1) / p->bq, nkb = (dm.nk + p->bk - 1) / p->bk;
    if (!grid_ok(dm.hq * nqb) || !grid_ok(dm.hkv * nkb))
        return sl__cuda_unsupported(a, "more than 2^31 - 1 blocks");
    if (dm.hq * nqb == 0)
        return SL_OK;
    size_t qf = (size_t)(dm.hq * nqb * dm.d), kf = (size_t)(dm.hkv * nkb * dm.d);
    sl__cuda_stage st(a);
    void *pooled = nullptr;
    sl_status s = sl__cuda_stage_in(&st);
    if (s == SL_OK)
        s = sl__cuda_scratch(&st, 2 * (qf + kf) * sizeof(float), &pooled);
    if (s != SL_OK)
        return s;
    float *qhi = static_cast<float *>(pooled), *qlo = qhi + qf, *khi = qlo + qf, *klo = khi + kf;
    const float *q = static_cast<const float *>(st.in[0]), *k = static_cast<const float *>(st.in[1]);
    SL_LAUNCH(pool_kernel, (int)(dm.hq * nqb), kThreads, 0, 0)(q, dm.nq, dm.d, p->bq, nqb, (int)p->pool, (int)p->pad, qhi, qlo);
    if (nkb > 0)
        SL_LAUNCH(pool_kernel, (int)(dm.hkv * nkb), kThreads, 0, 0)(k, dm.nk, dm.d, p->bk, nkb, (int)p->pool, (int)p->pad, khi, klo);
    pooled_args pa = {qhi, qlo, khi, klo, static_cast<float *>(st.out[0]), dm.nq, dm.nk, dm.d, p->bq, p->bk, nqb, nkb,
                      dm.group, dm.offset, (float)dm.scale, (int)p->pool, (int)p->causal, (int)p->softmax};
    SL_LAUNCH(pooled_kernel, (int)(dm.hq * nqb), kThreads, 0, 0)(pa);
    return sl__cuda_stage_out(&st, cudaGetLastError());
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
        return sl__cuda_unsupported(a, "head_dim + key blocks over 12288 (shared memory)");
    if (!grid_ok(dm.hq * nqb))
        return sl__cuda_unsupported(a, "more than 2^31 - 1 blocks");
    if (dm.hq * nqb == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    exact_args ea = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                     static_cast<float *>(st.out[0]), dm.nq, dm.nk, dm.d, dm.group, dm.offset, p->bq, p->bk, nqb, nkb,
                     (float)dm.scale, (int)p->causal, (int)p->reduce, (int)p->normalize};
    SL_LAUNCH(exact_kernel, (int)(dm.hq * nqb), kThreads, shm, 0)(ea);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_score_antidiag(const sl__kargs *a)
{
    const sl_score_antidiag_params *p = static_cast<const sl_score_antidiag_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    int64_t S = p->stride, Mq = (dm.nq + S - 1) / S, nqb = a->out[0].shape[1], nkb = a->out[0].shape[2];
    if (too_big(dm.nk * dm.d) || too_big(dm.nq * dm.d) || dm.hq > 65535 || Mq > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^30 elements per head or 65535 heads");
    if (dm.hq == 0 || Mq == 0 || nkb == 0)
        return SL_OK;
    double scale = p->scale > 0 ? p->scale : 1.0 / (sqrt((double)dm.d) * (double)S);
    sl__cuda_stage st(a);
    sl_status s = stage_zeroed(&st);
    if (s != SL_OK)
        return s;
    SL_LAUNCH(antidiag_kernel, dim3((unsigned)Mq, (unsigned)dm.hq), 32, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.output<float>(0), (int)dm.nq, (int)dm.nk, (int)dm.d, (int)S,
        (int)p->block, (int)dm.group, (int)p->causal, (int)dm.offset, (float)scale, (int)nqb, (int)nkb);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_score_strided(const sl__kargs *a)
{
    const sl_score_strided_params *p = static_cast<const sl_score_strided_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t S = p->stride, Mq = (dm.nq + S - 1) / S, nqb = a->out[0].shape[1], nkb = a->out[0].shape[2];
    if (too_big(dm.nk * dm.d) || too_big(dm.nq * dm.d) || dm.hq > 65535)
        return sl__cuda_unsupported(a, "more than 2^30 elements per head or 65535 heads");
    if (dm.hq == 0 || Mq == 0 || nkb == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    sl_status s = stage_zeroed(&st);
    if (s != SL_OK)
        return s;
    SL_LAUNCH(strided_kernel, dim3((unsigned)Mq, (unsigned)dm.hq), 32, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.output<float>(0), (int)dm.nq, (int)dm.nk, (int)dm.d, (int)S,
        (int)p->bq, (int)p->bk, (int)dm.group, (int)p->causal, (int)dm.offset, (float)dm.scale, (int)nqb, (int)nkb);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_score_anchor(const sl__kargs *a)
{
    const sl_score_anchor_params *p = static_cast<const sl_score_anchor_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t N = dm.nq, G = p->block * p->step, nb = a->out[0].shape[1];
    if (too_big(N * dm.d) || dm.hq > 65535 || nb > 65535 || p->step > 65535 || G > INT32_MAX ||
        p->init_cnt * G > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^30 elements per head, 65535 heads or blocks");
    if (dm.hq == 0 || N == 0)
        return SL_OK;
    size_t slots = (size_t)(dm.hq * nb * p->step);
    sl__cuda_stage st(a);
    void *danc = nullptr, *dqbar = nullptr, *dxbar = nullptr;
    sl_status s = stage_zeroed(&st);
    if (s == SL_OK)
        s = sl__cuda_scratch(&st, sizeof(float) * (size_t)(dm.hq * N), &danc);
    if (s == SL_OK)
        s = sl__cuda_scratch(&st, sizeof(float) * slots * (size_t)dm.d, &dqbar);
    if (s == SL_OK)
        s = sl__cuda_scratch(&st, sizeof(float) * slots, &dxbar);
    if (s != SL_OK)
        return s;
    const float *q = st.input<float>(0), *k = st.input<float>(1);
    SL_LAUNCH(anchor_rows_kernel, dim3((unsigned)N, (unsigned)dm.hq), 32, 0, 0)(q, k, static_cast<float *>(danc), (int)N, (int)dm.d,
                                                                  (int)G, (int)dm.group, (int)p->init_cnt,
                                                                  (int)p->local_cnt, (float)dm.scale);
    SL_LAUNCH(anchor_pool_kernel, dim3((unsigned)p->step, (unsigned)nb, (unsigned)dm.hq), 64, 0, 0)(
        q, static_cast<const float *>(danc), static_cast<float *>(dqbar), static_cast<float *>(dxbar), (int)N,
        (int)dm.d, (int)p->block, (int)G, (int)p->step, (int)nb);
    SL_LAUNCH(anchor_scan_kernel, dim3((unsigned)((N + 127) / 128), (unsigned)nb, (unsigned)dm.hq), 128, 0, 0)(
        k, static_cast<const float *>(dqbar), static_cast<const float *>(dxbar), st.output<uint8_t>(0), (int)N,
        (int)dm.d, (int)p->block, (int)G, (int)p->step, (int)nb, (int)dm.group, (int)p->init_cnt, (int)p->local_cnt,
        (int)p->overlap, (float)dm.scale, (float)p->theta);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_score_lowbit(const sl__kargs *a)
{
    const sl_score_lowbit_params *p = static_cast<const sl_score_lowbit_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t nqb = a->out[0].shape[1], nkb = a->out[0].shape[2];
    if (too_big(dm.nq) || too_big(dm.nk) || nqb > 65535 || dm.hq > 65535 || nkb > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^30 tokens, 65535 query blocks or heads");
    if (dm.hq == 0 || nqb == 0 || nkb == 0)
        return SL_OK;
    size_t nqf = (size_t)(dm.hq * dm.nq * dm.d), nkf = (size_t)(dm.hkv * dm.nk * dm.d);
    float *qq = (float *)malloc(sizeof(float) * nqf), *kq = (float *)malloc(sizeof(float) * nkf),
          *ks = (float *)malloc(sizeof(float) * (size_t)(dm.nk * dm.d + 1)),
          *mean = (float *)malloc(sizeof(float) * (size_t)(dm.hkv * dm.d)),
          *corr = (float *)malloc(sizeof(float) * (size_t)(dm.hq * dm.nq + 1));
    sl_status s = SL_OK;
    if (!qq || !kq || !ks || !mean || !corr)
        s = sl_ctx_fail(a->ctx, SL_ENOMEM, "%s[cuda]: out of host memory", sl__cuda_op_name(a));
    for (int64_t h = 0; s == SL_OK && h < dm.hkv; h++) {
        lowbit_prepare((const float *)a->in[1].data + h * dm.nk * dm.d, dm.nk, dm.d, (int)p->smooth_k, ks,
                           mean + h * dm.d);
        lowbit_quantise(ks, dm.nk, dm.d, p->k_group, (int)p->bits, kq + h * dm.nk * dm.d);
    }
    for (int64_t h = 0; s == SL_OK && h < dm.hq; h++) {
        const float *q = (const float *)a->in[0].data + h * dm.nq * dm.d, *mk = mean + (h / dm.group) * dm.d;
        lowbit_quantise(q, dm.nq, dm.d, p->q_group, (int)p->bits, qq + h * dm.nq * dm.d);
        for (int64_t i = 0; i < dm.nq; i++) {
            double c = 0;
            for (int64_t t = 0; t < dm.d; t++)
                c += (double)q[i * dm.d + t] * mk[t];
            corr[h * dm.nq + i] = (float)c;
        }
    }
    if (s == SL_OK) {
        // q and k go up in their quantised forms, not as given
        sl__cuda_stage st(a);
        void *dq = nullptr, *dk = nullptr, *dc = nullptr;
        s = sl__cuda_stage_in(&st, 1u << 0 | 1u << 1);
        if (s == SL_OK)
            s = sl__cuda_upload(&st, qq, sizeof(float) * nqf, &dq);
        if (s == SL_OK)
            s = sl__cuda_upload(&st, kq, sizeof(float) * nkf, &dk);
        if (s == SL_OK)
            s = sl__cuda_upload(&st, corr, sizeof(float) * (size_t)(dm.hq * dm.nq), &dc);
        if (s == SL_OK) {
            SL_LAUNCH(lowbit_kernel, dim3((unsigned)nkb, (unsigned)nqb, (unsigned)dm.hq), 128, 0, 0)(
                static_cast<const float *>(dq), static_cast<const float *>(dk), static_cast<const float *>(dc),
                st.input<float>(2), st.output<float>(0), (int)dm.hq, (int)dm.group, (int)dm.nq, (int)dm.nk,
                (int)dm.d, (int)p->bq, (int)p->bk, (int)p->causal, (float)dm.scale, (int)nqb, (int)nkb,
                (int)p->qb0);
            s = sl__cuda_stage_out(&st, cudaGetLastError());
        }
    }
    free(qq), free(kq), free(ks), free(mean), free(corr);
    return s;
}

sl_status sl__cuda_score_hash(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0], *rot = &a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hr = rot->shape[0], m = rot->shape[2];
    if (too_big(n) || too_big(d) || too_big(m) || too_big(hr * n))
        return sl__cuda_unsupported(a, "more than 2^30 tokens, channels or items");
    if (hr == 0 || n == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    int64_t items = hr * n;
    SL_LAUNCH(hash_kernel, (unsigned)((items + 127) / 128), 128, 0, 0)(st.input<float>(0), st.input<float>(1),
                                                          st.output<int32_t>(0), (int)hx, (int)hr, (int)n, (int)d,
                                                          (int)m);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
