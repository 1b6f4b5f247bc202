/* ref/score.c — reference estimators of issue 4 (score.pooled, score.rows,
 * score.last_q, score.exact): plain loops, float64 accumulation, the oracle
 * the cpu and cuda kernels are tested against. *
 * score.antidiag (XAttention), score.strided (ProxyAttn), score.anchor
 * (AnchorAttention): plain loops with float64 accumulation. score.lowbit
 * quantises on its own (lowbit_quantise below, float64 arithmetic with the
 * f32 roundings the contract names), independent of the cpu and cuda
 * quantisers it checks; score.hash takes the argmax of [x.R, -x.R]. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
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

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
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

size_t sl__ref_score_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)n_threads;
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
    case SL_OP_SCORE_LAST_Q:
    case SL_OP_SCORE_ROWS: return (size_t)(nk + 1) * sizeof(double);
    default: return 0;
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


static sl_status oom(const sl__kargs *a)
{
    return sl_ctx_fail(a->ctx, SL_ENOMEM, "%s[ref]: out of memory", sl_op_info_get(a->op)->name);
}

static double dot(const float *a, const float *b, int64_t d)
{
    double s = 0;
    for (int64_t t = 0; t < d; t++)
        s += (double)a[t] * (double)b[t];
    return s;
}

/* Softmax of s[0..n) in place (n >= 1, finite). */
static void softmax(double *s, int64_t n)
{
    double m = -INFINITY, z = 0;
    for (int64_t j = 0; j < n; j++)
        m = s[j] > m ? s[j] : m;
    for (int64_t j = 0; j < n; j++)
        z += (s[j] = exp(s[j] - m));
    for (int64_t j = 0; j < n; j++)
        s[j] /= z;
}

sl_status sl__ref_score_antidiag(const sl__kargs *a)
{
    const sl_score_antidiag_params *p = a->params;
    int64_t S = p->stride, B = p->block;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale > 0 ? p->scale : 0);
    double scale = p->scale > 0 ? p->scale : 1.0 / (sqrt((double)dm.d) * (double)S);
    int64_t Mq = cdiv(dm.nq, S), Mk = cdiv(dm.nk, S), nqb = a->out[0].shape[1], nkb = a->out[0].shape[2];
    const float *q = a->in[0].data, *k = a->in[1].data;
    float *out = a->out[0].data;
    double *s = malloc(sizeof *s * (size_t)(Mk > 0 ? Mk : 1)), *acc = malloc(sizeof *acc * (size_t)(nkb > 0 ? nkb : 1));
    if (!s || !acc) {
        free(s);
        free(acc);
        return oom(a);
    }
    memset(out, 0, sizeof *out * (size_t)(dm.hq * nqb * nkb));
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *qh = q + h * dm.nq * dm.d, *kh = k + (h / dm.group) * dm.nk * dm.d;
        for (int64_t r = 0; r < nqb; r++) {
            for (int64_t c = 0; c < nkb; c++)
                acc[c] = 0;
            for (int64_t i = r * (B / S); i < (r + 1) * (B / S) && i < Mq; i++) {
                int64_t n_vis = p->causal ? (dm.offset + i * S) / S + 1 : Mk;
                n_vis = n_vis < Mk ? n_vis : Mk;
                for (int64_t j = 0; j < n_vis; j++) {
                    double x = 0;
                    for (int64_t t = 0; t < S; t++) {
                        int64_t qi = i * S + S - 1 - t, kj = j * S + t;
                        if (qi < dm.nq && kj < dm.nk)
                            x += dot(qh + qi * dm.d, kh + kj * dm.d, dm.d);
                    }
                    s[j] = scale * x;
                }
                if (n_vis < 1)
                    continue;
                softmax(s, n_vis);
                for (int64_t j = 0; j < n_vis; j++)
                    acc[(j * S) / B] += s[j];
            }
            for (int64_t c = 0; c < nkb; c++)
                out[(h * nqb + r) * nkb + c] = (float)acc[c];
        }
    }
    free(s);
    free(acc);
    return SL_OK;
}

