/* op_act.c — the act family (issue 17): checks, shapes and FLOP counts of
 * act.topk, act.threshold and act.delta (contracts in sparselab.h; kernels in
 * ref/act.c, cpu/act.c, cuda/act.cu). */
#include "family.h"
#include "op_check.h"

static sl_status act_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                           int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)params, (void)out_dtype;
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 2)))
        return s;
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
    if (info->op == SL_OP_ACT_TOPK || info->op == SL_OP_ACT_STAT_TOPK)
        return SL_OK;
    const float *t = in[1].data;
    for (int64_t j = 0; j < in[1].shape[0]; j++)
        if (t[j] < 0)
            return sl_ctx_fail(ctx, SL_EARG, "%s: theta[%lld] = %g is negative", info->name, (long long)j, (double)t[j]);
    return SL_OK;
}

/* a compare per entry */
static double act_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)info, (void)params;
    return (double)sl_tensor_numel(&in[0]);
}

const sl__family sl__family_act = {"act", act_infer, act_check_contents, NULL, act_flops, NULL};
