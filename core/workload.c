/* workload.c — seeded synthetic attention inputs with the structure real
 * attention maps show: attention sinks, locality (a slowly varying shared
 * component of queries and keys) and a few long-range "needles". */
#include "internal.h"

#include <math.h>
#include <string.h>

static void add_scaled(float *x, const double *u, int64_t d, double a)
{
    for (int64_t c = 0; c < d; c++)
        x[c] += (float)(a * u[c]);
}

static void unit_direction(sl_rng *r, double *u, int64_t d)
{
    double n = 0;
    for (int64_t c = 0; c < d; c++) {
        u[c] = sl_rng_normal(r);
        n += u[c] * u[c];
    }
    /* Scaled to norm d^(1/4) so that a·b·(u·u)/sqrt(d) = a·b: strengths are logit boosts. */
    n = sqrt(n);
    for (int64_t c = 0; c < d; c++)
        u[c] *= pow((double)d, 0.25) / n;
}

sl_status sl_workload_synthetic(sl_ctx *ctx, const sl_synth_params *p, sl_tensor *q, sl_tensor *k, sl_tensor *v)
{
    memset(q, 0, sizeof *q);
    memset(k, 0, sizeof *k);
    memset(v, 0, sizeof *v);
    if (p->heads < 1 || p->kv_heads < 1 || p->heads % p->kv_heads || p->n < 1 || p->d < 1 || p->n_sink < 0 ||
        p->n_needles < 0 || p->local_corr_len <= 0)
        return sl_ctx_fail(ctx, SL_EARG,
                           "synthetic workload: expected heads %% kv_heads == 0, n >= 1, d >= 1, sinks and needles >= 0, "
                           "corr_len > 0; found heads %lld, kv_heads %lld, n %lld, d %lld",
                           (long long)p->heads, (long long)p->kv_heads, (long long)p->n, (long long)p->d);
    int64_t sq[3] = {p->heads, p->n, p->d}, sk[3] = {p->kv_heads, p->n, p->d};
    sl_status s;
    if ((s = sl_tensor_new(ctx, SL_F32, 3, sq, q)) || (s = sl_tensor_new(ctx, SL_F32, 3, sk, k)) ||
        (s = sl_tensor_new(ctx, SL_F32, 3, sk, v)))
        goto fail;
    double *buf = sl_ctx_alloc(ctx, (size_t)(3 * p->d) * sizeof(double));
    if (!buf) {
        s = SL_ENOMEM;
        goto fail;
    }
    double *walk = buf, *u = buf + p->d, *w = buf + 2 * p->d;
    sl_rng r;
    sl_rng_seed(&r, p->seed);
    sl_tensor_fill_normal(ctx, q, &r, 1.0);
    sl_tensor_fill_normal(ctx, k, &r, 1.0);
    sl_tensor_fill_normal(ctx, v, &r, 1.0);
    int64_t group = p->heads / p->kv_heads, d = p->d, n = p->n;
    double rho = exp(-1.0 / p->local_corr_len);
    for (int64_t g = 0; g < p->kv_heads; g++) {
        float *kg = (float *)k->data + g * n * d;
        /* Locality: a stationary AR(1) walk shared by a position's key and queries. */
        unit_direction(&r, walk, d);
        for (int64_t t = 0; t < n; t++) {
            for (int64_t c = 0; c < d; c++)
                walk[c] = rho * walk[c] + sqrt(1 - rho * rho) * sl_rng_normal(&r) * pow((double)d, -0.25);
            double a = sqrt(p->local_strength);
            add_scaled(kg + t * d, walk, d, a);
            for (int64_t h = g * group; h < (g + 1) * group; h++)
                add_scaled((float *)q->data + (h * n + t) * d, walk, d, a);
        }
        /* Sinks: the first keys share a direction every query leans towards. */
        unit_direction(&r, u, d);
        double a = sqrt(p->sink_strength);
        for (int64_t t = 0; t < p->n_sink && t < n; t++)
            add_scaled(kg + t * d, u, d, a);
        for (int64_t h = g * group; h < (g + 1) * group; h++)
            for (int64_t t = 0; t < n; t++)
                add_scaled((float *)q->data + (h * n + t) * d, u, d, a);
        /* Needles: a query far from its key shares a private direction with it. */
        for (int64_t e = 0; e < p->n_needles && n > 2; e++) {
            int64_t i = n / 2 + (int64_t)(sl_rng_uniform(&r) * (double)(n - n / 2));
            int64_t j = (int64_t)(sl_rng_uniform(&r) * (double)(i / 2 + 1));
            unit_direction(&r, w, d);
            double c = sqrt(p->needle_strength);
            add_scaled(kg + j * d, w, d, c);
            for (int64_t h = g * group; h < (g + 1) * group; h++)
                add_scaled((float *)q->data + (h * n + i) * d, w, d, c);
        }
    }
    sl_ctx_dealloc(ctx, buf, (size_t)(3 * p->d) * sizeof(double));
    return SL_OK;
fail:
    sl_tensor_release(q);
    sl_tensor_release(k);
    sl_tensor_release(v);
    return s;
}
