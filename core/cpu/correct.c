/* cpu/correct.c — the corrections (correct.*) on the CPU: element-wise
 * passes over the sparse output, threaded over (head, row chunk) items. */
#include "cpu.h"

#include <string.h>

#define DELTA_ROWS 256 /* rows per work item of correct.delta */

typedef struct delta_job {
    const sl__kargs *a;
    int64_t n, d, s_p, g_n, r_n, items_per_head;
} delta_job;

static void delta_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const delta_job *j = ud;
    const sl_correct_delta_params *p = j->a->params;
    const float *os = j->a->in[0].data, *ls = j->a->in[1].data, *orw = j->a->in[2].data, *lr = j->a->in[3].data;
    float *o = j->a->out[0].data, *lse = j->a->out[1].data;
    int64_t h = item / j->items_per_head, i0 = (item % j->items_per_head) * DELTA_ROWS, d = j->d, gamma = p->gamma;
    int64_t i1 = i0 + DELTA_ROWS < j->n ? i0 + DELTA_ROWS : j->n;
    const float *rows = orw + h * j->r_n * d;
    for (int64_t i = i0; i < i1; i++) {
        float *oi = o + (h * j->n + i) * d;
        const float *si = os + (h * j->n + i) * d;
        int64_t dense_row = i >= j->s_p ? j->g_n + (i - j->s_p) : i % gamma == 0 ? i / gamma : -1;
        if (dense_row >= 0) {
            /* sampled and tail rows are the dense rows themselves */
            memcpy(oi, rows + dense_row * d, (size_t)d * sizeof *oi);
            lse[h * j->n + i] = lr[h * j->r_n + dense_row];
            continue;
        }
        lse[h * j->n + i] = ls[h * j->n + i];
        if (p->mode == 1) {
            memcpy(oi, si, (size_t)d * sizeof *oi);
            continue;
        }
        int64_t g = i / gamma;
        const float *a1 = rows + g * d, *s1 = os + (h * j->n + g * gamma) * d;
        if (!p->smooth) {
            for (int64_t c = 0; c < d; c++)
                oi[c] = si[c] + (a1[c] - s1[c]);
            continue;
        }
        int64_t g2 = g + 1 < j->g_n ? g + 1 : g;
        const float *a2 = rows + g2 * d, *s2 = os + (h * j->n + g2 * gamma) * d;
        float r = (float)(i % gamma) / (float)gamma;
        for (int64_t c = 0; c < d; c++)
            oi[c] = si[c] + (1.0f - r) * (a1[c] - s1[c]) + r * (a2[c] - s2[c]);
    }
}

sl_status sl__cpu_correct_delta(const sl__kargs *a)
{
    const sl_correct_delta_params *p = a->params;
    delta_job j = {.a = a, .n = a->in[0].shape[1], .d = a->in[0].shape[2]};
    int64_t t;
    sl_correct_delta_layout(j.n, p->gamma, p->tail, &j.s_p, &j.g_n, &t);
    j.r_n = j.g_n + t;
    j.items_per_head = (j.n + DELTA_ROWS - 1) / DELTA_ROWS;
    return sl__cpu_parallel(a->ctx, j.items_per_head * a->in[0].shape[0], delta_item, &j);
}
