/* ref/trainable.c — reference kernels of the trainable family (issue 14;
 * card nsa): trainable.compress and trainable.nsa, the contracts read
 * literally in float64 with plain loops. The oracle of cpu/ and cuda/. */
#include "ref.h"
#include "trainable_select.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

sl_status sl__ref_trainable_compress(const sl__kargs *a)
{
    const sl_trainable_compress_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], N = x->shape[1], D = x->shape[2], C = a->out[0].shape[1];
    const float *X = x->data, *W = a->in[1].data, *PE = a->in[2].buf ? a->in[2].data : NULL;
    float *Y = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < C; i++)
            for (int64_t c = 0; c < D; c++) {
                double acc = 0;
                for (int64_t r = 0; r < p->l; r++) {
                    int64_t t = i * p->s + r;
                    if (t >= N)
                        break;
                    for (int64_t e = 0; e < D; e++) {
                        if (p->mode == 0 && e != c)
                            continue;
                        double val = X[(h * N + t) * D + e] + (PE ? PE[(h * p->l + r) * D + e] : 0.0);
                        acc += p->mode == 0 ? val : val * W[(h * p->l * D + r * D + e) * D + c];
                    }
                }
                Y[(h * C + i) * D + c] = (float)(p->mode == 0 ? acc / (double)p->l : acc);
            }
    return SL_OK;
}

/* The overlap of compressed window i ([i s, i s + l)) with selection block j
 * ([j bs, (j+1) bs)) in tokens. */
static int64_t overlap(int64_t i, int64_t j, const sl_trainable_nsa_params *p)
{
    int64_t lo = i * p->s > j * p->bs ? i * p->s : j * p->bs;
    int64_t hi = i * p->s + p->l < (j + 1) * p->bs ? i * p->s + p->l : (j + 1) * p->bs;
    return hi > lo ? hi - lo : 0;
}

/* Softmax attention of row qv over the keys with keep[j] (j < nk): adds
 * gate · O to out (float64) and returns the log-sum-exp (-inf when empty). */
static double attend(const float *qv, const float *K, const float *V, int64_t nk, int64_t D, double scale,
                     const uint8_t *keep, double gate, double *out)
{
    double m = -INFINITY;
    for (int64_t j = 0; j < nk; j++)
        if (keep[j]) {
            double sc = 0;
            for (int64_t e = 0; e < D; e++)
                sc += (double)qv[e] * K[j * D + e];
            m = fmax(m, sc * scale);
        }
    if (m == -INFINITY)
        return -INFINITY;
    double z = 0;
    for (int64_t j = 0; j < nk; j++)
        if (keep[j]) {
            double sc = 0;
            for (int64_t e = 0; e < D; e++)
                sc += (double)qv[e] * K[j * D + e];
            z += exp(sc * scale - m);
        }
    for (int64_t j = 0; j < nk; j++)
        if (keep[j]) {
            double sc = 0;
            for (int64_t e = 0; e < D; e++)
                sc += (double)qv[e] * K[j * D + e];
            double w = gate * exp(sc * scale - m) / z;
            for (int64_t e = 0; e < D; e++)
                out[e] += w * V[j * D + e];
        }
    return m + log(z);
}

