/* cpu/cluster.c — cpu kernels of cluster.dpc, cluster.kmeans and
 * cluster.route: the row loops in parallel (distances, densities,
 * separations, assignments, gating), float64 throughout and every sum in the
 * reference's order, so the index sets equal ref's exactly; the k-means mean
 * update stays serial in row order (O(n D), the assignment is O(n k D)). */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct dpc_job {
    const sl__kargs *a;
    int64_t n, d, c;
    double *D, *rho, *gamma, *rowmax, *tmp; /* tmp: n doubles per thread */
    const int32_t *centres;
} dpc_job;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void dpc_dist(int64_t i, void *ud, int thread)
{
    dpc_job *j = ud;
    const float *x = j->a->in[0].data;
    int64_t n = j->n, d = j->d;
    double mx = 0, *sq = j->tmp + (int64_t)thread * n;
    for (int64_t k = 0; k < n; k++) {
        double s = 0;
        for (int64_t t = 0; t < d; t++) {
            double e = (double)x[i * d + t] - (double)x[k * d + t];
            s += e * e;
        }
        double v = sqrt(s / (double)d);
        j->D[i * n + k] = v;
        mx = v > mx ? v : mx;
        sq[k] = v * v;
    }
    j->rowmax[i] = mx;
    qsort(sq, (size_t)n, sizeof *sq, cmp_double);
    double acc = 0;
    for (int64_t k = 0; k < j->c; k++)
        acc += sq[k];
    j->rho[i] = exp(-acc / (double)j->c);
}

static void dpc_sep(int64_t i, void *ud, int thread)
{
    (void)thread;
    dpc_job *j = ud;
    int64_t n = j->n;
    double best = HUGE_VAL, r = j->rho[i];
    for (int64_t k = 0; k < n; k++)
        if ((j->rho[k] > r || (j->rho[k] == r && k < i)) && j->D[i * n + k] < best)
            best = j->D[i * n + k];
    j->gamma[i] = best; /* HUGE_VAL: the densest row; the product comes after dmax is known */
}

static void dpc_assign(int64_t i, void *ud, int thread)
{
    (void)thread;
    dpc_job *j = ud;
    int32_t *assign = j->a->out[0].data, best = 0;
    double bd = HUGE_VAL;
    for (int64_t k = 0; k < j->c; k++) {
        if (j->centres[k] == i) {
            best = (int32_t)k;
            break;
        }
        double v = j->D[i * j->n + j->centres[k]];
        if (v < bd) {
            bd = v;
            best = (int32_t)k;
        }
    }
    assign[i] = best;
}

sl_status sl__cpu_cluster_dpc(const sl__kargs *a)
{
    const sl_cluster_dpc_params *p = a->params;
    dpc_job j = {.a = a, .n = a->in[0].shape[0], .d = a->in[0].shape[1]};
    int64_t n = j.n;
    if (n < 1)
        return SL_OK;
    j.c = p->c < n ? p->c : n;
    double *s = a->scratch;
    j.D = s;
    j.rho = s + n * n;
    j.gamma = j.rho + n;
    j.rowmax = j.gamma + n;
    j.tmp = j.rowmax + n;
    sl_status st;
    if ((st = sl__cpu_parallel(a->ctx, n, dpc_dist, &j)) || (st = sl__cpu_parallel(a->ctx, n, dpc_sep, &j)))
        return st;
    double dmax = 0;
    for (int64_t i = 0; i < n; i++)
        dmax = j.rowmax[i] > dmax ? j.rowmax[i] : dmax;
    for (int64_t i = 0; i < n; i++)
        j.gamma[i] = j.rho[i] * (j.gamma[i] == HUGE_VAL ? dmax : j.gamma[i]);
    /* top-c by gamma (ties: lower index), by selection on a flag array */
    char *taken = (char *)j.tmp;
    memset(taken, 0, (size_t)n);
    for (int64_t k = 0; k < j.c; k++) {
        int64_t arg = -1;
        for (int64_t i = 0; i < n; i++)
            if (!taken[i] && (arg < 0 || j.gamma[i] > j.gamma[arg]))
                arg = i;
        if (arg < 0)
            break;
        taken[arg] = 1;
    }
    int32_t *centres = a->out[1].data;
    for (int64_t i = 0, k = 0; i < n; i++)
        if (taken[i])
            centres[k++] = (int32_t)i;
    j.centres = centres;
    return sl__cpu_parallel(a->ctx, n, dpc_assign, &j);
}

typedef struct km_job {
    const float *x;
    const double *C;
    int64_t d, k;
    int32_t *assign;
} km_job;

