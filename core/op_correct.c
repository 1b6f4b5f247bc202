/* op_correct.c — the correct family (corrections applied to a sparse
 * attention's output): checks, shape rules and FLOP counts of
 * correct.reshape, correct.cache_reuse, correct.linear_branch, correct.delta,
 * correct.rectify, correct.compensate, correct.smooth_k and correct.lepe
 * (contracts in sparselab.h; kernels in ref/correct.c, cpu/correct.c,
 * cuda/correct.cu). */
#include "family.h"
#include "op_check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>


/* Input i is a float tensor whose shape is want[0..ndim) (-1: any size). */
static sl_status need_dims(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim,
                            const int64_t *want)
{
    char nm[32], desc[96], exp[96];
    sl__input_name(info, i, nm, sizeof nm);
    if (!in[i].buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s' is missing", info->name, nm);
    sl_tensor_describe(&in[i], desc, sizeof desc);
    int ok = sl__is_float(in[i].dtype) && in[i].ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = want[d] < 0 || in[i].shape[d] == want[d];
    if (ok)
        return SL_OK;
    size_t at = (size_t)snprintf(exp, sizeof exp, "float [");
    for (int d = 0; d < ndim && at < sizeof exp; d++)
        at += (size_t)(want[d] < 0 ? snprintf(exp + at, sizeof exp - at, "%s*", d ? ", " : "")
                                   : snprintf(exp + at, sizeof exp - at, "%s%lld", d ? ", " : "", (long long)want[d]));
    if (at < sizeof exp)
        snprintf(exp + at, sizeof exp - at, "]");
    return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be %s, found %s", info->name, nm, exp, desc);
}

static void set_out(int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], int o, int ndim, const int64_t *shape)
{
    out_ndim[o] = ndim;
    memcpy(out_shape[o], shape, (size_t)ndim * sizeof(int64_t));
}

void sl_correct_delta_layout(int64_t n, int64_t gamma, int64_t tail, int64_t *s_p, int64_t *n_groups,
                             int64_t *n_tail)
{
    if (gamma < 1)
        gamma = 1;
    int64_t t = n % gamma + (tail > gamma ? tail : gamma);
    if (t > n)
        t = n;
    *n_tail = t;
    *s_p = n - t;
    *n_groups = (*s_p + gamma - 1) / gamma;
}

/* correct.delta: o_sparse [H, N, D], lse_sparse [H, N], o_rows [H, R, D],
 * lse_rows [H, R] with R the layout's sampled + tail rows. */
static sl_status validate_delta(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in,
                                const sl_correct_delta_params *p)
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 3)) || (s = sl__need_float(ctx, info, in, 1, 2)) ||
        (s = sl__need_float(ctx, info, in, 2, 3)) || (s = sl__need_float(ctx, info, in, 3, 2)))
        return s;
    int64_t h = in[0].shape[0], n = in[0].shape[1], d = in[0].shape[2], s_p, g, t;
    sl_correct_delta_layout(n, p->gamma, p->tail, &s_p, &g, &t);
    int64_t want_l[2] = {h, n}, want_or[3] = {h, g + t, d}, want_lr[2] = {h, g + t};
    if (!sl__same_shape(&in[1], 2, want_l))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: lse_sparse must be [%lld, %lld] (o_sparse's heads and rows), found [%lld, %lld]",
                           info->name, (long long)h, (long long)n, (long long)in[1].shape[0], (long long)in[1].shape[1]);
    if (!sl__same_shape(&in[2], 3, want_or) || !sl__same_shape(&in[3], 2, want_lr))
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "%s: o_rows and lse_rows must be [%lld, %lld, %lld] and [%lld, %lld] (%lld sampled rows + %lld tail rows "
                           "for n = %lld, gamma = %lld, tail = %lld), found [%lld, %lld, %lld] and [%lld, %lld]",
                           info->name, (long long)h, (long long)(g + t), (long long)d, (long long)h, (long long)(g + t),
                           (long long)g, (long long)t, (long long)n, (long long)p->gamma, (long long)p->tail,
                           (long long)in[2].shape[0], (long long)in[2].shape[1], (long long)in[2].shape[2],
                           (long long)in[3].shape[0], (long long)in[3].shape[1]);
    return SL_OK;
}

