/* ref/correct.c — reference kernels of the corrections (correct.*): plain
 * loops, float64 arithmetic, written from the contracts in sparselab.h and
 * the method cards (delta_attention, ...), not from the cpu kernels. */
/* (correct.reshape, correct.cache_reuse and correct.linear_branch: plain
 * loops over rows in float64.) */
#include "ref.h"

#include <math.h>
#include <string.h>

/* correct.delta (card delta_attention, steps 5-8). */
sl_status sl__ref_correct_delta(const sl__kargs *a)
{
    const sl_correct_delta_params *p = a->params;
    const float *os = a->in[0].data, *ls = a->in[1].data, *orw = a->in[2].data, *lr = a->in[3].data;
    float *o = a->out[0].data, *lse = a->out[1].data;
    int64_t h_n = a->in[0].shape[0], n = a->in[0].shape[1], d = a->in[0].shape[2], s_p, g_n, t;
    int64_t gamma = p->gamma;
    sl_correct_delta_layout(n, gamma, p->tail, &s_p, &g_n, &t);
    int64_t r_n = g_n + t;
    for (int64_t h = 0; h < h_n; h++)
        for (int64_t i = 0; i < n; i++) {
            float *oi = o + (h * n + i) * d;
            const float *si = os + (h * n + i) * d;
            int64_t dense_row = -1; /* index into the rows of o_rows, or -1 */
            if (i >= s_p)
                dense_row = g_n + (i - s_p);
            else if (i % gamma == 0)
                dense_row = i / gamma;
            if (dense_row >= 0) {
                memcpy(oi, orw + (h * r_n + dense_row) * d, (size_t)d * sizeof *oi);
                lse[h * n + i] = lr[h * r_n + dense_row];
                continue;
            }
            lse[h * n + i] = ls[h * n + i];
            if (p->mode == 1) {
                memcpy(oi, si, (size_t)d * sizeof *oi);
                continue;
            }
            int64_t g = i / gamma, g2 = g + 1 < g_n ? g + 1 : g;
            double r = p->smooth ? (double)(i % gamma) / (double)gamma : 0.0;
            const float *a1 = orw + (h * r_n + g) * d, *s1 = os + (h * n + g * gamma) * d;
            const float *a2 = orw + (h * r_n + g2) * d, *s2 = os + (h * n + g2 * gamma) * d;
            for (int64_t c = 0; c < d; c++) {
                double d1 = (double)a1[c] - (double)s1[c], d2 = (double)a2[c] - (double)s2[c];
                oi[c] = (float)((double)si[c] + (1.0 - r) * d1 + r * d2);
            }
        }
    return SL_OK;
}

/* Keys of key block J (bk keys from J·bk, at most nk) that query row i sees. */
static int64_t visible_keys(int64_t i, int64_t J, int64_t bk, int64_t nk, int64_t offset, int causal)
{
    int64_t j0 = J * bk, j1 = j0 + bk < nk ? j0 + bk : nk;
    if (!causal)
        return j1 - j0;
    int64_t last = offset + i; /* the last key row i sees */
    if (last < j0)
        return 0;
    return (last + 1 < j1 ? last + 1 : j1) - j0;
}

/* Mean (mean != NULL) and mean absolute deviation of rows [r0, r1) of x [*, d]. */
static void block_stats(const float *x, int64_t r0, int64_t r1, int64_t d, double *mean, double *dev)
{
    for (int64_t c = 0; c < d; c++) {
        double m = 0, e = 0;
        for (int64_t r = r0; r < r1; r++)
            m += x[r * d + c];
        m /= (double)(r1 - r0);
        for (int64_t r = r0; r < r1; r++)
            e += fabs(x[r * d + c] - m);
        mean[c] = m;
        if (dev)
            dev[c] = e / (double)(r1 - r0);
    }
}

static double dot(const double *a, const double *b, int64_t d)
{
    double s = 0;
    for (int64_t c = 0; c < d; c++)
        s += a[c] * b[c];
    return s;
}

/* correct.rectify (card rectified_spaattn, steps 1-3, 5, 6, 8): every row
 * on its own, every quantity recomputed from the blocks. Scratch: doubles
 * for the pooled block of Q and one of K and V, and an in-M flag per key block. */
