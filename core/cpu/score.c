/* cpu/score.c — fast estimators of issue 4: score.pooled (pool every block
 * once, then one small sgemm per head: the estimator whose cost must stay a
 * few percent of dense attention), score.rows / score.last_q (an sgemm per
 * tile of rows, then a row softmax) and score.exact (an sgemm per query
 * block over the keys it sees, then per-row probabilities folded into key
 * blocks). Work items run on sl__cpu_parallel's threads. *
 * score.antidiag (XAttention), score.strided (ProxyAttn) and score.anchor
 * (AnchorAttention): work items of (head, query tile), score tiles by one
 * sgemm each (strided operands through the leading dimension), softmax in
 * float. score.lowbit multiplies the dequantised Q and K with sgemm (the
 * quantised values times their steps are what INT-b tensor cores compute,
 * exactly up to f32 rounding of the sums), then reduces each key block's
 * maxima; score.hash takes its dot products in float64 like ref. */
#include "cpu.h"
#include "parallel.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOWBIT_TQ 64  /* query rows per sgemm of score.lowbit */
#define LOWBIT_KC 256 /* keys per sgemm of score.lowbit */

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
    sl__cpu_vecops vo;
} pooled_job;

/* Pools rows [r0, r1) of x into hi (mean or max) and lo (min, minmax only).
 * The mean's row sums go through the vectorised axpy with a = 1 (1·x is
 * exact, so the same sums in the same order as a plain loop; issue 20,
 * session 5: the scalar loop was most of a mean-pooled estimate). */
static void pool_block(const float *x, int64_t d, int64_t r0, int64_t r1, int64_t pool, float div, float *hi,
                       float *lo, const sl__cpu_vecops *vo)
{
    memcpy(hi, x + r0 * d, (size_t)d * sizeof *hi);
    if (lo)
        memcpy(lo, x + r0 * d, (size_t)d * sizeof *lo);
    for (int64_t r = r0 + 1; r < r1; r++) {
        const float *xr = x + r * d;
        if (pool == 0)
            vo->axpy(hi, xr, d, 1.f);
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
    pool_block(k, d, c * bk, c1, j->p->pool, (float)(j->p->pad ? bk : c1 - c * bk), hi, lo, &j->vo);
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
                   p->pool == 2 ? qlo + r * d : NULL, &j->vo);
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
    j.ro = sl__cpu_rowops_for(a->ctx);
    j.vo = sl__cpu_vecops_for(a->ctx);
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
                  .first = first, .n_rows = n_rows, .qscr = a->scratch, .ro = sl__cpu_rowops_for(a->ctx)};
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
                   .ro = sl__cpu_rowops_for(a->ctx)};
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

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Items flag a failed allocation here; the caller reports it. */
typedef struct xa_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    double scale;
    int64_t n_items_per_head;
    volatile int oom;
} xa_job;

static sl_status finish(const sl__kargs *a, sl_status s, const xa_job *j)
{
    if (s)
        return s;
    if (j->oom)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "%s[cpu]: out of memory", sl_op_info_get(a->op)->name);
    return SL_OK;
}

/* In-place softmax of s[0..n) in float; n >= 1. */
static void softmax_f(float *s, int64_t n)
{
    float m = -INFINITY, z = 0;
    for (int64_t j = 0; j < n; j++)
        m = s[j] > m ? s[j] : m;
    for (int64_t j = 0; j < n; j++)
        z += (s[j] = expf(s[j] - m));
    float inv = 1.f / z;
    for (int64_t j = 0; j < n; j++)
        s[j] *= inv;
}

/* ---- score.antidiag: item (h, group of query blocks) ----
 * One sgemm per group of XA_GROUP_ROWS query super-rows or more (whole
 * blocks), so OpenBLAS packs the keys once per group rather than once per
 * block of B/S rows (issue 20, session 3: 16-row products made the op a
 * tenth of sgemm's rate); rows of a group see different causal extents, the
 * product covers the group's widest one and each row's softmax reads its
 * own. The softmax uses the context's vectorised row operations. */
enum { XA_GROUP_ROWS = 256 };

static int64_t xa_group(const sl_score_antidiag_params *p)
{
    int64_t per = p->block / p->stride;
    per = per > 0 ? per : 1;
    return XA_GROUP_ROWS / per > 1 ? XA_GROUP_ROWS / per : 1;
}

