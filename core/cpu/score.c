/* cpu/score.c — fast estimators of issue 4: score.pooled (pool every block
 * once, then one small sgemm per head: the estimator whose cost must stay a
 * few percent of dense attention), score.rows / score.last_q (an sgemm per
 * tile of rows, then a row softmax) and score.exact (an sgemm per query
 * block over the keys it sees, then per-row probabilities folded into key
 * blocks). Work items run on sl__cpu_parallel's threads. */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

/* Rows of score.rows / score.last_q per work item. */
#define PROB_TQ 32

/* ---- score.pooled ---- */

typedef struct pooled_job {
    const sl__kargs *a;
    const sl_score_pooled_params *p;
    sl__attn_dims dm;
    int64_t nqb, nkb;
    float *kp;        /* pooled keys: [hkv, nkb, d] (hi) then the same again (lo, minmax only) */
    float *qscr;      /* per thread: nqb × d (hi) then nqb × d (lo) */
    size_t qscr_floats;
    sl__cpu_rowops ro;
} pooled_job;

/* Pools rows [r0, r1) of x into hi (mean or max) and lo (min, minmax only). */
static void pool_block(const float *x, int64_t d, int64_t r0, int64_t r1, int64_t pool, float div, float *hi,
                       float *lo)
{
    memcpy(hi, x + r0 * d, (size_t)d * sizeof *hi);
    if (lo)
        memcpy(lo, x + r0 * d, (size_t)d * sizeof *lo);
    for (int64_t r = r0 + 1; r < r1; r++) {
        const float *xr = x + r * d;
        if (pool == 0)
            for (int64_t t = 0; t < d; t++)
                hi[t] += xr[t];
        else
            for (int64_t t = 0; t < d; t++)
                hi[t] = xr[t] > hi[t] ? xr[t] : hi[t];
        if (lo)
            for (int64_t t = 0; t < d; t++)
                lo[t] = xr[t] < lo[t] ? xr[t] : lo[t];
    }
    if (pool == 0)
        for (int64_t t = 0; t < d; t++)
            hi[t] /= div;
}

static void pooled_k_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const pooled_job *j = ud;
    int64_t g = item / j->nkb, c = item % j->nkb, d = j->dm.d, bk = j->p->bk;
    int64_t c1 = min64((c + 1) * bk, j->dm.nk);
    const float *k = (const float *)j->a->in[1].data + g * j->dm.nk * d;
    float *hi = j->kp + item * d, *lo = j->p->pool == 2 ? j->kp + (j->dm.hkv * j->nkb + item) * d : NULL;
    pool_block(k, d, c * bk, c1, j->p->pool, (float)(j->p->pad ? bk : c1 - c * bk), hi, lo);
}

static void pooled_q_item(int64_t h, void *ud, int thread)
{
    const pooled_job *j = ud;
    const sl_score_pooled_params *p = j->p;
    int64_t d = j->dm.d, bq = p->bq, nqb = j->nqb, nkb = j->nkb, g = h / j->dm.group;
    const float *q = (const float *)j->a->in[0].data + h * j->dm.nq * d;
    float *qhi = j->qscr + (size_t)thread * j->qscr_floats, *qlo = qhi + nqb * d;
    for (int64_t r = 0; r < nqb; r++) {
        int64_t r1 = min64((r + 1) * bq, j->dm.nq);
        pool_block(q, d, r * bq, r1, p->pool, (float)(p->pad ? bq : r1 - r * bq), qhi + r * d,
                   p->pool == 2 ? qlo + r * d : NULL);
    }
    float *out = (float *)j->a->out[0].data + h * nqb * nkb;
    const float *khi = j->kp + g * nkb * d, *klo = j->kp + (j->dm.hkv * nkb + g * nkb) * d;
    if (p->pool == 2) {
        /* The bound takes a max per channel: no product form, so plain loops
         * (nqb × nkb × d is small next to the pooling itself). */
        for (int64_t r = 0; r < nqb; r++)
            for (int64_t c = 0; c < nkb; c++) {
                const float *qa = qhi + r * d, *qb = qlo + r * d, *ka = khi + c * d, *kb = klo + c * d;
                float s = 0;
                for (int64_t t = 0; t < d; t++) {
                    float m = qa[t] * ka[t], x = qa[t] * kb[t], y = qb[t] * ka[t], z = qb[t] * kb[t];
                    m = x > m ? x : m;
                    m = y > m ? y : m;
                    m = z > m ? z : m;
                    s += m;
                }
                out[r * nkb + c] = (float)j->dm.scale * s;
            }
    } else if (nqb > 0 && nkb > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nqb, (int)nkb, (int)d, (float)j->dm.scale, qhi,
                    (int)d, khi, (int)d, 0.f, out, (int)nkb);
    for (int64_t r = 0; r < nqb; r++) {
        float *o = out + r * nkb;
        /* key blocks [0, vis) are visible to query block r */
        int64_t vis = nkb;
        if (p->causal) {
            int64_t last_pos = j->dm.offset + min64((r + 1) * bq, j->dm.nq) - 1;
            vis = min64(last_pos / p->bk + 1, nkb);
        }
        if (p->softmax && vis > 0) {
            float m = j->ro.max(o, vis, -INFINITY);
            float sum = j->ro.exp_sum(o, vis, m);
            j->ro.scale(o, vis, 1.f / sum);
        }
        for (int64_t c = vis; c < nkb; c++)
            o[c] = p->softmax ? 0.f : -INFINITY;
    }
}