static sl_status validate_correct(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    sl_status s;
    switch (info->op) {
    case SL_OP_CORRECT_RECTIFY: {
        const sl_correct_rectify_params *p = params;
        sl_attn_block_params pb = {.bq = p->bq, .bk = p->bk, .scale = p->scale, .pv_skip = 0};
        if ((s = sl__check_qkv(ctx, info, in)) || (s = sl__check_block_mask(ctx, info, in, &pb)))
            return s;
        return sl__need_shape(ctx, info, in, 7, 3, in[0].shape);
    }
    case SL_OP_CORRECT_COMPENSATE: {
        if ((s = sl__need_float(ctx, info, in, 0, 3)))
            return s;
        int64_t hn[2] = {in[0].shape[0], in[0].shape[1]};
        if ((s = sl__need_shape(ctx, info, in, 1, 2, hn)) || (s = sl__need_shape(ctx, info, in, 2, 2, hn)) ||
            (s = sl__check_qk_at(ctx, info, in, 0, 3)))
            return s;
        return SL_OK;
    }
    case SL_OP_CORRECT_SMOOTH_K: {
        if ((s = sl__check_qk_at(ctx, info, in, 0, 1)))
            return s;
        int64_t hn[2] = {in[0].shape[0], in[0].shape[1]};
        return in[2].buf ? sl__need_shape(ctx, info, in, 2, 2, hn) : SL_OK;
    }
    case SL_OP_CORRECT_LEPE: {
        if ((s = sl__check_qk_at(ctx, info, in, 0, 1)))
            return s;
        if (!in[2].buf)
            return SL_OK;
        const sl_correct_lepe_params *p = params;
        if ((s = sl__need_float(ctx, info, in, 2, 3)))
            return s;
        const sl_tensor *w = &in[2];
        if ((w->shape[0] != 1 && w->shape[0] != in[0].shape[0]) || w->shape[1] != p->kernel ||
            w->shape[2] != in[0].shape[2])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: opt.w must be [1 or %lld, %lld, %lld] (heads, kernel, head_dim), found [%lld, %lld, %lld]",
                               info->name, (long long)in[0].shape[0], (long long)p->kernel, (long long)in[0].shape[2],
                               (long long)w->shape[0], (long long)w->shape[1], (long long)w->shape[2]);
        return SL_OK;
    }
    default: return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: no validator", info->name);
    }
}


