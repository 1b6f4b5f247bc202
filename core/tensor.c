/* tensor.c — refcounted buffers, value tensors, element access, conversion, seeded RNG. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static sl_status check_shape(sl_ctx *ctx, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > SL_MAX_DIMS)
        return sl_ctx_fail(ctx, SL_ESHAPE, "sl_tensor_new: expected 0..%d dims, found %d", SL_MAX_DIMS, ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return sl_ctx_fail(ctx, SL_ESHAPE, "sl_tensor_new: dim %d is %lld, expected >= 0", i,
                               (long long)shape[i]);
    return SL_OK;
}

sl_status sl_tensor_new(sl_ctx *ctx, sl_dtype dtype, int ndim, const int64_t *shape, sl_tensor *out)
{
    memset(out, 0, sizeof *out);
    sl_status s = check_shape(ctx, ndim, shape);
    if (s)
        return s;
    if ((int)dtype < 0 || dtype >= SL_DTYPE__COUNT)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tensor_new: unknown dtype %d", (int)dtype);
    /* The product of the non-zero dims bounds every stride, even when a zero
     * dim makes the tensor empty. */
    int64_t numel = 1, span = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] > 0 && span > INT64_MAX / 16 / shape[i])
            return sl_ctx_fail(ctx, SL_ESHAPE, "sl_tensor_new: shape too large (over 2^59 elements)");
        span *= shape[i] > 0 ? shape[i] : 1;
        numel *= shape[i];
    }
    size_t bytes = (size_t)numel * sl_dtype_size(dtype);
    sl_buffer *b = sl_ctx_alloc(ctx, sizeof *b);
    if (!b)
        return SL_ENOMEM;
    memset(b, 0, sizeof *b); /* version 0, nothing remembered, not marked */
    b->data = sl_ctx_alloc(ctx, bytes);
    if (!b->data) {
        sl_ctx_dealloc(ctx, b, sizeof *b);
        return SL_ENOMEM;
    }
    b->ctx = ctx;
    b->refcount = 1;
    b->bytes = bytes;
    out->buf = b;
    out->data = b->data;
    out->dtype = dtype;
    out->ndim = ndim;
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        out->shape[i] = shape[i];
        out->stride[i] = st;
        st *= shape[i];
    }
    return SL_OK;
}

sl_status sl_tensor_zeros(sl_ctx *ctx, sl_dtype dtype, int ndim, const int64_t *shape, sl_tensor *out)
{
    sl_status s = sl_tensor_new(ctx, dtype, ndim, shape, out);
    if (s == SL_OK)
        memset(out->buf->data, 0, out->buf->bytes);
    return s;
}

sl_tensor sl_tensor_retain(const sl_tensor *t)
{
    if (t->buf)
        t->buf->refcount++;
    return *t;
}

void sl_tensor_release(sl_tensor *t)
{
    if (!t || !t->buf) {
        if (t)
            memset(t, 0, sizeof *t);
        return;
    }
    sl_buffer *b = t->buf;
    if (--b->refcount == 0) {
        sl_ctx *ctx = b->ctx;
        sl_ctx_dealloc(ctx, b->data, b->bytes);
        sl_ctx_dealloc(ctx, b, sizeof *b);
    }
    memset(t, 0, sizeof *t);
}

int64_t sl_tensor_numel(const sl_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t sl_tensor_nbytes(const sl_tensor *t) { return (size_t)sl_tensor_numel(t) * sl_dtype_size(t->dtype); }

int sl_tensor_is_contiguous(const sl_tensor *t)
{
    int64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != st)
            return 0;
        st *= t->shape[i];
    }
    return 1;
}

