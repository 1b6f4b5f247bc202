// cuda/stripe.cu — CUDA kernels of score.antidiag (XAttention), score.strided
// (ProxyAttn), score.anchor (AnchorAttention) and gather.rows (PBS-Attn);
// contracts in sparselab.h. Plain kernels: one warp per score row (max, sum
// and scatter passes recompute the dot products instead of storing the row),
// atomics into the output tiles. Each call stages its tensors through device
// memory like the other kernels of this backend. Unverified on a device:
// built with `make CUDA=1`, run by test-cuda where a GPU is present.
#include "dialect.cuh"
#include "stripe.cuh"
#include "warp.cuh"

#include <cuda_runtime.h>
#include <math.h>

namespace {

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
    cudaError_t put(const void *host, size_t bytes, void **out, bool zero = false)
    {
        *out = nullptr;
        if (bytes == 0)
            return cudaSuccess;
        cudaError_t e = cudaMalloc(out, bytes);
        if (e != cudaSuccess)
            return e;
        p[n++] = *out;
        if (host)
            return cudaMemcpy(*out, host, bytes, cudaMemcpyHostToDevice);
        return zero ? cudaMemset(*out, 0, bytes) : cudaSuccess;
    }
};

sl_status finish(const sl__kargs *a, void *dev_out)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fail_cuda(a, err, "kernel launch failed");
    if ((err = cudaDeviceSynchronize()) != cudaSuccess)
        return fail_cuda(a, err, "kernel failed");
    size_t bytes = sl_tensor_nbytes(&a->out[0]);
    if (bytes && (err = cudaMemcpy(a->out[0].data, dev_out, bytes, cudaMemcpyDeviceToHost)) != cudaSuccess)
        return fail_cuda(a, err, "copying the output to the host");
    return SL_OK;
}

bool too_big(int64_t x) { return x > (1 << 30); }

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

__global__ void gather_kernel(const float *x, const int32_t *idx, float *out, int n, int d, int m, int ratio)
{
    int t = blockIdx.x, h = blockIdx.y;
    const float *src = x + ((size_t)(h / ratio) * n + idx[(size_t)h * m + t]) * d;
    float *dst = out + ((size_t)h * m + t) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        dst[c] = src[c];
}

}  // namespace

sl_status sl__cuda_score_antidiag(const sl__kargs *a)
{
    const sl_score_antidiag_params *p = static_cast<const sl_score_antidiag_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    int64_t S = p->stride, Mq = (dm.nq + S - 1) / S, nqb = a->out[0].shape[1], nkb = a->out[0].shape[2];
    if (too_big(dm.nk * dm.d) || too_big(dm.nq * dm.d) || dm.hq > 65535 || Mq > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^30 elements per head or 65535 heads",
                           name_of(a));
    if (dm.hq == 0 || Mq == 0 || nkb == 0)
        return SL_OK;
    double scale = p->scale > 0 ? p->scale : 1.0 / (sqrt((double)dm.d) * (double)S);
    dev_bufs b;
    void *dq, *dk, *dout;
    cudaError_t e;
    if ((e = b.put(a->in[0].data, sl_tensor_nbytes(&a->in[0]), &dq)) != cudaSuccess ||
        (e = b.put(a->in[1].data, sl_tensor_nbytes(&a->in[1]), &dk)) != cudaSuccess ||
        (e = b.put(nullptr, sl_tensor_nbytes(&a->out[0]), &dout, true)) != cudaSuccess)
        return fail_cuda(a, e, "staging");
    SL_LAUNCH(antidiag_kernel, dim3((unsigned)Mq, (unsigned)dm.hq), 32, 0, 0)(
        static_cast<const float *>(dq), static_cast<const float *>(dk), static_cast<float *>(dout), (int)dm.nq,
        (int)dm.nk, (int)dm.d, (int)S, (int)p->block, (int)dm.group, (int)p->causal, (int)dm.offset, (float)scale,
        (int)nqb, (int)nkb);
    return finish(a, dout);
}

sl_status sl__cuda_score_strided(const sl__kargs *a)
{
    const sl_score_strided_params *p = static_cast<const sl_score_strided_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t S = p->stride, Mq = (dm.nq + S - 1) / S, nqb = a->out[0].shape[1], nkb = a->out[0].shape[2];
    if (too_big(dm.nk * dm.d) || too_big(dm.nq * dm.d) || dm.hq > 65535)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^30 elements per head or 65535 heads",
                           name_of(a));
    if (dm.hq == 0 || Mq == 0 || nkb == 0)
        return SL_OK;
    dev_bufs b;
    void *dq, *dk, *dout;
    cudaError_t e;
    if ((e = b.put(a->in[0].data, sl_tensor_nbytes(&a->in[0]), &dq)) != cudaSuccess ||
        (e = b.put(a->in[1].data, sl_tensor_nbytes(&a->in[1]), &dk)) != cudaSuccess ||
        (e = b.put(nullptr, sl_tensor_nbytes(&a->out[0]), &dout, true)) != cudaSuccess)
        return fail_cuda(a, e, "staging");
    SL_LAUNCH(strided_kernel, dim3((unsigned)Mq, (unsigned)dm.hq), 32, 0, 0)(
        static_cast<const float *>(dq), static_cast<const float *>(dk), static_cast<float *>(dout), (int)dm.nq,
        (int)dm.nk, (int)dm.d, (int)S, (int)p->bq, (int)p->bk, (int)dm.group, (int)p->causal, (int)dm.offset,
        (float)dm.scale, (int)nqb, (int)nkb);
    return finish(a, dout);
}

