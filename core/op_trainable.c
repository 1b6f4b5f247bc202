/* op_trainable.c — the trainable family (issue 14; cards nsa, moba, sparsek):
 * checks, shape rules and FLOP counts of trainable.compress and
 * trainable.nsa (contracts in sparselab.h; kernels in ref/trainable.c,
 * cpu/trainable.c, cuda/trainable.cu). */
#include "family.h"
#include "op_check.h"
#include "trainable_select.h"

#include <math.h>
#include <stdio.h>

/* A float input of exactly the given shape; `what` names the expectation. */
static sl_status need_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim,
                            const int64_t *shape, const char *what)
{
    sl_status s = sl__need_float(ctx, info, in, i, ndim);
    if (s)
        return s;
    if (sl__same_shape(&in[i], ndim, shape))
        return SL_OK;
    char nm[32], desc[96];
    sl__input_name(info, i, nm, sizeof nm);
    sl_tensor_describe(&in[i], desc, sizeof desc);
    return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be %s, found %s", info->name, nm, what, desc);
}

static sl_status compress_infer(sl_ctx *ctx, const sl_op_info *info, const sl_trainable_compress_params *p,
                                const sl_tensor *in, int out_ndim[], int64_t out_shape[][SL_MAX_DIMS])
{
    sl_status s;
    if ((s = sl__need_float3(ctx, info, &in[0], "x")))
        return s;
    int64_t H = in[0].shape[0], N = in[0].shape[1], D = in[0].shape[2];
    if (p->s > p->l)
        return sl_ctx_fail(ctx, SL_EARG, "%s: stride s = %lld exceeds the window l = %lld; expected s <= l (no gaps)",
                           info->name, (long long)p->s, (long long)p->l);
    char what[96];
    if (p->mode == 1) {
        int64_t ws[3] = {H, p->l * D, D};
        snprintf(what, sizeof what, "[%lld, %lld, %lld] (heads, l·D, D) for mode 1", (long long)H,
                 (long long)(p->l * D), (long long)D);
        if ((s = need_shape(ctx, info, in, 1, 3, ws, what)))
            return s;
    } else if (in[1].buf) {
        return sl_ctx_fail(ctx, SL_EARG, "%s: opt.w is given but mode is 0 (mean); expected mode 1 for a linear phi",
                           info->name);
    }
    if (in[2].buf) {
        int64_t ps[3] = {H, p->l, D};
        snprintf(what, sizeof what, "[%lld, %lld, %lld] (heads, l, D)", (long long)H, (long long)p->l, (long long)D);
        if ((s = need_shape(ctx, info, in, 2, 3, ps, what)))
            return s;
    }
    out_ndim[0] = 3;
    out_shape[0][0] = H;
    out_shape[0][1] = (N + p->s - 1) / p->s;
    out_shape[0][2] = D;
    return SL_OK;
}

static sl_status nsa_infer(sl_ctx *ctx, const sl_op_info *info, const sl_trainable_nsa_params *p, const sl_tensor *in,
                           int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    if ((s = sl__check_qkv(ctx, info, in)))
        return s;
    int64_t Hq = in[0].shape[0], Nq = in[0].shape[1], D = in[0].shape[2];
    int64_t Hkv = in[1].shape[0], Nk = in[1].shape[1];
    if (p->init + p->local > p->n)
        return sl_ctx_fail(ctx, SL_EARG, "%s: n = %lld blocks cannot hold the %lld forced ones (init %lld + local %lld)",
                           info->name, (long long)p->n, (long long)(p->init + p->local), (long long)p->init,
                           (long long)p->local);
    if (p->s > p->l)
        return sl_ctx_fail(ctx, SL_EARG, "%s: stride s = %lld exceeds the window l = %lld; expected s <= l",
                           info->name, (long long)p->s, (long long)p->l);
    if ((s = sl__need_float(ctx, info, in, 3, 3)))
        return s;
    int64_t Nc = in[3].shape[1];
    int64_t cs[3] = {Hkv, Nc, D};
    char what[96];
    snprintf(what, sizeof what, "[%lld, Nc, %lld] like kc", (long long)Hkv, (long long)D);
    if ((s = need_shape(ctx, info, in, 3, 3, cs, what)) || (s = need_shape(ctx, info, in, 4, 3, cs, what)))
        return s;
    int64_t gs[2] = {Hq, Nq};
    snprintf(what, sizeof what, "[%lld, %lld] (query heads, query rows)", (long long)Hq, (long long)Nq);
    for (int i = 5; i < 8; i++)
        if ((s = need_shape(ctx, info, in, i, 2, gs, what)))
            return s;
    out_ndim[0] = 3, out_shape[0][0] = Hq, out_shape[0][1] = Nq, out_shape[0][2] = D;
    out_ndim[1] = 2, out_shape[1][0] = Hq, out_shape[1][1] = Nq;
    out_ndim[2] = 3, out_shape[2][0] = Hkv, out_shape[2][1] = Nq, out_shape[2][2] = p->n;
    out_dtype[2] = SL_I32;
    out_ndim[3] = 3, out_shape[3][0] = Hkv, out_shape[3][1] = Nq, out_shape[3][2] = (Nk + p->bs - 1) / p->bs;
    return SL_OK;
}

