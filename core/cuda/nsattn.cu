// cuda/nsattn.cu — the nsattn family on CUDA (attention whose weights are not
// a softmax).
//   attn.entmax: a grid of CTAs walks the (head, row) items; a CTA writes its
//       row's scores X = (alpha - 1) scale q.k to its own slice of device
//       scratch (n_k doubles per CTA, so memory stays linear in n_k), finds the
//       threshold by block reductions and accumulates P.V over the support
//       only. The exact form (alpha 1.5 or 2) needs no sort: it bisects a
//       bracket [lo, hi] with sum p(lo) >= 1 >= sum p(hi) until no score lies
//       in (lo, hi] — then the support {X > lo} is the true one — and takes
//       the closed-form threshold of that support (card entmax B and C).
//       The bisection form is deep-spin's entmax_bisect (card A).
//   attn.relu: one CTA per (head, row), keys in chunks through shared memory,
//       P.V over the nonzero weights.
//   norm.rms_gated: one CTA per token over its concatenated heads.
//   attn.sigmoid_gate: one thread per (head, token).
//   attn.fastmax: per-head scales (one CTA per head), then the explicit
//       row-normalised f(q.k) per (head, row) — the quadratic form; the
//       factorised linear-time form is the cpu kernel's.
//   attn.tra: key QK-norm factors, then a grid of CTAs over the rows (scores in
//       per-CTA scratch; thread 0 walks each row back once for the counts).
//   attn.monotonic: one CTA per query head walking its rows in order (the
//       pointer is sequential); keys scanned kThreads at a time, the chunk by
//       an online softmax.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "warp.cuh"

#include <math.h>