static sl_status correct_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                               int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    sl_op op = info->op;
    int64_t any3[3] = {-1, -1, -1};
    (void)out_dtype;
    switch (op) {
    case SL_OP_CORRECT_RESHAPE: {
        if ((s = need_dims(ctx, info, in, 0, 3, any3)))
            return s;
        const int64_t *o = in[0].shape;
        if ((s = need_dims(ctx, info, in, 1, 2, o)))
            return s;
        if (!in[2].buf != !in[3].buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.ref_o and opt.ref_lse come together; found only %s", info->name,
                               in[2].buf ? "ref_o" : "ref_lse");
        if (!in[2].buf && !in[4].buf)
            return sl_ctx_fail(ctx, SL_EARG,
                               "%s: expected ref_o and ref_lse (a refresh step) or ratio (a sparse step); found neither",
                               info->name);
        if (in[2].buf && ((s = need_dims(ctx, info, in, 2, 3, o)) || (s = need_dims(ctx, info, in, 3, 2, o))))
            return s;
        if (in[4].buf && (s = need_dims(ctx, info, in, 4, 2, o)))
            return s;
        if (in[5].buf && (s = need_dims(ctx, info, in, 5, 3, o)))
            return s;
        set_out(out_ndim, out_shape, 0, 3, o);
        set_out(out_ndim, out_shape, 1, 2, o);
        set_out(out_ndim, out_shape, 2, 3, o);
        return SL_OK;
    }
    case SL_OP_CORRECT_CACHE_REUSE: {
        if ((s = need_dims(ctx, info, in, 0, 3, any3)))
            return s;
        const int64_t *o = in[0].shape;
        if ((s = need_dims(ctx, info, in, 1, 2, o)) || (s = need_dims(ctx, info, in, 2, 3, o)) ||
            (s = need_dims(ctx, info, in, 3, 2, o)))
            return s;
        if (!in[4].buf != !in[5].buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.q and opt.cache_q come together; found only %s", info->name,
                               in[4].buf ? "q" : "cache_q");
        if (in[4].buf) {
            int64_t qs[3] = {o[0], o[1], -1};
            if ((s = need_dims(ctx, info, in, 4, 3, qs)) || (s = need_dims(ctx, info, in, 5, 3, in[4].shape)))
                return s;
        }
        set_out(out_ndim, out_shape, 0, 3, o);
        set_out(out_ndim, out_shape, 1, 2, o);
        set_out(out_ndim, out_shape, 2, 2, o);
        return SL_OK;
    }
    case SL_OP_CORRECT_LINEAR_BRANCH: {
        if ((s = need_dims(ctx, info, in, 0, 3, any3)))
            return s;
        const int64_t *o = in[0].shape;
        if ((s = need_dims(ctx, info, in, 1, 3, o)))
            return s;
        int64_t g1[1] = {-1};
        if ((s = need_dims(ctx, info, in, 2, 1, g1)))
            return s;
        if (in[2].shape[0] != 1 && in[2].shape[0] != o[0])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: gate must be [1] or [%lld] (one per head), found [%lld]",
                               info->name, (long long)o[0], (long long)in[2].shape[0]);
        if (in[3].buf) {
            int64_t ps[3] = {-1, o[2], o[2]};
            if ((s = need_dims(ctx, info, in, 3, 3, ps)))
                return s;
            if (in[3].shape[0] != 1 && in[3].shape[0] != o[0])
                return sl_ctx_fail(ctx, SL_ESHAPE, "%s: proj must be [1 or %lld, %lld, %lld], found %lld heads",
                                   info->name, (long long)o[0], (long long)o[2], (long long)o[2],
                                   (long long)in[3].shape[0]);
        }
        set_out(out_ndim, out_shape, 0, 3, o);
        return SL_OK;
    }
    case SL_OP_CORRECT_RECTIFY:
    case SL_OP_CORRECT_COMPENSATE:
    case SL_OP_CORRECT_SMOOTH_K:
    case SL_OP_CORRECT_LEPE:
        if ((s = validate_correct(ctx, info, params, in)))
            return s;
        for (int o = 0; o < info->n_out; o++) {
            /* first output as input 1 (k') or input 0; the rest per row */
            const sl_tensor *like = op == SL_OP_CORRECT_SMOOTH_K ? &in[1] : &in[0];
            if (o == 0) {
                out_ndim[0] = 3;
                memcpy(out_shape[0], like->shape, 3 * sizeof(int64_t));
            } else {
                out_ndim[o] = 2;
                out_shape[o][0] = in[0].shape[0];
                out_shape[o][1] = in[0].shape[1];
            }
        }
        if (op == SL_OP_CORRECT_RECTIFY) {
            const sl_correct_rectify_params *pr = params;
            out_shape[3][1] = (in[0].shape[1] + pr->bq - 1) / pr->bq;
        }
        return SL_OK;
    case SL_OP_CORRECT_DELTA:
        if ((s = validate_delta(ctx, info, in, params)))
            return s;
        out_ndim[0] = 3;
        memcpy(out_shape[0], in[0].shape, 3 * sizeof(int64_t));
        out_ndim[1] = 2;
        memcpy(out_shape[1], in[0].shape, 2 * sizeof(int64_t));
        return SL_OK;
    default: return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: not an op of the correct family", info->name);
    }
}

static sl_status correct_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    (void)params;
    switch (info->op) {
    case SL_OP_CORRECT_RESHAPE:
        if (in[4].buf) {
            const float *r = in[4].data;
            for (int64_t i = 0; i < sl_tensor_numel(&in[4]); i++)
                if (!(r[i] >= 0))
                    return sl_ctx_fail(ctx, SL_EARG, "%s: ratio[%lld] = %g, expected >= 0 (a kept mass fraction)",
                                       info->name, (long long)i, (double)r[i]);
        }
        return SL_OK;
    case SL_OP_CORRECT_LINEAR_BRANCH: {
        const float *g = in[2].data;
        for (int64_t i = 0; i < in[2].shape[0]; i++)
            if (!(g[i] >= 0 && g[i] <= 1))
                return sl_ctx_fail(ctx, SL_EARG, "%s: gate[%lld] = %g is outside [0, 1]", info->name, (long long)i,
                                   (double)g[i]);
        return SL_OK;
    }
    default: return SL_OK;
    }
}

