/* cpu/token_score.c — cpu kernels of pool.tokens, score.lowbit, score.hash and
 * attn.bucket (contracts in sparselab.h). Work items run on our thread pool; the low-bit
 * estimate multiplies the dequantised Q and K with sgemm (the quantised
 * values times their steps are what INT-b tensor cores compute, exactly up
 * to f32 rounding of the sums), then reduces each key block's maxima. */
#include "cpu.h"
#include "../ref/ref.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOWBIT_TQ 64  /* query rows per sgemm of score.lowbit */
#define LOWBIT_KC 256 /* keys per sgemm of score.lowbit */

/* ---- pool.tokens ---- */

typedef struct pool_job {
    const sl__kargs *a;
    double *acc; /* d doubles per thread */
} pool_job;

static void pool_item(int64_t item, void *ud, int thread)
{
    const pool_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_pool_params *p = a->params;
    int64_t n = a->in[0].shape[1], d = a->in[0].shape[2], S = a->out[0].shape[1];
    int64_t h = item / S, s = item % S, t0, t1;
    if (a->in[1].buf) {
        const int32_t *b = a->in[1].data;
        t0 = b[s];
        t1 = s + 1 < S ? b[s + 1] : n;
    } else {
        t0 = s * p->block;
        t1 = t0 + p->block < n ? t0 + p->block : n;
    }
    double *acc = j->acc + (size_t)thread * (size_t)d;
    for (int64_t c = 0; c < d; c++)
        acc[c] = p->mode == 1 ? -INFINITY : p->mode == 2 ? INFINITY : 0.0;
    const float *X = (const float *)a->in[0].data + h * n * d;
    for (int64_t t = t0; t < t1; t++) {
        const float *row = X + t * d;
        double inv = 1.0;
        if (p->normalize) {
            double ss = 0;
            for (int64_t c = 0; c < d; c++)
                ss += (double)row[c] * row[c];
            inv = ss > 0 ? 1.0 / sqrt(ss) : 0.0;
        }
        if (p->mode == 0)
            for (int64_t c = 0; c < d; c++)
                acc[c] += row[c] * inv;
        else if (p->mode == 1)
            for (int64_t c = 0; c < d; c++)
                acc[c] = fmax(acc[c], row[c] * inv);
        else
            for (int64_t c = 0; c < d; c++)
                acc[c] = fmin(acc[c], row[c] * inv);
    }
    double len = (double)(t1 - t0), mul = p->len_norm ? sqrt(len) : 1.0;
    float *out = (float *)a->out[0].data + item * d;
    for (int64_t c = 0; c < d; c++)
        out[c] = (float)((p->mode == 0 ? acc[c] / len : acc[c]) * mul);
}

sl_status sl__cpu_pool_tokens(const sl__kargs *a)
{
    int64_t d = a->in[0].shape[2], items = a->out[0].shape[0] * a->out[0].shape[1];
    int nt = sl_ctx_threads(a->ctx);
    size_t bytes = sizeof(double) * (size_t)(d > 0 ? d : 1) * (size_t)(nt > 0 ? nt : 1);
    pool_job j = {a, sl_ctx_alloc(a->ctx, bytes)};
    if (!j.acc)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "pool.tokens[cpu]: out of memory for %zu bytes", bytes);
    sl_status s = sl__cpu_parallel(a->ctx, items, pool_item, &j);
    sl_ctx_dealloc(a->ctx, j.acc, bytes);
    return s;
}

/* ---- score.lowbit ---- */

typedef struct lowbit_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    float *qq, *kq, *ks, *mean, *corr, *s; /* s: LOWBIT_TQ x LOWBIT_KC floats per thread */
    int64_t nqb, nkb;
} lowbit_job;

/* Per kv head: smoothed, quantised K and the mean key. */
static void lowbit_k(int64_t h, void *ud, int thread)
{
    (void)thread;
    const lowbit_job *j = ud;
    const sl_score_lowbit_params *p = j->a->params;
    int64_t nk = j->dm.nk, d = j->dm.d;
    const float *k = (const float *)j->a->in[1].data + h * nk * d;
    sl__lowbit_prepare(k, nk, d, (int)p->smooth_k, j->ks + h * nk * d, j->mean + h * d);
    sl__lowbit_quantise(j->ks + h * nk * d, nk, d, p->k_group, (int)p->bits, j->kq + h * nk * d);
}