namespace {

constexpr int kThreads = 128;  // threads per CTA (4 warps)
constexpr int kWarps = kThreads / 32;
constexpr int kMaxD = 256;     // largest head_dim held in registers
constexpr int kMaxCtas = 1024; // CTAs of one launch (each loops over items)

__device__ double entmax_pow(double t, double alpha)
{
    if (!(t > 0))
        return 0;
    if (alpha == 2.0)
        return t;
    if (alpha == 1.5)
        return t * t;
    return pow(t, 1.0 / (alpha - 1.0));
}

__global__ void entmax_kernel(const float *q, const float *k, const float *v, float *o, int32_t *support, double *scratch,
                              int hq, int group, int nq, int nk, int d, int causal, float scale, double alpha, int algo,
                              int n_iter)
{
    SL_SHARED(float, qs, [kMaxD]);
    SL_SHARED(double, red, [kWarps]);
    double *x = scratch + (int64_t)blockIdx.x * nk;
    for (int64_t item = blockIdx.x; item < (int64_t)hq * nq; item += gridDim.x) {
        int h = (int)(item / nq), r = (int)(item % nq), g = h / group;
        const float *qr = q + item * d, *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
        __syncthreads();  // the previous item is done with qs and x
        for (int c = threadIdx.x; c < d; c += kThreads)
            qs[c] = qr[c];
        __syncthreads();
        int n = causal ? nk - nq + r + 1 : nk;
        n = n > nk ? nk : n < 0 ? 0 : n;
        double mul = alpha == 1.0 ? (double)scale : (alpha - 1.0) * (double)scale, mine = -INFINITY;
        for (int j = threadIdx.x; j < n; j += kThreads) {
            const float *kj = kg + (int64_t)j * d;
            float s = 0.f;
            for (int c = 0; c < d; c++)
                s += qs[c] * kj[c];
            x[j] = mul * (double)s;
            mine = x[j] > mine ? x[j] : mine;
        }
        double mx = block_max<kWarps>(mine, red);
        double tau = 0, tot = 1;
        if (n > 0 && alpha == 1.0) {
            double part = 0;
            for (int j = threadIdx.x; j < n; j += kThreads)
                part += exp(x[j] - mx);
            tot = block_sum<kWarps>(part, red);
            tau = mx;
        } else if (n > 0 && algo == 0) {
            double lo = mx - 1.0, hi = mx - pow(1.0 / (double)n, alpha - 1.0);
            for (int it = 0; it < 256; it++) {
                double mid = 0.5 * (lo + hi), part = 0, inside = 0;
                for (int j = threadIdx.x; j < n; j += kThreads) {
                    part += entmax_pow(x[j] - mid, alpha);
                    inside += x[j] > lo && x[j] <= hi;
                }
                double sum = block_sum<kWarps>(part, red), between = block_sum<kWarps>(inside, red);
                if (between == 0 || !(mid > lo && mid < hi))
                    break;
                if (sum >= 1.0)
                    lo = mid;
                else
                    hi = mid;
            }
            // the closed form over the support {X > lo}
            double c1 = 0, c2 = 0, cn = 0;
            for (int j = threadIdx.x; j < n; j += kThreads)
                if (x[j] > lo) {
                    c1 += x[j];
                    c2 += x[j] * x[j];
                    cn += 1;
                }
            double s1 = block_sum<kWarps>(c1, red), s2 = block_sum<kWarps>(c2, red), kk = block_sum<kWarps>(cn, red);
            if (alpha == 2.0) {
                tau = (s1 - 1.0) / kk;
            } else {
                double mu = s1 / kk, ss = s2 - kk * mu * mu, delta = (1.0 - ss) / kk;
                tau = mu - sqrt(delta > 0 ? delta : 0);
            }
        } else if (n > 0) {
            double lo = mx - 1.0, step = (mx - pow(1.0 / (double)n, alpha - 1.0)) - lo;
            for (int it = 0; it < n_iter; it++) {
                step *= 0.5;
                double mid = lo + step, part = 0;
                for (int j = threadIdx.x; j < n; j += kThreads)
                    part += entmax_pow(x[j] - mid, alpha);
                tot = block_sum<kWarps>(part, red);
                tau = mid;
                if (tot >= 1.0)
                    lo = mid;
            }
        }
        // weights in place of the scores, then P.V over the nonzero ones
        double cnt = 0;
        for (int j = threadIdx.x; j < n; j += kThreads) {
            double w = alpha == 1.0 ? exp(x[j] - tau) / tot : entmax_pow(x[j] - tau, alpha) / tot;
            x[j] = w;
            cnt += w > 0;
        }
        double total = block_sum<kWarps>(cnt, red);  // its barrier also publishes x
        float acc[kMaxD / kThreads] = {};
        for (int j = 0; j < n; j++) {
            float w = (float)x[j];
            if (w == 0.f)
                continue;
            for (int c = threadIdx.x, u = 0; c < d; c += kThreads, u++)
                acc[u] += w * vg[(int64_t)j * d + c];
        }
        float *orow = o + item * d;
        for (int c = threadIdx.x, u = 0; c < d; c += kThreads, u++)
            orow[c] = acc[u];
        if (threadIdx.x == 0)
            support[item] = (int32_t)total;
    }
}

// ---- attn.relu: one CTA per (head, row), keys in chunks through shared memory ----

constexpr int kChunk = 128;

__global__ void relu_kernel(const float *q, const float *k, const float *v, float *o, int32_t *count, int hq, int group,
                            int nq, int nk, int d, int causal, float scale, float bias, float power, int norm)
{
    SL_SHARED(float, qs, [kMaxD]);
    SL_SHARED(float, w, [kChunk]);
    SL_SHARED(double, red, [kWarps]);
    int64_t item = blockIdx.x;
    int r = (int)(item % nq), g = (int)(item / nq) / group;
    const float *qr = q + item * d, *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
    for (int c = threadIdx.x; c < d; c += kThreads)
        qs[c] = qr[c];
    __syncthreads();
    int lim = causal ? nk - nq + r + 1 : nk;
    lim = lim > nk ? nk : lim;
    float acc[kMaxD / kThreads] = {};
    double den = 0, cnt = 0;  // per thread: its keys' share
    for (int j0 = 0; j0 < lim; j0 += kChunk) {
        int nc = lim - j0 < kChunk ? lim - j0 : kChunk;
        for (int t = threadIdx.x; t < nc; t += kThreads) {
            const float *kj = kg + (int64_t)(j0 + t) * d;
            float s = 0.f;
            for (int c = 0; c < d; c++)
                s += qs[c] * kj[c];
            float x = scale * s - bias, wt = 0.f;
            if (x > 0.f) {
                wt = power == 1.f ? x : powf(x, power);
                den += wt;
                cnt += 1;
            }
            w[t] = wt;
        }
        __syncthreads();
        for (int t = 0; t < nc; t++) {
            float wt = w[t];
            if (wt == 0.f)
                continue;
            for (int c = threadIdx.x, u = 0; c < d; c += kThreads, u++)
                acc[u] += wt * vg[(int64_t)(j0 + t) * d + c];
        }
        __syncthreads();
    }
    double tot = block_sum<kWarps>(den, red), n = block_sum<kWarps>(cnt, red);
    float mul = norm ? (tot > 0 ? (float)(1.0 / tot) : 0.f) : 1.f;
    float *orow = o + item * d;
    for (int c = threadIdx.x, u = 0; c < d; c += kThreads, u++)
        orow[c] = acc[u] * mul;
    if (threadIdx.x == 0)
        count[item] = (int32_t)n;
}

// ---- norm.rms_gated: one CTA per token ----

__global__ void rms_gated_kernel(const float *x, const float *gs, const float *ws, float *y, int H, int N, int D,
                                 double eps, int gate)
{
    SL_SHARED(double, red, [kWarps]);
    int n = blockIdx.x, E = H * D;
    double part = 0;
    for (int e = threadIdx.x; e < E; e += kThreads) {
        double u = x[((int64_t)(e / D) * N + n) * D + e % D];
        part += u * u;
    }
    double ms = block_sum<kWarps>(part, red) / (double)E;
    float inv = (float)(1.0 / sqrt(ms + eps));
    for (int e = threadIdx.x; e < E; e += kThreads) {
        int64_t at = ((int64_t)(e / D) * N + n) * D + e % D;
        float u = x[at], val = u * inv * (gs ? gs[e] : 1.f);
        if (gate)
            val /= 1.f + expf(-(ws ? ws[e] : 1.f) * u);
        y[at] = val;
    }
}

// ---- attn.sigmoid_gate: one thread per (head, token) ----

__global__ void gate_kernel(const float *o, const float *g, float *y, int32_t *kept, int64_t rows, int D, int G, float eps)
{
    int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows)
        return;
    int cnt = 0;
    for (int c = 0; c < D; c++) {
        float sig = 1.f / (1.f + expf(-g[r * G + (G == 1 ? 0 : c)]));
        int on = sig >= eps;
        y[r * D + c] = on ? o[r * D + c] * sig : 0.f;
        cnt += on;
    }
    kept[r] = cnt;
}

