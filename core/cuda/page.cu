// cuda/page.cu — the page family on CUDA (decode over a paged KV cache,
// issue 13; contracts in sparselab.h). page.meta: one CTA per (page, head),
// threads over channels; page.bounds: one CTA per (row, head), threads over
// pages; page.select: one CTA per (row, list) ranking every page by counting
// the pages before it (O(n_p^2) per row: the lists are short at decode);
// page.attend: split-K, one CTA per (chunk of list entries, row, query head)
// running an online softmax over tiles of 64 gathered keys (threads own
// channels of the accumulator), then one CTA per (row, head) merging the
// chunks by their log-sum-exps. Compiled with `make CUDA=1`; run under the
// CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 64;
constexpr int kTile = 64;   // keys per tile of page.attend (one per thread)
constexpr int64_t kDefaultPer = 16;  // list entries per chunk when split = 0

__global__ void meta_kernel(const float *k, float *mn, float *mx, float *me, int64_t n, int64_t d, int64_t np,
                            int64_t P)
{
    int64_t pg = blockIdx.x, h = blockIdx.y;
    int64_t t0 = pg * P, t1 = t0 + P < n ? t0 + P : n;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        const float *x = k + (h * n) * d + c;
        float lo = x[t0 * d], hi = lo;
        double sum = 0;
        for (int64_t t = t0; t < t1; t++) {
            float v = x[t * d];
            lo = fminf(lo, v);
            hi = fmaxf(hi, v);
            sum += v;
        }
        int64_t o = (h * np + pg) * d + c;
        mn[o] = lo;
        mx[o] = hi;
        me[o] = (float)(sum / (double)(t1 - t0));
    }
}

__global__ void bounds_kernel(const float *q, const float *lo, const float *hi, float *u, int64_t r, int64_t d,
                              int64_t np, int64_t group)
{
    int64_t i = blockIdx.x, h = blockIdx.y;
    const float *qi = q + (h * r + i) * d;
    for (int64_t pg = threadIdx.x; pg < np; pg += blockDim.x) {
        const float *l = lo + ((h / group) * np + pg) * d, *m = hi + ((h / group) * np + pg) * d;
        double s = 0;
        for (int64_t c = 0; c < d; c++)
            s += fmaxf(qi[c] * l[c], qi[c] * m[c]);
        u[(h * r + i) * np + pg] = (float)s;
    }
}

struct select_args {
    const float *x;
    int32_t *out;
    float *agg;      // scratch [lists, r, np]
    int32_t *order;  // scratch [lists, r, np]: page of each rank
    uint8_t *taken;  // scratch [lists, r, np]
    int64_t r, np, m, group, sink;
    int last;
    double p;
};

__device__ int prio_of(int64_t p, const select_args &a)
{
    return a.last && p == a.np - 1 ? 2 : p < a.sink ? 1 : 0;
}

__global__ void select_kernel(select_args a)
{
    int64_t i = blockIdx.x, l = blockIdx.y, row = l * a.r + i;
    float *agg = a.agg + row * a.np;
    int32_t *order = a.order + row * a.np;
    uint8_t *taken = a.taken + row * a.np;
    for (int64_t p = threadIdx.x; p < a.np; p += blockDim.x) {
        double s = 0;
        for (int64_t g = 0; g < a.group; g++)
            s += a.x[((l * a.group + g) * a.r + i) * a.np + p];
        agg[p] = (float)s;
    }
    __syncthreads();
    for (int64_t p = threadIdx.x; p < a.np; p += blockDim.x) {
        int pp = prio_of(p, a);
        int64_t rank = 0;
        for (int64_t q = 0; q < a.np; q++) {
            int pq = prio_of(q, a);
            bool before = pq != pp ? pq > pp : (pp == 0 && agg[q] != agg[p]) ? agg[q] > agg[p] : q < p;
            rank += before;
        }
        order[rank] = (int32_t)p;
        taken[p] = 0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        // one walk in ranking order, the sums in ref's order
        double mx = -INFINITY, total = 0, cum = 0;
        for (int64_t t = 0; t < a.np; t++)
            mx = fmax(mx, (double)agg[t]);
        if (a.p > 0)
            for (int64_t t = 0; t < a.np; t++)
                if (agg[order[t]] != -INFINITY)
                    total += exp((double)agg[order[t]] - mx);
        for (int64_t t = 0; t < a.m; t++) {
            int32_t p = order[t];
            if (a.p > 0 && prio_of(p, a) == 0 && (agg[p] == -INFINITY || (a.p < 1 && cum >= a.p * total)))
                break;
            taken[p] = 1;
            if (agg[p] != -INFINITY)
                cum += exp((double)agg[p] - mx);
        }
    }
    __syncthreads();
    int64_t kept = 0;
    for (int64_t q = 0; q < a.np; q++)
        kept += taken[q];
    for (int64_t p = threadIdx.x; p < a.np; p += blockDim.x) {
        if (!taken[p])
            continue;
        int64_t pos = 0;
        for (int64_t q = 0; q < p; q++)
            pos += taken[q];
        a.out[row * a.m + pos] = (int32_t)p;
    }
    for (int64_t t = kept + threadIdx.x; t < a.m; t += blockDim.x)
        a.out[row * a.m + t] = -1;
}

