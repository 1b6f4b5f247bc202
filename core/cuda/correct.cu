// cuda/correct.cu — the corrections (correct.*) on CUDA. Element-wise and
// row-wise kernels over the sparse output (correct.delta, correct.reshape,
// correct.cache_reuse, correct.linear_branch, correct.lepe: one thread per
// element or row); correct.rectify, correct.compensate and correct.smooth_k
// one CTA per pooled block or row, threads over channels or key blocks,
// written for correctness first. Compiled with `make CUDA=1`; run under the
// CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

#include <math.h>

namespace {

constexpr int kThreads = 128;  // threads per CTA of the per-row and per-block kernels

// correct.delta: device pointers of the staged inputs and outputs and the
// layout of sl_correct_delta_layout.
struct sl__cuda_delta {
    const float *o_sparse, *lse_sparse, *o_rows, *lse_rows;
    float *o, *lse;
    int64_t h, n, d, gamma, s_p, g_n, r_n;
    int smooth, mode;
};

// correct.rectify: staged inputs/outputs plus device scratch for the pooled
// blocks (kbar, kdev, vbar [hkv, nkb, d]; qbar, qdev [hq, nqb, d]), the pooled
// logits [hq, nqb, nkb] and a flag per block pair (1 in C, 2 restored).
struct sl__cuda_rectify {
    const float *q, *k, *v, *o_sparse;
    const int32_t *row_ptr, *col_idx;
    float *o, *r, *rest, *trusted;
    float *kbar, *kdev, *vbar, *qbar, *qdev, *score;
    uint8_t *flag;
    int hq, hkv, nq, nk, d, bq, bk, nqb, nkb, hm, causal, ipar, gapr, causal_means;
    float scale;
};

// correct.compensate: cum [hkv, nk, d] scratch (prefix sums of V) when vmc.
struct sl__cuda_comp {
    const float *o_in, *lse, *lse_ref, *v;
    float *o, *lse_out, *lost, *cum;
    int hq, hkv, nq, nk, d, estimate, vmc, causal;
    int64_t min_len;
    double sdc_scale;
};

// correct.smooth_k: mean [hkv, d] scratch; lse null when left out.
struct sl__cuda_smooth {
    const float *q, *k, *lse;
    float *k_out, *lse_out, *mean;
    int hq, hkv, nq, nk, d;
    float scale;
};

// correct.lepe: w null when left out (uniform 1/kernel).
struct sl__cuda_lepe {
    const float *o_in, *v, *w;
    float *o;
    int hq, hkv, nq, nk, d, kernel, causal, w_heads;
    float alpha;
};

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
            const int j0 = J * a.bk, j1 = min(j0 + a.bk, a.nk);
            if (a.causal_means && last + 1 < j1) {
                // the last row sees this block in part: its GAPR over the keys it sees; rows decide themselves (3)
                const float *kg = a.k + (int64_t)g * a.nk * a.d;
                const int cnt = last + 1 - j0;
                float praw = 0, pe1 = 0, pe2 = 0;
                for (int c = 0; c < a.d; c++) {
                    float m = 0, e = 0;
                    for (int r = j0; r < j0 + cnt; r++)
                        m += kg[(int64_t)r * a.d + c];
                    m /= (float)cnt;
                    for (int r = j0; r < j0 + cnt; r++)
                        e += fabsf(kg[(int64_t)r * a.d + c] - m);
                    e /= (float)cnt;
                    praw += qm[c] * m;
                    pe1 += qe[c] * m;
                    pe2 += qm[c] * e;
                }
                a.flag[row + J] = 3;
                mine += !(a.gapr && !(fabsf(praw) > fabsf(pe1) + fabsf(pe2)));
            } else {
                a.flag[row + J] = ng ? 1 : 2;
                mine += !ng;
            }
        }
    }
    atomicAdd(&n_trusted, mine);
    __syncthreads();
    if (threadIdx.x == 0)
        a.trusted[(int64_t)h * a.nqb + I] = (float)n_trusted;
}