/* Per query head: quantised Q and the exact correction q . mean_k. */
static void lowbit_q(int64_t h, void *ud, int thread)
{
    (void)thread;
    const lowbit_job *j = ud;
    const sl_score_lowbit_params *p = j->a->params;
    int64_t nq = j->dm.nq, d = j->dm.d;
    const float *q = (const float *)j->a->in[0].data + h * nq * d, *mean = j->mean + (h / j->dm.group) * d;
    sl__lowbit_quantise(q, nq, d, p->q_group, (int)p->bits, j->qq + h * nq * d);
    for (int64_t i = 0; i < nq; i++) {
        double c = 0;
        for (int64_t t = 0; t < d; t++)
            c += (double)q[i * d + t] * mean[t];
        j->corr[h * nq + i] = (float)c;
    }
}

/* Item: (query head, query block); tiles of LOWBIT_TQ rows against chunks of
 * LOWBIT_KC keys up to the block's causal limit. */
static void lowbit_block(int64_t item, void *ud, int thread)
{
    const lowbit_job *j = ud;
    const sl_score_lowbit_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / j->nqb, r = item % j->nqb, d = dm->d;
    const float *lse = j->a->in[2].buf ? (const float *)j->a->in[2].data + h * dm->nq : NULL;
    float *out = (float *)j->a->out[0].data + item * j->nkb;
    float *s = j->s + (size_t)thread * LOWBIT_TQ * LOWBIT_KC;
    const float *kq = j->kq + (h / dm->group) * dm->nk * d;
    for (int64_t c = 0; c < j->nkb; c++)
        out[c] = -INFINITY;
    int64_t i_end = (r + 1) * p->bq < dm->nq ? (r + 1) * p->bq : dm->nq;
    for (int64_t i0 = r * p->bq; i0 < i_end; i0 += LOWBIT_TQ) {
        int64_t rows = i_end - i0 < LOWBIT_TQ ? i_end - i0 : LOWBIT_TQ;
        int64_t kend = p->causal ? dm->offset + i0 + rows : dm->nk;
        const float *qq = j->qq + (h * dm->nq + i0) * d;
        for (int64_t k0 = 0; k0 < kend; k0 += LOWBIT_KC) {
            int64_t nc = kend - k0 < LOWBIT_KC ? kend - k0 : LOWBIT_KC;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)nc, (int)d, 1.f, qq, (int)d,
                        kq + k0 * d, (int)d, 0.f, s, LOWBIT_KC);
            for (int64_t x = 0; x < rows; x++) {
                int64_t i = i0 + x;
                float base = lse ? lse[i] : 0.f;
                if (base == -INFINITY)
                    continue;
                int64_t lim = p->causal ? dm->offset + i + 1 - k0 : nc;
                lim = lim < nc ? lim : nc;
                float corr = j->corr[h * dm->nq + i], sc = (float)dm->scale;
                const float *sr = s + x * LOWBIT_KC;
                for (int64_t y = 0; y < lim;) {
                    int64_t c = (k0 + y) / p->bk, stop = (c + 1) * p->bk - k0;
                    stop = stop < lim ? stop : lim;
                    float m = -INFINITY;
                    for (; y < stop; y++)
                        m = sr[y] > m ? sr[y] : m;
                    float v = (float)(((double)m + corr) * sc - base);
                    out[c] = v > out[c] ? v : out[c];
                }
            }
        }
    }
}

