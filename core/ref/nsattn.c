/* ref/nsattn.c — the reference kernels of the nsattn family (attention
 * whose weights are not a softmax): float64 throughout, plain loops, the
 * contracts in sparselab.h read literally. attn.entmax's exact form sorts
 * the row (card entmax, algorithms B and C); attn.relu and norm.rms_gated
 * are the formulas of their contracts. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static sl_status interrupted(const sl__kargs *a)
{
    return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[ref]: interrupted", sl_op_info_get(a->op)->name);
}

/* sum of x[c] * y[c] over c < d, in double, in order */
static double dot(const float *x, const float *y, int64_t d)
{
    double s = 0;
    for (int64_t c = 0; c < d; c++)
        s += (double)x[c] * (double)y[c];
    return s;
}

/* acc += w * v over d channels */
static void axpy(double *acc, double w, const float *v, int64_t d)
{
    for (int64_t c = 0; c < d; c++)
        acc[c] += w * (double)v[c];
}

static int desc_cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? 1 : a > b ? -1 : 0;
}

/* tau of the exact sparsemax (alpha 2) or 1.5-entmax of X[0..n), by sorting
 * a copy into srt (card entmax B and C; X is (alpha - 1) z). */
static double exact_tau(const double *x, int64_t n, double alpha, double *srt)
{
    memcpy(srt, x, (size_t)n * sizeof *srt);
    qsort(srt, (size_t)n, sizeof *srt, desc_cmp);
    double cum = 0, cum2 = 0, tau = srt[0] - 1;
    if (alpha == 2.0) {
        /* k* = max{k : 1 + k z_(k) > sum_{r<=k} z_(r)}, tau = (sum - 1) / k* */
        for (int64_t k = 1; k <= n; k++) {
            cum += srt[k - 1];
            if (1.0 + (double)k * srt[k - 1] > cum)
                tau = (cum - 1.0) / (double)k;
        }
        return tau;
    }
    /* alpha 1.5: tau_k = mu_k - sqrt(max((1 - ss_k) / k, 0)), k* = #{k : tau_k <= z_(k)} */
    int64_t kstar = 0;
    for (int64_t k = 1; k <= n; k++) {
        cum += srt[k - 1];
        cum2 += srt[k - 1] * srt[k - 1];
        double mu = cum / (double)k, mu2 = cum2 / (double)k;
        double ss = (double)k * (mu2 - mu * mu), delta = (1.0 - ss) / (double)k;
        double tk = mu - sqrt(delta > 0 ? delta : 0);
        kstar += tk <= srt[k - 1];
    }
    /* tau = tau_{k*}, recomputed from the top k* */
    cum = cum2 = 0;
    for (int64_t k = 1; k <= kstar; k++) {
        cum += srt[k - 1];
        cum2 += srt[k - 1] * srt[k - 1];
    }
    double mu = cum / (double)kstar, mu2 = cum2 / (double)kstar;
    double ss = (double)kstar * (mu2 - mu * mu), delta = (1.0 - ss) / (double)kstar;
    return mu - sqrt(delta > 0 ? delta : 0);
}

static double powp(double t, double alpha)
{
    if (t <= 0)
        return 0;
    return alpha == 2.0 ? t : alpha == 1.5 ? t * t : pow(t, 1.0 / (alpha - 1.0));
}

