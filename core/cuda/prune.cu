// cuda/prune.cu — the prune family on CUDA cores (issue 17).
// prune.magnitude: one CTA finds the k-th smallest magnitude by a bitwise
// search on the (monotone) bits of |w| and zeroes entries below it plus the
// first ties in index order (per-thread contiguous chunks, an exclusive scan
// of their tie counts); N:M one thread per group. prune.sparsegpt, float64:
// the Hessian one thread per entry, the damping and the three triangular
// factorisations in one thread (K is a layer's width), then per column
// block the scores (a thread per entry), the same CTA selection for the
// block's mask, one thread per row through the block's columns and one
// thread per remaining entry for the lazy update; prune.lowrank float64 by
// its own route (Gram, damped Cholesky, eigen-decomposition of M^T M, back
// substitution), not the oracle's one-sided SVD and explicit inverse. Compiled with
// `make CUDA=1`; run under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace {

constexpr int kThreads = 256;

unsigned blocks_of(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

__device__ uint32_t key_of(float v)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b & 0x7fffffffu; // |v|: the bits of a non-negative float order as its value
}

__device__ uint64_t key_of(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b & 0x7fffffffffffffffull;
}

// drop[i] = 1 for the k entries of v[0..n) smallest in (|v|, index) order
// (one CTA of kThreads threads). drop may be null: out[i] = drop ? 0 : v.
template <class T, class K>
__device__ void select_smallest(const T *v, int64_t n, int64_t k, uint8_t *drop, float *out)
{
    SL_SHARED(unsigned long long, s_cnt, [kThreads]);
    SL_SHARED(unsigned long long, s_theta, [1]);
    int t = threadIdx.x;
    K theta = 0;
    if (k > 0) {
        // the largest theta with #{key < theta} < k is the k-th smallest key
        for (int b = (int)(sizeof(K) * 8) - 2; b >= 0; b--) {
            K cand = theta | ((K)1 << b);
            unsigned long long c = 0;
            for (int64_t i = t; i < n; i += kThreads)
                c += key_of(v[i]) < cand;
            s_cnt[t] = c;
            __syncthreads();
            if (t == 0) {
                unsigned long long sum = 0;
                for (int i = 0; i < kThreads; i++)
                    sum += s_cnt[i];
                s_theta[0] = sum < (unsigned long long)k ? 1ull : 0ull;
            }
            __syncthreads();
            if (s_theta[0])
                theta = cand;
            __syncthreads();
        }
    }
    // contiguous chunks: the ties of lower chunks come first
    int64_t chunk = (n + kThreads - 1) / kThreads, lo = t * chunk, hi = lo + chunk < n ? lo + chunk : n;
    unsigned long long less = 0, ties = 0;
    for (int64_t i = lo; i < hi; i++) {
        K key = key_of(v[i]);
        less += key < theta;
        ties += key == theta;
    }
    s_cnt[t] = less;
    __syncthreads();
    if (t == 0) {
        unsigned long long sum = 0;
        for (int i = 0; i < kThreads; i++)
            sum += s_cnt[i];
        s_theta[0] = sum;
    }
    __syncthreads();
    unsigned long long total_less = s_theta[0];
    __syncthreads();
    s_cnt[t] = ties;
    __syncthreads();
    if (t == 0) {
        unsigned long long run = 0;
        for (int i = 0; i < kThreads; i++) {
            unsigned long long c = s_cnt[i];
            s_cnt[i] = run;
            run += c;
        }
    }
    __syncthreads();
    long long quota = k > 0 ? (long long)k - (long long)total_less - (long long)s_cnt[t] : 0;
    for (int64_t i = lo; i < hi; i++) {
        K key = key_of(v[i]);
        bool d = k > 0 && (key < theta || (key == theta && quota-- > 0));
        if (drop)
            drop[i] = d;
        if (out)
            out[i] = d ? 0.f : (float)v[i];
    }
}

__global__ void magnitude_kernel(const float *w, float *out, int64_t n, int64_t k)
{
    select_smallest<float, uint32_t>(w, n, k, nullptr, out);
}