struct scores_args {
    const float *q, *k;
    const int32_t *channels, *pages;
    float *out;
    int64_t hq, hkv, r, d, nk, n, nc, hc, lists, m, P, bits;
    int causal;
    double scale;
    int64_t qbits;
};

// 1 when key j's page is among the row's listed pages (ascending ids, then
// -1 padding, which the search treats as larger than every id).
__device__ bool listed(const int32_t *ids, int64_t m, int64_t page)
{
    int64_t lo = 0, hi = m;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        int64_t v = ids[mid] < 0 ? INT64_MAX : ids[mid];
        if (v < page)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < m && ids[lo] == page;
}

__global__ void token_scores_kernel(scores_args a)
{
    int64_t i = blockIdx.x, h = blockIdx.y;
    const float *qi = a.q + (h * a.r + i) * a.d;
    const float *kh = a.k + (h / (a.hq / a.hkv)) * a.nk * a.d;
    const int32_t *cols = a.channels ? a.channels + (h / (a.hq / a.hc)) * a.nc : nullptr;
    const int32_t *ids = a.pages ? a.pages + ((h / (a.hq / a.lists)) * a.r + i) * a.m : nullptr;
    int64_t limit = a.causal ? a.n - a.r + i + 1 : a.n;
    double qlo = INFINITY, qhi = -INFINITY, qstep = 0;
    if (a.qbits > 0) {
        for (int64_t c = 0; c < a.nc; c++) {
            double x = qi[cols ? cols[c] : c];
            qlo = fmin(qlo, x);
            qhi = fmax(qhi, x);
        }
        qstep = (qhi - qlo) / (double)((1 << a.qbits) - 1);
    }
    for (int64_t j = threadIdx.x; j < a.n; j += blockDim.x) {
        float *o = a.out + (h * a.r + i) * a.n + j;
        if (j >= limit || (ids && !listed(ids, a.m, j / a.P))) {
            *o = -INFINITY;
            continue;
        }
        const float *kj = kh + j * a.d;
        double lo = INFINITY, hi = -INFINITY, step = 0, s = 0;
        if (a.bits > 0) {
            for (int64_t c = 0; c < a.nc; c++) {
                double x = kj[cols ? cols[c] : c];
                lo = fmin(lo, x);
                hi = fmax(hi, x);
            }
            step = (hi - lo) / (double)((1 << a.bits) - 1);
        }
        for (int64_t c = 0; c < a.nc; c++) {
            int64_t cc = cols ? cols[c] : c;
            double kv = kj[cc];
            if (step > 0)
                kv = lo + rint((kv - lo) / step) * step;
            double qv = qi[cc];
            if (qstep > 0)
                qv = qlo + rint((qv - qlo) / qstep) * qstep;
            s += qv * kv;
        }
        *o = (float)s * (float)a.scale;
    }
}