static void antidiag_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    xa_job *j = ud;
    const sl_score_antidiag_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    sl__cpu_rowops ro = sl__cpu_rowops_for(j->a->ctx);
    int64_t S = p->stride, B = p->block, sd = S * dm->d;
    int64_t Mq = cdiv(dm->nq, S), Mk = cdiv(dm->nk, S), Mk_full = dm->nk / S;
    int64_t nkb = j->a->out[0].shape[2], nqb = j->a->out[0].shape[1];
    int64_t G = xa_group(p), groups = cdiv(nqb, G);
    int64_t h = item / groups, r0 = (item % groups) * G, r1 = min64(r0 + G, nqb);
    int64_t i0 = r0 * (B / S), i1 = min64(r1 * (B / S), Mq), rows = i1 - i0;
    const float *qh = (const float *)j->a->in[0].data + h * dm->nq * dm->d;
    const float *kh = (const float *)j->a->in[1].data + (h / dm->group) * dm->nk * dm->d;
    float *out0 = (float *)j->a->out[0].data + (h * nqb + r0) * nkb;
    memset(out0, 0, sizeof *out0 * (size_t)(nkb * (r1 - r0)));
    if (rows <= 0 || Mk == 0)
        return;
    float *qr = malloc(sizeof *qr * (size_t)(rows * sd)), *s = malloc(sizeof *s * (size_t)(rows * Mk));
    if (!qr || !s) {
        j->oom = 1;
        free(qr);
        free(s);
        return;
    }
    /* reversed query super-tokens: slot t of row i holds q[iS + S-1-t] */
    for (int64_t i = 0; i < rows; i++)
        for (int64_t t = 0; t < S; t++) {
            int64_t qi = (i0 + i) * S + S - 1 - t;
            float *dst = qr + i * sd + t * dm->d;
            if (qi < dm->nq)
                memcpy(dst, qh + qi * dm->d, sizeof *dst * (size_t)dm->d);
            else
                memset(dst, 0, sizeof *dst * (size_t)dm->d);
        }
    int64_t vis_max = p->causal ? min64(Mk, (dm->offset + (i1 - 1) * S) / S + 1) : Mk;
    int64_t full = min64(vis_max, Mk_full);
    if (full > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)full, (int)sd, (float)j->scale, qr,
                    (int)sd, kh, (int)sd, 0.f, s, (int)Mk);
    if (vis_max > full) { /* the partial last key super-token */
        int64_t jl = Mk - 1, valid = dm->nk - jl * S;
        for (int64_t i = 0; i < rows; i++) {
            double x = 0;
            for (int64_t t = 0; t < valid; t++)
                for (int64_t c = 0; c < dm->d; c++)
                    x += (double)qr[i * sd + t * dm->d + c] * (double)kh[(jl * S + t) * dm->d + c];
            s[i * Mk + jl] = (float)(j->scale * x);
        }
    }
    for (int64_t i = 0; i < rows; i++) {
        int64_t n_vis = p->causal ? min64(Mk, (dm->offset + (i0 + i) * S) / S + 1) : Mk;
        if (n_vis < 1)
            continue;
        float *row = s + i * Mk;
        float z = ro.exp_sum(row, n_vis, ro.max(row, n_vis, -INFINITY));
        ro.scale(row, n_vis, 1.f / z);
        float *out = out0 + ((i0 + i) / (B / S) - r0) * nkb;
        for (int64_t jj = 0; jj < n_vis; jj++)
            out[(jj * S) / B] += row[jj];
    }
    free(qr);
    free(s);
}

sl_status sl__cpu_score_antidiag(const sl__kargs *a)
{
    const sl_score_antidiag_params *p = a->params;
    xa_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], 0), 0, 0, 0};
    j.scale = p->scale > 0 ? p->scale : 1.0 / (sqrt((double)j.dm.d) * (double)p->stride);
    int64_t n = j.dm.hq * cdiv(a->out[0].shape[1], xa_group(p));
    return finish(a, sl__cpu_parallel(a->ctx, n, antidiag_item, &j), &j);
}

/* ---- score.strided: item (h, query tile r) ---- */

