/* test_tensor.c — Check suite for core/tensor.c and core/ctx.c: shapes and
 * strides (scalars, zero-size dims, rejected and overflowing shapes),
 * refcounting counted through the guarded allocator, narrow views, dtype
 * conversion against the formats' own rounding, element access through
 * strides, describe, check_finite, the seeded RNG against its distribution,
 * failure of every allocation, and the context's error message. */
#include "testutil.h"

/* ck_assert records its location on every pass (a write to the parent);
 * loops over many values check this way instead. */
#define CHECK(cond, ...)               \
    do {                               \
        if (!(cond))                   \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

#define N_OF(a) (int)(sizeof(a) / sizeof((a)[0]))

/* Element sizes from the formats themselves, not from sl_dtype_size. */
static size_t format_bytes(sl_dtype t)
{
    switch (t) {
    case SL_F32: return 4;
    case SL_F16: return 2;
    case SL_BF16: return 2;
    case SL_F64: return 8;
    case SL_I32: return 4;
    case SL_U8: return 1;
    default: return 0;
    }
}

static const sl_dtype ALL_DTYPES[] = {SL_F32, SL_F16, SL_BF16, SL_F64, SL_I32, SL_U8};
static const sl_dtype FLOAT_DTYPES[] = {SL_F32, SL_F16, SL_BF16, SL_F64};

/* Advances a row-major multi-index; returns 0 after the last one. */
static int next_index(int ndim, const int64_t *shape, int64_t *idx)
{
    for (int d = ndim - 1; d >= 0; d--) {
        if (++idx[d] < shape[d])
            return 1;
        idx[d] = 0;
    }
    return 0;
}

static void assert_msg_has(const sl_ctx *ctx, const char *needle)
{
    ck_assert_msg(strstr(sl_ctx_error(ctx), needle) != NULL, "message \"%s\" lacks \"%s\"", sl_ctx_error(ctx),
                  needle);
}

/* ---- shapes and strides ----------------------------------------------------- */

typedef struct shape_case { int ndim; int64_t shape[SL_MAX_DIMS]; } shape_case;

static const shape_case SHAPES[] = {
    {0, {0}},          {1, {1}},         {1, {17}},        {2, {2, 3}},      {2, {5, 1}},
    {3, {3, 1, 7}},    {4, {2, 3, 4, 5}}, {4, {1, 1, 1, 1}}, {3, {3, 0, 5}},  {1, {0}},
    {4, {0, 0, 2, 9}}, {2, {1, 0}},
};

START_TEST(test_new_shapes_and_strides)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    for (int c = 0; c < N_OF(SHAPES); c++)
        for (int d = 0; d < N_OF(ALL_DTYPES); d++)
            for (int zeros = 0; zeros < 2; zeros++) {
                const shape_case *sc = &SHAPES[c];
                sl_dtype dt = ALL_DTYPES[d];
                sl_tensor t;
                sl_status s = zeros ? sl_tensor_zeros(ctx, dt, sc->ndim, sc->shape, &t)
                                    : sl_tensor_new(ctx, dt, sc->ndim, sc->shape, &t);
                ck_assert_msg(s == SL_OK, "case %d %s: %s", c, sl_dtype_name(dt), sl_ctx_error(ctx));
                ck_assert_ptr_nonnull(t.buf);
                ck_assert_int_eq(t.dtype, dt);
                ck_assert_int_eq(t.ndim, sc->ndim);
                int64_t numel = 1;
                for (int i = 0; i < sc->ndim; i++)
                    numel *= sc->shape[i];
                /* Row-major: the stride of a dim is the product of the dims after it. */
                for (int i = 0; i < sc->ndim; i++) {
                    int64_t st = 1;
                    for (int k = i + 1; k < sc->ndim; k++)
                        st *= sc->shape[k];
                    ck_assert_int_eq(t.shape[i], sc->shape[i]);
                    ck_assert_msg(t.stride[i] == st, "case %d dim %d: stride %lld, expected %lld", c, i,
                                  (long long)t.stride[i], (long long)st);
                }
                ck_assert_int_eq(sl_tensor_numel(&t), numel);
                ck_assert_uint_eq(sl_tensor_nbytes(&t), (size_t)numel * format_bytes(dt));
                ck_assert(sl_tensor_is_contiguous(&t));
                size_t bytes = (size_t)numel * format_bytes(dt);
                if (zeros) {
                    const unsigned char *p = t.data;
                    for (size_t i = 0; i < bytes; i++)
                        CHECK(p[i] == 0, "case %d %s: byte %zu of zeros is %d", c, sl_dtype_name(dt), i, p[i]);
                }
                /* Writing every byte finds an allocation that is too small
                 * (the guarded allocator's sentinels). */
                if (bytes)
                    memset(t.data, 0x5c, bytes);
                sl_tensor_release(&t);
            }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_scalar_holds_a_value)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 11);
    for (int d = 0; d < N_OF(FLOAT_DTYPES); d++) {
        sl_tensor t;
        ck_assert_int_eq(sl_tensor_new(ctx, FLOAT_DTYPES[d], 0, NULL, &t), SL_OK);
        ck_assert_int_eq(sl_tensor_numel(&t), 1);
        ck_assert_uint_eq(sl_tensor_nbytes(&t), format_bytes(FLOAT_DTYPES[d]));
        /* A small integer plus a half is exact in every float format. */
        double v = (double)(int)(sl_rng_uniform(&rng) * 100) + 0.5;
        sl_tensor_set(&t, NULL, v);
        ck_assert_double_eq(sl_tensor_get(&t, NULL), v);
        sl_tensor_release(&t);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_new_rejects_bad_shapes)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    /* A negative dim at every position. */
    for (int pos = 0; pos < 4; pos++)
        for (int zeros = 0; zeros < 2; zeros++) {
            int64_t shape[4] = {2, 3, 4, 5};
            shape[pos] = -1 - pos;
            sl_tensor t;
            sl_ctx_clear_error(ctx);
            sl_status s = zeros ? sl_tensor_zeros(ctx, SL_F32, 4, shape, &t) : sl_tensor_new(ctx, SL_F32, 4, shape, &t);
            ck_assert_int_eq(s, SL_ESHAPE);
            assert_msg_has(ctx, "sl_tensor_");
            if (!zeros)
                assert_msg_has(ctx, "sl_tensor_new");
            ck_assert_ptr_null(t.buf);
            ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
        }
    /* Too many dims, and a negative count. */
    int64_t six[6] = {1, 2, 3, 4, 5, 6};
    const int bad_ndim[] = {SL_MAX_DIMS + 1, 6, -1};
    for (int i = 0; i < N_OF(bad_ndim); i++) {
        sl_tensor t;
        sl_ctx_clear_error(ctx);
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, bad_ndim[i], six, &t), SL_ESHAPE);
        assert_msg_has(ctx, "sl_tensor_new");
        ck_assert_ptr_null(t.buf);
    }
    /* Shapes whose element count or strides overflow 64 bits: rejected before
     * any arithmetic wraps (UBSan watches this test in `make asan`). */
    static const shape_case HUGE[] = {
        {3, {0, INT64_C(1) << 62, INT64_C(1) << 62}},
        {2, {INT64_C(1) << 40, INT64_C(1) << 40}},
        {3, {INT64_C(1) << 31, INT64_C(1) << 31, INT64_C(1) << 31}},
        {1, {INT64_MAX}},
        {4, {INT64_C(1) << 16, INT64_C(1) << 16, INT64_C(1) << 16, INT64_C(1) << 16}},
        {2, {0, INT64_MAX}},
        {4, {INT64_MAX, INT64_MAX, INT64_MAX, 0}},
    };
    for (int c = 0; c < N_OF(HUGE); c++)
        for (int d = 0; d < N_OF(ALL_DTYPES); d++) {
            sl_tensor t;
            sl_ctx_clear_error(ctx);
            sl_status s = sl_tensor_new(ctx, ALL_DTYPES[d], HUGE[c].ndim, HUGE[c].shape, &t);
            ck_assert_msg(s == SL_ESHAPE || s == SL_EARG, "huge case %d %s: %s", c, sl_dtype_name(ALL_DTYPES[d]),
                          sl_status_name(s));
            assert_msg_has(ctx, "sl_tensor_new");
            ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
        }
    /* An unknown dtype. */
    int64_t two[1] = {2};
    sl_tensor t;
    sl_ctx_clear_error(ctx);
    ck_assert_int_eq(sl_tensor_new(ctx, (sl_dtype)SL_DTYPE__COUNT, 1, two, &t), SL_EARG);
    assert_msg_has(ctx, "sl_tensor_new");
    ck_assert_int_eq(sl_tensor_new(ctx, (sl_dtype)-1, 1, two, &t), SL_EARG);
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- refcounting -------------------------------------------------------------- */