// ---- attn.fastmax: the head scales, then one CTA per (head, row), explicit rows ----

// inv[h] = lim / max_i |x[h, i]| (lim for an all-zero head): one CTA per head
__global__ void inv_norm_kernel(const float *x, double *inv, int n, int d, double lim, int normalize)
{
    SL_SHARED(double, red, [kWarps]);
    const float *xh = x + (int64_t)blockIdx.x * n * d;
    double best = 0;
    for (int i = threadIdx.x; i < n; i += kThreads) {
        float s = 0.f;
        for (int c = 0; c < d; c++)
            s += xh[(int64_t)i * d + c] * xh[(int64_t)i * d + c];
        best = s > best ? s : best;
    }
    best = block_max<kWarps>(best, red);
    if (threadIdx.x == 0)
        inv[blockIdx.x] = !normalize ? 1.0 : best > 0 ? lim / sqrt(best) : lim;
}

__global__ void fastmax_kernel(const float *q, const float *k, const float *v, const double *qinv, const double *kinv,
                               float *o, int group, int nq, int nk, int d, int causal, int p2, double a0, double a1,
                               double a2)
{
    SL_SHARED(float, qs, [kMaxD]);
    SL_SHARED(float, w, [kChunk]);
    SL_SHARED(double, red, [kWarps]);
    int64_t item = blockIdx.x;
    int h = (int)(item / nq), r = (int)(item % nq), g = h / group;
    const float *qr = q + item * d, *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
    for (int c = threadIdx.x; c < d; c += kThreads)
        qs[c] = qr[c];
    __syncthreads();
    double sc = qinv[h] * kinv[g], den = 0;
    int lim = causal ? nk - nq + r + 1 : nk;
    lim = lim > nk ? nk : lim;
    float acc[kMaxD / kThreads] = {};
    for (int j0 = 0; j0 < lim; j0 += kChunk) {
        int nc = lim - j0 < kChunk ? lim - j0 : kChunk;
        for (int t = threadIdx.x; t < nc; t += kThreads) {
            const float *kj = kg + (int64_t)(j0 + t) * d;
            float s = 0.f;
            for (int c = 0; c < d; c++)
                s += qs[c] * kj[c];
            double x = sc * (double)s, f = a0 + a1 * x + (p2 ? a2 * x * x : 0.0);
            den += f;
            w[t] = (float)f;
        }
        __syncthreads();
        for (int t = 0; t < nc; t++)
            for (int c = threadIdx.x, u = 0; c < d; c += kThreads, u++)
                acc[u] += w[t] * vg[(int64_t)(j0 + t) * d + c];
        __syncthreads();
    }
    double tot = block_sum<kWarps>(den, red);
    float *orow = o + item * d;
    for (int c = threadIdx.x, u = 0; c < d; c += kThreads, u++)
        orow[c] = tot != 0 ? (float)(acc[u] / tot) : 0.f;
}

