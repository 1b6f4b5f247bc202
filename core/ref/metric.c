/* ref/metric.c — metrics comparing an output with a reference, float64 sums.
 * Metrics are not hot, so the cpu backend uses these kernels too. */
#include "ref.h"

#include <math.h>

sl_status sl__ref_metric_rel_l2(const sl__kargs *a)
{
    const sl_metric_params *p = a->params;
    const float *x = a->in[0].data, *y = a->in[1].data;
    int64_t n = sl_tensor_numel(&a->in[0]);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)x[i] - (double)y[i];
        num += e * e;
        den += (double)y[i] * (double)y[i];
    }
    ((double *)a->out[0].data)[0] = sqrt(num) / (sqrt(den) + p->eps);
    return SL_OK;
}

sl_status sl__ref_metric_max_abs(const sl__kargs *a)
{
    const float *x = a->in[0].data, *y = a->in[1].data;
    int64_t n = sl_tensor_numel(&a->in[0]);
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)x[i] - (double)y[i]);
        if (e > m)
            m = e;
    }
    ((double *)a->out[0].data)[0] = m;
    return SL_OK;
}

sl_status sl__ref_metric_cosine(const sl__kargs *a)
{
    const sl_metric_params *p = a->params;
    const float *x = a->in[0].data, *y = a->in[1].data;
    const sl_tensor *t = &a->in[0];
    int64_t d = t->ndim ? t->shape[t->ndim - 1] : 1;
    int64_t rows = d ? sl_tensor_numel(t) / d : 0;
    double sum = 0, mn = INFINITY;
    for (int64_t r = 0; r < rows; r++) {
        double xy = 0, xx = 0, yy = 0;
        for (int64_t c = 0; c < d; c++) {
            double u = x[r * d + c], w = y[r * d + c];
            xy += u * w;
            xx += u * u;
            yy += w * w;
        }
        /* Two zero rows (fully masked in both) agree exactly. */
        double cs = (xx == 0 && yy == 0) ? 1.0 : xy / (sqrt(xx) * sqrt(yy) + p->eps);
        sum += cs;
        if (cs < mn)
            mn = cs;
    }
    double *out = a->out[0].data;
    out[0] = rows ? sum / (double)rows : 1.0;
    out[1] = rows ? mn : 1.0;
    return SL_OK;
}

sl_status sl__ref_metric_recall(const sl__kargs *a)
{
    const float *ls = a->in[0].data, *ld = a->in[1].data;
    int64_t n = sl_tensor_numel(&a->in[0]), counted = 0;
    double sum = 0, mn = INFINITY;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(ld[i]))
            continue; /* no mass to recall */
        double r = exp((double)ls[i] - (double)ld[i]);
        sum += r;
        if (r < mn)
            mn = r;
        counted++;
    }
    double *out = a->out[0].data;
    out[0] = counted ? sum / (double)counted : 1.0;
    out[1] = counted ? mn : 1.0;
    return SL_OK;
}

size_t sl__ref_metric_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
