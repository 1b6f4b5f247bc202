// cuda/ipar.cu — ipar.rectify on CUDA (contract in sparselab.h): a copy of
// o_sparse (text query rows keep it), then one CTA per (kv head, video key
// block) pools K and V (mean, mean |deviation|), then one CTA per (head,
// video query block) computes the block's statistics, its logits against
// the video blocks and every text key, the merged softmax, GAPR, r and N,
// and writes O = r.O* + N. Compiled with `make CUDA=1`; run under the CUDA
// simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "warp.cuh"

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

struct ipar_args {
    const float *q, *k, *v, *os;
    const int32_t *rp, *ci;
    float *o, *r, *rest, *km, *ke, *vm;
    int64_t hq, n, d, group, hm, b, nbv, v0, nv, I0, nqb, text;
    float scale, lb;
    int gapr;
};

__global__ void copy_kernel(const float *src, float *dst, int64_t len)
{
    for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < len; i += (int64_t)gridDim.x * kThreads)
        dst[i] = src[i];
}

__global__ void pool_kernel(ipar_args a)
{
    int64_t item = blockIdx.x, g = item / a.nbv, J = item % a.nbv;
    int64_t row0 = g * a.n + a.v0 + J * a.b;
    for (int64_t c = threadIdx.x; c < a.d; c += kThreads) {
        float mk = 0, mv = 0;
        for (int64_t r = 0; r < a.b; r++) {
            mk += a.k[(row0 + r) * a.d + c];
            mv += a.v[(row0 + r) * a.d + c];
        }
        mk /= (float)a.b;
        mv /= (float)a.b;
        float e = 0;
        for (int64_t r = 0; r < a.b; r++)
            e += fabsf(a.k[(row0 + r) * a.d + c] - mk);
        a.km[item * a.d + c] = mk;
        a.ke[item * a.d + c] = e / (float)a.b;
        a.vm[item * a.d + c] = mv;
    }
}

__device__ float dotf(const float *x, const float *y, int64_t d)
{
    float s = 0;
    for (int64_t c = 0; c < d; c++)
        s += x[c] * y[c];
    return s;
}

__global__ void rect_kernel(ipar_args a)
{
    SL_DYN_SMEM(float, sh);  // qm, qe, nsum [d]; lg [nbv]; lt [text]; flags [nbv]
    SL_SHARED(float, red, [kWarps]);
    float *qm = sh, *qe = qm + a.d, *nsum = qe + a.d, *lg = nsum + a.d, *lt = lg + a.nbv;
    float *flags = lt + a.text;  // bit 0: kept by the mask, bit 1: GAPR-trusted
    int64_t item = blockIdx.x, h = item / a.nbv, I = item % a.nbv, g = h / a.group, mh = h / (a.hq / a.hm);
    int64_t i0 = a.v0 + I * a.b;
    const float *qb = a.q + (h * a.n + i0) * a.d;
    for (int64_t c = threadIdx.x; c < a.d; c += kThreads) {
        float m = 0;
        for (int64_t r = 0; r < a.b; r++)
            m += qb[r * a.d + c];
        m /= (float)a.b;
        float e = 0;
        for (int64_t r = 0; r < a.b; r++)
            e += fabsf(qb[r * a.d + c] - m);
        qm[c] = m;
        qe[c] = e / (float)a.b;
    }
    for (int64_t J = threadIdx.x; J < a.nbv; J += kThreads)
        flags[J] = 0;
    __syncthreads();
    int64_t row = mh * (a.nqb + 1) + a.I0 + I;
    for (int64_t e = a.rp[row] + threadIdx.x; e < a.rp[row + 1]; e += kThreads)
        if (a.ci[e] >= a.I0 && a.ci[e] < a.I0 + a.nbv)
            flags[a.ci[e] - a.I0] = 1;
    __syncthreads();
    const float *km = a.km + g * a.nbv * a.d, *ke = a.ke + g * a.nbv * a.d, *vm = a.vm + g * a.nbv * a.d;
    float mx = -INFINITY;
    for (int64_t J = threadIdx.x; J < a.nbv; J += kThreads) {
        const float *kj = km + J * a.d;
        float s = dotf(qm, kj, a.d);
        lg[J] = a.scale * s + a.lb;
        mx = fmaxf(mx, lg[J]);
        bool trusted = !a.gapr || fabsf(s) > fabsf(dotf(qe, kj, a.d)) + fabsf(dotf(qm, ke + J * a.d, a.d));
        if (trusted)
            flags[J] += 2;
    }
    const float *kg = a.k + g * a.n * a.d;
    for (int64_t t = threadIdx.x; t < a.text; t += kThreads) {
        int64_t tok = t < a.v0 ? t : t + a.nv;
        lt[t] = a.scale * dotf(qm, kg + tok * a.d, a.d);
        mx = fmaxf(mx, lt[t]);
    }
    mx = block_max<kWarps>(mx, red);
    float pt = 0, zv = 0;
    for (int64_t t = threadIdx.x; t < a.text; t += kThreads)
        pt += expf(lt[t] - mx);
    for (int64_t J = threadIdx.x; J < a.nbv; J += kThreads) {
        lg[J] = expf(lg[J] - mx);
        zv += lg[J];
    }
    float ptext = block_sum<kWarps>(pt, red);
    float z = ptext + block_sum<kWarps>(zv, red);
    float rp = 0, rs = 0;
    for (int64_t J = threadIdx.x; J < a.nbv; J += kThreads) {
        float pj = lg[J] / z;
        if (flags[J] == 2)
            rs += pj;
        else
            rp += pj;
    }
    float r = ptext / z + block_sum<kWarps>(rp, red);
    float restored = block_sum<kWarps>(rs, red);
    for (int64_t c = threadIdx.x; c < a.d; c += kThreads) {
        float s = 0;
        for (int64_t J = 0; J < a.nbv; J++)
            if (flags[J] == 2)
                s += lg[J] / z * vm[J * a.d + c];
        nsum[c] = s;
    }
    if (threadIdx.x == 0) {
        a.r[h * a.nbv + I] = r;
        a.rest[h * a.nbv + I] = restored;
    }
    __syncthreads();
    for (int64_t x = threadIdx.x; x < a.b * a.d; x += kThreads) {
        int64_t idx = (h * a.n + i0) * a.d + x;
        a.o[idx] = r * a.os[idx] + nsum[x % a.d];
    }
}

}  // namespace

