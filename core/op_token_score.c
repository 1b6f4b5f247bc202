/* op_token_score.c — validation, shape inference and FLOP counts of the estimator
 * and executor ops the issue-4 recipes added beside the shared families:
 * pool.tokens, score.lowbit, score.hash and attn.bucket (contracts in
 * sparselab.h).
 * op.c's switches hand these ops to the functions here. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>


/* An optional i32 input: absent, or contiguous i32 of ndim dims whose shape is want. */
static sl_status opt_i32(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm, int ndim,
                         const int64_t *want)
{
    if (!t->buf)
        return SL_OK;
    char desc[96];
    sl_tensor_describe(t, desc, sizeof desc);
    int ok = t->dtype == SL_I32 && t->ndim == ndim && sl_tensor_is_contiguous(t);
    for (int d = 0; ok && want && d < ndim; d++)
        ok = t->shape[d] == want[d];
    if (!ok) {
        if (ndim == 1)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be a contiguous i32 vector, found %s", info->name,
                               nm, desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be contiguous i32 [%lld, %lld], found %s", info->name,
                           nm, (long long)want[0], (long long)want[1], desc);
    }
    return SL_OK;
}


sl_status sl__token_score_infer(sl_ctx *ctx, sl_op op, const void *params, const sl_tensor *in, int out_ndim[],
                           int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    const sl_op_info *info = sl_op_info_get(op);
    sl_status s;
    switch (op) {
    case SL_OP_POOL_TOKENS: {
        const sl_pool_params *p = params;
        if ((s = sl__op_need_float3(ctx, info, &in[0], "x")) || (s = opt_i32(ctx, info, &in[1], "opt.bounds", 1, NULL)))
            return s;
        if (in[1].buf && in[1].shape[0] == 0)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: opt.bounds is empty; expected at least the start 0", info->name);
        int64_t n = in[0].shape[1];
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = in[1].buf ? in[1].shape[0] : (n + p->block - 1) / p->block;
        out_shape[0][2] = in[0].shape[2];
        return SL_OK;
    }
    case SL_OP_SCORE_LOWBIT: {
        const sl_score_lowbit_params *p = params;
        if ((s = sl__op_qk_pair(ctx, info, in)))
            return s;
        if (in[2].buf) {
            char desc[96];
            sl_tensor_describe(&in[2], desc, sizeof desc);
            if (!sl__op_is_float(in[2].dtype) || in[2].ndim != 2 || in[2].shape[0] != in[0].shape[0] ||
                in[2].shape[1] != in[0].shape[1])
                return sl_ctx_fail(ctx, SL_ESHAPE, "%s: opt.lse must be float [%lld, %lld], found %s", info->name,
                                   (long long)in[0].shape[0], (long long)in[0].shape[1], desc);
        }
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = (in[0].shape[1] + p->bq - 1) / p->bq;
        out_shape[0][2] = (in[1].shape[1] + p->bk - 1) / p->bk;
        return SL_OK;
    }
    case SL_OP_ATTN_BUCKET: {
        if ((s = sl__op_qk_pair(ctx, info, in)) || (s = sl__op_need_float3(ctx, info, &in[2], "v")))
            return s;
        if (in[2].shape[0] != in[1].shape[0] || in[2].shape[1] != in[1].shape[1] || in[2].shape[2] != in[1].shape[2])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: k is [%lld, %lld, %lld] but v is [%lld, %lld, %lld]", info->name,
                               (long long)in[1].shape[0], (long long)in[1].shape[1], (long long)in[1].shape[2],
                               (long long)in[2].shape[0], (long long)in[2].shape[1], (long long)in[2].shape[2]);
        int64_t wq[2] = {in[0].shape[0], in[0].shape[1]}, wk[2] = {in[0].shape[0], in[1].shape[1]};
        if ((s = opt_i32(ctx, info, &in[3], "opt.qb", 2, wq)) || (s = opt_i32(ctx, info, &in[4], "opt.kb", 2, wk)))
            return s;
        if (!in[3].buf != !in[4].buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.qb and opt.kb come together; found only %s", info->name,
                               in[3].buf ? "opt.qb" : "opt.kb");
        out_ndim[0] = 3;
        memcpy(out_shape[0], in[0].shape, 3 * sizeof(int64_t));
        out_ndim[1] = 2;
        out_shape[1][0] = in[0].shape[0];
        out_shape[1][1] = in[0].shape[1];
        out_ndim[2] = 2;
        out_shape[2][0] = in[0].shape[0];
        out_shape[2][1] = in[0].shape[1];
        out_dtype[2] = SL_I32;
        return SL_OK;
    }
    case SL_OP_SCORE_HASH: {
        if ((s = sl__op_need_float3(ctx, info, &in[0], "x")) || (s = sl__op_need_float3(ctx, info, &in[1], "rot")))
            return s;
        const sl_tensor *x = &in[0], *r = &in[1];
        if (x->shape[0] == 0 || r->shape[0] % x->shape[0] != 0 || r->shape[1] != x->shape[2] || r->shape[2] == 0)
            return sl_ctx_fail(ctx, SL_ESHAPE,
                               "%s: rot must be [a multiple of %lld heads, %lld, M >= 1], found [%lld, %lld, %lld]",
                               info->name, (long long)x->shape[0], (long long)x->shape[2], (long long)r->shape[0],
                               (long long)r->shape[1], (long long)r->shape[2]);
        if (r->shape[2] > (1 << 29))
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: more than 2^29 rotation columns", info->name);
        out_ndim[0] = 2;
        out_shape[0][0] = r->shape[0];
        out_shape[0][1] = x->shape[1];
        out_dtype[0] = SL_I32;
        return SL_OK;
    }
    default: return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: no shape rule", info->name);
    }
}

