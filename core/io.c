/* io.c — tensors to and from .npy and safetensors files. Readers trust no
 * claim a file makes: every length, offset and shape is checked against the
 * file's real size before anything is allocated or read, and float data is
 * scanned for NaN. Tensors keep the file's dtype. */
#include "internal.h"
#include "json.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#if defined(__GNUC__)
#define SL__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SL__PRINTF(a, b)
#endif

/* numpy itself refuses headers above 10,000 bytes by default; a megabyte
 * leaves room for hand-made files without letting a file ask for gigabytes. */
#define NPY_MAX_HEADER_BYTES ((uint64_t)1 << 20)
/* The limit of the reference safetensors implementation. */
#define ST_MAX_HEADER_BYTES ((uint64_t)100000000)
/* Nesting in __metadata__, below the header's own object. */
#define JSON_MAX_DEPTH 64

typedef unsigned long long ull;

/* ---- errors ---------------------------------------------------------------- */

/* Where an error happened: the file and, once known, the tensor. */
typedef struct where {
    sl_ctx *ctx;
    const char *path;
    const char *name; /* NULL while no tensor is known */
} where;

/* Copies src (file bytes: names, dtype strings) into dst (n bytes) for a
 * message as printable ASCII: any other byte becomes \xNN, and a cut is
 * marked with "...". */
static void printable(char *dst, size_t n, const char *src, size_t len)
{
    size_t w = 0, i = 0;
    for (; i < len && w + 1 < n; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c >= 0x20 && c < 0x7f)
            dst[w++] = (char)c;
        else if (w + 5 < n)
            w += (size_t)snprintf(dst + w, n - w, "\\x%02x", c);
        else
            break;
    }
    if (i < len && n >= 4)
        memcpy(dst + (w >= 3 ? w - 3 : 0), "...", 3);
    dst[w] = '\0';
}

/* "<path>: tensor '<name>': <message>", or "<path>: <message>" when no tensor
 * is known yet (the file's own header is broken). */
static sl_status fail_at(const where *w, sl_status s, const char *fmt, ...) SL__PRINTF(3, 4);
static sl_status fail_at(const where *w, sl_status s, const char *fmt, ...)
{
    char msg[SL__ERRMSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (w->name) {
        char name[96];
        printable(name, sizeof name, w->name, strlen(w->name));
        return sl_ctx_fail(w->ctx, s, "%s: tensor '%s': %s", w->path, name, msg);
    }
    return sl_ctx_fail(w->ctx, s, "%s: %s", w->path, msg);
}

/* Puts the file and tensor in front of a message another function left
 * (an allocation failure, usually). */
static sl_status rewrap(const where *w, sl_status s)
{
    char prev[SL__ERRMSG_BYTES];
    size_t len = strlen(sl_ctx_error(w->ctx));
    if (len >= sizeof prev)
        len = sizeof prev - 1;
    memcpy(prev, sl_ctx_error(w->ctx), len);
    prev[len] = '\0';
    return fail_at(w, s, "%s", prev);
}

/* ---- helpers ---------------------------------------------------------------- */

static int host_little_endian(void)
{
    uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static void format_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t w = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && w < n; i++)
        w += (size_t)snprintf(buf + w, n - w, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (w < n)
        snprintf(buf + w, n - w, "]");
}

/* Bytes a tensor of this shape holds. Fails (-1) when any extent, zero dims
 * skipped, would overflow: such a shape is never real, and stride arithmetic
 * downstream must not overflow even for an empty tensor. */
static int shape_bytes(int ndim, const int64_t *shape, size_t itemsize, uint64_t *out)
{
    uint64_t limit = (uint64_t)INT64_MAX < (uint64_t)SIZE_MAX ? (uint64_t)INT64_MAX : (uint64_t)SIZE_MAX;
    uint64_t extent = itemsize, bytes = itemsize;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d > 1 && extent > limit / d)
            return -1;
        if (d > 1)
            extent *= d;
        bytes *= d;
    }
    *out = bytes;
    return 0;
}

/* Flat index of the first NaN in float data, or -1. Bit tests keep this
 * right under -ffast-math. Infinities pass: a fully masked row's lse is -inf. */
static int64_t first_nan(const void *data, sl_dtype dt, int64_t numel)
{
    const unsigned char *p = data;
    for (int64_t i = 0; i < numel; i++) {
        if (dt == SL_F32) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            if ((u & 0x7fffffffu) > 0x7f800000u)
                return i;
        } else if (dt == SL_F64) {
            uint64_t u;
            memcpy(&u, p + 8 * i, 8);
            if ((u & 0x7fffffffffffffffull) > 0x7ff0000000000000ull)
                return i;
        } else if (dt == SL_F16 || dt == SL_BF16) {
            uint16_t u;
            memcpy(&u, p + 2 * i, 2);
            if ((u & 0x7fffu) > (dt == SL_F16 ? 0x7c00u : 0x7f80u))
                return i;
        } else {
            return -1;
        }
    }
    return -1;
}

/* ---- reading files ------------------------------------------------------------ */