static double correct_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    sl_op op = info->op;
    switch (op) {
    case SL_OP_CORRECT_RESHAPE:
    case SL_OP_CORRECT_LINEAR_BRANCH: {
        /* reshape: r·o + residual (refresh: ref_o - r·o) per element;
         * linear_branch: o + g·x, plus the D×D projection per row */
        double n = (double)sl_tensor_numel(&in[0]);
        if (op == SL_OP_CORRECT_LINEAR_BRANCH && in[3].buf)
            n += n * (double)in[0].shape[2];
        return 2.0 * n;
    }
    case SL_OP_CORRECT_CACHE_REUSE: {
        /* merge: two multiplies and an add per element of every row (an upper
         * bound: rows that do not reuse skip it); the query test reads q and
         * cache_q (a difference and two squares per element). */
        double n = 3.0 * (double)sl_tensor_numel(&in[0]);
        if (in[4].buf)
            n += 4.0 * (double)sl_tensor_numel(&in[4]);
        return n;
    }
    case SL_OP_CORRECT_RECTIFY: {
        /* Pooling: mean and mean |deviation| of Q and K blocks (4 per
         * element), mean of V (1); per visible (query block, key block)
         * pair the three dot products of the score and the GAPR test (6D)
         * and the restored P'.v̄ (2D); per output element R·O* + N (2). */
        const sl_correct_rectify_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        int64_t nqb = (d.nq + p->bq - 1) / p->bq, nkb = (d.nk + p->bk - 1) / p->bk;
        double pairs = 0;
        for (int64_t I = 0; I < nqb; I++) {
            int64_t last = (I + 1) * p->bq < d.nq ? (I + 1) * p->bq - 1 : d.nq - 1;
            int64_t vis = p->causal ? (d.offset + last) / p->bk + 1 : nkb;
            pairs += (double)(vis < nkb ? vis : nkb);
        }
        return 4.0 * (double)d.d * ((double)d.hq * (double)d.nq + (double)d.hkv * (double)d.nk) +
               (double)d.hkv * (double)d.nk * (double)d.d + 8.0 * (double)d.d * pairs * (double)d.hq +
               2.0 * (double)d.hq * (double)d.nq * (double)d.d;
    }
    case SL_OP_CORRECT_COMPENSATE: {
        /* per output element: f·o (1), + λ·v̄ (2), the running mean (2) */
        const sl_correct_comp_params *p = params;
        double el = (double)sl_tensor_numel(&in[0]);
        return p->vmc ? 5.0 * el : el;
    }
    case SL_OP_CORRECT_SMOOTH_K:
        /* the key mean and the subtraction (2 per key element), the dot q·k̄ (2 per query element) */
        return 2.0 * (double)sl_tensor_numel(&in[1]) + 2.0 * (double)sl_tensor_numel(&in[0]);
    case SL_OP_CORRECT_LEPE: {
        const sl_correct_lepe_params *p = params;
        return (2.0 * (double)p->kernel + 2.0) * (double)sl_tensor_numel(&in[0]);
    }
    case SL_OP_CORRECT_DELTA: {
        /* delta: one subtraction per element of each group's delta, one add
         * per element of the other rows before s_p; smooth: three more per
         * element (two scalings and an add). recompute: copies only. */
        const sl_correct_delta_params *p = params;
        int64_t h = in[0].shape[0], n = in[0].shape[1], d = in[0].shape[2], s_p, g, t;
        sl_correct_delta_layout(n, p->gamma, p->tail, &s_p, &g, &t);
        if (p->mode == 1)
            return 0;
        double per_elem = p->smooth ? 4.0 : 1.0;
        return (double)h * (double)d * ((double)g + per_elem * (double)(s_p - g));
    }
    default: return 0;
    }
}

const sl__family sl__family_correct = {"correct", correct_infer, correct_check_contents, NULL, correct_flops, NULL};