START_TEST(test_refcount_keeps_buffer_alive)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 21);
    int64_t shape[2] = {6, 9};
    sl_tensor t;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F64, 2, shape, &t), SL_OK);
    size_t live = sl_ctx_live_allocs(ctx);
    ck_assert_uint_gt(live, 0);
    ck_assert_int_eq(sl_tensor_fill_normal(ctx, &t, &rng, 1.0), SL_OK);
    double want[54];
    memcpy(want, t.data, sizeof want);

    /* Five more references, released in an order different from taking them. */
    sl_tensor refs[5];
    for (int i = 0; i < 5; i++) {
        refs[i] = sl_tensor_retain(&t);
        ck_assert_ptr_eq(refs[i].data, t.data);
        ck_assert_ptr_eq(refs[i].buf, t.buf);
        ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
    }
    sl_tensor_release(&t);
    ck_assert_ptr_null(t.buf);
    ck_assert_ptr_null(t.data);
    const int order[5] = {3, 0, 4, 1, 2};
    for (int k = 0; k < 5; k++) {
        /* Every remaining reference still reads the values and can write. */
        for (int m = k; m < 5; m++) {
            const sl_tensor *r = &refs[order[m]];
            CHECK(memcmp(r->data, want, sizeof want) == 0, "reference %d lost its values", order[m]);
        }
        ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
        ((double *)refs[order[k]].data)[53] = want[53];
        sl_tensor_release(&refs[order[k]]);
    }
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
    ck_assert_uint_eq(sl_ctx_live_bytes(ctx), 0);

    /* Releasing NULL, a zeroed tensor and a released tensor again: no-ops. */
    sl_tensor_release(NULL);
    sl_tensor empty;
    memset(&empty, 0, sizeof empty);
    sl_tensor_release(&empty);
    ck_assert_ptr_null(empty.buf);
    sl_tensor_release(&refs[0]);
    sl_tensor again = sl_tensor_retain(&empty);
    ck_assert_ptr_null(again.buf);
    sl_tensor_release(&again);
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- narrow ---------------------------------------------------------------------- */

START_TEST(test_narrow_shares_memory)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 31);
    int64_t shape[3] = {5, 7, 4};
    sl_tensor p;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 3, shape, &p), SL_OK);
    sl_tensor_fill_normal(ctx, &p, &rng, 1.0);
    size_t live = sl_ctx_live_allocs(ctx);
    for (int dim = 0; dim < 3; dim++) {
        int64_t start = 1 + dim % 2, len = shape[dim] - start - 1;
        sl_tensor v;
        ck_assert_int_eq(sl_tensor_narrow(ctx, &p, dim, start, len, &v), SL_OK);
        ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
        for (int d = 0; d < 3; d++)
            ck_assert_int_eq(v.shape[d], d == dim ? len : shape[d]);
        ck_assert_int_eq(sl_tensor_is_contiguous(&v), dim == 0);
        /* Every element of the view is the parent's element shifted by start. */
        int64_t idx[3] = {0, 0, 0};
        do {
            int64_t pidx[3] = {idx[0], idx[1], idx[2]};
            pidx[dim] += start;
            CHECK(sl_tensor_get(&v, idx) == sl_tensor_get(&p, pidx), "dim %d: view and parent differ", dim);
        } while (next_index(3, v.shape, idx));
        /* Writing through the view changes the parent there and nowhere else. */
        int64_t w[3] = {v.shape[0] - 1, v.shape[1] - 1, v.shape[2] - 1};
        int64_t pw[3] = {w[0], w[1], w[2]};
        pw[dim] += start;
        double before = sl_tensor_get(&p, pw);
        sl_tensor_set(&v, w, before + 100.0);
        ck_assert_double_eq(sl_tensor_get(&p, pw), (double)(float)(before + 100.0));
        int64_t first[3] = {0, 0, 0}, pfirst[3] = {0, 0, 0};
        pfirst[dim] = start;
        double b0 = sl_tensor_get(&p, pfirst);
        sl_tensor_set(&p, pfirst, b0 - 50.0);
        ck_assert_double_eq(sl_tensor_get(&v, first), (double)(float)(b0 - 50.0));
        sl_tensor_release(&v);
    }
    /* A view keeps the buffer after the parent is released. */
    sl_tensor v, vv;
    ck_assert_int_eq(sl_tensor_narrow(ctx, &p, 1, 2, 3, &v), SL_OK);
    ck_assert_int_eq(sl_tensor_narrow(ctx, &v, 2, 1, 2, &vv), SL_OK);
    float keep = ((float *)p.data)[0 * 28 + 3 * 4 + 2];
    int64_t at[3] = {0, 1, 1};
    sl_tensor_release(&p);
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
    ck_assert_double_eq(sl_tensor_get(&vv, at), keep);
    sl_tensor_release(&v);
    ck_assert_double_eq(sl_tensor_get(&vv, at), keep);
    sl_tensor_release(&vv);
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_narrow_bounds)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    int64_t shape[2] = {4, 6};
    sl_tensor p, v;
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 2, shape, &p), SL_OK);
    size_t live = sl_ctx_live_allocs(ctx);
    struct { int dim; int64_t start, len; } bad[] = {
        {-1, 0, 1}, {2, 0, 1}, {0, -1, 2}, {0, 0, -1}, {0, 0, 5}, {1, 3, 4}, {1, 7, 0}, {0, 4, 1},
    };
    for (int i = 0; i < N_OF(bad); i++) {
        sl_ctx_clear_error(ctx);
        ck_assert_msg(sl_tensor_narrow(ctx, &p, bad[i].dim, bad[i].start, bad[i].len, &v) == SL_EARG, "case %d", i);
        assert_msg_has(ctx, "sl_tensor_narrow");
        ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
    }
    /* The edges that are inside: an empty view at either end, the whole dim. */
    ck_assert_int_eq(sl_tensor_narrow(ctx, &p, 1, 6, 0, &v), SL_OK);
    ck_assert_int_eq(sl_tensor_numel(&v), 0);
    sl_tensor_release(&v);
    ck_assert_int_eq(sl_tensor_narrow(ctx, &p, 0, 0, 4, &v), SL_OK);
    ck_assert_int_eq(sl_tensor_numel(&v), 24);
    sl_tensor_release(&v);
    /* A scalar has no dim to narrow. */
    sl_tensor s;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 0, NULL, &s), SL_OK);
    ck_assert_int_eq(sl_tensor_narrow(ctx, &s, 0, 0, 1, &v), SL_EARG);
    sl_tensor_release(&s);
    sl_tensor_release(&p);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* start + len must not wrap: [1, 1 + INT64_MAX) is outside a dim of 6. */