// keep[] of one group: the min(n, width) largest scores, ties to the lower index
__device__ void nm_keep(const double *score, int width, int n, uint8_t *keep)
{
    for (int i = 0; i < width; i++) {
        int above = 0;
        for (int j = 0; j < width; j++)
            above += score[j] > score[i] || (score[j] == score[i] && j < i);
        keep[i] = above < n;
    }
}

__global__ void magnitude_nm_kernel(const float *w, float *out, int64_t rows, int64_t K, int m, int n)
{
    int64_t G = (K + m - 1) / m, i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (i >= rows * G)
        return;
    int64_t r = i / G, c0 = (i % G) * m;
    int width = K - c0 < m ? (int)(K - c0) : m;
    double score[256] = {0};
    uint8_t keep[256];
    for (int t = 0; t < width; t++)
        score[t] = fabs((double)w[r * K + c0 + t]);
    nm_keep(score, width, n, keep);
    for (int t = 0; t < width; t++)
        out[r * K + c0 + t] = keep[t] ? w[r * K + c0 + t] : 0.f;
}

// ---- SparseGPT ----

// G = scale . x^T x (x [S, K]), one thread per entry: SparseGPT's Hessian
// (scale 2/S) and prune.lowrank's Gram matrix (scale 1).
__global__ void gram_kernel(const float *x, double *G, int64_t S, int64_t K, double scale)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e >= K * K)
        return;
    int64_t i = e / K, j = e % K;
    double acc = 0;
    for (int64_t t = 0; t < S; t++)
        acc += (double)x[t * K + i] * x[t * K + j];
    G[e] = scale * acc;
}

__global__ void to_double_kernel(const float *w, double *W, int64_t n)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e < n)
        W[e] = w[e];
}

__device__ bool chol_lower(double *a, int64_t K)
{
    for (int64_t j = 0; j < K; j++) {
        double d = a[j * K + j];
        for (int64_t t = 0; t < j; t++)
            d -= a[j * K + t] * a[j * K + t];
        if (!(d > 0))
            return false;
        a[j * K + j] = sqrt(d);
        for (int64_t i = j + 1; i < K; i++) {
            double s = a[i * K + j];
            for (int64_t t = 0; t < j; t++)
                s -= a[i * K + t] * a[j * K + t];
            a[i * K + j] = s / a[j * K + j];
        }
    }
    return true;
}

/* Li = L^-1 for the lower triangular L (K x K, row-major; the upper part of
 * L is not read), by forward substitution. */
__device__ void lower_inverse(const double *L, int64_t K, double *Li)
{
    for (int64_t i = 0; i < K * K; i++)
        Li[i] = 0;
    for (int64_t j = 0; j < K; j++) {
        Li[j * K + j] = 1 / L[j * K + j];
        for (int64_t i = j + 1; i < K; i++) {
            double acc = 0;
            for (int64_t t = j; t < i; t++)
                acc += L[i * K + t] * Li[t * K + j];
            Li[i * K + j] = -acc / L[i * K + i];
        }
    }
}

// One thread: dead columns, damping, H = L L^T, Li = L^-1, H^-1 = Li^T Li,
// its lower factor L2 (U = L2^T: U(i, j) = H[j * K + i]). status: 0 ok,
// 1 H not positive definite, 2 H^-1 not positive definite.
__global__ void factor_kernel(double *H, double *Li, uint8_t *dead, int64_t K, double percdamp, int *status)
{
    double mean = 0;
    for (int64_t j = 0; j < K; j++) {
        dead[j] = H[j * K + j] == 0;
        if (dead[j])
            H[j * K + j] = 1;
        mean += H[j * K + j] / (double)K;
    }
    for (int64_t j = 0; j < K; j++)
        H[j * K + j] += percdamp * mean;
    if (!chol_lower(H, K)) {
        *status = 1;
        return;
    }
    lower_inverse(H, K, Li);
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) {
            double acc = 0;
            for (int64_t t = i > j ? i : j; t < K; t++)
                acc += Li[t * K + i] * Li[t * K + j];
            H[i * K + j] = acc;
        }
    *status = chol_lower(H, K) ? 0 : 2;
}

