/* op_page.c — the page family (decode over a paged KV cache, issue 13):
 * checks, shape rules and FLOP counts of page.meta, page.bounds, page.select
 * and page.attend (contracts in sparselab.h; kernels in ref/page.c,
 * cpu/page.c, cuda/page.cu; the cache object itself is kvcache.c). */
#include "family.h"
#include "op_check.h"

#include <string.h>

static sl_status fail_shape(sl_ctx *ctx, const sl_op_info *info, const char *what, const sl_tensor *t)
{
    char desc[96];
    sl_tensor_describe(t, desc, sizeof desc);
    return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %s, found %s", info->name, what, desc);
}

/* The valid keys of page.attend: n, or every row of k when n is 0. */
static int64_t attend_n(const sl_page_attn_params *p, const sl_tensor *k)
{
    return p->n > 0 ? p->n : k->shape[1];
}

static sl_status infer_meta(sl_ctx *ctx, const sl_op_info *info, const sl_page_meta_params *p, const sl_tensor *in,
                            int out_ndim[], int64_t out_shape[][SL_MAX_DIMS])
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 3)))
        return s;
    if (in[0].shape[1] < 1)
        return fail_shape(ctx, info, "input 'k' must hold at least one token (an empty cache has no pages)", &in[0]);
    for (int o = 0; o < 3; o++) {
        out_ndim[o] = 3;
        out_shape[o][0] = in[0].shape[0];
        out_shape[o][1] = sl__ceil_div(in[0].shape[1], p->page);
        out_shape[o][2] = in[0].shape[2];
    }
    return SL_OK;
}

static sl_status infer_bounds(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int out_ndim[],
                              int64_t out_shape[][SL_MAX_DIMS])
{
    sl_status s;
    for (int i = 0; i < 3; i++)
        if ((s = sl__need_float(ctx, info, in, i, 3)))
            return s;
    const sl_tensor *q = &in[0], *mn = &in[1], *mx = &in[2];
    if (!sl__same_shape(mx, 3, mn->shape))
        return fail_shape(ctx, info, "input 'max' must have the shape of 'min'", mx);
    if (mn->shape[0] < 1 || q->shape[0] % mn->shape[0] != 0)
        return fail_shape(ctx, info, "input 'min' must have kv heads dividing q's heads", mn);
    if (mn->shape[2] != q->shape[2])
        return fail_shape(ctx, info, "input 'min' must have q's head_dim", mn);
    if (mn->shape[1] < 1)
        return fail_shape(ctx, info, "input 'min' must hold at least one page (an empty cache)", mn);
    out_ndim[0] = 3;
    out_shape[0][0] = q->shape[0];
    out_shape[0][1] = q->shape[1];
    out_shape[0][2] = mn->shape[1];
    return SL_OK;
}

static sl_status infer_select(sl_ctx *ctx, const sl_op_info *info, const sl_page_select_params *p,
                              const sl_tensor *in, int out_ndim[], int64_t out_shape[][SL_MAX_DIMS],
                              sl_dtype out_dtype[])
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 3)))
        return s;
    if (in[0].shape[2] < 1)
        return fail_shape(ctx, info, "input 'scores' must have at least one page column (an empty cache)", &in[0]);
    if (in[0].shape[0] % p->group != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: scores have %lld heads, not a multiple of group = %lld", info->name,
                           (long long)in[0].shape[0], (long long)p->group);
    out_dtype[0] = SL_I32;
    out_ndim[0] = 3;
    out_shape[0][0] = in[0].shape[0] / p->group;
    out_shape[0][1] = in[0].shape[1];
    out_shape[0][2] = p->k < in[0].shape[2] ? p->k : in[0].shape[2];
    return SL_OK;
}

