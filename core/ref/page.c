/* ref/page.c — reference kernels of the page family (decode over a paged KV
 * cache, issue 13; card quest for the bound): plain loops, float64
 * accumulation, the contracts in sparselab.h read literally. */
#include "ref.h"

#include <string.h>

sl_status sl__ref_page_meta(const sl__kargs *a)
{
    const sl_page_meta_params *p = a->params;
    const sl_tensor *k = &a->in[0];
    int64_t h = k->shape[0], n = k->shape[1], d = k->shape[2], np = a->out[0].shape[1];
    const float *x = k->data;
    float *mn = a->out[0].data, *mx = a->out[1].data, *me = a->out[2].data;
    for (int64_t hh = 0; hh < h; hh++)
        for (int64_t pg = 0; pg < np; pg++) {
            int64_t t0 = pg * p->page, t1 = t0 + p->page < n ? t0 + p->page : n;
            for (int64_t c = 0; c < d; c++) {
                double lo = INFINITY, hi = -INFINITY, sum = 0;
                for (int64_t t = t0; t < t1; t++) {
                    double v = x[(hh * n + t) * d + c];
                    lo = v < lo ? v : lo;
                    hi = v > hi ? v : hi;
                    sum += v;
                }
                int64_t o = (hh * np + pg) * d + c;
                mn[o] = (float)lo;
                mx[o] = (float)hi;
                me[o] = (float)(sum / (double)(t1 - t0));
            }
        }
    return SL_OK;
}

sl_status sl__ref_page_bounds(const sl__kargs *a)
{
    const sl_tensor *q = &a->in[0], *mn = &a->in[1];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], hkv = mn->shape[0], np = mn->shape[1];
    const float *qd = q->data, *lo = mn->data, *hi = a->in[2].data;
    float *u = a->out[0].data;
    for (int64_t h = 0; h < hq; h++)
        for (int64_t i = 0; i < r; i++)
            for (int64_t pg = 0; pg < np; pg++) {
                const float *qi = qd + (h * r + i) * d;
                int64_t o = ((h / (hq / hkv)) * np + pg) * d;
                double s = 0;
                for (int64_t c = 0; c < d; c++) {
                    double x = (double)qi[c] * lo[o + c], y = (double)qi[c] * hi[o + c];
                    s += x > y ? x : y;
                }
                u[(h * r + i) * np + pg] = (float)s;
            }
    return SL_OK;
}

/* Rank of page a before page b: forced first (last page, then sinks by
 * index), then higher score, then lower index. */
static int ref_before(int64_t a, int64_t b, const float *s, int64_t np, const sl_page_select_params *p)
{
    int fa = p->last && a == np - 1 ? 2 : a < p->sink ? 1 : 0;
    int fb = p->last && b == np - 1 ? 2 : b < p->sink ? 1 : 0;
    if (fa != fb)
        return fa > fb;
    if (fa == 0 && s[a] != s[b])
        return s[a] > s[b];
    return a < b;
}

