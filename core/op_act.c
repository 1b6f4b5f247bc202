/* op_act.c — the act family (issue 17): checks, shapes and FLOP counts of
 * act.topk, act.threshold, act.delta, act.stat_topk and act.spark_score (contracts in sparselab.h; kernels in
 * ref/act.c, cpu/act.c, cuda/act.cu). */
#include "family.h"
#include "op_check.h"
#include "act_quantile.h"

static sl_status act_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                           int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)params, (void)out_dtype;
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 2)))
        return s;
    if (info->op == SL_OP_ACT_SPARK_SCORE) {
        if ((s = sl__need_float(ctx, info, in, 1, 2)))
            return s;
        if (in[1].shape[1] != in[0].shape[1])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: w1 has %lld input dims, x has %lld", info->name,
                               (long long)in[1].shape[1], (long long)in[0].shape[1]);
        if (in[2].buf) {
            if ((s = sl__need_float(ctx, info, in, 2, 2)))
                return s;
            if (in[2].shape[0] != in[1].shape[0] || in[2].shape[1] != in[1].shape[1])
                return sl_ctx_fail(ctx, SL_ESHAPE, "%s: w3 is [%lld, %lld], w1 is [%lld, %lld]", info->name,
                                   (long long)in[2].shape[0], (long long)in[2].shape[1], (long long)in[1].shape[0],
                                   (long long)in[1].shape[1]);
        }
        out_ndim[0] = 2;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = in[1].shape[0];
        return SL_OK;
    }
    if (info->op == SL_OP_ACT_THRESHOLD || info->op == SL_OP_ACT_DELTA) {
        if ((s = sl__need_float(ctx, info, in, 1, 1)))
            return s;
        if (in[1].shape[0] != in[0].shape[1])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: theta has %lld channels, x has %lld", info->name,
                               (long long)in[1].shape[0], (long long)in[0].shape[1]);
    }
    for (int o = 0; o < info->n_out; o++) {
        out_ndim[o] = 2;
        out_shape[o][0] = in[0].shape[0];
        out_shape[o][1] = in[0].shape[1];
    }
    return SL_OK;
}

static sl_status act_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    if (info->op == SL_OP_ACT_TOPK || info->op == SL_OP_ACT_STAT_TOPK || info->op == SL_OP_ACT_SPARK_SCORE)
        return SL_OK;
    const float *t = in[1].data;
    for (int64_t j = 0; j < in[1].shape[0]; j++)
        if (t[j] < 0)
            return sl_ctx_fail(ctx, SL_EARG, "%s: theta[%lld] = %g is negative", info->name, (long long)j, (double)t[j]);
    return SL_OK;
}

/* a compare per entry; act.spark_score: 2 . T . N . r' per weight (+ silu and product with w3) */
static double act_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    if (info->op == SL_OP_ACT_SPARK_SCORE) {
        double T = (double)in[0].shape[0], N = (double)in[1].shape[0];
        double r = (double)sl__act_spark_dims(((const sl_act_spark_params *)params)->r, in[0].shape[1]);
        return in[2].buf ? T * N * (4 * r + 3) : 2 * T * N * r;
    }
    return (double)sl_tensor_numel(&in[0]);
}

const sl__family sl__family_act = {"act", act_infer, act_check_contents, NULL, act_flops, NULL};
