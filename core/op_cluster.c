/* op_cluster.c — the cluster family (issue 17, session 3): checks, shapes
 * and FLOP counts of cluster.dpc, cluster.kmeans and cluster.route
 * (contract in sparselab.h; kernels in ref/cluster.c, cpu/cluster.c,
 * cuda/cluster.cu). */
#include "family.h"
#include "op_check.h"

#include <stdint.h>
#include <string.h>

static sl_status cluster_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                               int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 2)))
        return s;
    int64_t n = in[0].shape[0], d = in[0].shape[1];
    switch (info->op) {
    case SL_OP_CLUSTER_DPC: {
        const sl_cluster_dpc_params *p = params;
        if (n < 1 || d < 1)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected x [n, D] with n, D >= 1, found [%lld, %lld]",
                               info->name, (long long)n, (long long)d);
        out_ndim[0] = out_ndim[1] = 1;
        out_shape[0][0] = n;
        out_shape[1][0] = p->c < n ? p->c : n;
        out_dtype[0] = out_dtype[1] = SL_I32;
        return SL_OK;
    }
    case SL_OP_CLUSTER_KMEANS:
        if ((s = sl__need_float(ctx, info, in, 1, 2)))
            return s;
        if (in[1].shape[0] < 1 || in[1].shape[1] != d)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected init [k >= 1, %lld], found [%lld, %lld]", info->name,
                               (long long)d, (long long)in[1].shape[0], (long long)in[1].shape[1]);
        out_ndim[0] = 2;
        out_shape[0][0] = in[1].shape[0];
        out_shape[0][1] = d;
        out_ndim[1] = 1;
        out_shape[1][0] = n;
        out_dtype[1] = SL_I32;
        return SL_OK;
    default: /* CLUSTER_ROUTE */
        if ((s = sl__need_float(ctx, info, in, 1, 2)) || (s = sl__need_index(ctx, info, in, 2, SL_I32, 1)))
            return s;
        if (in[1].shape[0] != n || in[1].shape[1] < 1)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected logits [%lld, E >= 1], found [%lld, %lld]", info->name,
                               (long long)n, (long long)in[1].shape[0], (long long)in[1].shape[1]);
        if (in[2].shape[0] != d)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected expert i32 [%lld] (one per unit of h), found [%lld]",
                               info->name, (long long)d, (long long)in[2].shape[0]);
        out_ndim[0] = 2;
        out_shape[0][0] = n;
        out_shape[0][1] = d;
        return SL_OK;
    }
}

/* cluster.route: every unit's expert in [0, E) */
static sl_status cluster_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    if (info->op != SL_OP_CLUSTER_ROUTE)
        return SL_OK;
    const int32_t *ex = in[2].data;
    int64_t E = in[1].shape[1];
    for (int64_t j = 0; j < in[2].shape[0]; j++)
        if (ex[j] < 0 || ex[j] >= E)
            return sl_ctx_fail(ctx, SL_EARG, "%s: expert[%lld] = %d is outside [0, %lld)", info->name, (long long)j,
                               ex[j], (long long)E);
    return SL_OK;
}

static double cluster_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    double n = (double)in[0].shape[0], d = (double)in[0].shape[1];
    switch (info->op) {
    case SL_OP_CLUSTER_DPC:
        return 3.0 * n * n * d * 3; /* the distances, computed for density, separation and assignment */
    case SL_OP_CLUSTER_KMEANS: {
        const sl_cluster_km_params *p = params;
        double k = (double)in[1].shape[0];
        return (3.0 * n * k * d + n * d) * (double)(p->iters + 1);
    }
    default:
        return n * d;
    }
}

const sl__family sl__family_cluster = {"cluster", cluster_infer, cluster_check_contents, NULL, cluster_flops, NULL};
