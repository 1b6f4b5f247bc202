/* cpu/page.c — the page family on threads (decode over a paged KV cache,
 * issue 13). page.meta: one item per (head, page); page.bounds: one item per
 * (head, row); page.select: one item per (list, row), a sort of the row's
 * pages by the rank ref defines; page.attend: split-K — one item per (list,
 * row, chunk of `split` list entries) runs an online softmax of every query
 * head sharing the list over the chunk's pages (each K/V row read once for
 * the whole GQA group), then one item per (list, row) merges the chunks'
 * partials through their log-sum-exps. */
#include "cpu.h"
#include "deqops.h"
#include "parallel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- page.meta ---- */

static void meta_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_page_meta_params *p = a->params;
    const sl_tensor *k = &a->in[0];
    int64_t n = k->shape[1], d = k->shape[2], np = a->out[0].shape[1];
    int64_t h = item / np, pg = item % np;
    int64_t t0 = pg * p->page, t1 = t0 + p->page < n ? t0 + p->page : n;
    const float *x = (const float *)k->data + (h * n + t0) * d;
    float *mn = (float *)a->out[0].data + item * d, *mx = (float *)a->out[1].data + item * d,
          *me = (float *)a->out[2].data + item * d;
    double *sum = (double *)a->scratch + (size_t)thread * (size_t)d;
    for (int64_t c = 0; c < d; c++) {
        mn[c] = mx[c] = x[c];
        sum[c] = x[c];
    }
    for (int64_t t = 1; t < t1 - t0; t++) {
        const float *row = x + t * d;
        for (int64_t c = 0; c < d; c++) {
            mn[c] = row[c] < mn[c] ? row[c] : mn[c];
            mx[c] = row[c] > mx[c] ? row[c] : mx[c];
            sum[c] += row[c];
        }
    }
    for (int64_t c = 0; c < d; c++)
        me[c] = (float)(sum[c] / (double)(t1 - t0));
}

sl_status sl__cpu_page_meta(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->out[0].shape[0] * a->out[0].shape[1], meta_item, (void *)a);
}

/* ---- page.bounds ---- */

static void bounds_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_tensor *q = &a->in[0], *mn = &a->in[1];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], hkv = mn->shape[0], np = mn->shape[1];
    int64_t h = item / r;
    const float *qi = (const float *)q->data + item * d;
    const float *lo = (const float *)mn->data + (h / (hq / hkv)) * np * d;
    const float *hi = (const float *)a->in[2].data + (h / (hq / hkv)) * np * d;
    float *u = (float *)a->out[0].data + item * np;
    for (int64_t pg = 0; pg < np; pg++) {
        const float *l = lo + pg * d, *m = hi + pg * d;
        double s = 0;
        for (int64_t c = 0; c < d; c++) {
            float x = qi[c] * l[c], y = qi[c] * m[c];
            s += x > y ? x : y;
        }
        u[pg] = (float)s;
    }
}

sl_status sl__cpu_page_bounds(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * a->in[0].shape[1], bounds_item, (void *)a);
}

/* ---- page.select ---- */

typedef struct ranked {
    int prio;   /* 2: forced last page, 1: forced sink, 0: by score */
    float s;
    int32_t i;
} ranked;