sl_status sl__ref_page_select(const sl__kargs *a)
{
    const sl_page_select_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t r = x->shape[1], np = x->shape[2], lists = a->out[0].shape[0], m = a->out[0].shape[2];
    float *agg = a->scratch;
    uint8_t *taken = (uint8_t *)(agg + np);
    const float *sc = x->data;
    int32_t *out = a->out[0].data;
    for (int64_t l = 0; l < lists; l++)
        for (int64_t i = 0; i < r; i++) {
            for (int64_t pg = 0; pg < np; pg++) {
                double s = 0;
                for (int64_t g = 0; g < p->group; g++)
                    s += sc[((l * p->group + g) * r + i) * np + pg];
                agg[pg] = (float)s;
            }
            /* the softmax mass of the row, summed in ranking order */
            double mx = -INFINITY, total = 0, cum = 0;
            for (int64_t pg = 0; pg < np; pg++)
                mx = agg[pg] > mx ? agg[pg] : mx;
            for (int64_t pg = 0; pg < np; pg++)
                taken[pg] = 0;
            for (int64_t e = 0; e < np; e++) {
                int64_t best = -1;
                for (int64_t pg = 0; pg < np; pg++)
                    if (!taken[pg] && (best < 0 || ref_before(pg, best, agg, np, p)))
                        best = pg;
                taken[best] = 1;
                if (agg[best] != -INFINITY)
                    total += exp((double)agg[best] - mx);
            }
            /* m rounds of "the best page not yet taken" (top-p: stop early) */
            for (int64_t pg = 0; pg < np; pg++)
                taken[pg] = 0;
            for (int64_t e = 0; e < m; e++) {
                int64_t best = -1;
                for (int64_t pg = 0; pg < np; pg++)
                    if (!taken[pg] && (best < 0 || ref_before(pg, best, agg, np, p)))
                        best = pg;
                int forced = (p->last && best == np - 1) || best < p->sink;
                if (p->p > 0 && !forced && (agg[best] == -INFINITY || (p->p < 1 && cum >= p->p * total)))
                    break;
                taken[best] = 1;
                if (agg[best] != -INFINITY)
                    cum += exp((double)agg[best] - mx);
            }
            int64_t e = 0;
            for (int64_t pg = 0; pg < np; pg++)
                if (taken[pg])
                    out[(l * r + i) * m + e++] = (int32_t)pg;
            while (e < m)
                out[(l * r + i) * m + e++] = -1;
        }
    return SL_OK;
}

sl_status sl__ref_page_token_scores(const sl__kargs *a)
{
    const sl_page_scores_params *p = a->params;
    const sl_tensor *q = &a->in[0], *k = &a->in[1], *ch = &a->in[2], *pg = &a->in[3];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], hkv = k->shape[0], nk = k->shape[1];
    int64_t n = a->out[0].shape[2], nc = ch->buf ? ch->shape[1] : d;
    double scale = p->scale > 0 ? p->scale : 1.0 / sqrt((double)nc);
    int32_t *cols = a->scratch;
    uint8_t *listed = (uint8_t *)(cols + d);
    float *out = a->out[0].data;
    for (int64_t h = 0; h < hq; h++)
        for (int64_t i = 0; i < r; i++) {
            for (int64_t c = 0; c < nc; c++)
                cols[c] = ch->buf ? ((const int32_t *)ch->data)[(h / (hq / ch->shape[0])) * nc + c] : (int32_t)c;
            memset(listed, pg->buf ? 0 : 1, (size_t)n);
            if (pg->buf) {
                int64_t m = pg->shape[2];
                const int32_t *ids = (const int32_t *)pg->data + ((h / (hq / pg->shape[0])) * r + i) * m;
                for (int64_t e = 0; e < m; e++)
                    for (int64_t j = (int64_t)ids[e] * p->page; ids[e] >= 0 && j < ((int64_t)ids[e] + 1) * p->page && j < n; j++)
                        listed[j] = 1;
            }
            const float *qi = (const float *)q->data + (h * r + i) * d;
            double qlo = INFINITY, qhi = -INFINITY;
            for (int64_t c = 0; c < nc; c++) {
                qlo = qi[cols[c]] < qlo ? qi[cols[c]] : qlo;
                qhi = qi[cols[c]] > qhi ? qi[cols[c]] : qhi;
            }
            double qstep = p->qbits > 0 ? (qhi - qlo) / (double)((1 << p->qbits) - 1) : 0;
            for (int64_t j = 0; j < n; j++) {
                float *o = out + (h * r + i) * n + j;
                if (!listed[j] || (p->causal && j > n - r + i)) {
                    *o = -INFINITY;
                    continue;
                }
                const float *kj = (const float *)k->data + ((h / (hq / hkv)) * nk + j) * d;
                double lo = INFINITY, hi = -INFINITY;
                for (int64_t c = 0; c < nc; c++) {
                    lo = kj[cols[c]] < lo ? kj[cols[c]] : lo;
                    hi = kj[cols[c]] > hi ? kj[cols[c]] : hi;
                }
                double step = p->bits > 0 ? (hi - lo) / (double)((1 << p->bits) - 1) : 0;
                double s = 0;
                for (int64_t c = 0; c < nc; c++) {
                    double kv = kj[cols[c]];
                    if (step > 0)
                        kv = lo + nearbyint((kv - lo) / step) * step;
                    double qv = qi[cols[c]];
                    if (qstep > 0)
                        qv = qlo + nearbyint((qv - qlo) / qstep) * qstep;
                    s += qv * kv;
                }
                *o = (float)(s * scale);
            }
        }
    return SL_OK;
}

