/* ref/prune.c — reference kernels of the prune family (issue 17), float64
 * and literal: selections by sorting (value, index) pairs, SparseGPT with
 * its own Cholesky factorisations and triangular inverse, prune.lowrank with
 * a one-sided Jacobi SVD. Contracts in
 * sparselab.h. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_pair { double v; int64_t i; } ref_pair;

/* ascending value, then ascending index */
static int pair_cmp(const void *pa, const void *pb)
{
    const ref_pair *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v < b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* keep[i] = 1 for the min(n, width) largest |row[i]| of one group (ties: lower index). */
static void nm_keep(const double *score, int64_t width, int64_t n, uint8_t *keep)
{
    for (int64_t i = 0; i < width; i++) {
        int64_t above = 0;
        for (int64_t j = 0; j < width; j++)
            above += score[j] > score[i] || (score[j] == score[i] && j < i);
        keep[i] = above < n;
    }
}

sl_status sl__ref_prune_magnitude(const sl__kargs *a)
{
    const sl_prune_mag_params *p = a->params;
    const float *w = a->in[0].data;
    float *out = a->out[0].data;
    int64_t numel = sl_tensor_numel(&a->in[0]), K = a->in[0].shape[a->in[0].ndim - 1];
    memcpy(out, w, sizeof *out * (size_t)numel);
    if (p->n > 0) {
        double score[256];
        uint8_t keep[256];
        for (int64_t r = 0; K > 0 && r < numel / K; r++)
            for (int64_t c0 = 0; c0 < K; c0 += p->m) {
                int64_t width = K - c0 < p->m ? K - c0 : p->m;
                for (int64_t i = 0; i < width; i++)
                    score[i] = fabs((double)w[r * K + c0 + i]);
                nm_keep(score, width, p->n, keep);
                for (int64_t i = 0; i < width; i++)
                    if (!keep[i])
                        out[r * K + c0 + i] = 0;
            }
        return SL_OK;
    }
    ref_pair *pr = a->scratch;
    for (int64_t i = 0; i < numel; i++)
        pr[i] = (ref_pair){fabs((double)w[i]), i};
    qsort(pr, (size_t)numel, sizeof *pr, pair_cmp);
    int64_t k = (int64_t)floor(p->sparsity * (double)numel);
    for (int64_t i = 0; i < k; i++)
        out[pr[i].i] = 0;
    return SL_OK;
}

/* Lower Cholesky factor of the symmetric K x K a, in place (upper part left
 * as is); 0 when a is not positive definite. */
static int cholesky_lower(double *a, int64_t K)
{
    for (int64_t j = 0; j < K; j++) {
        double d = a[j * K + j];
        for (int64_t t = 0; t < j; t++)
            d -= a[j * K + t] * a[j * K + t];
        if (!(d > 0))
            return 0;
        a[j * K + j] = sqrt(d);
        for (int64_t i = j + 1; i < K; i++) {
            double s = a[i * K + j];
            for (int64_t t = 0; t < j; t++)
                s -= a[i * K + t] * a[j * K + t];
            a[i * K + j] = s / a[j * K + j];
        }
    }
    return 1;
}

/* Li = L^-1 for the lower triangular L (K x K, row-major; the upper part of
 * L is not read), by forward substitution. */
static void lower_inverse(const double *L, int64_t K, double *Li)
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

typedef struct sgpt_scratch {
    double *H, *Li, *W, *E;
    ref_pair *pairs;
    uint8_t *mask;
} sgpt_scratch;

static size_t sgpt_bytes(int64_t N, int64_t K, int64_t B, sgpt_scratch *s, char *base)
{
    size_t off = 0;
#define TAKE(field, type, count)                                                  \
    do {                                                                          \
        if (s)                                                                    \
            s->field = (type *)(base + off);                                      \
        off += ((sizeof(type) * (size_t)(count)) + 15) / 16 * 16;                 \
    } while (0)
    TAKE(H, double, K * K);
    TAKE(Li, double, K * K);
    TAKE(W, double, N * K);
    TAKE(E, double, N * B);
    TAKE(pairs, ref_pair, N * B);
    TAKE(mask, uint8_t, N * B);
#undef TAKE
    return off;
}

static int64_t sgpt_block(const sl_prune_sgpt_params *p)
{
    if (p->n == 0)
        return p->blocksize;
    int64_t b = p->blocksize - p->blocksize % p->m;
    return b < p->m ? p->m : b;
}

sl_status sl__ref_prune_sparsegpt(const sl__kargs *a)
{
    const sl_prune_sgpt_params *p = a->params;
    const float *w = a->in[0].data, *x = a->in[1].data;
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], S = a->in[1].shape[0], B = sgpt_block(p);
    sgpt_scratch s;
    sgpt_bytes(N, K, B, &s, a->scratch);
    double *H = s.H, *Li = s.Li, *W = s.W;
    /* H = 2/S x^T x */
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) {
            double acc = 0;
            for (int64_t t = 0; t < S; t++)
                acc += (double)x[t * K + i] * x[t * K + j];
            H[i * K + j] = 2 * acc / (double)S;
        }
    for (int64_t i = 0; i < N * K; i++)
        W[i] = w[i];
    double mean = 0;
    for (int64_t j = 0; j < K; j++) {
        if (H[j * K + j] == 0) {
            H[j * K + j] = 1;
            for (int64_t r = 0; r < N; r++)
                W[r * K + j] = 0;
        }
        mean += H[j * K + j] / (double)K;
    }
    for (int64_t j = 0; j < K; j++)
        H[j * K + j] += p->percdamp * mean;
    if (!cholesky_lower(H, K))
        return sl_ctx_fail(a->ctx, SL_EARG, "prune.sparsegpt: the damped Hessian is not positive definite (raise percdamp)");
    /* Li = L^-1 (lower), then H^-1 = Li^T Li into H, then its lower factor L2: U = L2^T */
    lower_inverse(H, K, Li);
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) {
            double acc = 0;
            for (int64_t t = i > j ? i : j; t < K; t++)
                acc += Li[t * K + i] * Li[t * K + j];
            H[i * K + j] = acc;
        }
    if (!cholesky_lower(H, K))
        return sl_ctx_fail(a->ctx, SL_EARG, "prune.sparsegpt: the inverse Hessian is not positive definite");
    /* U[i][j] = L2[j][i] for j >= i */