__global__ void zero_dead_kernel(double *W, const uint8_t *dead, int64_t N, int64_t K)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e < N * K && dead[e % K])
        W[e] = 0;
}

__global__ void score_kernel(const double *W, const double *H, double *score, int64_t N, int64_t K, int64_t i1,
                             int64_t bw)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e >= N * bw)
        return;
    int64_t r = e / bw, c = e % bw;
    double w = W[r * K + i1 + c], d = H[(i1 + c) * K + i1 + c];
    score[e] = w * w / (d * d);
}

__global__ void block_mask_kernel(const double *score, uint8_t *mask, int64_t n, int64_t k)
{
    select_smallest<double, uint64_t>(score, n, k, mask, nullptr);
}

__global__ void rows_kernel(double *W, const double *H, double *E, uint8_t *mask, int64_t N, int64_t K, int64_t i1,
                            int64_t i2, int n, int m)
{
    int64_t r = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (r >= N)
        return;
    int64_t bw = i2 - i1;
    double *w = W + r * K, *e = E + r * bw;
    uint8_t *mk = mask + r * bw;
    for (int64_t c = 0; c < bw; c++) {
        int64_t i = i1 + c;
        if (n > 0 && i % m == 0) {
            int width = K - i < m ? (int)(K - i) : m;
            double score[256] = {0};
            uint8_t keep[256];
            for (int t = 0; t < width; t++) {
                double d = H[(i + t) * K + i + t];
                score[t] = w[i + t] * w[i + t] / (d * d);
            }
            nm_keep(score, width, n, keep);
            for (int t = 0; t < width; t++)
                mk[c + t] = !keep[t];
        }
        double d = H[i * K + i], q = mk[c] ? 0 : w[i], err = (w[i] - q) / d;
        for (int64_t j = i + 1; j < i2; j++)
            w[j] -= err * H[j * K + i];
        w[i] = q;
        e[c] = err;
    }
}

__global__ void lazy_kernel(double *W, const double *H, const double *E, int64_t N, int64_t K, int64_t i1, int64_t i2)
{
    int64_t rest = K - i2, e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e >= N * rest)
        return;
    int64_t r = e / rest, j = i2 + e % rest, bw = i2 - i1;
    double acc = 0;
    for (int64_t c = 0; c < bw; c++)
        acc += E[r * bw + c] * H[j * K + i1 + c];
    W[r * K + j] -= acc;
}

__global__ void to_float_kernel(const double *W, float *out, int64_t n)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e < n)
        out[e] = (float)W[e];
}

// ---- prune.lowrank, float64 ----
// A route of its own, not the oracle's: the Gram matrix x^T x (gram_kernel) and M = w L one
// thread per entry, the damped Cholesky in one thread, the SVD of M through
// the symmetric eigenproblem of C = M^T M (two-sided cyclic Jacobi in one
// thread; sigma = sqrt(lambda), u = M v / sigma, one thread per entry), and
// b through a back substitution L^T z = v per component instead of L^-1.

// L = chol(G + delta I), delta as the contract's damping schedule; the upper
// part of L is zeroed. status 1: still singular after the last damping.
__global__ void damped_chol_kernel(const double *G, double *L, int64_t K, int *status)
{
    double mean = 0;
    for (int64_t i = 0; i < K; i++)
        mean += G[i * K + i] / (double)K;
    for (int attempt = 0; attempt < 14; attempt++) {
        double delta = attempt ? (mean > 0 ? mean : 1) * 1e-12 * pow(10.0, (double)attempt) : 0;
        for (int64_t e = 0; e < K * K; e++)
            L[e] = G[e] + (e / K == e % K ? delta : 0);
        if (chol_lower(L, K)) {
            for (int64_t i = 0; i < K; i++)
                for (int64_t j = i + 1; j < K; j++)
                    L[i * K + j] = 0;
            *status = 0;
            return;
        }
    }
    *status = 1;
}

