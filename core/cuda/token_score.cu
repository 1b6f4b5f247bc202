// cuda/token_score.cu — CUDA kernels of pool.tokens, score.lowbit, score.hash and attn.bucket
// (contracts in sparselab.h): plain one-thread-per-output kernels, each call
// staging its tensors through device memory like the executors in
// backend.cu. score.lowbit quantises on the host by the contract's f32 rule
// (its own code: lowbit_quantise below), so the device sees exactly the
// values the contract defines.
// Unverified on a device: built with `make CUDA=1`, run by test-cuda where a
// GPU is present.
#include "dialect.cuh"
#include "token_score.cuh"


#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>

namespace {

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
        const float step = amax > 0.0f ? amax / qmax : 1.0f;
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

const char *name_of(const sl__kargs *a) { return sl_op_info_get(a->op)->name; }

sl_status fail_cuda(const sl__kargs *a, cudaError_t err, const char *what)
{
    (void)cudaGetLastError();
    return sl_ctx_fail(a->ctx, err == cudaErrorMemoryAllocation ? SL_EDEVMEM : SL_EDEVICE, "%s[cuda]: %s: %s",
                       name_of(a), what, cudaGetErrorString(err));
}

// Device buffers of one call, freed on every path.
struct dev_bufs {
    void *p[8] = {};
    int n = 0;
    ~dev_bufs()
    {
        for (int i = 0; i < n; i++)
            cudaFree(p[i]);
    }
    // A device copy of bytes at host (host NULL: allocation only); NULL for 0 bytes.
    cudaError_t put(const void *host, size_t bytes, void **out)
    {
        *out = nullptr;
        if (bytes == 0)
            return cudaSuccess;
        cudaError_t e = cudaMalloc(out, bytes);
        if (e != cudaSuccess)
            return e;
        p[n++] = *out;
        return host ? cudaMemcpy(*out, host, bytes, cudaMemcpyHostToDevice) : cudaSuccess;
    }
};

__global__ void pool_kernel(const float *x, const int32_t *bounds, float *out, int n, int d, int S, int block,
                            int mode, int normalize, int len_norm)
{
    SL_SHARED(float, red, [128]);
    SL_SHARED(float, inv_s, );
    int seg = blockIdx.x, h = blockIdx.y;
    int t0 = bounds ? bounds[seg] : seg * block;
    int t1 = bounds ? (seg + 1 < S ? bounds[seg + 1] : n) : min(t0 + block, n);
    const float *X = x + (size_t)h * n * d;
    for (int c0 = 0; c0 < d; c0 += blockDim.x) {
        int c = c0 + threadIdx.x;
        double acc = mode == 1 ? -INFINITY : mode == 2 ? INFINITY : 0.0;
        for (int t = t0; t < t1; t++) {
            float inv = 1.f;
            if (normalize) {
                float ss = 0.f;
                for (int e = threadIdx.x; e < d; e += blockDim.x)
                    ss += X[(size_t)t * d + e] * X[(size_t)t * d + e];
                red[threadIdx.x] = ss;
                __syncthreads();
                for (int w = blockDim.x / 2; w > 0; w /= 2) {
                    if ((int)threadIdx.x < w)
                        red[threadIdx.x] += red[threadIdx.x + w];
                    __syncthreads();
                }
                if (threadIdx.x == 0)
                    inv_s = red[0] > 0.f ? rsqrtf(red[0]) : 0.f;
                __syncthreads();
                inv = inv_s;
                __syncthreads();
            }
            if (c < d) {
                double v = (double)X[(size_t)t * d + c] * inv;
                acc = mode == 1 ? fmax(acc, v) : mode == 2 ? fmin(acc, v) : acc + v;
            }
        }
        double len = (double)(t1 - t0);
        if (c < d)
            out[((size_t)h * S + seg) * d + c] = (float)((mode == 0 ? acc / len : acc) * (len_norm ? sqrt(len) : 1.0));
    }
}

__global__ void lowbit_kernel(const float *qq, const float *kq, const float *corr, const float *lse, float *out,
                              int hq, int group, int nq, int nk, int d, int bq, int bk, int causal, float scale,
                              int nqb, int nkb)
{
    SL_SHARED(float, red, [128]);
    int c = blockIdx.x, r = blockIdx.y, h = blockIdx.z, off = nk - nq;
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
        out[((size_t)h * nqb + r) * nkb + c] = red[0];
}

constexpr int kBucketMaxD = 256;

__global__ void bucket_kernel(const float *q, const float *k, const float *v, const int32_t *qb, const int32_t *kb,
                              float *o, float *lse, int32_t *count, int hq, int group, int nq, int nk, int d,
                              int causal, float scale, int use_tau, double tau)
{
    int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (int64_t)hq * nq)
        return;
    int h = (int)(item / nq), i = (int)(item % nq);
    const float *qi = q + item * d, *K = k + (size_t)(h / group) * nk * d, *V = v + (size_t)(h / group) * nk * d;
    float acc[kBucketMaxD];
    for (int t = 0; t < d; t++)
        acc[t] = 0.f;
    float m = -INFINITY, l = 0.f;
    int n = 0, jmax = causal ? nk - nq + i + 1 : nk;
    for (int j = 0; j < jmax; j++) {
        if (qb && qb[item] != kb[(size_t)h * nk + j])
            continue;
        float s = 0.f;
        for (int t = 0; t < d; t++)
            s += qi[t] * K[(size_t)j * d + t];
        s *= scale;
        if (use_tau && (double)s < tau)
            continue;
        n++;
        float mn = fmaxf(m, s), a = expf(m - mn), w = expf(s - mn);
        l = l * a + w;
        for (int t = 0; t < d; t++)
            acc[t] = acc[t] * a + w * V[(size_t)j * d + t];
        m = mn;
    }
    for (int t = 0; t < d; t++)
        o[item * d + t] = n ? acc[t] / l : 0.f;
    lse[item] = n ? m + logf(l) : -INFINITY;
    count[item] = n;
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

// Copies outputs back after the launch.
sl_status finish(const sl__kargs *a, void *const *dev_out, int n_out)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fail_cuda(a, err, "kernel launch failed");
    if ((err = cudaDeviceSynchronize()) != cudaSuccess)
        return fail_cuda(a, err, "kernel failed");
    for (int i = 0; i < n_out; i++) {
        size_t bytes = sl_tensor_nbytes(&a->out[i]);
        if (bytes && (err = cudaMemcpy(a->out[i].data, dev_out[i], bytes, cudaMemcpyDeviceToHost)) != cudaSuccess)
            return fail_cuda(a, err, "copying an output to the host");
    }
    return SL_OK;
}

