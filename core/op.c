/* op.c — the op table (generated from ops.def/params.def), parameter access,
 * validation and shape inference, input normalisation and dispatch. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- generated tables ---- */

#define SL__PK_INT SL_PK_INT
#define SL__PK_BOOL SL_PK_BOOL
#define SL__PK_F64 SL_PK_F64
#define FIELD_DESC(group, field, kind, def, lo, hi, doc) \
    {#field, SL__PK_##kind, offsetof(sl_##group##_params, field), (def), (lo), (hi), doc},
#define GROUP_FIELDS(group) static const sl_param_field fields_##group[] __attribute__((unused)) = {SL_PARAMS_##group(FIELD_DESC)};
SL_PARAM_GROUPS(GROUP_FIELDS)
#undef GROUP_FIELDS

#define PARAMS_FIT(group) _Static_assert(sizeof(sl_##group##_params) <= 256, "params struct too large");
SL_PARAM_GROUPS(PARAMS_FIT)
#undef PARAMS_FIT

#define FIELD_COUNT(group) (int)(sizeof fields_##group / sizeof fields_##group[0])

static const sl_op_info op_infos[SL_OP__COUNT] = {
#define SL_OP(E, nm, grp, nin, nout, ins, outs, dc)                                              \
    [SL_OP_##E] = {.op = SL_OP_##E, .name = nm, .group = #grp, .n_in = nin, .n_out = nout,       \
                   .inputs = ins, .outputs = outs, .doc = dc, .fields = fields_##grp,            \
                   .n_fields = FIELD_COUNT(grp), .params_bytes = sizeof(sl_##grp##_params)},
#include "ops.def"
#undef SL_OP
};

const sl_op_info *sl_op_info_get(sl_op op)
{
    if ((int)op < 0 || op >= SL_OP__COUNT)
        return NULL;
    return &op_infos[op];
}

sl_op sl_op_find(const char *name)
{
    for (int i = 0; i < SL_OP__COUNT; i++)
        if (strcmp(op_infos[i].name, name) == 0)
            return (sl_op)i;
    return SL_OP__COUNT;
}

static void field_write(void *params, const sl_param_field *f, double v)
{
    char *p = (char *)params + f->offset;
    if (f->kind == SL_PK_F64)
        memcpy(p, &v, sizeof v);
    else {
        int64_t i = (int64_t)v;
        memcpy(p, &i, sizeof i);
    }
}

double sl_op_params_get(sl_op op, const void *params, const sl_param_field *f)
{
    (void)op;
    const char *p = (const char *)params + f->offset;
    if (f->kind == SL_PK_F64) {
        double v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    int64_t i;
    memcpy(&i, p, sizeof i);
    return (double)i;
}

void sl_op_params_default(sl_op op, void *params)
{
    const sl_op_info *info = sl_op_info_get(op);
    memset(params, 0, info->params_bytes);
    for (int i = 0; i < info->n_fields; i++)
        field_write(params, &info->fields[i], info->fields[i].def);
}

static sl_status check_field(sl_ctx *ctx, const sl_op_info *info, const sl_param_field *f, double v)
{
    if (isnan(v) || v < f->lo || v > f->hi)
        return sl_ctx_fail(ctx, SL_EARG, "%s: parameter '%s' = %g is outside [%g, %g]", info->name, f->name, v,
                           f->lo, f->hi);
    if (f->kind != SL_PK_F64 && v != floor(v))
        return sl_ctx_fail(ctx, SL_EARG, "%s: parameter '%s' = %g must be an integer", info->name, f->name, v);
    return SL_OK;
}

sl_status sl_op_params_set(sl_ctx *ctx, sl_op op, void *params, const char *field, double value)
{
    const sl_op_info *info = sl_op_info_get(op);
    if (!info)
        return sl_ctx_fail(ctx, SL_EARG, "sl_op_params_set: unknown op %d", (int)op);
    for (int i = 0; i < info->n_fields; i++) {
        const sl_param_field *f = &info->fields[i];
        if (strcmp(f->name, field) != 0 || strcmp(f->name, "reserved") == 0)
            continue;
        sl_status s = check_field(ctx, info, f, value);
        if (s)
            return s;
        field_write(params, f, value);
        return SL_OK;
    }
    return sl_ctx_fail(ctx, SL_EARG, "%s: unknown parameter '%s'", info->name, field);
}

/* ---- backends ---- */

static const sl__backend *backend_of(sl_backend_id b)
{
    switch (b) {
    case SL_BACKEND_REF: return &sl__backend_ref;
    case SL_BACKEND_CPU: return &sl__backend_cpu;
    case SL_BACKEND_CUDA: return &sl__backend_cuda;
    default: return NULL;
    }
}

const char *sl_backend_name(sl_backend_id b)
{
    const sl__backend *be = backend_of(b);
    return be ? be->name : "unknown";
}

int sl_backend_from_name(const char *name)
{
    for (int b = 0; b < SL_BACKEND__COUNT; b++)
        if (strcmp(sl_backend_name((sl_backend_id)b), name) == 0)
            return b;
    return -1;
}

int sl_backend_available(sl_backend_id b)
{
    const sl__backend *be = backend_of(b);
    return be && be->available();
}

const char *sl_backend_status(sl_backend_id b)
{
    const sl__backend *be = backend_of(b);
    return be ? be->status() : "unknown backend";
}

int sl_backend_supports(sl_backend_id b, sl_op op)
{
    const sl__backend *be = backend_of(b);
    return be && (int)op >= 0 && op < SL_OP__COUNT && be->kernels[op] != NULL;
}

/* ---- validation and shape inference ---- */

sl__attn_dims sl__attn_dims_of(const sl_tensor *q, const sl_tensor *k, double scale)
{
    sl__attn_dims d;
    d.hq = q->shape[0];
    d.nq = q->shape[1];
    d.d = q->shape[2];
    d.hkv = k->shape[0];
    d.nk = k->shape[1];
    d.group = d.hkv > 0 ? d.hq / d.hkv : 1;
    d.offset = d.nk - d.nq;
    d.scale = scale > 0 ? scale : 1.0 / sqrt((double)(d.d > 0 ? d.d : 1));
    return d;
}

static int is_float(sl_dtype t) { return t == SL_F32 || t == SL_F16 || t == SL_BF16 || t == SL_F64; }

static void input_name(const sl_op_info *info, int i, char *buf, size_t n)
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

static sl_status need_float(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim)
{
    char nm[32], desc[96];
    input_name(info, i, nm, sizeof nm);
    sl_tensor_describe(&in[i], desc, sizeof desc);
    if (!in[i].buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s' is missing", info->name, nm);
    if (!is_float(in[i].dtype))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be f32/f16/bf16/f64, found %s", info->name, nm,
                           desc);
    if (ndim >= 0 && in[i].ndim != ndim)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must have %d dims, found %s", info->name, nm, ndim,
                           desc);
    return SL_OK;
}

static sl_status need_index(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, sl_dtype dt, int ndim)
{
    char nm[32], desc[96];
    input_name(info, i, nm, sizeof nm);
    sl_tensor_describe(&in[i], desc, sizeof desc);
    if (!in[i].buf)
        return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s' is missing", info->name, nm);
    if (in[i].dtype != dt || in[i].ndim != ndim)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be %s with %d dims, found %s", info->name, nm,
                           sl_dtype_name(dt), ndim, desc);
    return SL_OK;
}

static sl_status validate_qkv(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    for (int i = 0; i < 3; i++)
        if ((s = need_float(ctx, info, in, i, 3)))
            return s;
    const sl_tensor *q = &in[0], *k = &in[1], *v = &in[2];
    if (k->shape[0] != v->shape[0] || k->shape[1] != v->shape[1] || k->shape[2] != v->shape[2])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: k is [%lld, %lld, %lld] but v is [%lld, %lld, %lld]", info->name,
                           (long long)k->shape[0], (long long)k->shape[1], (long long)k->shape[2],
                           (long long)v->shape[0], (long long)v->shape[1], (long long)v->shape[2]);
    if (q->shape[2] != k->shape[2])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: q has head_dim %lld, k has %lld", info->name,
                           (long long)q->shape[2], (long long)k->shape[2]);
    if (k->shape[0] == 0 || q->shape[0] % k->shape[0] != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: q has %lld heads, k has %lld; expected a multiple (GQA)",
                           info->name, (long long)q->shape[0], (long long)k->shape[0]);
    if (q->shape[1] > k->shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: q has %lld tokens but k only %lld; expected n_q <= n_k",
                           info->name, (long long)q->shape[1], (long long)k->shape[1]);
    if (q->shape[2] == 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: head_dim is 0", info->name);
    return SL_OK;
}

static sl_status validate_block_mask(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in,
                                     const sl_attn_block_params *p)
{
    sl_status s;
    if ((s = need_index(ctx, info, in, 3, SL_I32, 2)) || (s = need_index(ctx, info, in, 4, SL_I32, 1)) ||
        (s = need_index(ctx, info, in, 5, SL_I32, 1)) || (s = need_index(ctx, info, in, 6, SL_U8, 3)))
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

static sl_status validate_pair(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    if ((s = need_float(ctx, info, in, 0, -1)) || (s = need_float(ctx, info, in, 1, -1)))
        return s;
    if (in[0].ndim != in[1].ndim)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: inputs have %d and %d dims", info->name, in[0].ndim, in[1].ndim);
    for (int d = 0; d < in[0].ndim; d++)
        if (in[0].shape[d] != in[1].shape[d])
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: dim %d is %lld in x and %lld in ref", info->name, d,
                               (long long)in[0].shape[d], (long long)in[1].shape[d]);
    return SL_OK;
}

/* Validates inputs and writes the output shapes. */
static sl_status infer(sl_ctx *ctx, sl_op op, const void *params, const sl_tensor *in, int out_ndim[],
                       int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    const sl_op_info *info = sl_op_info_get(op);
    sl_status s;
    for (int i = 0; i < info->n_out; i++)
        out_dtype[i] = SL_F32;
    switch (op) {
    case SL_OP_ATTN_DENSE:
    case SL_OP_ATTN_BLOCK_SPARSE:
        if ((s = validate_qkv(ctx, info, in)))
            return s;
        if (op == SL_OP_ATTN_BLOCK_SPARSE && (s = validate_block_mask(ctx, info, in, params)))
            return s;
        out_ndim[0] = 3;
        memcpy(out_shape[0], in[0].shape, 3 * sizeof(int64_t));
        out_ndim[1] = 2;
        out_shape[1][0] = in[0].shape[0];
        out_shape[1][1] = in[0].shape[1];
        return SL_OK;
    case SL_OP_METRIC_REL_L2:
    case SL_OP_METRIC_MAX_ABS:
    case SL_OP_METRIC_COSINE:
    case SL_OP_METRIC_RECALL:
        if ((s = validate_pair(ctx, info, in)))
            return s;
        out_dtype[0] = SL_F64;
        out_ndim[0] = 1;
        out_shape[0][0] = (op == SL_OP_METRIC_COSINE || op == SL_OP_METRIC_RECALL) ? 2 : 1;
        if ((op == SL_OP_METRIC_COSINE) && in[0].ndim < 1)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: inputs need at least 1 dim", info->name);
        return SL_OK;
    default:
        return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: no shape rule", info->name);
    }
}

/* Log-sum-exp inputs may hold -inf (a fully masked row); nothing else may. */
static int op_allows_inf(sl_op op) { return op == SL_OP_METRIC_RECALL; }

/* Float inputs become contiguous f32, others contiguous copies of themselves.
 * Returns SL_EARG for NaN in a float input (infinities are allowed only where
 * they carry meaning: a log-sum-exp of a fully masked row is -inf). */
static sl_status normalise_inputs(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, sl_tensor *norm)
{
    for (int i = 0; i < info->n_in; i++) {
        sl_status s;
        int want_f32 = is_float(in[i].dtype);
        if ((want_f32 && in[i].dtype != SL_F32) || !sl_tensor_is_contiguous(&in[i]))
            s = sl_tensor_convert(ctx, &in[i], want_f32 ? SL_F32 : in[i].dtype, &norm[i]);
        else {
            norm[i] = sl_tensor_retain(&in[i]);
            s = SL_OK;
        }
        if (s == SL_OK && want_f32) {
            char nm[32], what[96];
            input_name(info, i, nm, sizeof nm);
            snprintf(what, sizeof what, "%s: input '%s'", info->name, nm);
            s = sl_tensor_check_finite(ctx, &norm[i], what, op_allows_inf(info->op));
        }
        if (s) {
            for (int j = 0; j <= i; j++)
                sl_tensor_release(&norm[j]);
            return s;
        }
    }
    return SL_OK;
}

sl_status sl_op_run(sl_ctx *ctx, sl_backend_id b, sl_op op, const void *params, const sl_tensor *in,
                    sl_tensor *out)
{
    const sl_op_info *info = sl_op_info_get(op);
    if (!info)
        return sl_ctx_fail(ctx, SL_EARG, "sl_op_run: unknown op %d", (int)op);
    const sl__backend *be = backend_of(b);
    if (!be)
        return sl_ctx_fail(ctx, SL_EARG, "%s: unknown backend %d", info->name, (int)b);
    if (!be->available())
        return sl_ctx_fail(ctx, SL_EDEVICE, "%s: backend %s is unavailable: %s", info->name, be->name,
                           be->status());
    if (!be->kernels[op])
        return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: backend %s has no kernel for it", info->name, be->name);

    _Alignas(8) unsigned char defaults[256];
    if (!params) {
        sl_op_params_default(op, defaults);
        params = defaults;
    }
    for (int i = 0; i < info->n_fields; i++) {
        sl_status s = check_field(ctx, info, &info->fields[i], sl_op_params_get(op, params, &info->fields[i]));
        if (s)
            return s;
    }

    int out_ndim[4];
    int64_t out_shape[4][SL_MAX_DIMS];
    sl_dtype out_dtype[4];
    sl_status s = infer(ctx, op, params, in, out_ndim, out_shape, out_dtype);
    if (s)
        return s;

    sl_tensor norm[8] = {{0}};
    if ((s = normalise_inputs(ctx, info, in, norm)))
        return s;
    for (int i = 0; i < info->n_out; i++)
        if ((s = sl_tensor_new(ctx, out_dtype[i], out_ndim[i], out_shape[i], &out[i]))) {
            for (int j = 0; j < i; j++)
                sl_tensor_release(&out[j]);
            goto done;
        }

    size_t scratch_bytes = be->scratch_bytes ? be->scratch_bytes(op, params, norm, ctx->n_threads) : 0;
    void *scratch = NULL;
    if (scratch_bytes && !(scratch = sl_ctx_alloc(ctx, scratch_bytes))) {
        s = SL_ENOMEM;
    } else {
        sl__kargs a = {ctx, op, params, norm, out, scratch, scratch_bytes};
        s = be->kernels[op](&a);
        sl_ctx_dealloc(ctx, scratch, scratch_bytes);
    }
    if (s)
        for (int i = 0; i < info->n_out; i++)
            sl_tensor_release(&out[i]);
done:
    for (int i = 0; i < info->n_in; i++)
        sl_tensor_release(&norm[i]);
    return s;
}

/* ---- cost ---- */

double sl_op_flops(sl_op op, const void *params, const sl_tensor *in)
{
    switch (op) {
    case SL_OP_ATTN_DENSE: {
        const sl_attn_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        double pairs;
        if (p && p->causal) {
            /* row r sees offset + r + 1 keys */
            pairs = (double)d.nq * (double)d.offset + (double)d.nq * (double)(d.nq + 1) / 2.0;
        } else
            pairs = (double)d.nq * (double)d.nk;
        return 4.0 * (double)d.d * pairs * (double)d.hq;
    }
    case SL_OP_ATTN_BLOCK_SPARSE: {
        /* The executor computes every kept block in full (partial blocks are
         * masked after the product), so cost counts clipped block areas. */
        const sl_attn_block_params *p = params;
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        const sl_tensor *rp = &in[3], *ci = &in[4];
        int64_t hm = rp->shape[0], nqb = rp->shape[1] - 1;
        const int32_t *row_ptr = rp->data, *col = ci->data;
        double area = 0;
        for (int64_t h = 0; h < hm; h++)
            for (int64_t r = 0; r < nqb; r++) {
                int64_t rows = d.nq - r * p->bq < p->bq ? d.nq - r * p->bq : p->bq;
                for (int32_t e = row_ptr[h * (nqb + 1) + r]; e < row_ptr[h * (nqb + 1) + r + 1]; e++) {
                    int64_t k0 = (int64_t)col[e] * p->bk;
                    int64_t cols = d.nk - k0 < p->bk ? d.nk - k0 : p->bk;
                    area += (double)rows * (double)cols;
                }
            }
        return 4.0 * (double)d.d * area * (double)(d.hq / hm);
    }
    default: return 0;
    }
}

sl_status sl_attn_dense(sl_ctx *ctx, sl_backend_id b, const sl_attn_params *p, const sl_tensor *q,
                        const sl_tensor *k, const sl_tensor *v, sl_tensor *o, sl_tensor *lse)
{
    sl_tensor in[3] = {*q, *k, *v}, out[2];
    sl_status s = sl_op_run(ctx, b, SL_OP_ATTN_DENSE, p, in, out);
    if (s == SL_OK) {
        *o = out[0];
        *lse = out[1];
    }
    return s;
}