// M = w L (L lower triangular: only i >= k contributes); L == NULL: M = w.
__global__ void wl_kernel(const float *w, const double *L, double *M, int64_t N, int64_t K)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e >= N * K)
        return;
    int64_t n = e / K, k = e % K;
    if (!L) {
        M[e] = w[e];
        return;
    }
    double acc = 0;
    for (int64_t i = k; i < K; i++)
        acc += (double)w[n * K + i] * L[i * K + k];
    M[e] = acc;
}

__global__ void mtm_kernel(const double *M, double *C, int64_t N, int64_t K)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e >= K * K)
        return;
    int64_t i = e / K, j = e % K;
    double acc = 0;
    for (int64_t n = 0; n < N; n++)
        acc += M[n * K + i] * M[n * K + j];
    C[e] = acc;
}

// Eigenvectors V (columns) of the symmetric C by cyclic Jacobi rotations; C
// ends diagonal (its eigenvalues). Then sigma_j = sqrt(max(lambda_j, 0)) and
// order = the columns by sigma descending, ties by column.
__global__ void sym_eig_kernel(double *C, double *V, double *sig, int64_t *order, int64_t K)
{
    for (int64_t e = 0; e < K * K; e++)
        V[e] = e / K == e % K;
    for (int sweep = 0; sweep < 80; sweep++) {
        bool rotated = false;
        for (int64_t p = 0; p < K; p++)
            for (int64_t q = p + 1; q < K; q++) {
                double app = C[p * K + p], aqq = C[q * K + q], apq = C[p * K + q];
                if (apq == 0 || fabs(apq) <= 1e-15 * sqrt(fabs(app * aqq)))
                    continue;
                rotated = true;
                double theta = (aqq - app) / (2 * apq);
                double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(1 + theta * theta));
                double c = 1 / sqrt(1 + t * t), s = c * t;
                for (int64_t k = 0; k < K; k++) { /* columns p, q */
                    double ckp = C[k * K + p], ckq = C[k * K + q];
                    C[k * K + p] = c * ckp - s * ckq;
                    C[k * K + q] = s * ckp + c * ckq;
                }
                for (int64_t k = 0; k < K; k++) { /* rows p, q */
                    double cpk = C[p * K + k], cqk = C[q * K + k];
                    C[p * K + k] = c * cpk - s * cqk;
                    C[q * K + k] = s * cpk + c * cqk;
                }
                for (int64_t k = 0; k < K; k++) {
                    double vkp = V[k * K + p], vkq = V[k * K + q];
                    V[k * K + p] = c * vkp - s * vkq;
                    V[k * K + q] = s * vkp + c * vkq;
                }
            }
        if (!rotated)
            break;
    }
    for (int64_t j = 0; j < K; j++) {
        double l = C[j * K + j];
        sig[j] = l > 0 ? sqrt(l) : 0;
        order[j] = j;
    }
    for (int64_t i = 1; i < K; i++) {
        int64_t v = order[i], j = i - 1;
        while (j >= 0 && (sig[order[j]] < sig[v] || (sig[order[j]] == sig[v] && order[j] > v))) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = v;
    }
}

// U = M V_r / sigma into U [N, r] (one thread per entry).
__global__ void left_vectors_kernel(const double *M, const double *V, const double *sig, const int64_t *order,
                                    double *U, int64_t N, int64_t K, int64_t r)
{
    int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (e >= N * r)
        return;
    int64_t n = e / r, j = order[e % r];
    double acc = 0;
    for (int64_t k = 0; k < K; k++)
        acc += M[n * K + k] * V[k * K + j];
    U[e] = sig[j] > 0 ? acc / sig[j] : 0;
}