sl_status sl__ref_correct_rectify(const sl__kargs *a)
{
    const sl_correct_rectify_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data, *os = a->in[7].data;
    const int32_t *rp = a->in[3].data, *ci = a->in[4].data;
    int64_t hm = a->in[3].shape[0], bq = p->bq, bk = p->bk, d = dm.d;
    int64_t nqb = (dm.nq + bq - 1) / bq, nkb = (dm.nk + bk - 1) / bk;
    float *o = a->out[0].data, *r_out = a->out[1].data, *rest = a->out[2].data, *trusted = a->out[3].data;
    double *qm = a->scratch, *qe = qm + d, *km = qe + d, *ke = km + d, *vm = ke + d, *nsum = vm + d;
    uint8_t *in_m = (uint8_t *)(nsum + d);
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group, mh = h / (dm.hq / hm);
        const float *kg = k + g * dm.nk * d, *vg = v + g * dm.nk * d;
        for (int64_t I = 0; I < nqb; I++) {
            if (sl_ctx_interrupted(a->ctx))
                return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "correct.rectify[ref]: interrupted");
            int64_t i0 = I * bq, i1 = i0 + bq < dm.nq ? i0 + bq : dm.nq;
            block_stats(q + h * dm.nq * d, i0, i1, d, qm, qe);
            memset(in_m, 0, (size_t)nkb);
            for (int32_t e = rp[mh * (nqb + 1) + I]; e < rp[mh * (nqb + 1) + I + 1]; e++)
                in_m[ci[e]] = 1;
            /* trusted: dropped blocks visible to the block's last row that GAPR trusts */
            double n_trusted = 0;
            for (int64_t i = i0; i < i1; i++) {
                /* pass 1: the largest pooled logit this row sees */
                double mx = -INFINITY;
                for (int64_t J = 0; J < nkb; J++) {
                    int64_t cnt = visible_keys(i, J, bk, dm.nk, dm.offset, (int)p->causal);
                    if (!cnt)
                        continue;
                    int64_t j0 = J * bk, j1 = j0 + bk < dm.nk ? j0 + bk : dm.nk;
                    if (p->causal && p->causal_means)
                        j1 = j0 + cnt; /* the keys this row sees */
                    block_stats(kg, j0, j1, d, km, NULL);
                    double s = dm.scale * dot(qm, km, d);
                    mx = s > mx ? s : mx;
                }
                double z = 0, zc = 0, zr = 0;
                memset(nsum, 0, (size_t)d * sizeof *nsum);
                for (int64_t J = 0; J < nkb && mx > -INFINITY; J++) {
                    int64_t cnt = visible_keys(i, J, bk, dm.nk, dm.offset, (int)p->causal);
                    if (!cnt)
                        continue;
                    int64_t j0 = J * bk, j1 = j0 + bk < dm.nk ? j0 + bk : dm.nk;
                    if (p->causal && p->causal_means)
                        j1 = j0 + cnt;
                    block_stats(kg, j0, j1, d, km, ke);
                    double raw = dot(qm, km, d);
                    double w = (p->ipar ? (double)cnt : 1.0) * exp(dm.scale * raw - mx);
                    double err = fabs(dot(qe, km, d)) + fabs(dot(qm, ke, d));
                    int ng = p->gapr && !(fabs(raw) > err);
                    z += w;
                    if (in_m[J] || ng) {
                        zc += w;
                    } else {
                        zr += w;
                        block_stats(vg, j0, j1, d, vm, NULL);
                        for (int64_t c = 0; c < d; c++)
                            nsum[c] += w * vm[c];
                        if (i == i1 - 1)
                            n_trusted += 1;
                    }
                }
                float *oi = o + (h * dm.nq + i) * d;
                const float *si = os + (h * dm.nq + i) * d;
                if (z <= 0) {
                    memcpy(oi, si, (size_t)d * sizeof *oi);
                    r_out[h * dm.nq + i] = 1;
                    rest[h * dm.nq + i] = 0;
                    continue;
                }
                for (int64_t c = 0; c < d; c++)
                    oi[c] = (float)(zc / z * (double)si[c] + nsum[c] / z);
                r_out[h * dm.nq + i] = (float)(zc / z);
                rest[h * dm.nq + i] = (float)(zr / z);
            }
            trusted[h * nqb + I] = (float)n_trusted;
        }
    }
    return SL_OK;
}

size_t sl__ref_correct_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params, (void)n_threads;
    int64_t d = in[0].shape[2];
    if (op == SL_OP_CORRECT_SMOOTH_K)
        return (size_t)d * sizeof(double);
    if (op != SL_OP_CORRECT_RECTIFY)
        return 0;
    return (size_t)(6 * d) * sizeof(double) + (size_t)in[1].shape[1] + 64;
}

