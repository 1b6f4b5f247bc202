/* ref/attn.c — reference attention executors (attn.dense, attn.block_sparse)
 * and the row kernel the sparse ones share (bias, state, pv_skip): one query
 * row at a time over an explicit keep list, float64 throughout.
 * The oracle every other backend is tested against; slow on purpose. */
#include "ref.h"

#include <math.h>
#include <string.h>

/* Softmax attention of one query row over the keys with keep[j] != 0, with
 * the options of sl__ref_row_opts (NULL: none). Keys that pv_skip leaves out
 * of P·V are marked 2 in keep (keep is the caller's scratch). */
void sl__ref_row(const float *q, const float *k, const float *v, int64_t n_k, int64_t d, double scale, uint8_t *keep,
                 const sl__ref_row_opts *opt, double *score, float *o, float *lse)
{
    static const sl__ref_row_opts none = {NULL, NULL, 0, 0, 0};
    if (!opt)
        opt = &none;
    double m = opt->state_o && opt->state_lse > -INFINITY ? (double)opt->state_lse : -INFINITY;
    for (int64_t j = 0; j < n_k; j++) {
        if (!keep[j])
            continue;
        double s = 0;
        for (int64_t c = 0; c < d; c++)
            s += (double)q[c] * (double)k[j * d + c];
        score[j] = s * scale + (opt->bias ? (double)opt->bias[j] : 0.0);
        if (score[j] > m)
            m = score[j];
    }
    if (opt->pv_bk > 0) {
        /* SpargeAttn's test per row: kept blocks in key order, running max
         * including the block itself. */
        double run = -INFINITY;
        for (int64_t k0 = 0; k0 < n_k; k0 += opt->pv_bk) {
            double b = -INFINITY;
            for (int64_t j = k0; j < n_k && j < k0 + opt->pv_bk; j++)
                if (keep[j] && score[j] > b)
                    b = score[j];
            if (b == -INFINITY)
                continue;
            run = b > run ? b : run;
            if (b < run - opt->pv_skip)
                for (int64_t j = k0; j < n_k && j < k0 + opt->pv_bk; j++)
                    if (keep[j])
                        keep[j] = 2;
        }
    }
    if (m == -INFINITY) {
        /* No visible key: the empty sum. O = 0 and L = log 0. */
        memset(o, 0, (size_t)d * sizeof *o);
        *lse = -INFINITY;
        return;
    }
    double sum = 0;
    double *acc = score + n_k; /* the accumulator lives after the scores */
    for (int64_t c = 0; c < d; c++)
        acc[c] = 0;
    if (opt->state_o && opt->state_lse > -INFINITY) {
        double w = exp((double)opt->state_lse - m);
        sum += w;
        for (int64_t c = 0; c < d; c++)
            acc[c] += w * (double)opt->state_o[c];
    }
    for (int64_t j = 0; j < n_k; j++) {
        if (!keep[j])
            continue;
        double p = exp(score[j] - m);
        sum += p;
        if (keep[j] == 2)
            continue;
        for (int64_t c = 0; c < d; c++)
            acc[c] += p * (double)v[j * d + c];
    }
    for (int64_t c = 0; c < d; c++)
        o[c] = (float)(acc[c] / sum);
    *lse = (float)(m + log(sum));
}

typedef void (*keep_fn)(const sl__kargs *a, const sl__attn_dims *dm, int64_t h, int64_t r, uint8_t *keep);

static void keep_dense(const sl__kargs *a, const sl__attn_dims *dm, int64_t h, int64_t r, uint8_t *keep)
{
    const sl_attn_params *p = a->params;
    int64_t limit = p->causal ? dm->offset + r + 1 : dm->nk;
    if (limit < 0)
        limit = 0;
    for (int64_t j = 0; j < dm->nk; j++)
        keep[j] = j < limit;
}

void sl__ref_keep_block(const sl_tensor *mask, int64_t bq, int64_t bk, int64_t hq, int64_t h, int64_t r, int64_t nk,
                        uint8_t *keep)
{
    const sl_tensor *rp = &mask[0];
    int64_t hm = rp->shape[0], n_qb = rp->shape[1] - 1;
    int64_t mh = h / (hq / hm), qb = r / bq;
    const int32_t *row_ptr = (const int32_t *)rp->data + mh * (n_qb + 1);
    const int32_t *col = mask[1].data, *part = mask[2].data;
    const uint8_t *bits = mask[3].data;
    memset(keep, 0, (size_t)nk);
    for (int32_t e = row_ptr[qb]; e < row_ptr[qb + 1]; e++) {
        int64_t k0 = (int64_t)col[e] * bk;
        for (int64_t b = 0; b < bk && k0 + b < nk; b++) {
            if (part[e] < 0)
                keep[k0 + b] = 1;
            else
                keep[k0 + b] = bits[((size_t)part[e] * (size_t)bq + (size_t)(r - qb * bq)) * (size_t)bk + (size_t)b];
        }
    }
}

static void keep_block(const sl__kargs *a, const sl__attn_dims *dm, int64_t h, int64_t r, uint8_t *keep)
{
    const sl_attn_block_params *p = a->params;
    sl__ref_keep_block(&a->in[3], p->bq, p->bk, dm->hq, h, r, dm->nk, keep);
}

static sl_status ref_attention(const sl__kargs *a, double scale_param, keep_fn keep_of, const sl__ref_row_opts *opt)
{
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale_param);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    float *o = a->out[0].data, *lse = a->out[1].data;
    uint8_t *keep = a->scratch;
    double *score = (double *)((char *)a->scratch + sl__ref_keep_bytes(dm.nk));
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[ref]: interrupted", sl_op_info_get(a->op)->name);
            keep_of(a, &dm, h, r, keep);
            sl__ref_row(q + (h * dm.nq + r) * dm.d, k + g * dm.nk * dm.d, v + g * dm.nk * dm.d, dm.nk, dm.d, dm.scale,
                    keep, opt, score, o + (h * dm.nq + r) * dm.d, lse + h * dm.nq + r);
        }
    }
    return SL_OK;
}

sl_status sl__ref_attn_dense(const sl__kargs *a)
{
    return ref_attention(a, ((const sl_attn_params *)a->params)->scale, keep_dense, NULL);
}

sl_status sl__ref_attn_block_sparse(const sl__kargs *a)
{
    const sl_attn_block_params *p = a->params;
    sl__ref_row_opts opt = {NULL, NULL, 0, p->pv_skip > 0 ? p->bk : 0, p->pv_skip};
    return ref_attention(a, p->scale, keep_block, &opt);
}

size_t sl__ref_keep_bytes(int64_t n_k) { return ((size_t)n_k + 15) / 16 * 16; }

size_t sl__ref_attn_scratch(const sl_tensor *in)
{
    int64_t nk = in[1].shape[1], d = in[0].shape[2];
    return sl__ref_keep_bytes(nk) + (size_t)(nk + d) * sizeof(double);
}