// One thread per component c: the sign (largest |u| positive, first index on
// near-ties), a = sign u sqrt(sigma), and b = sign sqrt(sigma) z^T with
// L^T z = v solved by back substitution (z = v without whitening).
__global__ void factors_kernel(const double *U, const double *V, const double *L, const double *sig,
                               const int64_t *order, double *Z, float *A, float *B, int64_t N, int64_t K, int64_t r)
{
    int64_t c = (int64_t)blockIdx.x * kThreads + threadIdx.x;
    if (c >= r)
        return;
    int64_t j = order[c];
    double rs = sqrt(sig[j]), sign = 1, best = -1;
    for (int64_t n = 0; n < N; n++)
        if (sig[j] > 0 && fabs(U[n * r + c]) > best + 1e-12) {
            best = fabs(U[n * r + c]);
            sign = U[n * r + c] < 0 ? -1 : 1;
        }
    for (int64_t n = 0; n < N; n++)
        A[n * r + c] = (float)(sign * U[n * r + c] * rs);
    double *z = Z + c * K;
    for (int64_t k = K - 1; k >= 0; k--) {
        double acc = V[k * K + j];
        if (L) {
            for (int64_t i = k + 1; i < K; i++)
                acc -= L[i * K + k] * z[i];
            acc /= L[k * K + k];
        }
        z[k] = acc;
    }
    for (int64_t k = 0; k < K; k++)
        B[c * K + k] = (float)(sign * rs * z[k]);
}

}  // namespace