sl_status sl__ref_page_attend(const sl__kargs *a)
{
    const sl_page_attn_params *p = a->params;
    const sl_tensor *q = &a->in[0], *k = &a->in[1], *pg = &a->in[3];
    sl__attn_dims g = sl__attn_dims_of(q, k, p->scale);
    int64_t n = p->n > 0 ? p->n : g.nk, lists = pg->shape[0], m = pg->shape[2];
    double *score = a->scratch;
    uint8_t *keep = (uint8_t *)(score + n + g.d);
    const int32_t *ids = pg->data;
    for (int64_t h = 0; h < g.hq; h++) {
        int64_t kvh = h / g.group, list = h / (g.hq / lists);
        const float *kh = (const float *)k->data + kvh * g.nk * g.d;
        const float *vh = (const float *)a->in[2].data + kvh * g.nk * g.d;
        for (int64_t i = 0; i < g.nq; i++) {
            memset(keep, 0, (size_t)n);
            int64_t limit = p->causal ? n - g.nq + i + 1 : n;
            for (int64_t e = 0; e < m; e++) {
                int32_t id = ids[(list * g.nq + i) * m + e];
                if (id < 0)
                    continue;
                for (int64_t j = (int64_t)id * p->page; j < ((int64_t)id + 1) * p->page && j < limit; j++)
                    keep[j] = 1;
            }
            sl__ref_row((const float *)q->data + (h * g.nq + i) * g.d, kh, vh, n, g.d, g.scale, keep, NULL, score,
                        (float *)a->out[0].data + (h * g.nq + i) * g.d, (float *)a->out[1].data + h * g.nq + i);
        }
    }
    return SL_OK;
}

sl_status sl__ref_page_qscores(const sl__kargs *a)
{
    const sl_page_qscores_params *p = a->params;
    const sl_tensor *q = &a->in[0], *kq = &a->in[1], *pg = &a->in[3];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], hkv = kq->shape[0], nk = kq->shape[1];
    int64_t n = a->out[0].shape[2];
    double scale = p->scale > 0 ? p->scale : 1.0 / sqrt((double)d);
    const uint8_t *codes = kq->data;
    const float *ks = a->in[2].data, *qd = q->data;
    float *out = a->out[0].data;
    for (int64_t h = 0; h < hq; h++)
        for (int64_t i = 0; i < r; i++)
            for (int64_t j = 0; j < n; j++) {
                int listed = !pg->buf;
                if (pg->buf) {
                    int64_t m = pg->shape[2];
                    const int32_t *ids = (const int32_t *)pg->data + ((h / (hq / pg->shape[0])) * r + i) * m;
                    for (int64_t e = 0; e < m; e++)
                        listed |= ids[e] >= 0 && ids[e] == j / p->page;
                }
                float *o = out + (h * r + i) * n + j;
                if (!listed || (p->causal && j > n - r + i)) {
                    *o = -INFINITY;
                    continue;
                }
                int64_t g = h / (hq / hkv);
                double lo = ks[(g * nk + j) * 2], step = ks[(g * nk + j) * 2 + 1], s = 0;
                for (int64_t c = 0; c < d; c++)
                    s += (double)qd[(h * r + i) * d + c] * (lo + (double)codes[(g * nk + j) * d + c] * step);
                *o = (float)(s * scale);
            }
    return SL_OK;
}

/* The value a b-bit code of channel ch stands for (sparselab.h, page.attend_q):
 * symmetric (c - 2^(b-1)) . scale, or with a zero point c . scale + zero. */
static double ref_code_value(const uint8_t *row, int64_t ch, int64_t bits, double scale, const float *zero)
{
    double c = bits == 8 ? (double)row[ch] : (double)(ch % 2 == 0 ? (row[ch / 2] & 0x0F) : (row[ch / 2] >> 4));
    if (zero)
        return c * scale + (double)*zero;
    return (c - (bits == 8 ? 128.0 : 8.0)) * scale;
}

