/* ref/act.c — reference kernels of the act family (issue 17): act.topk by
 * counting, for every entry, the entries that rank above it; act.threshold
 * and act.delta literally (act.delta in float32, as the contract says). Contracts in sparselab.h. */
#include "ref.h"
#include "../act_quantile.h"

#include <math.h>

sl_status sl__ref_act_topk(const sl__kargs *a)
{
    const sl_act_topk_params *p = a->params;
    const float *x = a->in[0].data;
    float *y = a->out[0].data;
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1];
    for (int64_t t = 0; t < T; t++) {
        const float *r = x + t * m;
        for (int64_t i = 0; i < m; i++) {
            double si = p->abs ? fabs((double)r[i]) : r[i];
            int64_t above = 0;
            for (int64_t j = 0; j < m && above < p->k; j++) {
                double sj = p->abs ? fabs((double)r[j]) : r[j];
                above += sj > si || (sj == si && j < i);
            }
            y[t * m + i] = above < p->k ? r[i] : 0.f;
        }
    }
    return SL_OK;
}

sl_status sl__ref_act_threshold(const sl__kargs *a)
{
    const float *x = a->in[0].data, *th = a->in[1].data;
    float *y = a->out[0].data;
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1];
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < m; j++)
            y[t * m + j] = fabs((double)x[t * m + j]) >= th[j] ? x[t * m + j] : 0.f;
    return SL_OK;
}

sl_status sl__ref_act_delta(const sl__kargs *a)
{
    const float *x = a->in[0].data, *th = a->in[1].data;
    float *delta = a->out[0].data, *xhat = a->out[1].data;
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1];
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < m; j++) {
            float ref = t ? xhat[(t - 1) * m + j] : 0.f;
            float d = t ? x[t * m + j] - ref : x[j];
            float sent = t == 0 || fabsf(d) > th[j] ? d : 0.f;
            delta[t * m + j] = sent;
            xhat[t * m + j] = t ? ref + sent : x[j];
        }
    return SL_OK;
}

/* act.stat_topk: two passes per row in float64 (mean, then the population
 * variance around it), then the shifted ReLU. */
sl_status sl__ref_act_stat_topk(const sl__kargs *a)
{
    const sl_act_stat_params *p = a->params;
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1];
    const float *x = a->in[0].data;
    float *y = a->out[0].data;
    double q = sl__normal_quantile(p->sparsity);
    for (int64_t t = 0; t < T; t++) {
        double mu = 0, var = 0;
        for (int64_t j = 0; j < m; j++)
            mu += x[t * m + j];
        mu /= (double)m;
        for (int64_t j = 0; j < m; j++)
            var += ((double)x[t * m + j] - mu) * ((double)x[t * m + j] - mu);
        double theta = mu + sqrt(var / (double)m) * q;
        for (int64_t j = 0; j < m; j++) {
            double v = (double)x[t * m + j] - theta;
            y[t * m + j] = v > 0 ? (float)v : 0.f;
        }
    }
    return SL_OK;
}

/* act.spark_score: the partial dots in float64, literally. */
sl_status sl__ref_act_spark_score(const sl__kargs *a)
{
    const sl_act_spark_params *p = a->params;
    int64_t T = a->in[0].shape[0], D = a->in[0].shape[1], N = a->in[1].shape[0];
    int64_t r = sl__act_spark_dims(p->r, D);
    const float *x = a->in[0].data, *w1 = a->in[1].data, *w3 = a->in[2].buf ? a->in[2].data : NULL;
    float *z = a->out[0].data;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < N; j++) {
            double g = 0, u = 0;
            for (int64_t i = 0; i < r; i++)
                g += (double)x[t * D + i] * (double)w1[j * D + i];
            if (w3) {
                for (int64_t i = 0; i < r; i++)
                    u += (double)x[t * D + i] * (double)w3[j * D + i];
                g = fabs(g / (1 + exp(-g)) * u);
            }
            z[t * N + j] = (float)g;
        }
    return SL_OK;
}

size_t sl__ref_act_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
