/* op_tsel.c — the tsel family (issue 16: prefill token selectors):
 * checks, shape rules and FLOP counts of attn.threshold, select.pq_match,
 * select.hip_tree, select.chunks (issue 20, session 4), select.token_budget and select.theta_rows (session 5)
 * (contracts in sparselab.h; kernels in ref/tsel.c, cpu/tsel.c,
 * cuda/tsel.cu). */
#include "family.h"
#include "op_check.h"
#include "chunks_select.h"

#include <string.h>

/* Visible keys of row r (causal: offset + r + 1, at most n_k). */
static int64_t visible(int64_t r, int64_t nq, int64_t nk, int causal)
{
    int64_t n = causal ? nk - nq + r + 1 : nk;
    return n > nk ? nk : n < 0 ? 0 : n;
}

static sl_status tsel_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                            int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    switch (info->op) {
    case SL_OP_ATTN_THRESHOLD: {
        if ((s = sl__check_qkv(ctx, info, in)))
            return s;
        int64_t want[2] = {in[0].shape[0], in[0].shape[1]};
        if ((s = sl__need_shape(ctx, info, in, 3, 2, want)))
            return s;
        out_ndim[0] = 3;
        memcpy(out_shape[0], in[0].shape, 3 * sizeof(int64_t));
        for (int o = 1; o <= 2; o++) {
            out_ndim[o] = 2;
            out_shape[o][0] = in[0].shape[0];
            out_shape[o][1] = in[0].shape[1];
        }
        out_dtype[2] = SL_I32;
        return SL_OK;
    }
    case SL_OP_SELECT_PQ_MATCH: {
        const sl_select_pq_match_params *p = params;
        if ((s = sl__check_qk(ctx, info, in)) || (s = sl__need_float(ctx, info, in, 2, 4)))
            return s;
        const int64_t *cb = in[2].shape;
        int64_t hkv = in[1].shape[0], d = in[0].shape[2];
        if (cb[0] <= 0 || hkv % cb[0] != 0 || cb[1] * cb[3] != d || cb[2] <= 0 || cb[1] <= 0)
            return sl_ctx_fail(ctx, SL_ESHAPE,
                               "%s: codebook must be [Hc, S, C, dc] with Hc dividing %lld kv heads, S . dc = head_dim %lld "
                               "and C > 0; found [%lld, %lld, %lld, %lld]",
                               info->name, (long long)hkv, (long long)d, (long long)cb[0], (long long)cb[1],
                               (long long)cb[2], (long long)cb[3]);
        int64_t hq = in[0].shape[0], nq = in[0].shape[1], nk = in[1].shape[1], total = 0;
        for (int64_t r = 0; r < nq; r++) {
            int64_t n = visible(r, nq, nk, (int)p->causal);
            total += n < p->nnz ? n : p->nnz;
        }
        if (total * hq > INT32_MAX)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %lld entries exceed the i32 index lists", info->name,
                               (long long)(total * hq));
        out_ndim[0] = 2;
        out_shape[0][0] = hq;
        out_shape[0][1] = nq + 1;
        out_ndim[1] = 1;
        out_shape[1][0] = total * hq;
        out_dtype[0] = out_dtype[1] = SL_I32;
        return SL_OK;
    }
    case SL_OP_SELECT_HIP_TREE: {
        const sl_select_hip_tree_params *p = params;
        if ((s = sl__check_qk(ctx, info, in)))
            return s;
        int64_t hq = in[0].shape[0], nq = in[0].shape[1], nk = in[1].shape[1];
        int64_t nqb = (nq + p->bq - 1) / p->bq, nkb = (nk + p->bk - 1) / p->bk;
        if (p->kb > INT32_MAX / 2 || nkb > INT32_MAX)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: kb must be at most %d and key blocks at most %d; found kb %lld, "
                               "%lld key blocks", info->name, INT32_MAX / 2, INT32_MAX, (long long)p->kb,
                               (long long)nkb);
        out_ndim[0] = 3;
        out_shape[0][0] = hq;
        out_shape[0][1] = nqb;
        out_shape[0][2] = nkb;
        out_dtype[0] = SL_U8;
        out_ndim[1] = 2;
        out_shape[1][0] = hq;
        out_shape[1][1] = nqb;
        out_dtype[1] = SL_I32;
        return SL_OK;
    }
    case SL_OP_SELECT_CHUNKS: {
        const sl_select_chunks_params *p = params;
        if ((s = sl__need_float(ctx, info, in, 0, 3)) || (s = sl__need_float(ctx, info, in, 1, 3)) ||
            (s = sl__need_index(ctx, info, in, 2, SL_I32, 1)))
            return s;
        int64_t R = in[0].shape[1], C = in[1].shape[1], d = in[0].shape[2];
        if (in[1].shape[2] != d || in[2].shape[0] != C || C == 0 || in[0].shape[0] == 0 || in[1].shape[0] == 0)
            return sl_ctx_fail(ctx, SL_ESHAPE,
                               "%s: expected qp [Hq, R, d], kp [Hk, C, d] with Hq, Hk, C > 0 and starts [C]; found qp "
                               "[%lld, %lld, %lld], kp [%lld, %lld, %lld], starts [%lld]",
                               info->name, (long long)in[0].shape[0], (long long)R, (long long)d,
                               (long long)in[1].shape[0], (long long)C, (long long)in[1].shape[2],
                               (long long)in[2].shape[0]);
        if (R != (p->n + p->block - 1) / p->block)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: qp has %lld query blocks; expected ceil(n / block) = %lld", info->name,
                               (long long)R, (long long)((p->n + p->block - 1) / p->block));
        const int32_t *st = in[2].data;
        for (int64_t c = 0; c < C; c++)
            if ((c == 0 ? st[c] != 0 : st[c] <= st[c - 1]) || st[c] >= p->n)
                return sl_ctx_fail(ctx, SL_EARG,
                                   "%s: starts must begin at 0, increase strictly and stay below n = %lld; found "
                                   "starts[%lld] = %d",
                                   info->name, (long long)p->n, (long long)c, st[c]);
        int64_t cap = 0;
        for (int64_t r = 0; r < R; r++)
            cap += sl__chunks_capacity(p, r);
        if (cap > INT32_MAX)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %lld entries exceed the i32 index lists", info->name, (long long)cap);
        out_ndim[0] = 1;
        out_shape[0][0] = R + 1;
        out_ndim[1] = 1;
        out_shape[1][0] = cap;
        out_dtype[0] = out_dtype[1] = SL_I32;
        return SL_OK;
    }
    case SL_OP_SELECT_THETA_ROWS: {
        const sl_select_theta_rows_params *p = params;
        if ((s = sl__need_index(ctx, info, in, 0, SL_I32, 2)) || (s = sl__need_float(ctx, info, in, 1, 2)))
            return s;
        int64_t H = in[0].shape[0], L = in[0].shape[1];
        if (in[1].shape[0] != H || in[1].shape[1] != L)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected vals of keys' shape [%lld, %lld], found [%lld, %lld]", info->name,
                               (long long)H, (long long)L, (long long)in[1].shape[0], (long long)in[1].shape[1]);
        const int32_t *kd = in[0].data;
        for (int64_t h = 0; h < H; h++) {
            int pad = 0;
            for (int64_t t = 0; t < L; t++) {
                int32_t v = kd[h * L + t];
                if (v == -1)
                    pad = 1;
                else if (v < -1 || pad || (t > 0 && v <= kd[h * L + t - 1]))
                    return sl_ctx_fail(ctx, SL_EARG,
                                       "%s: keys of head %lld must be >= 0 and ascend strictly, then -1 padding only; "
                                       "found %d at %lld",
                                       info->name, (long long)h, v, (long long)t);
            }
        }
        out_ndim[0] = 2;
        out_shape[0][0] = H;
        out_shape[0][1] = p->rows;
        return SL_OK;
    }
    case SL_OP_SELECT_TOKEN_BUDGET: {
        if ((s = sl__need_float(ctx, info, in, 0, 3)))
            return s;
        int64_t H = in[0].shape[0], W = in[0].shape[1], C = in[0].shape[2];
        if (H == 0 || W == 0 || W >= C || C > INT32_MAX)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected x [H, W, C] with H, W > 0 and W < C < 2^31; found [%lld, %lld, %lld]",
                               info->name, (long long)H, (long long)W, (long long)C);
        out_ndim[0] = 2;
        out_shape[0][0] = H;
        out_shape[0][1] = C;
        out_ndim[1] = 1;
        out_shape[1][0] = 2;
        out_dtype[0] = out_dtype[1] = SL_I32;
        return SL_OK;
    }
    default: return SL_OK;
    }
}

