/* ref/select.c — reference selectors of issue 4 (select.topk, select.topp,
 * select.threshold): each entry's rank in its row is counted by a plain
 * double loop (larger first, ties by lower index), so the order is defined
 * without any sort. */
#include "ref.h"

#include <math.h>

/* Rows of x: [H, C] is H rows, [H, R, C] is H·R rows of C. */
static void row_dims(const sl_tensor *x, int64_t *rows_per_head, int64_t *c)
{
    *c = x->shape[x->ndim - 1];
    *rows_per_head = x->ndim == 3 ? x->shape[1] : 1;
}

/* rank[j] = entries that come before j in the row's order; -inf entries get
 * ranks too (after every finite one) but are never kept. */
static void ranks(const float *x, int64_t c, int64_t *rank)
{
    for (int64_t j = 0; j < c; j++) {
        int64_t n = 0;
        for (int64_t i = 0; i < c; i++)
            n += x[i] > x[j] || (x[i] == x[j] && i < j);
        rank[j] = n;
    }
}

size_t sl__ref_select_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params, (void)n_threads;
    if (op == SL_OP_SELECT_THRESHOLD)
        return 0;
    const sl_tensor *x = &in[0];
    int64_t c = x->ndim ? x->shape[x->ndim - 1] : 1;
    if (op == SL_OP_SELECT_COVER && x->ndim == 3)
        c *= x->shape[1];
    return (size_t)(2 * c + 1) * sizeof(int64_t) + (size_t)(c + 1) * sizeof(double);
}

sl_status sl__ref_select_topk(const sl__kargs *a)
{
    const sl_select_topk_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t rph, c;
    row_dims(x, &rph, &c);
    int64_t H = x->shape[0], *rank = a->scratch;
    const float *xd = x->data;
    uint8_t *keep = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t r = 0; r < rph; r++) {
            const float *row = xd + (h * rph + r) * c;
            int64_t finite = 0;
            for (int64_t j = 0; j < c; j++)
                finite += row[j] != -INFINITY;
            int64_t k = p->k;
            if (a->in[1].buf)
                k = ((const int32_t *)a->in[1].data)[h];
            else if (p->ratio > 0)
                k = (int64_t)ceil(p->ratio * (double)finite - 1e-9);
            ranks(row, c, rank);
            for (int64_t j = 0; j < c; j++)
                keep[(h * rph + r) * c + j] = rank[j] < k && row[j] != -INFINITY;
        }
    return SL_OK;
}

sl_status sl__ref_select_topp(const sl__kargs *a)
{
    const sl_select_topp_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t rph, c;
    row_dims(x, &rph, &c);
    int64_t H = x->shape[0], *rank = a->scratch, *order = rank + c;
    double *w = (double *)(order + c + 1);
    const float *xd = x->data;
    uint8_t *keep = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t r = 0; r < rph; r++) {
            const float *row = xd + (h * rph + r) * c;
            uint8_t *kr = keep + (h * rph + r) * c;
            double pp = a->in[1].buf ? (double)((const float *)a->in[1].data)[h] : p->p;
            double m = -INFINITY;
            for (int64_t j = 0; j < c; j++)
                m = row[j] > m ? row[j] : m;
            for (int64_t j = 0; j < c; j++)
                w[j] = row[j] == -INFINITY ? 0 : p->normalize ? exp((double)row[j] - m) : (double)row[j];
            ranks(row, c, rank);
            for (int64_t j = 0; j < c; j++)
                order[rank[j]] = j;
            double total = 0;
            for (int64_t i = 0; i < c; i++)
                total += w[order[i]];
            for (int64_t j = 0; j < c; j++)
                kr[j] = 0;
            double cum = 0, target = pp * total;
            for (int64_t i = 0; i < c && cum < target; i++) {
                cum += w[order[i]];
                kr[order[i]] = 1;
            }
        }
    return SL_OK;
}

sl_status sl__ref_select_threshold(const sl__kargs *a)
{
    const sl_select_threshold_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t rph, c;
    row_dims(x, &rph, &c);
    int64_t H = x->shape[0];
    const float *xd = x->data;
    uint8_t *keep = a->out[0].data;
    for (int64_t i = 0; i < H * rph; i++) {
        const float *row = xd + i * c;
        double m = -INFINITY;
        for (int64_t j = 0; j < c; j++)
            m = row[j] > m ? row[j] : m;
        double t = p->relative ? p->t * m : p->t;
        for (int64_t j = 0; j < c; j++)
            keep[i * c + j] = row[j] != -INFINITY && (double)row[j] >= t;
    }
    return SL_OK;
}

/* select.cover (issue 20, session 3c): per head, each taking-part entry's
 * place in the order counted by a double loop over the head's entries, the
 * entries placed by it, then the running sum in that order. */
