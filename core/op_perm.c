/* op_perm.c — the perm family: checks, shape rule and FLOP count of
 * perm.apply (contract in sparselab.h; kernels in ref/perm.c, cpu/perm.c,
 * cuda/perm.cu). */
#include "family.h"
#include "op_check.h"

static sl_status perm_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                            int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    (void)params, (void)out_dtype;
    char desc[96];
    sl_tensor_describe(&in[0], desc, sizeof desc);
    if (!in[0].buf || (in[0].ndim != 2 && in[0].ndim != 3) ||
        (in[0].dtype != SL_F32 && in[0].dtype != SL_F16 && in[0].dtype != SL_BF16))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'x' must be float [heads, tokens, dim] or [heads, tokens], found %s",
                           info->name, desc);
    sl_tensor_describe(&in[1], desc, sizeof desc);
    if (!in[1].buf || in[1].dtype != SL_I32 || in[1].ndim != 2)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'perm' must be i32 [groups, tokens], found %s", info->name, desc);
    if (in[1].shape[1] != in[0].shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: perm orders %lld tokens, x has %lld", info->name,
                           (long long)in[1].shape[1], (long long)in[0].shape[1]);
    if (in[1].shape[0] < 1 || in[0].shape[0] % in[1].shape[0] != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: perm has %lld rows, x has %lld heads; expected a divisor of the heads",
                           info->name, (long long)in[1].shape[0], (long long)in[0].shape[0]);
    out_ndim[0] = in[0].ndim;
    for (int i = 0; i < in[0].ndim; i++)
        out_shape[0][i] = in[0].shape[i];
    return SL_OK;
}

/* Every row a bijection of [0, N): in range and no entry twice. */
static sl_status perm_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    int64_t P = in[1].shape[0], n = in[1].shape[1];
    if (n == 0)
        return SL_OK;
    int32_t *first = sl_ctx_alloc(ctx, sizeof *first * (size_t)n);
    if (!first)
        return SL_ENOMEM;
    sl_status s = SL_OK;
    for (int64_t g = 0; g < P && s == SL_OK; g++) {
        const int32_t *p = (const int32_t *)in[1].data + g * n;
        for (int64_t i = 0; i < n; i++)
            first[i] = -1;
        for (int64_t t = 0; t < n; t++) {
            if (p[t] < 0 || p[t] >= n) {
                s = sl_ctx_fail(ctx, SL_EARG, "%s: perm[%lld, %lld] = %d is outside [0, %lld): not a bijection",
                                info->name, (long long)g, (long long)t, p[t], (long long)n);
                break;
            }
            if (first[p[t]] >= 0) {
                s = sl_ctx_fail(ctx, SL_EARG, "%s: perm row %lld is not a bijection: %d at positions %d and %lld",
                                info->name, (long long)g, p[t], first[p[t]], (long long)t);
                break;
            }
            first[p[t]] = (int32_t)t;
        }
    }
    sl_ctx_dealloc(ctx, first, sizeof *first * (size_t)n);
    return s;
}

/* A copy: no arithmetic. */
static double perm_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)info, (void)params, (void)in;
    return 0;
}

/* A copy moves infinities as they are (a log-sum-exp of a row that saw
 * nothing is -inf); NaN is still an error. */
static sl__input_policy perm_input_policy(const sl_op_info *info, int i)
{
    (void)info, (void)i;
    return SL__IN_ANY_INF;
}

const sl__family sl__family_perm = {"perm", perm_infer, perm_check_contents, NULL, perm_flops, perm_input_policy};
