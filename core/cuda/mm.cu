// cuda/mm.cu — the mm family on CUDA cores (issue 17): one warp per weight
// row for the sparse executors (lanes split the row's groups or the bits of a
// 32-column word, a warp sum per activation row), one thread per output of
// mm.dense, one thread per (row, group) of mm.nm_encode, one warp per row of
// mm.bitmap_encode (a ballot makes the word; each lane's value slot is the
// popcount of the bits below it). mm.act_sparse: a CTA per (activation row,
// 128 outputs) loops over the row's nonzeros only. Compiled with
// `make CUDA=1`; run under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "warp.cuh"

#include <stdint.h>
#include <stdlib.h>
#include <vector>
#ifndef SL_CUDASIM
#include <cusparse.h>
#endif

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;

__global__ void dense_kernel(const float *x, const float *w, float *y, int64_t T, int64_t K, int64_t N)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= T * N)
        return;
    int64_t t = i / N, r = i % N;
    float s = 0;
    for (int64_t k = 0; k < K; k++)
        s += x[t * K + k] * w[r * K + k];
    y[i] = s;
}

__global__ void nm_encode_kernel(const float *w, float *vals, uint8_t *pos, int64_t N, int64_t K, int m, int n)
{
    int64_t G = (K + m - 1) / m, i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= N * G)
        return;
    int64_t r = i / G, g = i % G, c0 = g * m;
    int width = K - c0 < m ? (int)(K - c0) : m;
    const float *row = w + r * K + c0;
    float *v = vals + i * n;
    uint8_t *q = pos + i * n;
    int s = 0;
    // column c is kept iff fewer than n columns beat it (larger |w|, or equal at a lower column)
    for (int c = 0; c < width; c++) {
        float a = fabsf(row[c]);
        int beat = 0;
        for (int o = 0; o < width; o++) {
            float b = fabsf(row[o]);
            beat += b > a || (b == a && o < c);
        }
        if (beat < n) {
            v[s] = row[c];
            q[s++] = (uint8_t)c;
        }
    }
    for (; s < n; s++)
        v[s] = 0, q[s] = 0;
}

__global__ void bitmap_encode_kernel(const float *w, uint32_t *bits, float *vals, int64_t N, int64_t K, int64_t nw,
                                     int64_t cap)
{
    int lane = threadIdx.x & 31;
    int64_t r = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
    if (r >= N)
        return;
    int64_t off = 0;
    for (int64_t c = 0; c < nw; c++) {
        int64_t k = c * 32 + lane;
        float v = k < K ? w[r * K + k] : 0.f;
        unsigned word = __ballot_sync(0xffffffffu, v != 0.f);
        if (v != 0.f)
            vals[r * cap + off + __popc(word & ((1u << lane) - 1u))] = v;
        if (lane == 0)
            bits[r * nw + c] = word;
        off += __popc(word);
    }
    for (int64_t c = off + lane; c < cap; c += 32)
        vals[r * cap + c] = 0.f;
}

__global__ void nm_kernel(const float *x, const float *vals, const uint8_t *pos, float *y, int64_t T, int64_t K,
                          int64_t N, int m, int n)
{
    int lane = threadIdx.x & 31;
    int64_t r = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
    if (r >= N)
        return;
    int64_t G = (K + m - 1) / m;
    const float *v = vals + r * G * n;
    const uint8_t *q = pos + r * G * n;
    for (int64_t t = 0; t < T; t++) {
        const float *xr = x + t * K;
        float s = 0;
        for (int64_t g = lane; g < G; g += 32)
            for (int j = 0; j < n; j++)
                s += v[g * n + j] * xr[g * m + q[g * n + j]];
        s = warp_sum(s);
        if (lane == 0)
            y[t * N + r] = s;
    }
}

__global__ void bitmap_kernel(const float *x, const uint32_t *bits, const float *vals, float *y, int64_t T, int64_t K,
                              int64_t N, int64_t nw, int64_t cap)
{
    int lane = threadIdx.x & 31;
    int64_t r = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
    if (r >= N)
        return;
    const uint32_t *b = bits + r * nw;
    const float *v = vals + r * cap;
    for (int64_t t = 0; t < T; t++) {
        const float *xr = x + t * K;
        float s = 0;
        int64_t off = 0;
        for (int64_t c = 0; c < nw; c++) {
            uint32_t word = b[c];
            if ((word >> lane) & 1u)
                s += v[off + __popc(word & ((1u << lane) - 1u))] * xr[c * 32 + lane];
            off += __popc(word);
        }
        s = warp_sum(s);
        if (lane == 0)
            y[t * N + r] = s;
    }
}