sl_status sl__ref_score_strided(const sl__kargs *a)
{
    const sl_score_strided_params *p = a->params;
    int64_t S = p->stride;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t Mq = cdiv(dm.nq, S), Mk = cdiv(dm.nk, S), nqb = a->out[0].shape[1], nkb = a->out[0].shape[2];
    const float *q = a->in[0].data, *k = a->in[1].data;
    float *out = a->out[0].data;
    double *s = malloc(sizeof *s * (size_t)(Mk > 0 ? Mk : 1));
    if (!s)
        return oom(a);
    memset(out, 0, sizeof *out * (size_t)(dm.hq * nqb * nkb));
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *qh = q + h * dm.nq * dm.d, *kh = k + (h / dm.group) * dm.nk * dm.d;
        for (int64_t i = 0; i < Mq; i++) {
            int64_t n_vis = p->causal ? (dm.offset + i * S) / S + 1 : Mk;
            n_vis = n_vis < Mk ? n_vis : Mk;
            if (n_vis < 1)
                continue;
            for (int64_t j = 0; j < n_vis; j++)
                s[j] = dm.scale * dot(qh + i * S * dm.d, kh + j * S * dm.d, dm.d);
            softmax(s, n_vis);
            float *row = out + (h * nqb + (i * S) / p->bq) * nkb;
            for (int64_t j = 0; j < n_vis; j++) {
                float *cell = row + (j * S) / p->bk;
                *cell = (float)s[j] > *cell ? (float)s[j] : *cell;
            }
        }
    }
    free(s);
    return SL_OK;
}

sl_status sl__ref_score_anchor(const sl__kargs *a)
{
    const sl_score_anchor_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t N = dm.nq, B = p->block, G = p->block * p->step, nb = a->out[0].shape[1], d = dm.d;
    const float *q = a->in[0].data, *k = a->in[1].data;
    uint8_t *out = a->out[0].data;
    int64_t steps = p->step;
    double *qbar = malloc(sizeof *qbar * (size_t)(steps * d + 1)), *xbar = malloc(sizeof *xbar * (size_t)(steps + 1));
    if (!qbar || !xbar) {
        free(qbar);
        free(xbar);
        return oom(a);
    }
    memset(out, 0, (size_t)(dm.hq * nb * N));
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *qh = q + h * N * d, *kh = k + (h / dm.group) * N * d;
        for (int64_t b = 0; b < nb; b++) {
            int64_t r0 = b * G, r1 = r0 + G < N ? r0 + G : N;
            int64_t init_end = p->init_cnt * G, local0 = (b - p->local_cnt + 1) * G;
            if (local0 < 0)
                local0 = 0;
            int64_t nt = cdiv(r1 - r0, B);
            for (int64_t t = 0; t < nt; t++) {
                int64_t i0 = r0 + t * B, i1 = i0 + B < r1 ? i0 + B : r1;
                double xs = 0;
                for (int64_t c = 0; c < d; c++)
                    qbar[t * d + c] = 0;
                for (int64_t i = i0; i < i1; i++) {
                    double mx = -INFINITY;
                    for (int64_t j = 0; j <= i; j++) {
                        if (j >= init_end && j < local0)
                            continue;
                        double x = dm.scale * dot(qh + i * d, kh + j * d, d);
                        mx = x > mx ? x : mx;
                    }
                    xs += mx;
                    for (int64_t c = 0; c < d; c++)
                        qbar[t * d + c] += qh[i * d + c];
                }
                xbar[t] = xs / (double)(i1 - i0);
                for (int64_t c = 0; c < d; c++)
                    qbar[t * d + c] /= (double)(i1 - i0);
            }
            int64_t m0 = p->overlap ? B : init_end, m1 = p->overlap ? local0 - B : local0;
            m1 = m1 < r0 ? m1 : r0;
            for (int64_t j = m0 < 0 ? 0 : m0; j < m1; j++) {
                int keep = 0;
                for (int64_t t = 0; t < nt && !keep; t++) {
                    double x = 0;
                    for (int64_t c = 0; c < d; c++)
                        x += qbar[t * d + c] * (double)kh[j * d + c];
                    keep = dm.scale * x + p->theta >= xbar[t];
                }
                out[(h * nb + b) * N + j] = (uint8_t)keep;
            }
        }
    }
    free(qbar);
    free(xbar);
    return SL_OK;
}

/* score.lowbit's quantiser, written apart from the cpu and cuda ones: the
 * arithmetic in float64, rounded to f32 exactly where the contract says the
 * value is an f32 (the step, the quotient x / step, the product level .
 * step). A float64 result of one +, -, x or / of two f32 values rounded to
 * f32 is the f32 operation's result, so this reproduces the contract's
 * values bit for bit without sharing code with what it checks. */
static void lowbit_quantise(const float *x, int64_t rows, int64_t d, int64_t group, int bits, float *out)
{
    if (bits >= 16) {
        for (int64_t i = 0; i < rows * d; i++)
            out[i] = x[i];
        return;
    }
    double qmax = (double)((1 << (bits - 1)) - 1);
    for (int64_t g0 = 0; g0 < rows; g0 += group) {
        int64_t g1 = g0 + group < rows ? g0 + group : rows;
        double mx = 0;
        for (int64_t i = g0 * d; i < g1 * d; i++)
            mx = fabs((double)x[i]) > mx ? fabs((double)x[i]) : mx;
        double step = (double)(float)(mx / qmax);
        if (step == 0)
            step = 1.0; /* an all-zero group, or one whose step underflows f32 */
        for (int64_t i = g0 * d; i < g1 * d; i++) {
            double level = round((double)(float)((double)x[i] / step));
            if (level > qmax)
                level = qmax;
            if (level < -qmax)
                level = -qmax;
            out[i] = (float)(level * step);
        }
    }
}