static int ranked_cmp(const void *pa, const void *pb)
{
    const ranked *x = pa, *y = pb;
    if (x->prio != y->prio)
        return x->prio > y->prio ? -1 : 1;
    if (x->prio == 0 && x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

static int int_cmp(const void *pa, const void *pb)
{
    int32_t x = *(const int32_t *)pa, y = *(const int32_t *)pb;
    return x < y ? -1 : x > y;
}

static void select_item(int64_t item, void *ud, int thread)
{
    const sl__kargs *a = ud;
    const sl_page_select_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t r = x->shape[1], np = x->shape[2], m = a->out[0].shape[2];
    int64_t l = item / r, i = item % r;
    ranked *e = (ranked *)a->scratch + (size_t)thread * (size_t)np;
    const float *sc = x->data;
    for (int64_t pg = 0; pg < np; pg++) {
        double s = 0;
        for (int64_t g = 0; g < p->group; g++)
            s += sc[((l * p->group + g) * r + i) * np + pg];
        e[pg] = (ranked){p->last && pg == np - 1 ? 2 : pg < p->sink ? 1 : 0, (float)s, (int32_t)pg};
    }
    qsort(e, (size_t)np, sizeof *e, ranked_cmp);
    int32_t *out = (int32_t *)a->out[0].data + item * m;
    int64_t taken = m;
    if (p->p > 0) {
        /* top-p: the softmax mass in ranking order, as ref sums it */
        double mx = -INFINITY, total = 0, cum = 0;
        for (int64_t t = 0; t < np; t++)
            mx = e[t].s > mx ? e[t].s : mx;
        for (int64_t t = 0; t < np; t++)
            if (e[t].s != -INFINITY)
                total += exp((double)e[t].s - mx);
        for (taken = 0; taken < m; taken++) {
            const ranked *en = &e[taken];
            if (en->prio == 0 && (en->s == -INFINITY || (p->p < 1 && cum >= p->p * total)))
                break;
            if (en->s != -INFINITY)
                cum += exp((double)en->s - mx);
        }
    }
    for (int64_t t = 0; t < taken; t++)
        out[t] = e[t].i;
    qsort(out, (size_t)taken, sizeof *out, int_cmp);
    for (int64_t t = taken; t < m; t++)
        out[t] = -1;
}

/* ---- page.token_scores ---- */

/* Per-thread scratch: the channel list (d i32) and a flag per key, rounded
 * up so that every thread's channel list stays aligned. */
static size_t token_scores_stride(int64_t d, int64_t n)
{
    return ((sizeof(int32_t) * (size_t)d + (size_t)n + 7) & ~(size_t)7) + sizeof(double) * (size_t)d;
}

static void token_scores_item(int64_t item, void *ud, int thread)
{
    const sl__kargs *a = ud;
    const sl_page_scores_params *p = a->params;
    const sl_tensor *q = &a->in[0], *k = &a->in[1], *ch = &a->in[2], *pg = &a->in[3];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], hkv = k->shape[0], nk = k->shape[1];
    int64_t n = a->out[0].shape[2], nc = ch->buf ? ch->shape[1] : d;
    int64_t h = item / r, i = item % r;
    float scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)nc));
    int32_t *cols = (int32_t *)((char *)a->scratch + (size_t)thread * token_scores_stride(d, n));
    uint8_t *listed = (uint8_t *)(cols + d);
    for (int64_t c = 0; c < nc; c++)
        cols[c] = ch->buf ? ((const int32_t *)ch->data)[(h / (hq / ch->shape[0])) * nc + c] : (int32_t)c;
    memset(listed, pg->buf ? 0 : 1, (size_t)n);
    if (pg->buf) {
        int64_t m = pg->shape[2];
        const int32_t *ids = (const int32_t *)pg->data + ((h / (hq / pg->shape[0])) * r + i) * m;
        for (int64_t e = 0; e < m && ids[e] >= 0; e++) {
            int64_t t0 = (int64_t)ids[e] * p->page, t1 = t0 + p->page < n ? t0 + p->page : n;
            memset(listed + t0, 1, (size_t)(t1 - t0));
        }
    }
    const float *qi = (const float *)q->data + item * d;
    const float *kh = (const float *)k->data + (h / (hq / hkv)) * nk * d;
    float *out = (float *)a->out[0].data + item * n;
    int64_t limit = p->causal ? n - r + i + 1 : n;
    /* qbits: the row's channels quantised once (asymmetric min/max), kept as doubles past cols and listed */
    double *qv = (double *)((char *)cols + token_scores_stride(d, n) - sizeof(double) * (size_t)d);
    if (p->qbits > 0) {
        double qlo = INFINITY, qhi = -INFINITY;
        for (int64_t c = 0; c < nc; c++) {
            qlo = qi[cols[c]] < qlo ? qi[cols[c]] : qlo;
            qhi = qi[cols[c]] > qhi ? qi[cols[c]] : qhi;
        }
        double qstep = (qhi - qlo) / (double)((1 << p->qbits) - 1);
        for (int64_t c = 0; c < nc; c++)
            qv[c] = qstep > 0 ? qlo + nearbyint((qi[cols[c]] - qlo) / qstep) * qstep : qi[cols[c]];
    } else
        for (int64_t c = 0; c < nc; c++)
            qv[c] = qi[cols[c]];
    for (int64_t j = 0; j < n; j++) {
        if (!listed[j] || j >= limit) {
            out[j] = -INFINITY;
            continue;
        }
        const float *kj = kh + j * d;
        double s = 0;
        if (p->bits > 0 || p->qbits > 0) {
            double lo = INFINITY, hi = -INFINITY;
            for (int64_t c = 0; c < nc; c++) {
                lo = kj[cols[c]] < lo ? kj[cols[c]] : lo;
                hi = kj[cols[c]] > hi ? kj[cols[c]] : hi;
            }
            double step = p->bits > 0 ? (hi - lo) / (double)((1 << p->bits) - 1) : 0;
            for (int64_t c = 0; c < nc; c++) {
                double kv = kj[cols[c]];
                if (step > 0)
                    kv = lo + nearbyint((kv - lo) / step) * step;
                s += qv[c] * kv;
            }
        } else
            for (int64_t c = 0; c < nc; c++)
                s += (double)qi[cols[c]] * kj[cols[c]];
        out[j] = (float)s * scale;
    }
}

