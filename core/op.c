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

#define SL_OP(E, nm, grp, nin, nout, ins, outs, dc) \
    _Static_assert(nin <= SL_OP_MAX_INPUTS && nout <= 4, nm ": too many inputs or outputs");
#include "ops.def"
#undef SL_OP

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
    /* Index arrays are validated in place, then read by the kernels: a strided
     * view would be checked on other numbers than the ones executed. */
    if (!sl_tensor_is_contiguous(&in[i]))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be contiguous (a mask's own array, not a view)",
                           info->name, nm);
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

/* Inputs named opt.* or state.* may be left out (an empty tensor). */
static int input_optional(const sl_op_info *info, int i)
{
    char nm[32];
    input_name(info, i, nm, sizeof nm);
    return strncmp(nm, "opt.", 4) == 0 || strncmp(nm, "state.", 6) == 0;
}

static int same_shape(const sl_tensor *t, int ndim, const int64_t *shape)
{
    if (t->ndim != ndim)
        return 0;
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != shape[d])
            return 0;
    return 1;
}

/* Shapes of index lists (contents are checked after normalisation). */
static sl_status validate_idx_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i_rp,
                                    int64_t rows_per_entry)
{
    sl_status s;
    if ((s = need_index(ctx, info, in, i_rp, SL_I32, 2)) || (s = need_index(ctx, info, in, i_rp + 1, SL_I32, 1)))
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
        if ((s = need_float(ctx, info, in, first, 3)))
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
        if ((s = need_float(ctx, info, in, first + 1, 3)) || (s = need_float(ctx, info, in, first + 2, 2)))
            return s;
        int64_t want_o[3] = {hq, n_out, d};
        if (!same_shape(so, 3, want_o) || !same_shape(sl, 2, want_o))
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: state.o and state.lse must be [%lld, %lld, %lld] and [%lld, %lld]",
                               info->name, (long long)hq, (long long)n_out, (long long)d, (long long)hq,
                               (long long)n_out);
    }
    return SL_OK;
}

static sl_status validate_rows_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    if ((s = need_index(ctx, info, in, 3, SL_I32, 2)) || (s = need_index(ctx, info, in, 4, SL_I32, 2)))
        return s;
    int64_t hq = in[0].shape[0], hr = in[3].shape[0];
    if ((hr != 1 && hr != hq) || !same_shape(&in[4], 2, in[3].shape))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: rows and limits must both be [1 or %lld, R], found [%lld, %lld] and [%lld, %lld]",
                           info->name, (long long)hq, (long long)in[3].shape[0], (long long)in[3].shape[1],
                           (long long)in[4].shape[0], (long long)in[4].shape[1]);
    return SL_OK;
}

static sl_status validate_lse_merge(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    for (int i = 0; i < 4; i++)
        if ((s = need_float(ctx, info, in, i, -1)))
            return s;
    const sl_tensor *o1 = &in[0], *l1 = &in[1];
    if (o1->ndim < 1 || l1->ndim != o1->ndim - 1 || !same_shape(l1, l1->ndim, o1->shape))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: lse1 must have o1's shape without its last dim (o1 has %d dims, lse1 %d)",
                           info->name, o1->ndim, l1->ndim);
    if (!same_shape(&in[2], o1->ndim, o1->shape) || !same_shape(&in[3], l1->ndim, l1->shape))
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