#define U(i, j) H[(j) * K + (i)]
    for (int64_t i1 = 0; i1 < K; i1 += B) {
        int64_t i2 = i1 + B < K ? i1 + B : K, bw = i2 - i1;
        uint8_t *mask = s.mask; /* [N, bw]: 1 = pruned */
        memset(mask, 0, (size_t)(N * bw));
        if (p->n == 0) {
            for (int64_t r = 0; r < N; r++)
                for (int64_t c = 0; c < bw; c++) {
                    double wv = W[r * K + i1 + c], d = U(i1 + c, i1 + c);
                    s.pairs[r * bw + c] = (ref_pair){wv * wv / (d * d), r * bw + c};
                }
            qsort(s.pairs, (size_t)(N * bw), sizeof *s.pairs, pair_cmp);
            int64_t k = (int64_t)floor(p->sparsity * (double)(N * bw));
            for (int64_t t = 0; t < k; t++)
                mask[s.pairs[t].i] = 1;
        }
        for (int64_t c = 0; c < bw; c++) {
            int64_t i = i1 + c;
            if (p->n > 0 && i % p->m == 0) {
                int64_t width = K - i < p->m ? K - i : p->m;
                double score[256];
                uint8_t keep[256];
                for (int64_t r = 0; r < N; r++) {
                    for (int64_t t = 0; t < width; t++) {
                        double wv = W[r * K + i + t], d = U(i + t, i + t);
                        score[t] = wv * wv / (d * d);
                    }
                    nm_keep(score, width, p->n, keep);
                    for (int64_t t = 0; t < width; t++)
                        mask[r * bw + c + t] = !keep[t];
                }
            }
            double d = U(i, i);
            for (int64_t r = 0; r < N; r++) {
                double wv = W[r * K + i], q = mask[r * bw + c] ? 0 : wv, e = (wv - q) / d;
                for (int64_t j = i; j < i2; j++)
                    W[r * K + j] -= e * U(i, j);
                W[r * K + i] = q;
                s.E[r * bw + c] = e;
            }
        }
        for (int64_t r = 0; r < N; r++)
            for (int64_t j = i2; j < K; j++) {
                double acc = 0;
                for (int64_t c = 0; c < bw; c++)
                    acc += s.E[r * bw + c] * U(i1 + c, j);
                W[r * K + j] -= acc;
            }
    }
#undef U
    float *out = a->out[0].data;
    for (int64_t i = 0; i < N * K; i++)
        out[i] = (float)W[i];
    return SL_OK;
}

/* ---- prune.lowrank ---- */

/* Hestenes one-sided Jacobi: the columns of M [rows, cols] (row-major, in
 * place) become U.diag(sigma); V [cols, cols] accumulates the rotations. */
static void jacobi_svd(double *M, int64_t rows, int64_t cols, double *V)
{
    for (int64_t i = 0; i < cols * cols; i++)
        V[i] = 0;
    for (int64_t i = 0; i < cols; i++)
        V[i * cols + i] = 1;
    for (int sweep = 0; sweep < 80; sweep++) {
        int rotated = 0;
        for (int64_t p = 0; p < cols; p++)
            for (int64_t q = p + 1; q < cols; q++) {
                double x = 0, y = 0, c = 0;
                for (int64_t i = 0; i < rows; i++) {
                    x += M[i * cols + p] * M[i * cols + p];
                    y += M[i * cols + q] * M[i * cols + q];
                    c += M[i * cols + p] * M[i * cols + q];
                }
                if (c == 0 || fabs(c) <= 1e-15 * sqrt(x * y))
                    continue;
                rotated = 1;
                double zeta = (y - x) / (2 * c), t = (zeta >= 0 ? 1 : -1) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                double cs = 1 / sqrt(1 + t * t), sn = cs * t;
                for (int64_t i = 0; i < rows; i++) {
                    double mp = M[i * cols + p], mq = M[i * cols + q];
                    M[i * cols + p] = cs * mp - sn * mq;
                    M[i * cols + q] = sn * mp + cs * mq;
                }
                for (int64_t i = 0; i < cols; i++) {
                    double vp = V[i * cols + p], vq = V[i * cols + q];
                    V[i * cols + p] = cs * vp - sn * vq;
                    V[i * cols + q] = sn * vp + cs * vq;
                }
            }
        if (!rotated)
            break;
    }
}

