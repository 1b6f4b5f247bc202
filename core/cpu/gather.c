/* cpu/gather.c — the cpu kernel of gather.rows: one item per output head,
 * each index row copied with memcpy. */
#include "cpu.h"
#include "parallel.h"

#include <string.h>

static void gather_item(int64_t h, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_tensor *x = &a->in[0], *idx = &a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hi = idx->shape[0], m = idx->shape[1];
    const float *src = (const float *)x->data + (h / (hi / hx)) * n * d;
    const int32_t *ix = (const int32_t *)idx->data + h * m;
    float *out = (float *)a->out[0].data + h * m * d;
    for (int64_t t = 0; t < m; t++)
        memcpy(out + t * d, src + (int64_t)ix[t] * d, sizeof *out * (size_t)d);
}

sl_status sl__cpu_gather_rows(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[1].shape[0], gather_item, (void *)a);
}

size_t sl__cpu_gather_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
