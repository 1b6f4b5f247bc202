/* ref/score.c — reference estimators of issue 4 (score.pooled, score.rows,
 * score.last_q, score.exact): plain loops, float64 accumulation, the oracle
 * the cpu and cuda kernels are tested against. */
#include "ref.h"

#include <math.h>
#include <string.h>

/* Pooled channels of rows [r0, r1) of x ([n, d] rows): mean (sum / div),
 * channel-wise max, and channel-wise min into lo (pool 2 only). */
static void pool_rows(const float *x, int64_t d, int64_t r0, int64_t r1, int64_t pool, double div, double *hi,
                      double *lo)
{
    for (int64_t t = 0; t < d; t++) {
        double sum = 0, mx = -INFINITY, mn = INFINITY;
        for (int64_t r = r0; r < r1; r++) {
            double v = x[r * d + t];
            sum += v;
            mx = v > mx ? v : mx;
            mn = v < mn ? v : mn;
        }
        hi[t] = pool == 0 ? sum / div : mx;
        if (lo)
            lo[t] = mn;
    }
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Row softmax over the finite entries of s[0..n) (-inf gives 0). */
static void softmax_row_f(float *out, const double *s, int64_t n)
{
    double m = -INFINITY, sum = 0;
    for (int64_t j = 0; j < n; j++)
        m = s[j] > m ? s[j] : m;
    for (int64_t j = 0; j < n; j++)
        sum += s[j] == -INFINITY ? 0 : exp(s[j] - m);
    for (int64_t j = 0; j < n; j++)
        out[j] = m == -INFINITY || s[j] == -INFINITY ? 0.f : (float)(exp(s[j] - m) / sum);
}

size_t sl__ref_score_scratch(sl_op op, const void *params, const sl_tensor *in)
{
    int64_t nq = in[0].shape[1], nk = in[1].shape[1], d = in[0].shape[2];
    switch (op) {
    case SL_OP_SCORE_POOLED: {
        const sl_score_pooled_params *p = params;
        int64_t nqb = (nq + p->bq - 1) / p->bq, nkb = (nk + p->bk - 1) / p->bk;
        return (size_t)(2 * d * (nqb + nkb) + nkb + 1) * sizeof(double);
    }
    case SL_OP_SCORE_EXACT: {
        const sl_score_exact_params *p = params;
        int64_t nqb = (nq + p->bq - 1) / p->bq, nkb = (nk + p->bk - 1) / p->bk;
        return (size_t)(nqb * nkb + nk + 1) * sizeof(double);
    }
    default: return (size_t)(nk + 1) * sizeof(double);
    }
}

sl_status sl__ref_score_pooled(const sl__kargs *a)
{
    const sl_score_pooled_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t bq = p->bq, bk = p->bk, nqb = (dm.nq + bq - 1) / bq, nkb = (dm.nk + bk - 1) / bk, d = dm.d;
    double *qhi = a->scratch, *qlo = qhi + nqb * d, *khi = qlo + nqb * d, *klo = khi + nkb * d, *row = klo + nkb * d;
    const float *q = a->in[0].data, *k = a->in[1].data;
    float *out = a->out[0].data;
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *qh = q + h * dm.nq * d, *kh = k + (h / dm.group) * dm.nk * d;
        for (int64_t r = 0; r < nqb; r++) {
            int64_t r1 = min64((r + 1) * bq, dm.nq);
            pool_rows(qh, d, r * bq, r1, p->pool, (double)(p->pad ? bq : r1 - r * bq), qhi + r * d,
                      p->pool == 2 ? qlo + r * d : NULL);
        }
        for (int64_t c = 0; c < nkb; c++) {
            int64_t c1 = min64((c + 1) * bk, dm.nk);
            pool_rows(kh, d, c * bk, c1, p->pool, (double)(p->pad ? bk : c1 - c * bk), khi + c * d,
                      p->pool == 2 ? klo + c * d : NULL);
        }
        for (int64_t r = 0; r < nqb; r++) {
            int64_t last_pos = dm.offset + min64((r + 1) * bq, dm.nq) - 1;
            for (int64_t c = 0; c < nkb; c++) {
                if (p->causal && c * bk > last_pos) {
                    row[c] = -INFINITY;
                    continue;
                }
                double s = 0;
                for (int64_t t = 0; t < d; t++) {
                    double qa = qhi[r * d + t], ka = khi[c * d + t];
                    if (p->pool == 2) {
                        double qb = qlo[r * d + t], kb = klo[c * d + t], m = qa * ka;
                        m = qa * kb > m ? qa * kb : m;
                        m = qb * ka > m ? qb * ka : m;
                        m = qb * kb > m ? qb * kb : m;
                        s += m;
                    } else
                        s += qa * ka;
                }
                row[c] = dm.scale * s;
            }
            float *o = out + (h * nqb + r) * nkb;
            if (p->softmax)
                softmax_row_f(o, row, nkb);
            else
                for (int64_t c = 0; c < nkb; c++)
                    o[c] = (float)row[c];
        }
    }
    return SL_OK;
}

