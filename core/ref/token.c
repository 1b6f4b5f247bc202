/* ref/token.c — the reference kernel of token.scatter: every element of the
 * output written once from x, then each indexed row overwritten by y or
 * summed with it in float64, element by element. */
#include "ref.h"

sl_status sl__ref_token_scatter(const sl__kargs *a)
{
    const sl_token_scatter_params *p = a->params;
    const sl_tensor *x = &a->in[0], *y = &a->in[1], *idx = &a->in[2];
    int64_t n = x->shape[0], d = x->shape[1], m = y->shape[0];
    const float *xs = x->data, *ys = y->data;
    const int32_t *ix = idx->data;
    float *out = a->out[0].data;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < d; c++)
            out[r * d + c] = xs[r * d + c];
    for (int64_t t = 0; t < m; t++) {
        int64_t r = ix[t];
        for (int64_t c = 0; c < d; c++) {
            double v = (double)ys[t * d + c];
            if (p->add)
                v += (double)xs[r * d + c];
            out[r * d + c] = (float)v;
        }
    }
    return SL_OK;
}

size_t sl__ref_token_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