START_TEST(test_narrow_rejects_overflowing_bounds)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    int64_t shape[1] = {6};
    sl_tensor p, v;
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 1, shape, &p), SL_OK);
    const int64_t starts[] = {1, 5, INT64_MAX};
    const int64_t lens[] = {INT64_MAX, INT64_MAX - 2, 1};
    for (int i = 0; i < N_OF(starts); i++) {
        memset(&v, 0, sizeof v);
        sl_status s = sl_tensor_narrow(ctx, &p, 0, starts[i], lens[i], &v);
        ck_assert_msg(s == SL_EARG, "narrow(start %lld, len %lld) gave %s with a view of %lld elements",
                      (long long)starts[i], (long long)lens[i], sl_status_name(s), (long long)v.shape[0]);
    }
    sl_tensor_release(&p);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_narrow_then_convert)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 41);
    int64_t shape[4] = {3, 5, 6, 7};
    for (int sd = 0; sd < N_OF(FLOAT_DTYPES); sd++)
        for (int dd = 0; dd < N_OF(FLOAT_DTYPES); dd++) {
            sl_dtype src = FLOAT_DTYPES[sd], dst = FLOAT_DTYPES[dd];
            sl_tensor p, a, b, c;
            ck_assert_int_eq(sl_tensor_new(ctx, src, 4, shape, &p), SL_OK);
            sl_tensor_fill_normal(ctx, &p, &rng, 2.0);
            /* Narrow two dims so the view is strided in more than one place. */
            ck_assert_int_eq(sl_tensor_narrow(ctx, &p, 1, 1, 3, &a), SL_OK);
            ck_assert_int_eq(sl_tensor_narrow(ctx, &a, 3, 2, 4, &b), SL_OK);
            ck_assert(!sl_tensor_is_contiguous(&b));
            ck_assert_int_eq(sl_tensor_convert(ctx, &b, dst, &c), SL_OK);
            ck_assert_ptr_ne(c.buf, p.buf);
            ck_assert(sl_tensor_is_contiguous(&c));
            ck_assert_int_eq(c.dtype, dst);
            const int64_t want_shape[4] = {3, 3, 6, 4}, want_stride[4] = {72, 24, 4, 1};
            for (int d = 0; d < 4; d++) {
                ck_assert_int_eq(c.shape[d], want_shape[d]);
                ck_assert_int_eq(c.stride[d], want_stride[d]);
            }
            /* Each element equals the parent's element, read independently
             * and rounded to dst by the element store of a scalar. */
            sl_tensor one;
            ck_assert_int_eq(sl_tensor_new(ctx, dst, 0, NULL, &one), SL_OK);
            int64_t idx[4] = {0, 0, 0, 0};
            int64_t lin = 0;
            do {
                int64_t pidx[4] = {idx[0], idx[1] + 1, idx[2], idx[3] + 2};
                sl_tensor_set(&one, NULL, sl_tensor_get(&p, pidx));
                double want = sl_tensor_get(&one, NULL);
                int64_t cidx[4];
                int64_t rest = lin;
                for (int d = 3; d >= 0; d--) {
                    cidx[d] = rest % want_shape[d];
                    rest /= want_shape[d];
                }
                CHECK(sl_tensor_get(&c, cidx) == want, "%s->%s: element %lld is %g, expected %g", sl_dtype_name(src),
                      sl_dtype_name(dst), (long long)lin, sl_tensor_get(&c, cidx), want);
                lin++;
            } while (next_index(4, b.shape, idx));
            ck_assert_int_eq(lin, 3 * 3 * 6 * 4);
            sl_tensor_release(&one);
            sl_tensor_release(&c);
            sl_tensor_release(&b);
            sl_tensor_release(&a);
            sl_tensor_release(&p);
        }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- conversion ---------------------------------------------------------------------- */

/* The value of a format with `bits` significant bits, smallest normal
 * exponent emin (x = 1.f * 2^emin) and largest finite value fmax, nearest to
 * x with ties to even: independent math from the format's definition. */
static double nearest_in_format(double x, int bits, int emin, double fmax)
{
    if (x == 0 || isnan(x) || isinf(x))
        return x;
    int e;
    frexp(fabs(x), &e); /* |x| in [2^(e-1), 2^e) */
    double ulp = ldexp(1.0, e - bits);
    double sub = ldexp(1.0, emin - bits + 1); /* spacing of subnormals */
    if (ulp < sub)
        ulp = sub;
    double r = nearbyint(x / ulp) * ulp; /* default rounding: to nearest, ties to even */
    /* Past the largest finite value by half a unit of the top binade or more: infinity. */
    double top_ulp = ldexp(1.0, (int)(log2(fmax) + 1) - bits);
    if (fabs(x) >= fmax + top_ulp / 2)
        return copysign(INFINITY, x);
    return r;
}

static double f16_nearest(double x) { return nearest_in_format(x, 11, -14, 65504.0); }
static double bf16_nearest(double x) { return nearest_in_format(x, 8, -126, 0x1.fep127); }

/* f16 and bf16 bit patterns decoded from the format definitions. */
static double f16_decode(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 31 ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return sign ? -v : v;
}

static double bf16_decode(uint16_t h)
{
    int sign = h >> 15, e = (h >> 7) & 255, m = h & 127;
    double v = e == 255 ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
    return sign ? -v : v;
}

/* Fills an f32 tensor of n values spread over magnitudes 2^lo .. 2^hi, with
 * some exact ties of the narrower formats mixed in. */
static void fill_spread(sl_tensor *t, sl_rng *r, int lo, int hi)
{
    float *x = t->data;
    int64_t n = sl_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        int k = lo + (int)(sl_rng_uniform(r) * (hi - lo));
        double sign = sl_rng_uniform(r) < 0.5 ? -1 : 1;
        if (i % 7 == 3) /* an f16 tie: 11 significant bits then exactly one half */
            x[i] = (float)(sign * ldexp(1024 + (int)(sl_rng_uniform(r) * 1024) + 0.5, k - 11));
        else if (i % 7 == 5) /* a bf16 tie */
            x[i] = (float)(sign * ldexp(128 + (int)(sl_rng_uniform(r) * 128) + 0.5, k - 8));
        else
            x[i] = (float)(sign * ldexp(1.0 + sl_rng_uniform(r), k));
    }
}