sl_status sl_tensor_narrow(sl_ctx *ctx, const sl_tensor *t, int dim, int64_t start, int64_t len, sl_tensor *out)
{
    if (dim < 0 || dim >= t->ndim)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tensor_narrow: dim %d out of range for %d dims", dim, t->ndim);
    if (start < 0 || len < 0 || start > t->shape[dim] || len > t->shape[dim] - start)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tensor_narrow: start %lld, length %lld outside dim %d of size %lld",
                           (long long)start, (long long)len, dim, (long long)t->shape[dim]);
    *out = sl_tensor_retain(t);
    out->data = (char *)t->data + (size_t)(start * t->stride[dim]) * sl_dtype_size(t->dtype);
    out->shape[dim] = len;
    return SL_OK;
}

static int64_t offset_of(const sl_tensor *t, const int64_t *idx)
{
    int64_t off = 0;
    for (int i = 0; i < t->ndim; i++)
        off += idx[i] * t->stride[i];
    return off;
}

static double load(const void *data, sl_dtype dt, int64_t off)
{
    switch (dt) {
    case SL_F32: return ((const float *)data)[off];
    case SL_F16: return sl_f16_to_f32(((const uint16_t *)data)[off]);
    case SL_BF16: return sl_bf16_to_f32(((const uint16_t *)data)[off]);
    case SL_F64: return ((const double *)data)[off];
    case SL_I32: return ((const int32_t *)data)[off];
    case SL_U8: return ((const uint8_t *)data)[off];
    default: return 0;
    }
}

static void store(void *data, sl_dtype dt, int64_t off, double v)
{
    switch (dt) {
    case SL_F32: ((float *)data)[off] = (float)v; break;
    case SL_F16: ((uint16_t *)data)[off] = sl_f32_to_f16((float)v); break;
    case SL_BF16: ((uint16_t *)data)[off] = sl_f32_to_bf16((float)v); break;
    case SL_F64: ((double *)data)[off] = v; break;
    /* Out-of-range values saturate (a C cast would be undefined); callers
     * that take user input reject them first (sl_tensor_set_checked). */
    case SL_I32: ((int32_t *)data)[off] = v != v ? 0 : v <= INT32_MIN ? INT32_MIN : v >= INT32_MAX ? INT32_MAX : (int32_t)v; break;
    case SL_U8: ((uint8_t *)data)[off] = v != v || v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)v; break;
    default: break;
    }
}

double sl_tensor_get(const sl_tensor *t, const int64_t *idx) { return load(t->data, t->dtype, offset_of(t, idx)); }

void sl_tensor_set(sl_tensor *t, const int64_t *idx, double v)
{
    store(t->data, t->dtype, offset_of(t, idx), v);
    sl_tensor_wrote(t);
}

/* ---- write versions and remembered scans (issue 20, session 4) ---- */

void sl_tensor_cache_checks(sl_tensor *t)
{
    if (t && t->buf)
        t->buf->cache_scans = 1;
}

void sl_tensor_wrote(sl_tensor *t)
{
    if (t && t->buf)
        t->buf->version++;
}

uint64_t sl_tensor_version(const sl_tensor *t) { return t && t->buf ? t->buf->version : 0; }

static sl__scan_entry *scan_find(const sl_tensor *t)
{
    sl_buffer *b = t->buf;
    if (!b || !b->cache_scans || !sl_tensor_is_contiguous(t))
        return NULL;
    int64_t n = sl_tensor_numel(t);
    for (int i = 0; i < SL__SCAN_ENTRIES; i++) {
        sl__scan_entry *e = &b->scan[i];
        if (e->data == t->data && e->numel == n && e->dtype == (int)t->dtype && e->version == b->version)
            return e;
    }
    return NULL;
}

int sl__scan_get(const sl_tensor *t, int what, unsigned *kinds, double *m)
{
    const sl__scan_entry *e = scan_find(t);
    if (!e)
        return 0;
    if (what == SL__SCAN_NF && e->have_nf) {
        *kinds = e->nf_kinds;
        return 1;
    }
    if (what == SL__SCAN_MA && e->have_ma) {
        *m = e->max_abs;
        return 1;
    }
    return 0;
}