static sl_status infer_attend(sl_ctx *ctx, const sl_op_info *info, const sl_page_attn_params *p, const sl_tensor *in,
                              int out_ndim[], int64_t out_shape[][SL_MAX_DIMS])
{
    sl_status s;
    if ((s = sl__check_qkv(ctx, info, in)))
        return s;
    const sl_tensor *q = &in[0], *k = &in[1], *pg = &in[3];
    if (!pg->buf || pg->dtype != SL_I32 || pg->ndim != 3)
        return fail_shape(ctx, info, "input 'pages' must be i32 [lists, n_q, m]", pg);
    if (pg->shape[0] < 1 || q->shape[0] % pg->shape[0] != 0 || pg->shape[0] % k->shape[0] != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "%s: pages have %lld lists; expected a divisor of q's %lld heads and a multiple of k's %lld",
                           info->name, (long long)pg->shape[0], (long long)q->shape[0], (long long)k->shape[0]);
    if (pg->shape[1] != q->shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: pages have %lld rows, q has %lld", info->name,
                           (long long)pg->shape[1], (long long)q->shape[1]);
    int64_t n = attend_n(p, k);
    if (n > k->shape[1] || n < q->shape[1] || n < 1)
        return sl_ctx_fail(ctx, SL_EARG, "%s: n = %lld; expected n_q = %lld <= n <= %lld (k's rows) and n >= 1 (an empty cache)",
                           info->name, (long long)n, (long long)q->shape[1], (long long)k->shape[1]);
    out_ndim[0] = 3;
    memcpy(out_shape[0], q->shape, sizeof out_shape[0]);
    out_ndim[1] = 2;
    out_shape[1][0] = q->shape[0];
    out_shape[1][1] = q->shape[1];
    return SL_OK;
}

static int64_t scores_n(const sl_page_scores_params *p, const sl_tensor *k)
{
    return p->n > 0 ? p->n : k->shape[1];
}

static sl_status infer_token_scores(sl_ctx *ctx, const sl_op_info *info, const sl_page_scores_params *p,
                                    const sl_tensor *in, int out_ndim[], int64_t out_shape[][SL_MAX_DIMS])
{
    sl_status s;
    if ((s = sl__check_qk(ctx, info, in)))
        return s;
    const sl_tensor *q = &in[0], *k = &in[1], *ch = &in[2], *pg = &in[3];
    if (ch->buf && (ch->dtype != SL_I32 || ch->ndim != 2 || (ch->shape[0] != q->shape[0] && ch->shape[0] != k->shape[0]) ||
                    ch->shape[1] < 1 || ch->shape[1] > q->shape[2]))
        return fail_shape(ctx, info, "input 'opt.channels' must be i32 [q or k heads, 1..head_dim]", ch);
    if (pg->buf && (pg->dtype != SL_I32 || pg->ndim != 3 || pg->shape[0] < 1 || q->shape[0] % pg->shape[0] != 0 ||
                    pg->shape[0] % k->shape[0] != 0 || pg->shape[1] != q->shape[1]))
        return fail_shape(ctx, info, "input 'opt.pages' must be i32 [lists, n_q, m], lists dividing q's heads and a multiple of k's", pg);
    int64_t n = scores_n(p, k);
    if (n > k->shape[1] || n < q->shape[1] || n < 1)
        return sl_ctx_fail(ctx, SL_EARG, "%s: n = %lld; expected n_q = %lld <= n <= %lld (k's rows) and n >= 1 (an empty cache)",
                           info->name, (long long)n, (long long)q->shape[1], (long long)k->shape[1]);
    out_ndim[0] = 3;
    out_shape[0][0] = q->shape[0];
    out_shape[0][1] = q->shape[1];
    out_shape[0][2] = n;
    return SL_OK;
}

static sl_status infer_qscores(sl_ctx *ctx, const sl_op_info *info, const sl_page_qscores_params *p,
                               const sl_tensor *in, int out_ndim[], int64_t out_shape[][SL_MAX_DIMS])
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 3)))
        return s;
    const sl_tensor *q = &in[0], *kq = &in[1], *ks = &in[2], *pg = &in[3];
    if (!kq->buf || kq->dtype != SL_U8 || kq->ndim != 3 || kq->shape[2] != q->shape[2] || kq->shape[0] < 1 ||
        q->shape[0] % kq->shape[0] != 0)
        return fail_shape(ctx, info, "input 'kq' must be u8 [kv heads dividing q's heads, N, q's head_dim]", kq);
    if ((s = sl__need_float(ctx, info, in, 2, 3)))
        return s;
    if (ks->shape[0] != kq->shape[0] || ks->shape[1] != kq->shape[1] || ks->shape[2] != 2)
        return fail_shape(ctx, info, "input 'kscale' must be [kv heads, N, 2] (lo, step per key)", ks);
    if (pg->buf && (pg->dtype != SL_I32 || pg->ndim != 3 || pg->shape[0] < 1 || q->shape[0] % pg->shape[0] != 0 ||
                    pg->shape[0] % kq->shape[0] != 0 || pg->shape[1] != q->shape[1]))
        return fail_shape(ctx, info, "input 'opt.pages' must be i32 [lists, n_q, m], lists dividing q's heads and a multiple of kq's", pg);
    int64_t n = p->n > 0 ? p->n : kq->shape[1];
    if (n > kq->shape[1] || n < q->shape[1] || n < 1)
        return sl_ctx_fail(ctx, SL_EARG, "%s: n = %lld; expected n_q = %lld <= n <= %lld (kq's rows) and n >= 1 (an empty cache)",
                           info->name, (long long)n, (long long)q->shape[1], (long long)kq->shape[1]);
    out_ndim[0] = 3;
    out_shape[0][0] = q->shape[0];
    out_shape[0][1] = q->shape[1];
    out_shape[0][2] = n;
    return SL_OK;
}