sl_status sl__cpu_score_lowbit(const sl__kargs *a)
{
    const sl_score_lowbit_params *p = a->params;
    lowbit_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), NULL, NULL, NULL, NULL, NULL, NULL,
                    a->out[0].shape[1], a->out[0].shape[2]};
    const sl__attn_dims *dm = &j.dm;
    int nt = sl_ctx_threads(a->ctx);
    size_t nqf = (size_t)(dm->hq * dm->nq * dm->d), nkf = (size_t)(dm->hkv * dm->nk * dm->d);
    size_t sz[6] = {nqf, nkf, nkf, (size_t)(dm->hkv * dm->d), (size_t)(dm->hq * dm->nq),
                    (size_t)LOWBIT_TQ * LOWBIT_KC * (size_t)(nt > 0 ? nt : 1)};
    float **ptr[6] = {&j.qq, &j.kq, &j.ks, &j.mean, &j.corr, &j.s};
    sl_status s = SL_OK;
    for (int i = 0; i < 6 && s == SL_OK; i++)
        if (!(*ptr[i] = sl_ctx_alloc(a->ctx, sizeof(float) * (sz[i] ? sz[i] : 1))))
            s = sl_ctx_fail(a->ctx, SL_ENOMEM, "score.lowbit[cpu]: out of memory for %zu bytes", sizeof(float) * sz[i]);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, dm->hkv, lowbit_k, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, dm->hq, lowbit_q, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, dm->hq * j.nqb, lowbit_block, &j);
    for (int i = 0; i < 6; i++)
        if (*ptr[i])
            sl_ctx_dealloc(a->ctx, *ptr[i], sizeof(float) * (sz[i] ? sz[i] : 1));
    return s;
}

/* ---- attn.bucket ---- */

typedef struct bucket_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    sl__cpu_vecops vo;
    int32_t *order;  /* per query head: key indices sorted by (bucket, index) */
    float *work;     /* per thread: n_k scores + n_k key indices (as int32) + d accumulators */
    int64_t per_thread;
} bucket_job;

typedef struct key_sort {
    const int32_t *kb;
} key_sort;

static int cmp_key(const void *x, const void *y, void *ud)
{
    const int32_t *kb = ((const key_sort *)ud)->kb;
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    if (kb[a] != kb[b])
        return kb[a] < kb[b] ? -1 : 1;
    return (a > b) - (a < b);
}

/* qsort_r is not C11; a small merge sort keeps the order stable and portable. */
static void sort_keys(int32_t *v, int32_t *tmp, int64_t n, const int32_t *kb)
{
    key_sort ks = {kb};
    for (int64_t w = 1; w < n; w *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * w) {
            int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n, a = lo, b = mid, o = lo;
            while (a < mid && b < hi)
                tmp[o++] = cmp_key(&v[b], &v[a], &ks) < 0 ? v[b++] : v[a++];
            while (a < mid)
                tmp[o++] = v[a++];
            while (b < hi)
                tmp[o++] = v[b++];
        }
        memcpy(v, tmp, sizeof *v * (size_t)n);
    }
}

static void bucket_sort_head(int64_t h, void *ud, int thread)
{
    const bucket_job *j = ud;
    int64_t nk = j->dm.nk;
    int32_t *v = j->order + h * nk, *tmp = (int32_t *)(j->work + (size_t)thread * (size_t)j->per_thread);
    for (int64_t t = 0; t < nk; t++)
        v[t] = (int32_t)t;
    sort_keys(v, tmp, nk, (const int32_t *)j->a->in[4].data + h * nk);
}