static void strided_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    xa_job *j = ud;
    const sl_score_strided_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t S = p->stride, d = dm->d, Mk = cdiv(dm->nk, S);
    int64_t nqb = j->a->out[0].shape[1], nkb = j->a->out[0].shape[2];
    int64_t h = item / nqb, r = item % nqb;
    float *out = (float *)j->a->out[0].data + (h * nqb + r) * nkb;
    memset(out, 0, sizeof *out * (size_t)nkb);
    /* sampled rows i·S inside [r·bq, (r+1)·bq) */
    int64_t i0 = cdiv(r * p->bq, S), i1 = cdiv(min64((r + 1) * p->bq, dm->nq), S), rows = i1 - i0;
    if (rows <= 0 || Mk == 0)
        return;
    const float *qh = (const float *)j->a->in[0].data + h * dm->nq * d;
    const float *kh = (const float *)j->a->in[1].data + (h / dm->group) * dm->nk * d;
    int64_t vis_max = p->causal ? min64(Mk, (dm->offset + (i1 - 1) * S) / S + 1) : Mk;
    if (vis_max < 1)
        return;
    float *s = malloc(sizeof *s * (size_t)(rows * vis_max));
    if (!s) {
        j->oom = 1;
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)vis_max, (int)d, (float)dm->scale,
                qh + i0 * S * d, (int)(S * d), kh, (int)(S * d), 0.f, s, (int)vis_max);
    for (int64_t i = 0; i < rows; i++) {
        int64_t n_vis = p->causal ? min64(Mk, (dm->offset + (i0 + i) * S) / S + 1) : Mk;
        if (n_vis < 1)
            continue;
        float *row = s + i * vis_max;
        softmax_f(row, n_vis);
        for (int64_t jj = 0; jj < n_vis; jj++) {
            float *cell = out + (jj * S) / p->bk;
            *cell = row[jj] > *cell ? row[jj] : *cell;
        }
    }
    free(s);
}

sl_status sl__cpu_score_strided(const sl__kargs *a)
{
    const sl_score_strided_params *p = a->params;
    xa_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), 0, 0, 0};
    return finish(a, sl__cpu_parallel(a->ctx, j.dm.hq * a->out[0].shape[1], strided_item, &j), &j);
}

/* ---- score.anchor: item (h, big block b) ---- */

static void anchor_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    xa_job *j = ud;
    const sl_score_anchor_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t N = dm->nq, d = dm->d, B = p->block, G = p->block * p->step, nb = j->a->out[0].shape[1];
    int64_t h = item / nb, b = item % nb;
    int64_t r0 = b * G, r1 = min64(r0 + G, N), nt = cdiv(r1 - r0, B);
    int64_t init_end = p->init_cnt * G, local0 = b - p->local_cnt + 1 > 0 ? (b - p->local_cnt + 1) * G : 0;
    int64_t n_init = min64(init_end, local0), n_local = r1 - local0;
    const float *qh = (const float *)j->a->in[0].data + h * N * d;
    const float *kh = (const float *)j->a->in[1].data + (h / dm->group) * N * d;
    uint8_t *out = (uint8_t *)j->a->out[0].data + (h * nb + b) * N;
    memset(out, 0, (size_t)N);
    int64_t m0 = p->overlap ? B : init_end, m1 = min64(p->overlap ? local0 - B : local0, r0);
    if (m0 < 0)
        m0 = 0;
    if (m1 <= m0)
        return; /* nothing to scan: the anchors are not needed */
    int64_t width = n_init + n_local;
    /* rows x width structured scores per query block, then nt x (m1 - m0) scan scores
     * (nt = step can exceed B when blocks are small) */
    int64_t s_len = B * width > nt * (m1 - m0) ? B * width : nt * (m1 - m0);
    float *s = malloc(sizeof *s * (size_t)s_len);
    float *qbar = malloc(sizeof *qbar * (size_t)(nt * d)), *xbar = malloc(sizeof *xbar * (size_t)nt);
    if (!s || !qbar || !xbar) {
        j->oom = 1;
        free(s);
        free(qbar);
        free(xbar);
        return;
    }
    for (int64_t t = 0; t < nt; t++) {
        int64_t i0 = r0 + t * B, rows = min64(B, r1 - i0);
        /* structured scores: initial keys then local keys (up to r1) */
        if (n_init > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n_init, (int)d, (float)dm->scale,
                        qh + i0 * d, (int)d, kh, (int)d, 0.f, s, (int)width);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n_local, (int)d, (float)dm->scale,
                    qh + i0 * d, (int)d, kh + local0 * d, (int)d, 0.f, s + n_init, (int)width);
        double xs = 0;
        for (int64_t i = 0; i < rows; i++) {
            const float *row = s + i * width;
            float mx = -INFINITY;
            for (int64_t c = 0; c < n_init; c++)
                mx = row[c] > mx ? row[c] : mx;
            int64_t lim = i0 + i - local0 + 1; /* local keys up to the row itself */
            for (int64_t c = 0; c < lim; c++)
                mx = row[n_init + c] > mx ? row[n_init + c] : mx;
            xs += mx;
        }
        xbar[t] = (float)(xs / (double)rows);
        for (int64_t c = 0; c < d; c++) {
            double acc = 0;
            for (int64_t i = 0; i < rows; i++)
                acc += qh[(i0 + i) * d + c];
            qbar[t * d + c] = (float)(acc / (double)rows);
        }
    }
    /* the scan: pooled queries against the middle keys */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nt, (int)(m1 - m0), (int)d, (float)dm->scale, qbar,
                (int)d, kh + m0 * d, (int)d, 0.f, s, (int)(m1 - m0));
    float theta = (float)p->theta;
    for (int64_t t = 0; t < nt; t++) {
        const float *row = s + t * (m1 - m0);
        for (int64_t c = 0; c < m1 - m0; c++)
            if (row[c] + theta >= xbar[t])
                out[m0 + c] = 1;
    }
    free(s);
    free(qbar);
    free(xbar);
}

