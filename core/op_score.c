/* op_score.c — the score family (the estimators): checks, shape rules and
 * FLOP counts of score.pooled, score.last_q, score.rows, score.exact,
 * score.lowbit, score.hash, score.antidiag, score.strided and score.anchor
 * (contracts in sparselab.h; kernels in ref/score.c, cpu/score.c,
 * cuda/score.cu). */
#include "family.h"
#include "op_check.h"

#include <math.h>
#include <string.h>

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

static sl_status score_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                             int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    sl_op op = info->op;
    out_ndim[0] = 3;
    switch (op) {
    case SL_OP_SCORE_POOLED:
    case SL_OP_SCORE_EXACT: {
        if ((s = sl__check_qk(ctx, info, in)))
            return s;
        int64_t bq = op == SL_OP_SCORE_POOLED ? ((const sl_score_pooled_params *)params)->bq
                                              : ((const sl_score_exact_params *)params)->bq;
        int64_t bk = op == SL_OP_SCORE_POOLED ? ((const sl_score_pooled_params *)params)->bk
                                              : ((const sl_score_exact_params *)params)->bk;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = sl__ceil_div(in[0].shape[1], bq);
        out_shape[0][2] = sl__ceil_div(in[1].shape[1], bk);
        return SL_OK;
    }
    case SL_OP_SCORE_LAST_Q:
    case SL_OP_SCORE_ROWS: {
        if ((s = sl__check_qk(ctx, info, in)))
            return s;
        int64_t rows;
        if (op == SL_OP_SCORE_LAST_Q) {
            int64_t last = ((const sl_score_last_q_params *)params)->last;
            rows = last < in[0].shape[1] ? last : in[0].shape[1];
        } else {
            char desc[96];
            sl_tensor_describe(&in[2], desc, sizeof desc);
            if (!in[2].buf)
                return sl_ctx_fail(ctx, SL_EARG, "%s: input 'rows' is missing", info->name);
            if (in[2].dtype != SL_I32 || in[2].ndim != 1)
                return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'rows' must be i32 with 1 dim, found %s",
                                   info->name, desc);
            rows = in[2].shape[0];
        }
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = rows;
        out_shape[0][2] = in[1].shape[1];
        return SL_OK;
    }
    case SL_OP_SCORE_LOWBIT: {
        const sl_score_lowbit_params *p = params;
        if ((s = sl__check_qk(ctx, info, in)))
            return s;
        if (in[2].buf) {
            char desc[96];
            sl_tensor_describe(&in[2], desc, sizeof desc);
            if (!sl__is_float(in[2].dtype) || in[2].ndim != 2 || in[2].shape[0] != in[0].shape[0] ||
                in[2].shape[1] != in[0].shape[1])
                return sl_ctx_fail(ctx, SL_ESHAPE, "%s: opt.lse must be float [%lld, %lld], found %s", info->name,
                                   (long long)in[0].shape[0], (long long)in[0].shape[1], desc);
        }
        int64_t nqb = (in[0].shape[1] + p->bq - 1) / p->bq;
        if ((p->qb0 > 0 && p->qb0 >= nqb) || (p->qbn > 0 && p->qb0 + p->qbn > nqb))
            return sl_ctx_fail(ctx, SL_EARG, "%s: query blocks qb0 = %lld, qbn = %lld must lie in the %lld query blocks",
                               info->name, (long long)p->qb0, (long long)p->qbn, (long long)nqb);
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = p->qbn > 0 ? p->qbn : nqb - p->qb0;
        out_shape[0][2] = (in[1].shape[1] + p->bk - 1) / p->bk;
        return SL_OK;
    }
    case SL_OP_SCORE_HASH: {
        if ((s = sl__need_float3(ctx, info, &in[0], "x")) || (s = sl__need_float3(ctx, info, &in[1], "rot")))
            return s;
        const sl_tensor *x = &in[0], *r = &in[1];
        if (x->shape[0] == 0 || r->shape[0] % x->shape[0] != 0 || r->shape[1] != x->shape[2] || r->shape[2] == 0)
            return sl_ctx_fail(ctx, SL_ESHAPE,
                               "%s: rot must be [a multiple of %lld heads, %lld, M >= 1], found [%lld, %lld, %lld]",
                               info->name, (long long)x->shape[0], (long long)x->shape[2], (long long)r->shape[0],
                               (long long)r->shape[1], (long long)r->shape[2]);
        if (r->shape[2] > (1 << 29))
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: more than 2^29 rotation columns", info->name);
        out_ndim[0] = 2;
        out_shape[0][0] = r->shape[0];
        out_shape[0][1] = x->shape[1];
        out_dtype[0] = SL_I32;
        return SL_OK;
    }
    case SL_OP_SCORE_ANTIDIAG: {
        const sl_score_antidiag_params *p = params;
        if ((s = sl__check_qk(ctx, info, in)))
            return s;
        if (p->block % p->stride != 0)
            return sl_ctx_fail(ctx, SL_EARG, "%s: block %lld is not a multiple of stride %lld", info->name,
                               (long long)p->block, (long long)p->stride);
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = sl__ceil_div(in[0].shape[1], p->block);
        out_shape[0][2] = sl__ceil_div(in[1].shape[1], p->block);
        return SL_OK;
    }
    case SL_OP_SCORE_STRIDED: {
        const sl_score_strided_params *p = params;
        if ((s = sl__check_qk(ctx, info, in)))
            return s;
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = sl__ceil_div(in[0].shape[1], p->bq);
        out_shape[0][2] = sl__ceil_div(in[1].shape[1], p->bk);
        return SL_OK;
    }
    case SL_OP_SCORE_ANCHOR: {
        const sl_score_anchor_params *p = params;
        if ((s = sl__check_qk(ctx, info, in)))
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
        out_shape[0][1] = sl__ceil_div(in[0].shape[1], p->block * p->step);
        out_shape[0][2] = in[1].shape[1];
        return SL_OK;
    }    default: return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: not an op of the score family", info->name);
    }
}

