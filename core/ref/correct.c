/* ref/correct.c — reference kernels of the corrections (correct.*): plain
 * loops, float64 arithmetic, written from the contracts in sparselab.h and
 * the method cards (delta_attention, ...), not from the cpu kernels. */
#include "ref.h"

#include <math.h>
#include <string.h>

/* correct.delta (card delta_attention, steps 5-8). */
sl_status sl__ref_correct_delta(const sl__kargs *a)
{
    const sl_correct_delta_params *p = a->params;
    const float *os = a->in[0].data, *ls = a->in[1].data, *orw = a->in[2].data, *lr = a->in[3].data;
    float *o = a->out[0].data, *lse = a->out[1].data;
    int64_t h_n = a->in[0].shape[0], n = a->in[0].shape[1], d = a->in[0].shape[2], s_p, g_n, t;
    int64_t gamma = p->gamma;
    sl_correct_delta_layout(n, gamma, p->tail, &s_p, &g_n, &t);
    int64_t r_n = g_n + t;
    for (int64_t h = 0; h < h_n; h++)
        for (int64_t i = 0; i < n; i++) {
            float *oi = o + (h * n + i) * d;
            const float *si = os + (h * n + i) * d;
            int64_t dense_row = -1; /* index into the rows of o_rows, or -1 */
            if (i >= s_p)
                dense_row = g_n + (i - s_p);
            else if (i % gamma == 0)
                dense_row = i / gamma;
            if (dense_row >= 0) {
                memcpy(oi, orw + (h * r_n + dense_row) * d, (size_t)d * sizeof *oi);
                lse[h * n + i] = lr[h * r_n + dense_row];
                continue;
            }
            lse[h * n + i] = ls[h * n + i];
            if (p->mode == 1) {
                memcpy(oi, si, (size_t)d * sizeof *oi);
                continue;
            }
            int64_t g = i / gamma, g2 = g + 1 < g_n ? g + 1 : g;
            double r = p->smooth ? (double)(i % gamma) / (double)gamma : 0.0;
            const float *a1 = orw + (h * r_n + g) * d, *s1 = os + (h * n + g * gamma) * d;
            const float *a2 = orw + (h * r_n + g2) * d, *s2 = os + (h * n + g2 * gamma) * d;
            for (int64_t c = 0; c < d; c++) {
                double d1 = (double)a1[c] - (double)s1[c], d2 = (double)a2[c] - (double)s2[c];
                oi[c] = (float)((double)si[c] + (1.0 - r) * d1 + r * d2);
            }
        }
    return SL_OK;
}
