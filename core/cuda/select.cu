// cuda/select.cu — the selectors (select.topk, select.topp, select.threshold)
// on CUDA: one CTA per row. Each entry gets a unique 64-bit key (value order,
// then lower index first); top-k finds the k-th largest key by a bitwise
// search and top-p searches the shortest prefix by bisection on its length.
// Compiled with `make CUDA=1`; run under the CUDA simulator by
// `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "warp.cuh"

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

bool grid_ok(int64_t n) { return n <= INT32_MAX; }

// ---- selectors ----

// A key per entry whose unsigned order is the row's order: the value's bits
// made monotone in the high word, the complemented index in the low word (a
// lower index wins a tie). -inf gets key 0: never counted; finite keys are >= 1.
__device__ uint64_t entry_key(float v, int64_t j)
{
    if (v == -INFINITY)
        return 0;
    uint32_t u = v == 0.f ? 0u : __float_as_uint(v);  // -0 ties with +0, as the host's comparison sort has it
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)u << 32) | (uint64_t)(0xffffffffu - (uint32_t)j);
}

// Entries of row with key >= t (t > 0), block-wide.
__device__ int64_t count_ge(const float *row, int64_t C, uint64_t t, unsigned long long *shu)
{
    unsigned long long n = 0;
    for (int64_t j = threadIdx.x; j < C; j += kThreads)
        n += entry_key(row[j], j) >= t;
    return (int64_t)block_sum<kWarps>(n, shu);
}

// The k-th largest key of the row (1 <= k <= finite entries): the largest t
// with count_ge(t) >= k, found bit by bit from the top.
__device__ uint64_t kth_key(const float *row, int64_t C, int64_t k, unsigned long long *shu)
{
    uint64_t t = 0;
    for (int bit = 63; bit >= 0; bit--) {
        uint64_t c = t | ((uint64_t)1 << bit);
        if (count_ge(row, C, c, shu) >= k)
            t = c;
    }
    return t;
}

struct select_args {
    const float *x;
    const void *opt;   // opt.k (i32) or opt.p (f32) per head, or null
    uint8_t *keep;
    int64_t rph, C;
    int64_t k;
    double ratio, p, t;
    int normalize, relative;
};

__global__ void topk_kernel(select_args a)
{
    SL_SHARED(unsigned long long, shu, [kWarps]);
    int64_t item = blockIdx.x;
    const float *row = a.x + item * a.C;
    uint8_t *keep = a.keep + item * a.C;
    int64_t finite = 0;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        finite += row[j] != -INFINITY;
    finite = (int64_t)block_sum<kWarps>((unsigned long long)finite, shu);
    int64_t k = a.k;
    if (a.opt)
        k = static_cast<const int32_t *>(a.opt)[item / a.rph];
    else if (a.ratio > 0)
        k = (int64_t)ceil(a.ratio * (double)finite - 1e-9);
    k = k < finite ? k : finite;
    uint64_t t = k > 0 ? kth_key(row, a.C, k, shu) : ~(uint64_t)0;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        keep[j] = k > 0 && entry_key(row[j], j) >= t;
}

// Mass of the entries with key >= t (double, block-wide).
__device__ double mass_ge(const float *row, int64_t C, uint64_t t, int normalize, float m, double *shd)
{
    double s = 0;
    for (int64_t j = threadIdx.x; j < C; j += kThreads)
        if (entry_key(row[j], j) >= t)
            s += normalize ? exp((double)row[j] - (double)m) : (double)row[j];
    return block_sum<kWarps>(s, shd);
}