static sl_status infer_attend_q(sl_ctx *ctx, const sl_op_info *info, const sl_page_attnq_params *p,
                                const sl_tensor *in, int out_ndim[], int64_t out_shape[][SL_MAX_DIMS])
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, 3)))
        return s;
    if ((p->kbits != 4 && p->kbits != 8) || (p->vbits != 4 && p->vbits != 8))
        return sl_ctx_fail(ctx, SL_EARG, "%s: kbits = %lld, vbits = %lld; expected 4 or 8 each", info->name,
                           (long long)p->kbits, (long long)p->vbits);
    const sl_tensor *q = &in[0], *kq = &in[1], *ks = &in[2], *v = &in[3], *pg = &in[4], *vs = &in[5];
    int64_t d = q->shape[2], dk = p->kbits == 4 ? (d + 1) / 2 : d, dv = p->vbits == 4 ? (d + 1) / 2 : d;
    if (!kq->buf || kq->dtype != SL_U8 || kq->ndim != 3 || kq->shape[0] < 1 || q->shape[0] % kq->shape[0] != 0 ||
        kq->shape[2] != dk) {
        char desc[96];
        sl_tensor_describe(kq, desc, sizeof desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'kq' must be u8 [kv heads dividing q's %lld heads, N, %lld] for kbits = %lld, found %s",
                           info->name, (long long)q->shape[0], (long long)dk, (long long)p->kbits, desc);
    }
    int64_t hkv = kq->shape[0], nk = kq->shape[1], np = sl__ceil_div(nk, p->page);
    if ((s = sl__need_float(ctx, info, in, 2, 3)))
        return s;
    if (ks->shape[0] != hkv || ks->shape[1] != np || ks->shape[2] != d)
        return fail_shape(ctx, info, "input 'kscale' must be [kv heads, ceil(N/P), head_dim] (per page and channel)", ks);
    int quant_v = v->buf && v->dtype == SL_U8;
    if (quant_v) {
        if (v->ndim != 3 || v->shape[0] != hkv || v->shape[1] != nk || v->shape[2] != dv)
            return fail_shape(ctx, info, "input 'v' (u8 codes) must be [kv heads, N, head_dim or ceil(head_dim/2) for vbits 4]", v);
        if (!vs->buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: v holds u8 codes, so opt.vscale is required (found none)", info->name);
        if ((s = sl__need_float(ctx, info, in, 5, 3)))
            return s;
        if (vs->shape[0] != hkv || vs->shape[1] != np || vs->shape[2] != d)
            return fail_shape(ctx, info, "input 'opt.vscale' must be [kv heads, ceil(N/P), head_dim]", vs);
    } else {
        if ((s = sl__need_float(ctx, info, in, 3, 3)))
            return s;
        if (v->shape[0] != hkv || v->shape[1] != nk || v->shape[2] != d)
            return fail_shape(ctx, info, "input 'v' must be float [kv heads, N, head_dim] (or u8 codes with opt.vscale)", v);
        if (vs->buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.vscale is given but v is float (scales go with u8 value codes)", info->name);
        if (in[7].buf)
            return sl_ctx_fail(ctx, SL_EARG, "%s: opt.vzero is given but v is float (zero points go with u8 value codes)",
                               info->name);
    }
    /* asymmetric codes: zero points shaped as the scales they go with */
    for (int z = 6; z <= 7; z++) {
        if (!in[z].buf)
            continue;
        if ((s = sl__need_float(ctx, info, in, z, 3)))
            return s;
        if (in[z].shape[0] != hkv || in[z].shape[1] != np || in[z].shape[2] != d)
            return fail_shape(ctx, info, z == 6 ? "input 'opt.kzero' must be [kv heads, ceil(N/P), head_dim] (as kscale)"
                                                : "input 'opt.vzero' must be [kv heads, ceil(N/P), head_dim] (as opt.vscale)",
                              &in[z]);
    }
    if (!pg->buf || pg->dtype != SL_I32 || pg->ndim != 3 || pg->shape[0] < 1 || q->shape[0] % pg->shape[0] != 0 ||
        pg->shape[0] % hkv != 0 || pg->shape[1] != q->shape[1])
        return fail_shape(ctx, info, "input 'pages' must be i32 [lists, n_q, m], lists dividing q's heads and a multiple of kq's", pg);
    int64_t n = p->n > 0 ? p->n : nk;
    if (n > nk || n < q->shape[1] || n < 1)
        return sl_ctx_fail(ctx, SL_EARG, "%s: n = %lld; expected n_q = %lld <= n <= %lld (kq's rows) and n >= 1 (an empty cache)",
                           info->name, (long long)n, (long long)q->shape[1], (long long)nk);
    out_ndim[0] = 3;
    memcpy(out_shape[0], q->shape, sizeof out_shape[0]);
    out_ndim[1] = 2;
    out_shape[1][0] = q->shape[0];
    out_shape[1][1] = q->shape[1];
    return SL_OK;
}

static sl_status page_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                            int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    switch (info->op) {
    case SL_OP_PAGE_META: return infer_meta(ctx, info, params, in, out_ndim, out_shape);
    case SL_OP_PAGE_BOUNDS: return infer_bounds(ctx, info, in, out_ndim, out_shape);
    case SL_OP_PAGE_SELECT: return infer_select(ctx, info, params, in, out_ndim, out_shape, out_dtype);
    case SL_OP_PAGE_ATTEND: return infer_attend(ctx, info, params, in, out_ndim, out_shape);
    case SL_OP_PAGE_TOKEN_SCORES: return infer_token_scores(ctx, info, params, in, out_ndim, out_shape);
    case SL_OP_PAGE_QSCORES: return infer_qscores(ctx, info, params, in, out_ndim, out_shape);
    case SL_OP_PAGE_ATTEND_Q: return infer_attend_q(ctx, info, params, in, out_ndim, out_shape);
    default: return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: not a page op", info->name);
    }
}

/* page lists: ids in [0, n_p) strictly increasing, then only -1 padding. */
static sl_status check_lists(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *pg, int64_t n_p, const char *nm)
{
    int64_t lists = pg->shape[0] * pg->shape[1], m = pg->shape[2];
    const int32_t *x = pg->data;
    for (int64_t l = 0; l < lists; l++) {
        int64_t prev = -1;
        int padding = 0;
        for (int64_t e = 0; e < m; e++) {
            int32_t v = x[l * m + e];
            if (v == -1) {
                padding = 1;
                continue;
            }
            if (v < 0 || v >= n_p || padding || v <= prev)
                return sl_ctx_fail(ctx, SL_EARG,
                                   "%s: %s[%lld][%lld] = %d; expected page ids in [0, %lld) strictly increasing, "
                                   "then -1 padding",
                                   info->name, nm, (long long)l, (long long)e, v, (long long)n_p);
            prev = v;
        }
    }
    return SL_OK;
}

static sl_status page_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    if (info->op == SL_OP_PAGE_ATTEND) {
        const sl_page_attn_params *p = params;
        return check_lists(ctx, info, &in[3], sl__ceil_div(attend_n(p, &in[1]), p->page), "pages");
    }
    if (info->op == SL_OP_PAGE_ATTEND_Q) {
        const sl_page_attnq_params *ap = params;
        int64_t n = ap->n > 0 ? ap->n : in[1].shape[1];
        return check_lists(ctx, info, &in[4], sl__ceil_div(n, ap->page), "pages");
    }
    if (info->op == SL_OP_PAGE_QSCORES) {
        const sl_page_qscores_params *qp = params;
        int64_t n = qp->n > 0 ? qp->n : in[1].shape[1];
        return in[3].buf ? check_lists(ctx, info, &in[3], sl__ceil_div(n, qp->page), "opt.pages") : SL_OK;
    }
    if (info->op != SL_OP_PAGE_TOKEN_SCORES)
        return SL_OK;
    const sl_page_scores_params *p = params;
    const sl_tensor *ch = &in[2];
    if (ch->buf) {
        int64_t d = in[0].shape[2], r = ch->shape[1];
        const int32_t *c = ch->data;
        for (int64_t h = 0; h < ch->shape[0]; h++)
            for (int64_t i = 0; i < r; i++) {
                int bad = c[h * r + i] < 0 || c[h * r + i] >= d;
                for (int64_t j = 0; j < i && !bad; j++)
                    bad = c[h * r + j] == c[h * r + i];
                if (bad)
                    return sl_ctx_fail(ctx, SL_EARG, "%s: opt.channels[%lld][%lld] = %d; expected distinct channels in [0, %lld)",
                                       info->name, (long long)h, (long long)i, c[h * r + i], (long long)d);
            }
    }
    if (in[3].buf)
        return check_lists(ctx, info, &in[3], sl__ceil_div(scores_n(p, &in[1]), p->page), "opt.pages");
    return SL_OK;
}

