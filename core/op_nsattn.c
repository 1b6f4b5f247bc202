/* op_nsattn.c — the nsattn family (issue 16: attention whose weights are
 * not a softmax): checks, shape rules and FLOP counts of attn.entmax
 * attn.relu, norm.rms_gated, attn.sigmoid_gate, attn.fastmax, attn.tra and attn.monotonic (contracts in sparselab.h; kernels in ref/nsattn.c, cpu/nsattn.c,
 * cuda/nsattn.cu). The ops keep the attn. prefix of their kind; the family
 * is separate so that their kernels live in their own files. */
#include "family.h"
#include "op_check.h"

#include <math.h>
#include <string.h>

/* Output 0 has the shape of the [H, N, D] tensor x; outputs 1..rows are
 * [H, N] (one value per row), the last of them int32. */
static sl_status out_rows_of(const int64_t *x, int rows, int out_ndim[], int64_t out_shape[][SL_MAX_DIMS],
                             sl_dtype out_dtype[])
{
    out_ndim[0] = 3;
    memcpy(out_shape[0], x, 3 * sizeof(int64_t));
    for (int o = 1; o <= rows; o++) {
        out_ndim[o] = 2;
        out_shape[o][0] = x[0];
        out_shape[o][1] = x[1];
    }
    if (rows > 0)
        out_dtype[rows] = SL_I32;
    return SL_OK;
}

static sl_status nsattn_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                              int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    if (info->op == SL_OP_NORM_RMS_GATED) {
        if ((s = sl__need_float(ctx, info, in, 0, 3)))
            return s;
        int64_t e = in[0].shape[0] * in[0].shape[2];
        for (int i = 1; i <= 2; i++) {
            if (!in[i].buf)
                continue;
            if ((s = sl__need_float(ctx, info, in, i, 1)))
                return s;
            if (in[i].shape[0] != e)
                return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %s must be [%lld] (heads x head_dim of x), found [%lld]",
                                   info->name, i == 1 ? "opt.g" : "opt.w", (long long)e, (long long)in[i].shape[0]);
        }
        return out_rows_of(in[0].shape, 0, out_ndim, out_shape, out_dtype);
    }
    if (info->op == SL_OP_ATTN_SIGMOID_GATE) {
        if ((s = sl__need_float(ctx, info, in, 0, 3)) || (s = sl__need_float(ctx, info, in, 1, 3)))
            return s;
        const int64_t *os = in[0].shape, *gs = in[1].shape;
        if (gs[0] != os[0] || gs[1] != os[1] || (gs[2] != 1 && gs[2] != os[2]))
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: g must be [%lld, %lld, 1 or %lld] for o [%lld, %lld, %lld], found [%lld, %lld, %lld]",
                               info->name, (long long)os[0], (long long)os[1], (long long)os[2], (long long)os[0],
                               (long long)os[1], (long long)os[2], (long long)gs[0], (long long)gs[1], (long long)gs[2]);
        return out_rows_of(os, 1, out_ndim, out_shape, out_dtype);
    }
    if ((s = sl__check_qkv(ctx, info, in)))
        return s;
    switch (info->op) {
    case SL_OP_ATTN_TRA: {
        int64_t want[2] = {in[0].shape[0], in[0].shape[1]};
        if ((s = sl__need_shape(ctx, info, in, 3, 2, want)))
            return s;
        return out_rows_of(in[0].shape, 1, out_ndim, out_shape, out_dtype);
    }
    case SL_OP_ATTN_MONOTONIC:
        return out_rows_of(in[0].shape, 2, out_ndim, out_shape, out_dtype);
    case SL_OP_ATTN_ENTMAX: {
        const sl_attn_entmax_params *p = params;
        if (p->algo == 0 && p->alpha != 1.0 && p->alpha != 1.5 && p->alpha != 2.0)
            return sl_ctx_fail(ctx, SL_EARG,
                               "%s: algo 0 (exact, sort-based) needs alpha 1, 1.5 or 2, found %g; use algo 1 (bisection)",
                               info->name, p->alpha);
        return out_rows_of(in[0].shape, 1, out_ndim, out_shape, out_dtype);
    }
    case SL_OP_ATTN_FASTMAX:
        return out_rows_of(in[0].shape, 0, out_ndim, out_shape, out_dtype);
    case SL_OP_ATTN_RELU:
        return out_rows_of(in[0].shape, 1, out_ndim, out_shape, out_dtype);
    default: return SL_OK;
    }
}

