/* op_attn.c — the attn family: checks, shape rules and FLOP counts of
 * attn.dense, attn.block_sparse, attn.token_sparse, attn.vs_mixed, attn.rows,
 * attn.lse_merge, attn.linear, attn.pooled_kv and attn.bucket (contracts in
 * sparselab.h; kernels in ref/attn.c, cpu/attn.c, cuda/attn.cu). */
#include "family.h"
#include "op_check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Shapes of index lists (contents are checked after normalisation). */
static sl_status validate_idx_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i_rp,
                                    int64_t rows_per_entry)
{
    sl_status s;
    if ((s = sl__need_index(ctx, info, in, i_rp, SL_I32, 2)) || (s = sl__need_index(ctx, info, in, i_rp + 1, SL_I32, 1)))
        return s;
    int64_t hq = in[0].shape[0], nq = in[0].shape[1], hm = in[i_rp].shape[0];
    int64_t n_entries = (nq + rows_per_entry - 1) / rows_per_entry;
    if (hm <= 0 || hq % hm != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: index lists have %lld heads, q has %lld; expected 1 or a divisor",
                           info->name, (long long)hm, (long long)hq);
    if (in[i_rp].shape[1] != n_entries + 1)
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "%s: idx.row_ptr must be [%lld, %lld] for %lld query rows in entries of %lld, found [%lld, %lld]",
                           info->name, (long long)hm, (long long)(n_entries + 1), (long long)nq,
                           (long long)rows_per_entry, (long long)hm, (long long)in[i_rp].shape[1]);
    if (in[i_rp + 1].shape[0] > INT32_MAX)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: idx.col has more than 2^31 - 1 entries", info->name);
    return SL_OK;
}

/* opt.bias [1 or Hq, Nq, Nk] and state.o / state.lse [Hq, n_out, D] / [Hq, n_out]
 * at slots first, first + 1, first + 2 (each optional). */
static sl_status validate_options(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int first, int64_t n_out)
{
    sl_status s;
    int64_t hq = in[0].shape[0], nq = in[0].shape[1], d = in[0].shape[2], nk = in[1].shape[1];
    const sl_tensor *bias = &in[first], *so = &in[first + 1], *sl = &in[first + 2];
    if (bias->buf) {
        if ((s = sl__need_float(ctx, info, in, first, 3)))
            return s;
        if ((bias->shape[0] != 1 && bias->shape[0] != hq) || bias->shape[1] != nq || bias->shape[2] != nk)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: opt.bias must be [1 or %lld, %lld, %lld], found [%lld, %lld, %lld]",
                               info->name, (long long)hq, (long long)nq, (long long)nk, (long long)bias->shape[0],
                               (long long)bias->shape[1], (long long)bias->shape[2]);
    }
    if (!so->buf != !sl->buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: state.o and state.lse come together; found only %s", info->name,
                           so->buf ? "state.o" : "state.lse");
    if (so->buf) {
        if ((s = sl__need_float(ctx, info, in, first + 1, 3)) || (s = sl__need_float(ctx, info, in, first + 2, 2)))
            return s;
        int64_t want_o[3] = {hq, n_out, d};
        if (!sl__same_shape(so, 3, want_o) || !sl__same_shape(sl, 2, want_o))
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: state.o and state.lse must be [%lld, %lld, %lld] and [%lld, %lld]",
                               info->name, (long long)hq, (long long)n_out, (long long)d, (long long)hq,
                               (long long)n_out);
    }
    return SL_OK;
}

static sl_status validate_rows_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    if ((s = sl__need_index(ctx, info, in, 3, SL_I32, 2)) || (s = sl__need_index(ctx, info, in, 4, SL_I32, 2)))
        return s;
    int64_t hq = in[0].shape[0], hr = in[3].shape[0];
    if ((hr != 1 && hr != hq) || !sl__same_shape(&in[4], 2, in[3].shape))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: rows and limits must both be [1 or %lld, R], found [%lld, %lld] and [%lld, %lld]",
                           info->name, (long long)hq, (long long)in[3].shape[0], (long long)in[3].shape[1],
                           (long long)in[4].shape[0], (long long)in[4].shape[1]);
    return SL_OK;
}

