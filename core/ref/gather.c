/* ref/gather.c — the reference kernel of gather.rows: y[h, t] =
 * x[h / (Hi / Hx), idx[h, t]], element by element. */
#include "ref.h"

#include <string.h>

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

size_t sl__ref_gather_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
