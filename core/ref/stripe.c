/* ref/stripe.c — reference kernels of score.antidiag (XAttention),
 * score.strided (ProxyAttn), score.anchor (AnchorAttention) and gather.rows
 * (PBS-Attn): plain loops with float64 accumulation, the oracle the cpu and
 * cuda kernels are tested against. Contracts in sparselab.h. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

sl_status sl__ref_gather_rows(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0], *idx = &a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hi = idx->shape[0], m = idx->shape[1];
    const float *src = x->data;
    const int32_t *ix = idx->data;
    float *out = a->out[0].data;
    for (int64_t h = 0; h < hi; h++)
        for (int64_t t = 0; t < m; t++)
            memcpy(out + (h * m + t) * d, src + ((h / (hi / hx)) * n + ix[h * m + t]) * d, sizeof *out * (size_t)d);
    return SL_OK;
}