void sl__scan_put(const sl_tensor *t, int what, unsigned kinds, double m)
{
    sl_buffer *b = t->buf;
    if (!b || !b->cache_scans || !sl_tensor_is_contiguous(t))
        return;
    sl__scan_entry *e = scan_find(t);
    if (!e) { /* a new view, or the buffer was written: take the next slot */
        e = &b->scan[b->scan_next++ % SL__SCAN_ENTRIES];
        *e = (sl__scan_entry){.data = t->data, .numel = sl_tensor_numel(t), .version = b->version,
                              .dtype = (int)t->dtype};
    }
    if (what == SL__SCAN_NF) {
        e->nf_kinds = kinds;
        e->have_nf = 1;
    } else {
        e->max_abs = m;
        e->have_ma = 1;
    }
}

static int is_float(sl_dtype d) { return d == SL_F32 || d == SL_F16 || d == SL_BF16 || d == SL_F64; }

/* Walks every element of t in row-major order, calling fn with its offset. */
static void for_each(const sl_tensor *t, void (*fn)(const sl_tensor *, int64_t off, int64_t linear, void *), void *ud)
{
    int64_t n = sl_tensor_numel(t);
    int64_t idx[SL_MAX_DIMS] = {0};
    for (int64_t lin = 0; lin < n; lin++) {
        fn(t, offset_of(t, idx), lin, ud);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
    }
}

typedef struct convert_ud { sl_tensor *dst; } convert_ud;

static void convert_one(const sl_tensor *src, int64_t off, int64_t lin, void *ud)
{
    sl_tensor *dst = ((convert_ud *)ud)->dst;
    if (src->dtype == SL_F32 && dst->dtype == SL_F32)
        ((float *)dst->data)[lin] = ((const float *)src->data)[off];
    else
        store(dst->data, dst->dtype, lin, load(src->data, src->dtype, off));
}

sl_status sl_tensor_convert(sl_ctx *ctx, const sl_tensor *t, sl_dtype dtype, sl_tensor *out)
{
    if (is_float(t->dtype) != is_float(dtype))
        return sl_ctx_fail(ctx, SL_EARG, "sl_tensor_convert: cannot convert %s to %s", sl_dtype_name(t->dtype),
                           sl_dtype_name(dtype));
    sl_status s = sl_tensor_new(ctx, dtype, t->ndim, t->shape, out);
    if (s)
        return s;
    if (t->dtype == dtype && sl_tensor_is_contiguous(t)) {
        memcpy(out->data, t->data, sl_tensor_nbytes(t));
        return SL_OK;
    }
    convert_ud ud = {out};
    for_each(t, convert_one, &ud);
    return SL_OK;
}

typedef struct finite_ud { int allow_inf; int64_t bad; double bad_value; } finite_ud;

static void finite_one(const sl_tensor *t, int64_t off, int64_t lin, void *ud)
{
    finite_ud *f = ud;
    if (f->bad >= 0)
        return;
    double v = load(t->data, t->dtype, off);
    if (isnan(v) || (!f->allow_inf && isinf(v))) {
        f->bad = lin;
        f->bad_value = v;
    }
}

/* ---- the non-finite scan of op inputs (issue 20, session 3) ----
 * One pass over the bits tells a clean input (no exponent all ones); only
 * then a second finds the kinds (NaN: exponent all ones and a mantissa;
 * ±inf: the two exact patterns); U independent integer lanes vectorise at
 * -O2. op.c runs it on the context's threads for large inputs. */
