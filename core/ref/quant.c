/* ref/quant.c — the reference kernel of quant.fake: per head and group of
 * rows the f32 step from the group's max |x|, then every element rounded
 * to the grid (the contract's f32 arithmetic, written out element by element). */
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

size_t sl__ref_quant_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