static int64_t lowrank_rank(const sl_prune_lowrank_params *p, int64_t N, int64_t K)
{
    int64_t full = N < K ? N : K;
    int64_t r = p->rank ? p->rank : (int64_t)floor(p->rho * (double)N * (double)K / (double)(N + K));
    r = r < 1 ? 1 : r;
    return r > full ? full : r;
}

sl_status sl__ref_prune_lowrank(const sl__kargs *a)
{
    const sl_prune_lowrank_params *p = a->params;
    const float *w = a->in[0].data, *x = a->in[1].data;
    int64_t N = a->in[0].shape[0], K = a->in[0].shape[1], S = a->in[1].shape[0], r = lowrank_rank(p, N, K);
    double *L = a->scratch, *Li = L + K * K, *M = Li + K * K, *V = M + N * K, *sig = V + K * K;
    int64_t *order = (int64_t *)(sig + K);
    for (int64_t i = 0; i < K * K; i++)
        L[i] = Li[i] = i / K == i % K;
    if (p->whiten) {
        /* G = x^T x; L = chol(G + delta I), delta raised until it succeeds */
        double mean = 0;
        for (int64_t i = 0; i < K; i++)
            for (int64_t t = 0; t < S; t++)
                mean += (double)x[t * K + i] * x[t * K + i] / (double)K;
        int ok = 0;
        for (int attempt = 0; attempt < 14 && !ok; attempt++) {
            double delta = attempt ? (mean > 0 ? mean : 1) * 1e-12 * pow(10, attempt) : 0;
            for (int64_t i = 0; i < K; i++)
                for (int64_t j = 0; j < K; j++) {
                    double acc = 0;
                    for (int64_t t = 0; t < S; t++)
                        acc += (double)x[t * K + i] * x[t * K + j];
                    L[i * K + j] = acc + (i == j ? delta : 0);
                }
            ok = cholesky_lower(L, K);
        }
        if (!ok)
            return sl_ctx_fail(a->ctx, SL_EARG, "prune.lowrank: the Gram matrix stays singular after damping");
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = i + 1; j < K; j++)
                L[i * K + j] = 0;
        lower_inverse(L, K, Li);
    }
    /* M = W L, then its SVD */
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            double acc = 0;
            for (int64_t i = 0; i < K; i++)
                acc += (double)w[n * K + i] * L[i * K + k];
            M[n * K + k] = acc;
        }
    jacobi_svd(M, N, K, V);
    for (int64_t j = 0; j < K; j++) {
        double s = 0;
        for (int64_t n = 0; n < N; n++)
            s += M[n * K + j] * M[n * K + j];
        sig[j] = sqrt(s);
        order[j] = j;
    }
    for (int64_t i = 1; i < K; i++) { /* sigma descending, then column */
        int64_t v = order[i], j = i - 1;
        while (j >= 0 && sig[order[j]] < sig[v]) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = v;
    }
    float *A = a->out[0].data, *B = a->out[1].data;
    for (int64_t c = 0; c < r; c++) {
        int64_t j = order[c];
        double s = sig[j], rs = sqrt(s), sign = 1, best = -1;
        /* u = M[:, j] / s; sign: the largest |u| entry (first within 1e-12) is positive */
        for (int64_t n = 0; n < N; n++)
            if (s > 0 && fabs(M[n * K + j] / s) > best + 1e-12)
                best = fabs(M[n * K + j] / s), sign = M[n * K + j] < 0 ? -1 : 1;
        for (int64_t n = 0; n < N; n++)
            A[n * r + c] = (float)(s > 0 ? sign * M[n * K + j] / s * rs : 0);
        for (int64_t k = 0; k < K; k++) {
            double acc = 0;
            for (int64_t i = k; i < K; i++)
                acc += V[i * K + j] * Li[i * K + k];
            B[c * K + k] = (float)(sign * rs * acc);
        }
    }
    return SL_OK;
}

size_t sl__ref_prune_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)n_threads;
    if (op == SL_OP_PRUNE_MAGNITUDE)
        return sizeof(ref_pair) * (size_t)sl_tensor_numel(&in[0]);
    if (op == SL_OP_PRUNE_LOWRANK) {
        int64_t N = in[0].shape[0], K = in[0].shape[1];
        return sizeof(double) * (size_t)(3 * K * K + N * K + K) + sizeof(int64_t) * (size_t)K;
    }
    const sl_prune_sgpt_params *p = params;
    return sgpt_bytes(in[0].shape[0], in[0].shape[1], sgpt_block(p), NULL, NULL);
}