static sl_status validate_lse_merge(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    for (int i = 0; i < 4; i++)
        if ((s = sl__need_float(ctx, info, in, i, -1)))
            return s;
    const sl_tensor *o1 = &in[0], *l1 = &in[1];
    if (o1->ndim < 1 || l1->ndim != o1->ndim - 1 || !sl__same_shape(l1, l1->ndim, o1->shape))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: lse1 must have o1's shape without its last dim (o1 has %d dims, lse1 %d)",
                           info->name, o1->ndim, l1->ndim);
    if (!sl__same_shape(&in[2], o1->ndim, o1->shape) || !sl__same_shape(&in[3], l1->ndim, l1->shape))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: o2 and lse2 must have the shapes of o1 and lse1", info->name);
    return SL_OK;
}

/* Contents of index lists (contiguous i32 after normalisation): per head a
 * CSR run that starts where the previous head ended, monotone offsets, and
 * sorted unique keys in [0, nk). */
static sl_status check_idx_lists(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *rp_t, const sl_tensor *col_t,
                                 int64_t nk)
{
    int64_t hm = rp_t->shape[0], n_e = rp_t->shape[1] - 1, nnz = col_t->shape[0];
    const int32_t *rp = rp_t->data, *col = col_t->data;
    int64_t prev_end = 0;
    for (int64_t h = 0; h < hm; h++) {
        const int32_t *hr = rp + h * (n_e + 1);
        if (hr[0] != prev_end)
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: idx.row_ptr of head %lld starts at %d, expected %lld", info->name,
                               (long long)h, hr[0], (long long)prev_end);
        for (int64_t r = 0; r < n_e; r++) {
            if (hr[r + 1] < hr[r] || hr[r + 1] > nnz)
                return sl_ctx_fail(ctx, SL_EFORMAT, "%s: idx.row_ptr of head %lld, entry %lld is not monotone within [0, %lld]",
                                   info->name, (long long)h, (long long)r, (long long)nnz);
            for (int32_t e = hr[r]; e < hr[r + 1]; e++)
                if (col[e] < 0 || col[e] >= nk || (e > hr[r] && col[e] <= col[e - 1]))
                    return sl_ctx_fail(ctx, SL_EFORMAT,
                                       "%s: idx.col of head %lld, entry %lld: keys must be sorted, unique and in [0, %lld); found %d at %d",
                                       info->name, (long long)h, (long long)r, (long long)nk, col[e], e);
        }
        prev_end = hr[n_e];
    }
    if (prev_end != nnz)
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: idx.row_ptr ends at %lld but idx.col has %lld entries", info->name,
                           (long long)prev_end, (long long)nnz);
    return SL_OK;
}

static int is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

/* Pooled keys of key block c at level s: ceil(len/s) for its clipped length. */
static int64_t groups_of(int64_t nk, int64_t bk, int64_t c, int64_t s)
{
    int64_t len = nk - c * bk < bk ? nk - c * bk : bk;
    return (len + s - 1) / s;
}

/* Σ over query heads and list entries of (rows of the entry) × (keys in it). */
static double idx_pairs(const sl__attn_dims *d, const sl_tensor *rp, int64_t rows_per_entry)
{
    int64_t hm = rp->shape[0], n_e = rp->shape[1] - 1;
    double pairs = 0;
    if (hm <= 0 || rows_per_entry <= 0)
        return 0;
    for (int64_t h = 0; h < hm; h++)
        for (int64_t r = 0; r < n_e; r++) {
            int64_t rows = d->nq - r * rows_per_entry < rows_per_entry ? d->nq - r * rows_per_entry : rows_per_entry;
            pairs += (double)rows * (double)(sl__i32_at(rp, h * (n_e + 1) + r + 1) - sl__i32_at(rp, h * (n_e + 1) + r));
        }
    return pairs * (double)(d->hq / hm);
}