static sl_status open_read(const where *w, FILE **fp, uint64_t *size)
{
    FILE *f = fopen(w->path, "rb");
    if (!f)
        return fail_at(w, SL_EIO, "cannot open for reading: %s", strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        int e = errno;
        fclose(f);
        return fail_at(w, SL_EIO, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        fclose(f);
        return fail_at(w, SL_EIO, "expected a regular file, found %s",
                       S_ISDIR(sb.st_mode) ? "a directory" : "a special file");
    }
    *fp = f;
    *size = (uint64_t)sb.st_size;
    return SL_OK;
}

/* Reads exactly n bytes at offset. The caller has checked the range against
 * the file size, so a short read means the file changed underneath us. */
static sl_status read_at(const where *w, FILE *f, uint64_t offset, void *dst, size_t n, const char *what)
{
    if (n == 0)
        return SL_OK;
    if (fseeko(f, (off_t)offset, SEEK_SET) != 0)
        return fail_at(w, SL_EIO, "cannot seek to byte %llu: %s", (ull)offset, strerror(errno));
    if (fread(dst, 1, n, f) != n) {
        if (ferror(f))
            return fail_at(w, SL_EIO, "reading %s: %s", what, strerror(errno));
        return fail_at(w, SL_EFORMAT, "expected %zu bytes of %s at byte %llu, found the end of the file",
                       n, what, (ull)offset);
    }
    return SL_OK;
}

/* Allocates the tensor, reads its bytes at offset and rejects NaN. */
static sl_status load_tensor(const where *w, FILE *f, uint64_t offset, uint64_t bytes, sl_dtype dt, int ndim,
                             const int64_t *shape, sl_tensor *out)
{
    sl_tensor t;
    sl_status s = sl_tensor_new(w->ctx, dt, ndim, shape, &t);
    if (s)
        return rewrap(w, s);
    s = read_at(w, f, offset, t.data, (size_t)bytes, "tensor data");
    if (!s) {
        int64_t bad = first_nan(t.data, dt, (int64_t)(bytes / sl_dtype_size(dt)));
        if (bad >= 0)
            s = fail_at(w, SL_EFORMAT, "expected no NaN, found NaN at flat index %lld", (long long)bad);
    }
    if (s) {
        sl_tensor_release(&t);
        return s;
    }
    *out = t;
    return SL_OK;
}

/* ---- writing files -------------------------------------------------------------- */

/* SL_EARG unless t is a tensor with data that a file can hold. */
static sl_status check_writable(const where *w, const sl_tensor *t, uint64_t *bytes)
{
    if (!t)
        return fail_at(w, SL_EARG, "expected a tensor, found NULL");
    if ((unsigned)t->dtype >= SL_DTYPE__COUNT)
        return fail_at(w, SL_EARG, "expected a known dtype, found %d", (int)t->dtype);
    if (t->ndim < 0 || t->ndim > SL_MAX_DIMS)
        return fail_at(w, SL_EARG, "expected 0 to %d dims, found %d", SL_MAX_DIMS, t->ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0)
            return fail_at(w, SL_EARG, "expected non-negative dims, found %lld in dim %d",
                           (long long)t->shape[i], i);
    if (shape_bytes(t->ndim, t->shape, sl_dtype_size(t->dtype), bytes) != 0)
        return fail_at(w, SL_EARG, "shape is too large");
    if (*bytes > 0 && !t->data)
        return fail_at(w, SL_EARG, "expected a tensor with data, found an empty (released) tensor");
    return SL_OK;
}

static int is_row_major(const sl_tensor *t)
{
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != expect)
            return 0;
        expect *= t->shape[i];
    }
    return 1;
}

/* Writes t's elements in row-major order through its strides (views from
 * sl_tensor_narrow are not contiguous). 0 on success. */
static int write_elements(FILE *f, const sl_tensor *t, uint64_t bytes)
{
    size_t isz = sl_dtype_size(t->dtype);
    if (bytes == 0)
        return 0;
    if (is_row_major(t))
        return fwrite(t->data, 1, (size_t)bytes, f) == (size_t)bytes ? 0 : -1;
    int nd = t->ndim; /* >= 1: a scalar is always row-major */
    int64_t inner = t->shape[nd - 1], inner_stride = t->stride[nd - 1];
    int64_t rows = (int64_t)(bytes / isz) / inner;
    int64_t idx[SL_MAX_DIMS] = {0};
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = 0;
        for (int d = 0; d < nd - 1; d++)
            off += idx[d] * t->stride[d];
        const char *row = (const char *)t->data + off * (int64_t)isz;
        if (inner_stride == 1) {
            if (fwrite(row, isz, (size_t)inner, f) != (size_t)inner)
                return -1;
        } else {
            for (int64_t k = 0; k < inner; k++)
                if (fwrite(row + k * inner_stride * (int64_t)isz, isz, 1, f) != 1)
                    return -1;
        }
        for (int d = nd - 2; d >= 0; d--) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
    }
    return 0;
}

/* Closes f and turns any write error into SL_EIO. */
static sl_status finish_write(const where *w, FILE *f, int failed, int err)
{
    if (fclose(f) != 0 && !failed) {
        failed = 1;
        err = errno;
    }
    if (failed) {
        where file = {w->ctx, w->path, NULL};
        return fail_at(&file, SL_EIO, "writing failed: %s", strerror(err));
    }
    return SL_OK;
}

/* ---- .npy --------------------------------------------------------------------------- */

typedef struct cursor {
    const char *p, *end;
} cursor;