sl_status sl__ref_select_cover(const sl__kargs *a)
{
    const sl_select_cover_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t R = x->ndim == 3 ? x->shape[1] : 1, C = x->shape[x->ndim - 1], m = R * C, H = x->shape[0];
    int64_t *place = a->scratch, *order = place + m;
    const float *xd = x->data;
    uint8_t *keep = a->out[0].data;
    for (int64_t h = 0; h < H; h++) {
        const float *v = xd + h * m;
        uint8_t *kh = keep + h * m;
        if (a->in[1].buf && !((const uint8_t *)a->in[1].data)[h]) {
            for (int64_t f = 0; f < m; f++)
                kh[f] = 0;
            continue;
        }
        int64_t n = 0;
        for (int64_t f = 0; f < m; f++) {
            kh[f] = 0;
            int64_t r = f / C, c = f % C;
            int part = v[f] != -INFINITY && (!p->causal || c <= r + (C - R));
            place[f] = -1;
            if (!part)
                continue;
            n++;
            int64_t before = 0;
            for (int64_t g = 0; g < m; g++) {
                int64_t rg = g / C, cg = g % C;
                if (v[g] == -INFINITY || (p->causal && cg > rg + (C - R)))
                    continue;
                before += (double)v[g] > (double)v[f] || (v[g] == v[f] && g < f);
            }
            place[f] = before;
        }
        for (int64_t f = 0; f < m; f++)
            if (place[f] >= 0)
                order[place[f]] = f;
        double sum = 0;
        int64_t cnt = 0;
        while (cnt < n) {
            sum += (double)v[order[cnt]];
            if (sum > p->limit)
                break;
            cnt++;
        }
        int64_t take = cnt + p->extra < n ? cnt + p->extra : n;
        for (int64_t i = 0; i < take; i++)
            kh[order[i]] = 1;
    }
    if (a->in[2].buf)
        for (int64_t f = 0; f < H * m; f++)
            keep[f] = keep[f] || ((const uint8_t *)a->in[2].data)[f];
    return SL_OK;
}

/* select.row_cover (issue 20, session 4b): per row, the candidate blocks'
 * places in the order counted by a double loop (a block precedes another
 * when its score is larger, or equal with a lower index), then the rule of
 * the contract walked over the places. */
sl_status sl__ref_select_row_cover(const sl__kargs *a)
{
    const sl_select_row_cover_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t R, C;
    row_dims(x, &R, &C);
    int64_t H = x->shape[0], *order = a->scratch;
    double *y = (double *)(order + C + 1);
    for (int64_t h = 0; h < H; h++)
        for (int64_t r = 0; r < R; r++) {
            const float *row = (const float *)x->data + (h * R + r) * C;
            uint8_t *keep = (uint8_t *)a->out[0].data + (h * R + r) * C;
            for (int64_t c = 0; c < C; c++)
                keep[c] = 0;
            int64_t lim = r + (C - R) < C - 1 ? r + (C - R) : C - 1;
            if (lim < 0)
                continue;
            if (p->mode == 0) {
                if (p->tau >= 1) {
                    for (int64_t c = 0; c <= lim; c++)
                        keep[c] = 1;
                    continue;
                }
                double total = 0;
                for (int64_t c = 0; c <= lim; c++)
                    total += (double)row[c];
                keep[0] = keep[lim] = 1;
                double cum = (double)row[0] + (lim > 0 ? (double)row[lim] : 0.0);
                /* candidates 1 .. lim - 1: order[place] = block */
                for (int64_t c = 1; c < lim; c++) {
                    int64_t place = 0;
                    for (int64_t g = 1; g < lim; g++)
                        place += (double)row[g] > (double)row[c] || ((double)row[g] == (double)row[c] && g < c);
                    order[place] = c;
                }
                for (int64_t t = 0; t < lim - 1; t++) {
                    if (!(cum < p->tau * total))
                        break;
                    keep[order[t]] = 1;
                    cum += (double)row[order[t]];
                }
            } else {
                double total = 0;
                for (int64_t c = 0; c < C; c++) {
                    y[c] = c <= r ? (double)row[c] : 0.0;
                    total += y[c];
                }
                double req = total * p->tau;
                /* position 0 holds r, positions 1 .. C - 1 the other blocks in the order */
                order[0] = r;
                for (int64_t c = 0; c < C; c++) {
                    if (c == r)
                        continue;
                    int64_t place = 1;
                    for (int64_t g = 0; g < C; g++)
                        if (g != r)
                            place += y[g] > y[c] || (y[g] == y[c] && g < c);
                    order[place] = c;
                }
                double cum = 0;
                for (int64_t t = 0; t < C; t++) {
                    /* the running sum before position t of [0, y[r], y[order[1]], y[order[2]], ...] */
                    if (t >= 2)
                        cum += t == 2 ? y[r] : y[order[t - 2]];
                    keep[cum < req ? order[t] : 0] = 1;
                }
                for (int64_t c = r + 1; c < C; c++)
                    keep[c] = 0;
                keep[r] = 1;
            }
        }
    return SL_OK;
}
