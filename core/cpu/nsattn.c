/* cpu/nsattn.c — the nsattn family on the cpu backend (attention whose
 * weights are not a softmax). attn.entmax: one work item per (head, query
 * row) on sl__cpu_parallel; scores by the vectorised dot, the threshold in
 * double (sorted row for the exact form, card entmax B and C; the bisection
 * of entmax_bisect otherwise), P.V by axpy over the support only.
 * attn.relu: the same per-row shape; norm.rms_gated: one item per token;
 * attn.sigmoid_gate: one item per (head, token); attn.fastmax: one item per
 * query head, factorised into running key states (below). */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The job of the q/k/v kernels (entmax, relu, fastmax, monotonic): the
 * args, their attention dims and the vector ops. */
typedef struct attn_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    sl__cpu_vecops vo;
} attn_job;

/* Runs item over every query row (per_head 0) or every query head (1). */
static sl_status run_attn(const sl__kargs *a, double scale, int per_head, sl__parallel_fn item)
{
    attn_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], scale), sl__cpu_vecops_for(a->ctx)};
    return sl__cpu_parallel(a->ctx, per_head ? j.dm.hq : j.dm.hq * j.dm.nq, item, &j);
}

/* ---- attn.entmax ---- */

static int by_value_desc(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a < b) - (a > b);
}

/* [t]_+^(1/(alpha-1)) */
static inline double entmax_pow(double t, double alpha)
{
    if (!(t > 0))
        return 0;
    if (alpha == 2.0)
        return t;
    if (alpha == 1.5)
        return t * t;
    return pow(t, 1.0 / (alpha - 1.0));
}

/* The exact threshold from the row sorted in descending order: the support
 * is the longest prefix whose own threshold stays below its last element. */
static double sorted_tau(const double *s, int64_t n, double alpha)
{
    double sum = 0, sq = 0, best = s[0] - 1;
    for (int64_t k = 1; k <= n; k++) {
        double z = s[k - 1];
        sum += z;
        sq += z * z;
        double t;
        if (alpha == 2.0) {
            t = (sum - 1.0) / (double)k;
        } else {
            double mean = sum / (double)k, var_k = sq - (double)k * mean * mean; /* = k (mu2 - mu^2) */
            double disc = (1.0 - var_k) / (double)k;
            t = mean - sqrt(disc > 0 ? disc : 0);
        }
        if (alpha == 2.0 ? t < z : t <= z)
            best = t;
        else if (alpha == 2.0)
            break; /* sparsemax: the condition fails from here on */
    }
    return best;
}

static void entmax_item(int64_t item, void *ud, int thread)
{
    const attn_job *j = ud;
    const sl__kargs *a = j->a;
    const sl__attn_dims *dm = &j->dm;
    const sl_attn_entmax_params *p = a->params;
    int64_t h = item / dm->nq, r = item % dm->nq, g = h / dm->group, d = dm->d;
    double *x = (double *)a->scratch + (size_t)thread * (size_t)(2 * dm->nk + d), *srt = x + dm->nk;
    float *acc = (float *)(srt + dm->nk);
    const float *qr = (const float *)a->in[0].data + item * d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    float *orow = (float *)a->out[0].data + item * d;
    int32_t *support = (int32_t *)a->out[1].data + item;
    int64_t n = p->causal ? dm->offset + r + 1 : dm->nk;
    n = n > dm->nk ? dm->nk : n < 0 ? 0 : n;
    memset(acc, 0, (size_t)d * sizeof *acc);
    if (n == 0) {
        memset(orow, 0, (size_t)d * sizeof *orow);
        *support = 0;
        return;
    }
    double alpha = p->alpha, mul = alpha == 1.0 ? dm->scale : (alpha - 1.0) * dm->scale, mx = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        x[t] = mul * (double)j->vo.dot(qr, k + t * d, d);
        mx = x[t] > mx ? x[t] : mx;
    }
    /* weights into srt (the sort buffer is free again after the threshold) */
    double *w = srt, tot = 1.0;
    int64_t cnt = 0;
    if (alpha == 1.0) {
        tot = 0;
        for (int64_t t = 0; t < n; t++)
            tot += (w[t] = exp(x[t] - mx));
        cnt = n;
    } else if (p->algo == 0) {
        memcpy(srt, x, (size_t)n * sizeof *srt);
        qsort(srt, (size_t)n, sizeof *srt, by_value_desc);
        double tau = sorted_tau(srt, n, alpha);
        for (int64_t t = 0; t < n; t++)
            cnt += (w[t] = entmax_pow(x[t] - tau, alpha)) > 0;
    } else {
        double lo = mx - 1.0, step = (mx - pow(1.0 / (double)n, alpha - 1.0)) - lo;
        for (int64_t it = 0; it < p->n_iter; it++) {
            step *= 0.5;
            double mid = lo + step;
            tot = 0;
            for (int64_t t = 0; t < n; t++)
                tot += (w[t] = entmax_pow(x[t] - mid, alpha));
            if (tot >= 1.0)
                lo = mid;
        }
        for (int64_t t = 0; t < n; t++)
            cnt += w[t] > 0;
    }
    for (int64_t t = 0; t < n; t++)
        if (w[t] > 0)
            j->vo.axpy(acc, v + t * d, d, (float)(w[t] / tot));
    memcpy(orow, acc, (size_t)d * sizeof *orow);
    *support = (int32_t)cnt;
}

