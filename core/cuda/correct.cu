// cuda/correct.cu — the corrections (correct.*) on CUDA: element-wise kernels over the sparse output (unverified on a device: written and compiled without a GPU).

#include "dialect.cuh"
#include "correct.cuh"

namespace {

// correct.delta: one thread per output element (h, i, c); lse by the c == 0 thread.
__global__ void delta_kernel(const sl__cuda_delta a)
{
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t total = (int64_t)a.h * a.n * a.d;
    if (idx >= total)
        return;
    const int64_t c = idx % a.d, i = (idx / a.d) % a.n, h = idx / ((int64_t)a.d * a.n);
    const float *rows = a.o_rows + h * a.r_n * a.d;
    int64_t dense_row = i >= a.s_p ? a.g_n + (i - a.s_p) : (i % a.gamma == 0 ? i / a.gamma : -1);
    float out;
    float l;
    if (dense_row >= 0) {
        out = rows[dense_row * a.d + c];
        l = a.lse_rows[h * a.r_n + dense_row];
    } else {
        const float si = a.o_sparse[idx];
        l = a.lse_sparse[h * a.n + i];
        if (a.mode == 1) {
            out = si;
        } else {
            const int64_t g = i / a.gamma, g2 = (a.smooth && g + 1 < a.g_n) ? g + 1 : g;
            const float d1 = rows[g * a.d + c] - a.o_sparse[(h * a.n + g * a.gamma) * a.d + c];
            if (a.smooth) {
                const float d2 = rows[g2 * a.d + c] - a.o_sparse[(h * a.n + g2 * a.gamma) * a.d + c];
                const float r = (float)(i % a.gamma) / (float)a.gamma;
                out = si + (1.0f - r) * d1 + r * d2;
            } else {
                out = si + d1;
            }
        }
    }
    a.o[idx] = out;
    if (c == 0)
        a.lse[h * a.n + i] = l;
}

}  // namespace

cudaError_t sl__cuda_correct_delta(const sl__cuda_delta &a, cudaStream_t st)
{
    const int64_t total = (int64_t)a.h * a.n * a.d;
    const int threads = 256;
    const int64_t blocks = (total + threads - 1) / threads;
    SL_LAUNCH(delta_kernel, (unsigned)blocks, threads, 0, st)(a);
    return cudaGetLastError();
}

// ---- correct.rectify, correct.compensate, correct.smooth_k, correct.lepe ----
// Straightforward kernels (one CTA per pooled block or row, threads over
// channels or key blocks), written for correctness first; unverified on a
// device.

namespace {

constexpr int kThreads = 128;

// Block-wide sum / max of one value per thread (blockDim.x = kThreads).
__device__ float block_reduce(float x, bool is_max)
{
    SL_SHARED(float, part, [kThreads / 32]);
    SL_SHARED(float, result, );
    for (int w = 16; w > 0; w /= 2) {
        float y = __shfl_xor_sync(0xffffffffu, x, w);
        x = is_max ? fmaxf(x, y) : x + y;
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0)
        part[warp] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = part[0];
        for (int i = 1; i < kThreads / 32; i++)
            t = is_max ? fmaxf(t, part[i]) : t + part[i];
        result = t;
    }
    __syncthreads();
    return result;
}

// Mean and mean |deviation| of rows [r0, r1) of x [*, d] (and the mean of y when given).
__global__ void pool_kernel(const float *x, const float *y, int n_rows, int rows_per_block, int d, int n_blocks,
                            float *mean, float *dev, float *ymean)
{
    const int B = blockIdx.x, head = blockIdx.y;
    const int r0 = B * rows_per_block, r1 = min(r0 + rows_per_block, n_rows);
    const float *xh = x + (int64_t)head * n_rows * d, *yh = y ? y + (int64_t)head * n_rows * d : nullptr;
    const int64_t out = ((int64_t)head * n_blocks + B) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        double m = 0, e = 0, my = 0;
        for (int r = r0; r < r1; r++) {
            m += xh[(int64_t)r * d + c];
            if (yh)
                my += yh[(int64_t)r * d + c];
        }
        m /= (r1 - r0);
        for (int r = r0; r < r1; r++)
            e += fabs(xh[(int64_t)r * d + c] - m);
        mean[out + c] = (float)m;
        dev[out + c] = (float)(e / (r1 - r0));
        if (yh)
            ymean[out + c] = (float)(my / (r1 - r0));
    }
}