static sl_status nsattn_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    if (info->op == SL_OP_NORM_RMS_GATED || info->op == SL_OP_ATTN_SIGMOID_GATE || info->op == SL_OP_ATTN_FASTMAX)
        return SL_OK; /* fastmax: normalised q.k is bounded by lim^2; without normalize the caller's range is float's */
    return sl__check_score_range(ctx, info, params, in);
}

/* Query-key pairs the rows see. */
static double visible_pairs(const sl__attn_dims *d, int causal)
{
    return causal ? (double)d->nq * (double)d->offset + (double)d->nq * (double)(d->nq + 1) / 2.0
                  : (double)d->nq * (double)d->nk;
}

static double nsattn_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
    switch (info->op) {
    case SL_OP_ATTN_ENTMAX: {
        /* 2d per pair for the score, 2d per pair for P.V (the bound: a
         * sparse row skips its zeros), and the threshold search: about
         * log2(n) compares per pair sorted, 3 per pair per iteration of the
         * bisection. */
        const sl_attn_entmax_params *p = params;
        double pairs = visible_pairs(&d, p->causal) * (double)d.hq;
        double n = d.nk > 1 ? (double)d.nk : 2.0;
        double search = p->algo == 0 ? log2(n) : 3.0 * (double)p->n_iter;
        return pairs * (4.0 * (double)d.d + search);
    }
    case SL_OP_ATTN_RELU: {
        /* 2d per pair for the score, 2d per pair for P.V (the bound: rows skip zero weights) */
        const sl_attn_relu_params *p = params;
        return visible_pairs(&d, p->causal) * (double)d.hq * 4.0 * (double)d.d;
    }
    case SL_OP_ATTN_FASTMAX: {
        /* factorised (cpu): per key the states k v^T and (k x k) v^T, per row
         * the contractions with q and q x q: about 2 (d + d^2 + d^3 [p = 2]) each */
        const sl_attn_fastmax_params *p = params;
        double dd = (double)d.d, per = 2.0 * (dd + dd * dd + (p->p == 2 ? dd * dd * dd : 0));
        return (double)d.hq * per * ((double)d.nk + (double)d.nq);
    }
    case SL_OP_ATTN_TRA: {
        /* scores over every visible pair, the softmax and P.V over the kept ones (bound: all) */
        const sl_attn_tra_params *p = params;
        return visible_pairs(&d, p->causal) * (double)d.hq * 4.0 * (double)d.d;
    }
    case SL_OP_ATTN_MONOTONIC: {
        /* data-dependent: the scan reads each key about once per head, the
         * chunk costs 4·d·w per row; the bound counts the scan as 2·d per
         * visible key of the head and every row's full chunk */
        const sl_attn_monotonic_params *p = params;
        double w = (double)(p->chunk < d.nk ? p->chunk : d.nk);
        return (double)d.hq * (2.0 * (double)d.d * (double)d.nk + 4.0 * (double)d.d * w * (double)d.nq);
    }
    case SL_OP_ATTN_SIGMOID_GATE:
        return 6.0 * (double)sl_tensor_numel(&in[0]);
    case SL_OP_NORM_RMS_GATED:
        /* square-add, scale, gate product and sigmoid per element */
        return 8.0 * (double)sl_tensor_numel(&in[0]);
    default: return 0;
    }
}

const sl__family sl__family_nsattn = {"nsattn", nsattn_infer, nsattn_check_contents, NULL, nsattn_flops, NULL};