/* What validation needs the normalised (contiguous) inputs for. */
static sl_status check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    int64_t nq = in[0].ndim == 3 ? in[0].shape[1] : 0, nk = in[1].ndim == 3 ? in[1].shape[1] : 0;
    switch (info->op) {
    case SL_OP_ATTN_TOKEN_SPARSE: return check_idx_lists(ctx, info, &in[3], &in[4], nk);
    case SL_OP_ATTN_VS_MIXED: return check_idx_lists(ctx, info, &in[7], &in[8], nk);
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
    case SL_OP_CORRECT_RESHAPE:
    case SL_OP_CORRECT_LINEAR_BRANCH:
    case SL_OP_ATTN_POOLED_KV: return sl__correct_ext_check(ctx, info, params, in);
    case SL_OP_SCORE_ROWS: {
        int64_t n = in[2].shape[0];
        for (int64_t i = 0; i < n; i++) {
            int64_t r = ((const int32_t *)in[2].data)[i];
            if (r < 0 || r >= nq)
                return sl_ctx_fail(ctx, SL_EARG, "%s: rows[%lld] = %lld is outside [0, %lld)", info->name,
                                   (long long)i, (long long)r, (long long)nq);
        }
        return SL_OK;
    }
    case SL_OP_SELECT_TOPK:
        if (in[1].buf)
            for (int64_t i = 0; i < in[1].shape[0]; i++)
                if (((const int32_t *)in[1].data)[i] < 0)
                    return sl_ctx_fail(ctx, SL_EARG, "%s: opt.k[%lld] = %d; expected k >= 0", info->name, (long long)i,
                                       ((const int32_t *)in[1].data)[i]);
        return SL_OK;
    case SL_OP_SELECT_TOPP: {
        if (in[1].buf)
            for (int64_t i = 0; i < in[1].shape[0]; i++) {
                float p = ((const float *)in[1].data)[i];
                if (!(p >= 0 && p <= 1))
                    return sl_ctx_fail(ctx, SL_EARG, "%s: opt.p[%lld] = %g; expected p in [0, 1]", info->name,
                                       (long long)i, p);
            }
        const sl_select_topp_params *p = params;
        const float *x = in[0].data;
        int64_t n = sl_tensor_numel(&in[0]);
        for (int64_t i = 0; !p->normalize && i < n; i++)
            if (x[i] < 0 && x[i] != -INFINITY)
                return sl_ctx_fail(ctx, SL_EARG, "%s: x[%lld] = %g; masses must be >= 0 (normalize = 1 for logits)",
                                   info->name, (long long)i, x[i]);
        return SL_OK;
    }
    case SL_OP_POOL_TOKENS:
    case SL_OP_ATTN_BUCKET: return sl__token_score_check_contents(ctx, info->op, in);
    case SL_OP_GATHER_ROWS: return sl__stripe_check_contents(ctx, info->op, in);
    default: return SL_OK;
    }
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
    if ((s = need_float(ctx, info, in, 0, 3)) || (s = need_float(ctx, info, in, 1, 2)) ||
        (s = need_float(ctx, info, in, 2, 3)) || (s = need_float(ctx, info, in, 3, 2)))
        return s;
    int64_t h = in[0].shape[0], n = in[0].shape[1], d = in[0].shape[2], s_p, g, t;
    sl_correct_delta_layout(n, p->gamma, p->tail, &s_p, &g, &t);
    int64_t want_l[2] = {h, n}, want_or[3] = {h, g + t, d}, want_lr[2] = {h, g + t};
    if (!same_shape(&in[1], 2, want_l))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: lse_sparse must be [%lld, %lld] (o_sparse's heads and rows), found [%lld, %lld]",
                           info->name, (long long)h, (long long)n, (long long)in[1].shape[0], (long long)in[1].shape[1]);
    if (!same_shape(&in[2], 3, want_or) || !same_shape(&in[3], 2, want_lr))
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "%s: o_rows and lse_rows must be [%lld, %lld, %lld] and [%lld, %lld] (%lld sampled rows + %lld tail rows "
                           "for n = %lld, gamma = %lld, tail = %lld), found [%lld, %lld, %lld] and [%lld, %lld]",
                           info->name, (long long)h, (long long)(g + t), (long long)d, (long long)h, (long long)(g + t),
                           (long long)g, (long long)t, (long long)n, (long long)p->gamma, (long long)p->tail,
                           (long long)in[2].shape[0], (long long)in[2].shape[1], (long long)in[2].shape[2],
                           (long long)in[3].shape[0], (long long)in[3].shape[1]);
    return SL_OK;
}