// ---- attn.tra ----

// kinv[t] = QK-norm factor of key row t (1 without the norm): one thread per key row
__global__ void tra_kinv_kernel(const float *k, float *kinv, int64_t rows, int d, int on, double eps)
{
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows)
        return;
    double s = 0;
    for (int c = 0; c < d; c++)
        s += (double)k[t * d + c] * (double)k[t * d + c];
    kinv[t] = on ? (float)(1.0 / sqrt(s / d + eps)) : 1.f;
}

// A grid of CTAs walks the (head, row) items; scores in the CTA's scratch
// slice; thread 0 walks the row back once for the kept counts c_ij; every
// thread then forms the softmax itself and accumulates its channels.
__global__ void tra_kernel(const float *q, const float *k, const float *v, const float *delta, const float *kinv,
                           float *o, int32_t *count, float *scratch, int hq, int group, int nq, int nk, int d, int causal,
                           float scale, int on, double eps)
{
    SL_SHARED(float, qs, [kMaxD]);
    SL_SHARED(float, row_max, [1]);
    SL_SHARED(int, row_kept, [1]);
    SL_SHARED(double, red, [kWarps]);
    float *x = scratch + (int64_t)blockIdx.x * nk;
    for (int64_t item = blockIdx.x; item < (int64_t)hq * nq; item += gridDim.x) {
        int r = (int)(item % nq), g = (int)(item / nq) / group;
        const float *qr = q + item * d, *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
        __syncthreads();
        double part = 0;
        for (int c = threadIdx.x; c < d; c += kThreads) {
            qs[c] = qr[c];
            part += (double)qr[c] * (double)qr[c];
        }
        double ss = block_sum<kWarps>(part, red);
        float qsc = scale * (on ? (float)(1.0 / sqrt(ss / d + eps)) : 1.f);
        int n = causal ? nk - nq + r + 1 : nk;
        n = n > nk ? nk : n;
        for (int j = threadIdx.x; j < n; j += kThreads) {
            const float *kj = kg + (int64_t)j * d;
            float s = 0.f;
            for (int c = 0; c < d; c++)
                s += qs[c] * kj[c];
            x[j] = qsc * kinv[(int64_t)g * nk + j] * s;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float dl = delta[item], mx = -INFINITY;
            int kept = 0;
            for (int j = n - 1; j >= 0; j--) {
                if (x[j] > 0.f) {
                    kept++;
                    x[j] += dl * (float)kept;
                    mx = x[j] > mx ? x[j] : mx;
                } else {
                    x[j] = -INFINITY;
                }
            }
            row_max[0] = mx;
            row_kept[0] = kept;
        }
        __syncthreads();
        float mx = row_max[0];
        int kept = row_kept[0];
        float acc[kMaxD / kThreads] = {};
        double l = 0;
        for (int j = 0; j < n; j++) {
            if (x[j] == -INFINITY)
                continue;
            float w = expf(x[j] - mx);
            l += w;
            for (int c = threadIdx.x, u = 0; c < d; c += kThreads, u++)
                acc[u] += w * vg[(int64_t)j * d + c];
        }
        float *orow = o + item * d;
        for (int c = threadIdx.x, u = 0; c < d; c += kThreads, u++)
            orow[c] = kept ? (float)(acc[u] / l) : 0.f;
        if (threadIdx.x == 0)
            count[item] = kept;
    }
}

