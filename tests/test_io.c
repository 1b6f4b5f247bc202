/* test_io.c — Check suite for core/io.c and core/dtype.c: .npy and
 * safetensors round trips, files laid out byte for byte as numpy and Hugging
 * Face write them, bad files of every kind (truncated, lying, NaN), failure of
 * every allocation, and the f16/bf16 conversions against independent math. */
#include "testutil.h"

#include <ctype.h>
#include <dirent.h>
#include <float.h>
#include <sys/stat.h>

/* ck_assert records its location on every pass (a write to the parent);
 * loops over millions of values check this way instead. */
#define CHECK(cond, ...)                \
    do {                                \
        if (!(cond))                    \
            ck_abort_msg(__VA_ARGS__);  \
    } while (0)

/* ---- fixture: a guarded context and a temporary directory ------------------ */

typedef struct fx {
    tu_alloc a;
    sl_ctx *ctx;
    char dir[64];
} fx;

static void fx_open(fx *f)
{
    f->ctx = tu_ctx(&f->a);
    ck_assert_ptr_nonnull(f->ctx);
    tu_tmpdir(f->dir, sizeof f->dir);
}

static void fx_path(const fx *f, const char *name, char *buf, size_t n) { snprintf(buf, n, "%s/%s", f->dir, name); }

/* Checks for leaks and overruns, then removes the directory. */
static void fx_close(fx *f)
{
    tu_ctx_done(f->ctx, &f->a);
    DIR *d = opendir(f->dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[512];
        fx_path(f, e->d_name, p, sizeof p);
        unlink(p);
    }
    closedir(d);
    rmdir(f->dir);
}

static void put_file(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    if (n)
        ck_assert_uint_eq(fwrite(data, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

/* The whole file, malloc'd (the caller frees). */
static unsigned char *get_file(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)len, fp), (size_t)len);
    fclose(fp);
    *n = (size_t)len;
    return buf;
}

/* The status is want, and the one-line message names the path, the tensor
 * (when name is given) and contains needle (when given). */
static void expect_fail(sl_ctx *ctx, sl_status got, sl_status want, const char *path, const char *name,
                        const char *needle)
{
    const char *msg = sl_ctx_error(ctx);
    ck_assert_msg(got == want, "expected %s, got %s: %s", sl_status_name(want), sl_status_name(got), msg);
    ck_assert_msg(strstr(msg, path) != NULL, "message lacks the path: %s", msg);
    if (name) {
        char q[160];
        snprintf(q, sizeof q, "tensor '%s'", name);
        ck_assert_msg(strstr(msg, q) != NULL, "message lacks %s: %s", q, msg);
    }
    if (needle)
        ck_assert_msg(strstr(msg, needle) != NULL, "message lacks \"%s\": %s", needle, msg);
    ck_assert_msg(strchr(msg, '\n') == NULL, "message is not one line: %s", msg);
}

/* Random contents for any dtype; floats finite, with a few specials. */
static void fill_random(sl_tensor *t, sl_rng *r)
{
    int64_t n = sl_tensor_numel(t);
    unsigned char *p = t->data;
    for (int64_t i = 0; i < n; i++) {
        float v = (float)(sl_rng_normal(r) * 3.0);
        if (i % 17 == 3)
            v = (i & 1) ? -INFINITY : 0x1p-20f;
        switch (t->dtype) {
        case SL_F32: memcpy(p + 4 * i, &v, 4); break;
        case SL_F64: {
            double dv = (double)v * 1.000000001;
            memcpy(p + 8 * i, &dv, 8);
            break;
        }
        case SL_F16: {
            uint16_t h = sl_f32_to_f16(v);
            memcpy(p + 2 * i, &h, 2);
            break;
        }
        case SL_BF16: {
            uint16_t h = sl_f32_to_bf16(v);
            memcpy(p + 2 * i, &h, 2);
            break;
        }
        case SL_I32: {
            uint32_t u = (uint32_t)sl_rng_next(r);
            memcpy(p + 4 * i, &u, 4);
            break;
        }
        default: p[i] = (unsigned char)sl_rng_next(r); break;
        }
    }
}

static sl_tensor new_random(sl_ctx *ctx, sl_rng *r, sl_dtype dt, int ndim, const int64_t *shape)
{
    sl_tensor t;
    ck_assert_int_eq(sl_tensor_new(ctx, dt, ndim, shape, &t), SL_OK);
    fill_random(&t, r);
    return t;
}

static void expect_same(const sl_tensor *got, const sl_tensor *want)
{
    ck_assert_int_eq(got->dtype, want->dtype);
    ck_assert_int_eq(got->ndim, want->ndim);
    for (int i = 0; i < want->ndim; i++)
        ck_assert_int_eq(got->shape[i], want->shape[i]);
    size_t n = sl_tensor_nbytes(want);
    ck_assert_uint_eq(sl_tensor_nbytes(got), n);
    if (n)
        ck_assert_mem_eq(got->data, want->data, n);
}

static float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ---- dtype conversions against an independent oracle --------------------------- */

/* Value of a non-negative finite f16 pattern, straight from the definition. */
static double f16_value(unsigned h)
{
    unsigned e = h >> 10, m = h & 0x3ff;
    return e == 0 ? ldexp(m, -24) : ldexp(1024 + m, (int)e - 25);
}

static double bf16_value(unsigned h)
{
    unsigned e = h >> 7, m = h & 0x7f;
    return e == 0 ? ldexp(m, -133) : ldexp(128 + m, (int)e - 134);
}

/* Values of the finite non-negative patterns 0..max_finite, ascending. */
static double *value_table(double (*value)(unsigned), unsigned max_finite)
{
    double *t = malloc((max_finite + 1) * sizeof *t);
    ck_assert_ptr_nonnull(t);
    for (unsigned h = 0; h <= max_finite; h++)
        t[h] = value(h);
    return t;
}

/* The nearest pattern by binary search over the ordered finite values, ties
 * to the even one; overflow from the halfway point past the largest. */