bool too_big(int64_t x) { return x > (1 << 30); }

}  // namespace

sl_status sl__cuda_pool_tokens(const sl__kargs *a)
{
    const sl_pool_params *p = static_cast<const sl_pool_params *>(a->params);
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2], S = a->out[0].shape[1];
    if (too_big(n) || too_big(d) || H > 65535 || S > (int64_t)INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^30 tokens or channels, or 65535 heads",
                           name_of(a));
    if (H == 0 || S == 0 || d == 0)
        return SL_OK;
    dev_bufs b;
    void *dx, *db, *dout;
    cudaError_t e;
    if ((e = b.put(x->data, sl_tensor_nbytes(x), &dx)) != cudaSuccess ||
        (e = b.put(a->in[1].buf ? a->in[1].data : nullptr, a->in[1].buf ? sl_tensor_nbytes(&a->in[1]) : 0, &db)) !=
            cudaSuccess ||
        (e = b.put(nullptr, sl_tensor_nbytes(&a->out[0]), &dout)) != cudaSuccess)
        return fail_cuda(a, e, "staging");
    SL_LAUNCH(pool_kernel, dim3((unsigned)S, (unsigned)H), 128, 0, 0)(static_cast<const float *>(dx), static_cast<const int32_t *>(db),
                                                        static_cast<float *>(dout), (int)n, (int)d, (int)S,
                                                        (int)(p->block < n ? p->block : n > 0 ? n : 1), (int)p->mode,
                                                        (int)p->normalize, (int)p->len_norm);
    return finish(a, &dout, 1);
}