__global__ void topp_kernel(select_args a)
{
    SL_SHARED(unsigned long long, shu, [kWarps]);
    SL_SHARED(double, shd, [kWarps]);
    SL_SHARED(float, shf, [kWarps]);
    int64_t item = blockIdx.x;
    const float *row = a.x + item * a.C;
    uint8_t *keep = a.keep + item * a.C;
    float m = -INFINITY;
    int64_t finite = 0;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads) {
        m = fmaxf(m, row[j]);
        finite += row[j] != -INFINITY;
    }
    m = block_max<kWarps>(m, shf);
    finite = (int64_t)block_sum<kWarps>((unsigned long long)finite, shu);
    double p = a.opt ? (double)static_cast<const float *>(a.opt)[item / a.rph] : a.p;
    double target = p * (finite > 0 ? mass_ge(row, a.C, 1, a.normalize, m, shd) : 0);
    // the shortest prefix of length n with mass >= target (0 when target is 0)
    int64_t lo = 0, hi = finite;
    if (target > 0)
        while (lo < hi) {
            int64_t mid = (lo + hi) / 2;
            double s = mid > 0 ? mass_ge(row, a.C, kth_key(row, a.C, mid, shu), a.normalize, m, shd) : 0;
            if (s >= target)
                hi = mid;
            else
                lo = mid + 1;
        }
    else
        lo = 0;
    uint64_t t = lo > 0 ? kth_key(row, a.C, lo, shu) : ~(uint64_t)0;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        keep[j] = lo > 0 && entry_key(row[j], j) >= t;
}

__global__ void threshold_kernel(select_args a)
{
    SL_SHARED(float, shf, [kWarps]);
    int64_t item = blockIdx.x;
    const float *row = a.x + item * a.C;
    uint8_t *keep = a.keep + item * a.C;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        m = fmaxf(m, row[j]);
    m = block_max<kWarps>(m, shf);
    double t = a.relative ? a.t * (double)m : a.t;
    for (int64_t j = threadIdx.x; j < a.C; j += kThreads)
        keep[j] = row[j] != -INFINITY && (double)row[j] >= t;
}