/* q [Hq, Nq, D] and k [Hkv, Nk, D] of the estimators (no v). */
static sl_status validate_qk(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in)
{
    sl_status s;
    if ((s = need_float(ctx, info, in, 0, 3)) || (s = need_float(ctx, info, in, 1, 3)))
        return s;
    const sl_tensor *q = &in[0], *k = &in[1];
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

/* x of a reduction: [H, R, C]; of a selector: [H, C] or [H, R, C]. */
static sl_status validate_scores(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int allow_2d)
{
    sl_status s;
    if ((s = need_float(ctx, info, in, 0, -1)))
        return s;
    if (in[0].ndim != 3 && !(allow_2d && in[0].ndim == 2)) {
        char desc[96];
        sl_tensor_describe(&in[0], desc, sizeof desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input 'x' must be [H, R, C]%s, found %s", info->name,
                           allow_2d ? " or [H, C]" : "", desc);
    }
    return SL_OK;
}

/* The optional per-head budget of a selector: 1 dim, one entry per head. */
static sl_status validate_head_budget(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, sl_dtype dt)
{
    if (!in[1].buf)
        return SL_OK;
    char desc[96];
    sl_tensor_describe(&in[1], desc, sizeof desc);
    int ok = in[1].ndim == 1 && in[1].shape[0] == in[0].shape[0] &&
             (dt == SL_I32 ? in[1].dtype == SL_I32 : is_float(in[1].dtype));
    if (!ok)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be %s [%lld] (one per head of x), found %s", info->name,
                           info->op == SL_OP_SELECT_TOPK ? "opt.k" : "opt.p", dt == SL_I32 ? "i32" : "float",
                           (long long)in[0].shape[0], desc);
    return SL_OK;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Shapes of the issue-4 ops (estimators, reductions, selectors). */
static sl_status infer_score(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                             int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    sl_op op = info->op;
    out_ndim[0] = 3;
    switch (op) {
    case SL_OP_SCORE_POOLED:
    case SL_OP_SCORE_EXACT: {
        if ((s = validate_qk(ctx, info, in)))
            return s;
        int64_t bq = op == SL_OP_SCORE_POOLED ? ((const sl_score_pooled_params *)params)->bq
                                              : ((const sl_score_exact_params *)params)->bq;
        int64_t bk = op == SL_OP_SCORE_POOLED ? ((const sl_score_pooled_params *)params)->bk
                                              : ((const sl_score_exact_params *)params)->bk;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = ceil_div(in[0].shape[1], bq);
        out_shape[0][2] = ceil_div(in[1].shape[1], bk);
        return SL_OK;
    }
    case SL_OP_SCORE_LAST_Q:
    case SL_OP_SCORE_ROWS: {
        if ((s = validate_qk(ctx, info, in)))
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
    case SL_OP_REDUCE_COLUMNS:
    case SL_OP_REDUCE_DIAGONALS:
        if ((s = validate_scores(ctx, info, in, 0)))
            return s;
        out_ndim[0] = 2;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = in[0].shape[2];
        return SL_OK;
    case SL_OP_REDUCE_BLOCK: {
        if ((s = validate_scores(ctx, info, in, 0)))
            return s;
        const sl_reduce_block_params *p = params;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = ceil_div(in[0].shape[1], p->br);
        out_shape[0][2] = ceil_div(in[0].shape[2], p->bc);
        return SL_OK;
    }
    case SL_OP_REDUCE_HEADS: {
        if ((s = validate_scores(ctx, info, in, 0)))
            return s;
        const sl_reduce_heads_params *p = params;
        int64_t h = in[0].shape[0], g = p->group ? p->group : h;
        if (h == 0 || h % g != 0)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: x has %lld heads; expected a positive multiple of group %lld",
                               info->name, (long long)h, (long long)g);
        out_shape[0][0] = h / g;
        out_shape[0][1] = in[0].shape[1];
        out_shape[0][2] = in[0].shape[2];
        return SL_OK;
    }
    case SL_OP_SELECT_TOPK:
    case SL_OP_SELECT_TOPP:
    case SL_OP_SELECT_THRESHOLD:
        if ((s = validate_scores(ctx, info, in, 1)))
            return s;
        if (op != SL_OP_SELECT_THRESHOLD &&
            (s = validate_head_budget(ctx, info, in, op == SL_OP_SELECT_TOPK ? SL_I32 : SL_F32)))
            return s;
        out_dtype[0] = SL_U8;
        out_ndim[0] = in[0].ndim;
        memcpy(out_shape[0], in[0].shape, sizeof out_shape[0]);
        return SL_OK;
    default:
        return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: no shape rule", info->name);
    }
}

/* A float input of exactly this shape (ndim 2 or 3). */
static sl_status need_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim, const int64_t *shape)
{
    sl_status s = need_float(ctx, info, in, i, ndim);
    if (s)
        return s;
    if (!same_shape(&in[i], ndim, shape)) {
        char nm[32], desc[96];
        input_name(info, i, nm, sizeof nm);
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
static sl_status validate_qk_at(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int iq, int ik)
{
    sl_status s;
    if ((s = need_float(ctx, info, in, iq, 3)) || (s = need_float(ctx, info, in, ik, 3)))
        return s;
    const sl_tensor *q = &in[iq], *k = &in[ik];
    if (q->shape[2] != k->shape[2])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: head_dim is %lld in one input and %lld in the other", info->name,
                           (long long)q->shape[2], (long long)k->shape[2]);
    if (k->shape[0] == 0 || q->shape[0] % k->shape[0] != 0)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %lld query heads and %lld kv heads; expected a multiple (GQA)",
                           info->name, (long long)q->shape[0], (long long)k->shape[0]);
    if (q->shape[1] > k->shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %lld query rows but only %lld keys; expected n_q <= n_k", info->name,
                           (long long)q->shape[1], (long long)k->shape[1]);
    return SL_OK;
}