sl_status sl__ref_attn_entmax(const sl__kargs *a)
{
    const sl_attn_entmax_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    float *o = a->out[0].data;
    int32_t *support = a->out[1].data;
    double *x = a->scratch, *w = x + dm.nk, *srt = w + dm.nk, *acc = srt + dm.nk;
    double alpha = p->alpha;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            const float *qr = q + (h * dm.nq + r) * dm.d;
            int64_t n = p->causal ? dm.offset + r + 1 : dm.nk;
            if (n > dm.nk)
                n = dm.nk;
            if (n < 0)
                n = 0;
            float *orow = o + (h * dm.nq + r) * dm.d;
            if (n == 0) {
                memset(orow, 0, (size_t)dm.d * sizeof *orow);
                support[h * dm.nq + r] = 0;
                continue;
            }
            double mx = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                const float *kj = k + (g * dm.nk + j) * dm.d;
                double s = dot(qr, kj, dm.d);
                x[j] = (alpha == 1.0 ? 1.0 : alpha - 1.0) * dm.scale * s;
                if (x[j] > mx)
                    mx = x[j];
            }
            int64_t cnt = 0;
            if (alpha == 1.0) {
                double sum = 0;
                for (int64_t j = 0; j < n; j++)
                    sum += (w[j] = exp(x[j] - mx));
                for (int64_t j = 0; j < n; j++)
                    w[j] /= sum;
                cnt = n;
            } else if (p->algo == 0) {
                double tau = exact_tau(x, n, alpha, srt);
                for (int64_t j = 0; j < n; j++) {
                    w[j] = powp(x[j] - tau, alpha);
                    cnt += w[j] > 0;
                }
            } else {
                double lo = mx - 1.0, hi = mx - pow(1.0 / (double)n, alpha - 1.0), step = hi - lo, sum = 0;
                for (int64_t it = 0; it < p->n_iter; it++) {
                    step /= 2;
                    double mid = lo + step;
                    sum = 0;
                    for (int64_t j = 0; j < n; j++)
                        sum += (w[j] = powp(x[j] - mid, alpha));
                    if (sum - 1.0 >= 0)
                        lo = mid;
                }
                for (int64_t j = 0; j < n; j++) {
                    w[j] = sum > 0 ? w[j] / sum : 0;
                    cnt += w[j] > 0;
                }
            }
            memset(acc, 0, (size_t)dm.d * sizeof *acc);
            for (int64_t j = 0; j < n; j++) {
                if (w[j] == 0)
                    continue;
                const float *vj = v + (g * dm.nk + j) * dm.d;
                axpy(acc, w[j], vj, dm.d);
            }
            for (int64_t c = 0; c < dm.d; c++)
                orow[c] = (float)acc[c];
            support[h * dm.nq + r] = (int32_t)cnt;
        }
    }
    return SL_OK;
}

sl_status sl__ref_attn_relu(const sl__kargs *a)
{
    const sl_attn_relu_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    float *o = a->out[0].data;
    int32_t *count = a->out[1].data;
    double *acc = a->scratch;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            const float *qr = q + (h * dm.nq + r) * dm.d;
            int64_t lim = p->causal ? dm.offset + r + 1 : dm.nk;
            double den = 0;
            int32_t cnt = 0;
            memset(acc, 0, (size_t)dm.d * sizeof *acc);
            for (int64_t j = 0; j < lim && j < dm.nk; j++) {
                const float *kj = k + (g * dm.nk + j) * dm.d, *vj = v + (g * dm.nk + j) * dm.d;
                double s = dot(qr, kj, dm.d);
                double t = dm.scale * s - p->bias;
                if (!(t > 0))
                    continue;
                double w = p->power == 1.0 ? t : pow(t, p->power);
                cnt++;
                den += w;
                axpy(acc, w, vj, dm.d);
            }
            double div = p->norm ? den : 1.0;
            for (int64_t c = 0; c < dm.d; c++)
                o[(h * dm.nq + r) * dm.d + c] = div > 0 ? (float)(acc[c] / div) : 0.f;
            count[h * dm.nq + r] = cnt;
        }
    }
    return SL_OK;
}

sl_status sl__ref_norm_rms_gated(const sl__kargs *a)
{
    const sl_norm_rms_gated_params *p = a->params;
    const float *x = a->in[0].data, *gs = a->in[1].buf ? a->in[1].data : NULL, *ws = a->in[2].buf ? a->in[2].data : NULL;
    float *y = a->out[0].data;
    int64_t H = a->in[0].shape[0], N = a->in[0].shape[1], D = a->in[0].shape[2];
    for (int64_t n = 0; n < N; n++) {
        double ms = 0;
        for (int64_t h = 0; h < H; h++)
            for (int64_t c = 0; c < D; c++) {
                double u = x[(h * N + n) * D + c];
                ms += u * u;
            }
        ms = H * D > 0 ? ms / (double)(H * D) : 0;
        double inv = 1.0 / sqrt(ms + p->eps);
        for (int64_t h = 0; h < H; h++)
            for (int64_t c = 0; c < D; c++) {
                int64_t e = h * D + c;
                double u = x[(h * N + n) * D + c], g = gs ? gs[e] : 1.0, w = ws ? ws[e] : 1.0;
                double gate = p->gate ? 1.0 / (1.0 + exp(-w * u)) : 1.0;
                y[(h * N + n) * D + c] = (float)(g * u * inv * gate);
            }
    }
    return SL_OK;
}