START_TEST(test_convert_f32_to_half_formats)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 51);
    int64_t shape[2] = {40, 250};
    sl_tensor x, h, b, hx, bx;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, shape, &x), SL_OK);
    /* f16 normals run from 2^-14 to 65504; subnormals down to 2^-24. */
    fill_spread(&x, &rng, -26, 16);
    ck_assert_int_eq(sl_tensor_convert(ctx, &x, SL_F16, &h), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &x, SL_BF16, &b), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &h, SL_F32, &hx), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &b, SL_F32, &bx), SL_OK);
    int64_t n = sl_tensor_numel(&x);
    int checked_normal = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = tu_at(&x, i), yh = tu_at(&hx, i), yb = tu_at(&bx, i);
        double wh = f16_nearest(v), wb = bf16_nearest(v);
        CHECK(yh == wh, "f16(%.9g) = %.9g, nearest is %.9g", v, yh, wh);
        CHECK(yb == wb, "bf16(%.9g) = %.9g, nearest is %.9g", v, yb, wb);
        /* The formats' unit roundoff bounds the relative error in the normal range. */
        if (fabs(v) >= 0x1p-14 && fabs(v) <= 65504) {
            CHECK(fabs(yh - v) <= 0x1p-11 * fabs(v), "f16 error at %.9g: %.3g", v, fabs(yh - v));
            checked_normal++;
        }
        CHECK(fabs(yb - v) <= 0x1p-8 * fabs(v), "bf16 error at %.9g: %.3g", v, fabs(yb - v));
        /* Converting the rounded value again changes nothing. */
        CHECK(sl_f32_to_f16((float)yh) == ((uint16_t *)h.data)[i], "f16 of %.9g not stable", yh);
    }
    ck_assert_int_gt(checked_normal, (int)(n / 2));
    sl_tensor ts[] = {x, h, b, hx, bx};
    for (int i = 0; i < N_OF(ts); i++)
        sl_tensor_release(&ts[i]);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Every f16 and every bf16 bit pattern: to f32 exactly as the format
 * defines it, and back to the same bits (NaN stays NaN). */