static unsigned oracle_round(float f, const double *value, unsigned max_finite, unsigned inf)
{
    unsigned sign = signbit(f) ? 0x8000u : 0;
    double a = fabs((double)f);
    double top = value[max_finite], ulp = top - value[max_finite - 1];
    if (a >= top + ulp / 2)
        return sign | inf;
    unsigned lo = 0, hi = max_finite;
    while (lo < hi) {
        unsigned mid = (lo + hi + 1) / 2;
        if (value[mid] <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (lo == max_finite)
        return sign | lo;
    double d0 = a - value[lo], d1 = value[lo + 1] - a;
    unsigned r = d0 < d1 ? lo : d1 < d0 ? lo + 1 : (lo & 1 ? lo + 1 : lo);
    return sign | r;
}

START_TEST(test_f16_known)
{
    ck_assert_uint_eq(sl_f32_to_f16(1.0f), 0x3c00);
    ck_assert_uint_eq(sl_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(sl_f32_to_f16(0x1p-24f), 0x0001);
    ck_assert_uint_eq(sl_f32_to_f16(0x1p-14f), 0x0400);
    ck_assert_uint_eq(sl_f32_to_f16(INFINITY), 0x7c00);
    ck_assert_uint_eq(sl_f32_to_f16(-INFINITY), 0xfc00);
    ck_assert_uint_eq(sl_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(sl_f32_to_f16(-2.0f), 0xc000);
    ck_assert_uint_eq(sl_f32_to_f16(1e9f), 0x7c00);
    ck_assert_uint_eq(sl_f32_to_f16(1e-10f), 0x0000);
    ck_assert_uint_eq(sl_f32_to_f16(0x1p-149f), 0x0000);
    uint16_t nan = sl_f32_to_f16(NAN);
    ck_assert_uint_gt(nan & 0x7fff, 0x7c00);
    /* A signalling NaN whose payload sits in the dropped bits stays NaN. */
    ck_assert_uint_gt(sl_f32_to_f16(f32_of(0x7f800001u)) & 0x7fff, 0x7c00);

    ck_assert(sl_f16_to_f32(0x3c00) == 1.0f);
    ck_assert(sl_f16_to_f32(0x7bff) == 65504.0f);
    ck_assert(sl_f16_to_f32(0x0001) == 0x1p-24f);
    ck_assert(sl_f16_to_f32(0x03ff) == 1023.0f * 0x1p-24f);
    ck_assert(sl_f16_to_f32(0xc000) == -2.0f);
    ck_assert(sl_f16_to_f32(0x7c00) == INFINITY);
    ck_assert(sl_f16_to_f32(0xfc00) == -INFINITY);
    ck_assert(isnan(sl_f16_to_f32(0x7e00)));
    ck_assert(isnan(sl_f16_to_f32(0x7c01)));
    ck_assert_uint_eq(bits_of(sl_f16_to_f32(0x8000)), 0x80000000u);
}
END_TEST

START_TEST(test_f16_ties)
{
    /* Halfway cases worked by hand: ties go to the even neighbour. */
    ck_assert_uint_eq(sl_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);            /* between 0x3c00 and 0x3c01 */
    ck_assert_uint_eq(sl_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);        /* between 0x3c01 and 0x3c02 */
    ck_assert_uint_eq(sl_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01); /* just above half */
    ck_assert_uint_eq(sl_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_uint_eq(sl_f32_to_f16(65520.0f), 0x7c00); /* 65504 is odd: the tie goes to infinity */
    ck_assert_uint_eq(sl_f32_to_f16(0x1p-25f), 0x0000); /* half of the smallest subnormal */
    ck_assert_uint_eq(sl_f32_to_f16(0x1p-25f + 0x1p-35f), 0x0001);
    ck_assert_uint_eq(sl_f32_to_f16(3 * 0x1p-25f), 0x0002);
    ck_assert_uint_eq(sl_f32_to_f16(5 * 0x1p-25f), 0x0002);
    ck_assert_uint_eq(sl_f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400); /* subnormal to normal carry */
    ck_assert_uint_eq(sl_f32_to_f16(-(1.0f + 3 * 0x1p-11f)), 0xbc02);
}
END_TEST

START_TEST(test_f16_exhaustive)
{
    for (unsigned h = 0; h < 0x10000; h++) {
        float f = sl_f16_to_f32((uint16_t)h);
        if ((h & 0x7fff) > 0x7c00) {
            CHECK(isnan(f) && (sl_f32_to_f16(f) & 0x7fff) > 0x7c00, "f16 NaN 0x%04x", h);
            continue;
        }
        if ((h & 0x7fff) < 0x7c00) {
            double v = f16_value(h & 0x7fff);
            CHECK((double)f == ((h & 0x8000) ? -v : v), "f16 0x%04x decodes to %.9g", h, (double)f);
        }
        CHECK(sl_f32_to_f16(f) == h, "f16 0x%04x does not round-trip", h);
    }
}
END_TEST

START_TEST(test_f16_oracle)
{
    /* Every exponent and high mantissa with the low 13 bits at the rounding
     * edges, then random patterns (subnormal results included). */
    static const uint32_t lows[] = {0, 1, 0x0fff, 0x1000, 0x1001, 0x1fff};
    double *table = value_table(f16_value, 0x7bff);
    for (uint32_t hi = 0; hi < (1u << 19); hi++) {
        for (size_t k = 0; k < sizeof lows / sizeof lows[0]; k++) {
            float f = f32_of(hi << 13 | lows[k]);
            if (isnan(f))
                continue;
            unsigned want = oracle_round(f, table, 0x7bff, 0x7c00);
            CHECK(sl_f32_to_f16(f) == want, "f32 0x%08x: got 0x%04x want 0x%04x", bits_of(f),
                  sl_f32_to_f16(f), want);
        }
    }
    sl_rng r;
    sl_rng_seed(&r, 11);
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)sl_rng_next(&r);
        if (i & 1) /* bias half the draws into and around the subnormal range */
            u = (u & 0x807fffffu) | (uint32_t)(100 + i % 20) << 23;
        float f = f32_of(u);
        if (isnan(f))
            continue;
        CHECK(sl_f32_to_f16(f) == oracle_round(f, table, 0x7bff, 0x7c00), "f32 0x%08x", bits_of(f));
    }
    free(table);
}
END_TEST

START_TEST(test_bf16)
{
    ck_assert_uint_eq(sl_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(sl_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie, even */
    ck_assert_uint_eq(sl_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie, even */
    ck_assert_uint_eq(sl_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    ck_assert_uint_eq(sl_f32_to_bf16(3.14159265f), 0x4049);
    ck_assert_uint_eq(sl_f32_to_bf16(FLT_MAX), 0x7f80);
    ck_assert_uint_eq(sl_f32_to_bf16(-INFINITY), 0xff80);
    ck_assert_uint_eq(sl_f32_to_bf16(-0.0f), 0x8000);
    ck_assert_uint_gt(sl_f32_to_bf16(NAN) & 0x7fff, 0x7f80);
    ck_assert_uint_gt(sl_f32_to_bf16(f32_of(0x7f800001u)) & 0x7fff, 0x7f80);
    ck_assert_uint_gt(sl_f32_to_bf16(f32_of(0xff800001u)) & 0x7fff, 0x7f80);
    ck_assert(sl_bf16_to_f32(0x3f80) == 1.0f);
    ck_assert(sl_bf16_to_f32(0xc000) == -2.0f);
    ck_assert(isnan(sl_bf16_to_f32(0x7fc0)));

    for (unsigned h = 0; h < 0x10000; h++) {
        float f = sl_bf16_to_f32((uint16_t)h);
        if ((h & 0x7fff) > 0x7f80) {
            CHECK(isnan(f) && (sl_f32_to_bf16(f) & 0x7fff) > 0x7f80, "bf16 NaN 0x%04x", h);
            continue;
        }
        CHECK(sl_f32_to_bf16(f) == h, "bf16 0x%04x does not round-trip", h);
    }
    static const uint32_t lows[] = {0, 1, 0x7fff, 0x8000, 0x8001, 0xffff};
    double *table = value_table(bf16_value, 0x7f7f);
    for (uint32_t hi = 0; hi < 0x10000; hi++) {
        for (size_t k = 0; k < sizeof lows / sizeof lows[0]; k++) {
            float f = f32_of(hi << 16 | lows[k]);
            if (isnan(f))
                continue;
            unsigned want = oracle_round(f, table, 0x7f7f, 0x7f80);
            CHECK(sl_f32_to_bf16(f) == want, "f32 0x%08x: got 0x%04x want 0x%04x", bits_of(f),
                  sl_f32_to_bf16(f), want);
        }
    }
    free(table);
}
END_TEST

START_TEST(test_names)
{
    static const char *const names[] = {"f32", "f16", "bf16", "f64", "i32", "u8"};
    static const size_t sizes[] = {4, 2, 2, 8, 4, 1};
    for (int i = 0; i < SL_DTYPE__COUNT; i++) {
        ck_assert_str_eq(sl_dtype_name((sl_dtype)i), names[i]);
        ck_assert_int_eq(sl_dtype_from_name(names[i]), i);
        ck_assert_uint_eq(sl_dtype_size((sl_dtype)i), sizes[i]);
    }
    ck_assert_int_eq(sl_dtype_from_name("f8"), -1);
    ck_assert_int_eq(sl_dtype_from_name("F32"), -1);
    ck_assert_int_eq(sl_dtype_from_name(NULL), -1);
    ck_assert_uint_eq(sl_dtype_size(SL_DTYPE__COUNT), 0);
    ck_assert_ptr_nonnull(sl_dtype_name(SL_DTYPE__COUNT));
    ck_assert_str_eq(sl_status_name(SL_OK), "SL_OK");
    ck_assert_str_eq(sl_status_name(SL_ENOMEM), "SL_ENOMEM");
    ck_assert_str_eq(sl_status_name(SL_EFORMAT), "SL_EFORMAT");
    ck_assert_str_eq(sl_status_name(SL_EINTERNAL), "SL_EINTERNAL");
    ck_assert_ptr_nonnull(sl_status_name((sl_status)99));
}
END_TEST

/* ---- .npy round trips and known layouts ------------------------------------------ */

static const struct {
    int ndim;
    int64_t shape[SL_MAX_DIMS];
    const char *text; /* numpy's spelling of the shape */
} shapes[] = {
    {0, {0}, "()"},           {1, {5}, "(5,)"},         {2, {3, 4}, "(3, 4)"},
    {3, {2, 3, 7}, "(2, 3, 7)"}, {4, {2, 1, 3, 5}, "(2, 1, 3, 5)"}, {1, {0}, "(0,)"}, {2, {0, 7}, "(0, 7)"},
};

START_TEST(test_npy_roundtrip)
{
    static const sl_dtype dts[] = {SL_F32, SL_F16, SL_F64, SL_I32, SL_U8};
    static const char *const descr[] = {"<f4", "<f2", "<f8", "<i4", "|u1"};
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 1234);
    char path[512];
    fx_path(&f, "t.npy", path, sizeof path);
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            sl_tensor t = new_random(f.ctx, &r, dts[d], shapes[s].ndim, shapes[s].shape), back;
            ck_assert_int_eq(sl_npy_write(f.ctx, path, &t), SL_OK);

            size_t n;
            unsigned char *bytes = get_file(path, &n);
            ck_assert_mem_eq(bytes, "\x93NUMPY\x01\x00", 8);
            size_t hlen = bytes[8] | (size_t)bytes[9] << 8;
            ck_assert_uint_eq((10 + hlen) % 64, 0);
            ck_assert_uint_eq(bytes[10 + hlen - 1], '\n');
            char want[128];
            snprintf(want, sizeof want, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr[d],
                     shapes[s].text);
            ck_assert_mem_eq(bytes + 10, want, strlen(want));
            for (size_t i = 10 + strlen(want); i < 10 + hlen - 1; i++)
                ck_assert_uint_eq(bytes[i], ' ');
            ck_assert_uint_eq(n, 10 + hlen + sl_tensor_nbytes(&t));
            free(bytes);

            ck_assert_int_eq(sl_npy_read(f.ctx, path, &back), SL_OK);
            expect_same(&back, &t);
            sl_tensor_release(&back);
            sl_tensor_release(&t);
        }
    }
    fx_close(&f);
}
END_TEST

/* A .npy file laid out as numpy writes it: preamble, dict, spaces, newline. */
static void make_npy(const char *path, int major, const char *dict, const void *data, size_t n)
{
    size_t pre = major == 1 ? 10 : 12, len = strlen(dict);
    size_t hlen = len + 1 + (64 - (pre + len + 1) % 64) % 64;
    unsigned char *buf = calloc(1, pre + hlen + n);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    for (size_t i = 0; i < pre - 8; i++)
        buf[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + pre, dict, len);
    memset(buf + pre + len, ' ', hlen - len - 1);
    buf[pre + hlen - 1] = '\n';
    if (n)
        memcpy(buf + pre + hlen, data, n);
    put_file(path, buf, pre + hlen + n);
    free(buf);
}

START_TEST(test_npy_known_files)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "h.npy", path, sizeof path);
    /* f16 1, 65504, 2^-24 and -inf (infinities are allowed), little-endian. */
    const unsigned char h[] = {0x00, 0x3c, 0xff, 0x7b, 0x01, 0x00, 0x00, 0xfc};
    make_npy(path, 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }", h, sizeof h);
    size_t n;
    unsigned char *bytes = get_file(path, &n);
    ck_assert_uint_eq(n, 128 + 8); /* the exact size numpy produces for this array */
    free(bytes);
    sl_tensor t;
    ck_assert_int_eq(sl_npy_read(f.ctx, path, &t), SL_OK);
    ck_assert_int_eq(t.dtype, SL_F16);
    ck_assert_int_eq(t.ndim, 2);
    const uint16_t *p = t.data;
    ck_assert(sl_f16_to_f32(p[0]) == 1.0f);
    ck_assert(sl_f16_to_f32(p[1]) == 65504.0f);
    ck_assert(sl_f16_to_f32(p[2]) == 0x1p-24f);
    ck_assert(sl_f16_to_f32(p[3]) == -INFINITY);
    sl_tensor_release(&t);

    /* Version 2.0, keys in another order, double quotes, Python 2 longs. */
    const int32_t iv[3] = {-1, 7, 2147483647};
    make_npy(path, 2, "{\"shape\": (3L,), 'fortran_order':False,'descr':'<i4'}", iv, sizeof iv);
    ck_assert_int_eq(sl_npy_read(f.ctx, path, &t), SL_OK);
    ck_assert_int_eq(t.dtype, SL_I32);
    ck_assert_int_eq(t.ndim, 1);
    ck_assert_int_eq(t.shape[0], 3);
    ck_assert_mem_eq(t.data, iv, sizeof iv);
    sl_tensor_release(&t);

    /* Version 3.0 (utf-8 header) and a scalar. */
    const double dv = -0.5;
    make_npy(path, 3, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }", &dv, sizeof dv);
    ck_assert_int_eq(sl_npy_read(f.ctx, path, &t), SL_OK);
    ck_assert_int_eq(t.ndim, 0);
    ck_assert(*(const double *)t.data == -0.5);
    sl_tensor_release(&t);
    fx_close(&f);
}
END_TEST

START_TEST(test_npy_write_view_and_errors)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "v.npy", path, sizeof path);
    sl_rng r;
    sl_rng_seed(&r, 5);
    int64_t shape[3] = {3, 4, 6};
    sl_tensor t = new_random(f.ctx, &r, SL_F32, 3, shape), back;
    /* A strided view: t[:, 1:3, ::2] written through its strides. */
    sl_tensor v = t;
    v.data = (float *)t.data + 6;
    v.shape[1] = 2;
    v.shape[2] = 3;
    v.stride[2] = 2;
    ck_assert_int_eq(sl_npy_write(f.ctx, path, &v), SL_OK);
    ck_assert_int_eq(sl_npy_read(f.ctx, path, &back), SL_OK);
    ck_assert_int_eq(back.shape[0], 3);
    ck_assert_int_eq(back.shape[1], 2);
    ck_assert_int_eq(back.shape[2], 3);
    const float *src = t.data, *got = back.data;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++)
            for (int k = 0; k < 3; k++)
                ck_assert(got[(i * 2 + j) * 3 + k] == src[i * 24 + (j + 1) * 6 + 2 * k]);
    sl_tensor_release(&back);
    /* The same view made by sl_tensor_narrow (contiguous inner rows). */
    ck_assert_int_eq(sl_tensor_narrow(f.ctx, &t, 1, 1, 2, &v), SL_OK);
    ck_assert_int_eq(sl_npy_write(f.ctx, path, &v), SL_OK);
    ck_assert_int_eq(sl_npy_read(f.ctx, path, &back), SL_OK);
    got = back.data;
    for (int i = 0; i < 3; i++)
        ck_assert_mem_eq(got + i * 12, src + i * 24 + 6, 12 * sizeof(float));
    sl_tensor_release(&back);
    sl_tensor_release(&v);
    sl_tensor_release(&t);

    sl_tensor bf = new_random(f.ctx, &r, SL_BF16, 3, shape);
    expect_fail(f.ctx, sl_npy_write(f.ctx, path, &bf), SL_EARG, path, "v.npy", "bf16");
    sl_tensor_release(&bf);
    sl_tensor empty;
    memset(&empty, 0, sizeof empty);
    expect_fail(f.ctx, sl_npy_write(f.ctx, path, &empty), SL_EARG, path, NULL, "empty");
    char nodir[512];
    fx_path(&f, "no/such/dir.npy", nodir, sizeof nodir);
    int64_t one = 1;
    ck_assert_int_eq(sl_tensor_zeros(f.ctx, SL_F32, 1, &one, &t), SL_OK);
    expect_fail(f.ctx, sl_npy_write(f.ctx, nodir, &t), SL_EIO, nodir, NULL, "No such file");
    struct stat sb;
    if (stat("/dev/full", &sb) == 0) /* the disk is full: the error must surface */
        expect_fail(f.ctx, sl_npy_write(f.ctx, "/dev/full", &t), SL_EIO, "/dev/full", NULL, NULL);
    sl_tensor_release(&t);
    fx_close(&f);
}
END_TEST

