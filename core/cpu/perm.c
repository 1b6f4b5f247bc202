/* cpu/perm.c — the cpu kernel of perm.apply: one work item per (head, chunk
 * of 256 positions), each row moved with memcpy. */
#include "cpu.h"
#include "parallel.h"

#include <string.h>

#define PERM_CHUNK 256

static void perm_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_perm_params *p = a->params;
    const sl_tensor *x = &a->in[0], *perm = &a->in[1];
    int64_t H = x->shape[0], n = x->shape[1], d = x->ndim == 3 ? x->shape[2] : 1, P = perm->shape[0];
    int64_t chunks = (n + PERM_CHUNK - 1) / PERM_CHUNK, h = item / chunks, t0 = (item % chunks) * PERM_CHUNK;
    int64_t t1 = t0 + PERM_CHUNK < n ? t0 + PERM_CHUNK : n;
    const float *src = (const float *)x->data + h * n * d;
    float *dst = (float *)a->out[0].data + h * n * d;
    const int32_t *row = (const int32_t *)perm->data + (h / (H / P)) * n;
    size_t bytes = sizeof *dst * (size_t)d;
    if (p->inverse)
        for (int64_t t = t0; t < t1; t++)
            memcpy(dst + (int64_t)row[t] * d, src + t * d, bytes);
    else
        for (int64_t t = t0; t < t1; t++)
            memcpy(dst + t * d, src + (int64_t)row[t] * d, bytes);
}

sl_status sl__cpu_perm_apply(const sl__kargs *a)
{
    int64_t n = a->in[0].shape[1];
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * ((n + PERM_CHUNK - 1) / PERM_CHUNK), perm_item, (void *)a);
}

size_t sl__cpu_perm_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
