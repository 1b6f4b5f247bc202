/* op.c — the generic dispatcher: the op table (generated from
 * ops.def/params.def), parameter access, and for every call the same steps:
 * look up the row, check parameter ranges, call the op family's hooks
 * (family.h: shapes, contents, outputs, FLOPs), normalise the inputs to
 * contiguous f32, run the backend's kernel. No op is named here: what is
 * particular to an op lives in core/op_<family>.c. */
#include "family.h"
#include "op_check.h"
#include "parallel.h"

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

#define SL_OP(E, nm, fam, fn, grp, nin, nout, ins, outs, dc) \
    _Static_assert(nin <= SL_OP_MAX_INPUTS && nout <= 4, nm ": too many inputs or outputs");
#include "ops.def"
#undef SL_OP

static const sl_op_info op_infos[SL_OP__COUNT] = {
#define SL_OP(E, nm, fam, fn, grp, nin, nout, ins, outs, dc)                                    \
    [SL_OP_##E] = {.op = SL_OP_##E, .name = nm, .family = #fam, .group = #grp, .n_in = nin,    \
                   .n_out = nout, .inputs = ins, .outputs = outs, .doc = dc, .fields = fields_##grp, \
                   .n_fields = FIELD_COUNT(grp), .params_bytes = sizeof(sl_##grp##_params)},
#include "ops.def"
#undef SL_OP
};

/* The family of every op (its hooks). */
static const sl__family *const op_families[SL_OP__COUNT] = {
#define SL_OP(E, nm, fam, fn, grp, nin, nout, ins, outs, dc) [SL_OP_##E] = &sl__family_##fam,
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

unsigned sl_backend_native_dtypes(sl_backend_id b, sl_op op)
{
    const sl__backend *be = backend_of(b);
    unsigned bits = 1u << SL_F32;
    if (be && be->native_dtypes && (int)op >= 0 && op < SL_OP__COUNT)
        bits |= be->native_dtypes[op] & (1u << SL_F16 | 1u << SL_BF16);
    return bits;
}

/* ---- validation ---- */

/* Inputs named opt.* or state.* may be left out (an empty tensor). */
static int input_optional(const sl_op_info *info, int i)
{
    char nm[32];
    sl__input_name(info, i, nm, sizeof nm);
    return strncmp(nm, "opt.", 4) == 0 || strncmp(nm, "state.", 6) == 0;
}

/* Log-sum-exp inputs may hold -inf (a fully masked row); nothing else may,
 * unless the op's family says otherwise. */
static sl__input_policy input_policy(const sl_op_info *info, int i)
{
    const sl__family *fam = op_families[info->op];
    if (fam->input_policy)
        return fam->input_policy(info, i);
    char nm[32];
    sl__input_name(info, i, nm, sizeof nm);
    return strstr(nm, "lse") ? SL__IN_NEG_INF : SL__IN_FINITE;
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
            sl__input_name(info, i, nm, sizeof nm);
            return sl_ctx_fail(ctx, SL_EARG, "%s: input '%s': holds +inf at flat index %lld, expected finite or -inf",
                               info->name, nm, (long long)j);
        }
    return SL_OK;
}

/* 1 when input i of the op is q, k or v and the backend's kernel reads its
 * dtype natively (be->native_dtypes): it is then not converted to f32. */
static int keeps_dtype(const sl__backend *be, const sl_op_info *info, int i, sl_dtype dt)
{
    if (!be || !be->native_dtypes || dt == SL_F32 || !(be->native_dtypes[info->op] & (1u << dt)))
        return 0;
    char nm[32];
    sl__input_name(info, i, nm, sizeof nm);
    return strcmp(nm, "q") == 0 || strcmp(nm, "k") == 0 || strcmp(nm, "v") == 0;
}

/* The non-finite kinds of an f32 input (sl__f32_nonfinite_run) on the
 * context's threads in 256K-element chunks above 1M elements (issue 20,
 * session 3). */
enum { NF_CHUNK = 1 << 18, NF_MAX_THREADS = 64 };
typedef struct nf_job { const float *x; int64_t n; unsigned kinds[NF_MAX_THREADS]; } nf_job;

static void nf_chunk(int64_t c, void *ud, int thread)
{
    nf_job *J = ud;
    int64_t a = c * NF_CHUNK, e = a + NF_CHUNK < J->n ? a + NF_CHUNK : J->n;
    J->kinds[thread] |= sl__f32_nonfinite_run(J->x + a, e - a);
}

static unsigned nonfinite_kinds(sl_ctx *ctx, const float *x, int64_t n)
{
    int threads = sl_ctx_threads(ctx);
    threads = threads > NF_MAX_THREADS ? NF_MAX_THREADS : threads;
    if (n < 4 * NF_CHUNK || threads <= 1)
        return sl__f32_nonfinite_run(x, n);
    nf_job job = {x, n, {0}};
    if (sl__parallel_for(ctx, (n + NF_CHUNK - 1) / NF_CHUNK, threads, nf_chunk, &job) != SL_OK)
        return sl__f32_nonfinite_run(x, n); /* interrupted: decide here rather than pass unchecked data */
    unsigned k = 0;
    for (int t = 0; t < threads; t++)
        k |= job.kinds[t];
    return k;
}

/* Float inputs become contiguous f32 (q, k, v in a dtype the backend's kernel
 * reads natively stay in it), others contiguous copies of themselves.
 * Returns SL_EARG for NaN in a float input (infinities are allowed only where
 * they carry meaning: a log-sum-exp of a fully masked row is -inf). */
static sl_status normalise_inputs(sl_ctx *ctx, const sl__backend *be, const sl_op_info *info, const sl_tensor *in,
                                  sl_tensor *norm)
{
    for (int i = 0; i < info->n_in; i++) {
        sl_status s;
        if (!in[i].buf && input_optional(info, i)) {
            norm[i] = (sl_tensor){0};
            continue;
        }
        int want_f32 = sl__is_float(in[i].dtype);
        sl__input_policy pol = want_f32 ? input_policy(info, i) : SL__IN_FINITE;
        sl_dtype to = want_f32 && !keeps_dtype(be, info, i, in[i].dtype) ? SL_F32 : in[i].dtype;
        if (in[i].dtype != to || !sl_tensor_is_contiguous(&in[i]))
            s = sl_tensor_convert(ctx, &in[i], to, &norm[i]);
        else {
            norm[i] = sl_tensor_retain(&in[i]);
            s = SL_OK;
        }
        /* one vectorised pass decides the common case (nothing wrong); the
         * element-wise checks below only run to name what is wrong */
        unsigned kinds = ~0u;
        if (s == SL_OK && want_f32 && pol != SL__IN_UNCHECKED && norm[i].dtype == SL_F32 &&
            !sl__scan_get(&norm[i], SL__SCAN_NF, &kinds, NULL)) {
            /* not remembered (unmarked buffer, new view or written since):
             * scan, and remember on a marked buffer (issue 20, session 4) */
            kinds = nonfinite_kinds(ctx, norm[i].data, sl_tensor_numel(&norm[i]));
            ctx->input_scans++;
            sl__scan_put(&norm[i], SL__SCAN_NF, kinds, 0);
        }
        int clean = !(kinds & SL__NF_NAN) && (pol == SL__IN_ANY_INF || !(kinds & SL__NF_PINF)) &&
                    (pol != SL__IN_FINITE || !(kinds & SL__NF_NINF));
        if (s == SL_OK && want_f32 && pol != SL__IN_UNCHECKED && !clean) {
            char nm[32], what[96];
            sl__input_name(info, i, nm, sizeof nm);
            snprintf(what, sizeof what, "%s: input '%s'", info->name, nm);
            s = sl_tensor_check_finite(ctx, &norm[i], what, pol != SL__IN_FINITE);
            if (s == SL_OK && pol == SL__IN_NEG_INF)
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
static sl_status validate(sl_ctx *ctx, const sl__backend *be, const sl_op_info *info, const void *params,
                         const sl_tensor *in, checked *c)
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
    const sl__family *fam = op_families[info->op];
    for (int i = 0; i < info->n_out; i++)
        c->out_dtype[i] = SL_F32;
    sl_status s = fam->infer(ctx, info, params, in, c->out_ndim, c->out_shape, c->out_dtype);
    if (s)
        return s;
    if ((s = normalise_inputs(ctx, be, info, in, c->norm)))
        return s;
    if (fam->check_contents && (s = fam->check_contents(ctx, info, params, c->norm))) {
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
    sl_status s = validate(ctx, NULL, info, params, in, &c);
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
    sl_status s = validate(ctx, be, info, params, in, &c);
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
            s = op_families[op]->check_outputs ? op_families[op]->check_outputs(ctx, info, out) : SL_OK;
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

double sl_op_flops(sl_op op, const void *params, const sl_tensor *in)
{
    const sl_op_info *info = sl_op_info_get(op);
    if (!info)
        return 0;
    _Alignas(8) unsigned char defaults[256];
    if (!params) {
        sl_op_params_default(op, defaults);
        params = defaults;
    }
    return op_families[op]->flops(info, params, in);
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