sl_status sl__ref_attn_sigmoid_gate(const sl__kargs *a)
{
    const sl_attn_sigmoid_gate_params *p = a->params;
    const float *o = a->in[0].data, *g = a->in[1].data;
    float *y = a->out[0].data;
    int32_t *kept = a->out[1].data;
    int64_t rows = a->in[0].shape[0] * a->in[0].shape[1], D = a->in[0].shape[2], G = a->in[1].shape[2];
    for (int64_t r = 0; r < rows; r++) {
        int32_t cnt = 0;
        for (int64_t c = 0; c < D; c++) {
            double sig = 1.0 / (1.0 + exp(-(double)g[r * G + (G == 1 ? 0 : c)]));
            int on = sig >= p->eps;
            y[r * D + c] = on ? (float)((double)o[r * D + c] * sig) : 0.f;
            cnt += on;
        }
        kept[r] = cnt;
    }
    return SL_OK;
}

/* 1 / max row norm of x [H, N, D] head h (1 for an all-zero head) */
static double inv_max_norm(const float *x, int64_t h, int64_t n, int64_t d)
{
    double best = 0;
    for (int64_t i = 0; i < n; i++) {
        double s = dot(x + (h * n + i) * d, x + (h * n + i) * d, d);
        best = s > best ? s : best;
    }
    return best > 0 ? 1.0 / sqrt(best) : 1.0;
}

sl_status sl__ref_attn_fastmax(const sl__kargs *a)
{
    const sl_attn_fastmax_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    float *o = a->out[0].data;
    double *acc = a->scratch;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        double sq = p->normalize ? p->lim * inv_max_norm(q, h, dm.nq, dm.d) : 1.0;
        double sk = p->normalize ? p->lim * inv_max_norm(k, g, dm.nk, dm.d) : 1.0;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            int64_t lim = p->causal ? dm.offset + r + 1 : dm.nk;
            double den = 0;
            memset(acc, 0, (size_t)dm.d * sizeof *acc);
            for (int64_t j = 0; j < lim && j < dm.nk; j++) {
                double x = dot(q + (h * dm.nq + r) * dm.d, k + (g * dm.nk + j) * dm.d, dm.d);
                x *= sq * sk;
                double f = p->a0 + p->a1 * x + (p->p == 2 ? p->a2 * x * x : 0.0);
                den += f;
                axpy(acc, f, v + (g * dm.nk + j) * dm.d, dm.d);
            }
            for (int64_t c = 0; c < dm.d; c++)
                o[(h * dm.nq + r) * dm.d + c] = den != 0 ? (float)(acc[c] / den) : 0.f;
        }
    }
    return SL_OK;
}

/* 1 / sqrt(mean(x^2) + eps) of one row (1 without the norm) */
static double rms_inv(const float *x, int64_t d, int on, double eps)
{
    if (!on)
        return 1.0;
    double s = dot(x, x, d);
    return 1.0 / sqrt(s / (double)d + eps);
}