/* score.rows / score.last_q: output row t of head h is query row rows[t]. */
static void ref_prob_rows(const sl__kargs *a, const sl__attn_dims *dm, int causal, const int32_t *rows, int64_t n_rows,
                          int64_t first)
{
    const float *q = a->in[0].data, *k = a->in[1].data;
    float *out = a->out[0].data;
    double *s = a->scratch;
    for (int64_t h = 0; h < dm->hq; h++) {
        const float *kh = k + (h / dm->group) * dm->nk * dm->d;
        for (int64_t t = 0; t < n_rows; t++) {
            int64_t r = rows ? rows[t] : first + t, lim = causal ? min64(dm->offset + r + 1, dm->nk) : dm->nk;
            const float *qr = q + (h * dm->nq + r) * dm->d;
            for (int64_t j = 0; j < dm->nk; j++) {
                double dot = 0;
                for (int64_t c = 0; j < lim && c < dm->d; c++)
                    dot += (double)qr[c] * (double)kh[j * dm->d + c];
                s[j] = j < lim ? dm->scale * dot : -INFINITY;
            }
            softmax_row_f(out + (h * n_rows + t) * dm->nk, s, dm->nk);
        }
    }
}

sl_status sl__ref_score_rows(const sl__kargs *a)
{
    const sl_score_rows_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    ref_prob_rows(a, &dm, (int)p->causal, a->in[2].data, a->in[2].shape[0], 0);
    return SL_OK;
}

sl_status sl__ref_score_last_q(const sl__kargs *a)
{
    const sl_score_last_q_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t n = min64(p->last, dm.nq);
    ref_prob_rows(a, &dm, (int)p->causal, NULL, n, dm.nq - n);
    return SL_OK;
}

sl_status sl__ref_score_exact(const sl__kargs *a)
{
    const sl_score_exact_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t bq = p->bq, bk = p->bk, nqb = (dm.nq + bq - 1) / bq, nkb = (dm.nk + bk - 1) / bk;
    const float *q = a->in[0].data, *k = a->in[1].data;
    float *out = a->out[0].data;
    double *acc = a->scratch, *s = acc + nqb * nkb;
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *kh = k + (h / dm.group) * dm.nk * dm.d;
        for (int64_t i = 0; i < nqb * nkb; i++)
            acc[i] = 0;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "score.exact[ref]: interrupted");
            int64_t lim = p->causal ? min64(dm.offset + r + 1, dm.nk) : dm.nk;
            const float *qr = q + (h * dm.nq + r) * dm.d;
            double m = -INFINITY, sum = 0;
            for (int64_t j = 0; j < lim; j++) {
                double dot = 0;
                for (int64_t c = 0; c < dm.d; c++)
                    dot += (double)qr[c] * (double)kh[j * dm.d + c];
                s[j] = dm.scale * dot;
                m = s[j] > m ? s[j] : m;
            }
            for (int64_t j = 0; j < lim; j++)
                sum += exp(s[j] - m);
            /* pass two: aggregate probabilities into the row's blocks */
            double *blk = acc + (r / bq) * nkb;
            for (int64_t j = 0; j < lim; j++) {
                double pr = exp(s[j] - m) / sum;
                if (p->reduce == 0)
                    blk[j / bk] += pr;
                else if (pr > blk[j / bk])
                    blk[j / bk] = pr;
            }
        }
        for (int64_t r = 0; r < nqb; r++) {
            double tot = 0;
            for (int64_t c = 0; c < nkb; c++)
                tot += acc[r * nkb + c];
            for (int64_t c = 0; c < nkb; c++)
                out[(h * nqb + r) * nkb + c] =
                    (float)(p->normalize && tot > 0 ? acc[r * nkb + c] / tot : acc[r * nkb + c]);
        }
    }
    return SL_OK;
}