struct attend_args {
    const float *q, *k, *v;
    const int32_t *pages;
    float *po, *pl;   // partials [hq, r, chunks, d] and [hq, r, chunks]
    int64_t hq, hkv, r, nk, d, n, lists, m, per, chunks, P;
    int causal;
    float scale;
    // page.attend_q: codes and per-page, per-channel scales (bits 0: that side is f32)
    const uint8_t *kq, *vq;
    const float *ks, *vs;
    int64_t kbits, vbits, dk, dv;
    const float *kz, *vz;   // zero points of asymmetric codes, or null (symmetric)
};

// The unsigned code of channel t of code row `row` (b bits).
__device__ inline int code_raw(const uint8_t *row, int64_t t, int64_t bits)
{
    if (bits == 8)
        return (int)row[t];
    uint8_t b = row[t / 2];
    return (int)(t % 2 == 0 ? (b & 0x0F) : (b >> 4));
}

// Channel t of key (or value) j of kv head g: f32 storage or a dequantised
// code: symmetric (c - 2^(b-1)) . scale, or c . scale + zero with zero points.
__device__ inline float kv_at(const float *f, const uint8_t *codes, const float *sc, const float *z, int64_t bits,
                              int64_t dc, int64_t g, int64_t nk, int64_t d, int64_t P, int64_t j, int64_t t)
{
    if (!bits)
        return f[(g * nk + j) * d + t];
    int64_t np = (nk + P - 1) / P, at = (g * np + j / P) * d + t;
    int c = code_raw(codes + (g * nk + j) * dc, t, bits);
    if (z)
        return (float)c * sc[at] + z[at];
    return (float)(c - (bits == 8 ? 128 : 8)) * sc[at];
}

__global__ void attend_kernel(attend_args a)
{
    SL_DYN_SMEM(float, sm);
    float *qs = sm, *acc = qs + a.d, *s = acc + a.d;
    SL_SHARED(int64_t, key, [kTile]);
    int64_t c = blockIdx.x, i = blockIdx.y, h = blockIdx.z;
    int64_t kvh = h / (a.hq / a.hkv), l = h / (a.hq / a.lists);
    const int32_t *ids = a.pages + (l * a.r + i) * a.m;
    for (int64_t t = threadIdx.x; t < a.d; t += blockDim.x) {
        qs[t] = a.q[(h * a.r + i) * a.d + t] * a.scale;
        acc[t] = 0;
    }
    __syncthreads();
    int64_t limit = a.causal ? a.n - a.r + i + 1 : a.n;
    int64_t e0 = c * a.per, e1 = e0 + a.per < a.m ? e0 + a.per : a.m;
    int64_t total = (e1 - e0) * a.P;
    float mx = -INFINITY, sum = 0;
    for (int64_t base = 0; base < total; base += kTile) {
        int64_t j = base + threadIdx.x;
        float sc = -INFINITY;
        int64_t kk = -1;
        if (j < total) {
            int32_t id = ids[e0 + j / a.P];
            int64_t cand = (int64_t)id * a.P + j % a.P;
            if (id >= 0 && cand < limit) {
                kk = cand;
                float dot = 0;
                for (int64_t t = 0; t < a.d; t++)
                    dot += qs[t] * kv_at(a.k, a.kq, a.ks, a.kz, a.kbits, a.dk, kvh, a.nk, a.d, a.P, cand, t);
                sc = dot;
            }
        }
        s[threadIdx.x] = sc;
        key[threadIdx.x] = kk;
        __syncthreads();
        float m_new = mx;
        for (int t = 0; t < kTile; t++)
            m_new = fmaxf(m_new, s[t]);
        __syncthreads();
        if (m_new == -INFINITY)
            continue;  // nothing visible yet (every thread agrees)
        s[threadIdx.x] = key[threadIdx.x] >= 0 ? expf(s[threadIdx.x] - m_new) : 0.f;
        __syncthreads();
        float corr = mx == -INFINITY ? 0.f : expf(mx - m_new);
        float tile_sum = 0;
        for (int t = 0; t < kTile; t++)
            tile_sum += s[t];
        sum = sum * corr + tile_sum;
        mx = m_new;
        for (int64_t t = threadIdx.x; t < a.d; t += blockDim.x) {
            float x = acc[t] * corr;
            for (int u = 0; u < kTile; u++)
                if (key[u] >= 0)
                    x += s[u] * kv_at(a.v, a.vq, a.vs, a.vz, a.vbits, a.dv, kvh, a.nk, a.d, a.P, key[u], t);
            acc[t] = x;
        }
        __syncthreads();
    }
    int64_t slot = (h * a.r + i) * a.chunks + c;
    for (int64_t t = threadIdx.x; t < a.d; t += blockDim.x)
        a.po[slot * a.d + t] = sum > 0 || sum != sum ? acc[t] / sum : 0.f;  // NaN: a non-finite key
    if (threadIdx.x == 0)
        a.pl[slot] = sum != sum ? sum : sum > 0 ? mx + logf(sum) : -INFINITY;
}