static void describe_next(const char *p, const char *end, char *buf, size_t n)
{
    if (p >= end)
        snprintf(buf, n, "the end of the header");
    else if ((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f)
        snprintf(buf, n, "'%c'", *p);
    else
        snprintf(buf, n, "byte 0x%02x", (unsigned char)*p);
}

static sl_status npy_fail(const where *w, const cursor *c, const char *expected)
{
    char found[32];
    describe_next(c->p, c->end, found, sizeof found);
    return fail_at(w, SL_EFORMAT, ".npy header: expected %s, found %s", expected, found);
}

static void npy_skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int npy_peek(cursor *c, char ch)
{
    npy_skip_ws(c);
    return c->p < c->end && *c->p == ch;
}

static sl_status npy_expect(const where *w, cursor *c, char ch, const char *expected)
{
    if (!npy_peek(c, ch))
        return npy_fail(w, c, expected);
    c->p++;
    return SL_OK;
}

/* A Python string literal without escapes: 'text' or "text". */
static sl_status npy_string(const where *w, cursor *c, const char **s, size_t *len)
{
    npy_skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return npy_fail(w, c, "a quoted string");
    char quote = *c->p++;
    const char *start = c->p;
    while (c->p < c->end && *c->p != quote) {
        if (*c->p == '\\' || *c->p == '\n')
            return npy_fail(w, c, "a string without escapes or newlines");
        c->p++;
    }
    if (c->p >= c->end)
        return npy_fail(w, c, "the end of a string");
    *s = start;
    *len = (size_t)(c->p - start);
    c->p++;
    return SL_OK;
}

static int span_is(const char *s, size_t len, const char *lit)
{
    return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

typedef struct npy_info {
    sl_dtype dtype;
    int ndim;
    int64_t shape[SL_MAX_DIMS];
} npy_info;

/* 'shape': a tuple of non-negative integers, "()" "(3,)" "(2, 3)"; Python 2
 * files may write "3L". */
static sl_status npy_shape(const where *w, cursor *c, npy_info *info)
{
    sl_status s = npy_expect(w, c, '(', "'(' to open the shape tuple");
    if (s)
        return s;
    int count = 0;
    if (npy_peek(c, ')')) {
        c->p++;
    } else {
        for (;;) {
            npy_skip_ws(c);
            if (c->p >= c->end || *c->p < '0' || *c->p > '9')
                return npy_fail(w, c, "a non-negative integer in the shape");
            int64_t v = 0;
            while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
                int digit = *c->p++ - '0';
                if (v > (INT64_MAX - digit) / 10)
                    return fail_at(w, SL_EFORMAT, ".npy header: a dimension is above 2^63");
                v = v * 10 + digit;
            }
            if (c->p < c->end && *c->p == 'L')
                c->p++;
            if (count < SL_MAX_DIMS)
                info->shape[count] = v;
            count++;
            if (npy_peek(c, ',')) {
                c->p++;
                if (npy_peek(c, ')')) {
                    c->p++;
                    break;
                }
            } else if (npy_peek(c, ')')) {
                c->p++;
                break;
            } else {
                return npy_fail(w, c, "',' or ')' in the shape tuple");
            }
        }
    }
    if (count > SL_MAX_DIMS)
        return fail_at(w, SL_EFORMAT, ".npy header: expected at most %d dims, found %d", SL_MAX_DIMS, count);
    info->ndim = count;
    return SL_OK;
}

static const struct {
    const char *descr;
    sl_dtype dtype;
} npy_dtypes[] = {
    {"<f4", SL_F32}, {"<f2", SL_F16}, {"<f8", SL_F64}, {"<i4", SL_I32}, {"|u1", SL_U8},
};

/* The header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * with keys in any order, each exactly once, then spaces and a newline. */
static sl_status npy_parse_header(const where *w, const char *hdr, size_t len, npy_info *info)
{
    cursor c = {hdr, hdr + len};
    int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0;
    const char *descr = NULL;
    size_t descr_len = 0;
    sl_status s = npy_expect(w, &c, '{', "'{' to open the header dict");
    if (s)
        return s;
    for (;;) {
        if (npy_peek(&c, '}')) {
            c.p++;
            break;
        }
        const char *key;
        size_t key_len;
        if ((s = npy_string(w, &c, &key, &key_len)) || (s = npy_expect(w, &c, ':', "':' after a key")))
            return s;
        if (span_is(key, key_len, "descr")) {
            if (have_descr++)
                return fail_at(w, SL_EFORMAT, ".npy header: key 'descr' appears twice");
            if ((s = npy_string(w, &c, &descr, &descr_len)))
                return s;
        } else if (span_is(key, key_len, "fortran_order")) {
            if (have_order++)
                return fail_at(w, SL_EFORMAT, ".npy header: key 'fortran_order' appears twice");
            npy_skip_ws(&c);
            size_t left = (size_t)(c.end - c.p);
            if (left >= 4 && memcmp(c.p, "True", 4) == 0) {
                fortran = 1;
                c.p += 4;
            } else if (left >= 5 && memcmp(c.p, "False", 5) == 0) {
                c.p += 5;
            } else {
                return npy_fail(w, &c, "True or False for 'fortran_order'");
            }
        } else if (span_is(key, key_len, "shape")) {
            if (have_shape++)
                return fail_at(w, SL_EFORMAT, ".npy header: key 'shape' appears twice");
            if ((s = npy_shape(w, &c, info)))
                return s;
        } else {
            char k[48];
            printable(k, sizeof k, key, key_len);
            return fail_at(w, SL_EFORMAT,
                           ".npy header: expected keys 'descr', 'fortran_order', 'shape', found '%s'", k);
        }
        if (npy_peek(&c, ',')) {
            c.p++;
        } else if (!npy_peek(&c, '}')) {
            return npy_fail(w, &c, "',' or '}' in the header dict");
        }
    }
    npy_skip_ws(&c);
    if (c.p != c.end)
        return npy_fail(w, &c, "only spaces after the header dict");
    if (!have_descr || !have_order || !have_shape)
        return fail_at(w, SL_EFORMAT, ".npy header: expected keys 'descr', 'fortran_order' and 'shape', found no '%s'",
                       !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    if (fortran)
        return fail_at(w, SL_EFORMAT, "expected C order, found fortran_order True (save np.ascontiguousarray(a))");
    for (size_t i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++) {
        if (span_is(descr, descr_len, npy_dtypes[i].descr)) {
            info->dtype = npy_dtypes[i].dtype;
            return SL_OK;
        }
    }
    char d[32];
    printable(d, sizeof d, descr, descr_len);
    if (descr_len > 0 && descr[0] == '>')
        return fail_at(w, SL_EFORMAT, "expected little-endian data, found big-endian dtype '%s'", d);
    return fail_at(w, SL_EFORMAT, "expected dtype '<f4', '<f2', '<f8', '<i4' or '|u1', found '%s'", d);
}

static sl_status npy_read_file(const where *w, FILE *f, uint64_t size, sl_tensor *out)
{
    unsigned char pre[12];
    size_t got = size < 6 ? (size_t)size : 6;
    sl_status s = got ? read_at(w, f, 0, pre, got, "the .npy preamble") : SL_OK;
    if (s)
        return s;
    if (got && memcmp(pre, "\x93NUMPY", got) != 0)
        return fail_at(w, SL_EFORMAT, "not an npy file (it does not start with the magic \\x93NUMPY)");
    if (size < 10)
        return fail_at(w, SL_EFORMAT, "expected a .npy file of at least 10 bytes, found %llu bytes", (ull)size);
    if ((s = read_at(w, f, 0, pre, 10, "the .npy preamble")))
        return s;
    if (memcmp(pre, "\x93NUMPY", 6) != 0)
        return fail_at(w, SL_EFORMAT, "not an npy file (it does not start with the magic \\x93NUMPY)");
    uint64_t pre_len, hlen;
    if (pre[6] == 1 && pre[7] == 0) {
        pre_len = 10;
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
    } else if ((pre[6] == 2 || pre[6] == 3) && pre[7] == 0) {
        if (size < 12)
            return fail_at(w, SL_EFORMAT, "expected a 12-byte preamble for format %u.0, found a %llu-byte file",
                           pre[6], (ull)size);
        if ((s = read_at(w, f, 10, pre + 10, 2, "the .npy preamble")))
            return s;
        pre_len = 12;
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8 | (uint64_t)pre[10] << 16 | (uint64_t)pre[11] << 24;
    } else {
        return fail_at(w, SL_EFORMAT, "expected .npy format version 1.0, 2.0 or 3.0, found %u.%u", pre[6], pre[7]);
    }
    if (hlen > size - pre_len)
        return fail_at(w, SL_EFORMAT, "header claims %llu bytes, but only %llu follow the preamble (truncated file)",
                       (ull)hlen, (ull)(size - pre_len));
    if (hlen > NPY_MAX_HEADER_BYTES)
        return fail_at(w, SL_EFORMAT, "expected a header of at most %llu bytes, found %llu",
                       (ull)NPY_MAX_HEADER_BYTES, (ull)hlen);

    char *hdr = sl_ctx_alloc(w->ctx, (size_t)hlen);
    if (!hdr)
        return rewrap(w, SL_ENOMEM);
    npy_info info = {0};
    s = read_at(w, f, pre_len, hdr, (size_t)hlen, "the .npy header");
    if (!s)
        s = npy_parse_header(w, hdr, (size_t)hlen, &info);
    sl_ctx_dealloc(w->ctx, hdr, (size_t)hlen);
    if (s)
        return s;

    uint64_t need, have = size - pre_len - hlen;
    char shape[128];
    format_shape(shape, sizeof shape, info.ndim, info.shape);
    if (shape_bytes(info.ndim, info.shape, sl_dtype_size(info.dtype), &need) != 0)
        return fail_at(w, SL_EFORMAT, "shape %s is too large", shape);
    if (need != have)
        return fail_at(w, SL_EFORMAT, "%s%s needs %llu bytes of data, found %llu (%s)", sl_dtype_name(info.dtype),
                       shape, (ull)need, (ull)have, need > have ? "truncated file" : "trailing bytes");
    return load_tensor(w, f, pre_len + hlen, need, info.dtype, info.ndim, info.shape, out);
}

sl_status sl_npy_read(sl_ctx *ctx, const char *path, sl_tensor *out)
{
    if (!ctx)
        return SL_EARG;
    if (!path || !out)
        return sl_ctx_fail(ctx, SL_EARG, "sl_npy_read: expected a path and an output tensor, found NULL");
    memset(out, 0, sizeof *out);
    where w = {ctx, path, NULL};
    if (!host_little_endian())
        return fail_at(&w, SL_EUNSUPPORTED, "reading .npy needs a little-endian host");
    FILE *f = NULL;
    uint64_t size = 0;
    sl_status s = open_read(&w, &f, &size);
    if (s)
        return s;
    w.name = base_name(path);
    s = npy_read_file(&w, f, size, out);
    fclose(f);
    return s;
}

sl_status sl_npy_write(sl_ctx *ctx, const char *path, const sl_tensor *t)
{
    static const char *const descr[SL_DTYPE__COUNT] = {
        [SL_F32] = "<f4", [SL_F16] = "<f2", [SL_F64] = "<f8", [SL_I32] = "<i4", [SL_U8] = "|u1",
    };
    if (!ctx)
        return SL_EARG;
    if (!path)
        return sl_ctx_fail(ctx, SL_EARG, "sl_npy_write: expected a path, found NULL");
    where w = {ctx, path, base_name(path)};
    if (!host_little_endian())
        return fail_at(&w, SL_EUNSUPPORTED, "writing .npy needs a little-endian host");
    uint64_t bytes;
    sl_status s = check_writable(&w, t, &bytes);
    if (s)
        return s;
    if (!descr[t->dtype])
        return fail_at(&w, SL_EARG, ".npy has no %s dtype; expected f32, f16, f64, i32 or u8 (convert first)",
                       sl_dtype_name(t->dtype));

    /* At most ~150 characters before padding, so 256 always fits. */
    char hdr[256];
    size_t len = (size_t)snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                                  descr[t->dtype]);
    for (int i = 0; i < t->ndim; i++)
        len += (size_t)snprintf(hdr + len, sizeof hdr - len, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    len += (size_t)snprintf(hdr + len, sizeof hdr - len, "%s), }", t->ndim == 1 ? "," : "");
    /* numpy pads with spaces and ends with a newline so the data starts on a
     * 64-byte boundary. */
    size_t pad = (64 - (10 + len + 1) % 64) % 64;
    memset(hdr + len, ' ', pad);
    len += pad;
    hdr[len++] = '\n';
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(len & 0xff),
                             (unsigned char)(len >> 8)};

    FILE *f = fopen(path, "wb");
    if (!f) {
        where file = {ctx, path, NULL};
        return fail_at(&file, SL_EIO, "cannot open for writing: %s", strerror(errno));
    }
    int failed = fwrite(pre, 1, sizeof pre, f) != sizeof pre || fwrite(hdr, 1, len, f) != len ||
                 write_elements(f, t, bytes) != 0;
    return finish_write(&w, f, failed, errno);
}

/* ---- safetensors: the header ------------------------------------------------------- */

/* The header is parsed by cJSON (json.h); what follows checks its meaning. */

/* Offsets and dims are integers of at most 2^53, where doubles (cJSON's
 * numbers) are still exact. */
#define ST_MAX_INT 9007199254740992.0

typedef struct st_entry {
    const char *name; /* into the parsed header */
    sl_dtype dtype;
    int ndim;
    int64_t shape[SL_MAX_DIMS];
    uint64_t begin, end; /* data_offsets, relative to the data section */
} st_entry;

typedef struct st_list {
    st_entry *v;
    size_t n, cap;
} st_list;

static const struct {
    const char *name;
    sl_dtype dtype;
} st_dtypes[] = {
    {"F32", SL_F32}, {"F16", SL_F16}, {"BF16", SL_BF16}, {"F64", SL_F64}, {"I32", SL_I32}, {"U8", SL_U8},
};

static const char *st_dtype_name(sl_dtype t)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].dtype == t)
            return st_dtypes[i].name;
    return "?";
}