/* correct.compensate (card top_theta_compensation, steps 2-3). */
sl_status sl__ref_correct_compensate(const sl__kargs *a)
{
    const sl_correct_comp_params *p = a->params;
    const float *oin = a->in[0].data, *lse = a->in[1].data, *lref = a->in[2].data, *v = a->in[3].data;
    int64_t hq = a->in[0].shape[0], nq = a->in[0].shape[1], d = a->in[0].shape[2];
    int64_t hkv = a->in[3].shape[0], nk = a->in[3].shape[1], off = nk - nq;
    float *o = a->out[0].data, *l_out = a->out[1].data, *lost = a->out[2].data;
    for (int64_t h = 0; h < hq; h++) {
        const float *vg = v + (h / (hq / hkv)) * nk * d;
        for (int64_t i = 0; i < nq; i++) {
            const float *oi = oin + (h * nq + i) * d;
            float *out = o + (h * nq + i) * d;
            int64_t seen = p->causal ? off + i + 1 : nk;
            double L = lse[h * nq + i], R = lref[h * nq + i];
            if (seen <= p->min_len) {
                memcpy(out, oi, (size_t)d * sizeof *out);
                l_out[h * nq + i] = (float)L;
                lost[h * nq + i] = 0;
                continue;
            }
            /* f = Z_kept / (Z_kept + c·Z_miss), in logs */
            double f, lnew;
            double lmiss = p->estimate == 0 ? (R > L ? R + log1p(-exp(L - R)) : -INFINITY) : R;
            if (lmiss == -INFINITY || p->sdc_scale == 0) {
                f = 1;
                lnew = L;
            } else if (L == -INFINITY) {
                f = 0;
                lnew = log(p->sdc_scale) + lmiss;
            } else {
                double lc = log(p->sdc_scale) + lmiss; /* log(c·Z_miss) */
                double m = L > lc ? L : lc;
                lnew = m + log(exp(L - m) + exp(lc - m));
                f = exp(L - lnew);
            }
            double lam = p->vmc ? 1 - f : 0;
            for (int64_t c = 0; c < d; c++) {
                double mean = 0;
                if (lam > 0) {
                    for (int64_t j = 0; j < seen; j++)
                        mean += vg[j * d + c];
                    mean /= (double)seen;
                }
                out[c] = (float)(f * (double)oi[c] + lam * mean);
            }
            l_out[h * nq + i] = (float)lnew;
            lost[h * nq + i] = (float)(1 - f);
        }
    }
    return SL_OK;
}

/* correct.smooth_k (SpargeAttn / SALE key smoothing). Scratch: the mean key
 * of one kv head (d doubles). */
sl_status sl__ref_correct_smooth_k(const sl__kargs *a)
{
    const sl_correct_smooth_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *lse = a->in[2].buf ? a->in[2].data : NULL;
    float *ks = a->out[0].data, *l_out = a->out[1].data;
    double *mean = a->scratch;
    for (int64_t g = 0; g < dm.hkv; g++) {
        const float *kg = k + g * dm.nk * dm.d;
        for (int64_t c = 0; c < dm.d; c++) {
            double m = 0;
            for (int64_t j = 0; j < dm.nk; j++)
                m += kg[j * dm.d + c];
            mean[c] = m / (double)dm.nk;
            for (int64_t j = 0; j < dm.nk; j++)
                ks[(g * dm.nk + j) * dm.d + c] = (float)((double)kg[j * dm.d + c] - mean[c]);
        }
        for (int64_t h = g * dm.group; h < (g + 1) * dm.group; h++)
            for (int64_t i = 0; i < dm.nq; i++) {
                double s = 0;
                for (int64_t c = 0; c < dm.d; c++)
                    s += (double)q[(h * dm.nq + i) * dm.d + c] * mean[c];
                double base = lse ? (double)lse[h * dm.nq + i] : 0.0;
                l_out[h * dm.nq + i] = (float)(base + dm.scale * s);
            }
    }
    return SL_OK;
}

/* correct.lepe (BiFormer's local positional term, 1-D). */
sl_status sl__ref_correct_lepe(const sl__kargs *a)
{
    const sl_correct_lepe_params *p = a->params;
    const float *oin = a->in[0].data, *v = a->in[1].data, *w = a->in[2].buf ? a->in[2].data : NULL;
    int64_t hq = a->in[0].shape[0], nq = a->in[0].shape[1], d = a->in[0].shape[2];
    int64_t hkv = a->in[1].shape[0], nk = a->in[1].shape[1], kn = p->kernel;
    int64_t wh = w ? a->in[2].shape[0] : 0;
    float *o = a->out[0].data;
    for (int64_t h = 0; h < hq; h++) {
        const float *vg = v + (h / (hq / hkv)) * nk * d;
        const float *wr = w ? w + (wh == 1 ? 0 : h) * kn * d : NULL;
        for (int64_t i = 0; i < nq; i++) {
            int64_t pos = nk - nq + i, first = p->causal ? pos - kn + 1 : pos - kn / 2;
            for (int64_t c = 0; c < d; c++) {
                double acc = 0;
                for (int64_t t = 0; t < kn; t++) {
                    int64_t j = first + t;
                    if (j < 0 || j >= nk)
                        continue;
                    acc += (wr ? (double)wr[t * d + c] : 1.0 / (double)kn) * (double)vg[j * d + c];
                }
                o[(h * nq + i) * d + c] = (float)((double)oin[(h * nq + i) * d + c] + p->alpha * acc);
            }
        }
    }
    return SL_OK;
}

