/* ref/correct_ext.c — reference kernels (float64, plain loops) of the ops of
 * issue 5 for cards re_ttention (correct.reshape), flashblock
 * (correct.cache_reuse), salad (correct.linear_branch, attn.linear) and
 * psa_pyramid (attn.pooled_kv). attn.linear is computed in its quadratic
 * form (every row sums over its keys), independent of the cpu kernel's
 * running-state form; attn.pooled_kv pools each group from K and V when it
 * is read. */
#include "ref.h"

#include <math.h>
#include <string.h>

static sl_status interrupted(const sl__kargs *a)
{
    return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[ref]: interrupted", sl_op_info_get(a->op)->name);
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
        double x = l1[i], y = reuse ? (double)l2[i] : -INFINITY, m = x > y ? x : y;
        if (m == -INFINITY) {
            memset(o + i * d, 0, (size_t)d * sizeof *o);
            lse[i] = -INFINITY;
            continue;
        }
        double w1 = exp(x - m), w2 = exp(y - m), sum = w1 + w2;
        for (int64_t c = 0; c < d; c++)
            o[i * d + c] = (float)((w1 * (double)o1[i * d + c] + w2 * (double)(reuse ? o2[i * d + c] : 0.f)) / sum);
        lse[i] = (float)(m + log(sum));
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

static double phi(double x, int feature) { return feature == 0 ? (x > 0 ? x + 1.0 : exp(x)) : (x > 0 ? x : 0.0); }

sl_status sl__ref_attn_linear(const sl__kargs *a)
{
    const sl_attn_linear_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    float *o = a->out[0].data;
    double *num = a->scratch;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            const float *qr = q + (h * dm.nq + r) * dm.d;
            int64_t lim = p->causal ? dm.offset + r + 1 : dm.nk;
            double den = 0;
            memset(num, 0, (size_t)dm.d * sizeof *num);
            for (int64_t j = 0; j < lim; j++) {
                const float *kj = k + (g * dm.nk + j) * dm.d, *vj = v + (g * dm.nk + j) * dm.d;
                double w = 0;
                for (int64_t c = 0; c < dm.d; c++)
                    w += phi(qr[c], (int)p->feature) * phi(kj[c], (int)p->feature);
                den += w;
                for (int64_t c = 0; c < dm.d; c++)
                    num[c] += w * (double)vj[c];
            }
            for (int64_t c = 0; c < dm.d; c++)
                o[(h * dm.nq + r) * dm.d + c] = den > 0 ? (float)(num[c] / den) : 0.f;
        }
    }
    return SL_OK;
}

sl_status sl__ref_attn_pooled_kv(const sl__kargs *a)
{
    const sl_attn_pooled_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    const uint8_t *lv = a->in[3].data;
    int64_t hm = a->in[3].shape[0], nqb = a->in[3].shape[1], nkb = a->in[3].shape[2];
    float *o = a->out[0].data, *lse = a->out[1].data;
    double *kbar = a->scratch, *vbar = kbar + dm.d, *acc = vbar + dm.d;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group, mh = h / (dm.hq / hm);
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            const float *qr = q + (h * dm.nq + r) * dm.d;
            int64_t pos = dm.offset + r;
            /* two passes over the visible groups: the max, then the sums */
            double m = -INFINITY, l = 0;
            memset(acc, 0, (size_t)dm.d * sizeof *acc);
            for (int pass = 0; pass < 2; pass++)
                for (int64_t c = 0; c < nkb; c++) {
                    int64_t s = lv[(mh * nqb + r / p->bq) * nkb + c];
                    if (!s)
                        continue;
                    int64_t end = (c + 1) * p->bk < dm.nk ? (c + 1) * p->bk : dm.nk;
                    for (int64_t j0 = c * p->bk; j0 < end; j0 += s) {
                        int64_t j1 = j0 + s < end ? j0 + s : end, cnt = j1 - j0;
                        if (p->causal && j1 - 1 > pos)
                            continue;
                        memset(kbar, 0, (size_t)(2 * dm.d) * sizeof *kbar);
                        for (int64_t j = j0; j < j1; j++)
                            for (int64_t x = 0; x < dm.d; x++) {
                                kbar[x] += (double)k[(g * dm.nk + j) * dm.d + x] / (double)cnt;
                                vbar[x] += (double)v[(g * dm.nk + j) * dm.d + x] / (double)cnt;
                            }
                        double sc = 0;
                        for (int64_t x = 0; x < dm.d; x++)
                            sc += (double)qr[x] * kbar[x];
                        sc = sc * dm.scale + log((double)cnt);
                        if (pass == 0) {
                            m = sc > m ? sc : m;
                        } else {
                            double w = exp(sc - m);
                            l += w;
                            for (int64_t x = 0; x < dm.d; x++)
                                acc[x] += w * vbar[x];
                        }
                    }
                }
            float *orow = o + (h * dm.nq + r) * dm.d;
            if (m == -INFINITY) {
                memset(orow, 0, (size_t)dm.d * sizeof *orow);
                lse[h * dm.nq + r] = -INFINITY;
                continue;
            }
            for (int64_t x = 0; x < dm.d; x++)
                orow[x] = (float)(acc[x] / l);
            lse[h * dm.nq + r] = (float)(m + log(l));
        }
    }
    return SL_OK;
}

size_t sl__ref_correct_ext_scratch(sl_op op, const sl_tensor *in)
{
    int64_t d = in[0].ndim == 3 ? in[0].shape[2] : 0;
    switch (op) {
    case SL_OP_ATTN_LINEAR: return (size_t)d * sizeof(double);
    case SL_OP_ATTN_POOLED_KV: return (size_t)(3 * d) * sizeof(double);
    default: return 0;
    }
}