sl_status sl__ref_page_attend_q(const sl__kargs *a)
{
    const sl_page_attnq_params *p = a->params;
    const sl_tensor *q = &a->in[0], *kq = &a->in[1], *v = &a->in[3], *pg = &a->in[4];
    int64_t hq = q->shape[0], r = q->shape[1], d = q->shape[2], hkv = kq->shape[0], nk = kq->shape[1];
    int64_t n = p->n > 0 ? p->n : nk, np = (nk + p->page - 1) / p->page, lists = pg->shape[0], m = pg->shape[2];
    int64_t dk = kq->shape[2], quant_v = v->dtype == SL_U8, dv = v->shape[2];
    double scale = p->scale > 0 ? p->scale : 1.0 / sqrt((double)d);
    const float *ks = a->in[2].data, *vs = a->in[5].data, *kz = a->in[6].data, *vz = a->in[7].data;
    double *score = a->scratch;
    for (int64_t h = 0; h < hq; h++) {
        int64_t g = h / (hq / hkv), list = h / (hq / lists);
        for (int64_t i = 0; i < r; i++) {
            const float *qi = (const float *)q->data + (h * r + i) * d;
            const int32_t *ids = (const int32_t *)pg->data + (list * r + i) * m;
            int64_t limit = p->causal ? n - r + i + 1 : n;
            double mx = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                int listed = 0;
                for (int64_t e = 0; e < m; e++)
                    listed |= ids[e] >= 0 && ids[e] == j / p->page;
                score[j] = -INFINITY;
                if (!listed || j >= limit)
                    continue;
                const uint8_t *kr = (const uint8_t *)kq->data + (g * nk + j) * dk;
                double dot = 0;
                for (int64_t c = 0; c < d; c++)
                {
                    int64_t at = (g * np + j / p->page) * d + c;
                    dot += (double)qi[c] * ref_code_value(kr, c, p->kbits, (double)ks[at], kz ? kz + at : NULL);
                }
                score[j] = dot * scale;
                mx = score[j] > mx ? score[j] : mx;
            }
            float *o = (float *)a->out[0].data + (h * r + i) * d, *lse = (float *)a->out[1].data + h * r + i;
            if (mx == -INFINITY) {
                for (int64_t c = 0; c < d; c++)
                    o[c] = 0;
                *lse = -INFINITY;
                continue;
            }
            double sum = 0;
            for (int64_t j = 0; j < n; j++)
                sum += score[j] == -INFINITY ? 0 : exp(score[j] - mx);
            for (int64_t c = 0; c < d; c++) {
                double acc = 0;
                for (int64_t j = 0; j < n; j++) {
                    if (score[j] == -INFINITY)
                        continue;
                    double val;
                    if (quant_v)
                        val = ref_code_value((const uint8_t *)v->data + (g * nk + j) * dv, c, p->vbits,
                                             (double)vs[(g * np + j / p->page) * d + c],
                                             vz ? vz + (g * np + j / p->page) * d + c : NULL);
                    else
                        val = (double)((const float *)v->data)[(g * nk + j) * d + c];
                    acc += exp(score[j] - mx) * val;
                }
                o[c] = (float)(acc / sum);
            }
            *lse = (float)(mx + log(sum));
        }
    }
    return SL_OK;
}

size_t sl__ref_page_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)n_threads;
    if (op == SL_OP_PAGE_SELECT)
        return (sizeof(float) + 1) * (size_t)in[0].shape[2];
    if (op == SL_OP_PAGE_TOKEN_SCORES) {
        const sl_page_scores_params *p = params;
        int64_t n = p->n > 0 ? p->n : in[1].shape[1];
        return sizeof(int32_t) * (size_t)in[0].shape[2] + (size_t)n;
    }
    if (op == SL_OP_PAGE_ATTEND_Q) {
        const sl_page_attnq_params *p = params;
        return sizeof(double) * (size_t)(p->n > 0 ? p->n : in[1].shape[1]);
    }
    if (op == SL_OP_PAGE_ATTEND) {
        const sl_page_attn_params *p = params;
        int64_t n = p->n > 0 ? p->n : in[1].shape[1];
        return sizeof(double) * (size_t)(n + in[0].shape[2]) + (size_t)n;
    }
    return 0;
}