sl_status sl__cpu_page_token_scores(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * a->in[0].shape[1], token_scores_item, (void *)a);
}

sl_status sl__cpu_page_select(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->out[0].shape[0] * a->out[0].shape[1], select_item, (void *)a);
}

/* ---- page.attend and page.attend_q ---- */

/* The geometry of one page.attend(_q) call: lists of m entries split into
 * chunks of `per` entries; gl query heads per list. */
typedef struct attend_plan {
    int64_t n, lists, gl, m, per, chunks;
    size_t thread_floats;   /* qs [gl, d], s [gl, P], m and l [gl], acc [gl, d], (quantised) k and v pages [P, d] */
} attend_plan;

static attend_plan plan_for(int64_t page, int64_t n, int64_t split, const sl_tensor *q, int64_t nk,
                            const sl_tensor *pages, int quant, int n_threads)
{
    attend_plan pl;
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2];
    pl.n = n > 0 ? n : nk;
    pl.lists = pages->shape[0];
    pl.gl = hq / pl.lists;
    pl.m = pages->shape[2];
    if (split > 0)
        pl.per = split;
    else {
        /* enough items for every thread (4 each), chunks of at least 4 pages */
        int64_t items = pl.lists * r, want = (4 * (int64_t)n_threads + items - 1) / items;
        pl.per = want > 1 ? (pl.m + want - 1) / want : pl.m;
        pl.per = pl.per < 4 ? 4 : pl.per;
    }
    if (pl.per > pl.m)
        pl.per = pl.m > 0 ? pl.m : 1;
    pl.chunks = pl.m > 0 ? (pl.m + pl.per - 1) / pl.per : 1;
    pl.thread_floats = (size_t)(pl.gl * d * 2 + pl.gl * page + 2 * pl.gl) + (quant ? (size_t)(2 * page * d) : 0);
    return pl;
}

static attend_plan plan_of(const sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    if (op == SL_OP_PAGE_ATTEND_Q) {
        const sl_page_attnq_params *p = params;
        return plan_for(p->page, p->n, p->split, &in[0], in[1].shape[1], &in[4], 1, n_threads);
    }
    const sl_page_attn_params *p = params;
    return plan_for(p->page, p->n, p->split, &in[0], in[1].shape[1], &in[3], 0, n_threads);
}

/* One call's operands: f32 K/V (page.attend) or codes and per-page scales
 * (page.attend_q; bits 0 means that side is f32). */
