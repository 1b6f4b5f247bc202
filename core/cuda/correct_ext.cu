// cuda/correct_ext.cu — CUDA kernels of the ops of issue 5 for cards re_ttention (correct.reshape), flashblock
// (correct.cache_reuse), salad (correct.linear_branch, attn.linear) and psa_pyramid (attn.pooled_kv), with their
// host side (the same staging as backend.cu: every tensor copied to the device and back per call).
// Straightforward kernels: the row-wise corrections one thread per row; attn.linear and attn.pooled_kv one CTA per
// (head, row), keys in chunks through shared memory (attn.linear in its quadratic form, attn.pooled_kv pooling each
// group as it reads it). Compiled with `make CUDA=1`; unverified on a device.
#include "dialect.cuh"
#include "correct_ext.cuh"

extern "C" {
#include "../internal.h"
}

#include <cuda_runtime.h>
#include <math.h>

namespace {

constexpr int kThreads = 128;  // threads per CTA of the per-row kernels
constexpr int kChunk = 128;    // keys (or pooled keys) per shared-memory chunk
constexpr int kMaxD = 256;     // largest head_dim the per-row kernels hold in shared memory

const char *op_name(const sl__kargs *a) { return sl_op_info_get(a->op)->name; }

sl_status fail(const sl__kargs *a, cudaError_t err, const char *what)
{
    return sl_ctx_fail(a->ctx, err == cudaErrorMemoryAllocation ? SL_EDEVMEM : SL_EDEVICE, "%s[cuda]: %s: %s",
                       op_name(a), what, cudaGetErrorString(err));
}

// Device copies of a call's inputs and outputs, freed on every path.
struct staged {
    void *in[SL_OP_MAX_INPUTS] = {};
    void *out[4] = {};
    ~staged()
    {
        for (void *p : in)
            cudaFree(p);
        for (void *p : out)
            cudaFree(p);
    }
};

sl_status stage(const sl__kargs *a, staged *st)
{
    const sl_op_info *info = sl_op_info_get(a->op);
    (void)cudaGetLastError();
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

int blocks_for(int64_t n) { return (int)((n + kThreads - 1) / kThreads); }

const float *cin(const staged &st, int i) { return static_cast<const float *>(st.in[i]); }
float *cout(const staged &st, int i) { return static_cast<float *>(st.out[i]); }

// ---- row-wise corrections ----

__global__ void reshape_kernel(const float *o, const float *lse, const float *ref_o, const float *ref_l,
                               const float *ratio, const float *res, float *out, float *r_out, float *res_out,
                               int64_t rows, int d, float drift, int use_ratio)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows)
        return;
    const float *oi = o + i * d;
    if (ref_o) {
        float r = !use_ratio || ref_l[i] == -INFINITY ? 1.f : expf(lse[i] - ref_l[i]);
        for (int c = 0; c < d; c++) {
            float x = ref_o[i * d + c];
            res_out[i * d + c] = x - r * oi[c];
            out[i * d + c] = x;
        }
        r_out[i] = r;
    } else {
        float r = use_ratio ? ratio[i] : 1.f;
        for (int c = 0; c < d; c++) {
            float e = res ? res[i * d + c] : 0.f;
            out[i * d + c] = r * oi[c] + e;
            res_out[i * d + c] = e;
        }
        r_out[i] = ratio[i] + drift;
    }
}

