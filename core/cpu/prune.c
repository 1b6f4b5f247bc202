/* cpu/prune.c — the prune family on threads (issue 17).
 *
 * prune.magnitude: the k-th smallest magnitude by quickselect (O(numel), one
 * float copy), then entries below it and the first ties in index order are
 * zeroed; N:M
 * per row on threads. prune.sparsegpt in float64: the Hessian by dsyrk,
 * LAPACK dpotrf / dpotri / dpotrf for the upper factor of H^-1, the block's
 * mask by the same selection, the column loop with rows on threads (rows
 * are independent inside a block once the mask is set) and the lazy update
 * of the remaining columns by one dgemm per block. prune.lowrank: dsyrk,
 * dpotrf with ref's damping schedule, a triangular inverse, one dgemm and
 * LAPACK dgesvd. */
#include "cpu.h"
#include "parallel.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (OpenBLAS ships it); the trailing size_t is the Fortran length of uplo. */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);
void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda, int *info, size_t uplo_len,
             size_t diag_len);

/* The k-th smallest (0-based) of v[0..n), v reordered so that none before
 * v[k] is larger and none after it smaller (Hoare quickselect, median of
 * three; a sort of what is left after 64 rounds bounds the worst case); for
 * double scores and float magnitudes, and for cpu/tsel.c's budgets. */
#define SELECT_KTH(NAME, T, CMP)                                                            \
    static int CMP(const void *x, const void *y)                                            \
    {                                                                                       \
        T p = *(const T *)x, q = *(const T *)y;                                             \
        return (p > q) - (p < q);                                                           \
    }                                                                                       \
    T NAME(T *v, int64_t n, int64_t k)                                                      \
    {                                                                                       \
        int64_t lo = 0, hi = n - 1;                                                         \
        for (int round = 0; hi > lo; round++) {                                             \
            if (round == 64) {                                                              \
                qsort(v + lo, (size_t)(hi - lo + 1), sizeof *v, CMP);                       \
                return v[k];                                                                \
            }                                                                               \
            int64_t mid = lo + (hi - lo) / 2;                                               \
            T a = v[lo], b = v[mid], c = v[hi];                                             \
            T piv = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));  \
            int64_t i = lo, j = hi;                                                         \
            while (i <= j) {                                                                \
                while (v[i] < piv)                                                          \
                    i++;                                                                    \
                while (v[j] > piv)                                                          \
                    j--;                                                                    \
                if (i <= j) {                                                               \
                    T t = v[i];                                                             \
                    v[i++] = v[j];                                                          \
                    v[j--] = t;                                                             \
                }                                                                           \
            }                                                                               \
            if (k <= j)                                                                     \
                hi = j;                                                                     \
            else if (k >= i)                                                                \
                lo = i;                                                                     \
            else                                                                            \
                return v[k];                                                                \
        }                                                                                   \
        return v[k];                                                                        \
    }
SELECT_KTH(sl__cpu_select_kth_d, double, cmp_kth_d)
SELECT_KTH(sl__cpu_select_kth_f, float, cmp_kth_f)
#undef SELECT_KTH

/* prune[i] = 1 for the k entries smallest in (score, index) order; tmp holds n doubles. */
static void mark_smallest(const double *score, int64_t n, int64_t k, double *tmp, uint8_t *prune)
{
    memset(prune, 0, (size_t)n);
    if (k <= 0)
        return;
    memcpy(tmp, score, sizeof *tmp * (size_t)n);
    double theta = sl__cpu_select_kth_d(tmp, n, k - 1);
    int64_t less = 0;
    for (int64_t i = 0; i < n; i++)
        if (score[i] < theta)
            prune[i] = 1, less++;
    for (int64_t i = 0; i < n && less < k; i++)
        if (score[i] == theta)
            prune[i] = 1, less++;
}

/* keep[i] for the min(n, width) largest scores of a group (ties: lower index). */
static void nm_keep_sel(const double *score, int64_t width, int64_t n, uint8_t *keep)
{
    memset(keep, 0, (size_t)width);
    for (int64_t s = 0; s < n && s < width; s++) {
        int64_t best = -1;
        for (int64_t i = 0; i < width; i++)
            if (!keep[i] && (best < 0 || score[i] > score[best]))
                best = i;
        keep[best] = 1;
    }
}

/* ---- prune.magnitude ---- */