/* Clipped areas of the kept blocks, over query heads. */
static double block_area(const sl__attn_dims *d, const sl_tensor *rp, const sl_tensor *ci, int64_t bq, int64_t bk)
{
    int64_t hm = rp->shape[0], nqb = rp->shape[1] - 1;
    double area = 0;
    if (hm <= 0)
        return 0;
    for (int64_t h = 0; h < hm; h++)
        for (int64_t r = 0; r < nqb; r++) {
            int64_t rows = d->nq - r * bq < bq ? d->nq - r * bq : bq;
            for (int64_t e = sl__i32_at(rp, h * (nqb + 1) + r); e < sl__i32_at(rp, h * (nqb + 1) + r + 1); e++) {
                int64_t k0 = sl__i32_at(ci, e) * bk;
                int64_t cols = d->nk - k0 < bk ? d->nk - k0 : bk;
                area += (double)rows * (double)cols;
            }
        }
    return area * (double)(d->hq / hm);
}

static void out_like_q(const sl_tensor *in, int64_t n_out, int out_ndim[], int64_t out_shape[][SL_MAX_DIMS])
{
    out_ndim[0] = 3;
    out_shape[0][0] = in[0].shape[0];
    out_shape[0][1] = n_out;
    out_shape[0][2] = in[0].shape[2];
    out_ndim[1] = 2;
    out_shape[1][0] = in[0].shape[0];
    out_shape[1][1] = n_out;
}

/* attn.lines: cols and offs are i32 [Hl, C] and [Hl, S] with one Hl, 1 or a
 * divisor of Hq. */
static sl_status validate_lines(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    if ((s = sl__need_index(ctx, info, in, 3, SL_I32, 2)) || (s = sl__need_index(ctx, info, in, 4, SL_I32, 2)))
        return s;
    int64_t hq = in[0].shape[0], hl = in[3].shape[0];
    if (hl != in[4].shape[0] || hl <= 0 || hq % hl != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: cols and offs must have the same number of heads, 1 or a divisor of q's %lld; found [%lld, %lld] and [%lld, %lld]",
                           info->name, (long long)hq, (long long)in[3].shape[0], (long long)in[3].shape[1],
                           (long long)in[4].shape[0], (long long)in[4].shape[1]);
    return SL_OK;
}

/* The valid entries of list row h of t (i32 [H, W]): ascending values, then -1. */
static int64_t lines_len(const sl_tensor *t, int64_t h)
{
    int64_t w = t->shape[1], n = 0;
    const int32_t *r = (const int32_t *)t->data + h * w;
    while (n < w && r[n] >= 0)
        n++;
    return n;
}

/* Each row of an attn.lines list: distinct ascending values in [0, nk), then -1 padding only. */
static sl_status check_lines_list(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm, int64_t nk)
{
    int64_t hl = t->shape[0], w = t->shape[1];
    for (int64_t h = 0; h < hl; h++) {
        const int32_t *r = (const int32_t *)t->data + h * w;
        int64_t n = lines_len(t, h);
        for (int64_t i = 0; i < w; i++) {
            int32_t x = r[i];
            if (i >= n ? x != -1 : (x >= nk || (i > 0 && x <= r[i - 1])))
                return sl_ctx_fail(ctx, SL_EARG,
                                   "%s: %s row %lld: expected distinct ascending values in [0, %lld) then -1 padding; found %d at %lld",
                                   info->name, nm, (long long)h, (long long)nk, x, (long long)i);
        }
    }
    return SL_OK;
}

/* Rows among positions off .. off + nq - 1 that are >= x. */
static double rows_from(int64_t off, int64_t nq, int64_t x)
{
    int64_t skip = x - off > 0 ? x - off : 0;
    return skip >= nq ? 0.0 : (double)(nq - skip);
}

/* Σ over query heads of the (row, key) pairs attn.lines keeps: each column j
 * and diagonal o over the rows at or past it, minus the pairs on both (j + o
 * a row's position). */
