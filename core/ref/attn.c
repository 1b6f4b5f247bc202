/* ref/attn.c — reference attention executors (attn.dense, attn.block_sparse):
 * one query row at a time over an explicit keep list, float64 throughout.
 * The oracle every other backend is tested against; slow on purpose. */
#include "ref.h"

#include <math.h>
#include <string.h>

/* Softmax attention of one query row over the keys with keep[j] != 0. */
static void ref_row(const float *q, const float *k, const float *v, int64_t n_k, int64_t d, double scale,
                    const uint8_t *keep, double *score, float *o, float *lse)
{
    double m = -INFINITY;
    for (int64_t j = 0; j < n_k; j++) {
        if (!keep[j])
            continue;
        double s = 0;
        for (int64_t c = 0; c < d; c++)
            s += (double)q[c] * (double)k[j * d + c];
        score[j] = s * scale;
        if (score[j] > m)
            m = score[j];
    }
    if (m == -INFINITY) {
        /* No visible key: the empty sum. O = 0 and L = log 0. */
        memset(o, 0, (size_t)d * sizeof *o);
        *lse = -INFINITY;
        return;
    }
    double sum = 0;
    for (int64_t c = 0; c < d; c++)
        score[n_k + c] = 0; /* the accumulator lives after the scores */
    for (int64_t j = 0; j < n_k; j++) {
        if (!keep[j])
            continue;
        double p = exp(score[j] - m);
        sum += p;
        for (int64_t c = 0; c < d; c++)
            score[n_k + c] += p * (double)v[j * d + c];
    }
    for (int64_t c = 0; c < d; c++)
        o[c] = (float)(score[n_k + c] / sum);
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

static void keep_block(const sl__kargs *a, const sl__attn_dims *dm, int64_t h, int64_t r, uint8_t *keep)
{
    const sl_attn_block_params *p = a->params;
    const sl_tensor *rp = &a->in[3];
    int64_t hm = rp->shape[0], n_qb = rp->shape[1] - 1;
    int64_t mh = h / (dm->hq / hm), qb = r / p->bq;
    const int32_t *row_ptr = (const int32_t *)rp->data + mh * (n_qb + 1);
    const int32_t *col = a->in[4].data, *part = a->in[5].data;
    const uint8_t *bits = a->in[6].data;
    memset(keep, 0, (size_t)dm->nk);
    for (int32_t e = row_ptr[qb]; e < row_ptr[qb + 1]; e++) {
        int64_t k0 = (int64_t)col[e] * p->bk;
        for (int64_t b = 0; b < p->bk && k0 + b < dm->nk; b++) {
            if (part[e] < 0)
                keep[k0 + b] = 1;
            else
                keep[k0 + b] = bits[((size_t)part[e] * (size_t)p->bq + (size_t)(r - qb * p->bq)) * (size_t)p->bk +
                                    (size_t)b];
        }
    }
}

static sl_status ref_attention(const sl__kargs *a, double scale_param, keep_fn keep_of)
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
            ref_row(q + (h * dm.nq + r) * dm.d, k + g * dm.nk * dm.d, v + g * dm.nk * dm.d, dm.nk, dm.d, dm.scale,
                    keep, score, o + (h * dm.nq + r) * dm.d, lse + h * dm.nq + r);
        }
    }
    return SL_OK;
}

sl_status sl__ref_attn_dense(const sl__kargs *a)
{
    return ref_attention(a, ((const sl_attn_params *)a->params)->scale, keep_dense);
}

sl_status sl__ref_attn_block_sparse(const sl__kargs *a)
{
    return ref_attention(a, ((const sl_attn_block_params *)a->params)->scale, keep_block);
}

size_t sl__ref_keep_bytes(int64_t n_k) { return ((size_t)n_k + 15) / 16 * 16; }

size_t sl__ref_attn_scratch(const sl_tensor *in)
{
    int64_t nk = in[1].shape[1], d = in[0].shape[2];
    return sl__ref_keep_bytes(nk) + (size_t)(nk + d) * sizeof(double);
}