/* K' = K - mean_t K per channel (mean: float64 sum, stored as f32). */
static void lowbit_prepare(const float *k, int64_t nk, int64_t d, int smooth, float *ks, float *mean)
{
    for (int64_t c = 0; c < d; c++) {
        double s = 0;
        for (int64_t t = 0; t < nk && smooth; t++)
            s += (double)k[t * d + c];
        mean[c] = smooth && nk > 0 ? (float)(s / (double)nk) : 0.0f;
    }
    for (int64_t t = 0; t < nk; t++)
        for (int64_t c = 0; c < d; c++)
            ks[t * d + c] = (float)((double)k[t * d + c] - (double)mean[c]);
}

sl_status sl__ref_score_lowbit(const sl__kargs *a)
{
    const sl_score_lowbit_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *Q = a->in[0].data, *K = a->in[1].data, *lse = a->in[2].buf ? a->in[2].data : NULL;
    int64_t nqb = a->out[0].shape[1], nkb = a->out[0].shape[2], d = dm.d;
    float *out = a->out[0].data;
    size_t qn = (size_t)(dm.nq * d), kn = (size_t)(dm.nk * d);
    float *qq = malloc(sizeof *qq * (qn ? qn : 1)), *ks = malloc(sizeof *ks * (kn ? kn : 1)),
          *kq = malloc(sizeof *kq * (kn ? kn : 1)), *mean = malloc(sizeof *mean * (size_t)d);
    double *corr = malloc(sizeof *corr * (size_t)(dm.nq ? dm.nq : 1));
    if (!qq || !ks || !kq || !mean || !corr) {
        free(qq), free(ks), free(kq), free(mean), free(corr);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "score.lowbit[ref]: out of memory");
    }
    /* rows of query blocks [qb0, qb0 + nqb) (nqb: the output's rows) */
    int64_t i0 = p->qb0 * p->bq, i1 = (p->qb0 + nqb) * p->bq < dm.nq ? (p->qb0 + nqb) * p->bq : dm.nq;
    for (int64_t i = 0; i < dm.hq * nqb * nkb; i++)
        out[i] = -INFINITY;
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *qh = Q + h * dm.nq * d, *kh = K + (h / dm.group) * dm.nk * d;
        lowbit_prepare(kh, dm.nk, d, (int)p->smooth_k, ks, mean);
        lowbit_quantise(ks, dm.nk, d, p->k_group, (int)p->bits, kq);
        lowbit_quantise(qh, dm.nq, d, p->q_group, (int)p->bits, qq);
        for (int64_t i = 0; i < dm.nq; i++) {
            double c = 0;
            for (int64_t t = 0; t < d; t++)
                c += (double)qh[i * d + t] * mean[t];
            corr[i] = c;
        }
        for (int64_t i = i0; i < i1; i++) {
            double base = lse ? lse[h * dm.nq + i] : 0.0;
            if (base == -INFINITY)
                continue;
            int64_t jmax = p->causal ? dm.offset + i + 1 : dm.nk;
            for (int64_t j = 0; j < jmax; j++) {
                double dot = 0;
                for (int64_t t = 0; t < d; t++)
                    dot += (double)qq[i * d + t] * kq[j * d + t];
                double s = (dot + corr[i]) * dm.scale - base;
                float *o = &out[(h * nqb + i / p->bq - p->qb0) * nkb + j / p->bk];
                if ((float)s > *o)
                    *o = (float)s;
            }
        }
    }
    free(qq), free(ks), free(kq), free(mean), free(corr);
    return SL_OK;
}

sl_status sl__ref_score_hash(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0], *rot = &a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hr = rot->shape[0], m = rot->shape[2];
    const float *X = x->data, *R = rot->data;
    int32_t *out = a->out[0].data;
    for (int64_t h = 0; h < hr; h++)
        for (int64_t t = 0; t < n; t++) {
            const float *xt = X + ((h / (hr / hx)) * n + t) * d;
            double best = -INFINITY;
            int32_t arg = 0;
            /* the 2M candidates in order: +x.R_0 .. +x.R_{M-1}, then -x.R_0 .. */
            for (int64_t side = 0; side < 2; side++)
                for (int64_t c = 0; c < m; c++) {
                    double v = 0;
                    for (int64_t e = 0; e < d; e++)
                        v += (double)xt[e] * R[(h * d + e) * m + c];
                    v = side ? -v : v;
                    if (v > best) {
                        best = v;
                        arg = (int32_t)(side * m + c);
                    }
                }
            out[h * n + t] = arg;
        }
    return SL_OK;
}
