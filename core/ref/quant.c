/* ref/quant.c — the reference kernels of the quant family. quant.fake: per
 * head and group of rows the f32 step from the group's max |x|, then every
 * element rounded to the grid (the contract's f32 arithmetic, written out
 * element by element). quant.attn_block: below. */
#include "ref.h"

#include <math.h>

sl_status sl__ref_quant_fake(const sl__kargs *a)
{
    const sl_quant_fake_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2];
    const float *src = x->data;
    float *out = a->out[0].data;
    float qmax = (float)((1 << (p->bits - 1)) - 1);
    for (int64_t h = 0; h < H; h++)
        for (int64_t r0 = 0; r0 < n; r0 += p->group) {
            int64_t r1 = r0 + p->group < n ? r0 + p->group : n;
            float m = 0;
            for (int64_t i = (h * n + r0) * d; i < (h * n + r1) * d; i++)
                if (fabsf(src[i]) > m)
                    m = fabsf(src[i]);
            float step = m / qmax;
            if (!(step > 0))
                step = 1;
            for (int64_t i = (h * n + r0) * d; i < (h * n + r1) * d; i++) {
                float v = roundf(src[i] / step);
                if (v > qmax)
                    v = qmax;
                if (v < -qmax)
                    v = -qmax;
                out[i] = v * step;
            }
        }
    return SL_OK;
}

/* Is key j of mask entry e (block I, J) kept for query row i? */
static int kept_pair(const sl__kargs *a, const sl_quant_attn_params *p, int32_t e, int64_t i, int64_t I, int64_t j,
                     int64_t J)
{
    int32_t part = ((const int32_t *)a->in[5].data)[e];
    if (part < 0)
        return 1;
    const uint8_t *bits = a->in[6].data;
    return bits[((int64_t)part * p->bq + (i - I * p->bq)) * p->bk + (j - J * p->bk)] != 0;
}

/* quant.attn_block: every row on its own in float64 except the V codes,
 * which follow quant.fake's f32 rule; two passes over the row's kept keys
 * (the max, then per key block the codes and their integer products).
 * Scratch: the row's scores per key block (bk doubles), the block's V
 * scales (d floats) and the output accumulator (d doubles). */
sl_status sl__ref_quant_attn_block(const sl__kargs *a)
{
    const sl_quant_attn_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    const int32_t *rp = a->in[3].data, *ci = a->in[4].data;
    int64_t hm = a->in[3].shape[0], d = dm.d, nqb = (dm.nq + p->bq - 1) / p->bq;
    float *o = a->out[0].data, *lse = a->out[1].data;
    double *s = a->scratch, *acc = s + p->bk;
    float *t = (float *)(acc + d);
    int quant = p->bits != 16;
    float qmax = (float)((1 << (p->bits - 1)) - 1);
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group, mh = h / (dm.hq / hm);
        const float *kg = k + g * dm.nk * d, *vg = v + g * dm.nk * d;
        for (int64_t i = 0; i < dm.nq; i++) {
            int64_t I = i / p->bq, r0 = rp[mh * (nqb + 1) + I], r1 = rp[mh * (nqb + 1) + I + 1];
            const float *qi = q + (h * dm.nq + i) * d;
            double m = -INFINITY, l = 0;
            for (int pass = 0; pass < 2; pass++) {
                for (int64_t c = 0; c < d; c++)
                    acc[c] = 0;
                for (int32_t e = (int32_t)r0; e < r1; e++) {
                    int64_t J = ci[e], j0 = J * p->bk, j1 = j0 + p->bk < dm.nk ? j0 + p->bk : dm.nk;
                    double mu = -INFINITY;
                    for (int64_t j = j0; j < j1; j++) {
                        s[j - j0] = -INFINITY;
                        if (!kept_pair(a, p, e, i, I, j, J))
                            continue;
                        double x = 0;
                        for (int64_t c = 0; c < d; c++)
                            x += (double)qi[c] * (double)kg[j * d + c];
                        s[j - j0] = dm.scale * x;
                        mu = s[j - j0] > mu ? s[j - j0] : mu;
                    }
                    if (pass == 0) {
                        m = mu > m ? mu : m;
                        continue;
                    }
                    if (mu == -INFINITY)
                        continue;
                    for (int64_t j = j0; j < j1; j++)
                        l += exp(s[j - j0] - m);
                    if (!quant) {
                        for (int64_t j = j0; j < j1; j++)
                            for (int64_t c = 0; c < d; c++)
                                acc[c] += exp(s[j - j0] - m) * (double)vg[j * d + c];
                        continue;
                    }
                    /* V's scales of block J per channel (all its keys), f32 as quant.fake */
                    for (int64_t c = 0; c < d; c++) {
                        float mv = 0;
                        for (int64_t j = j0; j < j1; j++)
                            mv = fabsf(vg[j * d + c]) > mv ? fabsf(vg[j * d + c]) : mv;
                        t[c] = mv / qmax;
                        if (!(t[c] > 0))
                            t[c] = 1;
                    }
                    double sigma = exp(mu - m) / (double)qmax;
                    for (int64_t c = 0; c < d; c++) {
                        int64_t ia = 0;
                        for (int64_t j = j0; j < j1; j++) {
                            int64_t pc = (int64_t)round((double)qmax * exp(s[j - j0] - mu));
                            float w = roundf(vg[j * d + c] / t[c]);
                            w = w > qmax ? qmax : (w < -qmax ? -qmax : w);
                            ia += pc * (int64_t)w;
                        }
                        acc[c] += sigma * (double)t[c] * (double)ia;
                    }
                }
            }
            float *oi = o + (h * dm.nq + i) * d;
            for (int64_t c = 0; c < d; c++)
                oi[c] = l > 0 ? (float)(acc[c] / l) : 0.f;
            lse[h * dm.nq + i] = l > 0 ? (float)(m + log(l)) : -INFINITY;
        }
    }
    return SL_OK;
}

size_t sl__ref_quant_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)n_threads;
    if (op != SL_OP_QUANT_ATTN_BLOCK)
        return 0;
    const sl_quant_attn_params *p = params;
    int64_t d = in[0].shape[2];
    return sizeof(double) * (size_t)(p->bk + d) + sizeof(float) * (size_t)d + 64;
}
