/* op_check.c — input checks the estimator ops' validators share (op_stripe.c,
 * op_token_score.c): a float [H, N, D] tensor, and a q/k pair for GQA with
 * n_q <= n_k. Each fails with a one-line message naming the op and input. */
#include "internal.h"

int sl__op_is_float(sl_dtype t) { return t == SL_F32 || t == SL_F16 || t == SL_BF16 || t == SL_F64; }

sl_status sl__op_need_float3(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm)
{
    char desc[96];
    sl_tensor_describe(t, desc, sizeof desc);
    if (!t->buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s' is missing", info->name, nm);
    if (!sl__op_is_float(t->dtype) || t->ndim != 3)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be a float tensor with 3 dims, found %s", info->name,
                           nm, desc);
    return SL_OK;
}

sl_status sl__op_qk_pair(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    if ((s = sl__op_need_float3(ctx, info, &in[0], "q")) || (s = sl__op_need_float3(ctx, info, &in[1], "k")))
        return s;
    const sl_tensor *q = &in[0], *k = &in[1];
    if (q->shape[2] != k->shape[2] || q->shape[2] == 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: q has head_dim %lld, k has %lld; expected equal and > 0", info->name,
                           (long long)q->shape[2], (long long)k->shape[2]);
    if (k->shape[0] == 0 || q->shape[0] % k->shape[0] != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: q has %lld heads, k has %lld; expected a multiple (GQA)", info->name,
                           (long long)q->shape[0], (long long)k->shape[0]);
    if (q->shape[1] > k->shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: q has %lld tokens but k only %lld; expected n_q <= n_k", info->name,
                           (long long)q->shape[1], (long long)k->shape[1]);
    return SL_OK;
}