static void km_assign(int64_t r, void *ud, int thread)
{
    (void)thread;
    km_job *j = ud;
    const float *row = j->x + r * j->d;
    int32_t best = 0;
    double bd = HUGE_VAL;
    for (int64_t e = 0; e < j->k; e++) {
        const double *c = j->C + e * j->d;
        double s = 0;
        for (int64_t t = 0; t < j->d; t++) {
            double v = (double)row[t] - c[t];
            s += v * v;
        }
        if (s < bd) {
            bd = s;
            best = (int32_t)e;
        }
    }
    j->assign[r] = best;
}

sl_status sl__cpu_cluster_kmeans(const sl__kargs *a)
{
    const sl_cluster_km_params *p = a->params;
    int64_t n = a->in[0].shape[0], d = a->in[0].shape[1], k = a->in[1].shape[0];
    double *C = a->scratch, *S = C + k * d;
    int64_t *cnt = (int64_t *)(S + k * d);
    const float *x = a->in[0].data, *init = a->in[1].data;
    for (int64_t i = 0; i < k * d; i++)
        C[i] = (double)init[i];
    km_job j = {x, C, d, k, a->out[1].data};
    sl_status st;
    for (int it = 0; it < p->iters; it++) {
        if ((st = sl__cpu_parallel(a->ctx, n, km_assign, &j)))
            return st;
        memset(S, 0, sizeof *S * (size_t)(k * d));
        memset(cnt, 0, sizeof *cnt * (size_t)k);
        for (int64_t r = 0; r < n; r++) {
            int64_t e = j.assign[r];
            cnt[e]++;
            double *se = S + e * d;
            for (int64_t t = 0; t < d; t++)
                se[t] += (double)x[r * d + t];
        }
        for (int64_t e = 0; e < k; e++)
            if (cnt[e] > 0)
                for (int64_t t = 0; t < d; t++)
                    C[e * d + t] = S[e * d + t] / (double)cnt[e];
    }
    float *out = a->out[0].data;
    for (int64_t i = 0; i < k * d; i++)
        out[i] = (float)C[i];
    return sl__cpu_parallel(a->ctx, n, km_assign, &j);
}

typedef struct route_job {
    const sl__kargs *a;
    double *w; /* E per thread */
} route_job;

static void route_row(int64_t t, void *ud, int thread)
{
    route_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_cluster_route_params *p = a->params;
    int64_t H = a->in[0].shape[1], E = a->in[1].shape[1], k = p->k < E ? p->k : E;
    const float *h = (const float *)a->in[0].data + t * H, *l = (const float *)a->in[1].data + t * E;
    const int32_t *ex = a->in[2].data;
    float *y = (float *)a->out[0].data + t * H;
    double *w = j->w + (int64_t)thread * E, mx = -HUGE_VAL, z = 0;
    for (int64_t e = 0; e < E; e++) {
        int64_t above = 0;
        for (int64_t f = 0; f < E && above < k; f++)
            above += l[f] > l[e] || (l[f] == l[e] && f < e);
        w[e] = above < k;
        if (w[e] > 0 && (double)l[e] > mx)
            mx = (double)l[e];
    }
    if (p->softmax) {
        for (int64_t e = 0; e < E; e++)
            if (w[e] > 0) {
                w[e] = exp((double)l[e] - mx);
                z += w[e];
            }
        for (int64_t e = 0; e < E; e++)
            if (w[e] > 0)
                w[e] = w[e] / z * p->scale;
    } else {
        for (int64_t e = 0; e < E; e++)
            w[e] *= p->scale;
    }
    for (int64_t c = 0; c < H; c++) {
        double we = w[ex[c]];
        y[c] = we > 0 ? (float)((double)h[c] * we) : 0.f;
    }
}

sl_status sl__cpu_cluster_route(const sl__kargs *a)
{
    route_job j = {a, a->scratch};
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], route_row, &j);
}

size_t sl__cpu_cluster_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params;
    int64_t n = in[0].shape[0];
    if (op == SL_OP_CLUSTER_DPC)
        return sizeof(double) * (size_t)(n * n + 3 * n + (int64_t)(n_threads > 0 ? n_threads : 1) * n);
    if (op == SL_OP_CLUSTER_KMEANS) {
        int64_t k = in[1].shape[0], d = in[0].shape[1];
        return sizeof(double) * (size_t)(2 * k * d) + sizeof(int64_t) * (size_t)k;
    }
    return sizeof(double) * (size_t)(in[1].shape[1] * (int64_t)(n_threads > 0 ? n_threads : 1));
}
