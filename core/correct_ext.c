/* correct_ext.c — validation, shape inference and FLOP counts of the ops of
 * issue 5 that cards re_ttention (correct.reshape), flashblock
 * (correct.cache_reuse), salad (correct.linear_branch, attn.linear) and
 * psa_pyramid (attn.pooled_kv) need. op.c dispatches these ops here after
 * its own q/k/v checks (attn.linear, attn.pooled_kv); kernels live in
 * ref/correct_ext.c, cpu/correct_ext.c and cuda/correct_ext.cu. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void in_name(const sl_op_info *info, int i, char *buf, size_t n)
{
    const char *p = info->inputs;
    for (int k = 0; k < i && p; k++)
        if ((p = strchr(p, ',')))
            p++;
    size_t len = p ? strcspn(p, ",") : 0;
    if (len >= n)
        len = n - 1;
    memcpy(buf, p ? p : "", len);
    buf[len] = '\0';
}


/* Input i is a float tensor whose shape is want[0..ndim) (-1: any size). */
static sl_status need_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim,
                            const int64_t *want)
{
    char nm[32], desc[96], exp[96];
    in_name(info, i, nm, sizeof nm);
    if (!in[i].buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s' is missing", info->name, nm);
    sl_tensor_describe(&in[i], desc, sizeof desc);
    int ok = sl__op_is_float(in[i].dtype) && in[i].ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = want[d] < 0 || in[i].shape[d] == want[d];
    if (ok)
        return SL_OK;
    size_t at = (size_t)snprintf(exp, sizeof exp, "float [");
    for (int d = 0; d < ndim && at < sizeof exp; d++)
        at += (size_t)(want[d] < 0 ? snprintf(exp + at, sizeof exp - at, "%s*", d ? ", " : "")
                                   : snprintf(exp + at, sizeof exp - at, "%s%lld", d ? ", " : "", (long long)want[d]));
    if (at < sizeof exp)
        snprintf(exp + at, sizeof exp - at, "]");
    return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be %s, found %s", info->name, nm, exp, desc);
}

static void set_out(int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], int o, int ndim, const int64_t *shape)
{
    out_ndim[o] = ndim;
    memcpy(out_shape[o], shape, (size_t)ndim * sizeof(int64_t));
}

static int is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

