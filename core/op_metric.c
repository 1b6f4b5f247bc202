/* op_metric.c — the metric family: checks, shape rules and FLOP counts of
 * metric.rel_l2, metric.cosine, metric.max_abs and metric.recall (contracts
 * in sparselab.h; kernels in ref/metric.c, cpu/metric.c, cuda/metric.cu). */
#include "family.h"
#include "op_check.h"

static sl_status metric_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                              int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)params;
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, -1)) || (s = sl__need_float(ctx, info, in, 1, -1)))
        return s;
    if (in[0].ndim != in[1].ndim)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: inputs have %d and %d dims", info->name, in[0].ndim, in[1].ndim);
    for (int d = 0; d < in[0].ndim; d++)
        if (in[0].shape[d] != in[1].shape[d])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: dim %d is %lld in x and %lld in ref", info->name, d,
                               (long long)in[0].shape[d], (long long)in[1].shape[d]);
    int pair = info->op == SL_OP_METRIC_COSINE || info->op == SL_OP_METRIC_RECALL;
    out_dtype[0] = SL_F64;
    out_ndim[0] = 1;
    out_shape[0][0] = pair ? 2 : 1;
    if (info->op == SL_OP_METRIC_COSINE && in[0].ndim < 1)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: inputs need at least 1 dim", info->name);
    return SL_OK;
}

/* metric.recall's inputs are log-sum-exps: -inf for an empty row, and +inf
 * passes the scan (the kernels treat it as they must). */
static sl__input_policy metric_input_policy(const sl_op_info *info, int i)
{
    (void)i;
    return info->op == SL_OP_METRIC_RECALL ? SL__IN_ANY_INF : SL__IN_FINITE;
}

static double metric_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)info, (void)params, (void)in;
    return 0;
}

const sl__family sl__family_metric = {"metric", metric_infer, NULL, NULL, metric_flops, metric_input_policy};