sl_status sl__token_score_check_contents(sl_ctx *ctx, sl_op op, const sl_tensor *in)
{
    const sl_op_info *info = sl_op_info_get(op);
    switch (op) {
    case SL_OP_POOL_TOKENS: {
        if (!in[1].buf)
            return SL_OK;
        const int32_t *b = in[1].data;
        int64_t S = in[1].shape[0], n = in[0].shape[1];
        if (b[0] != 0)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.bounds[0] = %d; expected 0 (the first segment starts at 0)",
                               info->name, b[0]);
        for (int64_t i = 1; i < S; i++)
            if (b[i] <= b[i - 1] || b[i] >= n)
                return sl_ctx_fail(ctx, SL_EARG,
                                   "%s: opt.bounds[%lld] = %d; expected strictly increasing starts below n = %lld",
                                   info->name, (long long)i, b[i], (long long)n);
        return SL_OK;
    }
    case SL_OP_ATTN_BUCKET:
        for (int i = 3; i <= 4; i++) {
            if (!in[i].buf)
                continue;
            const int32_t *b = in[i].data;
            int64_t n = sl_tensor_numel(&in[i]);
            for (int64_t j = 0; j < n; j++)
                if (b[j] < 0)
                    return sl_ctx_fail(ctx, SL_EARG, "%s: %s[%lld] = %d; expected bucket ids >= 0", info->name,
                                       i == 3 ? "opt.qb" : "opt.kb", (long long)j, b[j]);
        }
        return SL_OK;
    default: return SL_OK;
    }
}

double sl__token_score_flops(sl_op op, const void *params, const sl_tensor *in)
{
    switch (op) {
    case SL_OP_POOL_TOKENS: {
        /* one add (or compare) per element; normalize adds a norm (2 per element) and a divide */
        const sl_pool_params *p = params;
        double n = (double)sl_tensor_numel(&in[0]);
        return p && p->normalize ? 4.0 * n : n;
    }
    case SL_OP_SCORE_LOWBIT: {
        /* the estimate's multiply-adds over the causal (or full) pairs, counted
         * like attention's QK half: 2·d per pair (at b bits, not f32) */
        const sl_score_lowbit_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        double pairs = p && p->causal ? (double)d.nq * (double)d.offset + (double)d.nq * (double)(d.nq + 1) / 2.0
                                      : (double)d.nq * (double)d.nk;
        return 2.0 * (double)d.d * pairs * (double)d.hq;
    }
    case SL_OP_ATTN_BUCKET: {
        /* The kept pairs depend on the data: this is the bound (every causal
         * pair, 4·d each); a recipe with the count output reports 4·d·Σcount. */
        const sl_attn_bucket_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        double pairs = p && p->causal ? (double)d.nq * (double)d.offset + (double)d.nq * (double)(d.nq + 1) / 2.0
                                      : (double)d.nq * (double)d.nk;
        return 4.0 * (double)d.d * pairs * (double)d.hq;
    }
    case SL_OP_SCORE_HASH:
        /* one multiply-add per (token, channel, column) and rotation head */
        return 2.0 * (double)in[1].shape[0] * (double)in[0].shape[1] * (double)in[0].shape[2] * (double)in[1].shape[2];
    default: return 0;
    }
}