sl_status sl__cpu_score_pooled(const sl__kargs *a)
{
    const sl_score_pooled_params *p = a->params;
    pooled_job j = {.a = a, .p = p, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale)};
    j.nqb = (j.dm.nq + p->bq - 1) / p->bq;
    j.nkb = (j.dm.nk + p->bk - 1) / p->bk;
    j.kp = a->scratch;
    j.qscr = j.kp + round64((size_t)(2 * j.dm.hkv * j.nkb * j.dm.d));
    j.qscr_floats = round64((size_t)(2 * j.nqb * j.dm.d));
    j.ro = sl__cpu_rowops_get();
    sl_status s = sl__cpu_parallel(a->ctx, j.dm.hkv * j.nkb, pooled_k_item, &j);
    return s ? s : sl__cpu_parallel(a->ctx, j.dm.hq, pooled_q_item, &j);
}

/* ---- score.rows, score.last_q ---- */

typedef struct prob_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    int causal;
    const int32_t *rows;   /* NULL: rows first .. first + n_rows - 1 */
    int64_t first, n_rows, n_tiles;
    float *qscr;           /* per thread PROB_TQ × d */
    sl__cpu_rowops ro;
} prob_job;

static void prob_item(int64_t item, void *ud, int thread)
{
    const prob_job *j = ud;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / j->n_tiles, t0 = (item % j->n_tiles) * PROB_TQ, n = min64(PROB_TQ, j->n_rows - t0);
    const float *q = (const float *)j->a->in[0].data + h * dm->nq * dm->d;
    const float *k = (const float *)j->a->in[1].data + (h / dm->group) * dm->nk * dm->d;
    float *qs = j->qscr + (size_t)thread * PROB_TQ * (size_t)dm->d;
    float *out = (float *)j->a->out[0].data + (h * j->n_rows + t0) * dm->nk;
    int64_t lim[PROB_TQ], end = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t r = j->rows ? j->rows[t0 + i] : j->first + t0 + i;
        memcpy(qs + i * dm->d, q + r * dm->d, (size_t)dm->d * sizeof *qs);
        lim[i] = j->causal ? min64(dm->offset + r + 1, dm->nk) : dm->nk;
        end = lim[i] > end ? lim[i] : end;
    }
    if (end > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)end, (int)dm->d, (float)dm->scale, qs,
                    (int)dm->d, k, (int)dm->d, 0.f, out, (int)dm->nk);
    for (int64_t i = 0; i < n; i++) {
        float *o = out + i * dm->nk;
        if (lim[i] > 0) {
            float m = j->ro.max(o, lim[i], -INFINITY);
            float sum = j->ro.exp_sum(o, lim[i], m);
            j->ro.scale(o, lim[i], 1.f / sum);
        }
        memset(o + lim[i], 0, (size_t)(dm->nk - lim[i]) * sizeof *o);
    }
}

static sl_status cpu_prob_rows(const sl__kargs *a, double scale, int causal, const int32_t *rows, int64_t first,
                               int64_t n_rows)
{
    prob_job j = {.a = a, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale), .causal = causal, .rows = rows,
                  .first = first, .n_rows = n_rows, .qscr = a->scratch, .ro = sl__cpu_rowops_get()};
    j.n_tiles = (n_rows + PROB_TQ - 1) / PROB_TQ;
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.n_tiles, prob_item, &j);
}

sl_status sl__cpu_score_rows(const sl__kargs *a)
{
    const sl_score_rows_params *p = a->params;
    return cpu_prob_rows(a, p->scale, (int)p->causal, a->in[2].data, 0, a->in[2].shape[0]);
}

sl_status sl__cpu_score_last_q(const sl__kargs *a)
{
    const sl_score_last_q_params *p = a->params;
    int64_t nq = a->in[0].shape[1], n = min64(p->last, nq);
    return cpu_prob_rows(a, p->scale, (int)p->causal, NULL, nq - n, n);
}