static sl_status validate_correct(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    sl_status s;
    switch (info->op) {
    case SL_OP_CORRECT_RECTIFY: {
        const sl_correct_rectify_params *p = params;
        sl_attn_block_params pb = {.bq = p->bq, .bk = p->bk, .scale = p->scale, .pv_skip = 0};
        if ((s = validate_qkv(ctx, info, in)) || (s = validate_block_mask(ctx, info, in, &pb)))
            return s;
        return need_shape(ctx, info, in, 7, 3, in[0].shape);
    }
    case SL_OP_CORRECT_COMPENSATE: {
        if ((s = need_float(ctx, info, in, 0, 3)))
            return s;
        int64_t hn[2] = {in[0].shape[0], in[0].shape[1]};
        if ((s = need_shape(ctx, info, in, 1, 2, hn)) || (s = need_shape(ctx, info, in, 2, 2, hn)) ||
            (s = validate_qk_at(ctx, info, in, 0, 3)))
            return s;
        return SL_OK;
    }
    case SL_OP_CORRECT_SMOOTH_K: {
        if ((s = validate_qk_at(ctx, info, in, 0, 1)))
            return s;
        int64_t hn[2] = {in[0].shape[0], in[0].shape[1]};
        return in[2].buf ? need_shape(ctx, info, in, 2, 2, hn) : SL_OK;
    }
    case SL_OP_CORRECT_LEPE: {
        if ((s = validate_qk_at(ctx, info, in, 0, 1)))
            return s;
        if (!in[2].buf)
            return SL_OK;
        const sl_correct_lepe_params *p = params;
        if ((s = need_float(ctx, info, in, 2, 3)))
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
    case SL_OP_ATTN_TOKEN_SPARSE:
    case SL_OP_ATTN_VS_MIXED:
    case SL_OP_ATTN_ROWS: {
        if ((s = validate_qkv(ctx, info, in)))
            return s;
        int first_opt = 5;
        int64_t n_out = in[0].shape[1];
        if (op == SL_OP_ATTN_TOKEN_SPARSE)
            s = validate_idx_shape(ctx, info, in, 3, ((const sl_attn_token_params *)params)->rows_per_entry);
        else if (op == SL_OP_ATTN_VS_MIXED) {
            const sl_attn_vs_params *pv = params;
            sl_attn_block_params pb = {.bq = pv->bq, .bk = pv->bk, .scale = pv->scale, .pv_skip = 0};
            if (!(s = validate_block_mask(ctx, info, in, &pb)))
                s = validate_idx_shape(ctx, info, in, 7, pv->bq);
            first_opt = 9;
        } else {
            s = validate_rows_shape(ctx, info, in);
            n_out = in[3].shape[1];
        }
        if (s || (s = validate_options(ctx, info, in, first_opt, n_out)))
            return s;
        out_ndim[0] = 3;
        out_shape[0][0] = in[0].shape[0];
        out_shape[0][1] = n_out;
        out_shape[0][2] = in[0].shape[2];
        out_ndim[1] = 2;
        out_shape[1][0] = in[0].shape[0];
        out_shape[1][1] = n_out;
        return SL_OK;
    }
    case SL_OP_ATTN_LSE_MERGE:
        if ((s = validate_lse_merge(ctx, info, in)))
            return s;
        out_ndim[0] = in[0].ndim;
        memcpy(out_shape[0], in[0].shape, sizeof out_shape[0]);
        out_ndim[1] = in[1].ndim;
        memcpy(out_shape[1], in[1].shape, sizeof out_shape[1]);
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
    case SL_OP_ATTN_LINEAR:
    case SL_OP_ATTN_POOLED_KV:
        if ((s = validate_qkv(ctx, info, in)))
            return s;
        return sl__correct_ext_infer(ctx, info, params, in, out_ndim, out_shape, out_dtype);
    case SL_OP_CORRECT_RESHAPE:
    case SL_OP_CORRECT_CACHE_REUSE:
    case SL_OP_CORRECT_LINEAR_BRANCH:
        return sl__correct_ext_infer(ctx, info, params, in, out_ndim, out_shape, out_dtype);
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
    case SL_OP_POOL_TOKENS:
    case SL_OP_SCORE_LOWBIT:
    case SL_OP_SCORE_HASH:
    case SL_OP_ATTN_BUCKET: return sl__token_score_infer(ctx, op, params, in, out_ndim, out_shape, out_dtype);
    case SL_OP_SCORE_ANTIDIAG:
    case SL_OP_SCORE_STRIDED:
    case SL_OP_SCORE_ANCHOR:
    case SL_OP_GATHER_ROWS: return sl__stripe_infer(ctx, op, params, in, out_ndim, out_shape, out_dtype);
    default:
        return infer_score(ctx, info, params, in, out_ndim, out_shape, out_dtype);
    }
}

/* Log-sum-exp inputs may hold -inf (a fully masked row); nothing else may.
 * metric.recall's inputs are log-sum-exps too. */
static int input_allows_inf(const sl_op_info *info, int i)
{
    char nm[32];
    input_name(info, i, nm, sizeof nm);
    switch (info->op) {
    case SL_OP_REDUCE_COLUMNS:
    case SL_OP_REDUCE_DIAGONALS:
    case SL_OP_REDUCE_BLOCK:
    case SL_OP_REDUCE_HEADS:
    case SL_OP_SELECT_TOPK:
    case SL_OP_SELECT_TOPP:
    case SL_OP_SELECT_THRESHOLD:
        if (i == 0)
            return 1; /* scores of the causal future are -inf */
        break;
    default: break;
    }
    return info->op == SL_OP_METRIC_RECALL || strstr(nm, "lse") != NULL;
}

/* A log-sum-exp of +inf has no attention behind it; the executors would turn
 * it into NaN. */
static sl_status reject_pos_inf(sl_ctx *ctx, const sl_op_info *info, int i, const sl_tensor *t)
{
    const float *x = t->data;
    int64_t n = sl_tensor_numel(t);
    for (int64_t j = 0; j < n; j++)
        if (x[j] == INFINITY) {
            char nm[32];
            input_name(info, i, nm, sizeof nm);
            return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s': holds +inf at flat index %lld, expected finite or -inf",
                               info->name, nm, (long long)j);
        }
    return SL_OK;
}