sl_status sl__cpu_attn_entmax(const sl__kargs *a)
{
    return run_attn(a, ((const sl_attn_entmax_params *)a->params)->scale, 0, entmax_item);
}

/* ---- attn.relu ---- */


/* One query row: score, ReLU^p, axpy of the nonzero weights into acc. */
static void relu_item(int64_t item, void *ud, int thread)
{
    const attn_job *j = ud;
    const sl__kargs *a = j->a;
    const sl__attn_dims *dm = &j->dm;
    const sl_attn_relu_params *p = a->params;
    int64_t r = item % dm->nq, g = item / dm->nq / dm->group, d = dm->d;
    float *acc = (float *)a->scratch + (size_t)thread * (size_t)d;
    const float *qr = (const float *)a->in[0].data + item * d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    int64_t n = p->causal ? dm->offset + r + 1 : dm->nk;
    n = n > dm->nk ? dm->nk : n;
    float sc = (float)dm->scale, b = (float)p->bias, pw = (float)p->power;
    double den = 0;
    int32_t cnt = 0;
    memset(acc, 0, (size_t)d * sizeof *acc);
    for (int64_t t = 0; t < n; t++) {
        float x = sc * j->vo.dot(qr, k + t * d, d) - b;
        if (!(x > 0.f))
            continue;
        float w = pw == 1.f ? x : powf(x, pw);
        cnt++;
        den += w;
        j->vo.axpy(acc, v + t * d, d, w);
    }
    float *orow = (float *)a->out[0].data + item * d;
    float mul = p->norm ? (den > 0 ? (float)(1.0 / den) : 0.f) : 1.f;
    for (int64_t c = 0; c < d; c++)
        orow[c] = acc[c] * mul;
    ((int32_t *)a->out[1].data)[item] = cnt;
}

sl_status sl__cpu_attn_relu(const sl__kargs *a)
{
    return run_attn(a, ((const sl_attn_relu_params *)a->params)->scale, 0, relu_item);
}

/* ---- norm.rms_gated ---- */

typedef struct rms_job {
    const sl__kargs *a;
    int64_t H, N, D;
} rms_job;

static void rms_item(int64_t n, void *ud, int thread)
{
    (void)thread;
    const rms_job *j = ud;
    const sl_norm_rms_gated_params *p = j->a->params;
    const float *x = j->a->in[0].data;
    const float *gs = j->a->in[1].buf ? j->a->in[1].data : NULL, *ws = j->a->in[2].buf ? j->a->in[2].data : NULL;
    float *y = j->a->out[0].data;
    double ms = 0;
    for (int64_t h = 0; h < j->H; h++) {
        const float *u = x + (h * j->N + n) * j->D;
        for (int64_t c = 0; c < j->D; c++)
            ms += (double)u[c] * (double)u[c];
    }
    float inv = (float)(1.0 / sqrt(ms / (double)(j->H * j->D) + p->eps));
    for (int64_t h = 0; h < j->H; h++) {
        const float *u = x + (h * j->N + n) * j->D;
        float *yr = y + (h * j->N + n) * j->D;
        for (int64_t c = 0; c < j->D; c++) {
            int64_t e = h * j->D + c;
            float val = u[c] * inv * (gs ? gs[e] : 1.f);
            if (p->gate)
                val /= 1.f + expf(-(ws ? ws[e] : 1.f) * u[c]);
            yr[c] = val;
        }
    }
}

sl_status sl__cpu_norm_rms_gated(const sl__kargs *a)
{
    rms_job j = {a, a->in[0].shape[0], a->in[0].shape[1], a->in[0].shape[2]};
    if (j.H * j.D == 0)
        return SL_OK;
    return sl__cpu_parallel(a->ctx, j.N, rms_item, &j);
}

