/* ref/mm.c — reference kernels of the mm family (issue 17): the weight is
 * decoded to a dense float64 row, then a plain float64 dot product per
 * output; the encoders select by literal comparisons. The contract is in
 * sparselab.h. */
#include "ref.h"

#include <math.h>
#include <string.h>

sl_status sl__ref_mm_dense(const sl__kargs *a)
{
    const float *x = a->in[0].data, *w = a->in[1].data;
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0];
    float *y = a->out[0].data;
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < N; r++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (double)x[t * K + k] * w[r * K + k];
            y[t * N + r] = (float)s;
        }
    return SL_OK;
}

sl_status sl__ref_mm_nm_encode(const sl__kargs *a)
{
    const sl_mm_nm_params *p = a->params;
    const float *w = a->in[0].data;
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], m = p->m, n = p->n, G = (K + m - 1) / m;
    float *vals = a->out[0].data;
    uint8_t *pos = a->out[1].data;
    for (int64_t r = 0; r < N; r++)
        for (int64_t g = 0; g < G; g++) {
            int64_t c0 = g * m, width = K - c0 < m ? K - c0 : m;
            float *v = vals + (r * G + g) * n;
            uint8_t *q = pos + (r * G + g) * n;
            int64_t s = 0;
            /* column i is kept iff fewer than n columns of the group beat it:
             * a larger |w|, or an equal |w| at a lower column */
            for (int64_t i = 0; i < width; i++) {
                double wi = fabs((double)w[r * K + c0 + i]);
                int64_t beat = 0;
                for (int64_t j = 0; j < width; j++) {
                    double wj = fabs((double)w[r * K + c0 + j]);
                    beat += wj > wi || (wj == wi && j < i);
                }
                if (beat < n) {
                    v[s] = w[r * K + c0 + i];
                    q[s++] = (uint8_t)i;
                }
            }
            for (; s < n; s++)
                v[s] = 0, q[s] = 0;
        }
    return SL_OK;
}

sl_status sl__ref_mm_nm(const sl__kargs *a)
{
    /* y[t, r] = sum over the slots (g, s) of vals . x[t, g.m + pos]: every
     * slot's product is formed, padding slots included */
    const sl_mm_nm_params *p = a->params;
    const float *x = a->in[0].data, *vals = a->in[1].data;
    const uint8_t *pos = a->in[2].data;
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0], m = p->m, n = p->n;
    int64_t G = (K + m - 1) / m;
    float *y = a->out[0].data;
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < N; r++) {
            double acc = 0;
            for (int64_t g = 0; g < G; g++)
                for (int64_t s = 0; s < n; s++)
                    acc += (double)vals[(r * G + g) * n + s] * x[t * K + g * m + pos[(r * G + g) * n + s]];
            y[t * N + r] = (float)acc;
        }
    return SL_OK;
}

sl_status sl__ref_mm_bitmap_encode(const sl__kargs *a)
{
    const float *w = a->in[0].data;
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], nw = a->out[0].shape[1], cap = a->out[1].shape[1];
    int32_t *bits = a->out[0].data;
    float *vals = a->out[1].data;
    for (int64_t r = 0; r < N; r++) {
        int64_t c = 0;
        for (int64_t j = 0; j < nw; j++)
            bits[r * nw + j] = 0;
        for (int64_t k = 0; k < K; k++)
            if (w[r * K + k] != 0) {
                bits[r * nw + k / 32] = (int32_t)((uint32_t)bits[r * nw + k / 32] | (1u << (k % 32)));
                vals[r * cap + c++] = w[r * K + k];
            }
        for (; c < cap; c++)
            vals[r * cap + c] = 0;
    }
    return SL_OK;
}

sl_status sl__ref_mm_bitmap(const sl__kargs *a)
{
    /* y[t, r] = sum over the set bits k of row r of vals[r, c] . x[t, k],
     * c counting the set bits before k */
    const float *x = a->in[0].data, *vals = a->in[2].data;
    const int32_t *bits = a->in[1].data;
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0], nw = a->in[1].shape[1];
    int64_t cap = a->in[2].shape[1];
    float *y = a->out[0].data;
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < N; r++) {
            double acc = 0;
            int64_t c = 0;
            for (int64_t k = 0; k < K; k++)
                if (((uint32_t)bits[r * nw + k / 32] >> (k % 32)) & 1u)
                    acc += (double)vals[r * cap + c++] * x[t * K + k];
            y[t * N + r] = (float)acc;
        }
    return SL_OK;
}

sl_status sl__ref_mm_act_sparse(const sl__kargs *a)
{
    const float *x = a->in[0].data, *wt = a->in[1].data;
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[1];
    float *y = a->out[0].data;
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < N; c++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                if (x[t * K + k] != 0)
                    s += (double)x[t * K + k] * wt[k * N + c];
            y[t * N + c] = (float)s;
        }
    return SL_OK;
}

sl_status sl__ref_mm_out_sparse(const sl__kargs *a)
{
    const float *x = a->in[0].data, *w = a->in[1].data, *g = a->in[3].buf ? a->in[3].data : NULL;
    const int32_t *sel = a->in[2].data;
    int64_t T = a->in[0].shape[0], K = a->in[0].shape[1], N = a->in[1].shape[0], S = a->in[2].shape[1];
    float *y = a->out[0].data;
    for (int64_t i = 0; i < T * N; i++)
        y[i] = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < S; j++) {
            int32_t r = sel[t * S + j];
            if (r < 0)
                continue;
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (double)x[t * K + k] * w[r * K + k];
            y[t * N + r] = g ? (float)s * g[t * N + r] : (float)s;
        }
    return SL_OK;
}

/* mm.moe: the per-token loop over the routed experts and their units, in
 * float64 (no sorting, no grouping: the grouped executors must equal it). */
sl_status sl__ref_mm_moe(const sl__kargs *a)
{
    const float *x = a->in[0].data, *w1 = a->in[1].data, *w3 = a->in[2].data, *w2t = a->in[3].data;
    const float *rw = a->in[6].buf ? a->in[6].data : NULL;
    const int32_t *offs = a->in[4].data, *route = a->in[5].data;
    int64_t T = a->in[0].shape[0], D = a->in[0].shape[1], k = a->in[5].shape[1];
    float *y = a->out[0].data;
    double *acc = sl_ctx_alloc(a->ctx, sizeof *acc * (size_t)(D ? D : 1));
    if (!acc)
        return SL_ENOMEM;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * D;
        for (int64_t d = 0; d < D; d++)
            acc[d] = 0;
        for (int64_t j = 0; j < k; j++) {
            int32_t e = route[t * k + j];
            if (e < 0)
                continue;
            double p = rw ? rw[t * k + j] : 1.0;
            for (int64_t i = offs[e]; i < offs[e + 1]; i++) {
                double g = 0, u = 0;
                for (int64_t d = 0; d < D; d++) {
                    g += (double)xt[d] * w1[i * D + d];
                    u += (double)xt[d] * w3[i * D + d];
                }
                double h = p * g / (1.0 + exp(-g)) * u;
                for (int64_t d = 0; d < D; d++)
                    acc[d] += h * w2t[i * D + d];
            }
        }
        for (int64_t d = 0; d < D; d++)
            y[t * D + d] = (float)acc[d];
    }
    sl_ctx_dealloc(a->ctx, acc, sizeof *acc * (size_t)(D ? D : 1));
    return SL_OK;
}

size_t sl__ref_mm_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
