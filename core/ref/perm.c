/* ref/perm.c — the reference kernel of perm.apply: element by element,
 * gather (y[h, t] = x[h, perm[g, t]]) or scatter (y[h, perm[g, t]] = x[h, t]). */
#include "ref.h"

sl_status sl__ref_perm_apply(const sl__kargs *a)
{
    const sl_perm_params *p = a->params;
    const sl_tensor *x = &a->in[0], *perm = &a->in[1];
    int64_t H = x->shape[0], n = x->shape[1], d = x->ndim == 3 ? x->shape[2] : 1, P = perm->shape[0];
    const float *src = x->data;
    const int32_t *ix = perm->data;
    float *out = a->out[0].data;
    for (int64_t h = 0; h < H; h++) {
        const int32_t *row = ix + (h / (H / P)) * n;
        for (int64_t t = 0; t < n; t++)
            for (int64_t c = 0; c < d; c++) {
                if (p->inverse)
                    out[(h * n + row[t]) * d + c] = src[(h * n + t) * d + c];
                else
                    out[(h * n + t) * d + c] = src[(h * n + row[t]) * d + c];
            }
    }
    return SL_OK;
}

size_t sl__ref_perm_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