/* ---- attn.sigmoid_gate ---- */

typedef struct gate_job {
    const sl__kargs *a;
    int64_t D, G;
} gate_job;

static void gate_item(int64_t r, void *ud, int thread)
{
    (void)thread;
    const gate_job *j = ud;
    const sl_attn_sigmoid_gate_params *p = j->a->params;
    const float *o = (const float *)j->a->in[0].data + r * j->D, *g = (const float *)j->a->in[1].data + r * j->G;
    float *y = (float *)j->a->out[0].data + r * j->D;
    float eps = (float)p->eps;
    int32_t cnt = 0;
    if (j->G == 1) {
        float sig = 1.f / (1.f + expf(-g[0]));
        int on = sig >= eps;
        for (int64_t c = 0; c < j->D; c++)
            y[c] = on ? o[c] * sig : 0.f;
        cnt = on ? (int32_t)j->D : 0;
    } else {
        for (int64_t c = 0; c < j->D; c++) {
            float sig = 1.f / (1.f + expf(-g[c]));
            int on = sig >= eps;
            y[c] = on ? o[c] * sig : 0.f;
            cnt += on;
        }
    }
    ((int32_t *)j->a->out[1].data)[r] = cnt;
}

sl_status sl__cpu_attn_sigmoid_gate(const sl__kargs *a)
{
    gate_job j = {a, a->in[0].shape[2], a->in[1].shape[2]};
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * a->in[0].shape[1], gate_item, &j);
}

/* ---- attn.fastmax ----
 * Factorised (card step 3): per query head, running sums over the keys a row
 * sees — S0 = sum v, z1 = sum k, S1 = sum k v^T, and for p = 2 over the
 * symmetric pairs a <= b, z2 = sum k_a k_b and S2 = sum k_a k_b v^T — so a
 * row costs O(d^3) and no n x n matrix exists. With p = 2 and head_dim above
 * FASTMAX_FACTOR_MAX_D the d^3 state is too large and rows are evaluated
 * explicitly (quadratic in n). */

#define FASTMAX_FACTOR_MAX_D 64


static int64_t fastmax_pairs(int64_t d) { return d * (d + 1) / 2; }

static int fastmax_factorised(const sl_attn_fastmax_params *p, int64_t d)
{
    return p->p == 1 || d <= FASTMAX_FACTOR_MAX_D;
}

/* doubles one work item needs */
static size_t fastmax_state(const sl_attn_fastmax_params *p, int64_t d)
{
    size_t base = (size_t)(2 * d + d * d + d); /* S0, z1, S1, num */
    if (p->p == 2 && fastmax_factorised(p, d))
        base += (size_t)(fastmax_pairs(d) * (d + 1)); /* z2, S2 */
    return base;
}

static double fastmax_inv_norm(const float *x, int64_t n, int64_t d, const sl__cpu_vecops *vo)
{
    float best = 0.f;
    for (int64_t i = 0; i < n; i++) {
        float s = vo->dot(x + i * d, x + i * d, d);
        best = s > best ? s : best;
    }
    return best > 0.f ? 1.0 / sqrt((double)best) : 1.0;
}