sl_status sl__cpu_score_anchor(const sl__kargs *a)
{
    const sl_score_anchor_params *p = a->params;
    xa_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), 0, 0, 0};
    return finish(a, sl__cpu_parallel(a->ctx, j.dm.hq * a->out[0].shape[1], anchor_item, &j), &j);
}

/* score.lowbit's quantiser (the contract in sparselab.h, in f32). */
static void lowbit_quantise(const float *x, int64_t rows, int64_t d, int64_t group, int bits, float *out)
{
    if (bits >= 16) {
        if (out != x)
            memcpy(out, x, sizeof *x * (size_t)(rows * d));
        return;
    }
    /* in place (out == x) is fine: a group's max is read before its values are written */
    const float qmax = (float)((1 << (bits - 1)) - 1);
    for (int64_t g0 = 0; g0 < rows; g0 += group) {
        int64_t n = (g0 + group < rows ? group : rows - g0) * d;
        const float *xg = x + g0 * d;
        float *og = out + g0 * d;
        float mx = 0;
        for (int64_t i = 0; i < n; i++)
            mx = fmaxf(mx, fabsf(xg[i]));
        float step = mx / qmax;
        if (step == 0.0f)
            step = 1.0f; /* an all-zero group, or one whose step underflows f32 */
        for (int64_t i = 0; i < n; i++)
            og[i] = fminf(fmaxf(roundf(xg[i] / step), -qmax), qmax) * step;
    }
}

/* ks = K - mean_t K per channel (mean: a double sum over tokens, stored as
 * f32); mean = 0 without smoothing. */
static void lowbit_prepare(const float *k, int64_t nk, int64_t d, int smooth, float *ks, float *mean)
{
    for (int64_t c = 0; c < d; c++) {
        double sum = 0;
        for (int64_t t = 0; smooth && t < nk; t++)
            sum += k[t * d + c];
        mean[c] = smooth && nk > 0 ? (float)(sum / (double)nk) : 0.0f;
    }
    for (int64_t t = 0; t < nk; t++)
        for (int64_t c = 0; c < d; c++)
            ks[t * d + c] = k[t * d + c] - mean[c];
}

/* ---- score.lowbit ---- */

typedef struct lowbit_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    float *qq, *kq, *mean, *corr, *s; /* s: LOWBIT_TQ x LOWBIT_KC floats per thread */
    int64_t nqb, nkb; /* nqb: the output's query blocks, from query block qb0 */
    int64_t g0, nr;   /* qq and corr hold rows [g0, g0 + nr): the q groups meeting those blocks */
} lowbit_job;

