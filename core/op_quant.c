/* op_quant.c — the quant family: checks, shape rule and FLOP count of
 * quant.fake (contract in sparselab.h; kernels in ref/quant.c, cpu/quant.c,
 * cuda/quant.cu). */
#include "family.h"
#include "op_check.h"

static sl_status quant_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                             int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)params, (void)out_dtype;
    sl_status s;
    if ((s = sl__need_float3(ctx, info, &in[0], "x")))
        return s;
    out_ndim[0] = 3;
    for (int i = 0; i < 3; i++)
        out_shape[0][i] = in[0].shape[i];
    return SL_OK;
}

/* a max, a division and a multiplication per element */
static double quant_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)info, (void)params;
    return 3.0 * (double)sl_tensor_numel(&in[0]);
}

const sl__family sl__family_quant = {"quant", quant_infer, NULL, NULL, quant_flops, NULL};
