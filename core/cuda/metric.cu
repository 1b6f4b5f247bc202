// cuda/metric.cu — the metric family on the device: metric.rel_l2,
// metric.max_abs, metric.cosine, metric.recall. Two launches: every block
// folds a grid-stride share of the elements (or rows) into float64 partials
// in shared memory, then one block folds the partials in block order, so a
// metric of the same tensors is the same number on every run.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

#include <math.h>

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 256;

enum kind { REL_L2, MAX_ABS, COSINE, RECALL };

// Per block: the sum, second sum (or count) and min/max of its share.
struct partial {
    double a, b, m;
};

struct metric_args {
    const float *x, *y;
    int64_t n;      // elements (rel_l2, max_abs, recall) or rows (cosine)
    int64_t d;      // row length (cosine)
    double eps;
    int kind;
    partial *part;  // [gridDim.x]
    double *out;    // [1] or [2]
};

// Combines two partials of the same kind.
__device__ partial combine(partial p, partial q, int kind)
{
    partial r;
    r.a = p.a + q.a;
    r.b = p.b + q.b;
    r.m = kind == MAX_ABS ? fmax(p.m, q.m) : fmin(p.m, q.m);
    return r;
}

// Tree reduction of one partial per thread in shared memory; thread 0 gets the block's.
__device__ partial block_fold(partial mine, int kind)
{
    SL_SHARED(double, sa, [kThreads]);
    SL_SHARED(double, sb, [kThreads]);
    SL_SHARED(double, sm, [kThreads]);
    int t = threadIdx.x;
    sa[t] = mine.a, sb[t] = mine.b, sm[t] = mine.m;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
        if (t < w) {
            partial r = combine(partial{sa[t], sb[t], sm[t]}, partial{sa[t + w], sb[t + w], sm[t + w]}, kind);
            sa[t] = r.a, sb[t] = r.b, sm[t] = r.m;
        }
        __syncthreads();
    }
    return partial{sa[0], sb[0], sm[0]};
}

__global__ void __launch_bounds__(kThreads) metric_partial_kernel(const metric_args a)
{
    partial mine = {0.0, 0.0, a.kind == MAX_ABS ? 0.0 : INFINITY};
    int64_t stride = (int64_t)gridDim.x * kThreads;
    for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < a.n; i += stride) {
        switch (a.kind) {
        case REL_L2: {
            double y = a.y[i], e = (double)a.x[i] - y;
            mine.a += e * e;
            mine.b += y * y;
            break;
        }
        case MAX_ABS: mine.m = fmax(mine.m, fabs((double)a.x[i] - (double)a.y[i])); break;
        case COSINE: {
            const float *u = a.x + i * a.d, *w = a.y + i * a.d;
            double uw = 0, uu = 0, ww = 0;
            for (int64_t c = 0; c < a.d; c++) {
                uw += (double)u[c] * (double)w[c];
                uu += (double)u[c] * (double)u[c];
                ww += (double)w[c] * (double)w[c];
            }
            // two zero rows (fully masked in both) agree exactly
            double cs = uu == 0 && ww == 0 ? 1.0 : uw / (sqrt(uu) * sqrt(ww) + a.eps);
            mine.a += cs;
            mine.m = fmin(mine.m, cs);
            break;
        }
        default: {  // RECALL: rows whose reference kept no mass do not count
            float ref = a.y[i];
            if (isfinite(ref)) {
                double kept = exp((double)a.x[i] - (double)ref);
                mine.a += kept;
                mine.b += 1.0;
                mine.m = fmin(mine.m, kept);
            }
        }
        }
    }
    partial blk = block_fold(mine, a.kind);
    if (threadIdx.x == 0)
        a.part[blockIdx.x] = blk;
}

__global__ void __launch_bounds__(kThreads) metric_finish_kernel(const metric_args a, int n_part)
{
    // each thread folds a strided set of partials in order, then the block tree
    partial mine = {0.0, 0.0, a.kind == MAX_ABS ? 0.0 : INFINITY};
    for (int p = threadIdx.x; p < n_part; p += kThreads)
        mine = combine(mine, a.part[p], a.kind);
    partial all = block_fold(mine, a.kind);
    if (threadIdx.x != 0)
        return;
    switch (a.kind) {
    case REL_L2: a.out[0] = sqrt(all.a) / (sqrt(all.b) + a.eps); break;
    case MAX_ABS: a.out[0] = all.m; break;
    case COSINE:
        a.out[0] = a.n ? all.a / (double)a.n : 1.0;
        a.out[1] = a.n ? all.m : 1.0;
        break;
    default:
        a.out[0] = all.b > 0 ? all.a / all.b : 1.0;
        a.out[1] = all.b > 0 ? all.m : 1.0;
    }
}

sl_status run_metric(const sl__kargs *a, int kind)
{
    const sl_tensor *t = &a->in[0];
    int64_t n = sl_tensor_numel(t), d = 1;
    if (kind == COSINE) {
        d = t->ndim ? t->shape[t->ndim - 1] : 1;
        n = d ? n / d : 0;
    }
    double eps = kind == REL_L2 || kind == COSINE ? ((const sl_metric_params *)a->params)->eps : 0.0;
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    const int64_t want = (n + kThreads - 1) / kThreads;  // clamped before the cast: n may exceed 2^31 blocks
    const int blocks = want < 1 ? 1 : want > kMaxBlocks ? kMaxBlocks : (int)want;
    void *part = nullptr;
    if (s == SL_OK)
        s = sl__cuda_scratch(&st, sizeof(partial) * (size_t)blocks, &part);
    if (s != SL_OK)
        return s;
    metric_args args = {st.input<float>(0), st.input<float>(1), n, d, eps, kind, static_cast<partial *>(part),
                        st.output<double>(0)};
    SL_LAUNCH(metric_partial_kernel, blocks, kThreads, 0, 0)(args);
    cudaError_t launched = cudaGetLastError();
    if (launched == cudaSuccess) {
        SL_LAUNCH(metric_finish_kernel, 1, kThreads, 0, 0)(args, blocks);
        launched = cudaGetLastError();
    }
    return sl__cuda_stage_out(&st, launched);
}

}  // namespace

sl_status sl__cuda_metric_rel_l2(const sl__kargs *a) { return run_metric(a, REL_L2); }
sl_status sl__cuda_metric_max_abs(const sl__kargs *a) { return run_metric(a, MAX_ABS); }
sl_status sl__cuda_metric_cosine(const sl__kargs *a) { return run_metric(a, COSINE); }
sl_status sl__cuda_metric_recall(const sl__kargs *a) { return run_metric(a, RECALL); }
