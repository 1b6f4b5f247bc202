/* op_check.c — the input checks every op family shares: float and index
 * inputs of a given rank, exact shapes, the q/k/v triple and q/k pairs of
 * attention (GQA, n_q <= n_k), block masks. Each fails with one line naming
 * the op, the input, what was expected and what was found. Depends only on
 * the tensor and mask API below it. */
#include "op_check.h"
#include "parallel.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

int sl__is_float(sl_dtype t) { return t == SL_F32 || t == SL_F16 || t == SL_BF16 || t == SL_F64; }
void sl__input_name(const sl_op_info *info, int i, char *buf, size_t n)
{
    const char *p = info->inputs;
    for (int k = 0; k < i && p; k++) {
        p = strchr(p, ',');
        if (p)
            p++;
    }
    if (!p) {
        snprintf(buf, n, "input %d", i);
        return;
    }
    size_t len = strcspn(p, ",");
    if (len >= n)
        len = n - 1;
    memcpy(buf, p, len);
    buf[len] = '\0';
}
sl_status sl__need_float(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim)
{
    char nm[32], desc[96];
    sl__input_name(info, i, nm, sizeof nm);
    sl_tensor_describe(&in[i], desc, sizeof desc);
    if (!in[i].buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s' is missing", info->name, nm);
    if (!sl__is_float(in[i].dtype))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be f32/f16/bf16/f64, found %s", info->name, nm,
                           desc);
    if (ndim >= 0 && in[i].ndim != ndim)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must have %d dims, found %s", info->name, nm, ndim,
                           desc);
    return SL_OK;
}
sl_status sl__need_index(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, sl_dtype dt, int ndim)
{
    char nm[32], desc[96];
    sl__input_name(info, i, nm, sizeof nm);
    sl_tensor_describe(&in[i], desc, sizeof desc);
    if (!in[i].buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s' is missing", info->name, nm);
    if (in[i].dtype != dt || in[i].ndim != ndim)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be %s with %d dims, found %s", info->name, nm,
                           sl_dtype_name(dt), ndim, desc);
    /* Index arrays are validated in place, then read by the kernels: a strided
     * view would be checked on other numbers than the ones executed. */
    if (!sl_tensor_is_contiguous(&in[i]))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be contiguous (a mask's own array, not a view)",
                           info->name, nm);
    return SL_OK;
}
sl_status sl__check_qkv(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    for (int i = 0; i < 3; i++)
        if ((s = sl__need_float(ctx, info, in, i, 3)))
            return s;
    const sl_tensor *k = &in[1], *v = &in[2];
    if (k->shape[0] != v->shape[0] || k->shape[1] != v->shape[1] || k->shape[2] != v->shape[2])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: k is [%lld, %lld, %lld] but v is [%lld, %lld, %lld]", info->name,
                           (long long)k->shape[0], (long long)k->shape[1], (long long)k->shape[2],
                           (long long)v->shape[0], (long long)v->shape[1], (long long)v->shape[2]);
    return sl__check_qk(ctx, info, in);
}