// mm.out_sparse: one warp per (activation row, listed output): lanes split
// the dot product of x[t] and row r of w, a shuffle sum, lane 0 writes.
__global__ void out_sparse_kernel(const float *x, const float *w, const int32_t *sel, const float *g, float *y,
                                  int64_t T, int64_t K, int64_t N, int64_t S)
{
    int lane = threadIdx.x & 31;
    int64_t item = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
    if (item >= T * S)
        return;
    int64_t t = item / S;
    int32_t r = sel[item];
    if (r < 0)
        return;
    const float *xr = x + t * K, *wr = w + (int64_t)r * K;
    float s = 0;
    for (int64_t k = lane; k < K; k += 32)
        s += xr[k] * wr[k];
    s = warp_sum(s);
    if (lane == 0)
        y[t * N + r] = g ? s * g[t * N + r] : s;
}

// A CTA per (activation row t, 128 outputs): the row's nonzero columns are
// compacted into shared memory 256 at a time (a ballot per warp, in column
// order), then each thread of the first 128 adds x[t, k] . wt[k, c] for them.
constexpr int kActCols = 128;
constexpr int kActChunk = kThreads;

__global__ void act_sparse_kernel(const float *x, const float *wt, float *y, int64_t K, int64_t N)
{
    SL_SHARED(int, s_idx, [kActChunk]);
    SL_SHARED(float, s_val, [kActChunk]);
    SL_SHARED(int, s_warp, [kWarps + 1]);
    int64_t t = blockIdx.y, c = (int64_t)blockIdx.x * kActCols + threadIdx.x;
    int lane = threadIdx.x & 31, wid = threadIdx.x / 32;
    const float *xr = x + t * K;
    float acc = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kActChunk) {
        int64_t k = k0 + threadIdx.x;
        float v = k < K ? xr[k] : 0.f;
        unsigned word = __ballot_sync(0xffffffffu, v != 0.f);
        if (lane == 0)
            s_warp[wid] = __popc(word);
        __syncthreads();
        if (threadIdx.x == 0) {
            int run = 0;
            for (int w = 0; w < kWarps; w++) {
                int cnt = s_warp[w];
                s_warp[w] = run;
                run += cnt;
            }
            s_warp[kWarps] = run;
        }
        __syncthreads();
        if (v != 0.f) {
            int slot = s_warp[wid] + __popc(word & ((1u << lane) - 1u));
            s_idx[slot] = (int)(k - k0);
            s_val[slot] = v;
        }
        __syncthreads();
        int cnt = s_warp[kWarps];
        if (threadIdx.x < kActCols && c < N)
            for (int i = 0; i < cnt; i++)
                acc += s_val[i] * wt[(k0 + s_idx[i]) * N + c];
        __syncthreads();
    }
    if (threadIdx.x < kActCols && c < N)
        y[t * N + c] = acc;
}

unsigned blocks_of(int64_t n, int64_t per) { return (unsigned)((n + per - 1) / per); }

}  // namespace