static sl_status st_parse_dtype(const where *w, const cJSON *v, st_entry *e)
{
    size_t i = 0, n = sizeof st_dtypes / sizeof st_dtypes[0];
    while (cJSON_IsString(v) && i < n && strcmp(v->valuestring, st_dtypes[i].name) != 0)
        i++;
    if (cJSON_IsString(v) && i < n) {
        e->dtype = st_dtypes[i].dtype;
        return SL_OK;
    }
    char d[48];
    if (cJSON_IsString(v)) {
        printable(d + 1, sizeof d - 2, v->valuestring, strlen(v->valuestring));
        d[0] = '\'';
        strcat(d, "'");
    } else {
        sl__json_describe(v, d, sizeof d);
    }
    return fail_at(w, SL_EFORMAT, "expected dtype F32, F16, BF16, F64, I32 or U8, found %s", d);
}

static sl_status st_parse_shape(const where *w, const cJSON *v, st_entry *e)
{
    char found[96];
    if (!cJSON_IsArray(v)) {
        sl__json_describe(v, found, sizeof found);
        return fail_at(w, SL_EFORMAT, "expected 'shape' to be an array of integer dims, found %s", found);
    }
    int count = 0;
    for (const cJSON *d = v->child; d; d = d->next, count++) {
        if (!sl__json_integral(d, -ST_MAX_INT, ST_MAX_INT)) {
            sl__json_describe(d, found, sizeof found);
            return fail_at(w, SL_EFORMAT, "expected integer dims of at most 2^53 in 'shape', found %s", found);
        }
        if (d->valuedouble < 0)
            return fail_at(w, SL_EFORMAT, "expected non-negative dims in 'shape', found %.0f", d->valuedouble);
        if (count < SL_MAX_DIMS)
            e->shape[count] = (int64_t)d->valuedouble;
    }
    if (count > SL_MAX_DIMS)
        return fail_at(w, SL_EFORMAT, "expected at most %d dims in 'shape', found %d", SL_MAX_DIMS, count);
    e->ndim = count;
    return SL_OK;
}