/* attn.token_sparse reads only the K/V rows its lists name: scanning the
 * whole cache for NaN would cost more than the gather itself (decode). Its
 * kernels let a NaN in a row they read reach the output instead, and the
 * outputs are scanned after the run. */
static int lazy_nan_check(sl_op op, int i) { return op == SL_OP_ATTN_TOKEN_SPARSE && (i == 1 || i == 2); }

static sl_status check_outputs(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *out)
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
                                   "%s: input 'k' or 'v' holds NaN or an infinity in a row the index lists read",
                                   info->name);
    }
    return SL_OK;
}

/* Float inputs become contiguous f32, others contiguous copies of themselves.
 * Returns SL_EARG for NaN in a float input (infinities are allowed only where
 * they carry meaning: a log-sum-exp of a fully masked row is -inf). */
static sl_status normalise_inputs(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, sl_tensor *norm)
{
    for (int i = 0; i < info->n_in; i++) {
        sl_status s;
        if (!in[i].buf && input_optional(info, i)) {
            norm[i] = (sl_tensor){0};
            continue;
        }
        int want_f32 = is_float(in[i].dtype);
        if ((want_f32 && in[i].dtype != SL_F32) || !sl_tensor_is_contiguous(&in[i]))
            s = sl_tensor_convert(ctx, &in[i], want_f32 ? SL_F32 : in[i].dtype, &norm[i]);
        else {
            norm[i] = sl_tensor_retain(&in[i]);
            s = SL_OK;
        }
        if (s == SL_OK && want_f32 && !lazy_nan_check(info->op, i)) {
            char nm[32], what[96];
            input_name(info, i, nm, sizeof nm);
            snprintf(what, sizeof what, "%s: input '%s'", info->name, nm);
            s = sl_tensor_check_finite(ctx, &norm[i], what, input_allows_inf(info, i));
            if (s == SL_OK && input_allows_inf(info, i) && info->op != SL_OP_METRIC_RECALL)
                s = reject_pos_inf(ctx, info, i, &norm[i]);
        }
        if (s) {
            for (int j = 0; j <= i; j++)
                sl_tensor_release(&norm[j]);
            return s;
        }
    }
    return SL_OK;
}