__global__ void cache_kernel(const float *o1, const float *l1, const float *o2, const float *l2, const float *q,
                             const float *cq, float *o, float *lse, float *reused, int64_t rows, int d, int dq,
                             double tau)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows)
        return;
    int reuse = 1;
    if (q) {
        double diff = 0, norm = 0;
        for (int c = 0; c < dq; c++) {
            double t = (double)q[i * dq + c] - (double)cq[i * dq + c];
            diff += t * t;
            norm += (double)cq[i * dq + c] * (double)cq[i * dq + c];
        }
        reuse = sqrt(diff) <= tau * sqrt(norm);
    }
    reused[i] = (float)reuse;
    float x = l1[i], y = reuse ? l2[i] : -INFINITY, m = fmaxf(x, y);
    if (m == -INFINITY) {
        for (int c = 0; c < d; c++)
            o[i * d + c] = 0.f;
        lse[i] = -INFINITY;
        return;
    }
    float w1 = x == -INFINITY ? 0.f : expf(x - m), w2 = y == -INFINITY ? 0.f : expf(y - m), sum = w1 + w2;
    for (int c = 0; c < d; c++)
        o[i * d + c] = (w1 * o1[i * d + c] + (w2 > 0.f ? w2 * o2[i * d + c] : 0.f)) / sum;
    lse[i] = m + logf(sum);
}

__global__ void linear_branch_kernel(const float *o, const float *ol, const float *gate, const float *proj,
                                     float *out, int64_t h, int64_t n, int d, int gh, int ph, int convex)
{
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= h * n * d)
        return;
    int64_t i = idx / d, hh = i / n;
    int c = (int)(idx % d);
    float g = gate[gh == 1 ? 0 : hh];
    const float *x = ol + i * d;
    float px = x[c];
    if (proj) {
        const float *P = proj + (ph == 1 ? 0 : hh) * (int64_t)d * d + (int64_t)c * d;
        px = 0.f;
        for (int e = 0; e < d; e++)
            px += P[e] * x[e];
    }
    out[idx] = (convex ? 1.f - g : 1.f) * o[idx] + g * px;
}

// ---- attn.linear: one CTA per (head, row), quadratic form ----

__device__ float phi(float x, int feature) { return feature == 0 ? (x > 0.f ? x + 1.f : expf(x)) : fmaxf(x, 0.f); }

__global__ void linear_kernel(const float *q, const float *k, const float *v, float *o, int hq, int group, int nq,
                              int nk, int d, int causal, int feature)
{
    SL_SHARED(float, fq, [kMaxD]);
    SL_SHARED(float, w, [kChunk]);
    int h = blockIdx.x / nq, r = blockIdx.x % nq, g = h / group;
    const float *qr = q + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        fq[c] = phi(qr[c], feature);
    __syncthreads();
    int lim = causal ? nk - nq + r + 1 : nk;
    const float *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
    float acc[kMaxD / kThreads] = {};
    float den = 0.f;
    for (int j0 = 0; j0 < lim; j0 += kChunk) {
        int nc = lim - j0 < kChunk ? lim - j0 : kChunk;
        for (int t = threadIdx.x; t < nc; t += blockDim.x) {
            const float *kj = kg + (int64_t)(j0 + t) * d;
            float s = 0.f;
            for (int c = 0; c < d; c++)
                s += fq[c] * phi(kj[c], feature);
            w[t] = s;
        }
        __syncthreads();
        for (int t = 0; t < nc; t++) {
            den += w[t];
            for (int c = threadIdx.x, u = 0; c < d; c += blockDim.x, u++)
                acc[u] += w[t] * vg[(int64_t)(j0 + t) * d + c];
        }
        __syncthreads();
    }
    float *orow = o + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x, u = 0; c < d; c += blockDim.x, u++)
        orow[c] = den > 0.f ? acc[u] / den : 0.f;
}

// ---- attn.pooled_kv: one CTA per (head, row), online softmax over pooled chunks ----