sl_status sl__cuda_mm_dense(const sl__kargs *a)
{
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0];
    if (T * N > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^38 outputs");
    if (T * N == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(dense_kernel, blocks_of(T * N, kThreads), kThreads, 0, 0)(st.input<float>(0), st.input<float>(1),
                                                                         st.output<float>(0), T, K, N);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_mm_nm_encode(const sl__kargs *a)
{
    const sl_mm_nm_params *p = (const sl_mm_nm_params *)a->params;
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], G = (K + p->m - 1) / p->m;
    if (N * G > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^38 groups");
    if (N * G == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(nm_encode_kernel, blocks_of(N * G, kThreads), kThreads, 0, 0)(
        st.input<float>(0), st.output<float>(0), st.output<uint8_t>(1), N, K, (int)p->m, (int)p->n);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_mm_bitmap_encode(const sl__kargs *a)
{
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], nw = a->out[0].shape[1], cap = a->out[1].shape[1];
    if (N > (int64_t)INT32_MAX * kWarps / 2)
        return sl__cuda_unsupported(a, "more than 2^33 rows");
    if (N == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(bitmap_encode_kernel, blocks_of(N, kWarps), kThreads, 0, 0)(
        st.input<float>(0), st.output<uint32_t>(0), st.output<float>(1), N, K, nw, cap);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_mm_nm(const sl__kargs *a)
{
    const sl_mm_nm_params *p = (const sl_mm_nm_params *)a->params;
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0];
    if (N > (int64_t)INT32_MAX * kWarps / 2)
        return sl__cuda_unsupported(a, "more than 2^33 rows");
    if (T * N == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(nm_kernel, blocks_of(N, kWarps), kThreads, 0, 0)(st.input<float>(0), st.input<float>(1),
                                                               st.input<uint8_t>(2), st.output<float>(0), T, K, N,
                                                               (int)p->m, (int)p->n);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

#ifndef SL_CUDASIM
// mm.bitmap through cuSPARSE (issue 17, session 3): the bitmap and packed
// values become CSR on the host (row_ptr, col, val), uploaded; then SpMM with
// A = W [N, K] CSR, B = x viewed column-major [K, T] (ld K), C = y viewed
// column-major [N, T] (ld N): C = A . B is y = x . W^T.
static sl_status cusparse_fail(const sl__kargs *a, cusparseStatus_t c, const char *what)
{
    return sl_ctx_fail(a->ctx, SL_EDEVICE, "%s[cuda]: cuSPARSE %s: %s", sl__cuda_op_name(a), what,
                       cusparseGetErrorString(c));
}

static sl_status bitmap_csr(const sl__kargs *a, int64_t nnz)
{
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0], nw = a->in[1].shape[1];
    int64_t cap = a->in[2].shape[1];
    const uint32_t *bits = (const uint32_t *)a->in[1].data;
    const float *vals = (const float *)a->in[2].data;
    std::vector<int32_t> row_ptr((size_t)N + 1), col((size_t)nnz);
    std::vector<float> val((size_t)nnz);
    int64_t at = 0;
    for (int64_t r = 0; r < N; r++) {
        row_ptr[(size_t)r] = (int32_t)at;
        int64_t slot = 0;
        for (int64_t w = 0; w < nw; w++)
            for (uint32_t b = bits[r * nw + w]; b; b &= b - 1) {
                col[(size_t)at] = (int32_t)(w * 32 + __builtin_ctz(b));
                val[(size_t)at++] = vals[r * cap + slot++];
            }
    }
    row_ptr[(size_t)N] = (int32_t)at;
    sl__cuda_stage st(a);
    void *d_rp, *d_col, *d_val, *buf = nullptr;
    if (sl_status s = sl__cuda_stage_in(&st, 1u << 1 | 1u << 2); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_upload(&st, row_ptr.data(), sizeof(int32_t) * row_ptr.size(), &d_rp); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_upload(&st, col.data(), sizeof(int32_t) * col.size(), &d_col); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_upload(&st, val.data(), sizeof(float) * val.size(), &d_val); s != SL_OK)
        return s;
    cusparseHandle_t h = nullptr;
    cusparseSpMatDescr_t A = nullptr;
    cusparseDnMatDescr_t B = nullptr, C = nullptr;
    float alpha = 1.f, beta = 0.f;
    size_t bytes = 0;
    sl_status s = SL_OK;
    cusparseStatus_t c;
    if ((c = cusparseCreate(&h)) != CUSPARSE_STATUS_SUCCESS)
        s = cusparse_fail(a, c, "create");
    else if ((c = cusparseCreateCsr(&A, N, K, nnz, d_rp, d_col, d_val, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_32I,
                                    CUSPARSE_INDEX_BASE_ZERO, CUDA_R_32F)) != CUSPARSE_STATUS_SUCCESS)
        s = cusparse_fail(a, c, "CSR descriptor");
    else if ((c = cusparseCreateDnMat(&B, K, T, K, (void *)st.input<float>(0), CUDA_R_32F, CUSPARSE_ORDER_COL)) !=
                 CUSPARSE_STATUS_SUCCESS ||
             (c = cusparseCreateDnMat(&C, N, T, N, st.output<float>(0), CUDA_R_32F, CUSPARSE_ORDER_COL)) !=
                 CUSPARSE_STATUS_SUCCESS)
        s = cusparse_fail(a, c, "dense descriptors");
    else if ((c = cusparseSpMM_bufferSize(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                          &alpha, A, B, &beta, C, CUDA_R_32F, CUSPARSE_SPMM_ALG_DEFAULT, &bytes)) !=
             CUSPARSE_STATUS_SUCCESS)
        s = cusparse_fail(a, c, "SpMM buffer size");
    else if ((s = sl__cuda_scratch(&st, bytes, &buf)) == SL_OK &&
             (c = cusparseSpMM(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE, &alpha, A, B,
                               &beta, C, CUDA_R_32F, CUSPARSE_SPMM_ALG_DEFAULT, buf)) != CUSPARSE_STATUS_SUCCESS)
        s = cusparse_fail(a, c, "SpMM");
    if (C)
        cusparseDestroyDnMat(C);
    if (B)
        cusparseDestroyDnMat(B);
    if (A)
        cusparseDestroySpMat(A);
    if (h)
        cusparseDestroy(h);
    if (s != SL_OK)
        return s;
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
#endif

sl_status sl__cuda_mm_bitmap(const sl__kargs *a)
{
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0], nw = a->in[1].shape[1];
    int64_t cap = a->in[2].shape[1];
    if (N > (int64_t)INT32_MAX * kWarps / 2)
        return sl__cuda_unsupported(a, "more than 2^33 rows");
    if (T * N == 0)
        return SL_OK;
#ifndef SL_CUDASIM
    const sl_mm_bitmap_params *p = (const sl_mm_bitmap_params *)a->params;
    if (p->csr_below > 0 && T <= INT32_MAX && K <= INT32_MAX && N <= INT32_MAX) {
        int64_t nnz = 0;
        const uint32_t *bits = (const uint32_t *)a->in[1].data;
        for (int64_t i = 0; i < N * nw; i++)
            nnz += __builtin_popcount(bits[i]);
        if (nnz > 0 && nnz <= INT32_MAX && (double)nnz < p->csr_below * (double)N * (double)K)
            return bitmap_csr(a, nnz);
    }
#endif
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(bitmap_kernel, blocks_of(N, kWarps), kThreads, 0, 0)(st.input<float>(0), st.input<uint32_t>(1),
                                                                   st.input<float>(2), st.output<float>(0), T, K, N,
                                                                   nw, cap);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_mm_act_sparse(const sl__kargs *a)
{
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[1];
    if (T > 65535 || N > (int64_t)INT32_MAX * kActCols / 2)
        return sl__cuda_unsupported(a, "more than 65535 activation rows or 2^37 outputs");
    if (T * N == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(act_sparse_kernel, dim3(blocks_of(N, kActCols), (unsigned)T), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.output<float>(0), K, N);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_mm_out_sparse(const sl__kargs *a)
{
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0], S = a->in[2].shape[1];
    if (T * S > (int64_t)INT32_MAX * kWarps / 2)
        return sl__cuda_unsupported(a, "more than 2^33 listed outputs");
    if (T * N == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_clear_out(&st, 0); s != SL_OK)
        return s;
    if (T * S > 0)
        SL_LAUNCH(out_sparse_kernel, blocks_of(T * S, kWarps), kThreads, 0, 0)(
            st.input<float>(0), st.input<float>(1), st.input<int32_t>(2),
            a->in[3].buf ? st.input<float>(3) : (const float *)nullptr, st.output<float>(0), T, K, N, S);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

// ---- mm.moe: the grouped-GEMM MoE executor (issue 17, session 4) ----
// The host sorts the (token, slot) pairs by expert (counting sort, stable)
// and cuts each expert's pairs into tiles of up to kMoeRows pairs; the tile
// table (expert, first pair, pairs) is the segment table of one launch over
// all groups per stage:
//   up:      a CTA per (tile, 256 units of its expert): the tile's x rows
//            are staged 256 columns at a time in shared memory, each thread
//            keeps its unit's gate and up sums for every row of the tile;
//            h = silu(g) u into hs [pairs, hw];
//   down:    a CTA per (tile, 256 outputs): the tile's h rows are staged
//            256 units at a time, each thread sums its output column;
//   combine: a thread per (token, output): the weighted sum of its pairs'
//            rows in slot order.
namespace {

constexpr int kMoeRows = 8;

__global__ void moe_up_kernel(const float *x, const float *w1, const float *w3, const int32_t *offs,
                              const int32_t *tiles, const int32_t *ptok, float *hs, int64_t D, int64_t hw)
{
    SL_SHARED(float, s_x, [kMoeRows][kThreads]);
    const int32_t *tile = tiles + 3 * (int64_t)blockIdx.y;
    int e = tile[0], p0 = tile[1], rows = tile[2];
    int64_t ne = offs[e + 1] - offs[e], i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if ((int64_t)blockIdx.x * kThreads >= ne) // the same for the whole CTA
        return;
    bool on = i < ne;
    const float *a = w1 + (offs[e] + (on ? i : 0)) * D, *b = w3 + (offs[e] + (on ? i : 0)) * D;
    float g[kMoeRows], u[kMoeRows];
    for (int r = 0; r < kMoeRows; r++)
        g[r] = u[r] = 0.f;
    for (int64_t k0 = 0; k0 < D; k0 += kThreads) {
        int64_t k = k0 + threadIdx.x, kc = D - k0 < kThreads ? D - k0 : kThreads;
        for (int r = 0; r < rows; r++)
            s_x[r][threadIdx.x] = k < D ? x[(int64_t)ptok[p0 + r] * D + k] : 0.f;
        __syncthreads();
        if (on)
            for (int64_t c = 0; c < kc; c++) {
                float wa = a[k0 + c], wb = b[k0 + c];
                for (int r = 0; r < kMoeRows; r++)
                    if (r < rows) {
                        g[r] += s_x[r][c] * wa;
                        u[r] += s_x[r][c] * wb;
                    }
            }
        __syncthreads();
    }
    if (on)
        for (int r = 0; r < rows; r++)
            hs[(int64_t)(p0 + r) * hw + i] = g[r] / (1.f + expf(-g[r])) * u[r];
}

__global__ void moe_down_kernel(const float *hs, const float *w2t, const int32_t *offs, const int32_t *tiles,
                                float *ys, int64_t D, int64_t hw)
{
    SL_SHARED(float, s_h, [kMoeRows][kThreads]);
    const int32_t *tile = tiles + 3 * (int64_t)blockIdx.y;
    int e = tile[0], p0 = tile[1], rows = tile[2];
    int64_t ne = offs[e + 1] - offs[e], d = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    bool on = d < D;
    float acc[kMoeRows];
    for (int r = 0; r < kMoeRows; r++)
        acc[r] = 0.f;
    for (int64_t c0 = 0; c0 < ne; c0 += kThreads) {
        int64_t c = c0 + threadIdx.x, cc = ne - c0 < kThreads ? ne - c0 : kThreads;
        for (int r = 0; r < rows; r++)
            s_h[r][threadIdx.x] = c < ne ? hs[(int64_t)(p0 + r) * hw + c] : 0.f;
        __syncthreads();
        if (on)
            for (int64_t j = 0; j < cc; j++) {
                float w = w2t[(offs[e] + c0 + j) * D + d];
                for (int r = 0; r < kMoeRows; r++)
                    if (r < rows)
                        acc[r] += s_h[r][j] * w;
            }
        __syncthreads();
    }
    if (on)
        for (int r = 0; r < rows; r++)
            ys[(int64_t)(p0 + r) * D + d] = acc[r];
}

__global__ void moe_combine_kernel(const float *ys, const int32_t *pos, const float *rw, float *y, int64_t T,
                                   int64_t D, int64_t k)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= T * D)
        return;
    int64_t t = i / D, d = i % D;
    float s = 0.f;
    for (int64_t j = 0; j < k; j++) {
        int32_t p = pos[t * k + j];
        if (p >= 0)
            s += (rw ? rw[t * k + j] : 1.f) * ys[(int64_t)p * D + d];
    }
    y[i] = s;
}

}  // namespace

sl_status sl__cuda_mm_moe(const sl__kargs *a)
{
    int64_t T = a->in[0].shape[0], D = a->in[0].shape[1], E = a->in[4].shape[0] - 1, k = a->in[5].shape[1];
    if (T * k >= INT32_MAX / 2 || T * D > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^30 routed pairs or 2^38 outputs");
    if (T * D == 0)
        return SL_OK;
    const int32_t *offs = (const int32_t *)a->in[4].data, *route = (const int32_t *)a->in[5].data;
    int64_t P = T * k, hw = 1;
    for (int64_t e = 0; e < E; e++)
        hw = offs[e + 1] - offs[e] > hw ? offs[e + 1] - offs[e] : hw;
    // the counting sort by expert and the tile table, on the host
    std::vector<int64_t> seg((size_t)E + 2, 0);
    std::vector<int32_t> pos((size_t)P), ptok((size_t)P + 1), tiles;
    for (int64_t i = 0; i < P; i++)
        if (route[i] >= 0)
            seg[(size_t)route[i] + 2]++;
    for (int64_t e = 0; e < E; e++)
        seg[(size_t)e + 2] += seg[(size_t)e + 1];
    for (int64_t i = 0; i < P; i++) {
        if (route[i] < 0) {
            pos[(size_t)i] = -1;
            continue;
        }
        int64_t p = seg[(size_t)route[i] + 1]++;
        pos[(size_t)i] = (int32_t)p;
        ptok[(size_t)p] = (int32_t)(i / k);
    }
    seg[0] = 0;
    int64_t pairs = seg[(size_t)E];
    for (int64_t e = 0; e < E; e++)
        for (int64_t r0 = seg[(size_t)e]; r0 < seg[(size_t)e + 1]; r0 += kMoeRows) {
            int64_t rows = seg[(size_t)e + 1] - r0 < kMoeRows ? seg[(size_t)e + 1] - r0 : kMoeRows;
            tiles.push_back((int32_t)e);
            tiles.push_back((int32_t)r0);
            tiles.push_back((int32_t)rows);
        }
    int64_t n_tiles = (int64_t)tiles.size() / 3;
    if (n_tiles > 65535)
        return sl__cuda_unsupported(a, "%lld expert tiles, more than 65535 (grid y)", (long long)n_tiles);
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st, 1u << 5); s != SL_OK) // route: the host tables replace it
        return s;
    void *d_pos, *d_ptok, *d_tiles = nullptr, *d_hs = nullptr, *d_ys = nullptr;
    if (sl_status s = sl__cuda_upload(&st, pos.data(), sizeof(int32_t) * (size_t)P, &d_pos); s != SL_OK)
        return s;
    if (sl_status s = sl__cuda_upload(&st, ptok.data(), sizeof(int32_t) * (size_t)(P + 1), &d_ptok); s != SL_OK)
        return s;
    if (n_tiles > 0) {
        if (sl_status s = sl__cuda_upload(&st, tiles.data(), sizeof(int32_t) * tiles.size(), &d_tiles); s != SL_OK)
            return s;
        if (sl_status s = sl__cuda_scratch(&st, sizeof(float) * (size_t)(pairs * hw), &d_hs); s != SL_OK)
            return s;
        if (sl_status s = sl__cuda_scratch(&st, sizeof(float) * (size_t)(pairs * D), &d_ys); s != SL_OK)
            return s;
        SL_LAUNCH(moe_up_kernel, dim3(blocks_of(hw, kThreads), (unsigned)n_tiles), kThreads, 0, 0)(
            st.input<float>(0), st.input<float>(1), st.input<float>(2), st.input<int32_t>(4),
            (const int32_t *)d_tiles, (const int32_t *)d_ptok, (float *)d_hs, D, hw);
        SL_LAUNCH(moe_down_kernel, dim3(blocks_of(D, kThreads), (unsigned)n_tiles), kThreads, 0, 0)(
            (const float *)d_hs, st.input<float>(3), st.input<int32_t>(4), (const int32_t *)d_tiles, (float *)d_ys,
            D, hw);
    }
    SL_LAUNCH(moe_combine_kernel, blocks_of(T * D, kThreads), kThreads, 0, 0)(
        (const float *)d_ys, (const int32_t *)d_pos, a->in[6].buf ? st.input<float>(6) : (const float *)nullptr,
        st.output<float>(0), T, D, k);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