typedef struct attend_job {
    const sl__kargs *a;
    attend_plan pl;
    sl__cpu_vecops vo;
    sl__cpu_deqops dq;    /* page.attend_q: codes -> f32 rows (AVX-512 / AVX2 / portable) */
    const float *q, *k, *v, *ks, *vs, *kz, *vz;   /* kz / vz: zero points (asymmetric codes) or NULL */
    const uint8_t *kq, *vq;
    const int32_t *pages;
    int64_t hq, hkv, nq, nk, d, P, kbits, vbits, dk, dv;
    int causal;
    float scale;
    float *partial_o;   /* [lists, r, chunks, gl, d] */
    float *partial_l;   /* [lists, r, chunks, gl] */
    float *work;        /* per thread thread_floats */
} attend_job;

static void attend_chunk(int64_t item, void *ud, int thread)
{
    const attend_job *j = ud;
    const attend_plan *pl = &j->pl;
    int64_t d = j->d, gl = pl->gl, P = j->P, nq = j->nq;
    int64_t c = item % pl->chunks, row = item / pl->chunks, i = row % nq, l = row / nq;
    int64_t h0 = l * gl, kvh = h0 / (j->hq / j->hkv), np = (j->nk + P - 1) / P;
    float *qs = j->work + (size_t)thread * pl->thread_floats, *s = qs + gl * d, *mx = s + gl * P, *sum = mx + gl,
          *acc = sum + gl, *kbuf = acc + gl * d, *vbuf = kbuf + P * d;
    for (int64_t r = 0; r < gl; r++) {
        const float *qr = j->q + ((h0 + r) * nq + i) * d;
        for (int64_t t = 0; t < d; t++)
            qs[r * d + t] = qr[t] * j->scale;
        mx[r] = -INFINITY;
        sum[r] = 0;
    }
    memset(acc, 0, sizeof *acc * (size_t)(gl * d));
    const float *kh = j->kbits ? NULL : j->k + kvh * j->nk * d;
    const float *vh = j->vbits ? NULL : j->v + kvh * j->nk * d;
    const int32_t *ids = j->pages + (l * nq + i) * pl->m;
    int64_t limit = j->causal ? pl->n - nq + i + 1 : pl->n;
    int64_t e1 = (c + 1) * pl->per < pl->m ? (c + 1) * pl->per : pl->m;
    for (int64_t e = c * pl->per; e < e1; e++) {
        if (ids[e] < 0)
            continue;
        int64_t t0 = (int64_t)ids[e] * P, t1 = t0 + P < limit ? t0 + P : limit;
        int64_t nc = t1 - t0;
        if (nc <= 0)
            continue;
        const float *kp = kh ? kh + t0 * d : kbuf, *vp = vh ? vh + t0 * d : vbuf;
        int64_t at = (kvh * np + ids[e]) * d;
        if (!kh)
            j->dq.rows(j->kq + (kvh * j->nk + t0) * j->dk, j->dk, nc, (int)j->kbits, j->ks + at, j->kz ? j->kz + at : NULL,
                       kbuf, d);
        if (!vh)
            j->dq.rows(j->vq + (kvh * j->nk + t0) * j->dv, j->dv, nc, (int)j->vbits, j->vs + at, j->vz ? j->vz + at : NULL,
                       vbuf, d);
        for (int64_t t = 0; t < nc; t++)
            j->vo.dots(qs, gl, d, kp + t * d, s + t, P);
        for (int64_t r = 0; r < gl; r++) {
            float *sr = s + r * P, m_new = mx[r];
            for (int64_t t = 0; t < nc; t++)
                m_new = sr[t] > m_new ? sr[t] : m_new;
            float corr = mx[r] == -INFINITY ? 0.0f : expf(mx[r] - m_new);
            if (corr != 1.0f) {
                for (int64_t t = 0; t < d; t++)
                    acc[r * d + t] *= corr;
                sum[r] *= corr;
            }
            for (int64_t t = 0; t < nc; t++) {
                sr[t] = expf(sr[t] - m_new);
                sum[r] += sr[t];
            }
            mx[r] = m_new;
        }
        for (int64_t t = 0; t < nc; t++)
            j->vo.axpys(acc, gl, d, vp + t * d, s + t, P);
    }
    for (int64_t r = 0; r < gl; r++) {
        size_t slot = (size_t)((row * pl->chunks + c) * gl + r);
        float *po = j->partial_o + slot * (size_t)d;
        if (sum[r] > 0 || isnan(sum[r])) {  /* NaN: a non-finite key, reported by the family */
            for (int64_t t = 0; t < d; t++)
                po[t] = acc[r * d + t] / sum[r];
            j->partial_l[slot] = mx[r] + logf(sum[r]);
        } else {
            memset(po, 0, sizeof *po * (size_t)d);
            j->partial_l[slot] = -INFINITY;
        }
    }
}