static void bucket_row(int64_t item, void *ud, int thread)
{
    const bucket_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_attn_bucket_params *p = a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / dm->nq, i = item % dm->nq, d = dm->d, nk = dm->nk;
    float *s = j->work + (size_t)thread * (size_t)j->per_thread;
    int32_t *key = (int32_t *)(s + nk);
    float *acc = s + 2 * nk;
    const float *q = (const float *)a->in[0].data + item * d;
    const float *K = (const float *)a->in[1].data + (h / dm->group) * nk * d;
    const float *V = (const float *)a->in[2].data + (h / dm->group) * nk * d;
    int64_t jmax = p->causal ? dm->offset + i + 1 : nk;
    int64_t n = 0;
    if (a->in[3].buf) {
        /* the query's bucket is a run of the sorted keys, in index order */
        const int32_t *kb = (const int32_t *)a->in[4].data + h * nk, *ord = j->order + h * nk;
        int32_t b = ((const int32_t *)a->in[3].data)[item];
        int64_t lo = 0, hi = nk;
        while (lo < hi) {
            int64_t mid = (lo + hi) / 2;
            if (kb[ord[mid]] < b)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (int64_t e = lo; e < nk && kb[ord[e]] == b && ord[e] < jmax; e++)
            key[n++] = ord[e];
    } else
        for (int64_t t = 0; t < jmax; t++)
            key[n++] = (int32_t)t;
    float mx = -INFINITY, sc = (float)dm->scale;
    int64_t m = 0;
    for (int64_t e = 0; e < n; e++) {
        float x = j->vo.dot(q, K + (int64_t)key[e] * d, d) * sc;
        if (p->use_tau && (double)x < p->tau)
            continue;
        key[m] = key[e];
        s[m++] = x;
        mx = x > mx ? x : mx;
    }
    float *o = (float *)a->out[0].data + item * d;
    for (int64_t c = 0; c < d; c++)
        acc[c] = 0;
    double z = 0;
    for (int64_t e = 0; e < m; e++) {
        float w = expf(s[e] - mx);
        z += w;
        j->vo.axpy(acc, V + (int64_t)key[e] * d, d, w);
    }
    for (int64_t c = 0; c < d; c++)
        o[c] = m ? (float)(acc[c] / z) : 0.f;
    ((float *)a->out[1].data)[item] = m ? (float)(mx + log(z)) : -INFINITY;
    ((int32_t *)a->out[2].data)[item] = (int32_t)m;
}

sl_status sl__cpu_attn_bucket(const sl__kargs *a)
{
    const sl_attn_bucket_params *p = a->params;
    bucket_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), sl__cpu_vecops_get(), NULL, NULL, 0};
    int nt = sl_ctx_threads(a->ctx);
    nt = nt > 0 ? nt : 1;
    j.per_thread = 2 * j.dm.nk + j.dm.d + 16;
    size_t wbytes = sizeof(float) * (size_t)j.per_thread * (size_t)nt;
    size_t obytes = a->in[3].buf ? sizeof(int32_t) * (size_t)(j.dm.hq * j.dm.nk) : 0;
    j.work = sl_ctx_alloc(a->ctx, wbytes);
    if (obytes)
        j.order = sl_ctx_alloc(a->ctx, obytes);
    sl_status s = SL_OK;
    if (!j.work || (obytes && !j.order))
        s = sl_ctx_fail(a->ctx, SL_ENOMEM, "attn.bucket[cpu]: out of memory for %zu bytes", wbytes + obytes);
    if (s == SL_OK && obytes)
        s = sl__cpu_parallel(a->ctx, j.dm.hq, bucket_sort_head, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, j.dm.hq * j.dm.nq, bucket_row, &j);
    if (j.work)
        sl_ctx_dealloc(a->ctx, j.work, wbytes);
    if (j.order)
        sl_ctx_dealloc(a->ctx, j.order, obytes);
    return s;
}

/* ---- score.hash ---- */

/* Item: (rotation head, token); the dot products in float64 like ref, so the
 * argmax (a discrete choice) agrees with ref exactly. */
static void hash_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_tensor *x = &a->in[0], *rot = &a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hr = rot->shape[0], m = rot->shape[2];
    int64_t h = item / n, t = item % n;
    const float *xt = (const float *)x->data + ((h / (hr / hx)) * n + t) * d;
    const float *R = (const float *)rot->data + h * d * m;
    double best_pos = -INFINITY, best_neg = -INFINITY;
    int64_t arg_pos = 0, arg_neg = 0;
    for (int64_t c = 0; c < m; c++) {
        double v = 0;
        for (int64_t e = 0; e < d; e++)
            v += (double)xt[e] * R[e * m + c];
        if (v > best_pos)
            best_pos = v, arg_pos = c;
        if (-v > best_neg)
            best_neg = -v, arg_neg = c;
    }
    /* the first maximum of [+, -]: a tie between the halves goes to +. */
    ((int32_t *)a->out[0].data)[item] = (int32_t)(best_pos >= best_neg ? arg_pos : m + arg_neg);
}

sl_status sl__cpu_score_hash(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->out[0].shape[0] * a->out[0].shape[1], hash_item, (void *)a);
}