sl_status sl__ref_trainable_nsa(const sl__kargs *a)
{
    const sl_trainable_nsa_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], Nc = a->in[3].shape[1];
    int64_t g = Hq / Hkv, nb = (Nk + p->bs - 1) / p->bs, n = p->n;
    double scale = p->scale > 0 ? p->scale : 1.0 / sqrt((double)D);
    const float *Q = a->in[0].data, *K = a->in[1].data, *V = a->in[2].data, *KC = a->in[3].data,
                *VC = a->in[4].data, *GC = a->in[5].data, *GS = a->in[6].data, *GW = a->in[7].data;
    float *O = a->out[0].data, *L = a->out[1].data, *IMP = a->out[3].data;
    int32_t *B = a->out[2].data;
    size_t n_ck = (size_t)(Nc > Nk ? Nc : Nk);
    uint8_t *keep = malloc(n_ck + (size_t)nb);
    double *acc = malloc(sizeof *acc * (size_t)D), *imp = malloc(sizeof *imp * (size_t)nb);
    if (!keep || !acc || !imp) {
        free(keep), free(acc), free(imp);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.nsa[ref]: out of memory");
    }
    uint8_t *chosen = keep + n_ck;
    for (int64_t kv = 0; kv < Hkv; kv++)
        for (int64_t t = 0; t < Nq; t++) {
            int64_t pos = Nk - Nq + t, jq = pos / p->bs;
            /* compressed branch and the importance of every block */
            for (int64_t j = 0; j < nb; j++)
                imp[j] = 0;
            for (int64_t i = 0; i < Nc; i++)
                keep[i] = i * p->s + p->l - 1 <= pos;
            for (int64_t hh = 0; hh < g; hh++) {
                int64_t h = kv * g + hh;
                const float *qv = Q + (h * Nq + t) * D;
                const float *kc = KC + kv * Nc * D, *vc = VC + kv * Nc * D;
                for (int64_t e = 0; e < D; e++)
                    acc[e] = 0;
                double lse = attend(qv, kc, vc, Nc, D, scale, keep, GC[h * Nq + t], acc);
                for (int64_t e = 0; e < D; e++)
                    O[(h * Nq + t) * D + e] = (float)acc[e];
                if (lse == -INFINITY)
                    continue;
                for (int64_t i = 0; i < Nc; i++) {
                    if (!keep[i])
                        continue;
                    double sc = 0;
                    for (int64_t e = 0; e < D; e++)
                        sc += (double)qv[e] * kc[i * D + e];
                    double pr = exp(sc * scale - lse);
                    for (int64_t j = 0; j < nb; j++)
                        imp[j] += pr * (double)overlap(i, j, p) / (double)p->s;
                }
            }
            for (int64_t j = 0; j < nb; j++)
                IMP[(kv * Nq + t) * nb + j] = (float)imp[j];
            /* selection: forced blocks, then the largest importance */
            int64_t cnt = 0;
            for (int64_t j = 0; j < nb; j++) {
                chosen[j] = j <= jq && (j < p->init || j > jq - p->local);
                cnt += chosen[j];
            }
            while (cnt < n && cnt < jq + 1) {
                int64_t best = -1;
                for (int64_t j = 0; j <= jq; j++)
                    if (!chosen[j] && (best < 0 || imp[j] > imp[best]))
                        best = j;
                chosen[best] = 1;
                cnt++;
            }
            int32_t *brow = B + (kv * Nq + t) * n;
            int64_t c = 0;
            for (int64_t j = 0; j < nb; j++)
                if (chosen[j])
                    brow[c++] = (int32_t)j;
            for (; c < n; c++)
                brow[c] = -1;
            /* selection and window branches, and the union's log-sum-exp */
            for (int64_t hh = 0; hh < g; hh++) {
                int64_t h = kv * g + hh;
                const float *qv = Q + (h * Nq + t) * D;
                const float *k = K + kv * Nk * D, *v = V + kv * Nk * D;
                for (int64_t e = 0; e < D; e++)
                    acc[e] = O[(h * Nq + t) * D + e];
                for (int64_t j = 0; j < Nk; j++)
                    keep[j] = j <= pos && chosen[j / p->bs];
                attend(qv, k, v, Nk, D, scale, keep, GS[h * Nq + t], acc);
                for (int64_t j = 0; j < Nk; j++)
                    keep[j] = j <= pos && j > pos - p->window;
                attend(qv, k, v, Nk, D, scale, keep, GW[h * Nq + t], acc);
                for (int64_t e = 0; e < D; e++)
                    O[(h * Nq + t) * D + e] = (float)acc[e];
                for (int64_t j = 0; j < Nk; j++)
                    keep[j] = j <= pos && (chosen[j / p->bs] || j > pos - p->window);
                double z = 0, m = -INFINITY;
                for (int64_t j = 0; j < Nk; j++)
                    if (keep[j]) {
                        double sc = 0;
                        for (int64_t e = 0; e < D; e++)
                            sc += (double)qv[e] * k[j * D + e];
                        m = fmax(m, sc * scale);
                    }
                for (int64_t j = 0; j < Nk && m > -INFINITY; j++)
                    if (keep[j]) {
                        double sc = 0;
                        for (int64_t e = 0; e < D; e++)
                            sc += (double)qv[e] * k[j * D + e];
                        z += exp(sc * scale - m);
                    }
                L[h * Nq + t] = (float)(m > -INFINITY ? m + log(z) : -INFINITY);
            }
        }
    free(keep), free(acc), free(imp);
    return SL_OK;
}