/* A text file named as a tensor file: the message says what it is not,
 * instead of reading its first bytes as a header length (a 19-digit number),
 * and a truncated safetensors file still says it is truncated. */
START_TEST(test_not_a_tensor_file)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "x.txt", path, sizeof path);
    const char text[] = "hello world, this is a text file\n";
    put_file(path, text, sizeof text - 1);
    sl_tensor t;
    sl_named_tensor *nt = NULL;
    int n = 0;
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &nt, &n), SL_EFORMAT, path, NULL,
                "not a safetensors file (the first 8 bytes are not a plausible header length)");
    for (const char *m = sl_ctx_error(f.ctx); *m; m++)
        ck_assert_msg(!(isdigit((unsigned char)m[0]) && strspn(m, "0123456789") > 12), "a byte-number in: %s",
                      sl_ctx_error(f.ctx));
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, NULL, "not an npy file");
    put_file(path, "hi\n", 3);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, NULL, "not an npy file");
    /* a plausible length (100) in a 20-byte file: truncated */
    unsigned char b[20] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    put_file(path, b, sizeof b);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &nt, &n), SL_EFORMAT, path, NULL, "truncated");
    fx_close(&f);
}
END_TEST

/* ---- bad .npy files ----------------------------------------------------------------- */

START_TEST(test_npy_bad_headers)
{
    static const struct {
        const char *dict;
        size_t data_bytes;
        const char *needle;
    } cases[] = {
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, "fortran_order True"},
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24, "big-endian"},
        {"{'descr': '|i1', 'fortran_order': False, 'shape': (2, 3), }", 6, "found '|i1'"},
        {"{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }", 48, "found '<i8'"},
        {"{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }", 48, "found '<c8'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 2, 3), }", 24, "at most 4 dims, found 5"},
        {"{'descr': '<f4', 'fortran_order': False, }", 24, "no 'shape'"},
        {"{}", 24, "no 'descr'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'foo': 1}", 24, "found 'foo'"},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24, "twice"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", 24, "non-negative integer"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3 }", 24, "',' or ')'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, }", 24, "non-negative integer"},
        {"{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3), }", 24, "',' or '}'"},
        {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3), }", 24, "True or False"},
        {"['descr', '<f4']", 24, "'{'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } x", 24, "only spaces"},
        {"{'descr: '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24, NULL},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }", 24, "'('"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }", 24, "truncated"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 24, "needs 48 bytes"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", 24, "trailing bytes"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 9999999999), }", 24,
         "too large"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 24, "2^63"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 99999999999, 99999999999, 9999999999), }", 0,
         "too large"},
        {"{'descr': '<f4',\x01 'fortran_order': False, 'shape': (2, 3), }", 24, "byte 0x01"},
    };
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "bad.npy", path, sizeof path);
    unsigned char data[64] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        make_npy(path, 1, cases[i].dict, data, cases[i].data_bytes);
        sl_tensor t;
        sl_status s = sl_npy_read(f.ctx, path, &t);
        expect_fail(f.ctx, s, SL_EFORMAT, path, "bad.npy", cases[i].needle);
        ck_assert_ptr_null(t.buf);
        ck_assert_uint_eq(sl_ctx_live_allocs(f.ctx), 0);
    }
    fx_close(&f);
}
END_TEST

