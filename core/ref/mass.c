/* ref/mass.c — the reference kernel of mass.blocks: for every row its
 * scores in float64, exp(score - lse) added into the key blocks. */
#include "ref.h"

#include <math.h>

sl_status sl__ref_mass_blocks(const sl__kargs *a)
{
    const sl_mass_blocks_params *p = a->params;
    const sl_tensor *q = &a->in[0], *k = &a->in[1];
    sl__attn_dims dm = sl__attn_dims_of(q, k, p->scale);
    int64_t nqb = (dm.nq + p->bq - 1) / p->bq, nkb = (dm.nk + p->bk - 1) / p->bk;
    const float *qd = q->data, *kd = k->data, *lse = a->in[2].data;
    float *out = a->out[0].data;
    double *acc = a->scratch;
    for (int64_t h = 0; h < dm.hq; h++) {
        const float *kh = kd + (h / dm.group) * dm.nk * dm.d;
        for (int64_t r = 0; r < nqb; r++) {
            for (int64_t c = 0; c < nkb; c++)
                acc[c] = 0;
            for (int64_t i = r * p->bq; i < (r + 1) * p->bq && i < dm.nq; i++) {
                double l = lse[h * dm.nq + i];
                if (isinf(l))
                    continue;
                int64_t lim = p->causal ? dm.offset + i + 1 : dm.nk;
                if (lim > dm.nk)
                    lim = dm.nk;
                const float *qi = qd + (h * dm.nq + i) * dm.d;
                for (int64_t j = 0; j < lim; j++) {
                    double s = 0;
                    for (int64_t c = 0; c < dm.d; c++)
                        s += (double)qi[c] * (double)kh[j * dm.d + c];
                    acc[j / p->bk] += exp(dm.scale * s - l);
                }
            }
            for (int64_t c = 0; c < nkb; c++)
                out[(h * nqb + r) * nkb + c] = (float)acc[c];
        }
    }
    return SL_OK;
}

size_t sl__ref_mass_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)n_threads;
    const sl_mass_blocks_params *p = params;
    return sizeof(double) * (size_t)((in[1].shape[1] + p->bk - 1) / p->bk);
}