static sl_status sparsek_infer(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int out_ndim[],
                               int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    if ((s = sl__check_qkv(ctx, info, in)))
        return s;
    int64_t Hq = in[0].shape[0], Nq = in[0].shape[1], D = in[0].shape[2], Hkv = in[1].shape[0], Nk = in[1].shape[1];
    int64_t us[2] = {Hkv, Nk};
    char what[96];
    snprintf(what, sizeof what, "[%lld, %lld] (kv heads, keys)", (long long)Hkv, (long long)Nk);
    if ((s = need_shape(ctx, info, in, 3, 2, us, what)))
        return s;
    out_ndim[0] = 3, out_shape[0][0] = Hq, out_shape[0][1] = Nq, out_shape[0][2] = D;
    out_ndim[1] = 2, out_shape[1][0] = Hq, out_shape[1][1] = Nq;
    out_ndim[2] = 2, out_shape[2][0] = Hkv, out_shape[2][1] = Nq;
    out_dtype[2] = SL_I32;
    return SL_OK;
}

static sl_status fsa_infer(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int out_ndim[],
                           int64_t out_shape[][SL_MAX_DIMS])
{
    sl_status s;
    if ((s = sl__check_qkv(ctx, info, in)) || (s = sl__need_index(ctx, info, in, 3, SL_I32, 3)))
        return s;
    int64_t Hq = in[0].shape[0], Nq = in[0].shape[1], D = in[0].shape[2], Hkv = in[1].shape[0];
    if (in[3].shape[0] != Hkv || in[3].shape[1] != Nq || in[3].shape[2] < 1)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: blocks is [%lld, %lld, %lld]; expected [%lld, %lld, n >= 1] (kv heads, query rows, slots)",
                           info->name, (long long)in[3].shape[0], (long long)in[3].shape[1], (long long)in[3].shape[2],
                           (long long)Hkv, (long long)Nq);
    char what[96];
    if (in[4].buf) {
        int64_t gs[2] = {Hq, Nq};
        snprintf(what, sizeof what, "[%lld, %lld] (query heads, query rows)", (long long)Hq, (long long)Nq);
        if ((s = need_shape(ctx, info, in, 4, 2, gs, what)))
            return s;
    }
    if (in[5].buf) {
        int64_t bs3[3] = {Hq, Nq, D};
        snprintf(what, sizeof what, "[%lld, %lld, %lld] like o", (long long)Hq, (long long)Nq, (long long)D);
        if ((s = need_shape(ctx, info, in, 5, 3, bs3, what)))
            return s;
    }
    out_ndim[0] = 3, out_shape[0][0] = Hq, out_shape[0][1] = Nq, out_shape[0][2] = D;
    out_ndim[1] = 2, out_shape[1][0] = Hq, out_shape[1][1] = Nq;
    return SL_OK;
}