// ---- attn.monotonic: one CTA per query head, its rows in order ----

__global__ void monotonic_kernel(const float *q, const float *k, const float *v, float *o, float *lse, int32_t *stop,
                                 int group, int nq, int nk, int d, int causal, float scale, float rr, int chunk)
{
    SL_SHARED(float, qs, [kMaxD]);
    SL_SHARED(float, sc, [kChunk]);
    SL_SHARED(double, red, [kWarps]);
    int h = blockIdx.x, g = h / group, t = 0;
    const float *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
    for (int r = 0; r < nq; r++) {
        int64_t item = (int64_t)h * nq + r;
        __syncthreads();
        for (int c = threadIdx.x; c < d; c += kThreads)
            qs[c] = q[item * d + c];
        __syncthreads();
        int n = causal ? nk - nq + r + 1 : nk;
        n = n > nk ? nk : n;
        // the first key x >= t with energy >= 0, kThreads keys at a time
        int found = -1;
        for (int x0 = t; x0 < n && found < 0; x0 += kThreads) {
            int x = x0 + threadIdx.x;
            double mine = -1e18;  // the negated index of a hit: block max = the first hit
            if (x < n) {
                float s = 0.f;
                for (int c = 0; c < d; c++)
                    s += qs[c] * kg[(int64_t)x * d + c];
                if (scale * s + rr >= 0.f)
                    mine = -(double)x;
            }
            double best = block_max<kWarps>(mine, red);
            if (best > -1e18)
                found = (int)(-best);
        }
        float *orow = o + item * d;
        if (threadIdx.x == 0)
            stop[item] = found;
        if (found < 0) {
            for (int c = threadIdx.x; c < d; c += kThreads)
                orow[c] = 0.f;
            if (threadIdx.x == 0)
                lse[item] = -INFINITY;
            continue;
        }
        t = found;
        int j0 = found - chunk + 1 > 0 ? found - chunk + 1 : 0;
        float m = -INFINITY, l = 0.f, acc[kMaxD / kThreads] = {};
        for (int c0 = j0; c0 <= found; c0 += kChunk) {
            int nc = found + 1 - c0 < kChunk ? found + 1 - c0 : kChunk;
            __syncthreads();
            for (int u = threadIdx.x; u < nc; u += kThreads) {
                float s = 0.f;
                for (int c = 0; c < d; c++)
                    s += qs[c] * kg[(int64_t)(c0 + u) * d + c];
                sc[u] = scale * s;
            }
            __syncthreads();
            for (int u = 0; u < nc; u++) {
                float s = sc[u];
                if (s > m) {
                    float f = m == -INFINITY ? 0.f : expf(m - s);
                    l *= f;
                    for (int e = 0; e < kMaxD / kThreads; e++)
                        acc[e] *= f;
                    m = s;
                }
                float w = expf(s - m);
                l += w;
                for (int c = threadIdx.x, e = 0; c < d; c += kThreads, e++)
                    acc[e] += w * vg[(int64_t)(c0 + u) * d + c];
            }
        }
        for (int c = threadIdx.x, e = 0; c < d; c += kThreads, e++)
            orow[c] = acc[e] / l;
        if (threadIdx.x == 0)
            lse[item] = m + logf(l);
    }
}

}  // namespace