static double lines_pairs(const sl__attn_dims *d, const sl_tensor *cols, const sl_tensor *offs)
{
    int64_t hl = cols->shape[0];
    double pairs = 0;
    if (hl <= 0)
        return 0;
    int64_t lo = d->offset, hi = d->offset + d->nq - 1;
    for (int64_t h = 0; h < hl; h++) {
        int64_t nc = lines_len(cols, h), ns = lines_len(offs, h);
        const int32_t *c = (const int32_t *)cols->data + h * cols->shape[1];
        const int32_t *o = (const int32_t *)offs->data + h * offs->shape[1];
        for (int64_t i = 0; i < nc; i++)
            pairs += rows_from(d->offset, d->nq, c[i]);
        for (int64_t i = 0; i < ns; i++)
            pairs += rows_from(d->offset, d->nq, o[i]);
        /* overlap: offsets in [lo - j, hi - j], found by two cursors that
         * fall as j rises */
        int64_t a = ns, b = ns;
        for (int64_t i = 0; i < nc; i++) {
            while (a > 0 && o[a - 1] >= lo - c[i])
                a--;
            while (b > 0 && o[b - 1] > hi - c[i])
                b--;
            pairs -= (double)(b > a ? b - a : 0);
        }
    }
    return pairs * (double)(d->hq / hl);
}

static sl_status attn_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                            int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    sl_op op = info->op;
    if (op == SL_OP_ATTN_LSE_MERGE) {
        if ((s = validate_lse_merge(ctx, info, in)))
            return s;
        out_ndim[0] = in[0].ndim;
        memcpy(out_shape[0], in[0].shape, sizeof out_shape[0]);
        out_ndim[1] = in[1].ndim;
        memcpy(out_shape[1], in[1].shape, sizeof out_shape[1]);
        return SL_OK;
    }
    if (op == SL_OP_ATTN_BUCKET) {
        if ((s = sl__check_qk(ctx, info, in)) || (s = sl__need_float3(ctx, info, &in[2], "v")))
            return s;
        if (in[2].shape[0] != in[1].shape[0] || in[2].shape[1] != in[1].shape[1] || in[2].shape[2] != in[1].shape[2])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: k is [%lld, %lld, %lld] but v is [%lld, %lld, %lld]", info->name,
                               (long long)in[1].shape[0], (long long)in[1].shape[1], (long long)in[1].shape[2],
                               (long long)in[2].shape[0], (long long)in[2].shape[1], (long long)in[2].shape[2]);
        int64_t wq[2] = {in[0].shape[0], in[0].shape[1]}, wk[2] = {in[0].shape[0], in[1].shape[1]};
        if ((s = sl__opt_i32(ctx, info, &in[3], "opt.qb", 2, wq)) || (s = sl__opt_i32(ctx, info, &in[4], "opt.kb", 2, wk)))
            return s;
        if (!in[3].buf != !in[4].buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.qb and opt.kb come together; found only %s", info->name,
                               in[3].buf ? "opt.qb" : "opt.kb");
        out_like_q(in, in[0].shape[1], out_ndim, out_shape);
        out_ndim[2] = 2;
        out_shape[2][0] = in[0].shape[0];
        out_shape[2][1] = in[0].shape[1];
        out_dtype[2] = SL_I32;
        return SL_OK;
    }
    if ((s = sl__check_qkv(ctx, info, in)))
        return s;
    int64_t n_out = in[0].shape[1];
    switch (op) {
    case SL_OP_ATTN_DENSE: break;
    case SL_OP_ATTN_BLOCK_SPARSE: s = sl__check_block_mask(ctx, info, in, params); break;
    case SL_OP_ATTN_TOKEN_SPARSE:
        if (!(s = validate_idx_shape(ctx, info, in, 3, ((const sl_attn_token_params *)params)->rows_per_entry)))
            s = validate_options(ctx, info, in, 5, n_out);
        break;
    case SL_OP_ATTN_VS_MIXED: {
        const sl_attn_vs_params *pv = params;
        sl_attn_block_params pb = {.bq = pv->bq, .bk = pv->bk, .scale = pv->scale, .pv_skip = 0};
        if (!(s = sl__check_block_mask(ctx, info, in, &pb)) && !(s = validate_idx_shape(ctx, info, in, 7, pv->bq)))
            s = validate_options(ctx, info, in, 9, n_out);
        break;
    }
    case SL_OP_ATTN_ROWS:
        if (!(s = validate_rows_shape(ctx, info, in))) {
            n_out = in[3].shape[1];
            s = validate_options(ctx, info, in, 5, n_out);
        }
        break;
    case SL_OP_ATTN_LINES: s = validate_lines(ctx, info, in); break;
    case SL_OP_ATTN_LINEAR:
        out_ndim[0] = 3;
        memcpy(out_shape[0], in[0].shape, 3 * sizeof(int64_t));
        return SL_OK;
    case SL_OP_ATTN_POOLED_KV: {
        const sl_attn_pooled_params *p = params;
        int64_t nqb = (in[0].shape[1] + p->bq - 1) / p->bq, nkb = (in[1].shape[1] + p->bk - 1) / p->bk;
        char desc[96];
        sl_tensor_describe(&in[3], desc, sizeof desc);
        if (!in[3].buf || in[3].dtype != SL_U8 || in[3].ndim != 3 || in[3].shape[1] != nqb || in[3].shape[2] != nkb)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: levels must be u8 [Hm, %lld, %lld] for n_q %lld, n_k %lld in blocks of (%lld, %lld), found %s",
                               info->name, (long long)nqb, (long long)nkb, (long long)in[0].shape[1],
                               (long long)in[1].shape[1], (long long)p->bq, (long long)p->bk, desc);
        if (!sl_tensor_is_contiguous(&in[3]))
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: levels must be contiguous, found a strided view", info->name);
        if (in[3].shape[0] <= 0 || in[0].shape[0] % in[3].shape[0] != 0)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: levels has %lld heads, q has %lld; expected 1 or a divisor",
                               info->name, (long long)in[3].shape[0], (long long)in[0].shape[0]);
        break;
    }
    default: return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: not an op of the attn family", info->name);
    }
    if (s)
        return s;
    out_like_q(in, n_out, out_ndim, out_shape);
    return SL_OK;
}