/* ---- score.exact ---- */

typedef struct exact_job {
    const sl__kargs *a;
    const sl_score_exact_params *p;
    sl__attn_dims dm;
    int64_t nqb, nkb;
    char *scr;             /* per thread: S [bq, nk] floats, then nkb doubles */
    size_t scr_bytes;
    sl__cpu_rowops ro;
} exact_job;

static void exact_item(int64_t item, void *ud, int thread)
{
    const exact_job *j = ud;
    const sl_score_exact_params *p = j->p;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / j->nqb, r = item % j->nqb, i0 = r * p->bq, rows = min64(p->bq, dm->nq - i0), bk = p->bk;
    const float *q = (const float *)j->a->in[0].data + (h * dm->nq + i0) * dm->d;
    const float *k = (const float *)j->a->in[1].data + (h / dm->group) * dm->nk * dm->d;
    float *s = (float *)(j->scr + (size_t)thread * j->scr_bytes);
    double *acc = (double *)((char *)s + round64((size_t)p->bq * (size_t)dm->nk * sizeof(float)));
    int64_t end = p->causal ? min64(dm->offset + i0 + rows, dm->nk) : dm->nk;
    for (int64_t c = 0; c < j->nkb; c++)
        acc[c] = 0;
    if (end > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)end, (int)dm->d, (float)dm->scale, q,
                    (int)dm->d, k, (int)dm->d, 0.f, s, (int)end);
    for (int64_t i = 0; i < rows; i++) {
        float *si = s + i * end;
        int64_t lim = p->causal ? min64(dm->offset + i0 + i + 1, dm->nk) : dm->nk;
        if (lim <= 0)
            continue;
        float m = j->ro.max(si, lim, -INFINITY);
        float sum = j->ro.exp_sum(si, lim, m), inv = 1.f / sum;
        for (int64_t c = 0; c * bk < lim; c++) {
            int64_t j1 = min64((c + 1) * bk, lim);
            if (p->reduce == 0) {
                float bs = 0;
                for (int64_t x = c * bk; x < j1; x++)
                    bs += si[x];
                acc[c] += (double)(bs * inv);
            } else {
                float bm = 0;
                for (int64_t x = c * bk; x < j1; x++)
                    bm = si[x] > bm ? si[x] : bm;
                acc[c] = (double)(bm * inv) > acc[c] ? (double)(bm * inv) : acc[c];
            }
        }
    }
    double tot = 0;
    for (int64_t c = 0; c < j->nkb; c++)
        tot += acc[c];
    float *out = (float *)j->a->out[0].data + (h * j->nqb + r) * j->nkb;
    for (int64_t c = 0; c < j->nkb; c++)
        out[c] = (float)(p->normalize && tot > 0 ? acc[c] / tot : acc[c]);
}

sl_status sl__cpu_score_exact(const sl__kargs *a)
{
    const sl_score_exact_params *p = a->params;
    exact_job j = {.a = a, .p = p, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), .scr = a->scratch,
                   .ro = sl__cpu_rowops_get()};
    j.nqb = (j.dm.nq + p->bq - 1) / p->bq;
    j.nkb = (j.dm.nk + p->bk - 1) / p->bk;
    j.scr_bytes = round64((size_t)p->bq * (size_t)j.dm.nk * sizeof(float)) + round64((size_t)(j.nkb + 1) * sizeof(double));
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.nqb, exact_item, &j);
}

size_t sl__cpu_score_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    int64_t hkv = in[1].shape[0], nq = in[0].shape[1], nk = in[1].shape[1], d = in[0].shape[2];
    size_t nt = (size_t)(n_threads > 0 ? n_threads : 1);
    switch (op) {
    case SL_OP_SCORE_POOLED: {
        const sl_score_pooled_params *p = params;
        int64_t nqb = (nq + p->bq - 1) / p->bq, nkb = (nk + p->bk - 1) / p->bk;
        return (round64((size_t)(2 * hkv * nkb * d)) + nt * round64((size_t)(2 * nqb * d))) * sizeof(float);
    }
    case SL_OP_SCORE_LAST_Q:
    case SL_OP_SCORE_ROWS: return nt * (size_t)PROB_TQ * (size_t)d * sizeof(float);
    case SL_OP_SCORE_EXACT: {
        const sl_score_exact_params *p = params;
        int64_t nkb = (nk + p->bk - 1) / p->bk;
        return nt * (round64((size_t)p->bq * (size_t)nk * sizeof(float)) + round64((size_t)(nkb + 1) * sizeof(double)));
    }
    default: return 0;
    }
}