/* Per kv head: smoothed, quantised K and the mean key. */
static void lowbit_k(int64_t h, void *ud, int thread)
{
    (void)thread;
    const lowbit_job *j = ud;
    const sl_score_lowbit_params *p = j->a->params;
    int64_t nk = j->dm.nk, d = j->dm.d;
    const float *k = (const float *)j->a->in[1].data + h * nk * d;
    /* smoothed into kq, then quantised in place (no second K-sized buffer) */
    lowbit_prepare(k, nk, d, (int)p->smooth_k, j->kq + h * nk * d, j->mean + h * d);
    lowbit_quantise(j->kq + h * nk * d, nk, d, p->k_group, (int)p->bits, j->kq + h * nk * d);
}

/* Per query head: quantised Q and the exact correction q . mean_k. */
static void lowbit_q(int64_t h, void *ud, int thread)
{
    (void)thread;
    const lowbit_job *j = ud;
    const sl_score_lowbit_params *p = j->a->params;
    int64_t nq = j->dm.nq, d = j->dm.d, nr = j->nr;
    const float *q = (const float *)j->a->in[0].data + (h * nq + j->g0) * d, *mean = j->mean + (h / j->dm.group) * d;
    /* g0 is a multiple of q_group: the groups are those of the whole q */
    lowbit_quantise(q, nr, d, p->q_group, (int)p->bits, j->qq + h * nr * d);
    for (int64_t i = 0; i < nr; i++) {
        double c = 0;
        for (int64_t t = 0; t < d; t++)
            c += (double)q[i * d + t] * mean[t];
        j->corr[h * nr + i] = (float)c;
    }
}

/* Item: (query head, query block); tiles of LOWBIT_TQ rows against chunks of
 * LOWBIT_KC keys up to the block's causal limit. */
static void lowbit_block(int64_t item, void *ud, int thread)
{
    const lowbit_job *j = ud;
    const sl_score_lowbit_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / j->nqb, r = p->qb0 + item % j->nqb, d = dm->d;
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
        const float *qq = j->qq + (h * j->nr + i0 - j->g0) * d;
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
                float corr = j->corr[h * j->nr + i - j->g0], sc = (float)dm->scale;
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
    lowbit_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), NULL, NULL, NULL, NULL, NULL,
                    a->out[0].shape[1], a->out[0].shape[2], 0, 0};
    const sl__attn_dims *dm = &j.dm;
    int nt = sl_ctx_threads(a->ctx);
    /* only the q groups that meet query blocks [qb0, qb0 + nqb) are quantised (issue 19: row blocks) */
    int64_t i0 = p->qb0 * p->bq, i1 = (p->qb0 + j.nqb) * p->bq < dm->nq ? (p->qb0 + j.nqb) * p->bq : dm->nq;
    j.g0 = i0 / p->q_group * p->q_group;
    int64_t g1 = (i1 + p->q_group - 1) / p->q_group * p->q_group;
    j.nr = (g1 < dm->nq ? g1 : dm->nq) - j.g0;
    if (j.nr < 0)
        j.nr = 0;
    size_t nqf = (size_t)(dm->hq * j.nr * dm->d), nkf = (size_t)(dm->hkv * dm->nk * dm->d);
    size_t sz[5] = {nqf, nkf, (size_t)(dm->hkv * dm->d), (size_t)(dm->hq * j.nr),
                    (size_t)LOWBIT_TQ * LOWBIT_KC * (size_t)(nt > 0 ? nt : 1)};
    float **ptr[5] = {&j.qq, &j.kq, &j.mean, &j.corr, &j.s};
    sl_status s = SL_OK;
    for (int i = 0; i < 5 && s == SL_OK; i++)
        if (!(*ptr[i] = sl_ctx_alloc(a->ctx, sizeof(float) * (sz[i] ? sz[i] : 1))))
            s = sl_ctx_fail(a->ctx, SL_ENOMEM, "score.lowbit[cpu]: out of memory for %zu bytes", sizeof(float) * sz[i]);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, dm->hkv, lowbit_k, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, dm->hq, lowbit_q, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, dm->hq * j.nqb, lowbit_block, &j);
    for (int i = 0; i < 5; i++)
        if (*ptr[i])
            sl_ctx_dealloc(a->ctx, *ptr[i], sizeof(float) * (sz[i] ? sz[i] : 1));
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