sl_status sl__cuda_score_anchor(const sl__kargs *a)
{
    const sl_score_anchor_params *p = static_cast<const sl_score_anchor_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t N = dm.nq, G = p->block * p->step, nb = a->out[0].shape[1];
    if (too_big(N * dm.d) || dm.hq > 65535 || nb > 65535 || p->step > 65535 || G > INT32_MAX ||
        p->init_cnt * G > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^30 elements per head, 65535 heads or blocks",
                           name_of(a));
    if (dm.hq == 0 || N == 0)
        return SL_OK;
    dev_bufs b;
    void *dq, *dk, *dout, *danc, *dqbar, *dxbar;
    size_t slots = (size_t)(dm.hq * nb * p->step);
    cudaError_t e;
    if ((e = b.put(a->in[0].data, sl_tensor_nbytes(&a->in[0]), &dq)) != cudaSuccess ||
        (e = b.put(a->in[1].data, sl_tensor_nbytes(&a->in[1]), &dk)) != cudaSuccess ||
        (e = b.put(nullptr, sl_tensor_nbytes(&a->out[0]), &dout, true)) != cudaSuccess ||
        (e = b.put(nullptr, sizeof(float) * (size_t)(dm.hq * N), &danc)) != cudaSuccess ||
        (e = b.put(nullptr, sizeof(float) * slots * (size_t)dm.d, &dqbar)) != cudaSuccess ||
        (e = b.put(nullptr, sizeof(float) * slots, &dxbar)) != cudaSuccess)
        return fail_cuda(a, e, "staging");
    const float *q = static_cast<const float *>(dq), *k = static_cast<const float *>(dk);
    SL_LAUNCH(anchor_rows_kernel, dim3((unsigned)N, (unsigned)dm.hq), 32, 0, 0)(q, k, static_cast<float *>(danc), (int)N, (int)dm.d,
                                                                  (int)G, (int)dm.group, (int)p->init_cnt,
                                                                  (int)p->local_cnt, (float)dm.scale);
    SL_LAUNCH(anchor_pool_kernel, dim3((unsigned)p->step, (unsigned)nb, (unsigned)dm.hq), 64, 0, 0)(
        q, static_cast<const float *>(danc), static_cast<float *>(dqbar), static_cast<float *>(dxbar), (int)N,
        (int)dm.d, (int)p->block, (int)G, (int)p->step, (int)nb);
    SL_LAUNCH(anchor_scan_kernel, dim3((unsigned)((N + 127) / 128), (unsigned)nb, (unsigned)dm.hq), 128, 0, 0)(
        k, static_cast<const float *>(dqbar), static_cast<const float *>(dxbar), static_cast<uint8_t *>(dout), (int)N,
        (int)dm.d, (int)p->block, (int)G, (int)p->step, (int)nb, (int)dm.group, (int)p->init_cnt, (int)p->local_cnt,
        (int)p->overlap, (float)dm.scale, (float)p->theta);
    return finish(a, dout);
}

sl_status sl__cuda_gather_rows(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0], *idx = &a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hi = idx->shape[0], m = idx->shape[1];
    if (too_big(n * d) || hi > 65535 || m > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^30 elements per head or 65535 heads",
                           name_of(a));
    if (hi == 0 || m == 0 || d == 0)
        return SL_OK;
    dev_bufs b;
    void *dx, *di, *dout;
    cudaError_t e;
    if ((e = b.put(x->data, sl_tensor_nbytes(x), &dx)) != cudaSuccess ||
        (e = b.put(idx->data, sl_tensor_nbytes(idx), &di)) != cudaSuccess ||
        (e = b.put(nullptr, sl_tensor_nbytes(&a->out[0]), &dout)) != cudaSuccess)
        return fail_cuda(a, e, "staging");
    SL_LAUNCH(gather_kernel, dim3((unsigned)m, (unsigned)hi), 64, 0, 0)(static_cast<const float *>(dx),
                                                          static_cast<const int32_t *>(di), static_cast<float *>(dout),
                                                          (int)n, (int)d, (int)m, (int)(hi / hx));
    return finish(a, dout);
}