static void fastmax_item(int64_t h, void *ud, int thread)
{
    const attn_job *j = ud;
    const sl__kargs *a = j->a;
    const sl__attn_dims *dm = &j->dm;
    const sl_attn_fastmax_params *p = a->params;
    int64_t d = dm->d, g = h / dm->group, np = fastmax_pairs(d);
    const float *q = (const float *)a->in[0].data + h * dm->nq * d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    float *o = (float *)a->out[0].data + h * dm->nq * d;
    double sq = p->normalize ? p->lim * fastmax_inv_norm(q, dm->nq, d, &j->vo) : 1.0;
    double sk = p->normalize ? p->lim * fastmax_inv_norm(k, dm->nk, d, &j->vo) : 1.0;
    double *S0 = (double *)a->scratch + (size_t)thread * fastmax_state(p, d), *z1 = S0 + d, *S1 = z1 + d, *num = S1 + d * d;
    double *z2 = num + d, *S2 = z2 + np;
    int quad = p->p == 2;
    if (!fastmax_factorised(p, d)) {
        /* explicit rows: f(x) over the visible keys */
        for (int64_t r = 0; r < dm->nq; r++) {
            int64_t lim = p->causal ? dm->offset + r + 1 : dm->nk;
            lim = lim > dm->nk ? dm->nk : lim;
            double den = 0;
            memset(num, 0, (size_t)d * sizeof *num);
            for (int64_t t = 0; t < lim; t++) {
                double x = sq * sk * (double)j->vo.dot(q + r * d, k + t * d, d);
                double f = p->a0 + p->a1 * x + (quad ? p->a2 * x * x : 0.0);
                den += f;
                for (int64_t c = 0; c < d; c++)
                    num[c] += f * (double)v[t * d + c];
            }
            for (int64_t c = 0; c < d; c++)
                o[r * d + c] = den != 0 ? (float)(num[c] / den) : 0.f;
        }
        return;
    }
    memset(S0, 0, fastmax_state(p, d) * sizeof *S0);
    int64_t seen = 0;
    for (int64_t r = 0; r < dm->nq; r++) {
        int64_t lim = p->causal ? dm->offset + r + 1 : dm->nk;
        lim = lim > dm->nk ? dm->nk : lim;
        for (; seen < lim; seen++) {
            const float *kj = k + seen * d, *vj = v + seen * d;
            for (int64_t c = 0; c < d; c++) {
                S0[c] += vj[c];
                z1[c] += sk * kj[c];
            }
            for (int64_t x = 0; x < d; x++) {
                double ka = sk * kj[x];
                double *row = S1 + x * d;
                for (int64_t c = 0; c < d; c++)
                    row[c] += ka * vj[c];
            }
            if (quad)
                for (int64_t x = 0, e = 0; x < d; x++)
                    for (int64_t y = x; y < d; y++, e++) {
                        double kk = sk * kj[x] * sk * kj[y];
                        double *row = S2 + e * d;
                        z2[e] += kk;
                        for (int64_t c = 0; c < d; c++)
                            row[c] += kk * vj[c];
                    }
        }
        const float *qr = q + r * d;
        double den = p->a0 * (double)seen;
        for (int64_t c = 0; c < d; c++)
            num[c] = p->a0 * S0[c];
        for (int64_t x = 0; x < d; x++) {
            double c1 = p->a1 * sq * qr[x];
            den += c1 * z1[x];
            const double *row = S1 + x * d;
            for (int64_t c = 0; c < d; c++)
                num[c] += c1 * row[c];
        }
        if (quad)
            for (int64_t x = 0, e = 0; x < d; x++)
                for (int64_t y = x; y < d; y++, e++) {
                    double c2 = p->a2 * sq * qr[x] * sq * qr[y] * (x == y ? 1.0 : 2.0);
                    den += c2 * z2[e];
                    const double *row = S2 + e * d;
                    for (int64_t c = 0; c < d; c++)
                        num[c] += c2 * row[c];
                }
        for (int64_t c = 0; c < d; c++)
            o[r * d + c] = den != 0 ? (float)(num[c] / den) : 0.f;
    }
}

sl_status sl__cpu_attn_fastmax(const sl__kargs *a)
{
    return run_attn(a, 0, 1, fastmax_item);
}

/* ---- attn.tra ---- */

typedef struct tra_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    sl__cpu_vecops vo;
    const float *kinv; /* [hkv, nk]: each key's QK-norm factor */
    float *work;       /* per thread: nk scores + d accumulator */
} tra_job;

static float tra_rms_inv(const sl__cpu_vecops *vo, const float *x, int64_t d, int on, double eps)
{
    return on ? (float)(1.0 / sqrt((double)vo->dot(x, x, d) / (double)d + eps)) : 1.f;
}

static void tra_item(int64_t item, void *ud, int thread)
{
    const tra_job *j = ud;
    const sl__kargs *a = j->a;
    const sl__attn_dims *dm = &j->dm;
    const sl_attn_tra_params *p = a->params;
    int64_t r = item % dm->nq, g = item / dm->nq / dm->group, d = dm->d;
    float *sc = j->work + (size_t)thread * (size_t)(dm->nk + d), *acc = sc + dm->nk;
    const float *qr = (const float *)a->in[0].data + item * d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    const float *kinv = j->kinv + g * dm->nk;
    int64_t n = p->causal ? dm->offset + r + 1 : dm->nk;
    n = n > dm->nk ? dm->nk : n;
    float qs = (float)dm->scale * tra_rms_inv(&j->vo, qr, d, (int)p->qk_norm, p->eps);
    float dl = ((const float *)a->in[3].data)[item], mx = -INFINITY;
    int32_t kept = 0;
    for (int64_t t = 0; t < n; t++)
        sc[t] = qs * kinv[t] * j->vo.dot(qr, k + t * d, d);
    for (int64_t t = n - 1; t >= 0; t--) {
        if (sc[t] > 0.f) {
            kept++;
            sc[t] += dl * (float)kept;
            mx = sc[t] > mx ? sc[t] : mx;
        } else {
            sc[t] = -INFINITY;
        }
    }
    memset(acc, 0, (size_t)d * sizeof *acc);
    double l = 0;
    for (int64_t t = 0; t < n; t++) {
        if (sc[t] == -INFINITY)
            continue;
        float w = expf(sc[t] - mx);
        l += w;
        j->vo.axpy(acc, v + t * d, d, w);
    }
    float *orow = (float *)a->out[0].data + item * d;
    for (int64_t c = 0; c < d; c++)
        orow[c] = kept ? (float)(acc[c] / l) : 0.f;
    ((int32_t *)a->out[1].data)[item] = kept;
}