size_t sl__ref_trainable_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}

/* ---- trainable.sparsek ---- */

/* tau of the SPARSEK projection of u[0..m) with Σ clip(u - tau, 0, 1) = kk
 * (0 < kk < m), by bisection on [min u - 1, max u]. */
static double ref_tau(const float *u, int64_t m, double kk)
{
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t j = 0; j < m; j++) {
        lo = fmin(lo, (double)u[j] - 1.0);
        hi = fmax(hi, (double)u[j]);
    }
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi), f = 0;
        for (int64_t j = 0; j < m; j++)
            f += fmin(1.0, fmax(0.0, (double)u[j] - mid));
        if (f > kk)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

sl_status sl__ref_trainable_sparsek(const sl__kargs *a)
{
    const sl_trainable_sparsek_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], g = Hq / Hkv;
    double scale = p->scale > 0 ? p->scale : 1.0 / sqrt((double)D);
    const float *Q = a->in[0].data, *K = a->in[1].data, *V = a->in[2].data, *U = a->in[3].data;
    float *O = a->out[0].data, *L = a->out[1].data;
    int32_t *CNT = a->out[2].data;
    double *w = malloc(sizeof *w * (size_t)Nk), *acc = malloc(sizeof *acc * (size_t)D);
    uint8_t *in_s = malloc((size_t)Nk);
    if (!w || !acc || !in_s) {
        free(w), free(acc), free(in_s);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.sparsek[ref]: out of memory");
    }
    for (int64_t kv = 0; kv < Hkv; kv++)
        for (int64_t t = 0; t < Nq; t++) {
            int64_t pos = Nk - Nq + t, m = pos + 1, kk = p->k < m ? p->k : m;
            const float *u = U + kv * Nk;
            /* S: keys whose rank (larger u first, then lower index) is below kk */
            for (int64_t j = 0; j < m; j++) {
                int64_t rank = 0;
                for (int64_t i = 0; i < m; i++)
                    rank += u[i] > u[j] || (u[i] == u[j] && i < j);
                in_s[j] = rank < kk;
            }
            double tau = kk > 0 && kk < m ? ref_tau(u, m, (double)kk) : 0;
            int32_t cnt = 0;
            for (int64_t j = 0; j < m; j++) {
                int read = in_s[j] || j > pos - p->window;
                w[j] = !read ? 0 : !in_s[j] || !p->weight ? 1.0 : kk == m ? 1.0 : fmin(1.0, fmax(0.0, u[j] - tau));
                in_s[j] = (uint8_t)read;
                cnt += read;
            }
            CNT[kv * Nq + t] = cnt;
            for (int64_t hh = 0; hh < g; hh++) {
                int64_t h = kv * g + hh;
                const float *qv = Q + (h * Nq + t) * D;
                double mx = -INFINITY, z = 0;
                for (int64_t j = 0; j < m; j++)
                    if (in_s[j]) {
                        double sc = 0;
                        for (int64_t e = 0; e < D; e++)
                            sc += (double)qv[e] * K[(kv * Nk + j) * D + e];
                        mx = fmax(mx, sc * w[j] * scale + (p->bias ? u[j] : 0.0));
                    }
                for (int64_t e = 0; e < D; e++)
                    acc[e] = 0;
                for (int64_t j = 0; j < m && mx > -INFINITY; j++)
                    if (in_s[j]) {
                        double sc = 0;
                        for (int64_t e = 0; e < D; e++)
                            sc += (double)qv[e] * K[(kv * Nk + j) * D + e];
                        double pr = exp(sc * w[j] * scale + (p->bias ? u[j] : 0.0) - mx);
                        z += pr;
                        for (int64_t e = 0; e < D; e++)
                            acc[e] += pr * w[j] * V[(kv * Nk + j) * D + e];
                    }
                for (int64_t e = 0; e < D; e++)
                    O[(h * Nq + t) * D + e] = (float)(z > 0 ? acc[e] / z : 0.0);
                L[h * Nq + t] = (float)(z > 0 ? mx + log(z) : -INFINITY);
            }
        }
    free(w), free(acc), free(in_s);
    return SL_OK;
}