static sl_status st_parse_offsets(const where *w, const cJSON *v, st_entry *e)
{
    const cJSON *b = cJSON_IsArray(v) ? v->child : NULL, *en = b ? b->next : NULL;
    if (!en || en->next || !sl__json_integral(b, 0, ST_MAX_INT) || !sl__json_integral(en, 0, ST_MAX_INT)) {
        char found[96];
        sl__json_describe(v, found, sizeof found);
        return fail_at(w, SL_EFORMAT,
                       "expected 'data_offsets' to be two non-negative integer offsets [begin, end] of at most "
                       "2^53, found %s", found);
    }
    e->begin = (uint64_t)b->valuedouble;
    e->end = (uint64_t)en->valuedouble;
    return SL_OK;
}

/* {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, keys in any order. */
static sl_status st_parse_entry(const where *w, const cJSON *v, st_entry *e)
{
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    sl_status s = SL_OK;
    if (!cJSON_IsObject(v)) {
        char found[96];
        sl__json_describe(v, found, sizeof found);
        return fail_at(w, SL_EFORMAT, "expected an object with dtype, shape and data_offsets, found %s", found);
    }
    for (const cJSON *m = v->child; m && !s; m = m->next) {
        const char *key = m->string;
        if (strcmp(key, "dtype") == 0) {
            if (have_dtype++)
                return fail_at(w, SL_EFORMAT, "key 'dtype' appears twice");
            s = st_parse_dtype(w, m, e);
        } else if (strcmp(key, "shape") == 0) {
            if (have_shape++)
                return fail_at(w, SL_EFORMAT, "key 'shape' appears twice");
            s = st_parse_shape(w, m, e);
        } else if (strcmp(key, "data_offsets") == 0) {
            if (have_offsets++)
                return fail_at(w, SL_EFORMAT, "key 'data_offsets' appears twice");
            s = st_parse_offsets(w, m, e);
        } else {
            char k[48];
            printable(k, sizeof k, key, strlen(key));
            return fail_at(w, SL_EFORMAT, "expected keys dtype, shape and data_offsets, found '%s'", k);
        }
    }
    if (s)
        return s;
    if (!have_dtype || !have_shape || !have_offsets)
        return fail_at(w, SL_EFORMAT, "expected keys dtype, shape and data_offsets, found no '%s'",
                       !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
    return SL_OK;
}

/* __metadata__ holds strings, integers, objects and arrays (the format says
 * strings; the reader has always let the rest through). */
static sl_status st_check_metadata(const where *w, const cJSON *v)
{
    if (cJSON_IsString(v) || sl__json_integral(v, -9223372036854775808.0, 9223372036854775807.0))
        return SL_OK;
    if (!cJSON_IsArray(v) && !cJSON_IsObject(v)) {
        char found[64];
        sl__json_describe(v, found, sizeof found);
        return fail_at(w, SL_EFORMAT, "'__metadata__': expected a string, integer, object or array, found %s", found);
    }
    for (const cJSON *c = v->child; c; c = c->next) {
        sl_status s = st_check_metadata(w, c);
        if (s)
            return s;
    }
    return SL_OK;
}

static sl_status st_push(const where *w, st_list *l, const st_entry *e)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        if (cap > (size_t)INT_MAX)
            return fail_at(w, SL_EFORMAT, "expected at most %d tensors, found more", INT_MAX);
        st_entry *v = sl_ctx_alloc(w->ctx, cap * sizeof *v);
        if (!v)
            return rewrap(w, SL_ENOMEM);
        if (l->n)
            memcpy(v, l->v, l->n * sizeof *v);
        if (l->v)
            sl_ctx_dealloc(w->ctx, l->v, l->cap * sizeof *v);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *e;
    return SL_OK;
}

