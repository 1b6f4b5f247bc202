// cuda/cluster.cu — the cluster family on CUDA cores (issue 17, session 3).
// cluster.dpc: one thread per row for the density (the c smallest squared
// distances taken in ascending (value, index) order by repeated selection,
// distances recomputed: O(n) device memory), one per row for the
// separation, one thread for the top-c centres, one per row for the
// assignment. cluster.kmeans: per round one thread per row assigns, one
// thread per (centroid, dim) sums its rows in row order. cluster.route: one
// thread per row. float64 throughout, sums in the reference's order.
// Compiled with `make CUDA=1`; run under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 128;

__device__ double dpc_dist(const float *x, int64_t i, int64_t j, int64_t d)
{
    double s = 0;
    for (int64_t t = 0; t < d; t++) {
        double e = (double)x[i * d + t] - (double)x[j * d + t];
        s += e * e;
    }
    return sqrt(s / (double)d);
}

__global__ void dpc_density_kernel(const float *x, int64_t n, int64_t d, int64_t c, double *rho, double *rowmax)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= n)
        return;
    double mx = 0;
    for (int64_t j = 0; j < n; j++) {
        double v = dpc_dist(x, i, j, d);
        mx = v > mx ? v : mx;
    }
    rowmax[i] = mx;
    // the c smallest squares, ascending: step s takes the least (value, index) above the previous one
    double acc = 0, pv = -1;
    int64_t pj = -1;
    for (int64_t s = 0; s < c; s++) {
        double bv = HUGE_VAL;
        int64_t bj = -1;
        for (int64_t j = 0; j < n; j++) {
            double v = dpc_dist(x, i, j, d);
            v = v * v;
            bool after = v > pv || (v == pv && j > pj);
            if (after && (bj < 0 || v < bv)) {
                bv = v;
                bj = j;
            }
        }
        acc += bv;
        pv = bv;
        pj = bj;
    }
    rho[i] = exp(-acc / (double)c);
}

__global__ void dpc_sep_kernel(const float *x, int64_t n, int64_t d, const double *rho, double *sep)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= n)
        return;
    double best = HUGE_VAL, r = rho[i];
    for (int64_t j = 0; j < n; j++)
        if (rho[j] > r || (rho[j] == r && j < i)) {
            double v = dpc_dist(x, i, j, d);
            best = v < best ? v : best;
        }
    sep[i] = best;
}

__global__ void dpc_centres_kernel(int64_t n, int64_t c, const double *rho, const double *rowmax, double *gamma,
                                   char *taken, int32_t *centres)
{
    if (blockIdx.x != 0 || threadIdx.x != 0)
        return;
    double dmax = 0;
    for (int64_t i = 0; i < n; i++)
        dmax = rowmax[i] > dmax ? rowmax[i] : dmax;
    for (int64_t i = 0; i < n; i++) {
        gamma[i] = rho[i] * (gamma[i] == HUGE_VAL ? dmax : gamma[i]);
        taken[i] = 0;
    }
    for (int64_t k = 0; k < c; k++) {
        int64_t arg = -1;
        for (int64_t i = 0; i < n; i++)
            if (!taken[i] && (arg < 0 || gamma[i] > gamma[arg]))
                arg = i;
        if (arg < 0)
            break;
        taken[arg] = 1;
    }
    for (int64_t i = 0, k = 0; i < n; i++)
        if (taken[i])
            centres[k++] = (int32_t)i;
}

__global__ void dpc_assign_kernel(const float *x, int64_t n, int64_t d, int64_t c, const int32_t *centres,
                                  int32_t *assign)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= n)
        return;
    int32_t best = 0;
    double bd = HUGE_VAL;
    for (int64_t k = 0; k < c; k++) {
        if (centres[k] == i) {
            best = (int32_t)k;
            break;
        }
        double v = dpc_dist(x, i, centres[k], d);
        if (v < bd) {
            bd = v;
            best = (int32_t)k;
        }
    }
    assign[i] = best;
}

__global__ void km_init_kernel(const float *init, double *C, int64_t total)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i < total)
        C[i] = (double)init[i];
}

__global__ void km_assign_kernel(const float *x, const double *C, int64_t n, int64_t d, int64_t k, int32_t *assign)
{
    int64_t r = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (r >= n)
        return;
    int32_t best = 0;
    double bd = HUGE_VAL;
    for (int64_t e = 0; e < k; e++) {
        double s = 0;
        for (int64_t t = 0; t < d; t++) {
            double v = (double)x[r * d + t] - C[e * d + t];
            s += v * v;
        }
        if (s < bd) {
            bd = s;
            best = (int32_t)e;
        }
    }
    assign[r] = best;
}

__global__ void km_update_kernel(const float *x, const int32_t *assign, double *C, int64_t n, int64_t d, int64_t k)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= k * d)
        return;
    int64_t e = i / d, t = i % d, cnt = 0;
    double s = 0;
    for (int64_t r = 0; r < n; r++)
        if (assign[r] == e) {
            s += (double)x[r * d + t];
            cnt++;
        }
    if (cnt > 0)
        C[i] = s / (double)cnt;
}