sl_status sl__correct_ext_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                                int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    int64_t any3[3] = {-1, -1, -1};
    switch (info->op) {
    case SL_OP_CORRECT_RESHAPE: {
        if ((s = need_shape(ctx, info, in, 0, 3, any3)))
            return s;
        const int64_t *o = in[0].shape;
        if ((s = need_shape(ctx, info, in, 1, 2, o)))
            return s;
        if (!in[2].buf != !in[3].buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.ref_o and opt.ref_lse come together; found only %s", info->name,
                               in[2].buf ? "ref_o" : "ref_lse");
        if (!in[2].buf && !in[4].buf)
            return sl_ctx_fail(ctx, SL_EARG,
                               "%s: expected ref_o and ref_lse (a refresh step) or ratio (a sparse step); found neither",
                               info->name);
        if (in[2].buf && ((s = need_shape(ctx, info, in, 2, 3, o)) || (s = need_shape(ctx, info, in, 3, 2, o))))
            return s;
        if (in[4].buf && (s = need_shape(ctx, info, in, 4, 2, o)))
            return s;
        if (in[5].buf && (s = need_shape(ctx, info, in, 5, 3, o)))
            return s;
        set_out(out_ndim, out_shape, 0, 3, o);
        set_out(out_ndim, out_shape, 1, 2, o);
        set_out(out_ndim, out_shape, 2, 3, o);
        return SL_OK;
    }
    case SL_OP_CORRECT_CACHE_REUSE: {
        if ((s = need_shape(ctx, info, in, 0, 3, any3)))
            return s;
        const int64_t *o = in[0].shape;
        if ((s = need_shape(ctx, info, in, 1, 2, o)) || (s = need_shape(ctx, info, in, 2, 3, o)) ||
            (s = need_shape(ctx, info, in, 3, 2, o)))
            return s;
        if (!in[4].buf != !in[5].buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.q and opt.cache_q come together; found only %s", info->name,
                               in[4].buf ? "q" : "cache_q");
        if (in[4].buf) {
            int64_t qs[3] = {o[0], o[1], -1};
            if ((s = need_shape(ctx, info, in, 4, 3, qs)) || (s = need_shape(ctx, info, in, 5, 3, in[4].shape)))
                return s;
        }
        set_out(out_ndim, out_shape, 0, 3, o);
        set_out(out_ndim, out_shape, 1, 2, o);
        set_out(out_ndim, out_shape, 2, 2, o);
        return SL_OK;
    }
    case SL_OP_CORRECT_LINEAR_BRANCH: {
        if ((s = need_shape(ctx, info, in, 0, 3, any3)))
            return s;
        const int64_t *o = in[0].shape;
        if ((s = need_shape(ctx, info, in, 1, 3, o)))
            return s;
        int64_t g1[1] = {-1};
        if ((s = need_shape(ctx, info, in, 2, 1, g1)))
            return s;
        if (in[2].shape[0] != 1 && in[2].shape[0] != o[0])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: gate must be [1] or [%lld] (one per head), found [%lld]",
                               info->name, (long long)o[0], (long long)in[2].shape[0]);
        if (in[3].buf) {
            int64_t ps[3] = {-1, o[2], o[2]};
            if ((s = need_shape(ctx, info, in, 3, 3, ps)))
                return s;
            if (in[3].shape[0] != 1 && in[3].shape[0] != o[0])
                return sl_ctx_fail(ctx, SL_ESHAPE, "%s: proj must be [1 or %lld, %lld, %lld], found %lld heads",
                                   info->name, (long long)o[0], (long long)o[2], (long long)o[2],
                                   (long long)in[3].shape[0]);
        }
        set_out(out_ndim, out_shape, 0, 3, o);
        return SL_OK;
    }
    case SL_OP_ATTN_LINEAR:
        /* q, k, v were checked by op.c (validate_qkv) */
        set_out(out_ndim, out_shape, 0, 3, in[0].shape);
        return SL_OK;
    case SL_OP_ATTN_POOLED_KV: {
        const sl_attn_pooled_params *p = params;
        int64_t nqb = (in[0].shape[1] + p->bq - 1) / p->bq, nkb = (in[1].shape[1] + p->bk - 1) / p->bk;
        char desc[96];
        sl_tensor_describe(&in[3], desc, sizeof desc);
        if (!in[3].buf || in[3].dtype != SL_U8 || in[3].ndim != 3 || in[3].shape[1] != nqb || in[3].shape[2] != nkb)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: levels must be u8 [Hm, %lld, %lld] for n_q %lld, n_k %lld in blocks of (%lld, %lld), found %s",
                               info->name, (long long)nqb, (long long)nkb, (long long)in[0].shape[1],
                               (long long)in[1].shape[1], (long long)p->bq, (long long)p->bk, desc);
        if (!sl_tensor_is_contiguous(&in[3]))
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: levels must be contiguous, found a strided view", info->name);
        if (in[3].shape[0] <= 0 || in[0].shape[0] % in[3].shape[0] != 0)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: levels has %lld heads, q has %lld; expected 1 or a divisor",
                               info->name, (long long)in[3].shape[0], (long long)in[0].shape[0]);
        set_out(out_ndim, out_shape, 0, 3, in[0].shape);
        out_ndim[1] = 2;
        out_shape[1][0] = in[0].shape[0];
        out_shape[1][1] = in[0].shape[1];
        return SL_OK;
    }
    default: break;
    }
    (void)out_dtype;
    return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: no shape rule", info->name);
}

sl_status sl__correct_ext_check(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    switch (info->op) {
    case SL_OP_CORRECT_RESHAPE:
        if (in[4].buf) {
            const float *r = in[4].data;
            for (int64_t i = 0; i < sl_tensor_numel(&in[4]); i++)
                if (!(r[i] >= 0))
                    return sl_ctx_fail(ctx, SL_EARG, "%s: ratio[%lld] = %g, expected >= 0 (a kept mass fraction)",
                                       info->name, (long long)i, (double)r[i]);
        }
        return SL_OK;
    case SL_OP_CORRECT_LINEAR_BRANCH: {
        const float *g = in[2].data;
        for (int64_t i = 0; i < in[2].shape[0]; i++)
            if (!(g[i] >= 0 && g[i] <= 1))
                return sl_ctx_fail(ctx, SL_EARG, "%s: gate[%lld] = %g is outside [0, 1]", info->name, (long long)i,
                                   (double)g[i]);
        return SL_OK;
    }
    case SL_OP_ATTN_POOLED_KV: {
        const sl_attn_pooled_params *p = params;
        const uint8_t *lv = in[3].data;
        for (int64_t i = 0; i < sl_tensor_numel(&in[3]); i++)
            if (lv[i] != 0 && (!is_pow2(lv[i]) || lv[i] > p->bk))
                return sl_ctx_fail(ctx, SL_EARG, "%s: levels[%lld] = %d, expected 0 (skip) or a power of two <= bk = %lld",
                                   info->name, (long long)i, lv[i], (long long)p->bk);
        return SL_OK;
    }
    default: return SL_OK;
    }
}