/* The whole header: an object of tensor entries and an optional
 * __metadata__ object, then only white space. Entry names point into the
 * tree, which the caller deletes. */
static sl_status st_parse_header(where *w, const char *hdr, size_t hlen, st_list *l, cJSON **root)
{
    sl_status s = sl__json_parse(w->ctx, w->path, hdr, hlen, 8, JSON_MAX_DEPTH + 1, root);
    if (s)
        return s;
    if (!cJSON_IsObject(*root)) {
        char found[64];
        sl__json_describe(*root, found, sizeof found);
        return fail_at(w, SL_EFORMAT, "expected a JSON object as the header, found %s", found);
    }
    int have_meta = 0;
    for (const cJSON *m = (*root)->child; m; m = m->next) {
        if (strcmp(m->string, "__metadata__") == 0) {
            if (have_meta++)
                return fail_at(w, SL_EFORMAT, "key '__metadata__' appears twice");
            if (!cJSON_IsObject(m)) {
                char found[64];
                sl__json_describe(m, found, sizeof found);
                return fail_at(w, SL_EFORMAT, "expected an object for '__metadata__', found %s", found);
            }
            if ((s = st_check_metadata(w, m)))
                return s;
        } else {
            st_entry e;
            memset(&e, 0, sizeof e);
            e.name = m->string;
            w->name = m->string;
            if ((s = st_parse_entry(w, m, &e)) || (s = st_push(w, l, &e)))
                return s;
            w->name = NULL;
        }
    }
    return SL_OK;
}

static int by_name(const void *a, const void *b)
{
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    return strcmp(x->name, y->name);
}

static int by_offset(const void *a, const void *b)
{
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Each entry's size against its shape and the data section; names unique;
 * the entries tile the data section exactly (no overlap, no hole, nothing
 * after), as the format's specification demands. */
static sl_status st_check(where *w, const st_list *l, uint64_t data_bytes)
{
    for (size_t i = 0; i < l->n; i++) {
        const st_entry *e = &l->v[i];
        char shape[128];
        uint64_t need;
        w->name = e->name;
        format_shape(shape, sizeof shape, e->ndim, e->shape);
        if (e->end < e->begin)
            return fail_at(w, SL_EFORMAT, "expected data_offsets [begin, end] with begin <= end, found [%llu, %llu]",
                           (ull)e->begin, (ull)e->end);
        if (e->end > data_bytes)
            return fail_at(w, SL_EFORMAT, "data_offsets [%llu, %llu] reach past the %llu-byte data section",
                           (ull)e->begin, (ull)e->end, (ull)data_bytes);
        if (shape_bytes(e->ndim, e->shape, sl_dtype_size(e->dtype), &need) != 0)
            return fail_at(w, SL_EFORMAT, "shape %s is too large", shape);
        if (need != e->end - e->begin)
            return fail_at(w, SL_EFORMAT, "%s%s needs %llu bytes, found data_offsets [%llu, %llu] spanning %llu",
                           sl_dtype_name(e->dtype), shape, (ull)need, (ull)e->begin, (ull)e->end,
                           (ull)(e->end - e->begin));
    }
    w->name = NULL;
    if (l->n == 0) {
        if (data_bytes != 0)
            return fail_at(w, SL_EFORMAT, "expected no data after a header without tensors, found %llu bytes",
                           (ull)data_bytes);
        return SL_OK;
    }

    const st_entry **order = sl_ctx_alloc(w->ctx, l->n * sizeof *order);
    if (!order)
        return rewrap(w, SL_ENOMEM);
    for (size_t i = 0; i < l->n; i++)
        order[i] = &l->v[i];
    sl_status s = SL_OK;
    qsort(order, l->n, sizeof *order, by_name);
    for (size_t i = 1; i < l->n && !s; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            w->name = order[i]->name;
            s = fail_at(w, SL_EFORMAT, "expected unique names, found this name twice in the header");
        }
    }
    qsort(order, l->n, sizeof *order, by_offset);
    uint64_t covered = 0;
    for (size_t i = 0; i < l->n && !s; i++) {
        const st_entry *e = order[i];
        w->name = e->name;
        if (e->begin < covered) {
            char other[96];
            printable(other, sizeof other, order[i - 1]->name, strlen(order[i - 1]->name));
            s = fail_at(w, SL_EFORMAT, "data_offsets [%llu, %llu] overlap tensor '%s' at [%llu, %llu]",
                        (ull)e->begin, (ull)e->end, other, (ull)order[i - 1]->begin, (ull)order[i - 1]->end);
        } else if (e->begin > covered) {
            s = fail_at(w, SL_EFORMAT,
                        "expected contiguous data_offsets, found bytes [%llu, %llu) before this tensor unused",
                        (ull)covered, (ull)e->begin);
        }
        covered = e->end;
    }
    w->name = NULL;
    if (!s && covered != data_bytes)
        s = fail_at(w, SL_EFORMAT, "the tensors cover %llu bytes of the %llu-byte data section (trailing bytes)",
                    (ull)covered, (ull)data_bytes);
    sl_ctx_dealloc(w->ctx, order, l->n * sizeof *order);
    return s;
}

