/* ref/prune.c — reference kernels of the prune family (issue 17), float64
 * and literal: selections by sorting (value, index) pairs, SparseGPT with
 * its own Cholesky factorisations and triangular inverse. Contracts in
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
    for (int64_t i = 0; i < K * K; i++)
        Li[i] = 0;
    for (int64_t j = 0; j < K; j++) {
        Li[j * K + j] = 1 / H[j * K + j];
        for (int64_t i = j + 1; i < K; i++) {
            double acc = 0;
            for (int64_t t = j; t < i; t++)
                acc += H[i * K + t] * Li[t * K + j];
            Li[i * K + j] = -acc / H[i * K + i];
        }
    }
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

size_t sl__ref_prune_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)n_threads;
    if (op == SL_OP_PRUNE_MAGNITUDE)
        return sizeof(ref_pair) * (size_t)sl_tensor_numel(&in[0]);
    const sl_prune_sgpt_params *p = params;
    return sgpt_bytes(in[0].shape[0], in[0].shape[1], sgpt_block(p), NULL, NULL);
}
