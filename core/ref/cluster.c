/* ref/cluster.c — reference kernels of cluster.dpc, cluster.kmeans and
 * cluster.route: plain loops in float64, the contract's formulas one by one
 * (DPC's distance matrix stored whole, sorted rows for the density). */
#include "ref.h"

#include <math.h>
#include <stdlib.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* (value, index) pairs sorted by value descending, then index ascending: the
 * oracle takes "the k largest, ties to the lower index" from a full sort
 * (the fast kernels select in place). */
typedef struct {
    double v;
    int64_t i;
} ranked;

static int cmp_ranked(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

sl_status sl__ref_cluster_dpc(const sl__kargs *a)
{
    const sl_cluster_dpc_params *p = a->params;
    const float *x = a->in[0].data;
    int64_t n = a->in[0].shape[0], d = a->in[0].shape[1], c = p->c < n ? p->c : n;
    int32_t *assign = a->out[0].data, *centres = a->out[1].data;
    double *D = malloc(sizeof *D * (size_t)(n * n)), *rho = malloc(sizeof *rho * (size_t)n),
           *gamma = malloc(sizeof *gamma * (size_t)n), *sq = malloc(sizeof *sq * (size_t)n);
    char *taken = calloc((size_t)n, 1);
    sl_status st = SL_OK;
    if (!D || !rho || !gamma || !sq || !taken) {
        st = sl_ctx_fail(a->ctx, SL_ENOMEM, "cluster.dpc: out of memory");
        goto out;
    }
    double dmax = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t t = 0; t < d; t++) {
                double e = (double)x[i * d + t] - (double)x[j * d + t];
                s += e * e;
            }
            D[i * n + j] = sqrt(s / (double)d);
            if (D[i * n + j] > dmax)
                dmax = D[i * n + j];
        }
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++)
            sq[j] = D[i * n + j] * D[i * n + j];
        qsort(sq, (size_t)n, sizeof *sq, cmp_double);
        double acc = 0;
        for (int64_t j = 0; j < c; j++)
            acc += sq[j];
        rho[i] = exp(-acc / (double)c);
    }
    for (int64_t i = 0; i < n; i++) {
        double best = HUGE_VAL;
        for (int64_t j = 0; j < n; j++)
            if ((rho[j] > rho[i] || (rho[j] == rho[i] && j < i)) && D[i * n + j] < best)
                best = D[i * n + j];
        gamma[i] = rho[i] * (best == HUGE_VAL ? dmax : best);
    }
    { /* the c largest gamma, ties to the lower index */
        ranked *r = malloc(sizeof *r * (size_t)n);
        if (!r) {
            st = sl_ctx_fail(a->ctx, SL_ENOMEM, "cluster.dpc: out of memory");
            goto out;
        }
        for (int64_t i = 0; i < n; i++)
            r[i] = (ranked){gamma[i], i};
        qsort(r, (size_t)n, sizeof *r, cmp_ranked);
        for (int64_t k = 0; k < c; k++)
            taken[r[k].i] = 1;
        free(r);
    }
    for (int64_t i = 0, k = 0; i < n; i++)
        if (taken[i])
            centres[k++] = (int32_t)i;
    for (int64_t i = 0; i < n; i++) {
        int32_t best = 0;
        double bd = HUGE_VAL;
        for (int64_t k = 0; k < c; k++) {
            if (centres[k] == i) {
                best = (int32_t)k;
                break;
            }
            if (D[i * n + centres[k]] < bd) {
                bd = D[i * n + centres[k]];
                best = (int32_t)k;
            }
        }
        assign[i] = best;
    }
out:
    free(D);
    free(rho);
    free(gamma);
    free(sq);
    free(taken);
    return st;
}

static int32_t nearest(const float *row, const double *C, int64_t k, int64_t d)
{
    int32_t best = 0;
    double bd = HUGE_VAL;
    for (int64_t e = 0; e < k; e++) {
        double s = 0;
        for (int64_t t = 0; t < d; t++) {
            double v = (double)row[t] - C[e * d + t];
            s += v * v;
        }
        if (s < bd) {
            bd = s;
            best = (int32_t)e;
        }
    }
    return best;
}

sl_status sl__ref_cluster_kmeans(const sl__kargs *a)
{
    const sl_cluster_km_params *p = a->params;
    const float *x = a->in[0].data, *init = a->in[1].data;
    int64_t n = a->in[0].shape[0], d = a->in[0].shape[1], k = a->in[1].shape[0];
    double *C = malloc(sizeof *C * (size_t)(k * d)), *S = malloc(sizeof *S * (size_t)(k * d));
    int64_t *cnt = malloc(sizeof *cnt * (size_t)k);
    int32_t *assign = a->out[1].data;
    if (!C || !S || !cnt) {
        free(C);
        free(S);
        free(cnt);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "cluster.kmeans: out of memory");
    }
    for (int64_t i = 0; i < k * d; i++)
        C[i] = (double)init[i];
    for (int it = 0; it < p->iters; it++) {
        for (int64_t i = 0; i < k * d; i++)
            S[i] = 0;
        for (int64_t e = 0; e < k; e++)
            cnt[e] = 0;
        for (int64_t r = 0; r < n; r++) {
            int32_t e = nearest(x + r * d, C, k, d);
            cnt[e]++;
            for (int64_t t = 0; t < d; t++)
                S[e * d + t] += (double)x[r * d + t];
        }
        for (int64_t e = 0; e < k; e++)
            if (cnt[e] > 0)
                for (int64_t t = 0; t < d; t++)
                    C[e * d + t] = S[e * d + t] / (double)cnt[e];
    }
    float *out = a->out[0].data;
    for (int64_t i = 0; i < k * d; i++)
        out[i] = (float)C[i];
    for (int64_t r = 0; r < n; r++)
        assign[r] = nearest(x + r * d, C, k, d);
    free(C);
    free(S);
    free(cnt);
    return SL_OK;
}

sl_status sl__ref_cluster_route(const sl__kargs *a)
{
    const sl_cluster_route_params *p = a->params;
    const float *h = a->in[0].data, *lg = a->in[1].data;
    const int32_t *ex = a->in[2].data;
    int64_t T = a->in[0].shape[0], H = a->in[0].shape[1], E = a->in[1].shape[1];
    int64_t k = p->k < E ? p->k : E;
    float *y = a->out[0].data;
    double *w = malloc(sizeof *w * (size_t)E);
    ranked *r = malloc(sizeof *r * (size_t)E);
    if (!w || !r) {
        free(w);
        free(r);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "cluster.route: out of memory");
    }
    for (int64_t t = 0; t < T; t++) {
        const float *l = lg + t * E;
        for (int64_t e = 0; e < E; e++) {
            r[e] = (ranked){(double)l[e], e};
            w[e] = 0;
        }
        qsort(r, (size_t)E, sizeof *r, cmp_ranked); /* the k largest logits, ties to the lower index */
        for (int64_t q = 0; q < k; q++) {
            /* softmax over the kept: w_e = 1 / sum_f exp(l_f - l_e) */
            double den = 0;
            for (int64_t f = 0; f < k; f++)
                den += exp(r[f].v - r[q].v);
            w[r[q].i] = (p->softmax ? 1 / den : 1) * p->scale;
        }
        for (int64_t j = 0; j < H; j++) {
            double we = w[ex[j]];
            y[t * H + j] = we > 0 ? (float)((double)h[t * H + j] * we) : 0.f;
        }
    }
    free(w);
    free(r);
    return SL_OK;
}

size_t sl__ref_cluster_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