static sl_status score_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    int64_t nq = in[0].shape[1];
    switch (info->op) {
    case SL_OP_SCORE_ROWS: {
        int64_t n = in[2].shape[0];
        for (int64_t i = 0; i < n; i++) {
            int64_t r = ((const int32_t *)in[2].data)[i];
            if (r < 0 || r >= nq)
                return sl_ctx_fail(ctx, SL_EARG, "%s: rows[%lld] = %lld is outside [0, %lld)", info->name,
                                   (long long)i, (long long)r, (long long)nq);
        }
        return SL_OK;
    }    default: return SL_OK;
    }
}

static double score_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    sl_op op = info->op;
    switch (op) {
    case SL_OP_SCORE_POOLED: {
        /* pooling reads every q and k element once (an add or compare
         * each), then one dot product per pair of pooled blocks; minmax
         * takes four products, three compares and an add per channel */
        const sl_score_pooled_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        double nqb = (double)((d.nq + p->bq - 1) / p->bq), nkb = (double)((d.nk + p->bk - 1) / p->bk);
        double pool = (p->pool == 2 ? 2.0 : 1.0) * (double)d.d * ((double)d.hq * (double)d.nq + (double)d.hkv * (double)d.nk);
        return pool + (p->pool == 2 ? 8.0 : 2.0) * (double)d.d * nqb * nkb * (double)d.hq;
    }
    case SL_OP_SCORE_LAST_Q:
    case SL_OP_SCORE_ROWS: {
        /* q·k for every key the row sees, then a divide per probability */
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        int causal = op == SL_OP_SCORE_ROWS ? (int)((const sl_score_rows_params *)params)->causal
                                            : (int)((const sl_score_last_q_params *)params)->causal;
        int64_t n = op == SL_OP_SCORE_ROWS ? in[2].shape[0] : 0;
        if (op == SL_OP_SCORE_LAST_Q) {
            int64_t last = ((const sl_score_last_q_params *)params)->last;
            n = last < d.nq ? last : d.nq;
        }
        double keys = 0;
        for (int64_t t = 0; t < n; t++) {
            int64_t r = op == SL_OP_SCORE_LAST_Q ? d.nq - n + t : sl__i32_at(&in[2], t);
            keys += causal ? (double)(d.offset + r + 1) : (double)d.nk;
        }
        return (2.0 * (double)d.d + 1.0) * keys * (double)d.hq;
    }
    case SL_OP_SCORE_EXACT: {
        /* q·k and one add (or compare) into the block for every seen pair */
        const sl_score_exact_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        double pairs = p->causal ? (double)d.nq * (double)d.offset + (double)d.nq * (double)(d.nq + 1) / 2.0
                                 : (double)d.nq * (double)d.nk;
        return (2.0 * (double)d.d + 2.0) * pairs * (double)d.hq;
    }
    case SL_OP_SCORE_LOWBIT: {
        /* the estimate's multiply-adds over the causal (or full) pairs, counted
         * like attention's QK half: 2·d per pair (at b bits, not f32) */
        const sl_score_lowbit_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        if (p && (p->qb0 > 0 || p->qbn > 0)) {
            /* the rows of query blocks [qb0, qb0 + qbn) only */
            int64_t nqb = sl__ceil_div(d.nq, p->bq), r1 = p->qbn > 0 ? p->qb0 + p->qbn : nqb;
            double i0 = (double)(p->qb0 * p->bq), i1 = (double)(r1 * p->bq < d.nq ? r1 * p->bq : d.nq);
            double rows = i1 > i0 ? i1 - i0 : 0;
            double pairs = p->causal ? rows * (double)d.offset + (i1 * (i1 + 1) - i0 * (i0 + 1)) / 2.0
                                     : rows * (double)d.nk;
            return 2.0 * (double)d.d * pairs * (double)d.hq;
        }
        double pairs = p && p->causal ? (double)d.nq * (double)d.offset + (double)d.nq * (double)(d.nq + 1) / 2.0
                                      : (double)d.nq * (double)d.nk;
        return 2.0 * (double)d.d * pairs * (double)d.hq;
    }
    case SL_OP_SCORE_HASH:
        /* one multiply-add per (token, channel, column) and rotation head */
        return 2.0 * (double)in[1].shape[0] * (double)in[0].shape[1] * (double)in[0].shape[2] * (double)in[1].shape[2];
    case SL_OP_SCORE_ANTIDIAG: {
        /* an S·D dot product per visible super pair, an exp and a divide,
         * and an add into the tile */
        const sl_score_antidiag_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        int64_t S = p->stride;
        double pairs = visible_pairs(sl__ceil_div(d.nq, S), sl__ceil_div(d.nk, S), S, d.offset, (int)p->causal);
        return (2.0 * (double)S * (double)d.d + 3.0) * pairs * (double)d.hq;
    }
    case SL_OP_SCORE_STRIDED: {
        const sl_score_strided_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        int64_t S = p->stride;
        double pairs = visible_pairs(sl__ceil_div(d.nq, S), sl__ceil_div(d.nk, S), S, d.offset, (int)p->causal);
        return (2.0 * (double)d.d + 3.0) * pairs * (double)d.hq;
    }
    case SL_OP_SCORE_ANCHOR: {
        /* anchors: a dot product per structured pair (at most (init + local)
         * big blocks per row); the scan: a dot product per pooled query and
         * middle key; pooling: an add per query element */
        const sl_score_anchor_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        int64_t G = p->block * p->step, nb = sl__ceil_div(d.nq, G);
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
                scan += (double)sl__ceil_div(rows, p->block) * (double)(m1 - m0);
        }
        return (2.0 * (double)d.d * (anchor + scan) + (double)d.nq * (double)d.d) * (double)d.hq;
    }    default: return 0;
    }
}

const sl__family sl__family_score = {"score", score_infer, score_check_contents, NULL, score_flops, NULL};
