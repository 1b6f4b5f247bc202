/* ref/pool.c — the reference kernel of pool.tokens: per (head, block or
 * segment) a float64 mean, max or min of the (optionally L2-normalised)
 * token vectors, times sqrt(len) when asked. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Segment s of pool.tokens: [*t0, *t1). */
static void segment(const sl_tensor *bounds, int64_t block, int64_t n, int64_t s, int64_t *t0, int64_t *t1)
{
    if (bounds->buf) {
        const int32_t *b = bounds->data;
        int64_t S = bounds->shape[0];
        *t0 = b[s];
        *t1 = s + 1 < S ? b[s + 1] : n;
    } else {
        *t0 = s * block;
        *t1 = *t0 + block < n ? *t0 + block : n;
    }
}

sl_status sl__ref_pool_tokens(const sl__kargs *a)
{
    const sl_pool_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2], S = a->out[0].shape[1];
    const float *X = x->data;
    float *out = a->out[0].data;
    double *acc = malloc(sizeof *acc * (size_t)(d > 0 ? d : 1));
    if (!acc)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "pool.tokens[ref]: out of memory");
    for (int64_t h = 0; h < H; h++)
        for (int64_t s = 0; s < S; s++) {
            int64_t t0, t1;
            segment(&a->in[1], p->block, n, s, &t0, &t1);
            for (int64_t c = 0; c < d; c++)
                acc[c] = p->mode == 1 ? -INFINITY : p->mode == 2 ? INFINITY : 0.0;
            for (int64_t t = t0; t < t1; t++) {
                const float *row = X + (h * n + t) * d;
                double inv = 1.0;
                if (p->normalize) {
                    double ss = 0;
                    for (int64_t c = 0; c < d; c++)
                        ss += (double)row[c] * row[c];
                    inv = ss > 0 ? 1.0 / sqrt(ss) : 0.0;
                }
                for (int64_t c = 0; c < d; c++) {
                    double v = row[c] * inv;
                    if (p->mode == 1)
                        acc[c] = v > acc[c] ? v : acc[c];
                    else if (p->mode == 2)
                        acc[c] = v < acc[c] ? v : acc[c];
                    else
                        acc[c] += v;
                }
            }
            double len = (double)(t1 - t0), mul = p->len_norm ? sqrt(len) : 1.0;
            for (int64_t c = 0; c < d; c++)
                out[(h * S + s) * d + c] = (float)((p->mode == 0 ? acc[c] / len : acc[c]) * mul);
        }
    free(acc);
    return SL_OK;
}

size_t sl__ref_pool_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