/* Pooled keys of key block c at level s: ceil(len/s) for its clipped length. */
static int64_t groups_of(int64_t nk, int64_t bk, int64_t c, int64_t s)
{
    int64_t len = nk - c * bk < bk ? nk - c * bk : bk;
    return (len + s - 1) / s;
}

double sl__correct_ext_flops(sl_op op, const void *params, const sl_tensor *in)
{
    switch (op) {
    case SL_OP_CORRECT_RESHAPE:
    case SL_OP_CORRECT_LINEAR_BRANCH: {
        /* reshape: r·o + residual (refresh: ref_o - r·o) per element;
         * linear_branch: o + g·x, plus the D×D projection per row */
        double n = (double)sl_tensor_numel(&in[0]);
        if (op == SL_OP_CORRECT_LINEAR_BRANCH && in[3].buf)
            n += n * (double)in[0].shape[2];
        return 2.0 * n;
    }
    case SL_OP_CORRECT_CACHE_REUSE: {
        /* merge: two multiplies and an add per element of every row (an upper
         * bound: rows that do not reuse skip it); the query test reads q and
         * cache_q (a difference and two squares per element). */
        double n = 3.0 * (double)sl_tensor_numel(&in[0]);
        if (in[4].buf)
            n += 4.0 * (double)sl_tensor_numel(&in[4]);
        return n;
    }
    case SL_OP_ATTN_LINEAR: {
        /* per query head: phi(k_j) v_j^T and phi(k_j) accumulated for every
         * key a row sees (the running state), phi(q)·S and phi(q)·z per row */
        const sl_attn_linear_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        double keys = p && p->causal ? (double)(d.offset + d.nq > 0 ? d.offset + d.nq : 0) : (double)d.nk;
        if (keys > (double)d.nk)
            keys = (double)d.nk;
        return (double)d.hq * 2.0 * (double)d.d * ((double)d.d + 1.0) * (keys + (double)d.nq);
    }
    case SL_OP_ATTN_POOLED_KV: {
        /* 4·d per (row, visible pooled key) of every kept block (with
         * causal, only the groups the row sees: a level map may list blocks
         * in the future, which the kernels skip), plus the pooling: per kv head and level s > 1 in use,
         * 2·n_k·d adds for K and V. */
        const sl_attn_pooled_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        const sl_tensor *lt = &in[3];
        int64_t hm = lt->shape[0], nqb = lt->shape[1], nkb = lt->shape[2];
        const uint8_t *lv = lt->data;
        double pairs = 0;
        int used[9] = {0};
        for (int64_t h = 0; h < hm; h++)
            for (int64_t r = 0; r < nqb; r++) {
                int64_t rows = d.nq - r * p->bq < p->bq ? d.nq - r * p->bq : p->bq;
                for (int64_t c = 0; c < nkb; c++) {
                    int s = lv[(h * nqb + r) * nkb + c];
                    if (!s)
                        continue;
                    if (!p->causal) {
                        pairs += (double)rows * (double)groups_of(d.nk, p->bk, c, s);
                    } else {
                        /* row at position pos sees the groups whose last key is <= pos */
                        int64_t k0 = c * p->bk, len = d.nk - k0 < p->bk ? d.nk - k0 : p->bk;
                        for (int64_t i = 0; i < rows; i++) {
                            int64_t seen = d.offset + r * p->bq + i - k0 + 1;
                            pairs += seen <= 0 ? 0 : seen >= len ? (double)((len + s - 1) / s) : (double)(seen / s);
                        }
                    }
                    for (int e = 1; e < 9; e++)
                        if (s == (1 << e))
                            used[e] = 1;
                }
            }
        double pool = 0;
        for (int e = 1; e < 9; e++)
            pool += used[e] ? 2.0 * (double)d.hkv * (double)d.nk * (double)d.d : 0;
        return 4.0 * (double)d.d * pairs * (double)(d.hq / hm) + pool;
    }
    default: return 0;
    }
}