static sl_status st_load_all(where *w, FILE *f, uint64_t data_start, const st_list *l, sl_named_tensor **out,
                             int *n_out)
{
    if (l->n == 0)
        return SL_OK;
    size_t array_bytes = l->n * sizeof(sl_named_tensor);
    sl_named_tensor *ts = sl_ctx_alloc(w->ctx, array_bytes);
    if (!ts)
        return rewrap(w, SL_ENOMEM);
    memset(ts, 0, array_bytes);
    for (size_t i = 0; i < l->n; i++) {
        const st_entry *e = &l->v[i];
        size_t len = strlen(e->name);
        sl_status s = SL_OK;
        w->name = e->name;
        ts[i].name = sl_ctx_alloc(w->ctx, len + 1);
        if (!ts[i].name)
            s = rewrap(w, SL_ENOMEM);
        else
            memcpy(ts[i].name, e->name, len + 1);
        if (!s)
            s = load_tensor(w, f, data_start + e->begin, e->end - e->begin, e->dtype, e->ndim, e->shape, &ts[i].t);
        if (s) {
            sl_named_tensors_free(w->ctx, ts, (int)l->n);
            return s;
        }
    }
    w->name = NULL;
    *out = ts;
    *n_out = (int)l->n;
    return SL_OK;
}

static sl_status st_read_file(where *w, FILE *f, uint64_t size, sl_named_tensor **out, int *n_out)
{
    unsigned char lenb[8];
    if (size < 8)
        return fail_at(w, SL_EFORMAT, "expected at least 8 bytes (the header length), found %llu", (ull)size);
    sl_status s = read_at(w, f, 0, lenb, 8, "the header length");
    if (s)
        return s;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | lenb[i];
    /* A file of another kind (text, an npy) gives a length of its first
     * bytes far beyond any header (printable bytes make it >= 2^56): say what
     * the file is not rather than echo those bytes as a number. */
    if (hlen >> 32)
        return fail_at(w, SL_EFORMAT, "not a safetensors file (the first 8 bytes are not a plausible header length)");
    if (hlen > size - 8)
        return fail_at(w, SL_EFORMAT, "header length %llu reaches past the end of the %llu-byte file (truncated file)",
                       (ull)hlen, (ull)size);
    if (hlen > ST_MAX_HEADER_BYTES)
        return fail_at(w, SL_EFORMAT, "expected a header of at most %llu bytes, found %llu",
                       (ull)ST_MAX_HEADER_BYTES, (ull)hlen);

    char *hdr = sl_ctx_alloc(w->ctx, (size_t)hlen);
    if (!hdr)
        return rewrap(w, SL_ENOMEM);
    st_list l = {NULL, 0, 0};
    cJSON *root = NULL;
    s = read_at(w, f, 8, hdr, (size_t)hlen, "the header");
    if (!s)
        s = st_parse_header(w, hdr, (size_t)hlen, &l, &root);
    if (!s)
        s = st_check(w, &l, size - 8 - hlen);
    if (!s)
        s = st_load_all(w, f, 8 + hlen, &l, out, n_out);
    if (l.v)
        sl_ctx_dealloc(w->ctx, l.v, l.cap * sizeof *l.v);
    cJSON_Delete(root);
    sl_ctx_dealloc(w->ctx, hdr, (size_t)hlen);
    return s;
}

sl_status sl_safetensors_read(sl_ctx *ctx, const char *path, sl_named_tensor **out, int *n)
{
    if (!ctx)
        return SL_EARG;
    if (!path || !out || !n)
        return sl_ctx_fail(ctx, SL_EARG, "sl_safetensors_read: expected a path and outputs, found NULL");
    *out = NULL;
    *n = 0;
    where w = {ctx, path, NULL};
    if (!host_little_endian())
        return fail_at(&w, SL_EUNSUPPORTED, "reading safetensors needs a little-endian host");
    FILE *f = NULL;
    uint64_t size = 0;
    sl_status s = open_read(&w, &f, &size);
    if (s)
        return s;
    s = st_read_file(&w, f, size, out, n);
    fclose(f);
    return s;
}

void sl_named_tensors_free(sl_ctx *ctx, sl_named_tensor *ts, int n)
{
    if (!ts)
        return;
    for (int i = 0; i < n; i++) {
        if (ts[i].name)
            sl_ctx_dealloc(ctx, ts[i].name, strlen(ts[i].name) + 1);
        sl_tensor_release(&ts[i].t);
    }
    sl_ctx_dealloc(ctx, ts, (size_t)(n > 0 ? n : 0) * sizeof *ts);
}