/* What the checks before a kernel produce: the parameters (defaults when the
 * caller gave none), the output shapes, and contiguous f32 copies of the
 * inputs (norm), which the caller releases. */
typedef struct checked {
    _Alignas(8) unsigned char defaults[256];
    const void *params;
    int out_ndim[4];
    int64_t out_shape[4][SL_MAX_DIMS];
    sl_dtype out_dtype[4];
    sl_tensor norm[SL_OP_MAX_INPUTS];
} checked;

/* Everything checked before a kernel runs: parameter ranges, shapes and
 * dtypes, then the normalised inputs' contents (NaN, index ranges). On
 * failure c->norm is empty. */
static sl_status validate(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in, checked *c)
{
    memset(c->norm, 0, sizeof c->norm);
    if (!params) {
        sl_op_params_default(info->op, c->defaults);
        params = c->defaults;
    }
    c->params = params;
    for (int i = 0; i < info->n_fields; i++) {
        sl_status s = check_field(ctx, info, &info->fields[i], sl_op_params_get(info->op, params, &info->fields[i]));
        if (s)
            return s;
    }
    sl_status s = infer(ctx, info->op, params, in, c->out_ndim, c->out_shape, c->out_dtype);
    if (s)
        return s;
    if ((s = normalise_inputs(ctx, info, in, c->norm)))
        return s;
    if ((s = check_contents(ctx, info, params, c->norm))) {
        for (int i = 0; i < info->n_in; i++)
            sl_tensor_release(&c->norm[i]);
        return s;
    }
    return SL_OK;
}

sl_status sl_op_check(sl_ctx *ctx, sl_op op, const void *params, const sl_tensor *in)
{
    const sl_op_info *info = sl_op_info_get(op);
    if (!info)
        return sl_ctx_fail(ctx, SL_EARG, "sl_op_check: unknown op %d", (int)op);
    checked c;
    sl_status s = validate(ctx, info, params, in, &c);
    for (int i = 0; s == SL_OK && i < info->n_in; i++)
        sl_tensor_release(&c.norm[i]);
    return s;
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

    checked c;
    sl_status s = validate(ctx, info, params, in, &c);
    if (s)
        return s;
    params = c.params;
    const sl_tensor *norm = c.norm;
    for (int i = 0; i < info->n_out; i++)
        if ((s = sl_tensor_new(ctx, c.out_dtype[i], c.out_ndim[i], c.out_shape[i], &out[i]))) {
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
        if (s == SL_OK)
            s = check_outputs(ctx, info, out);
        sl_ctx_dealloc(ctx, scratch, scratch_bytes);
    }
    if (s)
        for (int i = 0; i < info->n_out; i++)
            sl_tensor_release(&out[i]);
done:
    for (int i = 0; i < info->n_in; i++)
        sl_tensor_release(&c.norm[i]);
    return s;
}

/* ---- cost ---- */

