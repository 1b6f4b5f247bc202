/* cpu/pool.c — the cpu kernel of pool.tokens: items of (head, segment) on
 * the thread pool, float64 sums of each segment's token vectors. */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- pool.tokens ---- */

typedef struct pool_job {
    const sl__kargs *a;
    double *acc; /* d doubles per thread */
} pool_job;

static void pool_item(int64_t item, void *ud, int thread)
{
    const pool_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_pool_params *p = a->params;
    int64_t n = a->in[0].shape[1], d = a->in[0].shape[2], S = a->out[0].shape[1];
    int64_t h = item / S, s = item % S, t0, t1;
    if (a->in[1].buf) {
        const int32_t *b = a->in[1].data;
        t0 = b[s];
        t1 = s + 1 < S ? b[s + 1] : n;
    } else {
        t0 = s * p->block;
        t1 = t0 + p->block < n ? t0 + p->block : n;
    }
    double *acc = j->acc + (size_t)thread * (size_t)d;
    for (int64_t c = 0; c < d; c++)
        acc[c] = p->mode == 1 ? -INFINITY : p->mode == 2 ? INFINITY : 0.0;
    const float *X = (const float *)a->in[0].data + h * n * d;
    for (int64_t t = t0; t < t1; t++) {
        const float *row = X + t * d;
        double inv = 1.0;
        if (p->normalize) {
            /* four partial sums: one serial float64 chain per token was most of a
             * normalised pool (5.9 of 7 ms for 8 heads x 8192 x 64; issue 20,
             * session 5); the order differs from ref's only in float64 rounding */
            double s4[4] = {0, 0, 0, 0};
            int64_t c = 0;
            for (; c + 4 <= d; c += 4)
                for (int l = 0; l < 4; l++)
                    s4[l] += (double)row[c + l] * row[c + l];
            for (; c < d; c++)
                s4[0] += (double)row[c] * row[c];
            double ss = (s4[0] + s4[1]) + (s4[2] + s4[3]);
            inv = ss > 0 ? 1.0 / sqrt(ss) : 0.0;
        }
        if (p->mode == 0) {
            int64_t c = 0; /* unrolled by 4 (vectorisable; each channel's order unchanged) */
            for (; c + 4 <= d; c += 4)
                for (int l = 0; l < 4; l++)
                    acc[c + l] += row[c + l] * inv;
            for (; c < d; c++)
                acc[c] += row[c] * inv;
        }
        else if (p->mode == 1)
            for (int64_t c = 0; c < d; c++)
                acc[c] = fmax(acc[c], row[c] * inv);
        else
            for (int64_t c = 0; c < d; c++)
                acc[c] = fmin(acc[c], row[c] * inv);
    }
    double len = (double)(t1 - t0), mul = p->len_norm ? sqrt(len) : 1.0;
    float *out = (float *)a->out[0].data + item * d;
    for (int64_t c = 0; c < d; c++)
        out[c] = (float)((p->mode == 0 ? acc[c] / len : acc[c]) * mul);
}

sl_status sl__cpu_pool_tokens(const sl__kargs *a)
{
    int64_t d = a->in[0].shape[2], items = a->out[0].shape[0] * a->out[0].shape[1];
    int nt = sl_ctx_threads(a->ctx);
    size_t bytes = sizeof(double) * (size_t)(d > 0 ? d : 1) * (size_t)(nt > 0 ? nt : 1);
    pool_job j = {a, sl_ctx_alloc(a->ctx, bytes)};
    if (!j.acc)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "pool.tokens[cpu]: out of memory for %zu bytes", bytes);
    sl_status s = sl__cpu_parallel(a->ctx, items, pool_item, &j);
    sl_ctx_dealloc(a->ctx, j.acc, bytes);
    return s;
}

size_t sl__cpu_pool_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
