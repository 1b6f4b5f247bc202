/* cpu/metric.c — the cpu kernels of the metric family. Sums run in float64
 * in element order, so a metric of the same tensors is the same number on
 * every run and thread count; cosine scores its rows on the thread pool into
 * a buffer and averages them in row order. */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <stdlib.h>

/* Sum of squared differences and of squared references over [0, n). */
static void sq_sums(const float *x, const float *y, int64_t n, double *diff2, double *ref2)
{
    double a = 0, b = 0;
    for (int64_t i = 0; i < n; i++) {
        double yi = y[i], e = (double)x[i] - yi;
        a += e * e;
        b += yi * yi;
    }
    *diff2 = a;
    *ref2 = b;
}

sl_status sl__cpu_metric_rel_l2(const sl__kargs *a)
{
    const sl_metric_params *p = a->params;
    double diff2, ref2;
    sq_sums(a->in[0].data, a->in[1].data, sl_tensor_numel(&a->in[0]), &diff2, &ref2);
    *(double *)a->out[0].data = sqrt(diff2) / (sqrt(ref2) + p->eps);
    return SL_OK;
}

sl_status sl__cpu_metric_max_abs(const sl__kargs *a)
{
    const float *x = a->in[0].data, *y = a->in[1].data;
    double worst = 0;
    for (int64_t i = 0, n = sl_tensor_numel(&a->in[0]); i < n; i++)
        worst = fmax(worst, fabs((double)x[i] - (double)y[i]));
    *(double *)a->out[0].data = worst;
    return SL_OK;
}

typedef struct cos_job {
    const float *x, *y;
    int64_t d;
    double eps;
    double *row;
} cos_job;

static void cos_row(int64_t r, void *ud, int thread)
{
    (void)thread;
    const cos_job *j = ud;
    const float *u = j->x + r * j->d, *w = j->y + r * j->d;
    double uw = 0, uu = 0, ww = 0;
    for (int64_t c = 0; c < j->d; c++) {
        uw += (double)u[c] * (double)w[c];
        uu += (double)u[c] * (double)u[c];
        ww += (double)w[c] * (double)w[c];
    }
    /* two zero rows (fully masked in both) agree exactly */
    j->row[r] = uu == 0 && ww == 0 ? 1.0 : uw / (sqrt(uu) * sqrt(ww) + j->eps);
}

sl_status sl__cpu_metric_cosine(const sl__kargs *a)
{
    const sl_metric_params *p = a->params;
    const sl_tensor *t = &a->in[0];
    int64_t d = t->ndim ? t->shape[t->ndim - 1] : 1, rows = d ? sl_tensor_numel(t) / d : 0;
    double *out = a->out[0].data;
    if (rows == 0) {
        out[0] = out[1] = 1.0;
        return SL_OK;
    }
    cos_job j = {a->in[0].data, a->in[1].data, d, p->eps, malloc(sizeof(double) * (size_t)rows)};
    if (!j.row)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "metric.cosine[cpu]: out of memory for %lld rows", (long long)rows);
    sl_status s = sl__cpu_parallel(a->ctx, rows, cos_row, &j);
    if (s == SL_OK) {
        double sum = 0, lo = INFINITY;
        for (int64_t r = 0; r < rows; r++) {
            sum += j.row[r];
            lo = fmin(lo, j.row[r]);
        }
        out[0] = sum / (double)rows;
        out[1] = lo;
    }
    free(j.row);
    return s;
}

sl_status sl__cpu_metric_recall(const sl__kargs *a)
{
    const float *lse = a->in[0].data, *lse_ref = a->in[1].data;
    double sum = 0, lo = INFINITY;
    int64_t used = 0;
    for (int64_t i = 0, n = sl_tensor_numel(&a->in[0]); i < n; i++) {
        if (!isfinite(lse_ref[i]))
            continue; /* the reference kept no mass in this row */
        double kept = exp((double)lse[i] - (double)lse_ref[i]);
        sum += kept;
        lo = fmin(lo, kept);
        used++;
    }
    double *out = a->out[0].data;
    out[0] = used ? sum / (double)used : 1.0;
    out[1] = used ? lo : 1.0;
    return SL_OK;
}

size_t sl__cpu_metric_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
