/* op_prune.c — the prune family (issue 17): checks, shapes and FLOP counts
 * of prune.magnitude, prune.sparsegpt and prune.lowrank (contracts in sparselab.h; kernels
 * in ref/prune.c, cpu/prune.c, cuda/prune.cu). */
#include "family.h"
#include "op_check.h"

#include <math.h>

/* w = in[0] float [N, K], x = in[1] float [S >= 1, K] */
static sl_status check_w_x(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 2)) || (s = sl__need_float(ctx, info, in, 1, 2)))
        return s;
    if (in[1].shape[1] != in[0].shape[1] || in[1].shape[0] < 1)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: x must be [S >= 1, %lld] (w's columns), found [%lld, %lld]",
                           info->name, (long long)in[0].shape[1], (long long)in[1].shape[0], (long long)in[1].shape[1]);
    return SL_OK;
}

static sl_status prune_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                             int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)out_dtype;
    sl_status s;
    if (info->op == SL_OP_PRUNE_MAGNITUDE) {
        const sl_prune_mag_params *p = params;
        if ((s = sl__need_float(ctx, info, in, 0, -1)))
            return s;
        if (in[0].ndim < 1)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'w' must have at least one dim, found a scalar", info->name);
        if (p->n > p->m)
            return sl_ctx_fail(ctx, SL_EARG, "%s: n = %lld kept per group exceeds the group size m = %lld", info->name,
                               (long long)p->n, (long long)p->m);
    } else if (info->op == SL_OP_PRUNE_LOWRANK) {
        const sl_prune_lowrank_params *p = params;
        if ((s = check_w_x(ctx, info, in)))
            return s;
        int64_t N = in[0].shape[0], K = in[0].shape[1], full = N < K ? N : K;
        int64_t r = p->rank ? p->rank : (int64_t)floor(p->rho * (double)N * (double)K / (double)(N + K));
        r = r < 1 ? 1 : r > full ? full : r;
        out_ndim[0] = out_ndim[1] = 2;
        out_shape[0][0] = N, out_shape[0][1] = r;
        out_shape[1][0] = r, out_shape[1][1] = K;
        return SL_OK;
    } else {
        const sl_prune_sgpt_params *p = params;
        if ((s = check_w_x(ctx, info, in)))
            return s;
        if (p->n > p->m)
            return sl_ctx_fail(ctx, SL_EARG, "%s: n = %lld kept per group exceeds the group size m = %lld", info->name,
                               (long long)p->n, (long long)p->m);
    }
    out_ndim[0] = in[0].ndim;
    for (int d = 0; d < in[0].ndim; d++)
        out_shape[0][d] = in[0].shape[d];
    return SL_OK;
}

static double prune_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    double n = (double)sl_tensor_numel(&in[0]);
    if (info->op == SL_OP_PRUNE_MAGNITUDE)
        return n; /* a compare per entry (selection) */
    double N = (double)in[0].shape[0], K = (double)in[0].shape[1], S = (double)in[1].shape[0];
    if (info->op == SL_OP_PRUNE_LOWRANK) /* Gram, Cholesky + inverse, W L, a Jacobi SVD of ~10 sweeps */
        return 2 * S * K * K + K * K * K + 2 * N * K * K + 10 * 6 * N * K * K;
    /* Hessian, Cholesky + inverse + Cholesky, and the OBS updates */
    return 2 * S * K * K + 2 * K * K * K + 2 * N * K * K;
}

const sl__family sl__family_prune = {"prune", prune_infer, NULL, NULL, prune_flops, NULL};
