/* cpu/act.c — the act family on threads (issue 17): act.topk one row per
 * work item (quickselect of the k-th largest score on a per-thread copy,
 * then the entries above it and the first ties in index order),
 * act.threshold over chunks of rows, act.delta over chunks of channels. */
#include "cpu.h"
#include "parallel.h"
#include "../act_quantile.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

static void topk_row(int64_t t, void *ud, int thread)
{
    const sl__kargs *a = ud;
    const sl_act_topk_params *p = a->params;
    int64_t m = a->in[0].shape[1], k = p->k < m ? p->k : m;
    const float *x = (const float *)a->in[0].data + t * m;
    float *y = (float *)a->out[0].data + t * m;
    if (k == m) {
        memcpy(y, x, sizeof *y * (size_t)m);
        return;
    }
    if (k == 0) {
        memset(y, 0, sizeof *y * (size_t)m);
        return;
    }
    float *s = (float *)a->scratch + (size_t)thread * (size_t)m;
    for (int64_t i = 0; i < m; i++)
        s[i] = p->abs ? fabsf(x[i]) : x[i];
    float theta = sl__cpu_select_kth_f(s, m, m - k); /* the k-th largest */
    int64_t above = 0;
    for (int64_t i = 0; i < m; i++)
        above += (p->abs ? fabsf(x[i]) : x[i]) > theta;
    int64_t ties = k - above;
    for (int64_t i = 0; i < m; i++) {
        float v = p->abs ? fabsf(x[i]) : x[i];
        int keep = v > theta || (v == theta && ties-- > 0);
        y[i] = keep ? x[i] : 0.f;
    }
}

sl_status sl__cpu_act_topk(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], topk_row, (void *)a);
}

static void threshold_rows(int64_t c, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1], t1 = (c + 1) * 64 < T ? (c + 1) * 64 : T;
    const float *x = a->in[0].data, *th = a->in[1].data;
    float *y = a->out[0].data;
    for (int64_t t = c * 64; t < t1; t++)
        for (int64_t j = 0; j < m; j++)
            y[t * m + j] = fabsf(x[t * m + j]) >= th[j] ? x[t * m + j] : 0.f;
}

sl_status sl__cpu_act_threshold(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, (a->in[0].shape[0] + 63) / 64, threshold_rows, (void *)a);
}

/* act.delta: channels are independent through time; a chunk of 64 channels per item. */
static void delta_chunk(int64_t c, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    int64_t T = a->in[0].shape[0], m = a->in[0].shape[1], j0 = c * 64, j1 = j0 + 64 < m ? j0 + 64 : m;
    const float *x = a->in[0].data, *th = a->in[1].data;
    float *delta = a->out[0].data, *xhat = a->out[1].data;
    float ref[64];
    for (int64_t j = j0; j < j1; j++) {
        ref[j - j0] = x[j];
        delta[j] = x[j];
        xhat[j] = x[j];
    }
    for (int64_t t = 1; t < T; t++)
        for (int64_t j = j0; j < j1; j++) {
            float d = x[t * m + j] - ref[j - j0], sent = fabsf(d) > th[j] ? d : 0.f;
            ref[j - j0] += sent;
            delta[t * m + j] = sent;
            xhat[t * m + j] = ref[j - j0];
        }
}

sl_status sl__cpu_act_delta(const sl__kargs *a)
{
    if (a->in[0].shape[0] == 0)
        return SL_OK;
    return sl__cpu_parallel(a->ctx, (a->in[0].shape[1] + 63) / 64, delta_chunk, (void *)a);
}

/* act.topk: one row of scores per thread. */
/* act.stat_topk: one row per work item, the reference's two float64 passes */
static void stat_row(int64_t t, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    int64_t m = a->in[0].shape[1];
    const float *x = (const float *)a->in[0].data + t * m;
    float *y = (float *)a->out[0].data + t * m;
    double mu = 0, var = 0;
    for (int64_t j = 0; j < m; j++)
        mu += x[j];
    mu /= (double)m;
    for (int64_t j = 0; j < m; j++)
        var += ((double)x[j] - mu) * ((double)x[j] - mu);
    double theta = mu + sqrt(var / (double)m) * *(const double *)a->scratch;
    for (int64_t j = 0; j < m; j++) {
        double v = (double)x[j] - theta;
        y[j] = v > 0 ? (float)v : 0.f;
    }
}

sl_status sl__cpu_act_stat_topk(const sl__kargs *a)
{
    const sl_act_stat_params *p = a->params;
    *(double *)a->scratch = sl__normal_quantile(p->sparsity);
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], stat_row, (void *)a);
}

/* act.spark_score: a work item is a chunk of units (outputs); OpenBLAS sgemm
 * with K = r' on the first r' columns (lda = D), then with w3 a second sgemm
 * into the thread's scratch and |silu(g) . u| in float64. */
#define SPARK_CHUNK 64

typedef struct spark_job {
    const sl__kargs *a;
    int64_t T, D, N, r;
} spark_job;

static void spark_item(int64_t c, void *ud, int thread)
{
    const spark_job *j = ud;
    const sl__kargs *a = j->a;
    int64_t c0 = c * SPARK_CHUNK, nc = j->N - c0 < SPARK_CHUNK ? j->N - c0 : SPARK_CHUNK;
    const float *x = a->in[0].data, *w1 = a->in[1].data;
    float *z = a->out[0].data;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->T, (int)nc, (int)j->r, 1.f, x, (int)j->D,
                w1 + c0 * j->D, (int)j->D, 0.f, z + c0, (int)j->N);
    if (!a->in[2].buf)
        return;
    float *u = (float *)a->scratch + (size_t)thread * (size_t)(j->T * SPARK_CHUNK);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->T, (int)nc, (int)j->r, 1.f, x, (int)j->D,
                (const float *)a->in[2].data + c0 * j->D, (int)j->D, 0.f, u, SPARK_CHUNK);
    for (int64_t t = 0; t < j->T; t++)
        for (int64_t i = 0; i < nc; i++) {
            double g = z[t * j->N + c0 + i];
            z[t * j->N + c0 + i] = (float)fabs(g / (1 + exp(-g)) * (double)u[t * SPARK_CHUNK + i]);
        }
}

sl_status sl__cpu_act_spark_score(const sl__kargs *a)
{
    const sl_act_spark_params *p = a->params;
    spark_job j = {a, a->in[0].shape[0], a->in[0].shape[1], a->in[1].shape[0], 0};
    j.r = sl__act_spark_dims(p->r, j.D);
    if (j.T == 0 || j.N == 0)
        return SL_OK;
    if (j.r == 0) {
        memset(a->out[0].data, 0, sizeof(float) * (size_t)(j.T * j.N));
        return SL_OK;
    }
    return sl__cpu_parallel(a->ctx, (j.N + SPARK_CHUNK - 1) / SPARK_CHUNK, spark_item, &j);
}

size_t sl__cpu_act_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params;
    if (op == SL_OP_ACT_SPARK_SCORE)
        return in[2].buf ? sizeof(float) * (size_t)(in[0].shape[0] * SPARK_CHUNK) * (size_t)(n_threads > 0 ? n_threads : 1)
                         : 0;
    if (op == SL_OP_ACT_STAT_TOPK)
        return sizeof(double);
    return op == SL_OP_ACT_TOPK ? sizeof(float) * (size_t)in[0].shape[1] * (size_t)(n_threads > 0 ? n_threads : 1) : 0;
}