__global__ void pooled_kernel(const float *q, const float *k, const float *v, const uint8_t *levels, float *o,
                              float *lse, int hq, int group, int hm, int nq, int nk, int d, int bq, int bk, int nqb,
                              int nkb, int causal, float scale)
{
    SL_SHARED(float, qs, [kMaxD]);
    SL_SHARED(float, sc, [kChunk]);
    SL_SHARED(float, red, [kThreads]);
    int h = blockIdx.x / nq, r = blockIdx.x % nq, g = h / group, mh = h / (hq / hm);
    const float *qr = q + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        qs[c] = qr[c];
    __syncthreads();
    const float *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
    const uint8_t *lv = levels + ((int64_t)mh * nqb + r / bq) * nkb;
    int pos = nk - nq + r;
    float m = -INFINITY, l = 0.f, acc[kMaxD / kThreads] = {};
    for (int c = 0; c < nkb; c++) {
        int s = lv[c];
        if (!s)
            continue;
        int k0 = c * bk, len = nk - k0 < bk ? nk - k0 : bk, ng = (len + s - 1) / s;
        for (int t0 = 0; t0 < ng; t0 += kChunk) {
            int nc = ng - t0 < kChunk ? ng - t0 : kChunk;
            for (int t = threadIdx.x; t < nc; t += blockDim.x) {
                int j0 = k0 + (t0 + t) * s, j1 = j0 + s < k0 + len ? j0 + s : k0 + len;
                float x = -INFINITY;
                if (!causal || j1 - 1 <= pos) {
                    float dot = 0.f;
                    for (int j = j0; j < j1; j++)
                        for (int e = 0; e < d; e++)
                            dot += qs[e] * kg[(int64_t)j * d + e];
                    x = scale * dot / (float)(j1 - j0) + logf((float)(j1 - j0));
                }
                sc[t] = x;
            }
            __syncthreads();
            // chunk max, by a shared-memory reduction
            float cm = -INFINITY;
            for (int t = threadIdx.x; t < nc; t += blockDim.x)
                cm = fmaxf(cm, sc[t]);
            red[threadIdx.x] = cm;
            __syncthreads();
            for (int stp = blockDim.x / 2; stp > 0; stp /= 2) {
                if ((int)threadIdx.x < stp)
                    red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + stp]);
                __syncthreads();
            }
            float mnew = fmaxf(m, red[0]);
            __syncthreads();
            if (mnew != -INFINITY) {
                float alpha = m == -INFINITY ? 0.f : expf(m - mnew);
                l *= alpha;
                for (int u = 0; u < kMaxD / kThreads; u++)
                    acc[u] *= alpha;
                for (int t = 0; t < nc; t++) {
                    if (sc[t] == -INFINITY)
                        continue;
                    float p = expf(sc[t] - mnew);
                    int j0 = k0 + (t0 + t) * s, j1 = j0 + s < k0 + len ? j0 + s : k0 + len;
                    l += p;
                    for (int cc = threadIdx.x, u = 0; cc < d; cc += blockDim.x, u++) {
                        float vb = 0.f;
                        for (int j = j0; j < j1; j++)
                            vb += vg[(int64_t)j * d + cc];
                        acc[u] += p * vb / (float)(j1 - j0);
                    }
                }
                m = mnew;
            }
            __syncthreads();
        }
    }
    float *orow = o + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x, u = 0; c < d; c += blockDim.x, u++)
        orow[c] = l > 0.f ? acc[u] / l : 0.f;
    if (threadIdx.x == 0)
        lse[(int64_t)h * nq + r] = l > 0.f ? m + logf(l) : -INFINITY;
}

sl_status unsupported_dims(const sl__kargs *a, int64_t d, int64_t ctas)
{
    if (d > kMaxD || ctas > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: head_dim up to %d and fewer than 2^31 rows; found head_dim %lld, %lld rows",
                           op_name(a), kMaxD, (long long)d, (long long)ctas);
    return SL_OK;
}

}  // namespace

sl_status sl__cuda_correct_reshape(const sl__kargs *a)
{
    const sl_correct_reshape_params *p = static_cast<const sl_correct_reshape_params *>(a->params);
    int64_t rows = sl_tensor_numel(&a->in[1]);
    if (rows == 0)
        return SL_OK;
    staged st;
    sl_status s = stage(a, &st);
    if (s != SL_OK)
        return s;
    SL_LAUNCH(reshape_kernel, blocks_for(rows), kThreads, 0, 0)(cin(st, 0), cin(st, 1), cin(st, 2), cin(st, 3), cin(st, 4),
                                                   cin(st, 5), cout(st, 0), cout(st, 1), cout(st, 2), rows,
                                                   (int)a->in[0].shape[2], (float)p->drift, (int)p->use_ratio);
    return finish(a, &st);
}