__global__ void merge_kernel(const float *po, const float *pl, float *o, float *lse, int64_t r, int64_t d,
                             int64_t chunks)
{
    int64_t i = blockIdx.x, h = blockIdx.y, row = h * r + i;
    float m = -INFINITY;
    for (int64_t c = 0; c < chunks && m == m; c++)
        m = pl[row * chunks + c] != pl[row * chunks + c] ? pl[row * chunks + c] : fmaxf(m, pl[row * chunks + c]);
    if (m != m) {  // a partial saw a non-finite key: NaN out, reported by the family
        for (int64_t t = threadIdx.x; t < d; t += blockDim.x)
            o[row * d + t] = m;
        if (threadIdx.x == 0)
            lse[row] = m;
        return;
    }
    double wsum = 0;
    if (m != -INFINITY)
        for (int64_t c = 0; c < chunks; c++)
            if (pl[row * chunks + c] != -INFINITY)
                wsum += expf(pl[row * chunks + c] - m);
    for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
        double x = 0;
        if (m != -INFINITY)
            for (int64_t c = 0; c < chunks; c++)
                if (pl[row * chunks + c] != -INFINITY)
                    x += expf(pl[row * chunks + c] - m) * po[(row * chunks + c) * d + t];
        o[row * d + t] = m == -INFINITY ? 0.f : (float)(x / wsum);
    }
    if (threadIdx.x == 0)
        lse[row] = m == -INFINITY ? -INFINITY : m + (float)log(wsum);
}

struct qscores_args {
    const float *q;
    const uint8_t *codes;
    const float *ks;
    const int32_t *pages;
    float *out;
    int64_t hq, hkv, r, d, nk, n, lists, m, P;
    int causal;
    float scale;
};

__global__ void qscores_kernel(qscores_args a)
{
    int64_t i = blockIdx.x, h = blockIdx.y, g = h / (a.hq / a.hkv);
    const float *qi = a.q + (h * a.r + i) * a.d;
    const int32_t *ids = a.pages ? a.pages + ((h / (a.hq / a.lists)) * a.r + i) * a.m : nullptr;
    int64_t limit = a.causal ? a.n - a.r + i + 1 : a.n;
    for (int64_t j = threadIdx.x; j < a.n; j += blockDim.x) {
        float *o = a.out + (h * a.r + i) * a.n + j;
        if (j >= limit || (ids && !listed(ids, a.m, j / a.P))) {
            *o = -INFINITY;
            continue;
        }
        const uint8_t *cj = a.codes + (g * a.nk + j) * a.d;
        double qsum = 0, dot = 0;
        for (int64_t c = 0; c < a.d; c++) {
            qsum += qi[c];
            dot += qi[c] * (float)cj[c];
        }
        *o = (float)((double)a.ks[(g * a.nk + j) * 2] * qsum + (double)a.ks[(g * a.nk + j) * 2 + 1] * dot) * a.scale;
    }
}

bool grid_ok(int64_t x, int64_t y) { return x <= INT32_MAX && y <= 65535; }

}  // namespace

