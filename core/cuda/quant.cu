// cuda/quant.cu — quant.fake on CUDA (contract in sparselab.h): one CTA per
// (head, group of rows): a block-wide max of |x|, then the rounding pass, in
// f32 as the contract says. Compiled with `make CUDA=1`; run under the CUDA
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

__global__ void quant_kernel(const float *x, float *out, int64_t n, int64_t d, int64_t group, int64_t groups,
                             float qmax)
{
    SL_SHARED(float, sh, [kWarps]);
    int64_t h = blockIdx.x / groups, r0 = (blockIdx.x % groups) * group;
    int64_t r1 = r0 + group < n ? r0 + group : n;
    const float *src = x + (h * n + r0) * d;
    float *dst = out + (h * n + r0) * d;
    int64_t len = (r1 - r0) * d;
    float m = 0;
    for (int64_t i = threadIdx.x; i < len; i += kThreads)
        m = fmaxf(m, fabsf(src[i]));
    m = block_max<kWarps>(m, sh);
    float step = m / qmax;
    if (!(step > 0))
        step = 1;
    for (int64_t i = threadIdx.x; i < len; i += kThreads)
        dst[i] = fminf(fmaxf(roundf(src[i] / step), -qmax), qmax) * step;
}

}  // namespace

sl_status sl__cuda_quant_fake(const sl__kargs *a)
{
    const sl_quant_fake_params *p = static_cast<const sl_quant_fake_params *>(a->params);
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2], groups = (n + p->group - 1) / p->group;
    if (H * groups > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 - 1 row groups");
    if (H * groups == 0 || d == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(quant_kernel, (int)(H * groups), kThreads, 0, 0)(static_cast<const float *>(st.in[0]),
                                                               static_cast<float *>(st.out[0]), n, d, p->group,
                                                               groups, (float)((1 << (p->bits - 1)) - 1));
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

// quant.attn_block (contract in sparselab.h): V's codes and scales per (kv
// head, key block, channel) first, then one CTA per (head, query row): per
// kept key block the row's scores in shared memory, the block max, the
// online softmax statistics, the P codes and the integer P.V per channel.
namespace {

struct qattn_args {
    const float *q, *k, *v;
    const int32_t *rp, *ci, *part;
    const uint8_t *bits;
    float *o, *lse, *t;
    int32_t *w;
    int64_t hq, nq, nk, d, group, hm, bq, bk, nqb, nkb;
    float scale, qmax;
    int quant;
};

__global__ void vcode_kernel(qattn_args a)
{
    int64_t item = blockIdx.x, g = item / a.nkb, J = item % a.nkb;
    int64_t j0 = J * a.bk, j1 = min(j0 + a.bk, a.nk);
    const float *v = a.v + g * a.nk * a.d;
    for (int64_t c = threadIdx.x; c < a.d; c += kThreads) {
        float m = 0;
        for (int64_t r = j0; r < j1; r++)
            m = fmaxf(m, fabsf(v[r * a.d + c]));
        float t = m / a.qmax;
        if (!(t > 0))
            t = 1;
        a.t[item * a.d + c] = t;
        for (int64_t r = j0; r < j1; r++)
            a.w[(g * a.nk + r) * a.d + c] = (int32_t)fminf(fmaxf(roundf(v[r * a.d + c] / t), -a.qmax), a.qmax);
    }
}

__global__ void qattn_kernel(qattn_args a)
{
    SL_DYN_SMEM(float, sh);  // q row [d], scores [bk], codes [bk] (int), accumulator [d]
    SL_SHARED(float, red, [kWarps]);
    float *qs = sh, *s = qs + a.d, *oacc = s + 2 * a.bk;
    int32_t *pc = reinterpret_cast<int32_t *>(s + a.bk);
    int64_t item = blockIdx.x, h = item / a.nq, i = item % a.nq, g = h / a.group, mh = h / (a.hq / a.hm);
    int64_t I = i / a.bq, r = i - I * a.bq;
    const float *k = a.k + g * a.nk * a.d, *v = a.v + g * a.nk * a.d;
    for (int64_t c = threadIdx.x; c < a.d; c += kThreads) {
        qs[c] = a.q[(h * a.nq + i) * a.d + c];
        oacc[c] = 0;
    }
    float m = -INFINITY, l = 0;
    int64_t e0 = a.rp[mh * (a.nqb + 1) + I], e1 = a.rp[mh * (a.nqb + 1) + I + 1];
    for (int64_t e = e0; e < e1; e++) {
        __syncthreads();
        int64_t J = a.ci[e], j0 = J * a.bk, cols = min(a.bk, a.nk - j0);
        float mu = -INFINITY;
        for (int64_t x = threadIdx.x; x < cols; x += kThreads) {
            bool keep = a.part[e] < 0 || a.bits[((int64_t)a.part[e] * a.bq + r) * a.bk + x];
            float sx = -INFINITY;
            if (keep) {
                float acc = 0;
                for (int64_t c = 0; c < a.d; c++)
                    acc += qs[c] * k[(j0 + x) * a.d + c];
                sx = a.scale * acc;
            }
            s[x] = sx;
            mu = fmaxf(mu, sx);
        }
        mu = block_max<kWarps>(mu, red);
        if (mu == -INFINITY)
            continue;
        float mn = fmaxf(m, mu), alpha = expf(m - mn), part = 0;
        for (int64_t x = threadIdx.x; x < cols; x += kThreads) {
            part += expf(s[x] - mn);
            pc[x] = (int32_t)roundf(a.qmax * expf(s[x] - mu));
        }
        l = l * alpha + block_sum<kWarps>(part, red);  // syncs: s and pc are complete
        float sigma = expf(mu - mn) / a.qmax;
        for (int64_t c = threadIdx.x; c < a.d; c += kThreads) {
            float o = oacc[c] * alpha;
            if (a.quant) {
                int32_t acc = 0;
                for (int64_t x = 0; x < cols; x++)
                    acc += pc[x] * a.w[(g * a.nk + j0 + x) * a.d + c];
                o += sigma * a.t[(g * a.nkb + J) * a.d + c] * (float)acc;
            } else {
                for (int64_t x = 0; x < cols; x++)
                    o += expf(s[x] - mn) * v[(j0 + x) * a.d + c];
            }
            oacc[c] = o;
        }
        m = mn;
    }
    for (int64_t c = threadIdx.x; c < a.d; c += kThreads)
        a.o[(h * a.nq + i) * a.d + c] = l > 0 ? oacc[c] / l : 0.f;
    if (threadIdx.x == 0)
        a.lse[h * a.nq + i] = l > 0 ? m + logf(l) : -INFINITY;
}

}  // namespace

sl_status sl__cuda_quant_attn_block(const sl__kargs *a)
{
    const sl_quant_attn_params *p = static_cast<const sl_quant_attn_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t nqb = (dm.nq + p->bq - 1) / p->bq, nkb = (dm.nk + p->bk - 1) / p->bk;
    size_t shm = (size_t)(2 * dm.d + 2 * p->bk) * sizeof(float);
    if (shm > 40 * 1024)
        return sl__cuda_unsupported(a, "2 head_dim + 2 bk over 10240 (shared memory)");
    if (dm.hq * dm.nq > INT32_MAX || dm.hkv * nkb > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 - 1 rows or blocks");
    if (dm.hq * dm.nq == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    int quant = p->bits != 16;
    void *w = nullptr, *t = nullptr;
    if (quant) {
        if (sl_status s = sl__cuda_scratch(&st, sizeof(int32_t) * (size_t)(dm.hkv * dm.nk * dm.d), &w); s != SL_OK)
            return s;
        if (sl_status s = sl__cuda_scratch(&st, sizeof(float) * (size_t)(dm.hkv * nkb * dm.d), &t); s != SL_OK)
            return s;
    }
    qattn_args qa = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                     static_cast<const float *>(st.in[2]), static_cast<const int32_t *>(st.in[3]),
                     static_cast<const int32_t *>(st.in[4]), static_cast<const int32_t *>(st.in[5]),
                     static_cast<const uint8_t *>(st.in[6]), static_cast<float *>(st.out[0]),
                     static_cast<float *>(st.out[1]), static_cast<float *>(t), static_cast<int32_t *>(w),
                     dm.hq, dm.nq, dm.nk, dm.d, dm.group, a->in[3].shape[0], p->bq, p->bk, nqb, nkb,
                     (float)dm.scale, (float)((1 << (p->bits - 1)) - 1), quant};
    if (quant && dm.hkv * nkb > 0)
        SL_LAUNCH(vcode_kernel, (int)(dm.hkv * nkb), kThreads, 0, 0)(qa);
    SL_LAUNCH(qattn_kernel, (int)(dm.hq * dm.nq), kThreads, shm, 0)(qa);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