START_TEST(test_convert_every_half_pattern)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    int64_t shape[1] = {65536};
    for (int fmt = 0; fmt < 2; fmt++) {
        sl_dtype dt = fmt ? SL_BF16 : SL_F16;
        sl_tensor h, x, back, d, back2;
        ck_assert_int_eq(sl_tensor_new(ctx, dt, 1, shape, &h), SL_OK);
        uint16_t *hb = h.data;
        for (int i = 0; i < 65536; i++)
            hb[i] = (uint16_t)i;
        ck_assert_int_eq(sl_tensor_convert(ctx, &h, SL_F32, &x), SL_OK);
        ck_assert_int_eq(sl_tensor_convert(ctx, &x, dt, &back), SL_OK);
        ck_assert_int_eq(sl_tensor_convert(ctx, &h, SL_F64, &d), SL_OK);
        ck_assert_int_eq(sl_tensor_convert(ctx, &d, dt, &back2), SL_OK);
        const uint16_t *bb = back.data, *bb2 = back2.data;
        for (int i = 0; i < 65536; i++) {
            double want = fmt ? bf16_decode((uint16_t)i) : f16_decode((uint16_t)i);
            double got = tu_at(&x, i), got64 = ((const double *)d.data)[i];
            if (isnan(want)) {
                CHECK(isnan(got) && isnan(got64), "%s 0x%04x: expected NaN, found %g", sl_dtype_name(dt), i, got);
                uint16_t expo = fmt ? 0x7f80 : 0x7c00, mant = fmt ? 0x007f : 0x03ff;
                CHECK((bb[i] & expo) == expo && (bb[i] & mant), "%s 0x%04x: NaN came back as 0x%04x", sl_dtype_name(dt),
                      i, bb[i]);
                CHECK((bb2[i] & expo) == expo && (bb2[i] & mant), "%s 0x%04x: NaN via f64 came back as 0x%04x",
                      sl_dtype_name(dt), i, bb2[i]);
                continue;
            }
            CHECK(got == want && signbit(got) == signbit(want), "%s 0x%04x: %.9g, expected %.9g", sl_dtype_name(dt),
                  i, got, want);
            CHECK(got64 == want, "%s 0x%04x to f64: %.9g, expected %.9g", sl_dtype_name(dt), i, got64, want);
            CHECK(bb[i] == i, "%s 0x%04x came back as 0x%04x", sl_dtype_name(dt), i, bb[i]);
            CHECK(bb2[i] == i, "%s 0x%04x via f64 came back as 0x%04x", sl_dtype_name(dt), i, bb2[i]);
        }
        sl_tensor ts[] = {h, x, back, d, back2};
        for (int i = 0; i < N_OF(ts); i++)
            sl_tensor_release(&ts[i]);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_convert_round_trips)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 61);
    int64_t shape[3] = {4, 30, 50};
    int64_t n = 4 * 30 * 50;
    /* f64 source: f32 keeps 24 bits, f16 11, bf16 8. f64 -> f16 may round
     * twice (through f32), which adds at most 2^-24 relative. */
    sl_tensor x;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F64, 3, shape, &x), SL_OK);
    double *xv = x.data;
    for (int64_t i = 0; i < n; i++)
        xv[i] = (sl_rng_uniform(&rng) < 0.5 ? -1 : 1) * ldexp(1.0 + sl_rng_uniform(&rng), -13 + (int)(sl_rng_uniform(&rng) * 28));
    const struct { sl_dtype via; double rel; } trips[] = {
        {SL_F32, 0x1p-24},
        {SL_F16, 0x1p-11 + 0x1p-23},
        {SL_BF16, 0x1p-8 + 0x1p-23},
        {SL_F64, 0},
    };
    for (int k = 0; k < N_OF(trips); k++) {
        sl_tensor y, z;
        ck_assert_int_eq(sl_tensor_convert(ctx, &x, trips[k].via, &y), SL_OK);
        ck_assert_int_eq(sl_tensor_convert(ctx, &y, SL_F64, &z), SL_OK);
        const double *zv = z.data;
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
            double err = fabs(zv[i] - xv[i]) / fabs(xv[i]);
            CHECK(err <= trips[k].rel, "f64 -> %s -> f64 at %.17g: relative error %.3g over %.3g",
                  sl_dtype_name(trips[k].via), xv[i], err, trips[k].rel);
            worst = fmax(worst, err);
        }
        /* The bound is tight enough to matter: rounding really happened
         * (except through f64, which is exact). */
        if (trips[k].rel > 0)
            ck_assert_double_gt(worst, trips[k].rel / 8);
        sl_tensor_release(&y);
        sl_tensor_release(&z);
    }
    /* Narrow formats to wider ones are exact: f16 -> f32 -> f64 -> f16. */
    sl_tensor h, a, b, c;
    ck_assert_int_eq(sl_tensor_convert(ctx, &x, SL_F16, &h), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &h, SL_F32, &a), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &a, SL_F64, &b), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &b, SL_F16, &c), SL_OK);
    ck_assert(memcmp(h.data, c.data, (size_t)n * 2) == 0);
    /* f16 -> bf16 is the bf16 nearest to the f16 value. */
    sl_tensor hb;
    ck_assert_int_eq(sl_tensor_convert(ctx, &h, SL_BF16, &hb), SL_OK);
    for (int64_t i = 0; i < n; i++) {
        double hv = f16_decode(((uint16_t *)h.data)[i]), bv = bf16_decode(((uint16_t *)hb.data)[i]);
        CHECK(bv == bf16_nearest(hv), "f16 %.9g -> bf16 %.9g, nearest %.9g", hv, bv, bf16_nearest(hv));
    }
    sl_tensor ts[] = {x, h, a, b, c, hb};
    for (int i = 0; i < N_OF(ts); i++)
        sl_tensor_release(&ts[i]);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_convert_refuses_int_float)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    int64_t shape[2] = {3, 4};
    for (int s = 0; s < N_OF(ALL_DTYPES); s++) {
        sl_tensor t;
        ck_assert_int_eq(sl_tensor_zeros(ctx, ALL_DTYPES[s], 2, shape, &t), SL_OK);
        size_t live = sl_ctx_live_allocs(ctx);
        int s_float = ALL_DTYPES[s] <= SL_F64;
        for (int d = 0; d < N_OF(ALL_DTYPES); d++) {
            int d_float = ALL_DTYPES[d] <= SL_F64;
            if (s_float == d_float)
                continue;
            sl_tensor out;
            sl_ctx_clear_error(ctx);
            ck_assert_msg(sl_tensor_convert(ctx, &t, ALL_DTYPES[d], &out) == SL_EARG, "%s -> %s accepted",
                          sl_dtype_name(ALL_DTYPES[s]), sl_dtype_name(ALL_DTYPES[d]));
            assert_msg_has(ctx, "sl_tensor_convert");
            assert_msg_has(ctx, sl_dtype_name(ALL_DTYPES[s]));
            assert_msg_has(ctx, sl_dtype_name(ALL_DTYPES[d]));
            ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
        }
        sl_tensor_release(&t);
    }
    /* Integers convert among themselves: u8 values fit in i32 and back. */
    sl_rng rng;
    sl_rng_seed(&rng, 71);
    sl_tensor u, i32, u2;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 2, shape, &u), SL_OK);
    for (int i = 0; i < 12; i++)
        ((uint8_t *)u.data)[i] = (uint8_t)(1 + sl_rng_next(&rng) % 255);
    ck_assert_int_eq(sl_tensor_convert(ctx, &u, SL_I32, &i32), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &i32, SL_U8, &u2), SL_OK);
    for (int i = 0; i < 12; i++) {
        ck_assert_int_eq(((int32_t *)i32.data)[i], ((uint8_t *)u.data)[i]);
        ck_assert_int_eq(((uint8_t *)u2.data)[i], ((uint8_t *)u.data)[i]);
    }
    sl_tensor_release(&u);
    sl_tensor_release(&i32);
    sl_tensor_release(&u2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- element access and describe ---------------------------------------------------- */

START_TEST(test_get_set_through_strides)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 81);
    int64_t shape[4] = {2, 3, 4, 5};
    for (int d = 0; d < N_OF(ALL_DTYPES); d++) {
        sl_dtype dt = ALL_DTYPES[d];
        sl_tensor t;
        ck_assert_int_eq(sl_tensor_zeros(ctx, dt, 4, shape, &t), SL_OK);
        /* Values exact in every dtype: integers 1..200, distinct per element
         * where the count allows. */
        int64_t idx[4] = {0, 0, 0, 0};
        int vals[120];
        int k = 0;
        do {
            vals[k] = 1 + (int)((k * 37 + (int)(sl_rng_next(&rng) % 3)) % 200);
            sl_tensor_set(&t, idx, vals[k]);
            k++;
        } while (next_index(4, shape, idx));
        /* Raw memory at the row-major offset i*60 + j*20 + k*5 + l. */
        k = 0;
        do {
            int64_t off = idx[0] * 60 + idx[1] * 20 + idx[2] * 5 + idx[3];
            double raw;
            switch (dt) {
            case SL_F32: raw = ((float *)t.data)[off]; break;
            case SL_F16: raw = f16_decode(((uint16_t *)t.data)[off]); break;
            case SL_BF16: raw = bf16_decode(((uint16_t *)t.data)[off]); break;
            case SL_F64: raw = ((double *)t.data)[off]; break;
            case SL_I32: raw = ((int32_t *)t.data)[off]; break;
            default: raw = ((uint8_t *)t.data)[off]; break;
            }
            CHECK(raw == vals[k], "%s element %d: memory holds %g, set %d", sl_dtype_name(dt), k, raw, vals[k]);
            CHECK(sl_tensor_get(&t, idx) == vals[k], "%s element %d: get %g, set %d", sl_dtype_name(dt), k,
                  sl_tensor_get(&t, idx), vals[k]);
            k++;
        } while (next_index(4, shape, idx));
        /* Through a strided view the same element is reached. */
        sl_tensor v;
        ck_assert_int_eq(sl_tensor_narrow(ctx, &t, 2, 1, 2, &v), SL_OK);
        int64_t vi[4] = {1, 2, 1, 3}, pi[4] = {1, 2, 2, 3};
        ck_assert_double_eq(sl_tensor_get(&v, vi), sl_tensor_get(&t, pi));
        sl_tensor_set(&v, vi, 201);
        ck_assert_double_eq(sl_tensor_get(&t, pi), 201); /* 201 needs 8 bits: exact even in bf16 */
        sl_tensor_release(&v);
        sl_tensor_release(&t);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_describe)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const struct { sl_dtype dt; int ndim; int64_t shape[4]; const char *want; } cases[] = {
        {SL_F32, 2, {2, 3}, "f32[2, 3]"},
        {SL_F16, 3, {8, 1000, 64}, "f16[8, 1000, 64]"},
        {SL_BF16, 1, {0}, "bf16[0]"},
        {SL_F64, 4, {1, 2, 3, 4}, "f64[1, 2, 3, 4]"},
        {SL_I32, 2, {7, 0}, "i32[7, 0]"},
        {SL_U8, 0, {0}, "u8[]"},
    };
    char buf[64];
    for (int i = 0; i < N_OF(cases); i++) {
        sl_tensor t;
        ck_assert_int_eq(sl_tensor_new(ctx, cases[i].dt, cases[i].ndim, cases[i].shape, &t), SL_OK);
        memset(buf, 'x', sizeof buf);
        sl_tensor_describe(&t, buf, sizeof buf);
        ck_assert_str_eq(buf, cases[i].want);
        /* A short buffer holds a NUL-terminated prefix. */
        for (size_t n = 1; n < strlen(cases[i].want) + 1; n++) {
            memset(buf, 'x', sizeof buf);
            sl_tensor_describe(&t, buf, n);
            CHECK(strlen(buf) == n - 1 && strncmp(buf, cases[i].want, n - 1) == 0, "n = %zu: \"%s\"", n, buf);
            CHECK(buf[n] == 'x', "n = %zu: wrote past the buffer", n);
        }
        sl_tensor_release(&t);
    }
    /* A view describes its own shape. */
    int64_t shape[2] = {5, 9};
    sl_tensor t, v;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, shape, &t), SL_OK);
    ck_assert_int_eq(sl_tensor_narrow(ctx, &t, 1, 2, 4, &v), SL_OK);
    sl_tensor_describe(&v, buf, sizeof buf);
    ck_assert_str_eq(buf, "f32[5, 4]");
    sl_tensor_release(&v);
    sl_tensor_release(&t);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- check_finite --------------------------------------------------------------------- */

/* Writes a special value's bits at linear element i of a contiguous tensor:
 * kind 0 NaN, 1 +inf, 2 -inf. */
static void put_special(sl_tensor *t, int64_t i, int kind)
{
    switch (t->dtype) {
    case SL_F32: ((float *)t->data)[i] = kind == 0 ? NAN : kind == 1 ? INFINITY : -INFINITY; break;
    case SL_F64: ((double *)t->data)[i] = kind == 0 ? NAN : kind == 1 ? INFINITY : -INFINITY; break;
    case SL_F16: ((uint16_t *)t->data)[i] = kind == 0 ? 0x7e00 : kind == 1 ? 0x7c00 : 0xfc00; break;
    case SL_BF16: ((uint16_t *)t->data)[i] = kind == 0 ? 0x7fc0 : kind == 1 ? 0x7f80 : 0xff80; break;
    default: break;
    }
}