/* Merges the chunks of one (list, row) for each of its heads. */
static void attend_merge(int64_t row, void *ud, int thread)
{
    (void)thread;
    const attend_job *j = ud;
    const sl__kargs *a = j->a;
    const attend_plan *pl = &j->pl;
    int64_t d = j->d, nq = j->nq, gl = pl->gl;
    int64_t i = row % nq, l = row / nq;
    for (int64_t r = 0; r < gl; r++) {
        int64_t h = l * gl + r;
        float *o = (float *)a->out[0].data + (h * nq + i) * d, *lse = (float *)a->out[1].data + h * nq + i;
        float m = -INFINITY;
        for (int64_t c = 0; c < pl->chunks; c++) {
            float x = j->partial_l[(row * pl->chunks + c) * gl + r];
            m = x > m || isnan(x) ? x : m;
            if (isnan(x))
                break;
        }
        if (isnan(m)) {
            for (int64_t t = 0; t < d; t++)
                o[t] = NAN;
            *lse = NAN;
            continue;
        }
        memset(o, 0, sizeof *o * (size_t)d);
        if (m == -INFINITY) {
            *lse = -INFINITY;
            continue;
        }
        double wsum = 0;
        for (int64_t c = 0; c < pl->chunks; c++) {
            size_t slot = (size_t)((row * pl->chunks + c) * gl + r);
            float x = j->partial_l[slot];
            if (x == -INFINITY)
                continue;
            float w = expf(x - m);
            wsum += w;
            j->vo.axpy(o, j->partial_o + slot * (size_t)d, d, w);
        }
        for (int64_t t = 0; t < d; t++)
            o[t] = (float)(o[t] / wsum);
        *lse = m + (float)log(wsum);
    }
}

static sl_status run_attend(attend_job *j)
{
    const sl__kargs *a = j->a;
    int64_t rows = j->pl.lists * j->nq;
    size_t slots = (size_t)(rows * j->pl.chunks * j->pl.gl);
    j->partial_o = a->scratch;
    j->partial_l = j->partial_o + slots * (size_t)j->d;
    j->work = j->partial_l + slots;
    sl_status s = sl__cpu_parallel(a->ctx, rows * j->pl.chunks, attend_chunk, j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, rows, attend_merge, j);
    return s;
}

sl_status sl__cpu_page_attend(const sl__kargs *a)
{
    const sl_page_attn_params *p = a->params;
    sl__attn_dims g = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    attend_job j = {.a = a, .pl = plan_of(SL_OP_PAGE_ATTEND, p, a->in, sl_ctx_threads(a->ctx)),
                    .vo = sl__cpu_vecops_for(a->ctx), .q = a->in[0].data, .k = a->in[1].data, .v = a->in[2].data,
                    .pages = a->in[3].data, .hq = g.hq, .hkv = g.hkv, .nq = g.nq, .nk = g.nk, .d = g.d,
                    .P = p->page, .causal = (int)p->causal, .scale = (float)g.scale};
    return run_attend(&j);
}

