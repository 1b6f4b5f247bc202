/* json.c — JSON files through cJSON: the parse, the checks cJSON leaves out,
 * and values described for messages. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef unsigned long long ull;

/* Up to 16 bytes from p (before end) for a message; bytes outside printable
 * ASCII become '?'. */
static void near_text(const char *p, const char *end, char *out, size_t n)
{
    size_t w = 0;
    for (; p < end && w + 1 < n && w < 16; p++)
        out[w++] = ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) ? '?' : *p;
    out[w] = '\0';
}

/* "<path>: invalid JSON at byte N near '...'<why>", N counted in the file. */
static sl_status invalid_at(sl_ctx *ctx, const char *path, const char *text, size_t len, size_t at, size_t base,
                            const char *why)
{
    char near[24];
    if (at >= len)
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: invalid JSON at byte %llu (the end of the text)%s", path,
                           (ull)(base + len), why);
    near_text(text + at, text + len, near, sizeof near);
    return sl_ctx_fail(ctx, SL_EFORMAT, "%s: invalid JSON at byte %llu near '%s'%s", path, (ull)(base + at), near,
                       why);
}

static void clean_key(char *dst, size_t n, const char *src)
{
    size_t i = 0, len = strlen(src);
    for (; i < len && i + 1 < n; i++)
        dst[i] = ((unsigned char)src[i] < 0x20 || src[i] == 0x7f) ? '?' : src[i];
    dst[i] = '\0';
    if (i < len && i >= 3)
        memcpy(dst + i - 3, "...", 3);
}

typedef struct walk {
    sl_ctx *ctx;
    const char *path;
    int max_depth;
} walk;

static sl_status walk_fail(const walk *w, const char *key, const char *msg)
{
    char k[64];
    if (!key)
        return sl_ctx_fail(w->ctx, SL_EFORMAT, "%s: %s", w->path, msg);
    clean_key(k, sizeof k, key);
    return sl_ctx_fail(w->ctx, SL_EFORMAT, "%s: key '%s': %s", w->path, k, msg);
}

/* Numbers finite and containers at most max_depth deep; key is the member
 * v belongs to (the nearest one above it), for messages. */
static sl_status walk_value(const walk *w, const cJSON *v, int depth, const char *key)
{
    if (cJSON_IsNumber(v) && !isfinite(v->valuedouble))
        return walk_fail(w, key, "expected a number within double range, found one beyond it");
    if (!cJSON_IsArray(v) && !cJSON_IsObject(v))
        return SL_OK;
    if (depth > w->max_depth) {
        char msg[64];
        snprintf(msg, sizeof msg, "expected nesting at most %d deep, found deeper", w->max_depth);
        return walk_fail(w, key, msg);
    }
    for (const cJSON *c = v->child; c; c = c->next) {
        sl_status s = walk_value(w, c, depth + 1, cJSON_IsObject(v) ? c->string : key);
        if (s)
            return s;
    }
    return SL_OK;
}

sl_status sl__json_parse(sl_ctx *ctx, const char *path, const char *text, size_t len, size_t base, int max_depth,
                         cJSON **root)
{
    *root = NULL;
    /* cJSON skips a byte-order mark; JSON text has none. */
    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
        return invalid_at(ctx, path, text, len, 0, base, " (a byte-order mark)");
    /* require_null_terminated = 0: cJSON 1.7.15 would look for a NUL past len.
     * The end pointer says where the value (or the error) is. */
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!v) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
        return invalid_at(ctx, path, text, len, at, base, "");
    }
    const char *stop = end, *tail = end;
    while (tail < text + len && (*tail == ' ' || *tail == '\t' || *tail == '\n' || *tail == '\r'))
        tail++;
    sl_status s = SL_OK;
    if (tail != text + len)
        s = invalid_at(ctx, path, text, len, (size_t)(tail - text), base,
                       ": expected only white space after the JSON value");
    /* cJSON takes every byte below 0x21 for white space, inside strings too. */
    for (const char *p = text; !s && p < stop; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r') {
            char why[48];
            snprintf(why, sizeof why, " (control byte 0x%02x)", (unsigned char)*p);
            s = invalid_at(ctx, path, text, len, (size_t)(p - text), base, why);
        }
    /* A \u after an odd run of backslashes is an escape (the text parsed,
     * so every backslash is inside a string). cJSON reads bad hex digits
     * as 0 and cuts the string at a \u0000; both are refused here. */
    for (const char *p = text; !s && p < stop; p++) {
        if (*p != '\\')
            continue;
        const char *q = p;
        while (q < stop && *q == '\\')
            q++;
        if ((q - p) % 2 == 1 && q < stop && *q == 'u') {
            size_t at = (size_t)(q - 1 - text);
            int hex = stop - q >= 5;
            for (int i = 1; hex && i <= 4; i++)
                hex = strchr("0123456789abcdefABCDEF", q[i]) != NULL && q[i] != '\0';
            if (!hex)
                s = invalid_at(ctx, path, text, len, at, base, " (\\u and four hex digits)");
            else if (memcmp(q, "u0000", 5) == 0)
                s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: byte %llu: expected no \\u0000 in a string (strings here "
                                "are C strings), found one", path, (ull)(base + at));
        }
        p = q - 1;
    }
    if (!s) {
        walk w = {ctx, path, max_depth};
        s = walk_value(&w, v, 1, NULL);
    }
    if (s) {
        cJSON_Delete(v);
        return s;
    }
    *root = v;
    return SL_OK;
}