// Per (row, head): R, restored and O = R·O* + N. With causal means the block
// holding the row's own position (the only block a row can see in part) is
// pooled over the keys the row sees: its logit, GAPR and mean V per row.
__global__ void rect_row_kernel(const sl__cuda_rectify a)
{
    const int i = blockIdx.x, h = blockIdx.y, g = h / (a.hq / a.hkv), I = i / a.bq, mh = h / (a.hq / a.hm);
    const int64_t row = ((int64_t)h * a.nqb + I) * a.nkb, pos = (int64_t)a.nk - a.nq + i;
    auto count = [&](int J) -> int {
        const int64_t j0 = (int64_t)J * a.bk, j1 = min(j0 + a.bk, (int64_t)a.nk);
        if (!a.causal)
            return (int)(j1 - j0);
        if (pos < j0)
            return 0;
        return (int)(min(pos + 1, j1) - j0);
    };
    // the partial block of this row (causal means), its logit and whether it is restored
    const int jp = a.causal_means && pos >= 0 ? (int)(pos / a.bk) : -1;
    const bool partial = jp >= 0 && jp < a.nkb && pos + 1 < min((int64_t)(jp + 1) * a.bk, (int64_t)a.nk);
    float s_p = 0;
    bool restored_p = false;
    const float *kg = a.k + (int64_t)g * a.nk * a.d, *vg = a.v + (int64_t)g * a.nk * a.d;
    if (partial) {
        const int j0 = jp * a.bk, cnt = (int)(pos + 1 - j0);
        const float *qm = a.qbar + ((int64_t)h * a.nqb + I) * a.d, *qe = a.qdev + ((int64_t)h * a.nqb + I) * a.d;
        float raw = 0, e1 = 0, e2 = 0;
        for (int c = threadIdx.x; c < a.d; c += blockDim.x) {
            float m = 0, e = 0;
            for (int r = j0; r < j0 + cnt; r++)
                m += kg[(int64_t)r * a.d + c];
            m /= (float)cnt;
            for (int r = j0; r < j0 + cnt; r++)
                e += fabsf(kg[(int64_t)r * a.d + c] - m);
            e /= (float)cnt;
            raw += qm[c] * m;
            e1 += qe[c] * m;
            e2 += qm[c] * e;
        }
        raw = block_reduce(raw, false);
        e1 = block_reduce(e1, false);
        e2 = block_reduce(e2, false);
        bool in_m = false;
        for (int e = a.row_ptr[mh * (a.nqb + 1) + I]; e < a.row_ptr[mh * (a.nqb + 1) + I + 1]; e++)
            in_m = in_m || a.col_idx[e] == jp;
        s_p = a.scale * raw;
        restored_p = !in_m && !(a.gapr && !(fabsf(raw) > fabsf(e1) + fabsf(e2)));
    }
    auto logit = [&](int J) -> float { return partial && J == jp ? s_p : a.score[row + J]; };
    auto restored = [&](int J) -> bool { return partial && J == jp ? restored_p : a.flag[row + J] == 2; };
    float mx = -INFINITY;
    for (int J = threadIdx.x; J < a.nkb; J += blockDim.x)
        if (count(J) > 0)
            mx = fmaxf(mx, logit(J));
    mx = block_reduce(mx, true);
    float zi = 0, zo = 0;
    for (int J = threadIdx.x; J < a.nkb && mx > -INFINITY; J += blockDim.x) {
        const int cnt = count(J);
        if (!cnt)
            continue;
        const float w = (a.ipar ? (float)cnt : 1.0f) * expf(logit(J) - mx);
        if (restored(J))
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
            if (!restored(J))
                continue;
            const int cnt = count(J);
            if (!cnt)
                continue;
            float vm;
            if (partial && J == jp) {
                vm = 0;
                for (int r = jp * a.bk; r < jp * a.bk + cnt; r++)
                    vm += vg[(int64_t)r * a.d + c];
                vm /= (float)cnt;
            } else
                vm = a.vbar[((int64_t)g * a.nkb + J) * a.d + c];
            n += (a.ipar ? (float)cnt : 1.0f) * expf(logit(J) - mx) * vm;
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

int blocks_for(int64_t n) { return (int)((n + kThreads - 1) / kThreads); }

// Sizes the correct.* kernels index with int.
bool fits_int(const sl__kargs *a)
{
    const sl_op_info *info = sl_op_info_get(a->op);
    for (int i = 0; i < info->n_in; i++)
        if (a->in[i].buf && sl_tensor_numel(&a->in[i]) > INT32_MAX)
            return false;
    return true;
}

cudaError_t launch_delta(const sl__cuda_delta &a, cudaStream_t st)
{
    const int64_t total = (int64_t)a.h * a.n * a.d;
    const int threads = 256;
    const int64_t blocks = (total + threads - 1) / threads;
    SL_LAUNCH(delta_kernel, (unsigned)blocks, threads, 0, st)(a);
    return cudaGetLastError();
}

cudaError_t launch_rectify(const sl__cuda_rectify &a, cudaStream_t st)
{
    SL_LAUNCH(pool_kernel, dim3(a.nkb, a.hkv), kThreads, 0, st)(a.k, a.v, a.nk, a.bk, a.d, a.nkb, a.kbar, a.kdev, a.vbar);
    SL_LAUNCH(pool_kernel, dim3(a.nqb, a.hq), kThreads, 0, st)(a.q, nullptr, a.nq, a.bq, a.d, a.nqb, a.qbar, a.qdev, nullptr);
    SL_LAUNCH(rect_flag_kernel, dim3(a.nqb, a.hq), kThreads, 0, st)(a);
    SL_LAUNCH(rect_row_kernel, dim3(a.nq, a.hq), kThreads, 0, st)(a);
    return cudaGetLastError();
}

cudaError_t launch_compensate(const sl__cuda_comp &a, cudaStream_t st)
{
    if (a.vmc)
        SL_LAUNCH(prefix_kernel, a.hkv, kThreads, 0, st)(a.v, a.nk, a.d, a.cum);
    SL_LAUNCH(comp_row_kernel, dim3(a.nq, a.hq), 64, 0, st)(a);
    return cudaGetLastError();
}

cudaError_t launch_smooth_k(const sl__cuda_smooth &a, cudaStream_t st)
{
    SL_LAUNCH(smooth_mean_kernel, a.hkv, kThreads, 0, st)(a);
    const int64_t rows = (int64_t)a.hq * a.nq;
    if (rows > 0)
        SL_LAUNCH(smooth_lse_kernel, (unsigned)((rows + 255) / 256), 256, 0, st)(a);
    return cudaGetLastError();
}

cudaError_t launch_lepe(const sl__cuda_lepe &a, cudaStream_t st)
{
    const int64_t total = (int64_t)a.hq * a.nq * a.d;
    SL_LAUNCH(lepe_kernel, (unsigned)((total + 255) / 256), 256, 0, st)(a);
    return cudaGetLastError();
}
}  // namespace

sl_status sl__cuda_correct_reshape(const sl__kargs *a)
{
    const sl_correct_reshape_params *p = static_cast<const sl_correct_reshape_params *>(a->params);
    int64_t rows = sl_tensor_numel(&a->in[1]);
    if (rows == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(reshape_kernel, blocks_for(rows), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.input<float>(3), st.input<float>(4),
        st.input<float>(5), st.output<float>(0), st.output<float>(1), st.output<float>(2), rows, (int)a->in[0].shape[2],
        (float)p->drift, (int)p->use_ratio);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_correct_cache_reuse(const sl__kargs *a)
{
    const sl_correct_cache_params *p = static_cast<const sl_correct_cache_params *>(a->params);
    int64_t rows = sl_tensor_numel(&a->in[1]);
    if (rows == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(cache_kernel, blocks_for(rows), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.input<float>(3), st.input<float>(4),
        st.input<float>(5), st.output<float>(0), st.output<float>(1), st.output<float>(2), rows, (int)a->in[0].shape[2],
        a->in[4].buf ? (int)a->in[4].shape[2] : 0, p->tau);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_correct_linear_branch(const sl__kargs *a)
{
    const sl_correct_linear_params *p = static_cast<const sl_correct_linear_params *>(a->params);
    int64_t n = sl_tensor_numel(&a->in[0]);
    if (n == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(linear_branch_kernel, blocks_for(n), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.input<float>(3), st.output<float>(0),
        a->in[0].shape[0], a->in[0].shape[1], (int)a->in[0].shape[2], (int)a->in[2].shape[0],
        a->in[3].buf ? (int)a->in[3].shape[0] : 0, (int)p->convex);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_correct_delta(const sl__kargs *a)
{
    const sl_correct_delta_params *p = static_cast<const sl_correct_delta_params *>(a->params);
    sl__cuda_delta g = {};
    g.h = a->in[0].shape[0], g.n = a->in[0].shape[1], g.d = a->in[0].shape[2], g.gamma = p->gamma;
    int64_t t = 0;
    sl_correct_delta_layout(g.n, g.gamma, p->tail, &g.s_p, &g.g_n, &t);
    g.r_n = g.g_n + t;
    g.smooth = p->smooth != 0, g.mode = (int)p->mode;
    if (g.h * g.n * g.d == 0)
        return SL_OK;
    if ((g.h * g.n * g.d + 255) / 256 > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 blocks of 256 elements");
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    g.o_sparse = static_cast<const float *>(st.in[0]);
    g.lse_sparse = static_cast<const float *>(st.in[1]);
    g.o_rows = static_cast<const float *>(st.in[2]);
    g.lse_rows = static_cast<const float *>(st.in[3]);
    g.o = static_cast<float *>(st.out[0]);
    g.lse = static_cast<float *>(st.out[1]);
    return sl__cuda_stage_out(&st, launch_delta(g, 0));
}

sl_status sl__cuda_correct_rectify(const sl__kargs *a)
{
    const sl_correct_rectify_params *p = static_cast<const sl_correct_rectify_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    if (!fits_int(a) || dm.hq > 65535)
        return sl__cuda_unsupported(a, "more than 2^31 - 1 elements or 65535 heads");
    if (dm.hq == 0 || dm.nq == 0)
        return SL_OK;
    sl__cuda_rectify g = {};
    g.hq = (int)dm.hq, g.hkv = (int)dm.hkv, g.nq = (int)dm.nq, g.nk = (int)dm.nk, g.d = (int)dm.d;
    g.bq = (int)p->bq, g.bk = (int)p->bk, g.nqb = (int)((dm.nq + p->bq - 1) / p->bq), g.nkb = (int)((dm.nk + p->bk - 1) / p->bk);
    g.hm = (int)a->in[3].shape[0], g.causal = p->causal != 0, g.ipar = p->ipar != 0, g.gapr = p->gapr != 0;
    g.causal_means = p->causal != 0 && p->causal_means != 0;
    g.scale = (float)dm.scale;
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    const size_t kv = (size_t)g.hkv * g.nkb * g.d, qb = (size_t)g.hq * g.nqb * g.d, pairs = (size_t)g.hq * g.nqb * g.nkb;
    void *ws = nullptr;
    s = sl__cuda_scratch(&st, (3 * kv + 2 * qb + pairs) * sizeof(float) + pairs, &ws);
    if (s != SL_OK)
        return s;
    float *f = static_cast<float *>(ws);
    g.kbar = f, g.kdev = f + kv, g.vbar = f + 2 * kv, g.qbar = f + 3 * kv, g.qdev = g.qbar + qb, g.score = g.qdev + qb;
    g.flag = reinterpret_cast<uint8_t *>(g.score + pairs);
    g.q = static_cast<const float *>(st.in[0]);
    g.k = static_cast<const float *>(st.in[1]);
    g.v = static_cast<const float *>(st.in[2]);
    g.row_ptr = static_cast<const int32_t *>(st.in[3]);
    g.col_idx = static_cast<const int32_t *>(st.in[4]);
    g.o_sparse = static_cast<const float *>(st.in[7]);
    g.o = static_cast<float *>(st.out[0]);
    g.r = static_cast<float *>(st.out[1]);
    g.rest = static_cast<float *>(st.out[2]);
    g.trusted = static_cast<float *>(st.out[3]);
    return sl__cuda_stage_out(&st, launch_rectify(g, 0));
}

sl_status sl__cuda_correct_compensate(const sl__kargs *a)
{
    const sl_correct_comp_params *p = static_cast<const sl_correct_comp_params *>(a->params);
    if (!fits_int(a) || a->in[0].shape[0] > 65535)
        return sl__cuda_unsupported(a, "more than 2^31 - 1 elements or 65535 heads");
    sl__cuda_comp g = {};
    g.hq = (int)a->in[0].shape[0], g.nq = (int)a->in[0].shape[1], g.d = (int)a->in[0].shape[2];
    g.hkv = (int)a->in[3].shape[0], g.nk = (int)a->in[3].shape[1];
    g.estimate = (int)p->estimate, g.vmc = p->vmc != 0, g.causal = p->causal != 0, g.min_len = p->min_len;
    g.sdc_scale = p->sdc_scale;
    if (g.hq == 0 || g.nq == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    void *ws = nullptr;
    if (g.vmc && (s = sl__cuda_scratch(&st, (size_t)g.hkv * g.nk * g.d * sizeof(float), &ws)) != SL_OK)
        return s;
    g.cum = static_cast<float *>(ws);
    g.o_in = static_cast<const float *>(st.in[0]);
    g.lse = static_cast<const float *>(st.in[1]);
    g.lse_ref = static_cast<const float *>(st.in[2]);
    g.v = static_cast<const float *>(st.in[3]);
    g.o = static_cast<float *>(st.out[0]);
    g.lse_out = static_cast<float *>(st.out[1]);
    g.lost = static_cast<float *>(st.out[2]);
    return sl__cuda_stage_out(&st, launch_compensate(g, 0));
}

sl_status sl__cuda_correct_smooth_k(const sl__kargs *a)
{
    const sl_correct_smooth_params *p = static_cast<const sl_correct_smooth_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    if (!fits_int(a))
        return sl__cuda_unsupported(a, "more than 2^31 - 1 elements");
    if (dm.hkv == 0 || dm.nk == 0)
        return SL_OK;
    sl__cuda_smooth g = {};
    g.hq = (int)dm.hq, g.hkv = (int)dm.hkv, g.nq = (int)dm.nq, g.nk = (int)dm.nk, g.d = (int)dm.d;
    g.scale = (float)dm.scale;
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    void *ws = nullptr;
    if ((s = sl__cuda_scratch(&st, (size_t)g.hkv * g.d * sizeof(float), &ws)) != SL_OK)
        return s;
    g.mean = static_cast<float *>(ws);
    g.q = static_cast<const float *>(st.in[0]);
    g.k = static_cast<const float *>(st.in[1]);
    g.lse = static_cast<const float *>(st.in[2]);
    g.k_out = static_cast<float *>(st.out[0]);
    g.lse_out = static_cast<float *>(st.out[1]);
    return sl__cuda_stage_out(&st, launch_smooth_k(g, 0));
}

sl_status sl__cuda_correct_lepe(const sl__kargs *a)
{
    const sl_correct_lepe_params *p = static_cast<const sl_correct_lepe_params *>(a->params);
    if (!fits_int(a) || (sl_tensor_numel(&a->in[0]) + 255) / 256 > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 - 1 elements");
    if (sl_tensor_numel(&a->in[0]) == 0)
        return SL_OK;
    sl__cuda_lepe g = {};
    g.hq = (int)a->in[0].shape[0], g.nq = (int)a->in[0].shape[1], g.d = (int)a->in[0].shape[2];
    g.hkv = (int)a->in[1].shape[0], g.nk = (int)a->in[1].shape[1];
    g.kernel = (int)p->kernel, g.causal = p->causal != 0, g.alpha = (float)p->alpha;
    g.w_heads = a->in[2].buf ? (int)a->in[2].shape[0] : 0;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    g.o_in = static_cast<const float *>(st.in[0]);
    g.v = static_cast<const float *>(st.in[1]);
    g.w = static_cast<const float *>(st.in[2]);
    g.o = static_cast<float *>(st.out[0]);
    return sl__cuda_stage_out(&st, launch_lepe(g, 0));
}