sl_status sl__cpu_attn_tra(const sl__kargs *a)
{
    const sl_attn_tra_params *p = a->params;
    tra_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), sl__cpu_vecops_for(a->ctx), NULL, NULL};
    float *kinv = a->scratch;
    const float *k = a->in[1].data;
    for (int64_t t = 0; t < j.dm.hkv * j.dm.nk; t++)
        kinv[t] = tra_rms_inv(&j.vo, k + t * j.dm.d, j.dm.d, (int)p->qk_norm, p->eps);
    j.kinv = kinv;
    j.work = kinv + j.dm.hkv * j.dm.nk;
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.dm.nq, tra_item, &j);
}

/* ---- attn.monotonic: one item per query head (the pointer runs along its rows) ---- */


static void mono_item(int64_t h, void *ud, int thread)
{
    const attn_job *j = ud;
    const sl__kargs *a = j->a;
    const sl__attn_dims *dm = &j->dm;
    const sl_attn_monotonic_params *p = a->params;
    int64_t d = dm->d, g = h / dm->group, t = 0;
    float *acc = (float *)a->scratch + (size_t)thread * (size_t)d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    float sc = (float)dm->scale, rr = (float)p->r;
    for (int64_t r = 0; r < dm->nq; r++) {
        int64_t item = h * dm->nq + r, found = -1;
        const float *qr = (const float *)a->in[0].data + item * d;
        int64_t n = p->causal ? dm->offset + r + 1 : dm->nk;
        n = n > dm->nk ? dm->nk : n;
        for (int64_t x = t; x < n; x++)
            if (sc * j->vo.dot(qr, k + x * d, d) + rr >= 0.f) {
                found = x;
                break;
            }
        float *orow = (float *)a->out[0].data + item * d;
        ((int32_t *)a->out[2].data)[item] = (int32_t)found;
        if (found < 0) {
            memset(orow, 0, (size_t)d * sizeof *orow);
            ((float *)a->out[1].data)[item] = -INFINITY;
            continue;
        }
        t = found;
        int64_t x0 = found - p->chunk + 1 > 0 ? found - p->chunk + 1 : 0;
        float m = -INFINITY, l = 0.f;
        memset(acc, 0, (size_t)d * sizeof *acc);
        for (int64_t x = x0; x <= found; x++) {
            float s = sc * j->vo.dot(qr, k + x * d, d);
            if (s > m) {
                float f = m == -INFINITY ? 0.f : expf(m - s);
                l *= f;
                for (int64_t c = 0; c < d; c++)
                    acc[c] *= f;
                m = s;
            }
            float w = expf(s - m);
            l += w;
            j->vo.axpy(acc, v + x * d, d, w);
        }
        for (int64_t c = 0; c < d; c++)
            orow[c] = acc[c] / l;
        ((float *)a->out[1].data)[item] = m + logf(l);
    }
}

sl_status sl__cpu_attn_monotonic(const sl__kargs *a)
{
    return run_attn(a, ((const sl_attn_monotonic_params *)a->params)->scale, 1, mono_item);
}

size_t sl__cpu_nsattn_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    switch (op) {
    case SL_OP_ATTN_ENTMAX:
        return (size_t)n_threads * (size_t)(2 * in[1].shape[1] + in[0].shape[2]) * sizeof(double);
    case SL_OP_ATTN_RELU: return (size_t)n_threads * (size_t)in[0].shape[2] * sizeof(float);
    case SL_OP_ATTN_FASTMAX: return (size_t)n_threads * fastmax_state(params, in[0].shape[2]) * sizeof(double);
    case SL_OP_ATTN_MONOTONIC: return (size_t)n_threads * (size_t)in[0].shape[2] * sizeof(float);
    case SL_OP_ATTN_TRA:
        return ((size_t)(in[1].shape[0] * in[1].shape[1]) + (size_t)n_threads * (size_t)(in[1].shape[1] + in[0].shape[2])) *
               sizeof(float);
    default: return 0;
    }
}