START_TEST(test_check_finite)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 91);
    int64_t shape[2] = {6, 11};
    for (int d = 0; d < N_OF(FLOAT_DTYPES); d++) {
        sl_dtype dt = FLOAT_DTYPES[d];
        sl_tensor t;
        ck_assert_int_eq(sl_tensor_new(ctx, dt, 2, shape, &t), SL_OK);
        const int64_t where[] = {0, 33, 65, 17};
        for (int w = 0; w < N_OF(where); w++)
            for (int kind = 0; kind < 3; kind++)
                for (int allow = 0; allow < 2; allow++) {
                    sl_tensor_fill_normal(ctx, &t, &rng, 3.0);
                    ck_assert_int_eq(sl_tensor_check_finite(ctx, &t, "clean", 0), SL_OK);
                    put_special(&t, where[w], kind);
                    char what[32];
                    snprintf(what, sizeof what, "tensor_%s_%d", sl_dtype_name(dt), w);
                    sl_ctx_clear_error(ctx);
                    sl_status s = sl_tensor_check_finite(ctx, &t, what, allow);
                    if (kind != 0 && allow) {
                        ck_assert_msg(s == SL_OK, "%s: an infinity at %lld refused with allow_inf", what,
                                      (long long)where[w]);
                        continue;
                    }
                    ck_assert_msg(s == SL_EARG, "%s kind %d at %lld: %s", what, kind, (long long)where[w],
                                  sl_status_name(s));
                    assert_msg_has(ctx, what);
                    if (kind == 0)
                        assert_msg_has(ctx, "NaN");
                }
        /* NaN next to an infinity is still refused when infinities are allowed. */
        sl_tensor_fill_normal(ctx, &t, &rng, 1.0);
        put_special(&t, 3, 1);
        put_special(&t, 40, 0);
        ck_assert_int_eq(sl_tensor_check_finite(ctx, &t, "both", 1), SL_EARG);
        assert_msg_has(ctx, "NaN");

        /* A strided view sees NaN inside it (also in rows past the first
         * numel elements of memory) and not outside it. */
        sl_tensor_fill_normal(ctx, &t, &rng, 1.0);
        sl_tensor v;
        ck_assert_int_eq(sl_tensor_narrow(ctx, &t, 1, 2, 5, &v), SL_OK);
        ck_assert(!sl_tensor_is_contiguous(&v));
        ck_assert_int_eq(sl_tensor_check_finite(ctx, &v, "clean view", 0), SL_OK);
        const int64_t inside[] = {0 * 11 + 2, 3 * 11 + 4, 5 * 11 + 6};
        for (int k = 0; k < N_OF(inside); k++) {
            int64_t lin = inside[k];
            double keep = sl_tensor_get(&t, (int64_t[]){lin / 11, lin % 11});
            put_special(&t, lin, 0);
            sl_ctx_clear_error(ctx);
            ck_assert_msg(sl_tensor_check_finite(ctx, &v, "the_view", 0) == SL_EARG, "%s: NaN at (%lld, %lld) missed",
                          sl_dtype_name(dt), (long long)(lin / 11), (long long)(lin % 11));
            assert_msg_has(ctx, "the_view");
            assert_msg_has(ctx, "NaN");
            sl_tensor_set(&t, (int64_t[]){lin / 11, lin % 11}, keep);
        }
        put_special(&t, 1 * 11 + 9, 0); /* column 9: outside [2, 7) */
        put_special(&t, 5 * 11 + 0, 0); /* column 0: outside */
        ck_assert_msg(sl_tensor_check_finite(ctx, &v, "view", 0) == SL_OK, "%s: NaN outside the view was seen: %s",
                      sl_dtype_name(dt), sl_ctx_error(ctx));
        ck_assert_int_eq(sl_tensor_check_finite(ctx, &t, "parent", 0), SL_EARG);
        sl_tensor_release(&v);
        sl_tensor_release(&t);
    }
    /* The largest finite values are finite (x - x is 0 even at the top). */
    int64_t two[1] = {3};
    sl_tensor big;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 1, two, &big), SL_OK);
    ((float *)big.data)[0] = 3.4028235e38f;
    ((float *)big.data)[1] = -3.4028235e38f;
    ((float *)big.data)[2] = 1e-45f;
    ck_assert_int_eq(sl_tensor_check_finite(ctx, &big, "big", 0), SL_OK);
    sl_tensor_release(&big);
    /* Integer tensors have no NaN to find. */
    sl_tensor it;
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_I32, 1, two, &it), SL_OK);
    ((int32_t *)it.data)[1] = -1;
    ck_assert_int_eq(sl_tensor_check_finite(ctx, &it, "ints", 0), SL_OK);
    sl_tensor_release(&it);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- RNG ------------------------------------------------------------------------------ */

START_TEST(test_rng_streams)
{
    sl_rng a, b, c;
    uint64_t seed = 0x5eed0000u + 101;
    sl_rng_seed(&a, seed);
    sl_rng_seed(&b, seed);
    sl_rng_seed(&c, seed + 1);
    int same_ab = 1, equal_ac = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = sl_rng_next(&a), y = sl_rng_next(&b), z = sl_rng_next(&c);
        same_ab &= x == y;
        equal_ac += x == z;
    }
    ck_assert_msg(same_ab, "one seed gave two streams");
    ck_assert_msg(equal_ac == 0, "seeds %llu and %llu agree at %d of 1000 draws", (unsigned long long)seed,
                  (unsigned long long)(seed + 1), equal_ac);
    /* A copied state continues the same stream. */
    sl_rng d = a;
    for (int i = 0; i < 100; i++)
        ck_assert(sl_rng_next(&d) == sl_rng_next(&a));
    /* Seeds 0 and 1 both give a live stream (not stuck at zero). */
    for (uint64_t s = 0; s < 2; s++) {
        sl_rng r;
        sl_rng_seed(&r, s);
        uint64_t all_or = 0;
        for (int i = 0; i < 8; i++)
            all_or |= sl_rng_next(&r);
        ck_assert(all_or != 0);
    }
}
END_TEST

START_TEST(test_rng_uniform)
{
    sl_rng r;
    sl_rng_seed(&r, 111);
    const int n = 200000;
    double sum = 0, sum2 = 0, lo = 1, hi = 0;
    int buckets[10] = {0};
    for (int i = 0; i < n; i++) {
        double u = sl_rng_uniform(&r);
        CHECK(u >= 0 && u < 1, "uniform draw %d is %.17g", i, u);
        sum += u;
        sum2 += u * u;
        lo = fmin(lo, u);
        hi = fmax(hi, u);
        buckets[(int)(u * 10)]++;
    }
    double mean = sum / n, var = sum2 / n - mean * mean;
    /* U(0,1): mean 1/2, variance 1/12 (standard error of the variance
     * estimate sqrt((1/80 - 1/144)/n)). */
    ck_assert_msg(fabs(mean - 0.5) < 5 * sqrt(1.0 / 12 / n), "mean %g", mean);
    ck_assert_msg(fabs(var - 1.0 / 12) < 5 * sqrt((1.0 / 80 - 1.0 / 144) / n), "variance %g", var);
    ck_assert(lo < 1e-3 && hi > 1 - 1e-3);
    for (int b = 0; b < 10; b++) /* binomial(n, 0.1): sd = sqrt(n * 0.09) */
        ck_assert_msg(fabs(buckets[b] - n * 0.1) < 5 * sqrt(n * 0.09), "decile %d holds %d", b, buckets[b]);
}
END_TEST