/* ---- trainable.fsa: the query-outer computation, literally ---- */

sl_status sl__ref_trainable_fsa(const sl__kargs *a)
{
    const sl_trainable_fsa_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], n = a->in[3].shape[2], g = Hq / Hkv;
    int64_t nb = (Nk + p->bs - 1) / p->bs;
    double scale = p->scale > 0 ? p->scale : 1.0 / sqrt((double)D);
    const float *Q = a->in[0].data, *K = a->in[1].data, *V = a->in[2].data;
    const int32_t *B = a->in[3].data;
    const float *G = a->in[4].buf ? a->in[4].data : NULL, *BASE = a->in[5].buf ? a->in[5].data : NULL;
    float *O = a->out[0].data, *L = a->out[1].data;
    uint8_t *keep = malloc((size_t)(Nk > 0 ? Nk : 1) + (size_t)nb);
    double *acc = malloc(sizeof *acc * (size_t)(D > 0 ? D : 1));
    if (!keep || !acc) {
        free(keep), free(acc);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.fsa[ref]: out of memory");
    }
    uint8_t *sel = keep + Nk;
    for (int64_t h = 0; h < Hq; h++)
        for (int64_t t = 0; t < Nq; t++) {
            int64_t kv = h / g, pos = Nk - Nq + t;
            memset(sel, 0, (size_t)nb);
            for (int64_t x = 0; x < n; x++) {
                int32_t j = B[(kv * Nq + t) * n + x];
                if (j >= 0)
                    sel[j] = 1;
            }
            for (int64_t j = 0; j < Nk; j++)
                keep[j] = j <= pos && sel[j / p->bs];
            for (int64_t e = 0; e < D; e++)
                acc[e] = 0;
            double gate = G ? G[h * Nq + t] : 1.0;
            double lse = attend(Q + (h * Nq + t) * D, K + kv * Nk * D, V + kv * Nk * D, Nk, D, scale, keep, gate, acc);
            for (int64_t e = 0; e < D; e++)
                O[(h * Nq + t) * D + e] = (float)((BASE ? BASE[(h * Nq + t) * D + e] : 0.0) + acc[e]);
            L[h * Nq + t] = (float)lse;
        }
    free(keep), free(acc);
    return SL_OK;
}

/* ---- trainable.routing ---- */

