/* ref/attn.c — reference kernels of the attn family: plain loops, float64
 * accumulation, the contracts of sparselab.h read literally; the oracle the
 * cpu and cuda kernels are tested against. attn.dense, attn.block_sparse,
 * attn.token_sparse, attn.vs_mixed and attn.rows share one row routine
 * (sl__ref_row) over a keep mask; attn.linear is computed in its quadratic
 * form (every row sums over its keys), independent of the cpu kernel's
 * running-state form; attn.pooled_kv pools each group from K and V when it is
 * read; attn.bucket compares every pair's bucket and score. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
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

static size_t keep_scratch(const sl_tensor *in)
{
    int64_t nk = in[1].shape[1], d = in[0].shape[2];
    return sl__ref_keep_bytes(nk) + (size_t)(nk + d) * sizeof(double);
}

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
void sl__ref_merge_row(const float *o1, float l1, const float *o2, float l2, int64_t d, float *o, float *lse)
{
    double x = l1, y = o2 ? (double)l2 : -INFINITY, m = x > y ? x : y;
    if (m == -INFINITY) {
        memset(o, 0, (size_t)d * sizeof *o);
        *lse = -INFINITY;
        return;
    }
    double w1 = exp(x - m), w2 = exp(y - m), sum = w1 + w2;
    for (int64_t c = 0; c < d; c++)
        o[c] = (float)((w1 * (double)o1[c] + (o2 ? w2 * (double)o2[c] : 0.0)) / sum);
    *lse = (float)(m + log(sum));
}

sl_status sl__ref_attn_lse_merge(const sl__kargs *a)
{
    const sl_tensor *o1t = &a->in[0];
    int64_t d = o1t->ndim ? o1t->shape[o1t->ndim - 1] : 1, rows = sl_tensor_numel(&a->in[1]);
    const float *o1 = a->in[0].data, *l1 = a->in[1].data, *o2 = a->in[2].data, *l2 = a->in[3].data;
    float *o = a->out[0].data, *lse = a->out[1].data;
    for (int64_t i = 0; i < rows; i++)
        sl__ref_merge_row(o1 + i * d, l1[i], o2 + i * d, l2[i], d, o + i * d, &lse[i]);
    return SL_OK;
}

static double phi(double x, int feature) { return feature == 0 ? (x > 0 ? x + 1.0 : exp(x)) : (x > 0 ? x : 0.0); }

sl_status sl__ref_attn_linear(const sl__kargs *a)
{
    const sl_attn_linear_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    float *o = a->out[0].data;
    double *num = a->scratch;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            const float *qr = q + (h * dm.nq + r) * dm.d;
            int64_t lim = p->causal ? dm.offset + r + 1 : dm.nk;
            double den = 0;
            memset(num, 0, (size_t)dm.d * sizeof *num);
            for (int64_t j = 0; j < lim; j++) {
                const float *kj = k + (g * dm.nk + j) * dm.d, *vj = v + (g * dm.nk + j) * dm.d;
                double w = 0;
                for (int64_t c = 0; c < dm.d; c++)
                    w += phi(qr[c], (int)p->feature) * phi(kj[c], (int)p->feature);
                den += w;
                for (int64_t c = 0; c < dm.d; c++)
                    num[c] += w * (double)vj[c];
            }
            for (int64_t c = 0; c < dm.d; c++)
                o[(h * dm.nq + r) * dm.d + c] = den > 0 ? (float)(num[c] / den) : 0.f;
        }
    }
    return SL_OK;
}

sl_status sl__ref_attn_pooled_kv(const sl__kargs *a)
{
    const sl_attn_pooled_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    const uint8_t *lv = a->in[3].data;
    int64_t hm = a->in[3].shape[0], nqb = a->in[3].shape[1], nkb = a->in[3].shape[2];
    float *o = a->out[0].data, *lse = a->out[1].data;
    double *kbar = a->scratch, *vbar = kbar + dm.d, *acc = vbar + dm.d;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group, mh = h / (dm.hq / hm);
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            const float *qr = q + (h * dm.nq + r) * dm.d;
            int64_t pos = dm.offset + r;
            /* two passes over the visible groups: the max, then the sums */
            double m = -INFINITY, l = 0;
            memset(acc, 0, (size_t)dm.d * sizeof *acc);
            for (int pass = 0; pass < 2; pass++)
                for (int64_t c = 0; c < nkb; c++) {
                    int64_t s = lv[(mh * nqb + r / p->bq) * nkb + c];
                    if (!s)
                        continue;
                    int64_t end = (c + 1) * p->bk < dm.nk ? (c + 1) * p->bk : dm.nk;
                    for (int64_t j0 = c * p->bk; j0 < end; j0 += s) {
                        int64_t j1 = j0 + s < end ? j0 + s : end, cnt = j1 - j0;
                        if (p->causal && j1 - 1 > pos)
                            continue;
                        memset(kbar, 0, (size_t)(2 * dm.d) * sizeof *kbar);
                        for (int64_t j = j0; j < j1; j++)
                            for (int64_t x = 0; x < dm.d; x++) {
                                kbar[x] += (double)k[(g * dm.nk + j) * dm.d + x] / (double)cnt;
                                vbar[x] += (double)v[(g * dm.nk + j) * dm.d + x] / (double)cnt;
                            }
                        double sc = 0;
                        for (int64_t x = 0; x < dm.d; x++)
                            sc += (double)qr[x] * kbar[x];
                        sc = sc * dm.scale + log((double)cnt);
                        if (pass == 0) {
                            m = sc > m ? sc : m;
                        } else {
                            double w = exp(sc - m);
                            l += w;
                            for (int64_t x = 0; x < dm.d; x++)
                                acc[x] += w * vbar[x];
                        }
                    }
                }
            float *orow = o + (h * dm.nq + r) * dm.d;
            if (m == -INFINITY) {
                memset(orow, 0, (size_t)dm.d * sizeof *orow);
                lse[h * dm.nq + r] = -INFINITY;
                continue;
            }
            for (int64_t x = 0; x < dm.d; x++)
                orow[x] = (float)(acc[x] / l);
            lse[h * dm.nq + r] = (float)(m + log(l));
        }
    }
    return SL_OK;
}

