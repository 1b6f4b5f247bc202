/* op_mass.c — the mass family: checks, shape rule and FLOP count of
 * mass.blocks (contract in sparselab.h; kernels in ref/mass.c, cpu/mass.c,
 * cuda/mass.cu). */
#include "family.h"
#include "op_check.h"

static sl_status mass_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                            int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)out_dtype;
    const sl_mass_blocks_params *p = params;
    sl_status s;
    if ((s = sl__check_qk(ctx, info, in)))
        return s;
    int64_t want[2] = {in[0].shape[0], in[0].shape[1]};
    if ((s = sl__need_shape(ctx, info, in, 2, 2, want)))
        return s;
    out_ndim[0] = 3;
    out_shape[0][0] = in[0].shape[0];
    out_shape[0][1] = sl__ceil_div(in[0].shape[1], p->bq);
    out_shape[0][2] = sl__ceil_div(in[1].shape[1], p->bk);
    return SL_OK;
}

/* q·k, a subtraction, an exp and an add per seen pair. */
static double mass_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)info;
    const sl_mass_blocks_params *p = params;
    sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
    double pairs = p->causal ? (double)d.nq * (double)d.offset + (double)d.nq * (double)(d.nq + 1) / 2.0
                             : (double)d.nq * (double)d.nk;
    return (2.0 * (double)d.d + 3.0) * pairs * (double)d.hq;
}

/* q and k finite; lse finite or -inf (a row that saw nothing). */
static sl__input_policy mass_input_policy(const sl_op_info *info, int i)
{
    (void)info;
    return i == 2 ? SL__IN_NEG_INF : SL__IN_FINITE;
}

const sl__family sl__family_mass = {"mass", mass_infer, NULL, NULL, mass_flops, mass_input_policy};