sl_status sl__ref_trainable_routing(const sl__kargs *a)
{
    const sl_trainable_routing_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], g = Hq / Hkv;
    int64_t C = a->in[3].shape[1], W = a->in[3].shape[2];
    double scale = p->scale > 0 ? p->scale : 1.0 / sqrt((double)D);
    const float *Q = a->in[0].data, *K = a->in[1].data, *V = a->in[2].data;
    const int32_t *QS = a->in[3].data, *KS = a->in[4].data;
    float *O = a->out[0].data, *L = a->out[1].data;
    int32_t *CNT = a->out[2].data;
    uint8_t *keep = malloc((size_t)(Nk > 0 ? Nk : 1)), *uni = malloc((size_t)(Nk > 0 ? Nk : 1));
    double *acc = malloc(sizeof *acc * (size_t)(D > 0 ? D : 1)), *sum = malloc(sizeof *sum * (size_t)(D > 0 ? D : 1));
    if (!keep || !uni || !acc || !sum) {
        free(keep), free(uni), free(acc), free(sum);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.routing[ref]: out of memory");
    }
    for (int64_t h = 0; h < Hq; h++)
        for (int64_t t = 0; t < Nq; t++) {
            int64_t pos = Nk - Nq + t, kv = h / g, in_c = 0, used = 0;
            const float *qv = Q + (h * Nq + t) * D;
            memset(uni, 0, (size_t)Nk);
            for (int64_t e = 0; e < D; e++)
                sum[e] = 0;
            for (int64_t c = 0; c < C; c++) {
                int member = 0;
                for (int64_t x = 0; x < W; x++)
                    member |= QS[(h * C + c) * W + x] == t;
                if (!member)
                    continue;
                in_c++;
                memset(keep, 0, (size_t)Nk);
                int any = 0;
                for (int64_t x = 0; x < W; x++) {
                    int32_t j = KS[(h * C + c) * W + x];
                    if (j >= 0 && j <= pos)
                        keep[j] = uni[j] = 1, any = 1;
                }
                if (!any)
                    continue;
                for (int64_t e = 0; e < D; e++)
                    acc[e] = 0;
                attend(qv, K + kv * Nk * D, V + kv * Nk * D, Nk, D, scale, keep, 1.0, acc);
                for (int64_t e = 0; e < D; e++)
                    sum[e] += acc[e];
                used++;
            }
            for (int64_t e = 0; e < D; e++)
                O[(h * Nq + t) * D + e] = (float)(used ? sum[e] / (double)used : 0.0);
            for (int64_t e = 0; e < D; e++)
                acc[e] = 0;
            L[h * Nq + t] = (float)attend(qv, K + kv * Nk * D, V + kv * Nk * D, Nk, D, scale, uni, 0.0, acc);
            CNT[h * Nq + t] = (int32_t)in_c;
        }
    free(keep), free(uni), free(acc), free(sum);
    return SL_OK;
}

/* ---- trainable.select (issue 14, session 3) ----
 * Literal: the features of a head as float64 arrays, every entry's scores,
 * a full sort of (score, key) pairs for the exact top-k, the statistical
 * threshold by the two-pass mean and variance. */

typedef struct ref_scored { double s; int64_t j; } ref_scored;