START_TEST(test_npy_bad_preambles)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "pre.npy", path, sizeof path);
    sl_tensor t;
    unsigned char b[16] = {0x93, 'N', 'U', 'M', 'P', 'Z', 1, 0, 0, 0};
    put_file(path, b, 10);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "pre.npy", "magic");
    memcpy(b, "\x93NUMPY\x04\x00", 8);
    put_file(path, b, 16);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "pre.npy", "found 4.0");
    memcpy(b, "\x93NUMPY\x01\x01", 8);
    put_file(path, b, 16);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "pre.npy", "found 1.1");
    memcpy(b, "\x93NUMPY\x01\x00\xff\xff", 10); /* header length past the end */
    put_file(path, b, 16);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "pre.npy", "truncated");
    memcpy(b, "\x93NUMPY\x02\x00\xff\xff\xff\x7f", 12);
    put_file(path, b, 16);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "pre.npy", "truncated");
    put_file(path, "", 0);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "pre.npy", "at least 10 bytes");

    char missing[512];
    fx_path(&f, "missing.npy", missing, sizeof missing);
    expect_fail(f.ctx, sl_npy_read(f.ctx, missing, &t), SL_EIO, missing, NULL, "No such file");
    expect_fail(f.ctx, sl_npy_read(f.ctx, f.dir, &t), SL_EIO, f.dir, NULL, "directory");
    fx_close(&f);
}
END_TEST

/* Every cut of a valid file, through the header and into the data. */
START_TEST(test_npy_truncated)
{
    fx f;
    fx_open(&f);
    char path[512], cut[512];
    fx_path(&f, "whole.npy", path, sizeof path);
    fx_path(&f, "cut.npy", cut, sizeof cut);
    sl_rng r;
    sl_rng_seed(&r, 77);
    int64_t shape[2] = {3, 5};
    sl_tensor t = new_random(f.ctx, &r, SL_F32, 2, shape), back;
    ck_assert_int_eq(sl_npy_write(f.ctx, path, &t), SL_OK);
    sl_tensor_release(&t);
    size_t n;
    unsigned char *bytes = get_file(path, &n);
    for (size_t len = 0; len < n; len += (len < 140 ? 1 : 13)) {
        put_file(cut, bytes, len);
        expect_fail(f.ctx, sl_npy_read(f.ctx, cut, &back), SL_EFORMAT, cut, "cut.npy", NULL);
    }
    put_file(cut, bytes, n - 1);
    expect_fail(f.ctx, sl_npy_read(f.ctx, cut, &back), SL_EFORMAT, cut, "cut.npy", "truncated");
    free(bytes);
    fx_close(&f);
}
END_TEST

START_TEST(test_npy_nan)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "nan.npy", path, sizeof path);
    sl_tensor t;
    const float fv[4] = {1.0f, -INFINITY, NAN, 2.0f};
    make_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", fv, sizeof fv);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "nan.npy", "NaN at flat index 2");
    const uint16_t hv[2] = {0x3c00, 0x7c01};
    make_npy(path, 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", hv, sizeof hv);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "nan.npy", "NaN at flat index 1");
    const uint64_t dv = 0xfff8000000000001ull;
    make_npy(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }", &dv, sizeof dv);
    expect_fail(f.ctx, sl_npy_read(f.ctx, path, &t), SL_EFORMAT, path, "nan.npy", "NaN");
    /* Integers have no NaN: these bytes are fine as i32. */
    const uint32_t iv[1] = {0x7fc00000u};
    make_npy(path, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }", iv, sizeof iv);
    ck_assert_int_eq(sl_npy_read(f.ctx, path, &t), SL_OK);
    sl_tensor_release(&t);
    fx_close(&f);
}
END_TEST