static sl_status routing_infer(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int out_ndim[],
                               int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    if ((s = sl__check_qkv(ctx, info, in)) || (s = sl__need_index(ctx, info, in, 3, SL_I32, 3)) ||
        (s = sl__need_index(ctx, info, in, 4, SL_I32, 3)))
        return s;
    int64_t Hq = in[0].shape[0], Nq = in[0].shape[1], D = in[0].shape[2];
    for (int i = 3; i < 5; i++)
        if (in[i].shape[0] != Hq || in[i].shape[1] < 1 || in[i].shape[2] < 1 || in[i].shape[1] != in[3].shape[1])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %s is [%lld, %lld, %lld]; expected [%lld, C, W] (query heads, clusters, members) with C as qsel's",
                               info->name, i == 3 ? "qsel" : "ksel", (long long)in[i].shape[0], (long long)in[i].shape[1],
                               (long long)in[i].shape[2], (long long)Hq);
    out_ndim[0] = 3, out_shape[0][0] = Hq, out_shape[0][1] = Nq, out_shape[0][2] = D;
    out_ndim[1] = 2, out_shape[1][0] = Hq, out_shape[1][1] = Nq;
    out_ndim[2] = 2, out_shape[2][0] = Hq, out_shape[2][1] = Nq;
    out_dtype[2] = SL_I32;
    return SL_OK;
}

/* Member lists of qsel or ksel: entries -1 or in [0, limit), each at most once per cluster. */
static sl_status check_members(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm, int64_t limit)
{
    int64_t rows = t->shape[0] * t->shape[1], w = t->shape[2];
    const int32_t *x = t->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t a = 0; a < w; a++) {
            int32_t v = x[r * w + a];
            if (v < -1 || v >= limit)
                return sl_ctx_fail(ctx, SL_EARG, "%s: %s[%lld] = %d; expected -1 or an index in [0, %lld)", info->name, nm,
                                   (long long)(r * w + a), v, (long long)limit);
            for (int64_t b = 0; b < a && v >= 0; b++)
                if (x[r * w + b] == v)
                    return sl_ctx_fail(ctx, SL_EARG, "%s: %s holds %d twice in cluster row %lld; expected each at most once",
                                       info->name, nm, v, (long long)r);
        }
    return SL_OK;
}

static sl_status trainable_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    if (info->op == SL_OP_TRAINABLE_ROUTING) {
        sl_status s = check_members(ctx, info, &in[3], "qsel", in[0].shape[1]);
        return s ? s : check_members(ctx, info, &in[4], "ksel", in[1].shape[1]);
    }
    if (info->op != SL_OP_TRAINABLE_FSA)
        return SL_OK;
    const sl_trainable_fsa_params *p = params;
    int64_t rows = in[3].shape[0] * in[3].shape[1], n = in[3].shape[2], nb = (in[1].shape[1] + p->bs - 1) / p->bs;
    const int32_t *b = in[3].data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t x = 0; x < n; x++) {
            int32_t j = b[r * n + x];
            if (j < -1 || j >= nb)
                return sl_ctx_fail(ctx, SL_EARG, "%s: blocks[%lld] = %d; expected -1 or a block id in [0, %lld)",
                                   info->name, (long long)(r * n + x), j, (long long)nb);
            for (int64_t y = 0; y < x && j >= 0; y++)
                if (b[r * n + y] == j)
                    return sl_ctx_fail(ctx, SL_EARG, "%s: block %d appears twice in row %lld of blocks; expected each at most once",
                                       info->name, j, (long long)r);
        }
    return SL_OK;
}

static sl_status select_infer(sl_ctx *ctx, const sl_op_info *info, const sl_trainable_select_params *p,
                              const sl_tensor *in, int out_ndim[], int64_t out_shape[][SL_MAX_DIMS],
                              sl_dtype out_dtype[])
{
    sl_status s;
    if ((s = sl__check_qk(ctx, info, in)))
        return s;
    int64_t Hq = in[0].shape[0], Nq = in[0].shape[1], D = in[0].shape[2], Nk = in[1].shape[1];
    if (!in[2].buf != !in[3].buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: opt.wq and opt.wk go together; found only %s", info->name,
                           in[2].buf ? "opt.wq" : "opt.wk");
    if (in[2].buf) {
        if ((s = sl__need_float(ctx, info, in, 2, 3)))
            return s;
        int64_t ws[3] = {Hq, D, in[2].shape[2]};
        char what[96];
        snprintf(what, sizeof what, "[%lld, %lld, r] (query heads, head_dim, rank)", (long long)Hq, (long long)D);
        if (ws[2] < 1 || (s = need_shape(ctx, info, in, 2, 3, ws, what)) || (s = need_shape(ctx, info, in, 3, 3, ws, what)))
            return s ? s : sl_ctx_fail(ctx, SL_ESHAPE, "%s: opt.wq has rank 0; expected r >= 1", info->name);
    }
    if (p->mode == 1 && p->group != 1)
        return sl_ctx_fail(ctx, SL_EARG, "%s: group = %lld with mode 1 (statistical top-k per row); expected group 1",
                           info->name, (long long)p->group);
    int64_t total = 0;
    for (int64_t t = 0; t < Nq; t++)
        total += sl__ts_bound(p->mode, p->k, p->cap, p->group, (int)p->causal, t, Nq, Nk);
    if (total * Hq > INT32_MAX)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %lld list entries exceed the i32 index lists", info->name,
                           (long long)(total * Hq));
    out_ndim[0] = 2, out_shape[0][0] = Hq, out_shape[0][1] = Nq + 1;
    out_ndim[1] = 1, out_shape[1][0] = total * Hq;
    out_dtype[0] = out_dtype[1] = SL_I32;
    return SL_OK;
}