sl_status sl__ref_correct_reshape(const sl__kargs *a)
{
    const sl_correct_reshape_params *p = a->params;
    int64_t rows = sl_tensor_numel(&a->in[1]), d = a->in[0].shape[2];
    const float *o = a->in[0].data, *lse = a->in[1].data, *ref_o = a->in[2].data, *ref_l = a->in[3].data;
    const float *ratio = a->in[4].data, *res = a->in[5].data;
    float *out = a->out[0].data, *r_out = a->out[1].data, *res_out = a->out[2].data;
    int refresh = a->in[2].buf != NULL;
    for (int64_t i = 0; i < rows; i++) {
        double r;
        if (refresh) {
            r = !p->use_ratio || ref_l[i] == -INFINITY ? 1.0 : exp((double)lse[i] - (double)ref_l[i]);
            for (int64_t c = 0; c < d; c++) {
                double x = ref_o[i * d + c];
                res_out[i * d + c] = (float)(x - r * (double)o[i * d + c]);
                out[i * d + c] = (float)x;
            }
            r_out[i] = (float)r;
        } else {
            r = p->use_ratio ? (double)ratio[i] : 1.0;
            for (int64_t c = 0; c < d; c++) {
                double e = res ? (double)res[i * d + c] : 0.0;
                out[i * d + c] = (float)(r * (double)o[i * d + c] + e);
                res_out[i * d + c] = (float)e;
            }
            r_out[i] = (float)((double)ratio[i] + p->drift);
        }
    }
    return SL_OK;
}

static double row_norm2(const float *x, int64_t d)
{
    double s = 0;
    for (int64_t c = 0; c < d; c++)
        s += (double)x[c] * (double)x[c];
    return s;
}

sl_status sl__ref_correct_cache_reuse(const sl__kargs *a)
{
    const sl_correct_cache_params *p = a->params;
    int64_t rows = sl_tensor_numel(&a->in[1]), d = a->in[0].shape[2];
    int64_t dq = a->in[4].buf ? a->in[4].shape[2] : 0;
    const float *o1 = a->in[0].data, *l1 = a->in[1].data, *o2 = a->in[2].data, *l2 = a->in[3].data;
    const float *q = a->in[4].data, *cq = a->in[5].data;
    float *o = a->out[0].data, *lse = a->out[1].data, *reused = a->out[2].data;
    for (int64_t i = 0; i < rows; i++) {
        int reuse = 1;
        if (q) {
            double diff = 0;
            for (int64_t c = 0; c < dq; c++) {
                double t = (double)q[i * dq + c] - (double)cq[i * dq + c];
                diff += t * t;
            }
            reuse = sqrt(diff) <= p->tau * sqrt(row_norm2(cq + i * dq, dq));
        }
        reused[i] = (float)reuse;
        sl__ref_merge_row(o1 + i * d, l1[i], reuse ? o2 + i * d : NULL, l2[i], d, o + i * d, &lse[i]);
    }
    return SL_OK;
}

sl_status sl__ref_correct_linear_branch(const sl__kargs *a)
{
    const sl_correct_linear_params *p = a->params;
    int64_t h = a->in[0].shape[0], n = a->in[0].shape[1], d = a->in[0].shape[2];
    const float *o = a->in[0].data, *ol = a->in[1].data, *gate = a->in[2].data, *proj = a->in[3].data;
    int64_t gh = a->in[2].shape[0], ph = a->in[3].buf ? a->in[3].shape[0] : 0;
    float *out = a->out[0].data;
    for (int64_t hh = 0; hh < h; hh++) {
        double g = gate[gh == 1 ? 0 : hh];
        const float *P = proj ? proj + (ph == 1 ? 0 : hh) * d * d : NULL;
        for (int64_t r = 0; r < n; r++) {
            const float *x = ol + (hh * n + r) * d, *s = o + (hh * n + r) * d;
            for (int64_t c = 0; c < d; c++) {
                double y = x[c];
                if (P) {
                    y = 0;
                    for (int64_t e = 0; e < d; e++)
                        y += (double)P[c * d + e] * (double)x[e];
                }
                double base = p->convex ? (1.0 - g) * (double)s[c] : (double)s[c];
                out[(hh * n + r) * d + c] = (float)(base + g * y);
            }
        }
    }
    return SL_OK;
}