sl_status sl__ref_attn_tra(const sl__kargs *a)
{
    const sl_attn_tra_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data, *delta = a->in[3].data;
    float *o = a->out[0].data;
    int32_t *count = a->out[1].data;
    double *sc = a->scratch, *acc = sc + dm.nk;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            const float *qr = q + (h * dm.nq + r) * dm.d;
            int64_t n = p->causal ? dm.offset + r + 1 : dm.nk;
            n = n > dm.nk ? dm.nk : n;
            double iq = rms_inv(qr, dm.d, (int)p->qk_norm, p->eps);
            for (int64_t j = 0; j < n; j++) {
                const float *kj = k + (g * dm.nk + j) * dm.d;
                double s = dot(qr, kj, dm.d);
                sc[j] = dm.scale * s * iq * rms_inv(kj, dm.d, (int)p->qk_norm, p->eps);
            }
            /* c_ij: kept keys at or after j, walking back from the query */
            int64_t kept = 0;
            double mx = -INFINITY, dl = delta[h * dm.nq + r];
            for (int64_t j = n - 1; j >= 0; j--) {
                if (sc[j] > 0) {
                    kept++;
                    sc[j] += dl * (double)kept;
                    mx = sc[j] > mx ? sc[j] : mx;
                } else {
                    sc[j] = -INFINITY;
                }
            }
            double l = 0;
            memset(acc, 0, (size_t)dm.d * sizeof *acc);
            for (int64_t j = 0; j < n; j++) {
                if (sc[j] == -INFINITY)
                    continue;
                double w = exp(sc[j] - mx);
                l += w;
                axpy(acc, w, v + (g * dm.nk + j) * dm.d, dm.d);
            }
            for (int64_t c = 0; c < dm.d; c++)
                o[(h * dm.nq + r) * dm.d + c] = kept ? (float)(acc[c] / l) : 0.f;
            count[h * dm.nq + r] = (int32_t)kept;
        }
    }
    return SL_OK;
}

sl_status sl__ref_attn_monotonic(const sl__kargs *a)
{
    const sl_attn_monotonic_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    float *o = a->out[0].data, *lse = a->out[1].data;
    int32_t *stop = a->out[2].data;
    double *acc = a->scratch;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group, t = 0;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            const float *qr = q + (h * dm.nq + r) * dm.d;
            int64_t n = p->causal ? dm.offset + r + 1 : dm.nk, found = -1;
            n = n > dm.nk ? dm.nk : n;
            for (int64_t j = t; j < n && found < 0; j++) {
                double s = dot(qr, k + (g * dm.nk + j) * dm.d, dm.d);
                if (dm.scale * s + p->r >= 0)
                    found = j;
            }
            float *orow = o + (h * dm.nq + r) * dm.d;
            stop[h * dm.nq + r] = (int32_t)found;
            if (found < 0) {
                memset(orow, 0, (size_t)dm.d * sizeof *orow);
                lse[h * dm.nq + r] = -INFINITY;
                continue;
            }
            t = found;
            int64_t j0 = found - p->chunk + 1 > 0 ? found - p->chunk + 1 : 0;
            double mx = -INFINITY;
            for (int pass = 0; pass < 2; pass++) {
                double l = 0;
                memset(acc, 0, (size_t)dm.d * sizeof *acc);
                for (int64_t j = j0; j <= found; j++) {
                    double s = dot(qr, k + (g * dm.nk + j) * dm.d, dm.d);
                    s *= dm.scale;
                    if (pass == 0) {
                        mx = s > mx ? s : mx;
                        continue;
                    }
                    double w = exp(s - mx);
                    l += w;
                    axpy(acc, w, v + (g * dm.nk + j) * dm.d, dm.d);
                }
                if (pass == 1) {
                    for (int64_t c = 0; c < dm.d; c++)
                        orow[c] = (float)(acc[c] / l);
                    lse[h * dm.nq + r] = (float)(mx + log(l));
                }
            }
        }
    }
    return SL_OK;
}

size_t sl__ref_nsattn_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params, (void)n_threads;
    switch (op) {
    case SL_OP_ATTN_ENTMAX: return (size_t)(3 * in[1].shape[1] + in[0].shape[2]) * sizeof(double);
    case SL_OP_ATTN_RELU:
    case SL_OP_ATTN_MONOTONIC:
    case SL_OP_ATTN_FASTMAX: return (size_t)in[0].shape[2] * sizeof(double);
    case SL_OP_ATTN_TRA: return (size_t)(in[1].shape[1] + in[0].shape[2]) * sizeof(double);
    default: return 0;
    }
}