sl_status sl__check_block_mask(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in,
                                     const sl_attn_block_params *p)
{
    sl_status s;
    if ((s = sl__need_index(ctx, info, in, 3, SL_I32, 2)) || (s = sl__need_index(ctx, info, in, 4, SL_I32, 1)) ||
        (s = sl__need_index(ctx, info, in, 5, SL_I32, 1)) || (s = sl__need_index(ctx, info, in, 6, SL_U8, 3)))
        return s;
    sl_mask m = {.n_heads = (int)in[3].shape[0], .n_q = in[0].shape[1], .n_k = in[1].shape[1],
                 .bq = (int)p->bq, .bk = (int)p->bk, .row_ptr = in[3], .col_idx = in[4], .part = in[5],
                 .bits = in[6]};
    m.n_qb = (m.n_q + m.bq - 1) / m.bq;
    m.n_kb = (m.n_k + m.bk - 1) / m.bk;
    if (m.n_heads <= 0 || in[0].shape[0] % m.n_heads != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: mask has %d heads, q has %lld; expected 1 or a divisor",
                           info->name, m.n_heads, (long long)in[0].shape[0]);
    if ((s = sl_mask_validate(ctx, &m)))
        return sl_ctx_fail(ctx, s, "%s: %s", info->name, sl_ctx_error(ctx));
    return SL_OK;
}
int sl__same_shape(const sl_tensor *t, int ndim, const int64_t *shape)
{
    if (t->ndim != ndim)
        return 0;
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != shape[d])
            return 0;
    return 1;
}
/* q [Hq, Nq, D] and k [Hkv, Nk, D] of the estimators (no v). */
sl_status sl__check_qk(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s = sl__check_qk_at(ctx, info, in, 0, 1);
    if (s == SL_OK && in[0].shape[2] == 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: head_dim is 0", info->name);
    return s;
}
int64_t sl__ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
/* A float input of exactly this shape (ndim 2 or 3). */
sl_status sl__need_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim, const int64_t *shape)
{
    sl_status s = sl__need_float(ctx, info, in, i, ndim);
    if (s)
        return s;
    if (!sl__same_shape(&in[i], ndim, shape)) {
        char nm[32], desc[96];
        sl__input_name(info, i, nm, sizeof nm);
        sl_tensor_describe(&in[i], desc, sizeof desc);
        if (ndim == 2)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be [%lld, %lld], found %s", info->name, nm,
                               (long long)shape[0], (long long)shape[1], desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be [%lld, %lld, %lld], found %s", info->name, nm,
                           (long long)shape[0], (long long)shape[1], (long long)shape[2], desc);
    }
    return SL_OK;
}
/* q [Hq, Nq, D] and k [Hkv, Nk, D] with GQA heads (k at slot ik). */
sl_status sl__check_qk_at(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int iq, int ik)
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, iq, 3)) || (s = sl__need_float(ctx, info, in, ik, 3)))
        return s;
    const sl_tensor *q = &in[iq], *k = &in[ik];
    char qn[32], kn[32];
    sl__input_name(info, iq, qn, sizeof qn);
    sl__input_name(info, ik, kn, sizeof kn);
    if (q->shape[2] != k->shape[2])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %s has head_dim %lld, %s has %lld", info->name, qn,
                           (long long)q->shape[2], kn, (long long)k->shape[2]);
    if (k->shape[0] == 0 || q->shape[0] % k->shape[0] != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %s has %lld heads, %s has %lld; expected a multiple (GQA)", info->name,
                           qn, (long long)q->shape[0], kn, (long long)k->shape[0]);
    if (q->shape[1] > k->shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %s has %lld tokens but %s only %lld; expected n_q <= n_k", info->name,
                           qn, (long long)q->shape[1], kn, (long long)k->shape[1]);
    return SL_OK;
}
/* ---- cost ---- */
/* Element i (row-major order) of an i32 tensor of 1 or 2 dims, through its strides. */
int64_t sl__i32_at(const sl_tensor *t, int64_t i)
{
    const int32_t *x = t->data;
    if (t->ndim == 2)
        return x[(i / t->shape[1]) * t->stride[0] + (i % t->shape[1]) * t->stride[1]];
    return x[i * t->stride[0]];
}
sl_status sl__need_float3(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm)
{
    char desc[96];
    sl_tensor_describe(t, desc, sizeof desc);
    if (!t->buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s' is missing", info->name, nm);
    if (!sl__is_float(t->dtype) || t->ndim != 3)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be a float tensor with 3 dims, found %s", info->name,
                           nm, desc);
    return SL_OK;
}

/* An optional i32 input: absent, or contiguous i32 of ndim dims whose shape is want. */
sl_status sl__opt_i32(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm, int ndim,
                         const int64_t *want)
{
    if (!t->buf)
        return SL_OK;
    char desc[96];
    sl_tensor_describe(t, desc, sizeof desc);
    int ok = t->dtype == SL_I32 && t->ndim == ndim && sl_tensor_is_contiguous(t);
    for (int d = 0; ok && want && d < ndim; d++)
        ok = t->shape[d] == want[d];
    if (!ok) {
        if (ndim == 1)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be a contiguous i32 vector, found %s", info->name,
                               nm, desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be contiguous i32 [%lld, %lld], found %s", info->name,
                           nm, (long long)want[0], (long long)want[1], desc);
    }
    return SL_OK;
}

/* x of a reduction: [H, R, C]; of a selector: [H, C] or [H, R, C]. */
sl_status sl__check_scores(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int allow_2d)
{
    sl_status s;
    if ((s = sl__need_float(ctx, info, in, 0, -1)))
        return s;
    if (in[0].ndim != 3 && !(allow_2d && in[0].ndim == 2)) {
        char desc[96];
        sl_tensor_describe(&in[0], desc, sizeof desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'x' must be [H, R, C]%s, found %s", info->name,
                           allow_2d ? " or [H, C]" : "", desc);
    }
    return SL_OK;
}

/* max |x| of a contiguous float tensor (f32, f16 or bf16: q and k may stay in
 * a dtype the kernel reads natively). For finite floats the magnitude's bits
 * order like the magnitude, so the scan is integer maxima in lanes; f32 runs
 * on the context's threads in 256K-element chunks above 1M elements (issue
 * 20, session 3: with the NaN scan it was the fixed cost of a call). */