// Per (query block, head): pooled logits and flags of the visible key blocks.
__global__ void rect_flag_kernel(const sl__cuda_rectify a)
{
    SL_SHARED(int, n_trusted, );
    const int I = blockIdx.x, h = blockIdx.y, g = h / (a.hq / a.hkv), mh = h / (a.hq / a.hm);
    const int64_t row = ((int64_t)h * a.nqb + I) * a.nkb;
    if (threadIdx.x == 0)
        n_trusted = 0;
    for (int J = threadIdx.x; J < a.nkb; J += blockDim.x)
        a.flag[row + J] = 0;
    __syncthreads();
    for (int e = a.row_ptr[mh * (a.nqb + 1) + I] + threadIdx.x; e < a.row_ptr[mh * (a.nqb + 1) + I + 1]; e += blockDim.x)
        a.flag[row + a.col_idx[e]] = 1;
    __syncthreads();
    const int last = a.nk - a.nq + min((I + 1) * a.bq, a.nq) - 1;
    const int n_vis = a.causal ? min(a.nkb, last / a.bk + 1) : a.nkb;
    const float *qm = a.qbar + ((int64_t)h * a.nqb + I) * a.d, *qe = a.qdev + ((int64_t)h * a.nqb + I) * a.d;
    int mine = 0;
    for (int J = threadIdx.x; J < n_vis; J += blockDim.x) {
        const float *km = a.kbar + ((int64_t)g * a.nkb + J) * a.d, *ke = a.kdev + ((int64_t)g * a.nkb + J) * a.d;
        float raw = 0, e1 = 0, e2 = 0;
        for (int c = 0; c < a.d; c++) {
            raw += qm[c] * km[c];
            e1 += qe[c] * km[c];
            e2 += qm[c] * ke[c];
        }
        a.score[row + J] = a.scale * raw;
        if (a.flag[row + J] == 0) {
            const bool ng = a.gapr && !(fabsf(raw) > fabsf(e1) + fabsf(e2));
            a.flag[row + J] = ng ? 1 : 2;
            mine += !ng;
        }
    }
    atomicAdd(&n_trusted, mine);
    __syncthreads();
    if (threadIdx.x == 0)
        a.trusted[(int64_t)h * a.nqb + I] = (float)n_trusted;
}