// The selectors: one CTA per row.
sl_status run_select(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t C = x->shape[x->ndim - 1], rph = x->ndim == 3 ? x->shape[1] : 1, rows = x->shape[0] * rph;
    if (!grid_ok(rows))
        return sl__cuda_unsupported(a, "more than 2^31 - 1 rows");
    if (C > 0xfffffffeLL)
        return sl__cuda_unsupported(a, "rows longer than 2^32 - 2");
    if (rows == 0 || C == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    select_args sa = {};
    sa.x = static_cast<const float *>(st.in[0]);
    sa.keep = static_cast<uint8_t *>(st.out[0]);
    sa.rph = rph;
    sa.C = C;
    if (a->op == SL_OP_SELECT_TOPK) {
        const sl_select_topk_params *p = static_cast<const sl_select_topk_params *>(a->params);
        sa.opt = st.in[1];
        sa.k = p->k;
        sa.ratio = p->ratio;
        SL_LAUNCH(topk_kernel, (int)rows, kThreads, 0, 0)(sa);
    } else if (a->op == SL_OP_SELECT_TOPP) {
        const sl_select_topp_params *p = static_cast<const sl_select_topp_params *>(a->params);
        sa.opt = st.in[1];
        sa.p = p->p;
        sa.normalize = (int)p->normalize;
        SL_LAUNCH(topp_kernel, (int)rows, kThreads, 0, 0)(sa);
    } else {
        const sl_select_threshold_params *p = static_cast<const sl_select_threshold_params *>(a->params);
        sa.t = p->t;
        sa.relative = (int)p->relative;
        SL_LAUNCH(threshold_kernel, (int)rows, kThreads, 0, 0)(sa);
    }
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

// ---- select.cover (issue 20, session 3c): one CTA per head ----

struct cover_args {
    const float *x;
    const uint8_t *on;  // opt.heads or null
    const uint8_t *base;  // opt.base or null
    uint8_t *keep;
    int64_t R, C;
    double limit;
    int extra, causal;
};

// Key of flat entry f of a head (0 when it takes no part).
__device__ uint64_t cover_key(const cover_args &a, const float *v, int64_t f)
{
    int64_t r = f / a.C, c = f % a.C;
    if (a.causal && c > r + (a.C - a.R))
        return 0;
    return entry_key(v[f], f);
}

__device__ int64_t cover_count_ge(const cover_args &a, const float *v, uint64_t t, unsigned long long *shu)
{
    unsigned long long n = 0;
    for (int64_t f = threadIdx.x; f < a.R * a.C; f += kThreads)
        n += cover_key(a, v, f) >= t;
    return (int64_t)block_sum<kWarps>(n, shu);
}

__device__ uint64_t cover_kth(const cover_args &a, const float *v, int64_t k, unsigned long long *shu)
{
    uint64_t t = 0;
    for (int bit = 63; bit >= 0; bit--) {
        uint64_t c = t | ((uint64_t)1 << bit);
        if (cover_count_ge(a, v, c, shu) >= k)
            t = c;
    }
    return t;
}

__device__ double cover_mass_ge(const cover_args &a, const float *v, uint64_t t, double *shd)
{
    double s = 0;
    for (int64_t f = threadIdx.x; f < a.R * a.C; f += kThreads)
        if (cover_key(a, v, f) >= t)
            s += (double)v[f];
    return block_sum<kWarps>(s, shd);
}

__global__ void cover_kernel(cover_args a)
{
    SL_SHARED(unsigned long long, shu, [kWarps]);
    SL_SHARED(double, shd, [kWarps]);
    int64_t m = a.R * a.C;
    const float *v = a.x + blockIdx.x * m;
    uint8_t *keep = a.keep + blockIdx.x * m;
    const uint8_t *base = a.base ? a.base + blockIdx.x * m : nullptr;
    if (a.on && !a.on[blockIdx.x]) {
        for (int64_t f = threadIdx.x; f < m; f += kThreads)
            keep[f] = base ? (base[f] != 0) : 0;
        return;
    }
    int64_t n = cover_count_ge(a, v, 1, shu);
    // cnt: the longest prefix whose mass stays <= limit (masses >= 0: monotone in the length)
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (cover_mass_ge(a, v, cover_kth(a, v, mid, shu), shd) <= a.limit)
            lo = mid;
        else
            hi = mid - 1;
    }
    int64_t take = lo + a.extra < n ? lo + a.extra : n;
    uint64_t t = take > 0 ? cover_kth(a, v, take, shu) : ~(uint64_t)0;
    for (int64_t f = threadIdx.x; f < m; f += kThreads)
        keep[f] = (take > 0 && cover_key(a, v, f) >= t) || (base && base[f]);
}

sl_status run_cover(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t C = x->shape[x->ndim - 1], R = x->ndim == 3 ? x->shape[1] : 1, H = x->shape[0];
    if (!grid_ok(H))
        return sl__cuda_unsupported(a, "more than 2^31 - 1 heads");
    if (R * C > 0xfffffffeLL)
        return sl__cuda_unsupported(a, "heads of more than 2^32 - 2 entries");
    if (H == 0 || R * C == 0)
        return SL_OK;
    const sl_select_cover_params *p = static_cast<const sl_select_cover_params *>(a->params);
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    cover_args ca = {};
    ca.x = static_cast<const float *>(st.in[0]);
    ca.on = static_cast<const uint8_t *>(st.in[1]);
    ca.base = static_cast<const uint8_t *>(st.in[2]);
    ca.keep = static_cast<uint8_t *>(st.out[0]);
    ca.R = R;
    ca.C = C;
    ca.limit = p->limit;
    ca.extra = (int)p->extra;
    ca.causal = (int)p->causal;
    SL_LAUNCH(cover_kernel, (int)H, kThreads, 0, 0)(ca);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

// ---- select.row_cover (issue 20, session 4b): one thread per row ----
// The candidates are visited in the order by repeated selection: the next
// is the largest key below the previous one (entry_key: value, then lower
// index; keys are distinct), so no scratch and no sort.

struct row_cover_args {
    const float *x;
    uint8_t *keep;
    int64_t rows, R, C;
    double tau;
    int mode;
};

// Score of block c in row r under the mode (mode 1: 0 beyond r).
__device__ float rc_score(const row_cover_args &a, const float *row, int64_t r, int64_t c)
{
    return a.mode == 1 && c > r ? 0.f : row[c];
}

// The candidate (mode 0: 1 .. lim - 1; mode 1: every block but r) with the
// largest key below prev; -1 when none.
__device__ int64_t rc_next(const row_cover_args &a, const float *row, int64_t r, int64_t lim, uint64_t prev,
                           uint64_t *key)
{
    int64_t best = -1;
    uint64_t bk = 0;
    int64_t lo = a.mode == 0 ? 1 : 0, hi = a.mode == 0 ? lim : a.C;
    for (int64_t c = lo; c < hi; c++) {
        if (a.mode == 1 && c == r)
            continue;
        float v = rc_score(a, row, r, c);
        uint64_t k = entry_key(v == -0.f ? 0.f : v, c);
        if (k < prev && (best < 0 || k > bk)) {
            best = c;
            bk = k;
        }
    }
    *key = bk;
    return best;
}

__global__ void row_cover_kernel(row_cover_args a)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.rows)
        return;
    int64_t R = a.R, C = a.C, r = i % R;
    const float *row = a.x + i * C;
    uint8_t *keep = a.keep + i * C;
    for (int64_t c = 0; c < C; c++)
        keep[c] = 0;
    int64_t lim = r + (C - R) < C - 1 ? r + (C - R) : C - 1;
    if (lim < 0)
        return;
    uint64_t prev = ~(uint64_t)0, key = 0;
    if (a.mode == 0) {
        if (a.tau >= 1) {
            for (int64_t c = 0; c <= lim; c++)
                keep[c] = 1;
            return;
        }
        double total = 0;
        for (int64_t c = 0; c <= lim; c++)
            total += (double)row[c];
        keep[0] = keep[lim] = 1;
        double cum = (double)row[0] + (lim > 0 ? (double)row[lim] : 0.0), need = a.tau * total;
        while (cum < need) {
            int64_t c = rc_next(a, row, r, lim, prev, &key);
            if (c < 0)
                break;
            keep[c] = 1;
            cum += (double)row[c];
            prev = key;
        }
        return;
    }
    double total = 0;
    for (int64_t c = 0; c < C; c++)
        total += (double)rc_score(a, row, r, c);
    // position t holds the (t - 1)-th candidate; cum_t adds y[r] at t = 2 and
    // from t = 3 the candidate of position t - 2 (two steps back)
    double req = total * a.tau, cum = 0, back1 = 0, back2 = 0;
    keep[0 < req ? r : 0] = 1;
    for (int64_t t = 1; t < C; t++) {
        int64_t c = rc_next(a, row, r, lim, prev, &key);
        prev = key;
        if (t >= 2)
            cum += t == 2 ? (double)row[r] : back2;
        keep[cum < req ? c : 0] = 1;
        back2 = back1;
        back1 = (double)rc_score(a, row, r, c);
    }
    for (int64_t c = r + 1; c < C; c++)
        keep[c] = 0;
    keep[r] = 1;
}