static void nm_rows_item(int64_t r, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_prune_mag_params *p = a->params;
    int64_t K = a->in[0].shape[a->in[0].ndim - 1];
    const float *w = (const float *)a->in[0].data + r * K;
    float *out = (float *)a->out[0].data + r * K;
    double score[256];
    uint8_t keep[256];
    for (int64_t c0 = 0; c0 < K; c0 += p->m) {
        int64_t width = K - c0 < p->m ? K - c0 : p->m;
        for (int64_t i = 0; i < width; i++)
            score[i] = fabs((double)w[c0 + i]);
        nm_keep_sel(score, width, p->n, keep);
        for (int64_t i = 0; i < width; i++)
            out[c0 + i] = keep[i] ? w[c0 + i] : 0.f;
    }
}

sl_status sl__cpu_prune_magnitude(const sl__kargs *a)
{
    const sl_prune_mag_params *p = a->params;
    int64_t numel = sl_tensor_numel(&a->in[0]), K = a->in[0].shape[a->in[0].ndim - 1];
    if (numel == 0)
        return SL_OK;
    if (p->n > 0)
        return sl__cpu_parallel(a->ctx, numel / K, nm_rows_item, (void *)a);
    const float *w = a->in[0].data;
    float *out = a->out[0].data, *mag = a->scratch;
    int64_t k = (int64_t)floor(p->sparsity * (double)numel);
    if (k == 0) {
        memcpy(out, w, sizeof *out * (size_t)numel);
        return SL_OK;
    }
    for (int64_t i = 0; i < numel; i++)
        mag[i] = fabsf(w[i]);
    float theta = sl__cpu_select_kth_f(mag, numel, k - 1);
    int64_t less = 0;
    for (int64_t i = 0; i < numel; i++)
        less += fabsf(w[i]) < theta;
    int64_t ties = k - less; /* the first ties in index order go too */
    for (int64_t i = 0; i < numel; i++) {
        float v = fabsf(w[i]);
        int drop = v < theta || (v == theta && ties-- > 0);
        out[i] = drop ? 0.f : w[i];
    }
    return SL_OK;
}

/* ---- prune.sparsegpt ---- */

typedef struct sgpt_job {
    const sl_prune_sgpt_params *p;
    double *W, *U, *E;
    uint8_t *mask;
    int64_t N, K, i1, i2;
} sgpt_job;

static int64_t sgpt_block_cols(const sl_prune_sgpt_params *p)
{
    if (p->n == 0)
        return p->blocksize;
    int64_t b = p->blocksize - p->blocksize % p->m;
    return b < p->m ? p->m : b;
}

/* One row through the block's columns (U row-major upper: U[i * K + j], j >= i). */
static void sgpt_row(int64_t r, void *ud, int thread)
{
    (void)thread;
    const sgpt_job *j = ud;
    int64_t K = j->K, i1 = j->i1, i2 = j->i2, bw = i2 - i1;
    double *w = j->W + r * K, *e = j->E + r * bw;
    uint8_t *mask = j->mask + r * bw;
    for (int64_t c = 0; c < bw; c++) {
        int64_t i = i1 + c;
        if (j->p->n > 0 && i % j->p->m == 0) {
            int64_t width = K - i < j->p->m ? K - i : j->p->m;
            double score[256];
            uint8_t keep[256];
            for (int64_t t = 0; t < width; t++) {
                double d = j->U[(i + t) * K + i + t];
                score[t] = w[i + t] * w[i + t] / (d * d);
            }
            nm_keep_sel(score, width, j->p->n, keep);
            for (int64_t t = 0; t < width; t++)
                mask[c + t] = !keep[t];
        }
        const double *u = j->U + i * K;
        double q = mask[c] ? 0 : w[i], err = (w[i] - q) / u[i];
        if (err != 0)
            for (int64_t t = i + 1; t < i2; t++)
                w[t] -= err * u[t];
        w[i] = q;
        e[c] = err;
    }
}

