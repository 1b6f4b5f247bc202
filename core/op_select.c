/* op_select.c — the select family: checks, shape rules and FLOP counts of
 * select.topk, select.topp and select.threshold (contracts in sparselab.h;
 * kernels in ref/select.c, cpu/select.c, cuda/select.cu). */
#include "family.h"
#include "op_check.h"

#include <math.h>
#include <string.h>

/* The optional per-head budget of a selector: 1 dim, one entry per head. */
static sl_status validate_head_budget(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, sl_dtype dt)
{
    if (!in[1].buf)
        return SL_OK;
    char desc[96];
    sl_tensor_describe(&in[1], desc, sizeof desc);
    int ok = in[1].ndim == 1 && in[1].shape[0] == in[0].shape[0] &&
             (dt == SL_I32 ? in[1].dtype == SL_I32 : sl__is_float(in[1].dtype));
    if (!ok)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be %s [%lld] (one per head of x), found %s", info->name,
                           info->op == SL_OP_SELECT_TOPK ? "opt.k" : "opt.p", dt == SL_I32 ? "i32" : "float",
                           (long long)in[0].shape[0], desc);
    return SL_OK;
}

/* t has dtype dt and x's shape. */
static int cover_base_shape_ok(const sl_tensor *t, const sl_tensor *x, sl_dtype dt)
{
    if (t->dtype != dt || t->ndim != x->ndim)
        return 0;
    for (int i = 0; i < x->ndim; i++)
        if (t->shape[i] != x->shape[i])
            return 0;
    return 1;
}

static sl_status select_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                              int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    sl_op op = info->op;
    if ((s = sl__check_scores(ctx, info, in, 1)))
        return s;
    if (op == SL_OP_SELECT_COVER && in[1].buf && !(in[1].ndim == 1 && in[1].shape[0] == in[0].shape[0] && in[1].dtype == SL_U8)) {
        char desc[96];
        sl_tensor_describe(&in[1], desc, sizeof desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'opt.heads' must be u8 [%lld] (one per head of x), found %s",
                           info->name, (long long)in[0].shape[0], desc);
    }
    if (op == SL_OP_SELECT_COVER && in[2].buf && !cover_base_shape_ok(&in[2], &in[0], SL_U8)) {
        char desc[96];
        sl_tensor_describe(&in[2], desc, sizeof desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'opt.base' must be u8 of x's shape, found %s", info->name, desc);
    }
    if (op == SL_OP_SELECT_ROW_COVER) {
        const sl_select_row_cover_params *p = params;
        int64_t R = in[0].ndim == 3 ? in[0].shape[1] : 1, C = in[0].shape[in[0].ndim - 1];
        if (p->mode == 1 && R != C)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: mode 1 (find_blocks_chunked) needs R = C; found R = %lld, C = %lld",
                               info->name, (long long)R, (long long)C);
    }
    if (op != SL_OP_SELECT_THRESHOLD && op != SL_OP_SELECT_COVER && op != SL_OP_SELECT_ROW_COVER &&
        (s = validate_head_budget(ctx, info, in, op == SL_OP_SELECT_TOPK ? SL_I32 : SL_F32)))
        return s;
    out_dtype[0] = SL_U8;
    out_ndim[0] = in[0].ndim;
    memcpy(out_shape[0], in[0].shape, sizeof out_shape[0]);
    return SL_OK;
}

static sl_status select_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    switch (info->op) {
    case SL_OP_SELECT_TOPK:
        if (in[1].buf)
            for (int64_t i = 0; i < in[1].shape[0]; i++)
                if (((const int32_t *)in[1].data)[i] < 0)
                    return sl_ctx_fail(ctx, SL_EARG, "%s: opt.k[%lld] = %d; expected k >= 0", info->name, (long long)i,
                                       ((const int32_t *)in[1].data)[i]);
        return SL_OK;
    case SL_OP_SELECT_TOPP: {
        if (in[1].buf)
            for (int64_t i = 0; i < in[1].shape[0]; i++) {
                float p = ((const float *)in[1].data)[i];
                if (!(p >= 0 && p <= 1))
                    return sl_ctx_fail(ctx, SL_EARG, "%s: opt.p[%lld] = %g; expected p in [0, 1]", info->name,
                                       (long long)i, p);
            }
        const sl_select_topp_params *p = params;
        const float *x = in[0].data;
        int64_t n = sl_tensor_numel(&in[0]);
        for (int64_t i = 0; !p->normalize && i < n; i++)
            if (x[i] < 0 && x[i] != -INFINITY)
                return sl_ctx_fail(ctx, SL_EARG, "%s: x[%lld] = %g; masses must be >= 0 (normalize = 1 for logits)",
                                   info->name, (long long)i, x[i]);
        return SL_OK;
    }
    case SL_OP_SELECT_COVER: {
        const float *x = in[0].data;
        int64_t n = sl_tensor_numel(&in[0]);
        for (int64_t i = 0; i < n; i++)
            if (x[i] < 0 && x[i] != -INFINITY)
                return sl_ctx_fail(ctx, SL_EARG, "%s: x[%lld] = %g; masses must be >= 0 or -inf", info->name,
                                   (long long)i, x[i]);
        return SL_OK;
    }
    default: return SL_OK;
    }
}

/* x: scores of the causal future are -inf; the budgets are finite. */
static sl__input_policy select_input_policy(const sl_op_info *info, int i)
{
    return i == 0 && info->op != SL_OP_SELECT_ROW_COVER ? SL__IN_NEG_INF : SL__IN_FINITE;
}

static double select_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    const sl_tensor *x = &in[0];
    if (info->op == SL_OP_SELECT_THRESHOLD)
        return (double)sl_tensor_numel(x); /* one compare per element */
    /* a comparison sort of each row (select.cover: of each head's R·C entries) */
    double c = x->ndim ? (double)x->shape[x->ndim - 1] : 1;
    if (info->op == SL_OP_SELECT_COVER && x->ndim == 3)
        c *= (double)x->shape[1];
    return (double)sl_tensor_numel(x) * (c > 1 ? log2(c) : 1.0);
}

const sl__family sl__family_select = {"select", select_infer, select_check_contents, NULL, select_flops,
                                      select_input_policy};