sl_status sl__cuda_score_lowbit(const sl__kargs *a)
{
    const sl_score_lowbit_params *p = static_cast<const sl_score_lowbit_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t nqb = a->out[0].shape[1], nkb = a->out[0].shape[2];
    if (too_big(dm.nq) || too_big(dm.nk) || nqb > 65535 || dm.hq > 65535 || nkb > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^30 tokens, 65535 query blocks or heads",
                           name_of(a));
    if (dm.hq == 0 || nqb == 0 || nkb == 0)
        return SL_OK;
    size_t nqf = (size_t)(dm.hq * dm.nq * dm.d), nkf = (size_t)(dm.hkv * dm.nk * dm.d);
    float *qq = (float *)malloc(sizeof(float) * nqf), *kq = (float *)malloc(sizeof(float) * nkf),
          *ks = (float *)malloc(sizeof(float) * (size_t)(dm.nk * dm.d + 1)),
          *mean = (float *)malloc(sizeof(float) * (size_t)(dm.hkv * dm.d)),
          *corr = (float *)malloc(sizeof(float) * (size_t)(dm.hq * dm.nq + 1));
    sl_status s = SL_OK;
    if (!qq || !kq || !ks || !mean || !corr)
        s = sl_ctx_fail(a->ctx, SL_ENOMEM, "%s[cuda]: out of host memory", name_of(a));
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
        dev_bufs b;
        void *dq, *dk, *dc, *dl, *dout;
        cudaError_t e;
        if ((e = b.put(qq, sizeof(float) * nqf, &dq)) != cudaSuccess ||
            (e = b.put(kq, sizeof(float) * nkf, &dk)) != cudaSuccess ||
            (e = b.put(corr, sizeof(float) * (size_t)(dm.hq * dm.nq), &dc)) != cudaSuccess ||
            (e = b.put(a->in[2].buf ? a->in[2].data : nullptr, a->in[2].buf ? sl_tensor_nbytes(&a->in[2]) : 0, &dl)) !=
                cudaSuccess ||
            (e = b.put(nullptr, sl_tensor_nbytes(&a->out[0]), &dout)) != cudaSuccess)
            s = fail_cuda(a, e, "staging");
        else {
            SL_LAUNCH(lowbit_kernel, dim3((unsigned)nkb, (unsigned)nqb, (unsigned)dm.hq), 128, 0, 0)(
                static_cast<const float *>(dq), static_cast<const float *>(dk), static_cast<const float *>(dc),
                static_cast<const float *>(dl), static_cast<float *>(dout), (int)dm.hq, (int)dm.group, (int)dm.nq,
                (int)dm.nk, (int)dm.d, (int)p->bq, (int)p->bk, (int)p->causal, (float)dm.scale, (int)nqb, (int)nkb);
            s = finish(a, &dout, 1);
        }
    }
    free(qq), free(kq), free(ks), free(mean), free(corr);
    return s;
}

sl_status sl__cuda_attn_bucket(const sl__kargs *a)
{
    const sl_attn_bucket_params *p = static_cast<const sl_attn_bucket_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    if (dm.d > kBucketMaxD || too_big(dm.nq) || too_big(dm.nk))
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: head_dim above %d or more than 2^30 tokens; found %lld",
                           name_of(a), kBucketMaxD, (long long)dm.d);
    if (dm.hq == 0 || dm.nq == 0)
        return SL_OK;
    dev_bufs b;
    void *dev[8];
    cudaError_t e = cudaSuccess;
    for (int i = 0; i < 5 && e == cudaSuccess; i++)
        e = b.put(a->in[i].buf ? a->in[i].data : nullptr, a->in[i].buf ? sl_tensor_nbytes(&a->in[i]) : 0, &dev[i]);
    for (int i = 0; i < 3 && e == cudaSuccess; i++)
        e = b.put(nullptr, sl_tensor_nbytes(&a->out[i]), &dev[5 + i]);
    if (e != cudaSuccess)
        return fail_cuda(a, e, "staging");
    int64_t items = dm.hq * dm.nq;
    SL_LAUNCH(bucket_kernel, (unsigned)((items + 127) / 128), 128, 0, 0)(
        static_cast<const float *>(dev[0]), static_cast<const float *>(dev[1]), static_cast<const float *>(dev[2]),
        static_cast<const int32_t *>(dev[3]), static_cast<const int32_t *>(dev[4]), static_cast<float *>(dev[5]),
        static_cast<float *>(dev[6]), static_cast<int32_t *>(dev[7]), (int)dm.hq, (int)dm.group, (int)dm.nq,
        (int)dm.nk, (int)dm.d, (int)p->causal, (float)dm.scale, (int)p->use_tau, p->tau);
    return finish(a, dev + 5, 3);
}

sl_status sl__cuda_score_hash(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0], *rot = &a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hr = rot->shape[0], m = rot->shape[2];
    if (too_big(n) || too_big(d) || too_big(m) || too_big(hr * n))
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^30 tokens, channels or items", name_of(a));
    if (hr == 0 || n == 0)
        return SL_OK;
    dev_bufs b;
    void *dx, *dr, *dout;
    cudaError_t e;
    if ((e = b.put(x->data, sl_tensor_nbytes(x), &dx)) != cudaSuccess ||
        (e = b.put(rot->data, sl_tensor_nbytes(rot), &dr)) != cudaSuccess ||
        (e = b.put(nullptr, sl_tensor_nbytes(&a->out[0]), &dout)) != cudaSuccess)
        return fail_cuda(a, e, "staging");
    int64_t items = hr * n;
    SL_LAUNCH(hash_kernel, (unsigned)((items + 127) / 128), 128, 0, 0)(static_cast<const float *>(dx), static_cast<const float *>(dr),
                                                          static_cast<int32_t *>(dout), (int)hx, (int)hr, (int)n, (int)d,
                                                          (int)m);
    return finish(a, &dout, 1);
}