sl_status sl__cpu_prune_sparsegpt(const sl__kargs *a)
{
    const sl_prune_sgpt_params *p = a->params;
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], S = a->in[1].shape[0], B = sgpt_block_cols(p);
    if (N * K == 0)
        return SL_OK;
    double *H = a->scratch, *W = H + K * K, *E = W + N * K, *X = E + N * B, *tmp = X + S * K;
    uint8_t *mask = (uint8_t *)(tmp + N * B);
    const float *xf = a->in[1].data, *wf = a->in[0].data;
    for (int64_t i = 0; i < S * K; i++)
        X[i] = xf[i];
    for (int64_t i = 0; i < N * K; i++)
        W[i] = wf[i];
    sl__cpu_blas_single();
    /* H (upper, row-major) = 2/S X^T X, then mirrored */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)K, (int)S, 2.0 / (double)S, X, (int)K, 0.0, H, (int)K);
    for (int64_t i = 0; i < K; i++)
        for (int64_t jj = 0; jj < i; jj++)
            H[i * K + jj] = H[jj * K + i];
    double mean = 0;
    for (int64_t jj = 0; jj < K; jj++) {
        if (H[jj * K + jj] == 0) {
            H[jj * K + jj] = 1;
            for (int64_t r = 0; r < N; r++)
                W[r * K + jj] = 0;
        }
        mean += H[jj * K + jj] / (double)K;
    }
    for (int64_t jj = 0; jj < K; jj++)
        H[jj * K + jj] += p->percdamp * mean;
    int n = (int)K, info = 0;
    dpotrf_("U", &n, H, &n, &info, 1);
    if (info)
        return sl_ctx_fail(a->ctx, SL_EARG, "prune.sparsegpt: the damped Hessian is not positive definite (raise percdamp)");
    dpotri_("U", &n, H, &n, &info, 1);
    if (info)
        return sl_ctx_fail(a->ctx, SL_EARG, "prune.sparsegpt: the damped Hessian is singular (raise percdamp)");
    /* the inverse sits in the row-major lower triangle: mirror it up, then the
     * column-major lower factor is the row-major upper U with H^-1 = U^T U */
    for (int64_t i = 0; i < K; i++)
        for (int64_t jj = i + 1; jj < K; jj++)
            H[i * K + jj] = H[jj * K + i];
    dpotrf_("L", &n, H, &n, &info, 1);
    if (info)
        return sl_ctx_fail(a->ctx, SL_EARG, "prune.sparsegpt: the inverse Hessian is not positive definite");
    sgpt_job j = {p, W, H, E, mask, N, K, 0, 0};
    for (int64_t i1 = 0; i1 < K; i1 += B) {
        int64_t i2 = i1 + B < K ? i1 + B : K, bw = i2 - i1;
        j.i1 = i1, j.i2 = i2;
        memset(mask, 0, (size_t)(N * bw));
        if (p->n == 0) {
            double *score = E; /* free until the column loop */
            for (int64_t r = 0; r < N; r++)
                for (int64_t c = 0; c < bw; c++) {
                    double wv = W[r * K + i1 + c], d = H[(i1 + c) * K + i1 + c];
                    score[r * bw + c] = wv * wv / (d * d);
                }
            mark_smallest(score, N * bw, (int64_t)floor(p->sparsity * (double)(N * bw)), tmp, mask);
        }
        sl_status s = sl__cpu_parallel(a->ctx, N, sgpt_row, &j);
        if (s)
            return s;
        if (i2 < K)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)(K - i2), (int)bw, -1.0, E, (int)bw,
                        H + i1 * K + i2, (int)K, 1.0, W + i2, (int)K);
    }
    float *out = a->out[0].data;
    for (int64_t i = 0; i < N * K; i++)
        out[i] = (float)W[i];
    return SL_OK;
}

/* L (row-major lower, G = L L^T) of G + delta.I with delta = 0, then
 * mean(diag G).1e-12.10^i until it factors (ref's schedule); 1 on failure. */
static int lowrank_whitening(const double *G, int64_t K, double *L)
{
    double mean = 0;
    for (int64_t i = 0; i < K; i++)
        mean += G[i * K + i] / (double)K;
    int n = (int)K, info = 1;
    for (int attempt = 0; attempt < 14 && info; attempt++) {
        double delta = attempt ? (mean > 0 ? mean : 1) * 1e-12 * pow(10, attempt) : 0;
        memcpy(L, G, sizeof *L * (size_t)(K * K));
        for (int64_t i = 0; i < K; i++)
            L[i * K + i] += delta;
        dpotrf_("U", &n, L, &n, &info, 1); /* column-major upper = row-major lower */
    }
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = i + 1; j < K; j++)
            L[i * K + j] = 0;
    return info != 0;
}

/* ---- prune.lowrank ---- */

void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *info,
             size_t jobu_len, size_t jobvt_len);

static int64_t lowrank_rank(const sl_prune_lowrank_params *p, int64_t N, int64_t K)
{
    int64_t full = N < K ? N : K;
    int64_t r = p->rank ? p->rank : (int64_t)floor(p->rho * (double)N * (double)K / (double)(N + K));
    r = r < 1 ? 1 : r;
    return r > full ? full : r;
}

