// cuda/attn_lines.cu — attn.lines on CUDA (issue 19): one CTA per (head, row).
// The row's keys are a virtual list: its visible columns (cols[0 .. nvc), the
// prefix <= the row's position), then its visible diagonals (offs[0 .. nvs),
// key pos - o), where a diagonal key that is also a visible column is dropped
// (a binary search of the sorted columns), so a key counts once. The CTA
// walks the list in chunks of kChunk slots: thread t scores slot t (a dot
// product against the query in shared memory), a block max updates the online
// softmax, then each thread accumulates its output dims over the chunk's
// value rows. Memory: the lists and nothing per pair; time follows the pairs.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "warp.cuh"

#include <math.h>

namespace {

constexpr int kThreads = 128;  // threads per CTA (4 warps)
constexpr int kChunk = 128;    // key slots per chunk
constexpr int kMaxD = 256;     // largest head_dim held in shared memory

// Length of the prefix of a[0 .. n) with 0 <= a[i] <= lim (a ascending, then -1).
__device__ int visible_prefix(const int32_t *a, int n, int lim)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (a[mid] >= 0 && a[mid] <= lim)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

__device__ bool contains(const int32_t *a, int n, int x)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && a[lo] == x;
}

__global__ void lines_kernel(const float *q, const float *k, const float *v, const int32_t *cols, const int32_t *offs,
                             float *o, float *lse, int hq, int group, int lists_per, int nq, int nk, int d, int nc,
                             int ns, float scale)
{
    SL_SHARED(float, qs, [kMaxD]);
    SL_SHARED(float, sc, [kChunk]);
    SL_SHARED(int, key, [kChunk]);
    SL_SHARED(float, red, [kThreads / 32]);
    const int h = blockIdx.x / nq, r = blockIdx.x % nq, g = h / group, lh = h / lists_per;
    const int pos = nk - nq + r;
    const float *qr = q + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        qs[c] = qr[c] * scale;
    const int32_t *cl = cols + (int64_t)lh * nc, *ol = offs + (int64_t)lh * ns;
    const int nvc = visible_prefix(cl, nc, pos), nvs = visible_prefix(ol, ns, pos);
    const float *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
    __syncthreads();
    float m = -INFINITY, l = 0.f, acc[kMaxD / kThreads] = {};
    const int total = nvc + nvs;
    for (int c0 = 0; c0 < total; c0 += kChunk) {
        const int n = total - c0 < kChunk ? total - c0 : kChunk;
        for (int t = threadIdx.x; t < n; t += blockDim.x) {
            const int x = c0 + t;
            int j = x < nvc ? cl[x] : pos - ol[x - nvc];
            if (x >= nvc && contains(cl, nvc, j))
                j = -1;  // on a column too: counted there
            float s = -INFINITY;
            if (j >= 0) {
                const float *kj = kg + (int64_t)j * d;
                float dot = 0.f;
                for (int e = 0; e < d; e++)
                    dot += qs[e] * kj[e];
                s = dot;
            }
            sc[t] = s;
            key[t] = j;
        }
        __syncthreads();
        float cm = -INFINITY;
        for (int t = threadIdx.x; t < n; t += blockDim.x)
            cm = fmaxf(cm, sc[t]);
        const float mnew = fmaxf(m, block_max<kThreads / 32>(cm, red));
        if (mnew != -INFINITY) {
            const float alpha = m == -INFINITY ? 0.f : expf(m - mnew);
            l *= alpha;
            for (int u = 0; u < kMaxD / kThreads; u++)
                acc[u] *= alpha;
            for (int t = 0; t < n; t++) {
                if (key[t] < 0)
                    continue;
                const float p = expf(sc[t] - mnew);
                l += p;
                const float *vj = vg + (int64_t)key[t] * d;
                for (int c = threadIdx.x, u = 0; c < d; c += blockDim.x, u++)
                    acc[u] += p * vj[c];
            }
            m = mnew;
        }
        __syncthreads();
    }
    float *orow = o + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x, u = 0; c < d; c += blockDim.x, u++)
        orow[c] = l > 0.f ? acc[u] / l : 0.f;
    if (threadIdx.x == 0)
        lse[(int64_t)h * nq + r] = l > 0.f ? m + logf(l) : -INFINITY;
}

}  // namespace

sl_status sl__cuda_attn_lines(const sl__kargs *a)
{
    const sl_attn_rows_params *p = static_cast<const sl_attn_rows_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const int64_t ctas = dm.hq * dm.nq, nc = a->in[3].shape[1], ns = a->in[4].shape[1];
    if (dm.d > kMaxD || ctas > INT32_MAX || dm.nk > INT32_MAX || nc > INT32_MAX || ns > INT32_MAX)
        return sl__cuda_unsupported(a, "head_dim up to %d and fewer than 2^31 rows and keys; found head_dim %lld, %lld rows",
                                    kMaxD, (long long)dm.d, (long long)ctas);
    if (ctas == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    // A list of width 0 is staged as no buffer: any valid pointer serves, it is never read.
    const int32_t *cols = nc ? st.input<int32_t>(3) : st.input<int32_t>(4);
    const int32_t *offs = ns ? st.input<int32_t>(4) : cols;
    SL_LAUNCH(lines_kernel, (int)ctas, kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), cols, offs, st.output<float>(0),
        st.output<float>(1), (int)dm.hq, (int)dm.group, (int)(dm.hq / a->in[3].shape[0]), (int)dm.nq, (int)dm.nk,
        (int)dm.d, (int)nc, (int)ns, (float)dm.scale);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