static sl_status attn_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    int64_t nq = in[0].ndim == 3 ? in[0].shape[1] : 0, nk = in[1].ndim == 3 ? in[1].shape[1] : 0;
    /* Every softmax op but token_sparse (whose k is read only where its
     * lists point; its outputs are checked after the run) bounds its scores. */
    sl_status s = SL_OK;
    if (info->op != SL_OP_ATTN_TOKEN_SPARSE && info->op != SL_OP_ATTN_LSE_MERGE &&
        (s = sl__check_score_range(ctx, info, params, in)))
        return s;
    switch (info->op) {
    case SL_OP_ATTN_TOKEN_SPARSE: return check_idx_lists(ctx, info, &in[3], &in[4], nk);
    case SL_OP_ATTN_VS_MIXED: return check_idx_lists(ctx, info, &in[7], &in[8], nk);
    case SL_OP_ATTN_LINES:
        if ((s = check_lines_list(ctx, info, &in[3], "cols", nk)))
            return s;
        return check_lines_list(ctx, info, &in[4], "offs", nk);
    case SL_OP_ATTN_ROWS: {
        const int32_t *rows = in[3].data, *lim = in[4].data;
        int64_t n = sl_tensor_numel(&in[3]);
        for (int64_t i = 0; i < n; i++) {
            if (rows[i] < 0 || rows[i] >= nq)
                return sl_ctx_fail(ctx, SL_EARG, "%s: rows[%lld] = %d is outside [0, %lld)", info->name, (long long)i,
                                   rows[i], (long long)nq);
            if (lim[i] < 0 || lim[i] > nk)
                return sl_ctx_fail(ctx, SL_EARG, "%s: limits[%lld] = %d is outside [0, %lld]", info->name, (long long)i,
                                   lim[i], (long long)nk);
        }
        return SL_OK;
    }
    case SL_OP_ATTN_POOLED_KV: {
        const sl_attn_pooled_params *p = params;
        const uint8_t *lv = in[3].data;
        for (int64_t i = 0; i < sl_tensor_numel(&in[3]); i++)
            if (lv[i] != 0 && (!is_pow2(lv[i]) || lv[i] > p->bk))
                return sl_ctx_fail(ctx, SL_EARG, "%s: levels[%lld] = %d, expected 0 (skip) or a power of two <= bk = %lld",
                                   info->name, (long long)i, lv[i], (long long)p->bk);
        return SL_OK;
    }
    case SL_OP_ATTN_BUCKET:
        for (int i = 3; i <= 4; i++) {
            if (!in[i].buf)
                continue;
            const int32_t *b = in[i].data;
            int64_t n = sl_tensor_numel(&in[i]);
            for (int64_t j = 0; j < n; j++)
                if (b[j] < 0)
                    return sl_ctx_fail(ctx, SL_EARG, "%s: %s[%lld] = %d; expected bucket ids >= 0", info->name,
                                       i == 3 ? "opt.qb" : "opt.kb", (long long)j, b[j]);
        }
        return SL_OK;
    default: return SL_OK;
    }
}

