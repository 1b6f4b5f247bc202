/* op_ipar.c — the ipar family: checks, shape rule and FLOP count of
 * ipar.rectify (Rectified SpaAttn with IPAR's isolated text pooling;
 * contract in sparselab.h; kernels in ref/ipar.c, cpu/ipar.c, cuda/ipar.cu). */
#include "family.h"
#include "op_check.h"

static sl_status ipar_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                            int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)out_dtype;
    const sl_ipar_rectify_params *p = params;
    sl_status s;
    sl_attn_block_params pb = {.bq = p->bq, .bk = p->bk, .scale = p->scale, .pv_skip = 0};
    if ((s = sl__check_qkv(ctx, info, in)) || (s = sl__check_block_mask(ctx, info, in, &pb)) ||
        (s = sl__need_shape(ctx, info, in, 7, 3, in[0].shape)))
        return s;
    int64_t n = in[0].shape[1], b = p->bq;
    if (in[1].shape[1] != n)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: self-attention expected (q and k of equal length), found %lld and %lld tokens",
                           info->name, (long long)n, (long long)in[1].shape[1]);
    if (p->bq != p->bk)
        return sl_ctx_fail(ctx, SL_EARG, "%s: square pooling blocks expected (bq = bk), found bq = %lld, bk = %lld",
                           info->name, (long long)p->bq, (long long)p->bk);
    if (p->n_video < b || p->n_video % b || p->video0 % b || p->video0 + p->n_video > n)
        return sl_ctx_fail(ctx, SL_EARG,
                           "%s: the video tokens [%lld, %lld) must be whole blocks of %lld inside the %lld tokens (video0 and n_video "
                           "multiples of the block, n_video >= the block)",
                           info->name, (long long)p->video0, (long long)(p->video0 + p->n_video), (long long)b, (long long)n);
    out_ndim[0] = 3;
    for (int i = 0; i < 3; i++)
        out_shape[0][i] = in[0].shape[i];
    out_ndim[1] = out_ndim[2] = 2;
    out_shape[1][0] = out_shape[2][0] = in[0].shape[0];
    out_shape[1][1] = out_shape[2][1] = p->n_video / b;
    return SL_OK;
}

/* Pooling: mean and mean |deviation| of the Q and K blocks (4 per element),
 * the mean of V (1); per (query block, video key block) the score and the
 * two GAPR dots (6D) and the restored P.v̄ (2D); per text key a dot (2D);
 * per output element r.O* + N (2). */
static double ipar_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)info;
    const sl_ipar_rectify_params *p = params;
    sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
    double nbv = (double)(p->n_video / p->bq), text = (double)(d.nk - p->n_video), dd = (double)d.d;
    double pool = (double)d.hq * (double)p->n_video * dd * 2.0 + (double)d.hkv * (double)p->n_video * dd * 3.0;
    return pool + (double)d.hq * nbv * (nbv * 8.0 * dd + text * 2.0 * dd) + 2.0 * (double)d.hq * (double)p->n_video * dd;
}

const sl__family sl__family_ipar = {"ipar", ipar_infer, NULL, NULL, ipar_flops, NULL};