// Per (row, head): R, restored and O = R·O* + N.
__global__ void rect_row_kernel(const sl__cuda_rectify a)
{
    const int i = blockIdx.x, h = blockIdx.y, g = h / (a.hq / a.hkv), I = i / a.bq;
    const int64_t row = ((int64_t)h * a.nqb + I) * a.nkb, pos = (int64_t)a.nk - a.nq + i;
    auto count = [&](int J) -> int {
        const int64_t j0 = (int64_t)J * a.bk, j1 = min(j0 + a.bk, (int64_t)a.nk);
        if (!a.causal)
            return (int)(j1 - j0);
        if (pos < j0)
            return 0;
        return (int)(min(pos + 1, j1) - j0);
    };
    float mx = -INFINITY;
    for (int J = threadIdx.x; J < a.nkb; J += blockDim.x)
        if (count(J) > 0)
            mx = fmaxf(mx, a.score[row + J]);
    mx = block_reduce(mx, true);
    float zi = 0, zo = 0;
    for (int J = threadIdx.x; J < a.nkb && mx > -INFINITY; J += blockDim.x) {
        const int cnt = count(J);
        if (!cnt)
            continue;
        const float w = (a.ipar ? (float)cnt : 1.0f) * expf(a.score[row + J] - mx);
        if (a.flag[row + J] == 2)
            zo += w;
        else
            zi += w;
    }
    zi = block_reduce(zi, false);
    zo = block_reduce(zo, false);
    const float z = zi + zo;
    const int64_t o_row = ((int64_t)h * a.nq + i) * a.d;
    for (int c = threadIdx.x; c < a.d; c += blockDim.x) {
        if (!(z > 0)) {
            a.o[o_row + c] = a.o_sparse[o_row + c];
            continue;
        }
        float n = 0;
        for (int J = 0; J < a.nkb; J++) {
            if (a.flag[row + J] != 2)
                continue;
            const int cnt = count(J);
            if (!cnt)
                continue;
            n += (a.ipar ? (float)cnt : 1.0f) * expf(a.score[row + J] - mx) * a.vbar[((int64_t)g * a.nkb + J) * a.d + c];
        }
        a.o[o_row + c] = zi / z * a.o_sparse[o_row + c] + n / z;
    }
    if (threadIdx.x == 0) {
        a.r[(int64_t)h * a.nq + i] = z > 0 ? zi / z : 1.0f;
        a.rest[(int64_t)h * a.nq + i] = z > 0 ? zo / z : 0.0f;
    }
}

__global__ void prefix_kernel(const float *v, int nk, int d, float *cum)
{
    const int g = blockIdx.x;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        double s = 0;
        for (int j = 0; j < nk; j++) {
            s += v[((int64_t)g * nk + j) * d + c];
            cum[((int64_t)g * nk + j) * d + c] = (float)s;
        }
    }
}

__global__ void comp_row_kernel(const sl__cuda_comp a)
{
    const int i = blockIdx.x, h = blockIdx.y, g = h / (a.hq / a.hkv);
    const int64_t seen = a.causal ? (int64_t)a.nk - a.nq + i + 1 : a.nk;
    const int64_t r = (int64_t)h * a.nq + i;
    const double L = a.lse[r], R = a.lse_ref[r];
    double f = 1, lnew = L;
    const bool untouched = seen <= a.min_len;
    if (!untouched) {
        const double lmiss = a.estimate == 0 ? (R > L ? R + log1p(-exp(L - R)) : -INFINITY) : R;
        if (lmiss > -INFINITY && a.sdc_scale > 0) {
            const double lc = log(a.sdc_scale) + lmiss;
            if (L == -INFINITY) {
                f = 0;
                lnew = lc;
            } else {
                const double m = L > lc ? L : lc;
                lnew = m + log(exp(L - m) + exp(lc - m));
                f = exp(L - lnew);
            }
        }
    }
    const double lam = (!untouched && a.vmc) ? 1 - f : 0;
    for (int c = threadIdx.x; c < a.d; c += blockDim.x) {
        double out = f * a.o_in[r * a.d + c];
        if (lam > 0)
            out += lam * a.cum[((int64_t)g * a.nk + seen - 1) * a.d + c] / (double)seen;
        a.o[r * a.d + c] = (float)out;
    }
    if (threadIdx.x == 0) {
        a.lse_out[r] = (float)lnew;
        a.lost[r] = untouched ? 0.0f : (float)(1 - f);
    }
}

__global__ void smooth_mean_kernel(const sl__cuda_smooth a)
{
    const int g = blockIdx.x;
    for (int c = threadIdx.x; c < a.d; c += blockDim.x) {
        double s = 0;
        for (int j = 0; j < a.nk; j++)
            s += a.k[((int64_t)g * a.nk + j) * a.d + c];
        const float m = (float)(s / a.nk);
        a.mean[(int64_t)g * a.d + c] = m;
        for (int j = 0; j < a.nk; j++)
            a.k_out[((int64_t)g * a.nk + j) * a.d + c] = (float)(a.k[((int64_t)g * a.nk + j) * a.d + c] - s / a.nk);
    }
}