unsigned sl__f32_nonfinite_run(const float *x, int64_t n)
{
    enum { U = 16 };
    /* the common case first: one test per element (is the exponent all
     * ones?); the kinds only when something is there */
    uint32_t any[U] = {0}, some = 0;
    int64_t i = 0;
    for (; i + U <= n; i += U)
        for (int u = 0; u < U; u++) {
            uint32_t b;
            memcpy(&b, x + i + u, sizeof b);
            any[u] |= (b & 0x7f800000u) == 0x7f800000u;
        }
    for (; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, sizeof b);
        some |= (b & 0x7f800000u) == 0x7f800000u;
    }
    for (int u = 0; u < U; u++)
        some |= any[u];
    if (!some)
        return 0;
    uint32_t nan[U] = {0}, pinf[U] = {0}, ninf[U] = {0};
    i = 0;
    for (; i + U <= n; i += U)
        for (int u = 0; u < U; u++) {
            uint32_t b;
            memcpy(&b, x + i + u, sizeof b);
            nan[u] |= (b & 0x7fffffffu) > 0x7f800000u;
            pinf[u] |= b == 0x7f800000u;
            ninf[u] |= b == 0xff800000u;
        }
    unsigned k = 0;
    for (; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, sizeof b);
        k |= ((b & 0x7fffffffu) > 0x7f800000u ? SL__NF_NAN : 0u) | (b == 0x7f800000u ? SL__NF_PINF : 0u) |
             (b == 0xff800000u ? SL__NF_NINF : 0u);
    }
    for (int u = 0; u < U; u++)
        k |= (nan[u] ? SL__NF_NAN : 0u) | (pinf[u] ? SL__NF_PINF : 0u) | (ninf[u] ? SL__NF_NINF : 0u);
    return k;
}

sl_status sl_tensor_check_finite(sl_ctx *ctx, const sl_tensor *t, const char *what, int allow_inf)
{
    if (!is_float(t->dtype))
        return SL_OK;
    finite_ud f = {allow_inf, -1, 0};
    if (t->dtype == SL_F32 && sl_tensor_is_contiguous(t)) {
        /* The common case in one pass over the bits (sl__f32_nonfinite_run);
         * the element-wise walk below only runs to name a bad element. A
         * float sum (x - x is NaN only for non-finite x) would not
         * vectorise, since the compiler may not reorder it (the bench found
         * the scan a tenth of a sparse call at n = 16384). */
        unsigned k = sl__f32_nonfinite_run(t->data, sl_tensor_numel(t));
        if (!(k & SL__NF_NAN) && (allow_inf || !(k & (SL__NF_PINF | SL__NF_NINF))))
            return SL_OK;
    }
    for_each(t, finite_one, &f);
    if (f.bad >= 0)
        return sl_ctx_fail(ctx, SL_EARG, "%s: holds %s at flat index %lld, expected finite values", what,
                           isnan(f.bad_value) ? "NaN" : "an infinity", (long long)f.bad);
    return SL_OK;
}

void sl_tensor_describe(const sl_tensor *t, char *buf, size_t n)
{
    size_t used = (size_t)snprintf(buf, n, "%s[", sl_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (used < n)
        snprintf(buf + used, n - used, "]");
}

/* ---- xoshiro256** seeded by splitmix64 ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void sl_rng_seed(sl_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t sl_rng_next(sl_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double sl_rng_uniform(sl_rng *r) { return (double)(sl_rng_next(r) >> 11) * 0x1.0p-53; }

double sl_rng_normal(sl_rng *r)
{
    /* Box-Muller; one draw per call keeps the stream simple to reproduce. */
    double u1 = sl_rng_uniform(r), u2 = sl_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

sl_status sl_tensor_fill_normal(sl_ctx *ctx, sl_tensor *t, sl_rng *r, double std)
{
    if (!is_float(t->dtype))
        return sl_ctx_fail(ctx, SL_EARG, "sl_tensor_fill_normal: expected a float tensor, found %s",
                           sl_dtype_name(t->dtype));
    int64_t n = sl_tensor_numel(t);
    int64_t idx[SL_MAX_DIMS] = {0};
    for (int64_t lin = 0; lin < n; lin++) {
        store(t->data, t->dtype, offset_of(t, idx), std * sl_rng_normal(r));
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
    }
    sl_tensor_wrote(t);
    return SL_OK;
}