sl_status sl__ref_attn_bucket(const sl__kargs *a)
{
    const sl_attn_bucket_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *Q = a->in[0].data, *K = a->in[1].data, *V = a->in[2].data;
    const int32_t *qb = a->in[3].buf ? a->in[3].data : NULL, *kb = a->in[4].buf ? a->in[4].data : NULL;
    float *O = a->out[0].data, *L = a->out[1].data;
    int32_t *cnt = a->out[2].data;
    int64_t d = dm.d;
    double *s = malloc(sizeof *s * (size_t)(dm.nk ? dm.nk : 1)), *acc = malloc(sizeof *acc * (size_t)d);
    uint8_t *keep = malloc((size_t)(dm.nk ? dm.nk : 1));
    if (!s || !acc || !keep) {
        free(s), free(acc), free(keep);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "attn.bucket[ref]: out of memory");
    }
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *kh = K + (h / dm.group) * dm.nk * d, *vh = V + (h / dm.group) * dm.nk * d;
        for (int64_t i = 0; i < dm.nq; i++) {
            const float *qi = Q + (h * dm.nq + i) * d;
            double mx = -INFINITY;
            int64_t n = 0;
            for (int64_t j = 0; j < dm.nk; j++) {
                keep[j] = !(p->causal && j > dm.offset + i) && !(qb && qb[h * dm.nq + i] != kb[h * dm.nk + j]);
                if (!keep[j])
                    continue;
                double dot = 0;
                for (int64_t t = 0; t < d; t++)
                    dot += (double)qi[t] * kh[j * d + t];
                s[j] = dot * dm.scale;
                if (p->use_tau && s[j] < p->tau) {
                    keep[j] = 0;
                    continue;
                }
                mx = s[j] > mx ? s[j] : mx;
                n++;
            }
            double z = 0;
            for (int64_t t = 0; t < d; t++)
                acc[t] = 0;
            for (int64_t j = 0; j < dm.nk; j++)
                if (keep[j]) {
                    double w = exp(s[j] - mx);
                    z += w;
                    for (int64_t t = 0; t < d; t++)
                        acc[t] += w * vh[j * d + t];
                }
            for (int64_t t = 0; t < d; t++)
                O[(h * dm.nq + i) * d + t] = n ? (float)(acc[t] / z) : 0.0f;
            L[h * dm.nq + i] = n ? (float)(mx + log(z)) : -INFINITY;
            cnt[h * dm.nq + i] = (int32_t)n;
        }
    }
    free(s), free(acc), free(keep);
    return SL_OK;
}

size_t sl__ref_attn_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params, (void)n_threads;
    int64_t d = in[0].shape[2];
    switch (op) {
    case SL_OP_ATTN_DENSE:
    case SL_OP_ATTN_BLOCK_SPARSE:
    case SL_OP_ATTN_TOKEN_SPARSE:
    case SL_OP_ATTN_VS_MIXED:
    case SL_OP_ATTN_ROWS:
    case SL_OP_ATTN_LINES: return keep_scratch(in);
    case SL_OP_ATTN_LINEAR: return (size_t)d * sizeof(double);
    case SL_OP_ATTN_POOLED_KV: return (size_t)(3 * d) * sizeof(double);
    default: return 0;
    }
}