sl_status sl__cuda_page_meta(const sl__kargs *a)
{
    const sl_page_meta_params *p = static_cast<const sl_page_meta_params *>(a->params);
    const sl_tensor *k = &a->in[0];
    int64_t h = k->shape[0], n = k->shape[1], d = k->shape[2], np = a->out[0].shape[1];
    if (!grid_ok(np, h))
        return sl__cuda_unsupported(a, "more than 65535 heads");
    if (h == 0 || d == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(meta_kernel, dim3((unsigned)np, (unsigned)h), kThreads, 0, 0)(
        st.input<float>(0), st.output<float>(0), st.output<float>(1), st.output<float>(2), n, d, np, p->page);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_page_bounds(const sl__kargs *a)
{
    const sl_tensor *q = &a->in[0], *mn = &a->in[1];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], np = mn->shape[1];
    if (!grid_ok(r, hq))
        return sl__cuda_unsupported(a, "more than 65535 heads");
    if (hq == 0 || r == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(bounds_kernel, dim3((unsigned)r, (unsigned)hq), kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.output<float>(0), r, d, np, hq / mn->shape[0]);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_page_select(const sl__kargs *a)
{
    const sl_page_select_params *p = static_cast<const sl_page_select_params *>(a->params);
    const sl_tensor *x = &a->in[0];
    int64_t r = x->shape[1], np = x->shape[2], lists = a->out[0].shape[0], m = a->out[0].shape[2];
    if (!grid_ok(r, lists))
        return sl__cuda_unsupported(a, "more than 65535 lists");
    if (lists == 0 || r == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    void *ws = nullptr;
    size_t cells = (size_t)(lists * r * np);
    if (sl_status s = sl__cuda_scratch(&st, cells * (sizeof(float) + sizeof(int32_t) + 1), &ws); s != SL_OK)
        return s;
    select_args sa = {st.input<float>(0), st.output<int32_t>(0), static_cast<float *>(ws),
                      reinterpret_cast<int32_t *>(static_cast<float *>(ws) + cells),
                      static_cast<uint8_t *>(ws) + cells * (sizeof(float) + sizeof(int32_t)), r, np, m, p->group,
                      p->sink, (int)p->last, p->p};
    SL_LAUNCH(select_kernel, dim3((unsigned)r, (unsigned)lists), kThreads, 0, 0)(sa);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

// page.attend (f32 K/V) and page.attend_q (codes): one launcher.
static sl_status launch_attend(const sl__kargs *a, int64_t page, int64_t n_param, int causal, int64_t split,
                               double scale_param, int quant, int64_t kbits, int64_t vbits)
{
    const sl_tensor *q = &a->in[0], *k = &a->in[1], *v = &a->in[quant ? 3 : 2], *pg = &a->in[quant ? 4 : 3];
    int64_t hq = q->shape[0], nq = q->shape[1], d = q->shape[2], hkv = k->shape[0], nk = k->shape[1];
    float scale = (float)(scale_param > 0 ? scale_param : 1.0 / sqrt((double)d));
    int64_t m = pg->shape[2];
    int64_t per = split > 0 ? split : kDefaultPer;
    per = per > m ? (m > 0 ? m : 1) : per;
    int64_t chunks = m > 0 ? (m + per - 1) / per : 1;
    if (!grid_ok(chunks, hq) || nq > 65535)
        return sl__cuda_unsupported(a, "more than 65535 heads or query rows");
    if (d > 8192)
        return sl__cuda_unsupported(a, "head_dim %lld above 8192", (long long)d);
    if (hq == 0 || nq == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    void *ws = nullptr;
    size_t slots = (size_t)(hq * nq * chunks);
    if (sl_status s = sl__cuda_scratch(&st, slots * (size_t)(d + 1) * sizeof(float), &ws); s != SL_OK)
        return s;
    int quant_v = quant && v->dtype == SL_U8;
    attend_args aa = {st.input<float>(0), quant ? nullptr : st.input<float>(1),
                      quant_v ? nullptr : st.input<float>(quant ? 3 : 2), st.input<int32_t>(quant ? 4 : 3),
                      static_cast<float *>(ws), static_cast<float *>(ws) + slots * (size_t)d,
                      hq, hkv, nq, nk, d, n_param > 0 ? n_param : nk, pg->shape[0], m, per, chunks, page,
                      causal, scale,
                      quant ? st.input<uint8_t>(1) : nullptr, quant_v ? st.input<uint8_t>(3) : nullptr,
                      quant ? st.input<float>(2) : nullptr, quant_v ? st.input<float>(5) : nullptr,
                      quant ? kbits : 0, quant_v ? vbits : 0, k->shape[2], v->shape[2],
                      quant && a->in[6].buf ? st.input<float>(6) : nullptr,
                      quant_v && a->in[7].buf ? st.input<float>(7) : nullptr};
    size_t smem = sizeof(float) * (size_t)(2 * d + kTile);
    SL_LAUNCH(attend_kernel, dim3((unsigned)chunks, (unsigned)nq, (unsigned)hq), kThreads, smem, 0)(aa);
    SL_LAUNCH(merge_kernel, dim3((unsigned)nq, (unsigned)hq), kThreads, 0, 0)(
        aa.po, aa.pl, st.output<float>(0), st.output<float>(1), nq, d, chunks);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_page_attend(const sl__kargs *a)
{
    const sl_page_attn_params *p = static_cast<const sl_page_attn_params *>(a->params);
    return launch_attend(a, p->page, p->n, (int)p->causal, p->split, p->scale, 0, 0, 0);
}

sl_status sl__cuda_page_attend_q(const sl__kargs *a)
{
    const sl_page_attnq_params *p = static_cast<const sl_page_attnq_params *>(a->params);
    return launch_attend(a, p->page, p->n, (int)p->causal, p->split, p->scale, 1, p->kbits, p->vbits);
}

sl_status sl__cuda_page_token_scores(const sl__kargs *a)
{
    const sl_page_scores_params *p = static_cast<const sl_page_scores_params *>(a->params);
    const sl_tensor *q = &a->in[0], *k = &a->in[1], *ch = &a->in[2], *pg = &a->in[3];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], n = a->out[0].shape[2];
    if (!grid_ok(r, hq))
        return sl__cuda_unsupported(a, "more than 65535 heads");
    if (hq == 0 || r == 0 || n == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    int64_t nc = ch->buf ? ch->shape[1] : d;
    scores_args sa = {st.input<float>(0), st.input<float>(1), ch->buf ? st.input<int32_t>(2) : nullptr,
                      pg->buf ? st.input<int32_t>(3) : nullptr, st.output<float>(0), hq, k->shape[0], r, d, k->shape[1],
                      n, nc, ch->buf ? ch->shape[0] : 1, pg->buf ? pg->shape[0] : 1, pg->buf ? pg->shape[2] : 0,
                      p->page, p->bits, (int)p->causal, p->scale > 0 ? p->scale : 1.0 / sqrt((double)nc), p->qbits};
    SL_LAUNCH(token_scores_kernel, dim3((unsigned)r, (unsigned)hq), kThreads, 0, 0)(sa);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_page_qscores(const sl__kargs *a)
{
    const sl_page_qscores_params *p = static_cast<const sl_page_qscores_params *>(a->params);
    const sl_tensor *q = &a->in[0], *kq = &a->in[1], *pg = &a->in[3];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], n = a->out[0].shape[2];
    if (!grid_ok(r, hq))
        return sl__cuda_unsupported(a, "more than 65535 heads");
    if (hq == 0 || r == 0 || n == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    qscores_args qa = {st.input<float>(0), st.input<uint8_t>(1), st.input<float>(2),
                       pg->buf ? st.input<int32_t>(3) : nullptr, st.output<float>(0), hq, kq->shape[0], r, d,
                       kq->shape[1], n, pg->buf ? pg->shape[0] : 1, pg->buf ? pg->shape[2] : 0, p->page,
                       (int)p->causal, (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)d))};
    SL_LAUNCH(qscores_kernel, dim3((unsigned)r, (unsigned)hq), kThreads, 0, 0)(qa);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
