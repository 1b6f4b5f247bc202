/* ref/ipar.c — the reference kernel of ipar.rectify: plain loops in
 * float64, written from the contract in sparselab.h and the card
 * (rectified_spaattn steps 1-3, 5-8, IPAR's isolated text pooling). */
#include "ref.h"

#include <math.h>
#include <string.h>

/* Mean and mean absolute deviation per channel of rows [r0, r0 + b) of x [*, d]. */
static void stats(const float *x, int64_t r0, int64_t b, int64_t d, double *mean, double *dev)
{
    for (int64_t c = 0; c < d; c++) {
        double m = 0, e = 0;
        for (int64_t r = r0; r < r0 + b; r++)
            m += x[r * d + c];
        m /= (double)b;
        for (int64_t r = r0; r < r0 + b; r++)
            e += fabs(x[r * d + c] - m);
        mean[c] = m;
        if (dev)
            dev[c] = e / (double)b;
    }
}

static double dot(const double *a, const double *b, int64_t d)
{
    double s = 0;
    for (int64_t c = 0; c < d; c++)
        s += a[c] * b[c];
    return s;
}

sl_status sl__ref_ipar_rectify(const sl__kargs *a)
{
    const sl_ipar_rectify_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data, *os = a->in[7].data;
    const int32_t *rp = a->in[3].data, *ci = a->in[4].data;
    int64_t hm = a->in[3].shape[0], b = p->bq, d = dm.d, n = dm.nk;
    int64_t nqb = (n + b - 1) / b, nbv = p->n_video / b, v0 = p->video0, I0 = v0 / b;
    float *o = a->out[0].data, *r_out = a->out[1].data, *rest = a->out[2].data;
    double *km = a->scratch, *ke = km + nbv * d, *vm = ke + nbv * d, *qm = vm + nbv * d, *qe = qm + d, *nsum = qe + d;
    double *lg = nsum + d, *kt = lg + nbv; /* lg: video logits; kt: one text key */
    uint8_t *kept = (uint8_t *)(kt + d);
    memcpy(o, os, sizeof *o * (size_t)(dm.hq * n * d));
    double lb = log((double)b);
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group, mh = h / (dm.hq / hm);
        const float *kg = k + g * n * d, *vg = v + g * n * d;
        for (int64_t J = 0; J < nbv; J++) {
            stats(kg, v0 + J * b, b, d, km + J * d, ke + J * d);
            stats(vg, v0 + J * b, b, d, vm + J * d, NULL);
        }
        for (int64_t I = 0; I < nbv; I++) {
            if (sl_ctx_interrupted(a->ctx))
                return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "ipar.rectify[ref]: interrupted");
            stats(q + h * n * d, v0 + I * b, b, d, qm, qe);
            memset(kept, 0, (size_t)nbv);
            for (int32_t e = rp[mh * (nqb + 1) + I0 + I]; e < rp[mh * (nqb + 1) + I0 + I + 1]; e++)
                if (ci[e] >= I0 && ci[e] < I0 + nbv)
                    kept[ci[e] - I0] = 1;
            double mx = -INFINITY;
            for (int64_t J = 0; J < nbv; J++) {
                lg[J] = dm.scale * dot(qm, km + J * d, d) + lb;
                mx = lg[J] > mx ? lg[J] : mx;
            }
            /* text keys: every token outside the video range, its own logit (two passes: max, then sum) */
            double ptext = 0;
            for (int pass = 0; pass < 2; pass++) {
                for (int64_t t = 0; t < n; t++) {
                    if (t >= v0 && t < v0 + p->n_video)
                        continue;
                    for (int64_t c = 0; c < d; c++)
                        kt[c] = kg[t * d + c];
                    double s = dm.scale * dot(qm, kt, d);
                    if (pass == 0)
                        mx = s > mx ? s : mx;
                    else
                        ptext += exp(s - mx);
                }
            }
            double z = ptext;
            for (int64_t J = 0; J < nbv; J++)
                z += exp(lg[J] - mx);
            double r = ptext / z, restored = 0;
            for (int64_t c = 0; c < d; c++)
                nsum[c] = 0;
            for (int64_t J = 0; J < nbv; J++) {
                double pj = exp(lg[J] - mx) / z;
                const double *kj = km + J * d;
                int trusted = !p->gapr ||
                              fabs(dot(qm, kj, d)) > fabs(dot(qe, kj, d)) + fabs(dot(qm, ke + J * d, d));
                if (kept[J] || !trusted) {
                    r += pj;
                    continue;
                }
                restored += pj;
                for (int64_t c = 0; c < d; c++)
                    nsum[c] += pj * vm[J * d + c];
            }
            r_out[h * nbv + I] = (float)r;
            rest[h * nbv + I] = (float)restored;
            for (int64_t i = v0 + I * b; i < v0 + (I + 1) * b; i++)
                for (int64_t c = 0; c < d; c++) {
                    int64_t x = (h * n + i) * d + c;
                    o[x] = (float)(r * (double)os[x] + nsum[c]);
                }
        }
    }
    return SL_OK;
}

size_t sl__ref_ipar_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)n_threads;
    const sl_ipar_rectify_params *p = params;
    int64_t d = in[0].shape[2], nbv = p->n_video / p->bq;
    return sizeof(double) * (size_t)(3 * nbv * d + 4 * d + nbv) + (size_t)nbv + 64;
}