/* ---- describing values ---------------------------------------------------- */

typedef struct out {
    char *buf;
    size_t n, w;
    int cut;
} out;

static void put(out *o, const char *s)
{
    for (; *s; s++) {
        if (o->w + 1 >= o->n) {
            o->cut = 1;
            return;
        }
        o->buf[o->w++] = *s;
    }
}

static void put_number(out *o, double d)
{
    char t[40];
    if (d == floor(d) && fabs(d) < 1e17)
        snprintf(t, sizeof t, "%.0f", d);
    else {
        snprintf(t, sizeof t, "%.15g", d);
        if (strtod(t, NULL) != d)
            snprintf(t, sizeof t, "%.17g", d);
    }
    put(o, t);
}

static void put_value(out *o, const cJSON *v, int top)
{
    if (cJSON_IsNumber(v)) {
        put_number(o, v->valuedouble);
    } else if (cJSON_IsString(v)) {
        char c[2] = {0, 0};
        put(o, "\"");
        for (const char *p = v->valuestring; *p && !o->cut; p++) {
            c[0] = ((unsigned char)*p < 0x20 || *p == 0x7f) ? '?' : *p;
            put(o, c);
        }
        put(o, "\"");
    } else if (cJSON_IsTrue(v)) {
        put(o, "true");
    } else if (cJSON_IsFalse(v)) {
        put(o, "false");
    } else if (cJSON_IsNull(v)) {
        put(o, "null");
    } else if (cJSON_IsArray(v) && top) {
        put(o, "[");
        for (const cJSON *c = v->child; c && !o->cut; c = c->next) {
            put_value(o, c, 0);
            if (c->next)
                put(o, ", ");
        }
        put(o, "]");
    } else if (cJSON_IsArray(v)) {
        put(o, v->child ? "[...]" : "[]");
    } else if (cJSON_IsObject(v)) {
        put(o, v->child ? "{...}" : "{}");
    } else {
        put(o, "?");
    }
}

void sl__json_describe(const cJSON *v, char *buf, size_t n)
{
    if (!n)
        return;
    out o = {buf, n, 0, 0};
    put_value(&o, v, 1);
    buf[o.w] = '\0';
    if (o.cut && o.w >= 3)
        memcpy(buf + o.w - 3, "...", 3);
}

int sl__json_integral(const cJSON *v, double lo, double hi)
{
    return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && v->valuedouble >= lo &&
           v->valuedouble <= hi;
}

/* config.json, its shard index and tokenizer.json are read through this. */
sl_status sl__json_read_file(sl_ctx *ctx, const char *path, long long max, char **text, size_t *n)
{
    *text = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return sl_ctx_fail(ctx, SL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    sl_status s = SL_OK;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode))
        s = sl_ctx_fail(ctx, SL_EIO, "%s: expected a regular file", path);
    else if ((long long)sb.st_size > max)
        s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected at most %lld bytes of JSON, found %lld", path, max,
                        (long long)sb.st_size);
    else if (!(*text = sl_ctx_alloc(ctx, (*n = (size_t)sb.st_size) + 1)))
        s = SL_ENOMEM;
    else if (fread(*text, 1, *n, f) != *n)
        s = sl_ctx_fail(ctx, SL_EIO, "%s: expected %zu bytes, the read stopped short", path, *n);
    fclose(f);
    if (s && *text) {
        sl_ctx_dealloc(ctx, *text, *n + 1);
        *text = NULL;
    }
    if (!s)
        (*text)[*n] = '\0';
    return s;
}