/* ---- safetensors round trips and known layouts --------------------------------------- */

START_TEST(test_st_roundtrip)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "t.safetensors", path, sizeof path);
    sl_rng r;
    sl_rng_seed(&r, 99);
    static const sl_dtype dts[] = {SL_F32, SL_F16, SL_BF16, SL_F64, SL_I32, SL_U8};
    static const char *const names[] = {"q", "k", "v.weight", "a\"b\\c\nd\x01", "w\xc3\xa9", "", "scalar"};
    enum { N = 7 };
    sl_named_tensor ts[N];
    for (int i = 0; i < N; i++) {
        size_t s = (size_t)(i + 1) % (sizeof shapes / sizeof shapes[0]);
        ts[i].name = (char *)names[i];
        ts[i].t = new_random(f.ctx, &r, dts[i % 6], shapes[s].ndim, shapes[s].shape);
    }
    ck_assert_int_eq(sl_safetensors_write(f.ctx, path, ts, N), SL_OK);

    size_t n;
    unsigned char *bytes = get_file(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | bytes[i];
    ck_assert_uint_eq(hlen % 8, 0);
    const char *meta = "{\"__metadata__\":{\"format\":\"pt\"},";
    ck_assert_mem_eq(bytes + 8, meta, strlen(meta));
    size_t total = 0;
    for (int i = 0; i < N; i++)
        total += sl_tensor_nbytes(&ts[i].t);
    ck_assert_uint_eq(n, 8 + hlen + total);
    free(bytes);

    sl_named_tensor *back;
    int nb;
    ck_assert_int_eq(sl_safetensors_read(f.ctx, path, &back, &nb), SL_OK);
    ck_assert_int_eq(nb, N);
    for (int i = 0; i < N; i++) {
        ck_assert_str_eq(back[i].name, names[i]);
        expect_same(&back[i].t, &ts[i].t);
        sl_tensor_release(&ts[i].t);
    }
    sl_named_tensors_free(f.ctx, back, nb);

    /* No tensors at all is a valid file too. */
    ck_assert_int_eq(sl_safetensors_write(f.ctx, path, NULL, 0), SL_OK);
    ck_assert_int_eq(sl_safetensors_read(f.ctx, path, &back, &nb), SL_OK);
    ck_assert_int_eq(nb, 0);
    ck_assert_ptr_null(back);
    fx_close(&f);
}
END_TEST

START_TEST(test_st_exact_layout)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "x.safetensors", path, sizeof path);
    int64_t s1[2] = {2, 3}, s2[1] = {4};
    sl_named_tensor ts[2] = {{"a", {0}}, {"b", {0}}};
    ck_assert_int_eq(sl_tensor_zeros(f.ctx, SL_F32, 2, s1, &ts[0].t), SL_OK);
    ck_assert_int_eq(sl_tensor_zeros(f.ctx, SL_BF16, 1, s2, &ts[1].t), SL_OK);
    ck_assert_int_eq(sl_safetensors_write(f.ctx, path, ts, 2), SL_OK);
    const char *want = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]}}";
    size_t n, len = strlen(want), hlen = (len + 7) / 8 * 8;
    unsigned char *bytes = get_file(path, &n);
    ck_assert_uint_eq(bytes[0] | (size_t)bytes[1] << 8, hlen);
    ck_assert_mem_eq(bytes + 8, want, len);
    for (size_t i = len; i < hlen; i++)
        ck_assert_uint_eq(bytes[8 + i], ' ');
    ck_assert_uint_eq(n, 8 + hlen + 32);
    free(bytes);
    sl_tensor_release(&ts[0].t);
    sl_tensor_release(&ts[1].t);
    fx_close(&f);
}
END_TEST

/* A safetensors file from a header text and data bytes. */
static void make_st(const char *path, const char *header, const void *data, size_t n)
{
    size_t len = strlen(header);
    unsigned char *buf = malloc(8 + len + n + 1);
    ck_assert_ptr_nonnull(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)len >> (8 * i));
    memcpy(buf + 8, header, len);
    if (n)
        memcpy(buf + 8 + len, data, n);
    put_file(path, buf, 8 + len + n);
    free(buf);
}

START_TEST(test_st_known_file)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "hf.safetensors", path, sizeof path);
    const char *hdr = "{ \"__metadata__\" : {\"format\": \"pt\", \"note\": \"x\\\"y\", \"n\": {\"deep\": [1, -2]}},\n"
                      "  \"w\\u00e9\\ud83d\\ude00\\/\" : {\"shape\": [2], \"dtype\": \"BF16\", \"data_offsets\": [0, 4]},"
                      "  \"i\": {\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[4,8]},"
                      "  \"e\": {\"dtype\":\"U8\",\"shape\":[0, 3],\"data_offsets\":[8,8]} }   ";
    const unsigned char data[8] = {0x80, 0x3f, 0x00, 0xc0, 0xf9, 0xff, 0xff, 0xff};
    make_st(path, hdr, data, sizeof data);
    sl_named_tensor *ts;
    int n;
    ck_assert_int_eq(sl_safetensors_read(f.ctx, path, &ts, &n), SL_OK);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(ts[0].name, "w\xc3\xa9\xf0\x9f\x98\x80/");
    ck_assert_int_eq(ts[0].t.dtype, SL_BF16);
    ck_assert(sl_bf16_to_f32(((const uint16_t *)ts[0].t.data)[0]) == 1.0f);
    ck_assert(sl_bf16_to_f32(((const uint16_t *)ts[0].t.data)[1]) == -2.0f);
    ck_assert_str_eq(ts[1].name, "i");
    ck_assert_int_eq(ts[1].t.ndim, 0);
    ck_assert_int_eq(*(const int32_t *)ts[1].t.data, -7);
    ck_assert_str_eq(ts[2].name, "e");
    ck_assert_int_eq(ts[2].t.ndim, 2);
    ck_assert_int_eq(sl_tensor_numel(&ts[2].t), 0);
    sl_named_tensors_free(f.ctx, ts, n);
    fx_close(&f);
}
END_TEST

START_TEST(test_st_write_errors)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "w.safetensors", path, sizeof path);
    int64_t one = 1;
    sl_named_tensor ts[3] = {{"a", {0}}, {"b", {0}}, {"a", {0}}};
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(sl_tensor_zeros(f.ctx, SL_F32, 1, &one, &ts[i].t), SL_OK);
    expect_fail(f.ctx, sl_safetensors_write(f.ctx, path, ts, 3), SL_EARG, path, "a", "twice");
    ts[2].name = "__metadata__";
    expect_fail(f.ctx, sl_safetensors_write(f.ctx, path, ts, 3), SL_EARG, path, "__metadata__", "reserved");
    ts[2].name = NULL;
    expect_fail(f.ctx, sl_safetensors_write(f.ctx, path, ts, 3), SL_EARG, path, NULL, "tensor 2");
    ts[2].name = "c";
    sl_tensor keep = ts[1].t;
    memset(&ts[1].t, 0, sizeof ts[1].t);
    expect_fail(f.ctx, sl_safetensors_write(f.ctx, path, ts, 3), SL_EARG, path, "b", "empty");
    ts[1].t = keep;
    char nodir[512];
    fx_path(&f, "no/dir.safetensors", nodir, sizeof nodir);
    expect_fail(f.ctx, sl_safetensors_write(f.ctx, nodir, ts, 3), SL_EIO, nodir, NULL, "No such file");
    struct stat sb;
    if (stat("/dev/full", &sb) == 0)
        expect_fail(f.ctx, sl_safetensors_write(f.ctx, "/dev/full", ts, 3), SL_EIO, "/dev/full", NULL, NULL);
    ck_assert_int_eq(sl_safetensors_write(f.ctx, path, ts, 3), SL_OK);
    for (int i = 0; i < 3; i++)
        sl_tensor_release(&ts[i].t);
    fx_close(&f);
}
END_TEST

