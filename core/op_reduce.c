/* op_reduce.c — the reduce family: checks, shape rules and FLOP counts of
 * reduce.columns, reduce.diagonals, reduce.block, reduce.heads, reduce.far, reduce.columns64, reduce.kth and
 * reduce.segments64 (contracts
 * in sparselab.h; kernels in ref/reduce.c, cpu/reduce.c, cuda/reduce.cu). */
#include "family.h"
#include "op_check.h"

static sl_status reduce_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                              int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    if (info->op == SL_OP_REDUCE_SEGMENTS64) {
        const sl_reduce_segments_params *p = params;
        if ((s = sl__need_float(ctx, info, in, 0, 2)))
            return s;
        out_ndim[0] = 2;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = sl__ceil_div(in[0].shape[1], p->size);
        out_dtype[0] = SL_F64;
        return SL_OK;
    }
    if ((s = sl__check_scores(ctx, info, in, 0)))
        return s;
    out_ndim[0] = 3;
    switch (info->op) {
    case SL_OP_REDUCE_COLUMNS:
    case SL_OP_REDUCE_DIAGONALS:
        out_ndim[0] = 2;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = in[0].shape[2];
        return SL_OK;
    case SL_OP_REDUCE_BLOCK: {
        const sl_reduce_block_params *p = params;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = sl__ceil_div(in[0].shape[1], p->br);
        out_shape[0][2] = sl__ceil_div(in[0].shape[2], p->bc);
        return SL_OK;
    }
    case SL_OP_REDUCE_HEADS: {
        const sl_reduce_heads_params *p = params;
        int64_t h = in[0].shape[0], g = p->group ? p->group : h;
        if (h == 0 || h % g != 0)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: x has %lld heads; expected a positive multiple of group %lld",
                               info->name, (long long)h, (long long)g);
        out_shape[0][0] = h / g;
        out_shape[0][1] = in[0].shape[1];
        out_shape[0][2] = in[0].shape[2];
        return SL_OK;
    }
    case SL_OP_REDUCE_KTH: {
        int64_t R = in[0].shape[1], C = in[0].shape[2];
        for (int i = 1; i <= 2; i++) {
            if ((s = sl__need_index(ctx, info, &in[0], i, SL_I32, 1)))
                return s;
            if (in[i].shape[0] != R)
                return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must have %lld entries (one per row of x), found %lld",
                                   info->name, i == 1 ? "rank" : "limit", (long long)R, (long long)in[i].shape[0]);
        }
        const int32_t *rk = in[1].data, *lim = in[2].data;
        for (int64_t r = 0; r < R; r++)
            if (lim[r] < 1 || lim[r] > C || rk[r] < 1 || rk[r] > lim[r])
                return sl_ctx_fail(ctx, SL_EARG,
                                   "%s: row %lld: expected 1 <= rank <= limit <= %lld, found rank %d, limit %d", info->name,
                                   (long long)r, (long long)C, rk[r], lim[r]);
        out_ndim[0] = 2;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = R;
        return SL_OK;
    }
    case SL_OP_REDUCE_COLUMNS64:
        out_ndim[0] = 2;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = in[0].shape[2];
        out_dtype[0] = SL_F64;
        return SL_OK;
    case SL_OP_REDUCE_FAR:
        out_ndim[0] = 2;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = in[0].shape[1];
        out_dtype[0] = SL_F64;
        return SL_OK;
    default: return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: not an op of the reduce family", info->name);
    }
}

/* Scores of the causal future are -inf. */
static sl__input_policy reduce_input_policy(const sl_op_info *info, int i)
{
    (void)info, (void)i;
    return SL__IN_NEG_INF;
}

static double reduce_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    /* one add or compare per input element */
    (void)info, (void)params;
    return (double)sl_tensor_numel(&in[0]);
}

const sl__family sl__family_reduce = {"reduce", reduce_infer, NULL, NULL, reduce_flops, reduce_input_policy};
