/* ref/sparse.c — reference executors over gathered keys and chosen rows
 * (attn.token_sparse, attn.vs_mixed, attn.rows) and attn.lse_merge: each row
 * builds its explicit keep list and runs the float64 row kernel of attn.c. */
#include "ref.h"

#include <math.h>
#include <string.h>

/* Marks the keys of index-list entry e of list head lh. */
static void keep_list(const sl_tensor *rp_t, const sl_tensor *col_t, int64_t lh, int64_t e, uint8_t *keep)
{
    int64_t n_e = rp_t->shape[1] - 1;
    const int32_t *rp = (const int32_t *)rp_t->data + lh * (n_e + 1), *col = col_t->data;
    for (int32_t i = rp[e]; i < rp[e + 1]; i++)
        keep[col[i]] = 1;
}

/* The options of output row (h, r) from the optional inputs at slot first:
 * the bias row of query row qr, the state of output row r. */
static sl__ref_row_opts row_opts(const sl__kargs *a, int first, const sl__attn_dims *dm, int64_t h, int64_t qr,
                                 int64_t r, int64_t n_out)
{
    sl__ref_row_opts o = {NULL, NULL, 0, 0, 0};
    const sl_tensor *bias = &a->in[first], *so = &a->in[first + 1], *sl = &a->in[first + 2];
    if (bias->buf)
        o.bias = (const float *)bias->data + ((bias->shape[0] == 1 ? 0 : h) * dm->nq + qr) * dm->nk;
    if (so->buf) {
        o.state_o = (const float *)so->data + (h * n_out + r) * dm->d;
        o.state_lse = ((const float *)sl->data)[h * n_out + r];
    }
    return o;
}

static sl_status interrupted(const sl__kargs *a)
{
    return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[ref]: interrupted", sl_op_info_get(a->op)->name);
}

/* attn.token_sparse and attn.vs_mixed: every query row of every head. */
static sl_status ref_gathered(const sl__kargs *a, double scale, int64_t rows_per_entry, int i_idx, int first,
                              int64_t bq, int64_t bk)
{
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    float *o = a->out[0].data, *lse = a->out[1].data;
    uint8_t *keep = a->scratch;
    double *score = (double *)((char *)a->scratch + sl__ref_keep_bytes(dm.nk));
    int64_t lists_per = dm.hq / a->in[i_idx].shape[0];
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            if (a->op == SL_OP_ATTN_VS_MIXED)
                sl__ref_keep_block(&a->in[3], bq, bk, dm.hq, h, r, dm.nk, keep);
            else
                memset(keep, 0, (size_t)dm.nk);
            keep_list(&a->in[i_idx], &a->in[i_idx + 1], h / lists_per, r / rows_per_entry, keep);
            sl__ref_row_opts opt = row_opts(a, first, &dm, h, r, r, dm.nq);
            sl__ref_row(q + (h * dm.nq + r) * dm.d, k + g * dm.nk * dm.d, v + g * dm.nk * dm.d, dm.nk, dm.d, dm.scale,
                        keep, &opt, score, o + (h * dm.nq + r) * dm.d, lse + h * dm.nq + r);
        }
    }
    return SL_OK;
}

sl_status sl__ref_attn_token_sparse(const sl__kargs *a)
{
    const sl_attn_token_params *p = a->params;
    return ref_gathered(a, p->scale, p->rows_per_entry, 3, 5, 0, 0);
}

sl_status sl__ref_attn_vs_mixed(const sl__kargs *a)
{
    /* The union is a keep list, so a key in both sets counts once. */
    const sl_attn_vs_params *p = a->params;
    return ref_gathered(a, p->scale, p->bq, 7, 9, p->bq, p->bk);
}

sl_status sl__ref_attn_rows(const sl__kargs *a)
{
    const sl_attn_rows_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    const int32_t *rows = a->in[3].data, *limits = a->in[4].data;
    int64_t hr = a->in[3].shape[0], n_out = a->in[3].shape[1];
    float *o = a->out[0].data, *lse = a->out[1].data;
    uint8_t *keep = a->scratch;
    double *score = (double *)((char *)a->scratch + sl__ref_keep_bytes(dm.nk));
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group, rh = hr == 1 ? 0 : h;
        for (int64_t r = 0; r < n_out; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            int64_t qr = rows[rh * n_out + r], limit = limits[rh * n_out + r];
            for (int64_t j = 0; j < dm.nk; j++)
                keep[j] = j < limit;
            sl__ref_row_opts opt = row_opts(a, 5, &dm, h, qr, r, n_out);
            sl__ref_row(q + (h * dm.nq + qr) * dm.d, k + g * dm.nk * dm.d, v + g * dm.nk * dm.d, dm.nk, dm.d, dm.scale,
                        keep, &opt, score, o + (h * n_out + r) * dm.d, lse + h * n_out + r);
        }
    }
    return SL_OK;
}

/* L = log(e^L1 + e^L2) around the larger side; an empty side (-inf) has
 * weight 0, so the other passes through exactly. */
sl_status sl__ref_attn_lse_merge(const sl__kargs *a)
{
    const sl_tensor *o1t = &a->in[0];
    int64_t d = o1t->ndim ? o1t->shape[o1t->ndim - 1] : 1, rows = sl_tensor_numel(&a->in[1]);
    const float *o1 = a->in[0].data, *l1 = a->in[1].data, *o2 = a->in[2].data, *l2 = a->in[3].data;
    float *o = a->out[0].data, *lse = a->out[1].data;
    for (int64_t i = 0; i < rows; i++) {
        double x = l1[i], y = l2[i], m = x > y ? x : y;
        if (m == -INFINITY) {
            memset(o + i * d, 0, (size_t)d * sizeof *o);
            lse[i] = -INFINITY;
            continue;
        }
        double w1 = exp(x - m), w2 = exp(y - m), sum = w1 + w2;
        for (int64_t c = 0; c < d; c++)
            o[i * d + c] = (float)((w1 * (double)o1[i * d + c] + w2 * (double)o2[i * d + c]) / sum);
        lse[i] = (float)(m + log(sum));
    }
    return SL_OK;
}