sl_status run_row_cover(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t C = x->shape[x->ndim - 1], R = x->ndim == 3 ? x->shape[1] : 1, rows = x->shape[0] * R;
    if (C > 0xfffffffeLL)
        return sl__cuda_unsupported(a, "rows of more than 2^32 - 2 blocks");
    if (rows == 0 || C == 0)
        return SL_OK;
    int64_t grid = (rows + kThreads - 1) / kThreads;
    if (!grid_ok(grid))
        return sl__cuda_unsupported(a, "more than 2^31 - 1 blocks of rows");
    const sl_select_row_cover_params *p = static_cast<const sl_select_row_cover_params *>(a->params);
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    row_cover_args ra = {};
    ra.x = static_cast<const float *>(st.in[0]);
    ra.keep = static_cast<uint8_t *>(st.out[0]);
    ra.rows = rows;
    ra.R = R;
    ra.C = C;
    ra.tau = p->tau;
    ra.mode = (int)p->mode;
    SL_LAUNCH(row_cover_kernel, (int)grid, kThreads, 0, 0)(ra);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

}  // namespace

sl_status sl__cuda_select_row_cover(const sl__kargs *a) { return run_row_cover(a); }
sl_status sl__cuda_select_topk(const sl__kargs *a) { return run_select(a); }
sl_status sl__cuda_select_topp(const sl__kargs *a) { return run_select(a); }
sl_status sl__cuda_select_threshold(const sl__kargs *a) { return run_select(a); }
sl_status sl__cuda_select_cover(const sl__kargs *a) { return run_cover(a); }
