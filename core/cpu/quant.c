/* cpu/quant.c — the cpu kernel of quant.fake: one work item per (head,
 * group of rows): the group's max |x|, then the rounding pass. */
#include "cpu.h"
#include "parallel.h"

#include <math.h>

static void quant_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_quant_fake_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t n = x->shape[1], d = x->shape[2], groups = (n + p->group - 1) / p->group;
    int64_t h = item / groups, r0 = (item % groups) * p->group, r1 = r0 + p->group < n ? r0 + p->group : n;
    const float *src = (const float *)x->data + (h * n + r0) * d;
    float *dst = (float *)a->out[0].data + (h * n + r0) * d;
    int64_t len = (r1 - r0) * d;
    float qmax = (float)((1 << (p->bits - 1)) - 1), m = 0;
    for (int64_t i = 0; i < len; i++)
        m = fmaxf(m, fabsf(src[i]));
    float step = m / qmax;
    if (!(step > 0))
        step = 1;
    for (int64_t i = 0; i < len; i++)
        dst[i] = fminf(fmaxf(roundf(src[i] / step), -qmax), qmax) * step;
}

sl_status sl__cpu_quant_fake(const sl__kargs *a)
{
    const sl_quant_fake_params *p = a->params;
    int64_t n = a->in[0].shape[1];
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * ((n + p->group - 1) / p->group), quant_item, (void *)a);
}

size_t sl__cpu_quant_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