static sl_status trainable_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                                 int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    switch (info->op) {
    case SL_OP_TRAINABLE_COMPRESS:
        return compress_infer(ctx, info, params, in, out_ndim, out_shape);
    case SL_OP_TRAINABLE_NSA:
        return nsa_infer(ctx, info, params, in, out_ndim, out_shape, out_dtype);
    case SL_OP_TRAINABLE_SPARSEK:
        return sparsek_infer(ctx, info, in, out_ndim, out_shape, out_dtype);
    case SL_OP_TRAINABLE_FSA:
        return fsa_infer(ctx, info, in, out_ndim, out_shape);
    case SL_OP_TRAINABLE_ROUTING:
        return routing_infer(ctx, info, in, out_ndim, out_shape, out_dtype);
    case SL_OP_TRAINABLE_SELECT:
        return select_infer(ctx, info, params, in, out_ndim, out_shape, out_dtype);
    case SL_OP_TRAINABLE_CELLS: {
        sl_status s;
        if ((s = sl__need_float3(ctx, info, &in[0], "a")))
            return s;
        const sl_trainable_cells_params *p = params;
        int64_t H = in[0].shape[0], N = in[0].shape[1], tm = in[0].shape[2], total = 0;
        if (tm < 1)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: a has T_M = 0 cells; expected at least 1", info->name);
        for (int64_t t = 0; t < N; t++)
            total += sl__ts_cell_bound(H, p->k, tm, t);
        if (total > INT32_MAX)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %lld list entries exceed the i32 index lists", info->name,
                               (long long)total);
        out_ndim[0] = 2, out_shape[0][0] = H, out_shape[0][1] = N + 1;
        out_ndim[1] = 1, out_shape[1][0] = total;
        out_dtype[0] = out_dtype[1] = SL_I32;
        return SL_OK;
    }
    case SL_OP_TRAINABLE_PERFORMER: {
        sl_status s;
        if ((s = sl__need_float3(ctx, info, &in[0], "q")) || (s = sl__need_float3(ctx, info, &in[1], "k")))
            return s;
        const sl_trainable_performer_params *p = params;
        int64_t Hq = in[0].shape[0], N = in[0].shape[1], D = in[0].shape[2], Hkv = in[1].shape[0];
        if (Hkv < 1 || Hq % Hkv != 0 || in[1].shape[1] != N || in[1].shape[2] != D)
            return sl_ctx_fail(ctx, SL_ESHAPE,
                               "%s: k must be [Hkv, %lld, %lld] with Hkv dividing %lld query heads, found [%lld, %lld, %lld]",
                               info->name, (long long)N, (long long)D, (long long)Hq, (long long)Hkv,
                               (long long)in[1].shape[1], (long long)in[1].shape[2]);
        if ((s = sl__need_float(ctx, info, in, 2, 2)))
            return s;
        if (in[2].shape[1] != D || in[2].shape[0] < 1)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: proj must be [m >= 1, %lld] (features, head_dim), found [%lld, %lld]",
                               info->name, (long long)D, (long long)in[2].shape[0], (long long)in[2].shape[1]);
        out_ndim[0] = 3, out_shape[0][0] = Hq, out_shape[0][1] = N, out_shape[0][2] = p->t_m;
        return SL_OK;
    }
    default:
        return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: not a trainable op", info->name);
    }
}