/* ---- safetensors: writing ---------------------------------------------------------------- */

/* An integer as cJSON raw text: cJSON prints numbers from doubles, through
 * %1.15g (1e+15 for 10^15) above 2^31. */
static int add_int(cJSON *array, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (ull)v);
    cJSON *item = cJSON_CreateRaw(buf);
    if (!item)
        return 0;
    if (!cJSON_AddItemToArray(array, item)) {
        cJSON_Delete(item);
        return 0;
    }
    return 1;
}

/* The JSON header (without padding), printed without spaces: the format
 * metadata Hugging Face loaders look for, then the tensors in order. NULL
 * when cJSON runs out of memory; else cJSON_free it. */
static char *st_header_text(const sl_named_tensor *ts, int n, const uint64_t *bytes)
{
    uint64_t offset = 0;
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "__metadata__");
    int ok = meta && cJSON_AddStringToObject(meta, "format", "pt");
    for (int i = 0; i < n && ok; i++) {
        cJSON *e = cJSON_AddObjectToObject(root, ts[i].name), *shape, *offsets;
        ok = e && cJSON_AddStringToObject(e, "dtype", st_dtype_name(ts[i].t.dtype)) &&
             (shape = cJSON_AddArrayToObject(e, "shape")) != NULL;
        for (int d = 0; ok && d < ts[i].t.ndim; d++)
            ok = add_int(shape, (uint64_t)ts[i].t.shape[d]);
        ok = ok && (offsets = cJSON_AddArrayToObject(e, "data_offsets")) != NULL && add_int(offsets, offset) &&
             add_int(offsets, offset + bytes[i]);
        offset += bytes[i];
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

static int by_tensor_name(const void *a, const void *b)
{
    const sl_named_tensor *x = *(const sl_named_tensor *const *)a, *y = *(const sl_named_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Names present, not reserved, unique; tensors writable. Fills bytes[]. */
static sl_status st_check_inputs(where *w, const sl_named_tensor *ts, int n, uint64_t *bytes)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        w->name = ts[i].name;
        if (!ts[i].name)
            return fail_at(w, SL_EARG, "expected a name for tensor %d, found NULL", i);
        if (strcmp(ts[i].name, "__metadata__") == 0)
            return fail_at(w, SL_EARG, "expected a tensor name, found the format's reserved key");
        sl_status s = check_writable(w, &ts[i].t, &bytes[i]);
        if (s)
            return s;
        if (bytes[i] > UINT64_MAX - total)
            return fail_at(w, SL_EARG, "the tensors together are too large");
        total += bytes[i];
    }
    w->name = NULL;
    if (n < 2)
        return SL_OK;
    const sl_named_tensor **order = sl_ctx_alloc(w->ctx, (size_t)n * sizeof *order);
    if (!order)
        return rewrap(w, SL_ENOMEM);
    for (int i = 0; i < n; i++)
        order[i] = &ts[i];
    qsort(order, (size_t)n, sizeof *order, by_tensor_name);
    sl_status s = SL_OK;
    for (int i = 1; i < n && !s; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            w->name = order[i]->name;
            s = fail_at(w, SL_EARG, "expected unique names, found this name twice");
        }
    }
    sl_ctx_dealloc(w->ctx, order, (size_t)n * sizeof *order);
    w->name = NULL;
    return s;
}

sl_status sl_safetensors_write(sl_ctx *ctx, const char *path, const sl_named_tensor *ts, int n)
{
    if (!ctx)
        return SL_EARG;
    if (!path || (n > 0 && !ts))
        return sl_ctx_fail(ctx, SL_EARG, "sl_safetensors_write: expected a path and tensors, found NULL");
    if (n < 0)
        return sl_ctx_fail(ctx, SL_EARG, "sl_safetensors_write: expected n >= 0, found %d", n);
    where w = {ctx, path, NULL};
    if (!host_little_endian())
        return fail_at(&w, SL_EUNSUPPORTED, "writing safetensors needs a little-endian host");
    uint64_t *bytes = sl_ctx_alloc(ctx, (size_t)n * sizeof *bytes);
    if (!bytes)
        return rewrap(&w, SL_ENOMEM);
    sl_status s = st_check_inputs(&w, ts, n, bytes);

    char *text = NULL;
    size_t len = 0, hlen = 0;
    if (!s) {
        text = st_header_text(ts, n, bytes);
        if (!text)
            s = fail_at(&w, SL_ENOMEM, "out of memory printing the header");
        else
            len = strlen(text);
        /* Spaces pad the header so the data section starts 8-byte aligned. */
        hlen = (len + 7) & ~(size_t)7;
    }
    FILE *f = NULL;
    if (!s) {
        f = fopen(path, "wb");
        if (!f)
            s = fail_at(&w, SL_EIO, "cannot open for writing: %s", strerror(errno));
    }
    if (!s) {
        static const char spaces[9] = "        ";
        unsigned char lenb[8];
        for (int i = 0; i < 8; i++)
            lenb[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
        int failed = fwrite(lenb, 1, 8, f) != 8 || fwrite(text, 1, len, f) != len ||
                     fwrite(spaces, 1, hlen - len, f) != hlen - len;
        for (int i = 0; i < n && !failed; i++)
            failed = write_elements(f, &ts[i].t, bytes[i]) != 0;
        s = finish_write(&w, f, failed, errno);
    }
    if (text)
        cJSON_free(text);
    sl_ctx_dealloc(ctx, bytes, (size_t)n * sizeof *bytes);
    return s;
}