sl_status sl__cuda_prune_magnitude(const sl__kargs *a)
{
    const sl_prune_mag_params *p = (const sl_prune_mag_params *)a->params;
    int64_t numel = sl_tensor_numel(&a->in[0]), K = a->in[0].shape[a->in[0].ndim - 1];
    if (numel == 0)
        return SL_OK;
    if (p->n > 0 && (numel / K) * ((K + p->m - 1) / p->m) > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^38 groups");
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    if (p->n > 0) {
        int64_t rows = numel / K, G = (K + p->m - 1) / p->m;
        SL_LAUNCH(magnitude_nm_kernel, blocks_of(rows * G), kThreads, 0, 0)(st.input<float>(0), st.output<float>(0),
                                                                            rows, K, (int)p->m, (int)p->n);
    } else {
        int64_t k = (int64_t)floor(p->sparsity * (double)numel);
        SL_LAUNCH(magnitude_kernel, 1, kThreads, 0, 0)(st.input<float>(0), st.output<float>(0), numel, k);
    }
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_prune_sparsegpt(const sl__kargs *a)
{
    const sl_prune_sgpt_params *p = (const sl_prune_sgpt_params *)a->params;
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], S = a->in[1].shape[0];
    int64_t B = p->blocksize;
    if (p->n > 0) {
        B -= B % p->m;
        B = B < p->m ? p->m : B;
    }
    if (N * K == 0)
        return SL_OK;
    if (N * K > (int64_t)INT32_MAX * kThreads / 2 || K * K > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^38 weights");
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    void *H, *Li, *W, *E, *score, *mask, *dead, *status;
    sl_status s;
    if ((s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(K * K), &H)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(K * K), &Li)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(N * K), &W)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(N * B), &E)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(N * B), &score)) ||
        (s = sl__cuda_scratch(&st, (size_t)(N * B), &mask)) || (s = sl__cuda_scratch(&st, (size_t)K, &dead)) ||
        (s = sl__cuda_scratch(&st, sizeof(int), &status)))
        return s;
    double *dH = (double *)H, *dW = (double *)W, *dE = (double *)E, *dS = (double *)score;
    uint8_t *dM = (uint8_t *)mask;
    SL_LAUNCH(gram_kernel, blocks_of(K * K), kThreads, 0, 0)(st.input<float>(1), dH, S, K, 2.0 / (double)S);
    SL_LAUNCH(to_double_kernel, blocks_of(N * K), kThreads, 0, 0)(st.input<float>(0), dW, N * K);
    SL_LAUNCH(factor_kernel, 1, 1, 0, 0)(dH, (double *)Li, (uint8_t *)dead, K, p->percdamp, (int *)status);
    int host_status = 0;
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess)
        err = cudaMemcpy(&host_status, status, sizeof host_status, cudaMemcpyDeviceToHost);
    if (err != cudaSuccess)
        return sl__cuda_stage_out(&st, err);
    if (host_status)
        return sl_ctx_fail(a->ctx, SL_EARG, "prune.sparsegpt: the %s is not positive definite (raise percdamp)",
                           host_status == 1 ? "damped Hessian" : "inverse Hessian");
    SL_LAUNCH(zero_dead_kernel, blocks_of(N * K), kThreads, 0, 0)(dW, (const uint8_t *)dead, N, K);
    for (int64_t i1 = 0; i1 < K; i1 += B) {
        int64_t i2 = i1 + B < K ? i1 + B : K, bw = i2 - i1;
        if (p->n == 0) {
            SL_LAUNCH(score_kernel, blocks_of(N * bw), kThreads, 0, 0)(dW, dH, dS, N, K, i1, bw);
            int64_t k = (int64_t)floor(p->sparsity * (double)(N * bw));
            SL_LAUNCH(block_mask_kernel, 1, kThreads, 0, 0)(dS, dM, N * bw, k);
        }
        SL_LAUNCH(rows_kernel, blocks_of(N), kThreads, 0, 0)(dW, dH, dE, dM, N, K, i1, i2, (int)p->n, (int)p->m);
        if (i2 < K)
            SL_LAUNCH(lazy_kernel, blocks_of(N * (K - i2)), kThreads, 0, 0)(dW, dH, dE, N, K, i1, i2);
    }
    SL_LAUNCH(to_float_kernel, blocks_of(N * K), kThreads, 0, 0)(dW, st.output<float>(0), N * K);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_prune_lowrank(const sl__kargs *a)
{
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], S = a->in[1].shape[0], r = a->out[0].shape[1];
    const sl_prune_lowrank_params *p = (const sl_prune_lowrank_params *)a->params;
    if (N * K == 0)
        return SL_OK;
    if (N * K > (int64_t)INT32_MAX * kThreads / 2 || K * K > (int64_t)INT32_MAX * kThreads / 2)
        return sl__cuda_unsupported(a, "more than 2^38 weights");
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    void *G, *L, *M, *C, *V, *U, *Z, *sig, *order, *status;
    sl_status s;
    if ((s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(K * K), &G)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(K * K), &L)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(N * K), &M)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(K * K), &C)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(K * K), &V)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(N * r), &U)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)(r * K), &Z)) ||
        (s = sl__cuda_scratch(&st, sizeof(double) * (size_t)K, &sig)) ||
        (s = sl__cuda_scratch(&st, sizeof(int64_t) * (size_t)K, &order)) ||
        (s = sl__cuda_scratch(&st, sizeof(int), &status)))
        return s;
    const double *dL = NULL;
    if (p->whiten) {
        SL_LAUNCH(gram_kernel, blocks_of(K * K), kThreads, 0, 0)(st.input<float>(1), (double *)G, S, K, 1.0);
        SL_LAUNCH(damped_chol_kernel, 1, 1, 0, 0)((const double *)G, (double *)L, K, (int *)status);
        int host_status = 0;
        cudaError_t err = cudaGetLastError();
        if (err == cudaSuccess)
            err = cudaMemcpy(&host_status, status, sizeof host_status, cudaMemcpyDeviceToHost);
        if (err != cudaSuccess)
            return sl__cuda_stage_out(&st, err);
        if (host_status)
            return sl_ctx_fail(a->ctx, SL_EARG, "prune.lowrank: the Gram matrix stays singular after damping");
        dL = (const double *)L;
    }
    SL_LAUNCH(wl_kernel, blocks_of(N * K), kThreads, 0, 0)(st.input<float>(0), dL, (double *)M, N, K);
    SL_LAUNCH(mtm_kernel, blocks_of(K * K), kThreads, 0, 0)((const double *)M, (double *)C, N, K);
    SL_LAUNCH(sym_eig_kernel, 1, 1, 0, 0)((double *)C, (double *)V, (double *)sig, (int64_t *)order, K);
    SL_LAUNCH(left_vectors_kernel, blocks_of(N * r), kThreads, 0, 0)((const double *)M, (const double *)V,
                                                                     (const double *)sig, (const int64_t *)order,
                                                                     (double *)U, N, K, r);
    SL_LAUNCH(factors_kernel, blocks_of(r), kThreads, 0, 0)((const double *)U, (const double *)V, dL,
                                                            (const double *)sig, (const int64_t *)order, (double *)Z,
                                                            st.output<float>(0), st.output<float>(1), N, K, r);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