/* page.attend reads k and v only at the listed pages (a cache's capacity
 * need not be scanned); a non-finite value there shows in the outputs. */
static sl_status page_check_outputs(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *out)
{
    if (info->op != SL_OP_PAGE_ATTEND && info->op != SL_OP_PAGE_ATTEND_Q)
        return SL_OK;
    const float *o = out[0].data, *l = out[1].data;
    int64_t n = sl_tensor_numel(&out[0]), rows = sl_tensor_numel(&out[1]);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(o[i]))
            return sl_ctx_fail(ctx, SL_EARG, "%s: k or v holds NaN or an infinity in a listed page (o[%lld] = %g)",
                               info->name, (long long)i, o[i]);
    for (int64_t i = 0; i < rows; i++)
        if (isnan(l[i]) || l[i] == INFINITY)
            return sl_ctx_fail(ctx, SL_EARG, "%s: k holds NaN or an infinity in a listed page (lse[%lld] = %g)",
                               info->name, (long long)i, l[i]);
    return SL_OK;
}

static sl__input_policy page_input_policy(const sl_op_info *info, int i)
{
    if (info->op == SL_OP_PAGE_SELECT)
        return SL__IN_NEG_INF;
    if (info->op == SL_OP_PAGE_ATTEND && (i == 1 || i == 2))
        return SL__IN_UNCHECKED;
    if (info->op == SL_OP_PAGE_ATTEND_Q && i != 0 && i != 4)
        return SL__IN_UNCHECKED;  /* codes, scales and v are read only at listed pages */
    return SL__IN_FINITE;
}