sl_status sl__cuda_correct_cache_reuse(const sl__kargs *a)
{
    const sl_correct_cache_params *p = static_cast<const sl_correct_cache_params *>(a->params);
    int64_t rows = sl_tensor_numel(&a->in[1]);
    if (rows == 0)
        return SL_OK;
    staged st;
    sl_status s = stage(a, &st);
    if (s != SL_OK)
        return s;
    SL_LAUNCH(cache_kernel, blocks_for(rows), kThreads, 0, 0)(cin(st, 0), cin(st, 1), cin(st, 2), cin(st, 3), cin(st, 4),
                                                 cin(st, 5), cout(st, 0), cout(st, 1), cout(st, 2), rows,
                                                 (int)a->in[0].shape[2], a->in[4].buf ? (int)a->in[4].shape[2] : 0,
                                                 p->tau);
    return finish(a, &st);
}

sl_status sl__cuda_correct_linear_branch(const sl__kargs *a)
{
    const sl_correct_linear_params *p = static_cast<const sl_correct_linear_params *>(a->params);
    int64_t n = sl_tensor_numel(&a->in[0]);
    if (n == 0)
        return SL_OK;
    staged st;
    sl_status s = stage(a, &st);
    if (s != SL_OK)
        return s;
    SL_LAUNCH(linear_branch_kernel, blocks_for(n), kThreads, 0, 0)(cin(st, 0), cin(st, 1), cin(st, 2), cin(st, 3), cout(st, 0),
                                                      a->in[0].shape[0], a->in[0].shape[1], (int)a->in[0].shape[2],
                                                      (int)a->in[2].shape[0],
                                                      a->in[3].buf ? (int)a->in[3].shape[0] : 0, (int)p->convex);
    return finish(a, &st);
}

sl_status sl__cuda_attn_linear(const sl__kargs *a)
{
    const sl_attn_linear_params *p = static_cast<const sl_attn_linear_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    sl_status s = unsupported_dims(a, dm.d, dm.hq * dm.nq);
    if (s != SL_OK || dm.hq * dm.nq == 0)
        return s;
    staged st;
    if ((s = stage(a, &st)) != SL_OK)
        return s;
    SL_LAUNCH(linear_kernel, (int)(dm.hq * dm.nq), kThreads, 0, 0)(cin(st, 0), cin(st, 1), cin(st, 2), cout(st, 0), (int)dm.hq,
                                                      (int)dm.group, (int)dm.nq, (int)dm.nk, (int)dm.d,
                                                      (int)p->causal, (int)p->feature);
    return finish(a, &st);
}

sl_status sl__cuda_attn_pooled_kv(const sl__kargs *a)
{
    const sl_attn_pooled_params *p = static_cast<const sl_attn_pooled_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    sl_status s = unsupported_dims(a, dm.d, dm.hq * dm.nq);
    if (s != SL_OK || dm.hq * dm.nq == 0)
        return s;
    staged st;
    if ((s = stage(a, &st)) != SL_OK)
        return s;
    SL_LAUNCH(pooled_kernel, (int)(dm.hq * dm.nq), kThreads, 0, 0)(
        cin(st, 0), cin(st, 1), cin(st, 2), static_cast<const uint8_t *>(st.in[3]), cout(st, 0), cout(st, 1),
        (int)dm.hq, (int)dm.group, (int)a->in[3].shape[0], (int)dm.nq, (int)dm.nk, (int)dm.d, (int)p->bq, (int)p->bk,
        (int)a->in[3].shape[1], (int)a->in[3].shape[2], (int)p->causal, (float)dm.scale);
    return finish(a, &st);
}
