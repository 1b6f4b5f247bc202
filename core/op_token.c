/* op_token.c — the token family (issue 17, part 2): checks, shapes and FLOP
 * count of token.scatter (contract in sparselab.h; kernels in ref/token.c,
 * cpu/token.c, cuda/token.cu). */
#include "family.h"
#include "op_check.h"

#include <stdint.h>
#include <string.h>

static sl_status token_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                             int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)params, (void)out_dtype;
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 2)) || (s = sl__need_float(ctx, info, in, 1, 2)))
        return s;
    char desc[96];
    sl_tensor_describe(&in[2], desc, sizeof desc);
    if (!in[2].buf || in[2].dtype != SL_I32 || in[2].ndim != 1)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'idx' must be i32 [rows], found %s", info->name, desc);
    if (in[1].shape[1] != in[0].shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: y has %lld columns, x has %lld", info->name,
                           (long long)in[1].shape[1], (long long)in[0].shape[1]);
    if (in[2].shape[0] != in[1].shape[0])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: idx has %lld entries, y has %lld rows", info->name,
                           (long long)in[2].shape[0], (long long)in[1].shape[0]);
    out_ndim[0] = 2;
    out_shape[0][0] = in[0].shape[0];
    out_shape[0][1] = in[0].shape[1];
    return SL_OK;
}

/* every index in [0, N), none repeated */
static sl_status token_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    const int32_t *idx = in[2].data;
    int64_t m = in[2].shape[0], n = in[0].shape[0];
    for (int64_t t = 0; t < m; t++)
        if (idx[t] < 0 || idx[t] >= n)
            return sl_ctx_fail(ctx, SL_EARG, "%s: idx[%lld] = %d is outside [0, %lld)", info->name, (long long)t,
                               idx[t], (long long)n);
    if (m == 0)
        return SL_OK;
    int64_t *first = sl_ctx_alloc(ctx, sizeof *first * (size_t)n);
    if (!first)
        return SL_ENOMEM;
    for (int64_t r = 0; r < n; r++)
        first[r] = -1;
    sl_status s = SL_OK;
    for (int64_t t = 0; t < m && s == SL_OK; t++) {
        if (first[idx[t]] >= 0)
            s = sl_ctx_fail(ctx, SL_EARG, "%s: idx[%lld] = %d repeats idx[%lld]; expected distinct rows", info->name,
                            (long long)t, idx[t], (long long)first[idx[t]]);
        first[idx[t]] = t;
    }
    sl_ctx_dealloc(ctx, first, sizeof *first * (size_t)n);
    return s;
}

/* one add per updated entry in add mode; a copy otherwise */
static double token_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)info;
    const sl_token_scatter_params *p = params;
    return p && p->add ? (double)in[1].shape[0] * (double)in[1].shape[1] : 0;
}

const sl__family sl__family_token = {"token", token_infer, token_check_contents, NULL, token_flops, NULL};