sl_status sl__cpu_prune_lowrank(const sl__kargs *a)
{
    const sl_prune_lowrank_params *p = a->params;
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], S = a->in[1].shape[0], r = lowrank_rank(p, N, K);
    int64_t mn = N < K ? N : K;
    double *G = a->scratch, *Li = G + K * K, *M = Li + K * K, *sv = M + N * K, *U = sv + mn, *VT = U + N * mn;
    double *work = VT + mn * K, *X = work + 16 * (N + K) * 8;
    const float *w = a->in[0].data, *xf = a->in[1].data;
    sl__cpu_blas_single();
    /* Li = L^-1 with G = L L^T (whiten), else I */
    for (int64_t i = 0; i < K * K; i++)
        Li[i] = 0;
    for (int64_t i = 0; i < K; i++)
        Li[i * K + i] = 1;
    if (p->whiten) {
        for (int64_t i = 0; i < S * K; i++)
            X[i] = xf[i];
        cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, (int)K, (int)S, 1.0, X, (int)K, 0.0, G, (int)K);
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = i + 1; j < K; j++)
                G[i * K + j] = G[j * K + i];
        if (lowrank_whitening(G, K, M))
            return sl_ctx_fail(a->ctx, SL_EARG, "prune.lowrank: the Gram matrix stays singular after damping");
        /* M holds L (row-major lower = column-major upper): Li by LAPACK dtrtri */
        memcpy(Li, M, sizeof *Li * (size_t)(K * K));
        int n = (int)K, info = 0;
        dtrtri_("U", "N", &n, Li, &n, &info, 1, 1);
        if (info)
            return sl_ctx_fail(a->ctx, SL_EARG, "prune.lowrank: the whitening factor is singular");
        /* M = W L */
        for (int64_t i = 0; i < N * K; i++)
            X[i] = w[i];
        double *L = G; /* copy L out of M before overwriting it */
        memcpy(L, M, sizeof *L * (size_t)(K * K));
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)K, (int)K, 1.0, X, (int)K, L, (int)K, 0.0,
                    M, (int)K);
    } else
        for (int64_t i = 0; i < N * K; i++)
            M[i] = w[i];
    /* SVD of M (row-major N x K) = SVD of the column-major K x N matrix M^T:
     * M^T = U' S V'^T  =>  M = V' S U'^T, so U_M = V' (rows of VT'), V_M = U' */
    int m_ = (int)K, n_ = (int)N, lda = (int)K, ldu = (int)K, ldvt = (int)mn, lwork = (int)(16 * (N + K) * 8), info = 0;
    dgesvd_("S", "S", &m_, &n_, M, &lda, sv, VT, &ldu, U, &ldvt, work, &lwork, &info, 1, 1);
    if (info)
        return sl_ctx_fail(a->ctx, SL_EARG, "prune.lowrank: the SVD did not converge (LAPACK info %d)", info);
    /* column-major VT' is mn x N (ldvt mn): row c of U_M^T = U_M[:, c] is U[n * mn + c];
     * column-major U' is K x mn (ldu K): V_M[:, c] is VT[c * K + k] */
    float *A = a->out[0].data, *B = a->out[1].data;
    for (int64_t c = 0; c < r; c++) {
        double s = sqrt(sv[c]), sign = 1, best = -1;
        for (int64_t n = 0; n < N; n++)
            if (fabs(U[n * mn + c]) > best + 1e-12)
                best = fabs(U[n * mn + c]), sign = U[n * mn + c] < 0 ? -1 : 1;
        for (int64_t n = 0; n < N; n++)
            A[n * r + c] = (float)(sign * U[n * mn + c] * s);
        for (int64_t k = 0; k < K; k++) {
            double acc = 0;
            for (int64_t i = k; i < K; i++)
                acc += VT[c * K + i] * Li[i * K + k];
            B[c * K + k] = (float)(sign * s * acc);
        }
    }
    return SL_OK;
}

size_t sl__cpu_prune_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)n_threads;
    int64_t numel = sl_tensor_numel(&in[0]);
    if (op == SL_OP_PRUNE_MAGNITUDE)
        return sizeof(float) * (size_t)numel;
    if (op == SL_OP_PRUNE_LOWRANK) {
        int64_t N = in[0].shape[0], K = in[0].shape[1], S = in[1].shape[0], mn = N < K ? N : K;
        int64_t rows = S > N ? S : N;
        return sizeof(double) * (size_t)(2 * K * K + N * K + mn + N * mn + mn * K + 16 * (N + K) * 8 + rows * K);
    }
    const sl_prune_sgpt_params *p = params;
    int64_t N = in[0].shape[0], K = in[0].shape[1], S = in[1].shape[0], B = sgpt_block_cols(p);
    return sizeof(double) * (size_t)(K * K + N * K + N * B + S * K + N * B) + (size_t)(N * B);
}