sl_status sl__cuda_ipar_rectify(const sl__kargs *a)
{
    const sl_ipar_rectify_params *p = static_cast<const sl_ipar_rectify_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t b = p->bq, nbv = p->n_video / b, text = dm.nk - p->n_video;
    size_t shm = (size_t)(3 * dm.d + 2 * nbv + text) * sizeof(float);
    if (shm > 40 * 1024)
        return sl__cuda_unsupported(a, "3 head_dim + 2 video blocks + text tokens over 10240 (shared memory)");
    if (dm.hq * nbv > INT32_MAX || dm.hkv * nbv > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 - 1 blocks");
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    void *km = nullptr, *ke = nullptr, *vm = nullptr;
    size_t pooled = sizeof(float) * (size_t)(dm.hkv * nbv * dm.d);
    if (sl_status s = sl__cuda_scratch(&st, pooled, &km); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, pooled, &ke); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_scratch(&st, pooled, &vm); s != SL_OK)
        return s;
    ipar_args ia = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                    static_cast<const float *>(st.in[2]), static_cast<const float *>(st.in[7]),
                    static_cast<const int32_t *>(st.in[3]), static_cast<const int32_t *>(st.in[4]),
                    static_cast<float *>(st.out[0]), static_cast<float *>(st.out[1]), static_cast<float *>(st.out[2]),
                    static_cast<float *>(km), static_cast<float *>(ke), static_cast<float *>(vm),
                    dm.hq, dm.nk, dm.d, dm.group, a->in[3].shape[0], b, nbv, p->video0, p->n_video, p->video0 / b,
                    (dm.nk + b - 1) / b, text, (float)dm.scale, logf((float)b), (int)p->gapr};
    int64_t len = dm.hq * dm.nq * dm.d;
    int grid = (int)((len + kThreads - 1) / kThreads < 4096 ? (len + kThreads - 1) / kThreads : 4096);
    if (len > 0)
        SL_LAUNCH(copy_kernel, grid, kThreads, 0, 0)(ia.os, ia.o, len);
    if (dm.hkv * nbv > 0)
        SL_LAUNCH(pool_kernel, (int)(dm.hkv * nbv), kThreads, 0, 0)(ia);
    if (dm.hq * nbv > 0)
        SL_LAUNCH(rect_kernel, (int)(dm.hq * nbv), kThreads, shm, 0)(ia);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
