// cuda/reduce.cu — the reductions (reduce.columns, reduce.diagonals,
// reduce.block, reduce.heads, reduce.far, reduce.columns64, reduce.kth, reduce.segments64) on CUDA: one thread per output element, float64
// sums. Compiled with `make CUDA=1`; run under the CUDA simulator by
// `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

#include <math.h>

namespace {

constexpr int kThreads = 256;

int grid_of(int64_t n) { return (int)((n + kThreads - 1) / kThreads); }

bool grid_ok(int64_t n) { return n <= INT32_MAX; }

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

// reduce.columns64: columns_kernel without the rounding
__global__ void columns64_kernel(const float *x, double *y, int64_t H, int64_t R, int64_t C)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= H * C)
        return;
    int64_t h = i / C, j = i % C;
    double s = 0;
    for (int64_t r = 0; r < R; r++)
        s += x[(h * R + r) * C + j];
    y[i] = s;
}

// reduce.kth: one thread per (head, row); the rank-th smallest found bit by
// bit on order-preserving keys of the floats (32 passes over the row's
// first limit entries): exact, no scratch.
__device__ uint32_t kth_key(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void kth_kernel(const float *x, const int32_t *rank, const int32_t *limit, float *y, int64_t HR, int64_t R,
                           int64_t C)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= HR)
        return;
    const float *row = x + i * C;
    int64_t n = limit[i % R], want = rank[i % R] - 1;  // entries of key < the answer's: exactly want of them before it
    uint32_t prefix = 0;
    for (int bit = 31; bit >= 0; bit--) {
        // entries whose key agrees with prefix above bit and has 0 at bit
        uint32_t hi_mask = bit == 31 ? 0u : ~((2u << bit) - 1u);
        int64_t zeros = 0;
        for (int64_t j = 0; j < n; j++) {
            uint32_t k = kth_key(row[j]);
            zeros += (k & hi_mask) == prefix && !((k >> bit) & 1u);
        }
        if (want >= zeros) {
            want -= zeros;
            prefix |= 1u << bit;
        }
    }
    uint32_t u = (prefix & 0x80000000u) ? (prefix & 0x7fffffffu) : ~prefix;
    y[i] = __uint_as_float(u);
}

// reduce.far: one thread per row, float64 in key order (as ref and cpu).
__global__ void far_kernel(const float *x, double *y, int64_t HR, int64_t R, int64_t C, int64_t pos0, int64_t lo,
                           int64_t block, int64_t back)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= HR)
        return;
    int64_t pos = pos0 + i % R, hi = min(min((pos / block - back) * block, pos + 1), C);
    double s = 0;
    for (int64_t j = lo; j < hi; j++)
        s += x[i * C + j];
    y[i] = s;
}

// reduce.segments64 (issue 20, session 5): one thread per segment, its
// columns added in order
__global__ void segments64_kernel(const float *x, double *y, int64_t HG, int64_t C, int64_t G, int64_t size,
                                  int64_t shift)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= HG)
        return;
    int64_t h = i / G, g = i % G;
    int64_t lo = max(g * size - shift, (int64_t)0), hi = min(g * size - shift + size, C);
    double s = 0;
    for (int64_t c = lo; c < hi; c++)
        s += x[h * C + c];
    y[i] = s;
}

// The reductions: one thread per output element.
sl_status run_reduce(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], R = x->shape[1], C = x->shape[2], n = sl_tensor_numel(&a->out[0]);
    if (!grid_ok(grid_of(n)) || n > ((int64_t)1 << 40))
        return sl__cuda_unsupported(a, "output too large");
    if (n == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    const float *xd = static_cast<const float *>(st.in[0]);
    float *y = static_cast<float *>(st.out[0]);
    if (a->op == SL_OP_REDUCE_SEGMENTS64) {
        const sl_reduce_segments_params *p = static_cast<const sl_reduce_segments_params *>(a->params);
        int64_t G = a->out[0].shape[1], C2 = x->shape[1];
        SL_LAUNCH(segments64_kernel, grid_of(n), kThreads, 0, 0)(xd, static_cast<double *>(st.out[0]), n, C2, G,
                                                                 p->size, p->from_end ? G * p->size - C2 : 0);
        return sl__cuda_stage_out(&st, cudaGetLastError());
    }
    if (a->op == SL_OP_REDUCE_KTH) {
        SL_LAUNCH(kth_kernel, grid_of(n), kThreads, 0, 0)(xd, static_cast<const int32_t *>(st.in[1]),
                                                          static_cast<const int32_t *>(st.in[2]), y, n, R, C);
        return sl__cuda_stage_out(&st, cudaGetLastError());
    }
    if (a->op == SL_OP_REDUCE_COLUMNS64) {
        SL_LAUNCH(columns64_kernel, grid_of(n), kThreads, 0, 0)(xd, static_cast<double *>(st.out[0]), H, R, C);
        return sl__cuda_stage_out(&st, cudaGetLastError());
    }
    if (a->op == SL_OP_REDUCE_FAR) {
        const sl_reduce_far_params *p = static_cast<const sl_reduce_far_params *>(a->params);
        SL_LAUNCH(far_kernel, grid_of(n), kThreads, 0, 0)(xd, static_cast<double *>(st.out[0]), n, R, C,
                                                              p->row_pos0 < 0 ? C - R : p->row_pos0, p->lo, p->block,
                                                              p->back);
        return s != SL_OK ? s : sl__cuda_stage_out(&st, cudaGetLastError());
    }
    if (sl_tensor_numel(x) == 0) {
        // nothing to read: sums are 0 (a max over no entries, -inf, cannot occur: tiles are never empty)
        s = sl__cuda_clear_out(&st, 0);
        return s != SL_OK ? s : sl__cuda_stage_out(&st, cudaSuccess);
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
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

}  // namespace

sl_status sl__cuda_reduce_columns(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_diagonals(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_block(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_heads(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_far(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_columns64(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_kth(const sl__kargs *a) { return run_reduce(a); }
sl_status sl__cuda_reduce_segments64(const sl__kargs *a) { return run_reduce(a); }