__global__ void km_out_kernel(const double *C, float *out, int64_t total)
{
    int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i < total)
        out[i] = (float)C[i];
}

__global__ void route_kernel(const float *h, const float *lg, const int32_t *ex, float *y, double *wbuf, int64_t T,
                             int64_t H, int64_t E, int64_t k, int softmax, double scale)
{
    int64_t t = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (t >= T)
        return;
    const float *l = lg + t * E;
    double *w = wbuf + t * E, mx = -HUGE_VAL, z = 0;
    for (int64_t e = 0; e < E; e++) {
        int64_t above = 0;
        for (int64_t f = 0; f < E; f++)
            above += l[f] > l[e] || (l[f] == l[e] && f < e);
        w[e] = above < k ? 1 : 0;
        if (w[e] > 0 && (double)l[e] > mx)
            mx = (double)l[e];
    }
    if (softmax) {
        for (int64_t e = 0; e < E; e++)
            if (w[e] > 0) {
                w[e] = exp((double)l[e] - mx);
                z += w[e];
            }
        for (int64_t e = 0; e < E; e++)
            if (w[e] > 0)
                w[e] = w[e] / z * scale;
    } else {
        for (int64_t e = 0; e < E; e++)
            w[e] *= scale;
    }
    for (int64_t c = 0; c < H; c++) {
        double we = w[ex[c]];
        y[t * H + c] = we > 0 ? (float)((double)h[t * H + c] * we) : 0.f;
    }
}

unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

}  // namespace

sl_status sl__cuda_cluster_dpc(const sl__kargs *a)
{
    const sl_cluster_dpc_params *p = (const sl_cluster_dpc_params *)a->params;
    int64_t n = a->in[0].shape[0], d = a->in[0].shape[1], c = p->c < n ? p->c : n;
    sl__cuda_stage st(a);
    sl_status s;
    void *rho, *rowmax, *gamma, *taken;
    if ((s = sl__cuda_stage_in(&st)) || (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)n, &rho)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)n, &rowmax)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)n, &gamma)) ||
        (s = sl__cuda_scratch(&st, (size_t)n, &taken)))
        return s;
    const float *x = st.input<float>(0);
    SL_LAUNCH(dpc_density_kernel, blocks_for(n), kThreads, 0, 0)(x, n, d, c, (double *)rho, (double *)rowmax);
    SL_LAUNCH(dpc_sep_kernel, blocks_for(n), kThreads, 0, 0)(x, n, d, (const double *)rho, (double *)gamma);
    SL_LAUNCH(dpc_centres_kernel, 1, 1, 0, 0)(n, c, (const double *)rho, (const double *)rowmax, (double *)gamma,
                                              (char *)taken, st.output<int32_t>(1));
    SL_LAUNCH(dpc_assign_kernel, blocks_for(n), kThreads, 0, 0)(x, n, d, c, st.output<int32_t>(1),
                                                                st.output<int32_t>(0));
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_cluster_kmeans(const sl__kargs *a)
{
    const sl_cluster_km_params *p = (const sl_cluster_km_params *)a->params;
    int64_t n = a->in[0].shape[0], d = a->in[0].shape[1], k = a->in[1].shape[0];
    sl__cuda_stage st(a);
    sl_status s;
    void *C;
    if ((s = sl__cuda_stage_in(&st)) || (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(k * d), &C)))
        return s;
    const float *x = st.input<float>(0);
    int32_t *assign = st.output<int32_t>(1);
    SL_LAUNCH(km_init_kernel, blocks_for(k * d), kThreads, 0, 0)(st.input<float>(1), (double *)C, k * d);
    for (int it = 0; it < p->iters; it++) {
        SL_LAUNCH(km_assign_kernel, blocks_for(n), kThreads, 0, 0)(x, (const double *)C, n, d, k, assign);
        SL_LAUNCH(km_update_kernel, blocks_for(k * d), kThreads, 0, 0)(x, assign, (double *)C, n, d, k);
    }
    SL_LAUNCH(km_out_kernel, blocks_for(k * d), kThreads, 0, 0)((const double *)C, st.output<float>(0), k * d);
    SL_LAUNCH(km_assign_kernel, blocks_for(n), kThreads, 0, 0)(x, (const double *)C, n, d, k, assign);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_cluster_route(const sl__kargs *a)
{
    const sl_cluster_route_params *p = (const sl_cluster_route_params *)a->params;
    int64_t T = a->in[0].shape[0], H = a->in[0].shape[1], E = a->in[1].shape[1], k = p->k < E ? p->k : E;
    if (T == 0 || H == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    sl_status s;
    void *w;
    if ((s = sl__cuda_stage_in(&st)) || (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(T * E), &w)))
        return s;
    SL_LAUNCH(route_kernel, blocks_for(T), kThreads, 0, 0)(st.input<float>(0), st.input<float>(1),
                                                           st.input<int32_t>(2), st.output<float>(0), (double *)w,
                                                           T, H, E, k, (int)p->softmax, p->scale);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