static int ref_scored_desc(const void *x, const void *y)
{
    const ref_scored *a = x, *b = y;
    if (a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return a->j < b->j ? -1 : a->j > b->j;
}

static int ref_i32_asc(const void *x, const void *y)
{
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

/* Row features [n, r] of x [.., n, D] (head hx) times w[hw] [D, r], or its first r channels. */
static double *ref_features(const sl_tensor *x, int64_t hx, const sl_tensor *w, int64_t hw, int64_t r)
{
    int64_t n = x->shape[1], D = x->shape[2];
    const float *X = (const float *)x->data + hx * n * D;
    double *f = malloc(sizeof *f * (size_t)(n * r > 0 ? n * r : 1));
    if (!f)
        return NULL;
    for (int64_t t = 0; t < n; t++)
        for (int64_t c = 0; c < r; c++) {
            double acc = 0;
            if (w->buf) {
                const float *W = (const float *)w->data + hw * D * r;
                for (int64_t e = 0; e < D; e++)
                    acc += (double)X[t * D + e] * W[e * r + c];
            } else {
                acc = X[t * D + c];
            }
            f[t * r + c] = acc;
        }
    return f;
}

sl_status sl__ref_trainable_select(const sl__kargs *a)
{
    const sl_trainable_select_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], grp = Hq / Hkv;
    int has_w = a->in[2].buf != NULL;
    int64_t r = sl__ts_rank(has_w, has_w ? a->in[2].shape[2] : 0, p->split, D);
    int32_t *row_ptr = a->out[0].data, *col = a->out[1].data;
    int64_t cap_total = a->out[1].shape[0], at = 0;
    ref_scored *sc = malloc(sizeof *sc * (size_t)(Nk > 0 ? Nk : 1));
    double *qf = NULL, *kf = NULL;
    sl_status st = SL_OK;
    if (!sc) {
        st = sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.select[ref]: out of memory");
        goto done;
    }
    for (int64_t h = 0; h < Hq; h++) {
        free(qf), free(kf);
        qf = ref_features(&a->in[0], h, &a->in[2], h, r);
        kf = ref_features(&a->in[1], h / grp, &a->in[3], h, r);
        if (!qf || !kf) {
            st = sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.select[ref]: out of memory");
            goto done;
        }
        for (int64_t t = 0; t < Nq; t++) {
            row_ptr[h * (Nq + 1) + t] = (int32_t)at;
            int64_t g0 = p->mode == 0 ? t / p->group * p->group : t, g1 = g0 + (p->mode == 0 ? p->group : 1) - 1;
            g1 = g1 < Nq ? g1 : Nq - 1;
            int64_t m = sl__ts_vis(g1, Nq, Nk, (int)p->causal), lim = sl__ts_vis(t, Nq, Nk, (int)p->causal);
            for (int64_t j = 0; j < m; j++) {
                sc[j].j = j, sc[j].s = 0;
                for (int64_t u = g0; u <= g1; u++) {
                    double z = 0;
                    for (int64_t c = 0; c < r; c++)
                        z += qf[u * r + c] * kf[j * r + c];
                    sc[j].s += z;
                }
            }
            int64_t take, pool = m; /* sc[0, pool) are the candidates; the top `take` of them are kept */
            if (p->mode == 0) {
                take = m < p->k ? m : p->k;
            } else if (p->k >= m) {
                take = p->cap > 0 && m > p->cap ? p->cap : m;
            } else {
                double mean = 0, var = 0;
                for (int64_t j = 0; j < m; j++)
                    mean += sc[j].s;
                mean /= (double)m;
                for (int64_t j = 0; j < m; j++)
                    var += (sc[j].s - mean) * (sc[j].s - mean);
                double theta = mean + sqrt(var / (double)m) * sl__ts_norm_inv(1.0 - (double)p->k / (double)m);
                pool = 0;
                for (int64_t j = 0; j < m; j++)
                    if (sc[j].s - theta > 0)
                        sc[pool++] = sc[j];
                take = p->cap > 0 && pool > p->cap ? p->cap : pool;
            }
            if (take < pool)
                qsort(sc, (size_t)pool, sizeof *sc, ref_scored_desc);
            int64_t from = at;
            for (int64_t x = 0; x < take; x++)
                if (sc[x].j < lim)
                    col[at++] = (int32_t)sc[x].j;
            qsort(col + from, (size_t)(at - from), sizeof *col, ref_i32_asc);
        }
        row_ptr[h * (Nq + 1) + Nq] = (int32_t)at;
    }
    for (int64_t x = at; x < cap_total; x++)
        col[x] = -1;
done:
    free(sc), free(qf), free(kf);
    return st;
}

/* ---- trainable.cells (issue 14, session 3; card sea) ----
 * Literal: per row a full sort of the H·T_M cells, then every key of the
 * row tested against its cell's flag. */
sl_status sl__ref_trainable_cells(const sl__kargs *a)
{
    const sl_trainable_cells_params *p = a->params;
    int64_t H = a->in[0].shape[0], N = a->in[0].shape[1], tm = a->in[0].shape[2], at = 0;
    const float *A = a->in[0].data;
    int32_t *row_ptr = a->out[0].data, *col = a->out[1].data;
    uint8_t *keep = calloc((size_t)(N * H * tm + 1), 1);
    ref_scored *sc = malloc(sizeof *sc * (size_t)(H * tm));
    if (!keep || !sc) {
        free(keep), free(sc);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.cells[ref]: out of memory");
    }
    for (int64_t t = 0; t < N; t++) {
        for (int64_t h = 0; h < H; h++)
            for (int64_t c = 0; c < tm; c++)
                sc[h * tm + c] = (ref_scored){A[(h * N + t) * tm + c], h * tm + c};
        qsort(sc, (size_t)(H * tm), sizeof *sc, ref_scored_desc);
        int64_t b = sl__ts_budget(H, p->k, tm, t + 1);
        for (int64_t x = 0; x < b; x++)
            keep[t * H * tm + sc[x].j] = 1;
    }
    for (int64_t h = 0; h < H; h++) {
        for (int64_t t = 0; t < N; t++) {
            row_ptr[h * (N + 1) + t] = (int32_t)at;
            for (int64_t j = 0; j <= t; j++)
                if (keep[t * H * tm + h * tm + sl__ts_cell(j, t + 1, tm)])
                    col[at++] = (int32_t)j;
        }
        row_ptr[h * (N + 1) + N] = (int32_t)at;
    }
    for (int64_t x = at; x < a->out[1].shape[0]; x++)
        col[x] = -1;
    free(keep), free(sc);
    return SL_OK;
}

/* ---- trainable.performer (issue 14, session 3b; card sea) ----
 * Literal: features in float64, then per row every visible key's p_j added
 * to its cell (O(N^2 . m) per head). */
static void ref_perf_exponents(const float *x, const float *w, int64_t n, int64_t D, int64_t m, double *e)
{
    double s = pow((double)D, -0.25);
    for (int64_t t = 0; t < n; t++) {
        double nrm = 0;
        for (int64_t c = 0; c < D; c++)
            nrm += ((double)x[t * D + c] * s) * ((double)x[t * D + c] * s);
        for (int64_t f = 0; f < m; f++) {
            double d = 0;
            for (int64_t c = 0; c < D; c++)
                d += (double)w[f * D + c] * ((double)x[t * D + c] * s);
            e[t * m + f] = d - nrm / 2;
        }
    }
}

sl_status sl__ref_trainable_performer(const sl__kargs *a)
{
    int64_t Hq = a->in[0].shape[0], N = a->in[0].shape[1], D = a->in[0].shape[2], Hkv = a->in[1].shape[0];
    int64_t m = a->in[2].shape[0], tm = a->out[0].shape[2], g = Hq / Hkv;
    const float *Q = a->in[0].data, *K = a->in[1].data, *W = a->in[2].data;
    float *A = a->out[0].data;
    double *ek = malloc(sizeof *ek * (size_t)(N * m + 1)), *eq = malloc(sizeof *eq * (size_t)(N * m + 1));
    double *row = malloc(sizeof *row * (size_t)tm);
    if (!ek || !eq || !row) {
        free(ek), free(eq), free(row);
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.performer[ref]: out of memory");
    }
    double sm = sqrt((double)m);
    for (int64_t kv = 0; kv < Hkv; kv++) {
        ref_perf_exponents(K + kv * N * D, W, N, D, m, ek);
        double gmax = -INFINITY;
        for (int64_t x = 0; x < N * m; x++)
            gmax = ek[x] > gmax ? ek[x] : gmax;
        for (int64_t x = 0; x < N * m; x++)
            ek[x] = exp(ek[x] - gmax) / sm;
        for (int64_t h = kv * g; h < (kv + 1) * g; h++) {
            ref_perf_exponents(Q + h * N * D, W, N, D, m, eq);
            for (int64_t t = 0; t < N; t++) {
                double *fq = eq + t * m, mx = -INFINITY, z = 0;
                for (int64_t f = 0; f < m; f++)
                    mx = fq[f] > mx ? fq[f] : mx;
                for (int64_t f = 0; f < m; f++)
                    fq[f] = exp(fq[f] - mx) / sm;
                for (int64_t c = 0; c < tm; c++)
                    row[c] = 0;
                for (int64_t j = 0; j <= t; j++) {
                    double pj = 0;
                    for (int64_t f = 0; f < m; f++)
                        pj += fq[f] * ek[j * m + f];
                    row[sl__ts_cell(j, t + 1, tm)] += pj;
                    z += pj;
                }
                for (int64_t c = 0; c < tm; c++)
                    A[(h * N + t) * tm + c] = (float)(z > 0 ? row[c] / z : 0);
            }
        }
    }
    free(ek), free(eq), free(row);
    return SL_OK;
}