static sl_status tsel_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    if (info->op == SL_OP_SELECT_CHUNKS || info->op == SL_OP_SELECT_TOKEN_BUDGET || info->op == SL_OP_SELECT_THETA_ROWS)
        return SL_OK; /* pooled vectors, probabilities: the q.k overflow check of the other ops does not apply */
    return sl__check_score_range(ctx, info, params, in);
}

static double tsel_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    if (info->op == SL_OP_SELECT_CHUNKS) {
        /* head means (one add per pooled entry) and 2d per (query block, chunk) score */
        double R = (double)in[0].shape[1], C = (double)in[1].shape[1], d = (double)in[0].shape[2];
        return (double)sl_tensor_numel(&in[0]) + (double)sl_tensor_numel(&in[1]) + 2.0 * d * R * C;
    }
    if (info->op == SL_OP_SELECT_THETA_ROWS) {
        /* one compare per row and key walked */
        const sl_select_theta_rows_params *p = params;
        return (double)in[0].shape[0] * (double)(p->rows + in[0].shape[1]);
    }
    if (info->op == SL_OP_SELECT_TOKEN_BUDGET) {
        /* column sums, ks + 4 per smoothed entry (window, division, total, normalisation), the head mean,
         * the budget's sums and one compare per prefix entry and head for the cut */
        const sl_select_token_budget_params *p = params;
        double H = (double)in[0].shape[0], P = (double)(in[0].shape[2] - in[0].shape[1]);
        return (double)sl_tensor_numel(&in[0]) + H * P * ((double)p->ks + 6.0) + 3.0 * P;
    }
    sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
    switch (info->op) {
    case SL_OP_ATTN_THRESHOLD: {
        /* 2d per visible pair for the scores (the threshold test needs them
         * all), 2d more per kept pair: the bound counts every pair kept */
        const sl_attn_threshold_params *p = params;
        double pairs = 0;
        for (int64_t r = 0; r < d.nq; r++)
            pairs += (double)visible(r, d.nq, d.nk, (int)p->causal);
        return 4.0 * (double)d.d * pairs * (double)d.hq;
    }
    case SL_OP_SELECT_PQ_MATCH: {
        /* encoding: 2 . C . D per token (L1 distances), matching: S compares per visible pair */
        const sl_select_pq_match_params *p = params;
        double pairs = 0, C = (double)in[2].shape[2], S = (double)in[2].shape[1];
        for (int64_t r = 0; r < d.nq; r++)
            pairs += (double)visible(r, d.nq, d.nk, (int)p->causal);
        return 2.0 * C * (double)d.d * ((double)d.hq * (double)d.nq + (double)d.hkv * (double)d.nk) +
               S * pairs * (double)d.hq;
    }
    case SL_OP_SELECT_HIP_TREE: {
        /* an upper bound: per query block, kb initial groups and 2.kb halves per level over
         * ceil(log2(ceil(T/kb))) levels, each half rows.bk dot products */
        const sl_select_hip_tree_params *p = params;
        int64_t nkb = (d.nk + p->bk - 1) / p->bk;
        double total = 0;
        for (int64_t i0 = 0; i0 < d.nq; i0 += p->bq) {
            int64_t i1 = i0 + p->bq < d.nq ? i0 + p->bq - 1 : d.nq - 1, T = nkb;
            if (p->causal) {
                int64_t vis = (i1 + d.offset) / p->bk + 1, w = i0 + d.offset - p->window;
                int64_t w0 = w > 0 ? w / p->bk : 0;
                vis = vis < nkb ? vis : nkb;
                T = w0 < vis ? w0 : vis;
            }
            if (T <= p->kb)
                continue;
            int64_t size = (T + p->kb - 1) / p->kb, levels = 0;
            while (size > 1) {
                size = (size + 1) / 2;
                levels++;
            }
            total += (2.0 * (double)levels + 1.0) * (double)p->kb * (double)((i1 - (i0 + p->qstride - 1 < i1 ? i0 + p->qstride - 1 : i1)) / p->qstride + 1);
        }
        return total * (double)p->bk * 2.0 * (double)d.d * (double)d.hq;
    }
    default: return 0;
    }
}

const sl__family sl__family_tsel = {"tsel", tsel_infer, tsel_check_contents, NULL, tsel_flops, NULL};
