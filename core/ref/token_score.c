/* ref/token_score.c — reference kernels of pool.tokens, score.lowbit,
 * score.hash and attn.bucket: plain loops, float64 accumulation, the contracts of
 * sparselab.h read literally. The quantisation step of score.lowbit is
 * defined in f32 (sl__lowbit_quantise, shared with the cpu and cuda
 * backends), so every backend rounds the same values the same way. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Segment s of pool.tokens: [*t0, *t1). */
static void segment(const sl_tensor *bounds, int64_t block, int64_t n, int64_t s, int64_t *t0, int64_t *t1)
{
    if (bounds->buf) {
        const int32_t *b = bounds->data;
        int64_t S = bounds->shape[0];
        *t0 = b[s];
        *t1 = s + 1 < S ? b[s + 1] : n;
    } else {
        *t0 = s * block;
        *t1 = *t0 + block < n ? *t0 + block : n;
    }
}

sl_status sl__ref_pool_tokens(const sl__kargs *a)
{
    const sl_pool_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2], S = a->out[0].shape[1];
    const float *X = x->data;
    float *out = a->out[0].data;
    double *acc = malloc(sizeof *acc * (size_t)(d > 0 ? d : 1));
    if (!acc)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "pool.tokens[ref]: out of memory");
    for (int64_t h = 0; h < H; h++)
        for (int64_t s = 0; s < S; s++) {
            int64_t t0, t1;
            segment(&a->in[1], p->block, n, s, &t0, &t1);
            for (int64_t c = 0; c < d; c++)
                acc[c] = p->mode == 1 ? -INFINITY : p->mode == 2 ? INFINITY : 0.0;
            for (int64_t t = t0; t < t1; t++) {
                const float *row = X + (h * n + t) * d;
                double inv = 1.0;
                if (p->normalize) {
                    double ss = 0;
                    for (int64_t c = 0; c < d; c++)
                        ss += (double)row[c] * row[c];
                    inv = ss > 0 ? 1.0 / sqrt(ss) : 0.0;
                }
                for (int64_t c = 0; c < d; c++) {
                    double v = row[c] * inv;
                    if (p->mode == 1)
                        acc[c] = v > acc[c] ? v : acc[c];
                    else if (p->mode == 2)
                        acc[c] = v < acc[c] ? v : acc[c];
                    else
                        acc[c] += v;
                }
            }
            double len = (double)(t1 - t0), mul = p->len_norm ? sqrt(len) : 1.0;
            for (int64_t c = 0; c < d; c++)
                out[(h * S + s) * d + c] = (float)((p->mode == 0 ? acc[c] / len : acc[c]) * mul);
        }
    free(acc);
    return SL_OK;
}

void sl__lowbit_quantise(const float *x, int64_t rows, int64_t d, int64_t group, int bits, float *out)
{
    if (bits >= 16) {
        memcpy(out, x, sizeof *x * (size_t)(rows * d));
        return;
    }
    float qmax = (float)((1 << (bits - 1)) - 1);
    for (int64_t g0 = 0; g0 < rows; g0 += group) {
        int64_t g1 = g0 + group < rows ? g0 + group : rows;
        float mx = 0;
        for (int64_t i = g0 * d; i < g1 * d; i++)
            mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
        float step = mx > 0 ? mx / qmax : 1.0f;
        for (int64_t i = g0 * d; i < g1 * d; i++) {
            float v = roundf(x[i] / step);
            v = v > qmax ? qmax : v < -qmax ? -qmax : v;
            out[i] = v * step;
        }
    }
}

void sl__lowbit_prepare(const float *k, int64_t nk, int64_t d, int smooth, float *ks, float *mean)
{
    for (int64_t c = 0; c < d; c++) {
        double s = 0;
        for (int64_t t = 0; t < nk && smooth; t++)
            s += k[t * d + c];
        mean[c] = smooth && nk > 0 ? (float)(s / (double)nk) : 0.0f;
    }
    for (int64_t t = 0; t < nk; t++)
        for (int64_t c = 0; c < d; c++)
            ks[t * d + c] = k[t * d + c] - mean[c];
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
    for (int64_t i = 0; i < dm.hq * nqb * nkb; i++)
        out[i] = -INFINITY;
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *qh = Q + h * dm.nq * d, *kh = K + (h / dm.group) * dm.nk * d;
        sl__lowbit_prepare(kh, dm.nk, d, (int)p->smooth_k, ks, mean);
        sl__lowbit_quantise(ks, dm.nk, d, p->k_group, (int)p->bits, kq);
        sl__lowbit_quantise(qh, dm.nq, d, p->q_group, (int)p->bits, qq);
        for (int64_t i = 0; i < dm.nq; i++) {
            double c = 0;
            for (int64_t t = 0; t < d; t++)
                c += (double)qh[i * d + t] * mean[t];
            corr[i] = c;
        }
        for (int64_t i = 0; i < dm.nq; i++) {
            double base = lse ? lse[h * dm.nq + i] : 0.0;
            if (base == -INFINITY)
                continue;
            int64_t jmax = p->causal ? dm.offset + i + 1 : dm.nk;
            for (int64_t j = 0; j < jmax; j++) {
                double dot = 0;
                for (int64_t t = 0; t < d; t++)
                    dot += (double)qq[i * d + t] * kq[j * d + t];
                double s = (dot + corr[i]) * dm.scale - base;
                float *o = &out[(h * nqb + i / p->bq) * nkb + j / p->bk];
                if ((float)s > *o)
                    *o = (float)s;
            }
        }
    }
    free(qq), free(ks), free(kq), free(mean), free(corr);
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