sl_status sl__cpu_page_attend_q(const sl__kargs *a)
{
    const sl_page_attnq_params *p = a->params;
    const sl_tensor *q = &a->in[0], *kq = &a->in[1], *v = &a->in[3];
    int quant_v = v->dtype == SL_U8;
    attend_job j = {.a = a, .pl = plan_of(SL_OP_PAGE_ATTEND_Q, p, a->in, sl_ctx_threads(a->ctx)),
                    .vo = sl__cpu_vecops_for(a->ctx), .dq = sl__cpu_deqops_for(a->ctx), .q = q->data, .kq = kq->data, .ks = a->in[2].data,
                    .v = quant_v ? NULL : v->data, .vq = quant_v ? v->data : NULL, .vs = a->in[5].data,
                    .kz = a->in[6].buf ? a->in[6].data : NULL, .vz = a->in[7].buf ? a->in[7].data : NULL,
                    .pages = a->in[4].data, .hq = q->shape[0], .hkv = kq->shape[0], .nq = q->shape[1],
                    .nk = kq->shape[1], .d = q->shape[2], .P = p->page, .kbits = p->kbits,
                    .vbits = quant_v ? p->vbits : 0, .dk = kq->shape[2], .dv = v->shape[2], .causal = (int)p->causal,
                    .scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)q->shape[2]))};
    return run_attend(&j);
}

/* ---- page.qscores ---- */

static void qscores_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_page_qscores_params *p = a->params;
    const sl_tensor *q = &a->in[0], *kq = &a->in[1], *pg = &a->in[3];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], hkv = kq->shape[0], nk = kq->shape[1];
    int64_t n = a->out[0].shape[2], h = item / r, i = item % r, g = h / (hq / hkv);
    float scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)d));
    const float *qi = (const float *)q->data + item * d;
    const uint8_t *codes = (const uint8_t *)kq->data + g * nk * d;
    const float *ks = (const float *)a->in[2].data + g * nk * 2;
    float *out = (float *)a->out[0].data + item * n;
    double qsum = 0;
    for (int64_t c = 0; c < d; c++)
        qsum += qi[c];
    int64_t limit = p->causal ? n - r + i + 1 : n;
    const int32_t *ids = NULL;
    int64_t m = 0;
    if (pg->buf) {
        m = pg->shape[2];
        ids = (const int32_t *)pg->data + ((h / (hq / pg->shape[0])) * r + i) * m;
    }
    for (int64_t j = 0; j < n; j++)
        out[j] = -INFINITY;
    /* visit the listed keys (all keys without lists): q.(lo + code.step) = lo.sum(q) + step.q.code */
    for (int64_t e = 0; e < (ids ? m : 1); e++) {
        int64_t t0 = ids ? (int64_t)ids[e] * p->page : 0, t1 = ids ? t0 + p->page : n;
        if (ids && ids[e] < 0)
            continue;
        t1 = t1 < limit ? t1 : limit;
        for (int64_t j = t0; j < t1; j++) {
            const uint8_t *cj = codes + j * d;
            double dot = 0;
            for (int64_t c = 0; c < d; c++)
                dot += qi[c] * (float)cj[c];
            out[j] = (float)((double)ks[j * 2] * qsum + (double)ks[j * 2 + 1] * dot) * scale;
        }
    }
}

sl_status sl__cpu_page_qscores(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * a->in[0].shape[1], qscores_item, (void *)a);
}

size_t sl__cpu_page_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    switch (op) {
    case SL_OP_PAGE_META: return sizeof(double) * (size_t)in[0].shape[2] * (size_t)n_threads;
    case SL_OP_PAGE_SELECT: return sizeof(ranked) * (size_t)in[0].shape[2] * (size_t)n_threads;
    case SL_OP_PAGE_TOKEN_SCORES: {
        const sl_page_scores_params *p = params;
        int64_t n = p->n > 0 ? p->n : in[1].shape[1];
        return token_scores_stride(in[0].shape[2], n) * (size_t)n_threads;
    }
    case SL_OP_PAGE_ATTEND:
    case SL_OP_PAGE_ATTEND_Q: {
        attend_plan pl = plan_of(op, params, in, n_threads);
        size_t slots = (size_t)(pl.lists * in[0].shape[1] * pl.chunks * pl.gl);
        return sizeof(float) * (slots * (size_t)(in[0].shape[2] + 1) + pl.thread_floats * (size_t)n_threads);
    }
    default: return 0;
    }
}
