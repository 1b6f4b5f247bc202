/* op_pool.c — the pool family: checks, shape rule and FLOP count of
 * pool.tokens (contract in sparselab.h; kernels in ref/pool.c, cpu/pool.c,
 * cuda/pool.cu). */
#include "family.h"
#include "op_check.h"

static sl_status pool_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                            int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)out_dtype;
    const sl_pool_params *p = params;
    sl_status s;
    if ((s = sl__need_float3(ctx, info, &in[0], "x")) || (s = sl__opt_i32(ctx, info, &in[1], "opt.bounds", 1, NULL)))
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

static sl_status pool_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    if (!in[1].buf)
        return SL_OK;
    const int32_t *b = in[1].data;
    int64_t S = in[1].shape[0], n = in[0].shape[1];
    if (b[0] != 0)
        return sl_ctx_fail(ctx, SL_EARG, "%s: opt.bounds[0] = %d; expected 0 (the first segment starts at 0)",
                           info->name, b[0]);
    for (int64_t i = 1; i < S; i++)
        if (b[i] <= b[i - 1] || b[i] >= n)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.bounds[%lld] = %d; expected strictly increasing starts below n = %lld",
                               info->name, (long long)i, b[i], (long long)n);
    return SL_OK;
}

static double pool_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    /* one add (or compare) per element; normalize adds a norm (2 per element) and a divide */
    (void)info;
    const sl_pool_params *p = params;
    double n = (double)sl_tensor_numel(&in[0]);
    return p && p->normalize ? 4.0 * n : n;
}

const sl__family sl__family_pool = {"pool", pool_infer, pool_check_contents, NULL, pool_flops, NULL};
