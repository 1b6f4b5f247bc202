/* op_quant.c — the quant family: checks, shape rules and FLOP counts of
 * quant.fake and quant.attn_block (contracts in sparselab.h; kernels in
 * ref/quant.c, cpu/quant.c, cuda/quant.cu). */
#include "family.h"
#include "op_check.h"

static sl_status quant_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                             int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)out_dtype;
    sl_status s;
    if (info->op == SL_OP_QUANT_ATTN_BLOCK) {
        const sl_quant_attn_params *p = params;
        sl_attn_block_params pb = {.bq = p->bq, .bk = p->bk, .scale = p->scale, .pv_skip = 0};
        if ((s = sl__check_qkv(ctx, info, in)) || (s = sl__check_block_mask(ctx, info, in, &pb)))
            return s;
        if (p->bits > 8 && p->bits != 16)
            return sl_ctx_fail(ctx, SL_EARG, "%s: bits must be 2 .. 8 (integer P.V) or 16 (no quantisation), found %lld",
                               info->name, (long long)p->bits);
        out_ndim[0] = 3;
        for (int i = 0; i < 3; i++)
            out_shape[0][i] = in[0].shape[i];
        out_ndim[1] = 2;
        out_shape[1][0] = in[0].shape[0];
        out_shape[1][1] = in[0].shape[1];
        return SL_OK;
    }
    if ((s = sl__need_float3(ctx, info, &in[0], "x")))
        return s;
    out_ndim[0] = 3;
    for (int i = 0; i < 3; i++)
        out_shape[0][i] = in[0].shape[i];
    return SL_OK;
}

/* quant.fake: a max, a division and a multiplication per element.
 * quant.attn_block: per kept pair (an upper bound: partial blocks count whole) the score (2D), the exp, the code and
 * the integer product with V (2D); V's codes (3 per element). */
static double quant_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    if (info->op == SL_OP_QUANT_ATTN_BLOCK) {
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        const sl_quant_attn_params *p = params;
        double pairs = (double)in[4].shape[0] * (double)p->bq * (double)p->bk; /* kept blocks, partial ones counted whole */
        int64_t hm = in[3].shape[0];
        pairs *= (double)d.hq / (double)hm;
        return pairs * (4.0 * (double)d.d + 3.0) + 3.0 * (double)sl_tensor_numel(&in[2]);
    }
    return 3.0 * (double)sl_tensor_numel(&in[0]);
}

const sl__family sl__family_quant = {"quant", quant_infer, NULL, NULL, quant_flops, NULL};