static uint32_t max_abs_bits(const float *x, int64_t n)
{
    enum { U = 16 };
    uint32_t lane[U] = {0}, m = 0, b;
    int64_t i = 0;
    for (; i + U <= n; i += U)
        for (int u = 0; u < U; u++) {
            memcpy(&b, x + i + u, sizeof b);
            b &= 0x7fffffffu;
            lane[u] = b > lane[u] ? b : lane[u];
        }
    for (; i < n; i++) {
        memcpy(&b, x + i, sizeof b);
        b &= 0x7fffffffu;
        m = b > m ? b : m;
    }
    for (int u = 0; u < U; u++)
        m = lane[u] > m ? lane[u] : m;
    return m;
}

enum { MA_CHUNK = 1 << 18, MA_MAX_THREADS = 64 };
typedef struct ma_job { const float *x; int64_t n; uint32_t m[MA_MAX_THREADS]; } ma_job;

static void ma_chunk(int64_t c, void *ud, int thread)
{
    ma_job *J = ud;
    int64_t a = c * MA_CHUNK, e = a + MA_CHUNK < J->n ? a + MA_CHUNK : J->n;
    uint32_t m = max_abs_bits(J->x + a, e - a);
    J->m[thread] = m > J->m[thread] ? m : J->m[thread];
}

static double max_abs_scan(sl_ctx *ctx, const sl_tensor *t);

/* max |x|, remembered on a marked buffer until its next write (issue 20,
 * session 4: an unchanged q or k is not rescanned) */
static double max_abs(sl_ctx *ctx, const sl_tensor *t)
{
    double m;
    if (sl__scan_get(t, SL__SCAN_MA, NULL, &m))
        return m;
    m = max_abs_scan(ctx, t);
    ctx->input_scans++;
    sl__scan_put(t, SL__SCAN_MA, 0, m);
    return m;
}

static double max_abs_scan(sl_ctx *ctx, const sl_tensor *t)
{
    int64_t n = sl_tensor_numel(t);
    if (t->dtype == SL_F32) {
        int threads = sl_ctx_threads(ctx);
        threads = threads > MA_MAX_THREADS ? MA_MAX_THREADS : threads;
        uint32_t m = 0;
        ma_job job = {t->data, n, {0}};
        if (n < 4 * MA_CHUNK || threads <= 1 ||
            sl__parallel_for(ctx, (n + MA_CHUNK - 1) / MA_CHUNK, threads, ma_chunk, &job) != SL_OK)
            m = max_abs_bits(t->data, n);
        else
            for (int i = 0; i < threads; i++)
                m = job.m[i] > m ? job.m[i] : m;
        float f;
        memcpy(&f, &m, sizeof f);
        return f;
    }
    const uint16_t *x = t->data;
    uint16_t m = 0;
    for (int64_t i = 0; i < n; i++)
        m = (uint16_t)(x[i] & 0x7fffu) > m ? (uint16_t)(x[i] & 0x7fffu) : m;
    return t->dtype == SL_BF16 ? sl_bf16_to_f32(m) : sl_f16_to_f32(m);
}

sl_status sl__check_score_range(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    double scale = -1;
    for (int i = 0; i < info->n_fields; i++)
        if (strcmp(info->fields[i].name, "scale") == 0)
            scale = sl_op_params_get(info->op, params, &info->fields[i]);
    if (scale < 0 || !in[0].buf || !in[1].buf || in[0].ndim != 3)
        return SL_OK;
    int64_t d = in[0].shape[2];
    if (scale == 0)
        scale = 1.0 / sqrt((double)(d > 0 ? d : 1));
    double mq = max_abs(ctx, &in[0]), mk = max_abs(ctx, &in[1]), mb = 0;
    for (int i = 2; i < info->n_in; i++) {
        char nm[32];
        sl__input_name(info, i, nm, sizeof nm);
        if (strcmp(nm, "opt.bias") == 0 && in[i].buf)
            mb = max_abs(ctx, &in[i]);
    }
    /* |scale·q·k + bias| <= bound; half of FLT_MAX leaves room for the
     * softmax's s - m, which spans twice the scores' range. */
    double bound = scale * (double)d * mq * mk + mb, lim = FLT_MAX / 2;
    if (bound <= lim && scale * mq <= lim && scale * mk <= lim)
        return SL_OK;
    return sl_ctx_fail(ctx, SL_EARG,
                       "%s: scores overflow float32 (|q| up to %.3g, |k| up to %.3g, scale %.3g, D %lld%s: "
                       "|scale·q·k| may reach %.3g, above %.3g); rescale q and k",
                       info->name, mq, mk, scale, (long long)d, mb > 0 ? ", plus opt.bias" : "", bound, lim);
}