/* ---- bad safetensors files ------------------------------------------------------------- */

#define ENTRY(name, dt, shape, b, e) \
    "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

START_TEST(test_st_bad_headers)
{
    static const struct {
        const char *header;
        size_t data_bytes;
        const char *name;   /* the tensor the message must name, or NULL */
        const char *needle; /* what the message must say, or NULL */
    } cases[] = {
        {"{" ENTRY("a", "I64", "[3]", 0, 24) "}", 24, "a", "found 'I64'"},
        {"{" ENTRY("a", "f32", "[6]", 0, 24) "}", 24, "a", "found 'f32'"},
        {"{" ENTRY("a", "F32", "[2,3]", 0, 24) ",}", 24, NULL, "invalid JSON at byte"},
        {"{" ENTRY("a", "F32", "[2,3.5]", 0, 24) "}", 24, "a", "integer dims"},
        {"{" ENTRY("a", "F32", "[2,\"3\"]", 0, 24) "}", 24, "a", "integer dims"},
        {"{" ENTRY("a", "F32", "{}", 0, 24) "}", 24, "a", "'shape' to be an array"},
        {"{" ENTRY("a", "F32", "[2,-3]", 0, 24) "}", 24, "a", "non-negative dims"},
        {"{" ENTRY("a", "F32", "[1,1,1,2,3]", 0, 24) "}", 24, "a", "at most 4 dims"},
        {"{" ENTRY("a", "F32", "[2,99999999999999999999]", 0, 24) "}", 24, "a", "2^53"},
        {"{" ENTRY("a", "F32", "[99999999999,99999999999,99999999999]", 0, 24) "}", 24, "a", "too large"},
        {"{" ENTRY("a", "F32", "[0,99999999999,99999999999,99999999999]", 0, 0) "}", 0, "a", "too large"},
        {"{" ENTRY("a", "F32", "[2,3]", 0, 24), 24, NULL, "invalid JSON at byte"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],\"x\":1}}", 24, "a", "found 'x'"},
        {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "a", "twice"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3]}}", 24, "a", "no 'data_offsets'"},
        {"{\"a\":{}}", 24, "a", "no 'dtype'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24,24]}}", 24, "a", "two non-negative integer offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0]}}", 24, "a", "two non-negative integer offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[-1,23]}}", 24, "a", "non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,true]}}", 24, "a", "integer offset"},
        {"{\"a\":[]}", 24, "a", "expected an object"},
        {"{" ENTRY("a", "F32", "[2,3]", 0, 48) "}", 24, "a", "reach past"},
        {"{" ENTRY("a", "F32", "[2,3]", 24, 0) "}", 24, "a", "begin <= end"},
        {"{" ENTRY("a", "F32", "[2,4]", 0, 24) "}", 24, "a", "needs 32 bytes"},
        {"{" ENTRY("a", "F64", "[2,3]", 0, 24) "}", 24, "a", "needs 48 bytes"},
        {"{" ENTRY("a", "F32", "[6]", 0, 24) "," ENTRY("b", "F32", "[6]", 8, 32) "}", 32, "b", "overlap tensor 'a'"},
        {"{" ENTRY("a", "F32", "[2]", 4, 12) "," ENTRY("b", "F32", "[1]", 0, 4) "," ENTRY("c", "F32", "[1]", 8, 12)
         "}", 12, NULL, "overlap"},
        {"{" ENTRY("a", "F32", "[3]", 0, 12) "," ENTRY("b", "F32", "[3]", 16, 28) "}", 28, "b", "[12, 16)"},
        {"{" ENTRY("a", "F32", "[3]", 4, 16) "}", 16, "a", "[0, 4)"},
        {"{" ENTRY("a", "F32", "[2,3]", 0, 24) "}", 28, NULL, "trailing bytes"},
        {"{}", 4, NULL, "no data"},
        {"{" ENTRY("a", "F32", "[3]", 0, 12) "," ENTRY("a", "F32", "[3]", 12, 24) "}", 24, "a", "twice"},
        {"[]", 0, NULL, "expected a JSON object"},
        {"", 0, NULL, "invalid JSON at byte 8"},
        {"{\"__metadata__\":{\"a\":true}}", 0, NULL, "a string, integer, object or array"},
        {"{\"__metadata__\":{\"a\":null}}", 0, NULL, "a string, integer, object or array"},
        {"{\"__metadata__\":{\"a\":1.5}}", 0, NULL, "a string, integer, object or array, found 1.5"},
        {"{\"__metadata__\":{\"a\":1e999}}", 0, NULL, "within double range"},
        {"{\"__metadata__\":\"pt\"}", 0, NULL, "an object"},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, NULL, "twice"},
        {"{\"__metadata__\":{\"a\":[1 2]}}", 0, NULL, "invalid JSON at byte"},
        {"{\"a\\x\":{}}", 0, NULL, "invalid JSON at byte 11"},
        {"{\"a\\udc00\":{}}", 0, NULL, "invalid JSON at byte 11"},
        {"{\"a\\ud800x\":{}}", 0, NULL, "invalid JSON at byte 11"},
        {"{\"a\\ud800\\u0041\":{}}", 0, NULL, "invalid JSON at byte 11"},
        {"{\"a\\u00zz\":{}}", 0, NULL, "hex digits"},
        {"{\"a\\u0000\":{}}", 0, NULL, "\\u0000"},
        {"{\"a\\u12\":{}}", 0, NULL, "invalid JSON at byte 11"},
        {"{\"a\\u12zz\":{}}", 0, NULL, "four hex digits"}, /* cJSON would read U+0000 */
        {"{\"a\\\\u0000\":{}}", 0, "a\\u0000", "no 'dtype'"}, /* an escaped backslash, no escape */
        /* cJSON lets raw tab, LF and CR through in strings (this one fails for
         * its empty entry); other control bytes are refused. */
        {"{\"a\tb\":{}}", 0, "a\\x09b", "no 'dtype'"},
        {"{\"a\x01" "b\":{}}", 0, NULL, "control byte 0x01"},
        {"{\x01}", 0, NULL, "control byte 0x01"},
        {"\xef\xbb\xbf{}", 0, NULL, "byte-order mark"},
        {"{\"a", 0, NULL, "invalid JSON at byte"},
        {"{'a':{}}", 0, NULL, "invalid JSON at byte"},
        {"{" ENTRY("a", "F32", "[2,3]", 0, 24) "} x", 24, NULL, "only white space"},
        {"{" ENTRY("a", "F32", "[2,3]", 0, 24) "}\x01", 24, NULL, "only white space"},
    };
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "bad.safetensors", path, sizeof path);
    unsigned char data[64] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        make_st(path, cases[i].header, data, cases[i].data_bytes);
        sl_named_tensor *ts = (sl_named_tensor *)&f; /* must be reset to NULL */
        int n = -1;
        sl_status s = sl_safetensors_read(f.ctx, path, &ts, &n);
        expect_fail(f.ctx, s, SL_EFORMAT, path, cases[i].name, cases[i].needle);
        ck_assert_ptr_null(ts);
        ck_assert_int_eq(n, 0);
        ck_assert_uint_eq(sl_ctx_live_allocs(f.ctx), 0);
    }
    /* cJSON reads numbers by strtod and keeps no text: a dim written 3.0,
     * 3e0, 03 or 3. is the integer 3, and accepted as such. */
    static const char *const lenient[] = {"[2,3.0]", "[2,3e0]", "[2,03]", "[2,3.]"};
    for (size_t i = 0; i < sizeof lenient / sizeof lenient[0]; i++) {
        char hdr[128];
        snprintf(hdr, sizeof hdr, "{\"a\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[0,24]}}", lenient[i]);
        make_st(path, hdr, data, 24);
        sl_named_tensor *ts = NULL;
        int n = 0;
        ck_assert_msg(sl_safetensors_read(f.ctx, path, &ts, &n) == SL_OK, "%s: %s", hdr, sl_ctx_error(f.ctx));
        ck_assert_int_eq(n, 1);
        ck_assert_int_eq(ts[0].t.ndim, 2);
        ck_assert_int_eq(ts[0].t.shape[1], 3);
        sl_named_tensors_free(f.ctx, ts, n);
    }
    fx_close(&f);
}
END_TEST