START_TEST(test_rng_normal)
{
    sl_rng r;
    sl_rng_seed(&r, 121);
    const int n = 200000;
    double sum = 0, sum2 = 0, sum4 = 0;
    int within1 = 0;
    for (int i = 0; i < n; i++) {
        double x = sl_rng_normal(&r);
        CHECK(isfinite(x), "normal draw %d is %g", i, x);
        sum += x;
        sum2 += x * x;
        sum4 += x * x * x * x;
        within1 += fabs(x) < 1;
    }
    double mean = sum / n, var = sum2 / n - mean * mean;
    /* N(0,1): the mean's standard error is 1/sqrt(n), the variance's
     * sqrt(2/n), the fourth moment (3) has sd sqrt(96/n); P(|x| < 1) = erf(1/sqrt 2). */
    ck_assert_msg(fabs(mean) < 5 / sqrt(n), "mean %g", mean);
    ck_assert_msg(fabs(var - 1) < 5 * sqrt(2.0 / n), "variance %g", var);
    ck_assert_msg(fabs(sum4 / n - 3) < 5 * sqrt(96.0 / n), "fourth moment %g", sum4 / n);
    double p1 = erf(1 / sqrt(2.0));
    ck_assert_msg(fabs((double)within1 / n - p1) < 5 * sqrt(p1 * (1 - p1) / n), "P(|x|<1) = %g",
                  (double)within1 / n);
}
END_TEST

START_TEST(test_fill_normal)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const double stds[] = {0.25, 3.0};
    int64_t shape[2] = {400, 250};
    for (int k = 0; k < N_OF(stds); k++)
        for (int d = 0; d < N_OF(FLOAT_DTYPES); d++) {
            sl_rng r;
            sl_rng_seed(&r, 131 + (uint64_t)k);
            sl_tensor t;
            ck_assert_int_eq(sl_tensor_new(ctx, FLOAT_DTYPES[d], 2, shape, &t), SL_OK);
            ck_assert_int_eq(sl_tensor_fill_normal(ctx, &t, &r, stds[k]), SL_OK);
            int64_t n = sl_tensor_numel(&t);
            double sum = 0, sum2 = 0;
            int64_t idx[2] = {0, 0};
            do {
                double x = sl_tensor_get(&t, idx);
                sum += x;
                sum2 += x * x;
            } while (next_index(2, shape, idx));
            double mean = sum / (double)n, sd = sqrt(sum2 / (double)n - mean * mean), s = stds[k];
            /* bf16 rounding adds up to 2^-8 relative noise; allow for it in the sd. */
            ck_assert_msg(fabs(mean) < 5 * s / sqrt((double)n), "%s std %g: mean %g", sl_dtype_name(FLOAT_DTYPES[d]),
                          s, mean);
            ck_assert_msg(fabs(sd - s) < 5 * s / sqrt(2.0 * (double)n) + s * 0x1p-8, "%s std %g: sd %g",
                          sl_dtype_name(FLOAT_DTYPES[d]), s, sd);
            /* The same seed fills the same values. */
            sl_tensor t2;
            sl_rng_seed(&r, 131 + (uint64_t)k);
            ck_assert_int_eq(sl_tensor_new(ctx, FLOAT_DTYPES[d], 2, shape, &t2), SL_OK);
            sl_tensor_fill_normal(ctx, &t2, &r, stds[k]);
            ck_assert(memcmp(t.data, t2.data, sl_tensor_nbytes(&t)) == 0);
            sl_tensor_release(&t2);
            sl_tensor_release(&t);
        }
    /* A view is filled and its parent outside it is not touched. */
    sl_rng r;
    sl_rng_seed(&r, 141);
    int64_t small[2] = {4, 6};
    sl_tensor p, v;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, small, &p), SL_OK);
    for (int i = 0; i < 24; i++)
        ((float *)p.data)[i] = 1000.0f + (float)i;
    ck_assert_int_eq(sl_tensor_narrow(ctx, &p, 1, 1, 3, &v), SL_OK);
    ck_assert_int_eq(sl_tensor_fill_normal(ctx, &v, &r, 1.0), SL_OK);
    for (int i = 0; i < 24; i++) {
        int col = i % 6, in_view = col >= 1 && col < 4;
        float x = ((float *)p.data)[i];
        if (in_view)
            ck_assert_msg(fabsf(x) < 100, "element %d in the view was not filled (%g)", i, x);
        else
            ck_assert_msg(x == 1000.0f + (float)i, "element %d outside the view changed to %g", i, x);
    }
    sl_tensor_release(&v);
    sl_tensor_release(&p);
    /* Integers cannot hold normal draws. */
    sl_tensor it;
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_I32, 2, small, &it), SL_OK);
    sl_ctx_clear_error(ctx);
    ck_assert_int_eq(sl_tensor_fill_normal(ctx, &it, &r, 1.0), SL_EARG);
    assert_msg_has(ctx, "sl_tensor_fill_normal");
    sl_tensor_release(&it);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- allocation failure ------------------------------------------------------------------ */

START_TEST(test_alloc_failures)
{
    /* The context itself: its first allocation failing gives NULL. */
    tu_alloc fa;
    memset(&fa, 0, sizeof fa);
    fa.fail_at = 1;
    sl_ctx_options o = {tu_alloc_fn, &fa, 1};
    ck_assert_ptr_null(sl_ctx_new(&o));

    int64_t shape[3] = {3, 5, 7};
    for (int op = 0; op < 3; op++) {
        int failures = 0;
        for (long n = 1;; n++) {
            ck_assert_msg(n < 100, "op %d: still failing after %ld allocations", op, n);
            tu_alloc al;
            sl_ctx *ctx = tu_ctx(&al);
            sl_tensor src = {0}, t;
            if (op == 2) {
                ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 3, shape, &src), SL_OK);
                ((float *)src.data)[7] = 1.5f;
            }
            size_t live = sl_ctx_live_allocs(ctx);
            al.fail_at = al.calls + n;
            sl_ctx_clear_error(ctx);
            sl_status s = op == 0   ? sl_tensor_new(ctx, SL_F16, 3, shape, &t)
                          : op == 1 ? sl_tensor_zeros(ctx, SL_F64, 3, shape, &t)
                                    : sl_tensor_convert(ctx, &src, SL_BF16, &t);
            al.fail_at = 0;
            if (s == SL_ENOMEM) {
                failures++;
                ck_assert_ptr_null(t.buf);
                ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
                ck_assert_msg(sl_ctx_error(ctx)[0] != '\0', "op %d: SL_ENOMEM without a message", op);
                sl_tensor_release(&src);
                tu_ctx_done(ctx, &al);
                continue;
            }
            ck_assert_msg(s == SL_OK, "op %d, failing allocation %ld: %s", op, n, sl_status_name(s));
            ck_assert_int_eq(sl_tensor_numel(&t), 105);
            if (op == 1)
                ck_assert_double_eq(((double *)t.data)[104], 0);
            if (op == 2)
                ck_assert_double_eq(sl_tensor_get(&t, (int64_t[]){0, 1, 0}), 1.5);
            sl_tensor_release(&t);
            sl_tensor_release(&src);
            tu_ctx_done(ctx, &al);
            break;
        }
        ck_assert_msg(failures > 0, "op %d never allocated", op);
    }
}
END_TEST

