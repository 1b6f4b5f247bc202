/* op_gather.c — the gather family: checks, shape rule and FLOP count of
 * gather.rows (contract in sparselab.h; kernels in ref/gather.c,
 * cpu/gather.c, cuda/gather.cu). */
#include "family.h"
#include "op_check.h"

static sl_status gather_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                              int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)params, (void)out_dtype;
    sl_status s;
    if ((s = sl__need_float3(ctx, info, &in[0], "x")))
        return s;
    char desc[96];
    sl_tensor_describe(&in[1], desc, sizeof desc);
    if (!in[1].buf || in[1].dtype != SL_I32 || in[1].ndim != 2)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'idx' must be i32 [heads, rows], found %s", info->name, desc);
    if (in[0].shape[0] == 0 || in[1].shape[0] % in[0].shape[0] != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: idx has %lld heads, x has %lld; expected a multiple", info->name,
                           (long long)in[1].shape[0], (long long)in[0].shape[0]);
    out_ndim[0] = 3;
    out_shape[0][0] = in[1].shape[0];
    out_shape[0][1] = in[1].shape[1];
    out_shape[0][2] = in[0].shape[2];
    return SL_OK;
}

static sl_status gather_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    const int32_t *idx = in[1].data;
    int64_t n = sl_tensor_numel(&in[1]), rows = in[0].shape[1];
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= rows)
            return sl_ctx_fail(ctx, SL_EARG, "%s: idx[%lld] = %d is outside [0, %lld)", info->name, (long long)i, idx[i],
                               (long long)rows);
    return SL_OK;
}

/* A copy: no arithmetic. */
static double gather_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)info, (void)params, (void)in;
    return 0;
}

const sl__family sl__family_gather = {"gather", gather_infer, gather_check_contents, NULL, gather_flops, NULL};