/* attn.token_sparse reads only the K/V rows its lists name: scanning the
 * whole cache for NaN would cost more than the gather itself (decode). Its
 * kernels let a NaN in a row they read reach the output instead, and the
 * outputs are scanned after the run. */
static sl__input_policy attn_input_policy(const sl_op_info *info, int i)
{
    if (info->op == SL_OP_ATTN_TOKEN_SPARSE && (i == 1 || i == 2))
        return SL__IN_UNCHECKED;
    char nm[32];
    sl__input_name(info, i, nm, sizeof nm);
    return strstr(nm, "lse") ? SL__IN_NEG_INF : SL__IN_FINITE;
}

static sl_status attn_check_outputs(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *out)
{
    if (info->op != SL_OP_ATTN_TOKEN_SPARSE)
        return SL_OK;
    /* O is finite for finite inputs; L is finite or -inf (an empty row). */
    for (int o = 0; o < info->n_out; o++) {
        const float *x = out[o].data;
        int64_t n = sl_tensor_numel(&out[o]);
        for (int64_t j = 0; j < n; j++)
            if (isnan(x[j]) || x[j] == INFINITY || (o == 0 && x[j] == -INFINITY))
                return sl_ctx_fail(ctx, SL_EARG,
                                   "%s: input 'k' or 'v' holds NaN or an infinity in a row the index lists read, "
                                   "or scores there overflow float32",
                                   info->name);
    }
    return SL_OK;
}

static double causal_pairs(const sl__attn_dims *d, int causal)
{
    /* row r sees offset + r + 1 keys */
    return causal ? (double)d->nq * (double)d->offset + (double)d->nq * (double)(d->nq + 1) / 2.0
                  : (double)d->nq * (double)d->nk;
}