// The limits of the kernels that take one query row (of items) per block:
// head_dim up to kMaxD, fewer than 2^31 rows and keys.
static sl_status check_rows(const sl__kargs *a, const sl__attn_dims &dm, int64_t items)
{
    if (dm.d > kMaxD || items > INT32_MAX || dm.nk > INT32_MAX)
        return sl__cuda_unsupported(a, "head_dim up to %d and fewer than 2^31 rows; found head_dim %lld, %lld rows", kMaxD,
                                    (long long)dm.d, (long long)items);
    return SL_OK;
}

sl_status sl__cuda_attn_tra(const sl__kargs *a)
{
    const sl_attn_tra_params *p = static_cast<const sl_attn_tra_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t items = dm.hq * dm.nq;
    sl_status s = check_rows(a, dm, items);
    if (s != SL_OK || items == 0)
        return s;
    sl__cuda_stage st(a);
    if ((s = sl__cuda_stage_in(&st)) != SL_OK)
        return s;
    int ctas = items < kMaxCtas ? (int)items : kMaxCtas;
    int64_t krows = dm.hkv * dm.nk;
    void *kinv = nullptr, *scratch = nullptr;
    if ((s = sl__cuda_scratch(&st, (size_t)(krows > 0 ? krows : 1) * sizeof(float), &kinv)) != SL_OK ||
        (s = sl__cuda_scratch(&st, (size_t)ctas * (size_t)(dm.nk > 0 ? dm.nk : 1) * sizeof(float), &scratch)) != SL_OK)
        return s;
    if (krows > 0)
        SL_LAUNCH(tra_kinv_kernel, (int)((krows + 127) / 128), 128, 0, 0)(st.input<float>(1), static_cast<float *>(kinv),
                                                                          krows, (int)dm.d, (int)p->qk_norm, p->eps);
    SL_LAUNCH(tra_kernel, ctas, kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.input<float>(3), static_cast<const float *>(kinv),
        st.output<float>(0), st.output<int32_t>(1), static_cast<float *>(scratch), (int)dm.hq, (int)dm.group, (int)dm.nq,
        (int)dm.nk, (int)dm.d, (int)p->causal, (float)dm.scale, (int)p->qk_norm, p->eps);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_attn_monotonic(const sl__kargs *a)
{
    const sl_attn_monotonic_params *p = static_cast<const sl_attn_monotonic_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    if (dm.d > kMaxD || dm.nq > INT32_MAX || dm.nk > INT32_MAX || dm.hq > INT32_MAX)
        return sl__cuda_unsupported(a, "head_dim up to %d and fewer than 2^31 rows; found head_dim %lld, %lld rows", kMaxD,
                                    (long long)dm.d, (long long)dm.nq);
    if (dm.hq * dm.nq == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    int chunk = p->chunk < (int64_t)INT32_MAX ? (int)p->chunk : INT32_MAX;
    SL_LAUNCH(monotonic_kernel, (int)dm.hq, kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.output<float>(0), st.output<float>(1),
        st.output<int32_t>(2), (int)dm.group, (int)dm.nq, (int)dm.nk, (int)dm.d, (int)p->causal, (float)dm.scale,
        (float)p->r, chunk);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_attn_sigmoid_gate(const sl__kargs *a)
{
    const sl_attn_sigmoid_gate_params *p = static_cast<const sl_attn_sigmoid_gate_params *>(a->params);
    int64_t rows = a->in[0].shape[0] * a->in[0].shape[1], D = a->in[0].shape[2], G = a->in[1].shape[2];
    if (rows == 0)
        return SL_OK;
    if (D > INT32_MAX || (rows + 127) / 128 > INT32_MAX)
        return sl__cuda_unsupported(a, "fewer than 2^31 channels and blocks; found %lld channels, %lld rows", (long long)D,
                                    (long long)rows);
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    SL_LAUNCH(gate_kernel, (int)((rows + 127) / 128), 128, 0, 0)(st.input<float>(0), st.input<float>(1),
                                                                 st.output<float>(0), st.output<int32_t>(1), rows,
                                                                 (int)D, (int)G, (float)p->eps);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_attn_fastmax(const sl__kargs *a)
{
    const sl_attn_fastmax_params *p = static_cast<const sl_attn_fastmax_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    int64_t items = dm.hq * dm.nq;
    sl_status s = check_rows(a, dm, items);
    if (s != SL_OK || items == 0)
        return s;
    sl__cuda_stage st(a);
    if ((s = sl__cuda_stage_in(&st)) != SL_OK)
        return s;
    void *qinv = nullptr, *kinv = nullptr;
    if ((s = sl__cuda_scratch(&st, (size_t)dm.hq * sizeof(double), &qinv)) != SL_OK ||
        (s = sl__cuda_scratch(&st, (size_t)dm.hkv * sizeof(double), &kinv)) != SL_OK)
        return s;
    SL_LAUNCH(inv_norm_kernel, (int)dm.hq, kThreads, 0, 0)(st.input<float>(0), static_cast<double *>(qinv), (int)dm.nq,
                                                           (int)dm.d, p->lim, (int)p->normalize);
    SL_LAUNCH(inv_norm_kernel, (int)dm.hkv, kThreads, 0, 0)(st.input<float>(1), static_cast<double *>(kinv), (int)dm.nk,
                                                            (int)dm.d, p->lim, (int)p->normalize);
    SL_LAUNCH(fastmax_kernel, (int)items, kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), static_cast<const double *>(qinv),
        static_cast<const double *>(kinv), st.output<float>(0), (int)dm.group, (int)dm.nq, (int)dm.nk, (int)dm.d,
        (int)p->causal, p->p == 2, p->a0, p->a1, p->a2);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_attn_relu(const sl__kargs *a)
{
    const sl_attn_relu_params *p = static_cast<const sl_attn_relu_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t items = dm.hq * dm.nq;
    sl_status s = check_rows(a, dm, items);
    if (s != SL_OK || items == 0)
        return s;
    sl__cuda_stage st(a);
    if ((s = sl__cuda_stage_in(&st)) != SL_OK)
        return s;
    SL_LAUNCH(relu_kernel, (int)items, kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.output<float>(0), st.output<int32_t>(1),
        (int)dm.hq, (int)dm.group, (int)dm.nq, (int)dm.nk, (int)dm.d, (int)p->causal, (float)dm.scale, (float)p->bias,
        (float)p->power, (int)p->norm);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_norm_rms_gated(const sl__kargs *a)
{
    const sl_norm_rms_gated_params *p = static_cast<const sl_norm_rms_gated_params *>(a->params);
    int64_t H = a->in[0].shape[0], N = a->in[0].shape[1], D = a->in[0].shape[2];
    if (N > INT32_MAX || H * D > INT32_MAX)
        return sl__cuda_unsupported(a, "fewer than 2^31 tokens and channels; found %lld tokens, %lld channels",
                                    (long long)N, (long long)(H * D));
    if (N == 0 || H * D == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    SL_LAUNCH(rms_gated_kernel, (int)N, kThreads, 0, 0)(st.input<float>(0), st.input<float>(1), st.input<float>(2),
                                                         st.output<float>(0), (int)H, (int)N, (int)D, p->eps,
                                                         (int)p->gate);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_attn_entmax(const sl__kargs *a)
{
    const sl_attn_entmax_params *p = static_cast<const sl_attn_entmax_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t items = dm.hq * dm.nq;
    sl_status s = check_rows(a, dm, items);
    if (s != SL_OK || items == 0)
        return s;
    sl__cuda_stage st(a);
    if ((s = sl__cuda_stage_in(&st)) != SL_OK)
        return s;
    int ctas = items < kMaxCtas ? (int)items : kMaxCtas;
    void *scratch = nullptr;
    if ((s = sl__cuda_scratch(&st, (size_t)ctas * (size_t)(dm.nk > 0 ? dm.nk : 1) * sizeof(double), &scratch)) != SL_OK)
        return s;
    SL_LAUNCH(entmax_kernel, ctas, kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.output<float>(0), st.output<int32_t>(1),
        static_cast<double *>(scratch), (int)dm.hq, (int)dm.group, (int)dm.nq, (int)dm.nk, (int)dm.d, (int)p->causal,
        (float)dm.scale, p->alpha, (int)p->algo, (int)p->n_iter);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