static double page_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    switch (info->op) {
    case SL_OP_PAGE_META: return 3.0 * (double)sl_tensor_numel(&in[0]);
    case SL_OP_PAGE_BOUNDS:
        return 4.0 * (double)in[0].shape[0] * (double)in[0].shape[1] * (double)in[1].shape[1] * (double)in[0].shape[2];
    case SL_OP_PAGE_SELECT: return (double)sl_tensor_numel(&in[0]);
    case SL_OP_PAGE_ATTEND: {
        const sl_page_attn_params *p = params;
        /* every listed page counted full: 4 D flops per (row, key) */
        double entries = (double)in[3].shape[2] * (double)p->page;
        return 4.0 * (double)in[0].shape[0] * (double)in[0].shape[1] * entries * (double)in[0].shape[2];
    }
    case SL_OP_PAGE_ATTEND_Q: {
        const sl_page_attnq_params *p = params;
        double entries = (double)in[4].shape[2] * (double)p->page;
        return 5.0 * (double)in[0].shape[0] * (double)in[0].shape[1] * entries * (double)in[0].shape[2];
    }
    case SL_OP_PAGE_TOKEN_SCORES: {
        const sl_page_scores_params *p = params;
        double r = in[2].buf ? (double)in[2].shape[1] : (double)in[0].shape[2];
        return 2.0 * (double)in[0].shape[0] * (double)in[0].shape[1] * (double)scores_n(p, &in[1]) * r;
    }
    case SL_OP_PAGE_QSCORES: {
        const sl_page_qscores_params *p = params;
        int64_t n = p->n > 0 ? p->n : in[1].shape[1];
        return 2.0 * (double)in[0].shape[0] * (double)in[0].shape[1] * (double)n * (double)in[0].shape[2];
    }
    default: return 0;
    }
}

const sl__family sl__family_page = {"page", page_infer, page_check_contents, page_check_outputs, page_flops,
                                    page_input_policy};