START_TEST(test_st_deep_and_huge)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "deep.safetensors", path, sizeof path);
    sl_named_tensor *ts;
    int n;
    /* Nesting far past the limit must fail cleanly, not exhaust the stack. */
    enum { DEPTH = 100000 };
    char *hdr = malloc(2 * DEPTH + 64);
    ck_assert_ptr_nonnull(hdr);
    strcpy(hdr, "{\"__metadata__\":{\"x\":");
    size_t len = strlen(hdr);
    memset(hdr + len, '[', DEPTH);
    memset(hdr + len + DEPTH, ']', DEPTH);
    strcpy(hdr + len + 2 * DEPTH, "}}");
    make_st(path, hdr, NULL, 0);
    free(hdr);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, NULL, "invalid JSON at byte");
    /* Within cJSON's own limit (1000), the reader's: 64 below the header. */
    hdr = malloc(256);
    ck_assert_ptr_nonnull(hdr);
    strcpy(hdr, "{\"__metadata__\":{\"x\":");
    len = strlen(hdr);
    memset(hdr + len, '[', 64);
    memset(hdr + len + 64, ']', 64);
    strcpy(hdr + len + 128, "}}");
    make_st(path, hdr, NULL, 0);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, NULL, "nesting at most 65");
    memmove(hdr + len + 63, hdr + len + 64, strlen(hdr + len + 64) + 1);
    memmove(hdr + len + 63 + 63, hdr + len + 63 + 64, strlen(hdr + len + 63 + 64) + 1);
    make_st(path, hdr, NULL, 0);
    ck_assert_int_eq(sl_safetensors_read(f.ctx, path, &ts, &n), SL_OK);
    ck_assert_int_eq(n, 0);
    free(hdr);

    /* Header lengths past the file, and past the 100 MB limit in a sparse
     * 200 MB file (nothing is allocated for it). */
    unsigned char b[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    put_file(path, b, 10);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, NULL, "past the end");
    memset(b, 0xff, 8);
    put_file(path, b, 10);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, NULL, "not a safetensors file");
    uint64_t big = 150000000;
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(big >> (8 * i));
    put_file(path, b, 10);
    ck_assert_int_eq(truncate(path, 200000000), 0);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, NULL, "at most 100000000");
    put_file(path, b, 7);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, NULL, "at least 8 bytes");

    char missing[512];
    fx_path(&f, "missing.safetensors", missing, sizeof missing);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, missing, &ts, &n), SL_EIO, missing, NULL, "No such file");
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, f.dir, &ts, &n), SL_EIO, f.dir, NULL, "directory");
    fx_close(&f);
}
END_TEST

/* A valid three-tensor file written by the library, for cutting and fuzzing. */
static unsigned char *valid_st(fx *f, const char *path, size_t *n)
{
    sl_rng r;
    sl_rng_seed(&r, 3);
    int64_t s1[3] = {2, 3, 4}, s2[2] = {3, 5}, s3[1] = {7};
    sl_named_tensor ts[3] = {{"q", {0}}, {"k", {0}}, {"v", {0}}};
    ts[0].t = new_random(f->ctx, &r, SL_F32, 3, s1);
    ts[1].t = new_random(f->ctx, &r, SL_BF16, 2, s2);
    ts[2].t = new_random(f->ctx, &r, SL_F16, 1, s3);
    ck_assert_int_eq(sl_safetensors_write(f->ctx, path, ts, 3), SL_OK);
    for (int i = 0; i < 3; i++)
        sl_tensor_release(&ts[i].t);
    return get_file(path, n);
}

START_TEST(test_st_truncated)
{
    fx f;
    fx_open(&f);
    char path[512], cut[512];
    fx_path(&f, "whole.safetensors", path, sizeof path);
    fx_path(&f, "cut.safetensors", cut, sizeof cut);
    size_t n;
    unsigned char *bytes = valid_st(&f, path, &n);
    uint64_t hlen = bytes[0] | (uint64_t)bytes[1] << 8;
    for (size_t len = 0; len < n; len += (len < 8 + hlen + 8 ? 1 : 11)) {
        put_file(cut, bytes, len);
        sl_named_tensor *ts;
        int nt;
        expect_fail(f.ctx, sl_safetensors_read(f.ctx, cut, &ts, &nt), SL_EFORMAT, cut, NULL, NULL);
    }
    /* Cuts inside the header leave the length field pointing past the end;
     * cuts in the data leave the last tensor short. */
    put_file(cut, bytes, n - 1);
    sl_named_tensor *ts;
    int nt;
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, cut, &ts, &nt), SL_EFORMAT, cut, "v", "reach past");
    free(bytes);
    fx_close(&f);
}
END_TEST

START_TEST(test_st_nan)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, "nan.safetensors", path, sizeof path);
    sl_named_tensor *ts;
    int n;
    const float fv[3] = {0.0f, INFINITY, -INFINITY};
    make_st(path, "{" ENTRY("lse", "F32", "[3]", 0, 12) "}", fv, sizeof fv);
    ck_assert_int_eq(sl_safetensors_read(f.ctx, path, &ts, &n), SL_OK); /* infinities are allowed */
    sl_named_tensors_free(f.ctx, ts, n);
    unsigned char data[16] = {0};
    const uint16_t nan_bf16 = 0xffc1;
    memcpy(data + 12, &nan_bf16, 2);
    make_st(path, "{" ENTRY("q", "F32", "[3]", 0, 12) "," ENTRY("k", "BF16", "[2]", 12, 16) "}", data, 16);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, "k", "NaN at flat index 0");
    const float nanf[3] = {1.0f, 2.0f, NAN};
    memcpy(data, nanf, 12);
    make_st(path, "{" ENTRY("k", "BF16", "[2]", 12, 16) "," ENTRY("q", "F32", "[3]", 0, 12) "}", data, 16);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, "k", "NaN");
    memset(data + 12, 0, 4);
    make_st(path, "{" ENTRY("k", "BF16", "[2]", 12, 16) "," ENTRY("q", "F32", "[3]", 0, 12) "}", data, 16);
    expect_fail(f.ctx, sl_safetensors_read(f.ctx, path, &ts, &n), SL_EFORMAT, path, "q", "NaN at flat index 2");
    fx_close(&f);
}
END_TEST

/* ---- robustness: random corruption and failing allocations ---------------------------------- */