/* Element i (row-major order) of an i32 tensor of 1 or 2 dims, through its strides. */
static int64_t i32_at(const sl_tensor *t, int64_t i)
{
    const int32_t *x = t->data;
    if (t->ndim == 2)
        return x[(i / t->shape[1]) * t->stride[0] + (i % t->shape[1]) * t->stride[1]];
    return x[i * t->stride[0]];
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
            pairs += (double)rows * (double)(i32_at(rp, h * (n_e + 1) + r + 1) - i32_at(rp, h * (n_e + 1) + r));
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
            for (int64_t e = i32_at(rp, h * (nqb + 1) + r); e < i32_at(rp, h * (nqb + 1) + r + 1); e++) {
                int64_t k0 = i32_at(ci, e) * bk;
                int64_t cols = d->nk - k0 < bk ? d->nk - k0 : bk;
                area += (double)rows * (double)cols;
            }
        }
    return area * (double)(d->hq / hm);
}

double sl_op_flops(sl_op op, const void *params, const sl_tensor *in)
{
    _Alignas(8) unsigned char defaults[256];
    if (!params && sl_op_info_get(op)) {
        sl_op_params_default(op, defaults);
        params = defaults;
    }
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
         * masked after the product), so cost counts clipped block areas;
         * P·V products that pv_skip leaves out are still counted. */
        const sl_attn_block_params *p = params ? params : &(sl_attn_block_params){.bq = 64, .bk = 64};
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        return 4.0 * (double)d.d * block_area(&d, &in[3], &in[4], p->bq, p->bk);
    }
    case SL_OP_ATTN_TOKEN_SPARSE: {
        const sl_attn_token_params *p = params ? params : &(sl_attn_token_params){.rows_per_entry = 1};
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        return 4.0 * (double)d.d * idx_pairs(&d, &in[3], p->rows_per_entry);
    }
    case SL_OP_ATTN_VS_MIXED: {
        /* Gathered columns are computed for every row of their query block,
         * also where the block part already keeps them (masked after). */
        const sl_attn_vs_params *p = params ? params : &(sl_attn_vs_params){.bq = 64, .bk = 64};
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        return 4.0 * (double)d.d * (block_area(&d, &in[3], &in[4], p->bq, p->bk) + idx_pairs(&d, &in[7], p->bq));
    }
    case SL_OP_ATTN_ROWS: {
        sl__attn_dims d = sl__attn_dims_of(&in[0], &in[1], 0);
        double keys = 0;
        int64_t n = sl_tensor_numel(&in[4]);
        for (int64_t i = 0; i < n; i++)
            keys += (double)i32_at(&in[4], i);
        return in[4].shape[0] > 0 ? 4.0 * (double)d.d * keys * (double)(d.hq / in[4].shape[0]) : 0;
    }
    case SL_OP_ATTN_LSE_MERGE:
        /* two multiplies and an add per output element */
        return 3.0 * (double)sl_tensor_numel(&in[0]);
    case SL_OP_CORRECT_RESHAPE:
    case SL_OP_CORRECT_CACHE_REUSE:
    case SL_OP_CORRECT_LINEAR_BRANCH:
    case SL_OP_ATTN_LINEAR:
    case SL_OP_ATTN_POOLED_KV: return sl__correct_ext_flops(op, params, in);
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
            int64_t r = op == SL_OP_SCORE_LAST_Q ? d.nq - n + t : i32_at(&in[2], t);
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
    case SL_OP_REDUCE_COLUMNS:
    case SL_OP_REDUCE_DIAGONALS:
    case SL_OP_REDUCE_BLOCK:
    case SL_OP_REDUCE_HEADS:
    case SL_OP_SELECT_THRESHOLD:
        /* one add or compare per input element */
        return (double)sl_tensor_numel(&in[0]);
    case SL_OP_SELECT_TOPK:
    case SL_OP_SELECT_TOPP: {
        /* a comparison sort of each row: C log2 C compares */
        const sl_tensor *x = &in[0];
        double c = x->ndim ? (double)x->shape[x->ndim - 1] : 1;
        return (double)sl_tensor_numel(x) * (c > 1 ? log2(c) : 1.0);
    }
    case SL_OP_POOL_TOKENS:
    case SL_OP_SCORE_LOWBIT:
    case SL_OP_SCORE_HASH:
    case SL_OP_ATTN_BUCKET: return sl__token_score_flops(op, params, in);
    case SL_OP_SCORE_ANTIDIAG:
    case SL_OP_SCORE_STRIDED:
    case SL_OP_SCORE_ANCHOR:
    case SL_OP_GATHER_ROWS: return sl__stripe_flops(op, params, in);
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