static double attn_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
    switch (info->op) {
    case SL_OP_ATTN_DENSE: {
        const sl_attn_params *p = params;
        return 4.0 * (double)d.d * causal_pairs(&d, p && p->causal) * (double)d.hq;
    }
    case SL_OP_ATTN_BLOCK_SPARSE: {
        /* The executor computes every kept block in full (partial blocks are
         * masked after the product), so cost counts clipped block areas;
         * P·V products that pv_skip leaves out are still counted. */
        const sl_attn_block_params *p = params;
        return 4.0 * (double)d.d * block_area(&d, &in[3], &in[4], p->bq, p->bk);
    }
    case SL_OP_ATTN_TOKEN_SPARSE: {
        const sl_attn_token_params *p = params;
        return 4.0 * (double)d.d * idx_pairs(&d, &in[3], p->rows_per_entry);
    }
    case SL_OP_ATTN_VS_MIXED: {
        /* Gathered columns are computed for every row of their query block,
         * also where the block part already keeps them (masked after). */
        const sl_attn_vs_params *p = params;
        return 4.0 * (double)d.d * (block_area(&d, &in[3], &in[4], p->bq, p->bk) + idx_pairs(&d, &in[7], p->bq));
    }
    case SL_OP_ATTN_ROWS: {
        double keys = 0;
        int64_t n = sl_tensor_numel(&in[4]);
        for (int64_t i = 0; i < n; i++)
            keys += (double)sl__i32_at(&in[4], i);
        return in[4].shape[0] > 0 ? 4.0 * (double)d.d * keys * (double)(d.hq / in[4].shape[0]) : 0;
    }
    case SL_OP_ATTN_LINES: return 4.0 * (double)d.d * lines_pairs(&d, &in[3], &in[4]);
    case SL_OP_ATTN_LSE_MERGE:
        /* two multiplies and an add per output element */
        return 3.0 * (double)sl_tensor_numel(&in[0]);
    case SL_OP_ATTN_LINEAR: {
        /* per query head: phi(k_j) v_j^T and phi(k_j) accumulated for every
         * key a row sees (the running state), phi(q)·S and phi(q)·z per row */
        const sl_attn_linear_params *p = params;
        double keys = p && p->causal ? (double)(d.offset + d.nq > 0 ? d.offset + d.nq : 0) : (double)d.nk;
        if (keys > (double)d.nk)
            keys = (double)d.nk;
        return (double)d.hq * 2.0 * (double)d.d * ((double)d.d + 1.0) * (keys + (double)d.nq);
    }
    case SL_OP_ATTN_POOLED_KV: {
        /* 4·d per (row, visible pooled key) of every kept block (with
         * causal, only the groups the row sees: a level map may list blocks
         * in the future, which the kernels skip), plus the pooling: per kv head and level s > 1 in use,
         * 2·n_k·d adds for K and V. */
        const sl_attn_pooled_params *p = params;
        const sl_tensor *lt = &in[3];
        int64_t hm = lt->shape[0], nqb = lt->shape[1], nkb = lt->shape[2];
        const uint8_t *lv = lt->data;
        double pairs = 0;
        int used[9] = {0};
        for (int64_t h = 0; h < hm; h++)
            for (int64_t r = 0; r < nqb; r++) {
                int64_t rows = d.nq - r * p->bq < p->bq ? d.nq - r * p->bq : p->bq;
                for (int64_t c = 0; c < nkb; c++) {
                    int s = lv[(h * nqb + r) * nkb + c];
                    if (!s)
                        continue;
                    if (!p->causal) {
                        pairs += (double)rows * (double)groups_of(d.nk, p->bk, c, s);
                    } else {
                        /* row at position pos sees the groups whose last key is <= pos */
                        int64_t k0 = c * p->bk, len = d.nk - k0 < p->bk ? d.nk - k0 : p->bk;
                        for (int64_t i = 0; i < rows; i++) {
                            int64_t seen = d.offset + r * p->bq + i - k0 + 1;
                            pairs += seen <= 0 ? 0 : seen >= len ? (double)((len + s - 1) / s) : (double)(seen / s);
                        }
                    }
                    for (int e = 1; e < 9; e++)
                        if (s == (1 << e))
                            used[e] = 1;
                }
            }
        double pool = 0;
        for (int e = 1; e < 9; e++)
            pool += used[e] ? 2.0 * (double)d.hkv * (double)d.nk * (double)d.d : 0;
        return 4.0 * (double)d.d * pairs * (double)(d.hq / hm) + pool;
    }
    case SL_OP_ATTN_BUCKET: {
        /* The kept pairs depend on the data: this is the bound (every causal
         * pair, 4·d each); a recipe with the count output reports 4·d·Σcount. */
        const sl_attn_bucket_params *p = params;
        return 4.0 * (double)d.d * causal_pairs(&d, p && p->causal) * (double)d.hq;
    }
    default: return 0;
    }
}

const sl__family sl__family_attn = {"attn", attn_infer, attn_check_contents, attn_check_outputs, attn_flops,
                                    attn_input_policy};
