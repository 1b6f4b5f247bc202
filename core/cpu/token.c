/* cpu/token.c — the cpu kernel of token.scatter: the base copy in row
 * chunks, then the indexed rows in parallel (distinct indices: no two items
 * write the same row). */
#include "cpu.h"
#include "parallel.h"

#include <string.h>

#define ROWS_PER_ITEM 256

static void copy_item(int64_t i, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_tensor *x = &a->in[0];
    int64_t n = x->shape[0], d = x->shape[1], r0 = i * ROWS_PER_ITEM;
    int64_t rows = n - r0 < ROWS_PER_ITEM ? n - r0 : ROWS_PER_ITEM;
    memcpy((float *)a->out[0].data + r0 * d, (const float *)x->data + r0 * d, sizeof(float) * (size_t)(rows * d));
}

static void scatter_item(int64_t t, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_token_scatter_params *p = a->params;
    int64_t d = a->in[0].shape[1];
    int64_t r = ((const int32_t *)a->in[2].data)[t];
    const float *src = (const float *)a->in[1].data + t * d;
    float *dst = (float *)a->out[0].data + r * d;
    if (p->add) {
        for (int64_t c = 0; c < d; c++)
            dst[c] += src[c];
    } else {
        memcpy(dst, src, sizeof *dst * (size_t)d);
    }
}

sl_status sl__cpu_token_scatter(const sl__kargs *a)
{
    int64_t n = a->in[0].shape[0];
    sl_status s = sl__cpu_parallel(a->ctx, (n + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM, copy_item, (void *)a);
    if (s)
        return s;
    return sl__cpu_parallel(a->ctx, a->in[2].shape[0], scatter_item, (void *)a);
}

size_t sl__cpu_token_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