/* ---- the context --------------------------------------------------------------------------- */

START_TEST(test_ctx_messages)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    ck_assert_str_eq(sl_ctx_error(ctx), "");
    ck_assert_int_eq(sl_ctx_fail(ctx, SL_EIO, "sl_thing: %s %d %.2f %lld", "file", -42, 2.5, (long long)1 << 40), SL_EIO);
    ck_assert_str_eq(sl_ctx_error(ctx), "sl_thing: file -42 2.50 1099511627776");
    /* Every status is returned as given. */
    for (int s = SL_OK; s <= SL_EINTERNAL; s++)
        ck_assert_int_eq(sl_ctx_fail(ctx, (sl_status)s, "status %d", s), s);
    ck_assert_str_eq(sl_ctx_error(ctx), "status 11");

    /* One line: every newline and carriage return is replaced, the rest kept. */
    const char *multi = "sl_x: line one\nline two\r\nthree\n";
    sl_ctx_fail(ctx, SL_EFORMAT, "%s", multi);
    const char *m = sl_ctx_error(ctx);
    ck_assert_uint_eq(strlen(m), strlen(multi));
    for (size_t i = 0; multi[i]; i++) {
        ck_assert_msg(m[i] != '\n' && m[i] != '\r', "byte %zu is a line break", i);
        if (multi[i] != '\n' && multi[i] != '\r')
            ck_assert_int_eq(m[i], multi[i]);
    }
    /* A name with a newline in it passed through %s is flattened too. */
    sl_ctx_fail(ctx, SL_EIO, "sl_npy_read: %s: cannot open", "/tmp/a\nb.npy");
    ck_assert_ptr_null(strchr(sl_ctx_error(ctx), '\n'));
    assert_msg_has(ctx, "cannot open");

    /* A message longer than the store is cut, not overrun. */
    char longarg[3000];
    memset(longarg, 'q', sizeof longarg - 1);
    longarg[sizeof longarg - 1] = '\0';
    sl_ctx_fail(ctx, SL_EARG, "sl_long: %s", longarg);
    m = sl_ctx_error(ctx);
    ck_assert(strncmp(m, "sl_long: qqq", 12) == 0);
    ck_assert_uint_gt(strlen(m), 100);
    ck_assert_uint_lt(strlen(m), sizeof longarg);

    sl_ctx_clear_error(ctx);
    ck_assert_str_eq(sl_ctx_error(ctx), "");
    /* Without a context a failure still returns its status. */
    ck_assert_int_eq(sl_ctx_fail(NULL, SL_ESHAPE, "nothing %d", 1), SL_ESHAPE);
    ck_assert_ptr_nonnull(sl_ctx_error(NULL));
    tu_ctx_done(ctx, &al);
}
END_TEST

/* A message that wraps the previous one (op.c: "%s: %s", name,
 * sl_ctx_error(ctx)) must keep the inner text. */
START_TEST(test_ctx_fail_nested_message)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_ctx_fail(ctx, SL_EFORMAT, "block mask: row_ptr ends at 3 but there are 4 entries");
    sl_ctx_fail(ctx, SL_EFORMAT, "%s: %s", "attn.block_sparse", sl_ctx_error(ctx));
    ck_assert_str_eq(sl_ctx_error(ctx), "attn.block_sparse: block mask: row_ptr ends at 3 but there are 4 entries");
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_ctx_alloc_counts_and_settings)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    ck_assert_int_eq(sl_ctx_threads(ctx), 2);
    void *a = sl_ctx_alloc(ctx, 100), *b = sl_ctx_alloc(ctx, 28), *z = sl_ctx_alloc(ctx, 0);
    ck_assert(a && b && z);
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 3);
    ck_assert_uint_ge(sl_ctx_live_bytes(ctx), 128);
    memset(a, 1, 100);
    memset(b, 2, 28);
    sl_ctx_dealloc(ctx, a, 100);
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 2);
    sl_ctx_dealloc(ctx, b, 28);
    sl_ctx_dealloc(ctx, z, 0);
    sl_ctx_dealloc(ctx, NULL, 10);
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
    ck_assert_uint_eq(sl_ctx_live_bytes(ctx), 0);
    /* A failing allocation records SL_ENOMEM's message. */
    al.fail_at = al.calls + 1;
    sl_ctx_clear_error(ctx);
    ck_assert_ptr_null(sl_ctx_alloc(ctx, 64));
    ck_assert(sl_ctx_error(ctx)[0] != '\0');
    ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
    /* The interrupt flag is the caller's. */
    volatile int flag = 0;
    ck_assert_int_eq(sl_ctx_interrupted(ctx), 0);
    sl_ctx_set_interrupt(ctx, &flag);
    ck_assert_int_eq(sl_ctx_interrupted(ctx), 0);
    flag = 1;
    ck_assert_int_ne(sl_ctx_interrupted(ctx), 0);
    sl_ctx_set_interrupt(ctx, NULL);
    ck_assert_int_eq(sl_ctx_interrupted(ctx), 0);
    tu_ctx_done(ctx, &al);
    /* n_threads <= 0 means the online CPUs: at least one. */
    sl_ctx_options o = {NULL, NULL, 0};
    sl_ctx *c2 = sl_ctx_new(&o);
    ck_assert_int_ge(sl_ctx_threads(c2), 1);
    sl_ctx_free(c2);
    sl_ctx_free(NULL);
    /* Status names are distinct and never NULL. */
    for (int s = SL_OK; s <= SL_EINTERNAL + 1; s++) {
        ck_assert_ptr_nonnull(sl_status_name((sl_status)s));
        for (int t = SL_OK; t < s; t++)
            ck_assert_str_ne(sl_status_name((sl_status)s), sl_status_name((sl_status)t));
    }
}
END_TEST

static Suite *tensor_suite(void)
{
    Suite *s = suite_create("tensor");
    TCase *tc = tcase_create("tensor");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_new_shapes_and_strides);
    tcase_add_test(tc, test_scalar_holds_a_value);
    tcase_add_test(tc, test_new_rejects_bad_shapes);
    tcase_add_test(tc, test_refcount_keeps_buffer_alive);
    tcase_add_test(tc, test_narrow_shares_memory);
    tcase_add_test(tc, test_narrow_bounds);
    tcase_add_test(tc, test_narrow_rejects_overflowing_bounds);
    tcase_add_test(tc, test_narrow_then_convert);
    tcase_add_test(tc, test_convert_f32_to_half_formats);
    tcase_add_test(tc, test_convert_every_half_pattern);
    tcase_add_test(tc, test_convert_round_trips);
    tcase_add_test(tc, test_convert_refuses_int_float);
    tcase_add_test(tc, test_get_set_through_strides);
    tcase_add_test(tc, test_describe);
    tcase_add_test(tc, test_check_finite);
    tcase_add_test(tc, test_rng_streams);
    tcase_add_test(tc, test_rng_uniform);
    tcase_add_test(tc, test_rng_normal);
    tcase_add_test(tc, test_fill_normal);
    tcase_add_test(tc, test_alloc_failures);
    tcase_add_test(tc, test_ctx_messages);
    tcase_add_test(tc, test_ctx_fail_nested_message);
    tcase_add_test(tc, test_ctx_alloc_counts_and_settings);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(tensor_suite()); }
