/* op_stripe.c — validation, shape inference and FLOP counts of the
 * estimators the issue-4 recipes of XAttention (score.antidiag), ProxyAttn
 * (score.strided) and AnchorAttention (score.anchor) need, and of PBS-Attn's
 * row gather (gather.rows); contracts in sparselab.h. op.c's switches hand
 * these ops to the functions here. */
#include "internal.h"

#include <math.h>
#include <string.h>

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }


sl_status sl__stripe_infer(sl_ctx *ctx, sl_op op, const void *params, const sl_tensor *in, int out_ndim[],
                            int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    const sl_op_info *info = sl_op_info_get(op);
    sl_status s;
    switch (op) {
    case SL_OP_SCORE_ANTIDIAG: {
        const sl_score_antidiag_params *p = params;
        if ((s = sl__op_qk_pair(ctx, info, in)))
            return s;
        if (p->block % p->stride != 0)
            return sl_ctx_fail(ctx, SL_EARG, "%s: block %lld is not a multiple of stride %lld", info->name,
                               (long long)p->block, (long long)p->stride);
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = cdiv(in[0].shape[1], p->block);
        out_shape[0][2] = cdiv(in[1].shape[1], p->block);
        return SL_OK;
    }
    case SL_OP_SCORE_STRIDED: {
        const sl_score_strided_params *p = params;
        if ((s = sl__op_qk_pair(ctx, info, in)))
            return s;
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = cdiv(in[0].shape[1], p->bq);
        out_shape[0][2] = cdiv(in[1].shape[1], p->bk);
        return SL_OK;
    }
    case SL_OP_SCORE_ANCHOR: {
        const sl_score_anchor_params *p = params;
        if ((s = sl__op_qk_pair(ctx, info, in)))
            return s;
        if (in[0].shape[1] != in[1].shape[1])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: prefill only: expected n_q == n_k, found %lld and %lld", info->name,
                               (long long)in[0].shape[1], (long long)in[1].shape[1]);
        if (p->block * p->step > (INT64_C(1) << 31))
            return sl_ctx_fail(ctx, SL_EARG, "%s: block x step = %lld is too large (at most 2^31)", info->name,
                               (long long)(p->block * p->step));
        out_dtype[0] = SL_U8;
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = cdiv(in[0].shape[1], p->block * p->step);
        out_shape[0][2] = in[1].shape[1];
        return SL_OK;
    }
    case SL_OP_GATHER_ROWS: {
        if ((s = sl__op_need_float3(ctx, info, &in[0], "x")))
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
    default: return sl_ctx_fail(ctx, SL_EARG, "%s: not an op of op_stripe.c", info->name);
    }
}

sl_status sl__stripe_check_contents(sl_ctx *ctx, sl_op op, const sl_tensor *in)
{
    const sl_op_info *info = sl_op_info_get(op);
    if (op != SL_OP_GATHER_ROWS)
        return SL_OK;
    const int32_t *idx = in[1].data;
    int64_t n = sl_tensor_numel(&in[1]), rows = in[0].shape[1];
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= rows)
            return sl_ctx_fail(ctx, SL_EARG, "%s: idx[%lld] = %d is outside [0, %lld)", info->name, (long long)i, idx[i],
                               (long long)rows);
    return SL_OK;
}

/* Visible keys of the super-tokens / sampled rows i (at row i·S) over the
 * super-tokens / sampled keys j (at key j·S): j·S <= off + i·S when causal. */
static double visible_pairs(int64_t n_rows, int64_t n_keys, int64_t S, int64_t off, int causal)
{
    double total = 0;
    for (int64_t i = 0; i < n_rows; i++) {
        if (!causal) {
            total += (double)n_keys;
            continue;
        }
        int64_t jmax = (off + i * S) / S;
        total += (double)(jmax + 1 < n_keys ? jmax + 1 : n_keys);
    }
    return total;
}

double sl__stripe_flops(sl_op op, const void *params, const sl_tensor *in)
{
    switch (op) {
    case SL_OP_SCORE_ANTIDIAG: {
        /* an S·D dot product per visible super pair, an exp and a divide,
         * and an add into the tile */
        const sl_score_antidiag_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        int64_t S = p->stride;
        double pairs = visible_pairs(cdiv(d.nq, S), cdiv(d.nk, S), S, d.offset, (int)p->causal);
        return (2.0 * (double)S * (double)d.d + 3.0) * pairs * (double)d.hq;
    }
    case SL_OP_SCORE_STRIDED: {
        const sl_score_strided_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        int64_t S = p->stride;
        double pairs = visible_pairs(cdiv(d.nq, S), cdiv(d.nk, S), S, d.offset, (int)p->causal);
        return (2.0 * (double)d.d + 3.0) * pairs * (double)d.hq;
    }
    case SL_OP_SCORE_ANCHOR: {
        /* anchors: a dot product per structured pair (at most (init + local)
         * big blocks per row); the scan: a dot product per pooled query and
         * middle key; pooling: an add per query element */
        const sl_score_anchor_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        int64_t G = p->block * p->step, nb = cdiv(d.nq, G);
        double anchor = 0, scan = 0;
        for (int64_t b = 0; b < nb; b++) {
            int64_t r0 = b * G, r1 = r0 + G < d.nq ? r0 + G : d.nq, rows = r1 - r0;
            int64_t init_end = p->init_cnt * G, local0 = (b - p->local_cnt + 1) * G;
            if (local0 < 0)
                local0 = 0;
            int64_t init = init_end < local0 ? init_end : local0;
            /* rows see init keys plus local keys up to themselves */
            anchor += (double)rows * (double)init + (double)rows * (double)(r0 - local0) +
                      (double)rows * (double)(rows + 1) / 2.0;
            int64_t m0 = p->overlap ? p->block : init_end, m1 = p->overlap ? local0 - p->block : local0;
            if (m1 > r0)
                m1 = r0;
            if (m1 > m0)
                scan += (double)cdiv(rows, p->block) * (double)(m1 - m0);
        }
        return (2.0 * (double)d.d * (anchor + scan) + (double)d.nq * (double)d.d) * (double)d.hq;
    }
    case SL_OP_GATHER_ROWS: return 0;
    default: return 0;
    }
}