__global__ void smooth_lse_kernel(const sl__cuda_smooth a)
{
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (int64_t)a.hq * a.nq)
        return;
    const int h = (int)(r / a.nq), g = h / (a.hq / a.hkv);
    double s = 0;
    for (int c = 0; c < a.d; c++)
        s += (double)a.q[r * a.d + c] * a.mean[(int64_t)g * a.d + c];
    a.lse_out[r] = (float)((a.lse ? (double)a.lse[r] : 0.0) + a.scale * s);
}

__global__ void lepe_kernel(const sl__cuda_lepe a)
{
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)a.hq * a.nq * a.d)
        return;
    const int c = (int)(idx % a.d), i = (int)((idx / a.d) % a.nq), h = (int)(idx / ((int64_t)a.d * a.nq));
    const int g = h / (a.hq / a.hkv);
    const int64_t pos = (int64_t)a.nk - a.nq + i, first = a.causal ? pos - a.kernel + 1 : pos - a.kernel / 2;
    const float *w = a.w ? a.w + (int64_t)(a.w_heads == 1 ? 0 : h) * a.kernel * a.d : nullptr;
    float acc = 0;
    for (int t = 0; t < a.kernel; t++) {
        const int64_t j = first + t;
        if (j < 0 || j >= a.nk)
            continue;
        acc += (w ? w[(int64_t)t * a.d + c] : 1.0f / a.kernel) * a.v[((int64_t)g * a.nk + j) * a.d + c];
    }
    a.o[idx] = a.o_in[idx] + a.alpha * acc;
}

}  // namespace

cudaError_t sl__cuda_correct_rectify(const sl__cuda_rectify &a, cudaStream_t st)
{
    SL_LAUNCH(pool_kernel, dim3(a.nkb, a.hkv), kThreads, 0, st)(a.k, a.v, a.nk, a.bk, a.d, a.nkb, a.kbar, a.kdev, a.vbar);
    SL_LAUNCH(pool_kernel, dim3(a.nqb, a.hq), kThreads, 0, st)(a.q, nullptr, a.nq, a.bq, a.d, a.nqb, a.qbar, a.qdev, nullptr);
    SL_LAUNCH(rect_flag_kernel, dim3(a.nqb, a.hq), kThreads, 0, st)(a);
    SL_LAUNCH(rect_row_kernel, dim3(a.nq, a.hq), kThreads, 0, st)(a);
    return cudaGetLastError();
}

cudaError_t sl__cuda_correct_compensate(const sl__cuda_comp &a, cudaStream_t st)
{
    if (a.vmc)
        SL_LAUNCH(prefix_kernel, a.hkv, kThreads, 0, st)(a.v, a.nk, a.d, a.cum);
    SL_LAUNCH(comp_row_kernel, dim3(a.nq, a.hq), 64, 0, st)(a);
    return cudaGetLastError();
}

cudaError_t sl__cuda_correct_smooth_k(const sl__cuda_smooth &a, cudaStream_t st)
{
    SL_LAUNCH(smooth_mean_kernel, a.hkv, kThreads, 0, st)(a);
    const int64_t rows = (int64_t)a.hq * a.nq;
    if (rows > 0)
        SL_LAUNCH(smooth_lse_kernel, (unsigned)((rows + 255) / 256), 256, 0, st)(a);
    return cudaGetLastError();
}

cudaError_t sl__cuda_correct_lepe(const sl__cuda_lepe &a, cudaStream_t st)
{
    const int64_t total = (int64_t)a.hq * a.nq * a.d;
    SL_LAUNCH(lepe_kernel, (unsigned)((total + 255) / 256), 256, 0, st)(a);
    return cudaGetLastError();
}