static double trainable_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    if (info->op == SL_OP_TRAINABLE_COMPRESS) {
        const sl_trainable_compress_params *p = params;
        double H = (double)in[0].shape[0], D = (double)in[0].shape[2];
        double windows = (double)((in[0].shape[1] + p->s - 1) / p->s);
        return p->mode == 1 ? 2.0 * H * windows * (double)p->l * D * D : H * windows * (double)p->l * D;
    }
    if (info->op == SL_OP_TRAINABLE_ROUTING) {
        /* each cluster: its W queries against its W keys */
        double Hq = (double)in[0].shape[0], C = (double)in[3].shape[1], W = (double)in[3].shape[2];
        return 4.0 * (double)in[0].shape[2] * Hq * C * W * W / 2;
    }
    if (info->op == SL_OP_TRAINABLE_CELLS) /* the budget's selection: about log2(H T_M) compares per cell and row */
        return (double)in[0].shape[0] * (double)in[0].shape[1] * (double)in[0].shape[2] *
               (log2((double)(in[0].shape[0] * in[0].shape[2]) + 1) + 1);
    if (info->op == SL_OP_TRAINABLE_PERFORMER) { /* features, then T_M + 1 dots of m per row */
        const sl_trainable_performer_params *p = params;
        double Hq = (double)in[0].shape[0], N = (double)in[0].shape[1], D = (double)in[0].shape[2];
        double Hkv = (double)in[1].shape[0], m = (double)in[2].shape[0];
        return 2.0 * (Hq + Hkv) * N * m * D + 2.0 * Hq * N * m * (double)(p->t_m + 1);
    }
    if (info->op == SL_OP_TRAINABLE_SELECT) {
        /* projections (2 D r per query row and per key and query head), the
         * scores (2 r per visible pair, times group), a selection pass */
        const sl_trainable_select_params *p = params;
        double Hq = (double)in[0].shape[0], Nq = (double)in[0].shape[1], D = (double)in[0].shape[2];
        double Nk = (double)in[1].shape[1], r = in[2].buf ? (double)in[2].shape[2] : (double)(p->split > 0 && p->split < in[0].shape[2] ? p->split : in[0].shape[2]);
        double proj = in[2].buf ? 2.0 * D * r * Hq * (Nq + Nk) : 0;
        double pairs = p->causal ? Nq * (Nk - Nq / 2) : Nq * Nk;
        return proj + Hq * pairs * (2.0 * r + 2.0);
    }
    if (info->op == SL_OP_TRAINABLE_FSA) {
        const sl_trainable_fsa_params *p = params;
        double Hq = (double)in[0].shape[0], Nq = (double)in[0].shape[1], D = (double)in[0].shape[2];
        return 4.0 * D * Hq * Nq * (double)(in[3].shape[2] * p->bs);
    }
    if (info->op == SL_OP_TRAINABLE_SPARSEK) {
        const sl_trainable_sparsek_params *p = params;
        double Hq = (double)in[0].shape[0], Nq = (double)in[0].shape[1], D = (double)in[0].shape[2];
        double Nk = (double)in[1].shape[1], Hkv = (double)in[1].shape[0];
        double kept = (double)(p->k + p->window);
        if (kept > Nk / 2)
            kept = Nk / 2;
        /* attention over the kept keys, plus the selection: about log2(Nk)
         * compares per prefix key and row (a sort) */
        return 4.0 * D * Hq * Nq * kept + Hkv * Nq * (Nk / 2) * (log2(Nk + 1) + 1);
    }
    const sl_trainable_nsa_params *p = params;
    double Hq = (double)in[0].shape[0], Nq = (double)in[0].shape[1], D = (double)in[0].shape[2];
    double Nk = (double)in[1].shape[1], Nc = (double)in[3].shape[1];
    /* per query row and head, about 4 D flops per key read: half the
     * compressed tokens (twice: softmax, then mapping), the selected tokens
     * and the window, each bounded by the causal prefix */
    double sel = (double)(p->n * p->bs), win = (double)p->window;
    if (sel > Nk / 2)
        sel = Nk / 2;
    if (win > Nk / 2)
        win = Nk / 2;
    return 4.0 * D * Hq * Nq * (Nc + sel + win);
}

const sl__family sl__family_trainable = {"trainable", trainable_infer, trainable_check_contents, NULL,
                                          trainable_flops, NULL};