START_TEST(test_fuzz)
{
    fx f;
    fx_open(&f);
    char st_path[512], npy_path[512], out[512];
    fx_path(&f, "whole.safetensors", st_path, sizeof st_path);
    fx_path(&f, "whole.npy", npy_path, sizeof npy_path);
    fx_path(&f, "fuzz.bin", out, sizeof out);
    size_t st_n, npy_n;
    unsigned char *st = valid_st(&f, st_path, &st_n);
    sl_rng r;
    sl_rng_seed(&r, 2024);
    int64_t shape[2] = {4, 3};
    sl_tensor t = new_random(f.ctx, &r, SL_F16, 2, shape);
    ck_assert_int_eq(sl_npy_write(f.ctx, npy_path, &t), SL_OK);
    sl_tensor_release(&t);
    unsigned char *npy = get_file(npy_path, &npy_n);
    size_t cap = st_n + npy_n + 512;
    unsigned char *buf = calloc(1, cap);
    ck_assert_ptr_nonnull(buf);
    int ok = 0;
    for (int it = 0; it < 4000; it++) {
        int is_st = it & 1;
        const unsigned char *src = is_st ? st : npy;
        size_t n = is_st ? st_n : npy_n;
        memcpy(buf, src, n);
        int edits = 1 + (int)(sl_rng_next(&r) % 4);
        for (int e = 0; e < edits; e++) {
            /* Mostly in the header, where the parser lives. */
            size_t span = sl_rng_next(&r) % 4 ? 160 : n;
            size_t at = (size_t)(sl_rng_next(&r) % span) % n;
            uint64_t kind = sl_rng_next(&r) % 4;
            if (kind == 0)
                buf[at] ^= (unsigned char)(1u << (sl_rng_next(&r) % 8));
            else if (kind == 1)
                buf[at] = (unsigned char)sl_rng_next(&r);
            else if (kind == 2)
                buf[at] = (unsigned char)"{}[]\",:-0123456789 \\u"[sl_rng_next(&r) % 21];
            else if ((n = at + (size_t)(sl_rng_next(&r) % 64)) > cap)
                n = cap;
        }
        put_file(out, buf, n);
        sl_status s;
        if (is_st) {
            sl_named_tensor *ts;
            int nt;
            s = sl_safetensors_read(f.ctx, out, &ts, &nt);
            if (s == SL_OK)
                sl_named_tensors_free(f.ctx, ts, nt);
        } else {
            s = sl_npy_read(f.ctx, out, &t);
            if (s == SL_OK)
                sl_tensor_release(&t);
        }
        ck_assert_msg(s == SL_OK || s == SL_EFORMAT, "%s: %s", sl_status_name(s), sl_ctx_error(f.ctx));
        ok += s == SL_OK;
        ck_assert_uint_eq(sl_ctx_live_allocs(f.ctx), 0);
    }
    ck_assert_int_lt(ok, 4000);
    free(buf);
    free(st);
    free(npy);
    fx_close(&f);
}
END_TEST

enum { OP_NPY_READ, OP_NPY_WRITE, OP_ST_READ, OP_ST_WRITE };

/* Runs one I/O call in a context whose allocator fails its k-th
 * allocation, for k = 1, 2, ... until the call succeeds. */
static void fault_loop(int op)
{
    fx f;
    fx_open(&f);
    char path[512];
    fx_path(&f, op == OP_NPY_READ || op == OP_NPY_WRITE ? "f.npy" : "f.safetensors", path, sizeof path);
    sl_rng r;
    sl_rng_seed(&r, 8);
    int64_t s1[2] = {5, 3}, s2[1] = {4};
    sl_named_tensor ts[2] = {{"x", {0}}, {"y", {0}}};
    ts[0].t = new_random(f.ctx, &r, SL_F32, 2, s1);
    ts[1].t = new_random(f.ctx, &r, SL_BF16, 1, s2);
    ck_assert_int_eq(sl_npy_write(f.ctx, path, &ts[0].t), SL_OK);
    if (op == OP_ST_READ || op == OP_ST_WRITE)
        ck_assert_int_eq(sl_safetensors_write(f.ctx, path, ts, 2), SL_OK);

    int failures = 0;
    for (long k = 1;; k++) {
        ck_assert_int_lt(k, 1000);
        tu_alloc a;
        sl_ctx *ctx = tu_ctx(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = a.calls + k;
        sl_status s;
        sl_tensor t;
        sl_named_tensor *got = NULL;
        int n = 0;
        switch (op) {
        case OP_NPY_READ: s = sl_npy_read(ctx, path, &t); break;
        case OP_NPY_WRITE: s = sl_npy_write(ctx, path, &ts[0].t); break;
        case OP_ST_READ: s = sl_safetensors_read(ctx, path, &got, &n); break;
        default: s = sl_safetensors_write(ctx, path, ts, 2); break;
        }
        if (s == SL_OK) {
            if (op == OP_NPY_READ) {
                expect_same(&t, &ts[0].t);
                sl_tensor_release(&t);
            }
            if (op == OP_ST_READ) {
                ck_assert_int_eq(n, 2);
                for (int i = 0; i < 2; i++)
                    expect_same(&got[i].t, &ts[i].t);
                sl_named_tensors_free(ctx, got, n);
            }
            tu_ctx_done(ctx, &a);
            break;
        }
        failures++;
        expect_fail(ctx, s, SL_ENOMEM, path, NULL, "out of memory");
        ck_assert_ptr_null(got);
        tu_ctx_done(ctx, &a);
    }
    /* Reads allocate at least a header and a tensor; writes of safetensors a header. */
    if (op != OP_NPY_WRITE)
        ck_assert_int_ge(failures, 2);
    for (int i = 0; i < 2; i++)
        sl_tensor_release(&ts[i].t);
    fx_close(&f);
}

START_TEST(test_fault_npy_read) { fault_loop(OP_NPY_READ); }
END_TEST
START_TEST(test_fault_npy_write) { fault_loop(OP_NPY_WRITE); }
END_TEST
START_TEST(test_fault_st_read) { fault_loop(OP_ST_READ); }
END_TEST
START_TEST(test_fault_st_write) { fault_loop(OP_ST_WRITE); }
END_TEST

/* ---- the suite ------------------------------------------------------------------------------- */

static Suite *io_suite(void)
{
    Suite *s = suite_create("io");
    TCase *tc = tcase_create("dtype");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_f16_known);
    tcase_add_test(tc, test_f16_ties);
    tcase_add_test(tc, test_f16_exhaustive);
    tcase_add_test(tc, test_f16_oracle);
    tcase_add_test(tc, test_bf16);
    tcase_add_test(tc, test_names);
    suite_add_tcase(s, tc);

    tc = tcase_create("npy");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_npy_roundtrip);
    tcase_add_test(tc, test_npy_known_files);
    tcase_add_test(tc, test_npy_write_view_and_errors);
    tcase_add_test(tc, test_npy_bad_headers);
    tcase_add_test(tc, test_not_a_tensor_file);
    tcase_add_test(tc, test_npy_bad_preambles);
    tcase_add_test(tc, test_npy_truncated);
    tcase_add_test(tc, test_npy_nan);
    suite_add_tcase(s, tc);

    tc = tcase_create("safetensors");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_st_roundtrip);
    tcase_add_test(tc, test_st_exact_layout);
    tcase_add_test(tc, test_st_known_file);
    tcase_add_test(tc, test_st_write_errors);
    tcase_add_test(tc, test_st_bad_headers);
    tcase_add_test(tc, test_st_deep_and_huge);
    tcase_add_test(tc, test_st_truncated);
    tcase_add_test(tc, test_st_nan);
    suite_add_tcase(s, tc);

    tc = tcase_create("robustness");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fuzz);
    tcase_add_test(tc, test_fault_npy_read);
    tcase_add_test(tc, test_fault_npy_write);
    tcase_add_test(tc, test_fault_st_read);
    tcase_add_test(tc, test_fault_st_write);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(io_suite()); }
