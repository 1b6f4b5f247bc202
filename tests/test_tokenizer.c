/* test_tokenizer.c — Check suite for core/model/tokenizer.c: the README's
 * worked example and sample text, the test texts' token counts from the
 * README table, round trips of the texts and of random strings, agreement
 * with a brute-force encoder written here, bad files, and failure of every
 * allocation. Run from the repository root (it reads experiments/data/). */
#include "testutil.h"

#include <dirent.h>

#define DATA "experiments/data/tinystories260k"
#define TOK_PATH DATA "/tok512.bin"
#define VOCAB 512
#define MAXV 600      /* room in the oracle's tables (synthetic files included) */
#define MAXP 16       /* room for one piece in the oracle */

/* ck_assert records its location on every pass; hot loops check this way. */
#define CHECK(cond, ...)                \
    do {                                \
        if (!(cond))                    \
            ck_abort_msg(__VA_ARGS__);  \
    } while (0)

/* ---- helpers ------------------------------------------------------------------ */

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)len, fp), (size_t)len);
    fclose(fp);
    buf[len] = '\0';
    *n = (size_t)len;
    return buf;
}

static void write_all(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    if (n)
        ck_assert_uint_eq(fwrite(data, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

static sl_tokenizer *load_ok(sl_ctx *ctx, const char *path, int64_t vocab)
{
    sl_tokenizer *t = NULL;
    sl_status s = sl_tokenizer_load(ctx, path, vocab, &t);
    ck_assert_msg(s == SL_OK, "load %s: %s: %s", path, sl_status_name(s), sl_ctx_error(ctx));
    ck_assert_ptr_nonnull(t);
    return t;
}

/* Encodes and copies the ids into a malloc'd array (the tensor is released). */
static int32_t *encode(sl_ctx *ctx, const sl_tokenizer *t, const char *text, int bos, int eos, int64_t *n)
{
    sl_tensor ids;
    sl_status s = sl_tokenizer_encode(ctx, t, text, bos, eos, &ids);
    CHECK(s == SL_OK, "encode: %s: %s", sl_status_name(s), sl_ctx_error(ctx));
    CHECK(ids.dtype == SL_I32 && ids.ndim == 1, "encode: not an i32 vector");
    *n = ids.shape[0];
    int32_t *out = malloc((size_t)(*n + 1) * sizeof *out);
    CHECK(out != NULL, "malloc");
    if (*n)
        memcpy(out, ids.data, (size_t)*n * sizeof *out);
    sl_tensor_release(&ids);
    return out;
}

/* The text of ids[from..n), each piece decoded after its predecessor
 * (malloc'd, NUL-terminated; *len counts bytes, NULs included). */
static char *decode_all(const sl_tokenizer *t, const int32_t *ids, int64_t n, int64_t from, size_t *len)
{
    char *out = malloc((size_t)n * 8 + 1), piece[64];
    CHECK(out != NULL, "malloc");
    size_t k = 0;
    for (int64_t i = from; i < n; i++) {
        size_t m = sl_tokenizer_decode(t, i ? ids[i - 1] : -1, ids[i], piece, sizeof piece);
        CHECK(m < sizeof piece && m <= 8, "piece %d is %zu bytes", (int)ids[i], m);
        memcpy(out + k, piece, m);
        k += m;
    }
    out[k] = '\0';
    *len = k;
    return out;
}

static void expect_ids(const int32_t *got, int64_t n, const int32_t *want, int64_t n_want, const char *what)
{
    ck_assert_msg(n == n_want, "%s: %lld ids, expected %lld", what, (long long)n, (long long)n_want);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "%s: id %lld is %d, expected %d", what, (long long)i, (int)got[i],
                      (int)want[i]);
}

/* ---- the oracle: its own reader and a brute-force encoder ----------------------
 * Written in another style on purpose: no index, every candidate pair rebuilt
 * and searched for linearly (bucketed by first byte only to keep it quick)
 * after every merge, and UTF-8 checked by decoding the code point value. */

typedef struct oracle {
    int n, max_len;
    float score[MAXV];
    int len[MAXV];
    unsigned char s[MAXV][MAXP];
    int n_first[256], first[256][MAXV]; /* ids whose piece starts with byte b */
} oracle;

static oracle *oracle_read(const char *path)
{
    oracle *o = calloc(1, sizeof *o);
    ck_assert_ptr_nonnull(o);
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    int32_t v;
    ck_assert_int_eq(fread(&v, 4, 1, fp), 1);
    o->max_len = v;
    float sc;
    while (fread(&sc, 4, 1, fp) == 1) {
        ck_assert_int_lt(o->n, MAXV);
        ck_assert_int_eq(fread(&v, 4, 1, fp), 1);
        ck_assert(v >= 0 && v < MAXP);
        ck_assert_int_eq(fread(o->s[o->n], 1, (size_t)v, fp), v);
        o->score[o->n] = sc;
        o->len[o->n] = v;
        if (v > 0) {
            unsigned b = o->s[o->n][0];
            o->first[b][o->n_first[b]++] = o->n;
        }
        o->n++;
    }
    fclose(fp);
    return o;
}

/* Lowest id whose piece is s[0..n), or -1. */
static int oracle_find(const oracle *o, const unsigned char *s, int n)
{
    if (n <= 0 || n >= MAXP)
        return -1;
    for (int k = 0; k < o->n_first[s[0]]; k++) {
        int id = o->first[s[0]][k];
        if (o->len[id] == n && memcmp(o->s[id], s, (size_t)n) == 0)
            return id;
    }
    return -1;
}

/* Bytes of the well-formed code point at p, or 0. */
static int oracle_cp_len(const unsigned char *p)
{
    static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
    int n;
    uint32_t cp;
    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xE0) == 0xC0)
        n = 2, cp = p[0] & 0x1Fu;
    else if ((p[0] & 0xF0) == 0xE0)
        n = 3, cp = p[0] & 0x0Fu;
    else if ((p[0] & 0xF8) == 0xF0)
        n = 4, cp = p[0] & 0x07u;
    else
        return 0;
    for (int j = 1; j < n; j++) {
        if ((p[j] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[j] & 0x3Fu);
    }
    if (cp < least[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* Encodes text into out (room for strlen + 3) and returns the count. */
static int64_t oracle_encode(const oracle *o, const char *text, int bos, int eos, int32_t *out)
{
    const unsigned char *p = (const unsigned char *)text;
    int64_t n = 0;
    if (bos)
        out[n++] = 1;
    int64_t start = n;
    if (*p) {
        int sp = oracle_find(o, (const unsigned char *)" ", 1);
        out[n++] = sp >= 0 ? sp : 3 + ' ';
    }
    while (*p) {
        int k = oracle_cp_len(p), id = k ? oracle_find(o, p, k) : -1;
        if (id >= 0) {
            out[n++] = id;
            p += k;
            continue;
        }
        if (k == 0)
            k = 1;
        while (k--)
            out[n++] = 3 + *p++;
    }
    for (;;) {
        /* First the best score of any mergeable pair, then the first pair with it. */
        float top = -INFINITY;
        int any = 0;
        unsigned char cat[2 * MAXP];
        for (int64_t i = start; i + 1 < n; i++) {
            int la = o->len[out[i]], lb = o->len[out[i + 1]];
            memcpy(cat, o->s[out[i]], (size_t)la);
            memcpy(cat + la, o->s[out[i + 1]], (size_t)lb);
            int id = oracle_find(o, cat, la + lb);
            if (id >= 0 && (!any || o->score[id] > top))
                top = o->score[id], any = 1;
        }
        if (!any)
            break;
        for (int64_t i = start; i + 1 < n; i++) {
            int la = o->len[out[i]], lb = o->len[out[i + 1]];
            memcpy(cat, o->s[out[i]], (size_t)la);
            memcpy(cat + la, o->s[out[i + 1]], (size_t)lb);
            int id = oracle_find(o, cat, la + lb);
            if (id >= 0 && o->score[id] == top) {
                out[i] = id;
                for (int64_t j = i + 1; j + 1 < n; j++)
                    out[j] = out[j + 1];
                n--;
                break;
            }
        }
    }
    if (eos)
        out[n++] = 2;
    return n;
}

/* The library and the oracle agree on text, and (with BOS) it decodes back. */
static void check_text(sl_ctx *ctx, const sl_tokenizer *t, const oracle *o, const char *text, const char *what)
{
    int64_t n;
    int32_t *ids = encode(ctx, t, text, 1, 0, &n);
    int32_t *want = malloc((strlen(text) + 3) * sizeof *want);
    CHECK(want != NULL, "malloc");
    int64_t n_want = oracle_encode(o, text, 1, 0, want);
    CHECK(n == n_want, "%s: %lld ids, the oracle has %lld", what, (long long)n, (long long)n_want);
    for (int64_t i = 0; i < n; i++)
        CHECK(ids[i] == want[i], "%s: id %lld is %d, the oracle has %d", what, (long long)i, (int)ids[i], (int)want[i]);
    size_t len;
    char *back = decode_all(t, ids, n, 1, &len);
    CHECK(len == strlen(text) && memcmp(back, text, len) == 0, "%s: decodes to \"%s\"", what, back);
    free(back);
    free(want);
    free(ids);
}

/* The failure is want, with a one-line message holding path and needle. */
static void expect_fail(sl_ctx *ctx, sl_status got, sl_status want, const char *path, const char *needle)
{
    const char *msg = sl_ctx_error(ctx);
    ck_assert_msg(got == want, "expected %s, got %s: %s", sl_status_name(want), sl_status_name(got), msg);
    ck_assert_msg(strstr(msg, path) != NULL, "message lacks the path: %s", msg);
    if (needle)
        ck_assert_msg(strstr(msg, needle) != NULL, "message lacks \"%s\": %s", needle, msg);
    ck_assert_msg(strchr(msg, '\n') == NULL, "message is not one line: %s", msg);
}

/* ---- the README --------------------------------------------------------------- */

START_TEST(test_load_and_decode)
{
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = load_ok(ctx, TOK_PATH, VOCAB);
    ck_assert_int_eq(sl_tokenizer_vocab(t), VOCAB);
    char buf[32];
    ck_assert_uint_eq(sl_tokenizer_decode(t, 0, 1, buf, sizeof buf), 5);
    ck_assert_str_eq(buf, "\n<s>\n");
    ck_assert_uint_eq(sl_tokenizer_decode(t, 0, 2, buf, sizeof buf), 6);
    ck_assert_str_eq(buf, "\n</s>\n");
    ck_assert_uint_eq(sl_tokenizer_decode(t, 0, 403, buf, sizeof buf), 5);
    ck_assert_str_eq(buf, " Once");
    ck_assert_uint_eq(sl_tokenizer_decode(t, 1, 403, buf, sizeof buf), 4);
    ck_assert_str_eq(buf, "Once");
    /* Byte pieces are their byte, NUL included; only a space is dropped after BOS. */
    memset(buf, 'x', sizeof buf);
    ck_assert_uint_eq(sl_tokenizer_decode(t, 0, 3, buf, sizeof buf), 1);
    ck_assert_int_eq(buf[0], 0);
    ck_assert_uint_eq(sl_tokenizer_decode(t, 1, 3 + 0xE6, buf, sizeof buf), 1);
    ck_assert_int_eq((unsigned char)buf[0], 0xE6);
    ck_assert_uint_eq(sl_tokenizer_decode(t, 1, 3 + 'A', buf, sizeof buf), 1);
    ck_assert_str_eq(buf, "A");
    ck_assert_uint_eq(sl_tokenizer_decode(t, 1, 485, buf, sizeof buf), 2);
    ck_assert_str_eq(buf, "\xC3\xA9");
    /* A short buffer gets a prefix and a NUL; the length is the whole piece. */
    ck_assert_uint_eq(sl_tokenizer_decode(t, 0, 403, buf, 3), 5);
    ck_assert_str_eq(buf, " O");
    ck_assert_uint_eq(sl_tokenizer_decode(t, 0, 403, NULL, 0), 5);
    /* Ids outside the vocabulary are empty. */
    ck_assert_uint_eq(sl_tokenizer_decode(t, 0, -1, buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "");
    ck_assert_uint_eq(sl_tokenizer_decode(t, 0, VOCAB, buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "");
    sl_tokenizer_free(ctx, t);
    sl_tokenizer_free(ctx, NULL);
    tu_ctx_done(ctx, &a);
}
END_TEST

START_TEST(test_readme_example)
{
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = load_ok(ctx, TOK_PATH, VOCAB);
    int64_t n;
    int32_t *ids = encode(ctx, t, "Once upon a time", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 403, 407, 261, 378}, 5, "BOS + Once upon a time");
    free(ids);
    ids = encode(ctx, t, "Once upon a time", 1, 1, &n);
    expect_ids(ids, n, (const int32_t[]){1, 403, 407, 261, 378, 2}, 6, "with EOS");
    free(ids);
    ids = encode(ctx, t, "Once upon a time", 0, 0, &n);
    expect_ids(ids, n, (const int32_t[]){403, 407, 261, 378}, 4, "without BOS");
    free(ids);
    const char *pieces[] = {"Once", " upon", " a", " time"};
    const int32_t seq[] = {1, 403, 407, 261, 378};
    char buf[16];
    for (int i = 0; i < 4; i++) {
        sl_tokenizer_decode(t, seq[i], seq[i + 1], buf, sizeof buf);
        ck_assert_str_eq(buf, pieces[i]);
    }
    /* An empty text gets no dummy prefix. */
    ids = encode(ctx, t, "", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1}, 1, "empty with BOS");
    free(ids);
    ids = encode(ctx, t, "", 0, 1, &n);
    expect_ids(ids, n, (const int32_t[]){2}, 1, "empty with EOS");
    free(ids);
    ids = encode(ctx, t, "", 0, 0, &n);
    ck_assert_int_eq(n, 0);
    free(ids);
    sl_tokenizer_free(ctx, t);
    tu_ctx_done(ctx, &a);
}
END_TEST

/* The README's greedy ids decode to its sample text, which encodes to them. */
START_TEST(test_readme_sample)
{
    static const int32_t greedy[] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376,
                                     298, 315, 421, 395, 317, 426, 338, 401, 396, 267};
    const int64_t n_greedy = (int64_t)(sizeof greedy / sizeof greedy[0]);
    const char *sample = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = load_ok(ctx, TOK_PATH, VOCAB);
    size_t len;
    char *text = decode_all(t, greedy, n_greedy, 1, &len);
    ck_assert_msg(len > 40 && strncmp(sample, text, len) == 0, "greedy ids decode to \"%s\"", text);
    /* The decoded prefix encodes back to the same ids. */
    int64_t n;
    int32_t *ids = encode(ctx, t, text, 1, 0, &n);
    expect_ids(ids, n, greedy, n_greedy, "greedy prefix");
    free(ids);
    free(text);
    oracle *o = oracle_read(TOK_PATH);
    check_text(ctx, t, o, "Once upon a time, there was a little girl named Lily.", "sample sentence");
    check_text(ctx, t, o, sample, "sample");
    free(o);
    sl_tokenizer_free(ctx, t);
    tu_ctx_done(ctx, &a);
}
END_TEST

/* The README table's "tokens (with BOS)" column, and round trips. */
START_TEST(test_texts)
{
    static const struct {
        const char *name;
        int64_t tokens;
    } table[] = {{"01_red_kite", 489},    {"02_lost_mitten", 492}, {"03_brave_turtle", 486},
                 {"04_cake_for_mom", 491}, {"05_moon_friend", 484}, {"06_little_seed", 504},
                 {"07_toy_shop", 495},     {"08_rainy_day", 489}};
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = load_ok(ctx, TOK_PATH, VOCAB);
    oracle *o = oracle_read(TOK_PATH);
    /* Every file of the folder is in the table. */
    DIR *d = opendir(DATA "/texts");
    ck_assert_ptr_nonnull(d);
    int n_files = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strstr(e->d_name, ".txt"))
            n_files++;
    closedir(d);
    ck_assert_int_eq(n_files, 8);
    int64_t total = 0;
    for (int f = 0; f < 8; f++) {
        char path[256];
        snprintf(path, sizeof path, DATA "/texts/%s.txt", table[f].name);
        size_t len;
        char *text = (char *)read_all(path, &len);
        ck_assert_uint_eq(strlen(text), len);
        int64_t n;
        int32_t *ids = encode(ctx, t, text, 1, 0, &n);
        ck_assert_msg(n == table[f].tokens, "%s: %lld tokens, the README says %lld", table[f].name, (long long)n,
                      (long long)table[f].tokens);
        for (int64_t i = 0; i < n; i++)
            ck_assert(ids[i] >= 0 && ids[i] < VOCAB);
        total += n;
        free(ids);
        check_text(ctx, t, o, text, table[f].name);
        free(text);
    }
    ck_assert_int_eq(total, 3930);
    free(o);
    sl_tokenizer_free(ctx, t);
    tu_ctx_done(ctx, &a);
}
END_TEST

/* ---- UTF-8 and random strings -------------------------------------------------- */

START_TEST(test_utf8)
{
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = load_ok(ctx, TOK_PATH, VOCAB);
    oracle *o = oracle_read(TOK_PATH);
    int64_t n;
    /* é and “ are pieces; 日本 is not, so it is six byte pieces. */
    int32_t *ids = encode(ctx, t, "\xC3\xA9", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 410, 485}, 3, "e-acute");
    free(ids);
    ids = encode(ctx, t, "\xE2\x80\x9C", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 410, 465}, 3, "left quote");
    free(ids);
    ids = encode(ctx, t, "\xE6\x97\xA5\xE6\x9C\xAC", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 410, 3 + 0xE6, 3 + 0x97, 3 + 0xA5, 3 + 0xE6, 3 + 0x9C, 3 + 0xAC}, 8,
               "nihon");
    free(ids);
    /* Bytes that are not part of a well-formed code point fall back one by one:
     * a stray continuation after é, a truncated “, a lone lead byte. */
    ids = encode(ctx, t, "\xC3\xA9\xA9", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 410, 485, 3 + 0xA9}, 4, "stray continuation");
    free(ids);
    ids = encode(ctx, t, "\xE2\x80", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 410, 3 + 0xE2, 3 + 0x80}, 4, "truncated sequence");
    free(ids);
    ids = encode(ctx, t, "\xC3" "a", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 410, 3 + 0xC3, 412}, 4, "lead byte then a");
    free(ids);
    /* Overlong, surrogate, past U+10FFFF, 0xFF: all bytes; and round trips. */
    const char *odd[] = {"\xC0\xAF", "\xC1\xBF", "\xE0\x80\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF\xFE",
                         "\xF0\x9F\x98\x80", "caf\xC3\xA9 \xE2\x80\xA6 \xE2\x82\xAC" "5", "\x01\x02\x1F\x7F\t\r\n",
                         "  two leading spaces", " ", "\n", "<0x41><s>\n<unk>"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        char what[32];
        snprintf(what, sizeof what, "odd string %zu", i);
        check_text(ctx, t, o, odd[i], what);
    }
    /* Ill-formed sequences give exactly one byte piece per byte. */
    for (int i = 0; i < 6; i++) {
        ids = encode(ctx, t, odd[i], 0, 0, &n);
        ck_assert_int_eq(n, 1 + (int64_t)strlen(odd[i]));
        for (int64_t j = 1; j < n; j++)
            ck_assert_int_eq(ids[j], 3 + (unsigned char)odd[i][j - 1]);
        free(ids);
    }
    free(o);
    sl_tokenizer_free(ctx, t);
    tu_ctx_done(ctx, &a);
}
END_TEST

/* Random strings of printable ASCII, multi-byte UTF-8 and control bytes
 * (kind 0), and of arbitrary non-NUL bytes (kind 1). */
static void random_text(sl_rng *r, int kind, char *buf, size_t cap)
{
    static const char *multi[] = {"\xC3\xA9", "\xC3\xB1", "\xC3\xBC", "\xE6\x97\xA5\xE6\x9C\xAC", "\xF0\x9F\x98\x80",
                                  "\xF0\x9F\x90\xA2", "\xE2\x80\x9C", "\xE2\x80\x9D", "\xE2\x80\x99",
                                  "\xE2\x80\xA6", "\xE2\x82\xAC", "\xC2\xA0", "\xE2\x84\xA2", "\xD0\x96"};
    size_t len = (size_t)(sl_rng_next(r) % 120), k = 0;
    for (size_t i = 0; i < len && k + 8 < cap; i++) {
        uint64_t u = sl_rng_next(r);
        if (kind == 1)
            buf[k++] = (char)(1 + u % 255);
        else if (u % 10 < 6)
            buf[k++] = (char)(0x20 + (u >> 8) % 95);
        else if (u % 10 < 7)
            buf[k++] = ' ';
        else if (u % 10 < 9) {
            const char *m = multi[(u >> 8) % (sizeof multi / sizeof multi[0])];
            memcpy(buf + k, m, strlen(m));
            k += strlen(m);
        } else
            buf[k++] = (char)((u >> 8) % 3 == 0 ? 0x7F : 1 + (u >> 16) % 31);
    }
    buf[k] = '\0';
}

START_TEST(test_random_strings)
{
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = load_ok(ctx, TOK_PATH, VOCAB);
    oracle *o = oracle_read(TOK_PATH);
    sl_rng r;
    sl_rng_seed(&r, 2024);
    char text[1024], what[32];
    for (int i = 0; i < 3000; i++) {
        random_text(&r, i % 3 == 2, text, sizeof text);
        snprintf(what, sizeof what, "random string %d", i);
        check_text(ctx, t, o, text, what);
    }
    /* Random words from the vocabulary's own pieces exercise long merge chains. */
    for (int i = 0; i < 500; i++) {
        size_t k = 0;
        int words = 1 + (int)(sl_rng_next(&r) % 30);
        for (int w = 0; w < words && k + MAXP < sizeof text; w++) {
            int id = 259 + (int)(sl_rng_next(&r) % (VOCAB - 259));
            memcpy(text + k, o->s[id], (size_t)o->len[id]);
            k += (size_t)o->len[id];
        }
        text[k] = '\0';
        snprintf(what, sizeof what, "piece string %d", i);
        check_text(ctx, t, o, text, what);
    }
    free(o);
    sl_tokenizer_free(ctx, t);
    tu_ctx_done(ctx, &a);
}
END_TEST

/* ---- synthetic vocabularies: ties, order of scores, duplicates ------------------ */

/* Writes a tokenizer with the 259 standard ids and then extra pieces. */
static void write_synthetic(const char *path, int max_len, int n_extra, const char *const *extra, const float *score)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    int32_t v = max_len;
    fwrite(&v, 4, 1, fp);
    for (int i = 0; i < 259 + n_extra; i++) {
        char p[16];
        if (i == 0)
            strcpy(p, "<unk>");
        else if (i == 1)
            strcpy(p, "\n<s>\n");
        else if (i == 2)
            strcpy(p, "\n</s>\n");
        else if (i < 259)
            snprintf(p, sizeof p, "<0x%02X>", i - 3);
        else
            snprintf(p, sizeof p, "%s", extra[i - 259]);
        float sc = i < 259 ? 0.f : score[i - 259];
        v = (int32_t)strlen(p);
        fwrite(&sc, 4, 1, fp);
        fwrite(&v, 4, 1, fp);
        fwrite(p, 1, (size_t)v, fp);
    }
    ck_assert_int_eq(fclose(fp), 0);
}

START_TEST(test_merge_rule)
{
    char dir[64], path[128];
    tu_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/syn.bin", dir);
    /* 259 " ", 260 a, 261 b, 262 c, 263 ab, 264 bc, 265 ab again, 266 " c",
     * 267 BOS + " " (which must never form: BOS takes no part in merges),
     * 268 an overlong "/" and 269 "é" + a stray continuation byte (ill-formed
     * UTF-8 is never looked up, even when a piece holds it). */
    const char *extra[] = {" ", "a", "b", "c", "ab", "bc", "ab", " c", "\n<s>\n ", "\xE0\x80\xAF", "\xC3\xA9\xA9"};
    float tie[] = {-10, -10, -10, -10, -1, -1, -1, -2, 0, 0, 0};
    float bc_first[] = {-10, -10, -10, -10, -1, -0.5f, -1, -2, 0, 0, 0};
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    int64_t n;

    write_synthetic(path, 7, 11, extra, tie);
    sl_tokenizer *t = load_ok(ctx, path, 270);
    oracle *o = oracle_read(path);
    int32_t *ids = encode(ctx, t, "abc", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 259, 263, 262}, 4, "tie: the leftmost pair merges");
    free(ids);
    ids = encode(ctx, t, "cab", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 266, 263}, 3, "better pair first, then \" c\"");
    free(ids);
    ids = encode(ctx, t, "x", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 259, 3 + 'x'}, 3, "byte fallback");
    free(ids);
    ids = encode(ctx, t, "\xE0\x80\xAF\xC3\xA9\xA9", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 259, 3 + 0xE0, 3 + 0x80, 3 + 0xAF, 3 + 0xC3, 3 + 0xA9, 3 + 0xA9}, 8,
               "ill-formed UTF-8 in the vocabulary");
    free(ids);
    check_text(ctx, t, o, "abcabcab c", "synthetic");
    free(o);
    sl_tokenizer_free(ctx, t);

    write_synthetic(path, 7, 11, extra, bc_first);
    t = load_ok(ctx, path, 270);
    o = oracle_read(path);
    ids = encode(ctx, t, "abc", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 259, 260, 264}, 4, "higher score wins over leftmost");
    free(ids);
    check_text(ctx, t, o, "abcabcab c", "synthetic, bc first");
    free(o);
    sl_tokenizer_free(ctx, t);

    /* Without a " " piece, the dummy prefix is the byte piece of a space. */
    write_synthetic(path, 7, 3, extra + 1, tie + 1);
    t = load_ok(ctx, path, 262);
    ids = encode(ctx, t, "ab", 1, 0, &n);
    expect_ids(ids, n, (const int32_t[]){1, 3 + ' ', 259, 260}, 4, "no space piece");
    free(ids);
    sl_tokenizer_free(ctx, t);
    tu_ctx_done(ctx, &a);
    unlink(path);
    rmdir(dir);
}
END_TEST

/* ---- bad files ------------------------------------------------------------------ */

/* Loading path fails with want, a message naming path and needle, and no tokenizer. */
static void expect_load_fail(const char *path, int64_t vocab, sl_status want, const char *needle)
{
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = (sl_tokenizer *)&a; /* must come back NULL */
    sl_status s = sl_tokenizer_load(ctx, path, vocab, &t);
    expect_fail(ctx, s, want, path, needle);
    ck_assert_ptr_null(t);
    tu_ctx_done(ctx, &a);
}

static void put_i32(unsigned char *p, int32_t v) { memcpy(p, &v, 4); }

START_TEST(test_bad_files)
{
    char dir[64], path[128], needle[160];
    tu_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/bad.bin", dir);
    size_t size;
    unsigned char *good = read_all(TOK_PATH, &size);
    unsigned char *buf = malloc(size + 8);
    ck_assert_ptr_nonnull(buf);
    /* Offsets of each token's score, from the oracle's walk of the file. */
    size_t off[VOCAB + 1];
    size_t pos = 4;
    for (int i = 0; i < VOCAB; i++) {
        off[i] = pos;
        int32_t len;
        memcpy(&len, good + pos + 4, 4);
        pos += 8 + (size_t)len;
    }
    off[VOCAB] = pos;
    ck_assert_uint_eq(pos, size);

    /* Missing. */
    snprintf(needle, sizeof needle, "%s/none.bin", dir);
    expect_load_fail(needle, VOCAB, SL_EIO, "cannot open");

    /* Truncated at every length: before 4 bytes the header, else the token cut. */
    int token = 0;
    for (size_t cut = 0; cut < size; cut++) {
        write_all(path, good, cut);
        while (token < VOCAB && off[token + 1] <= cut)
            token++;
        if (cut < 4)
            expect_load_fail(path, VOCAB, SL_EFORMAT, "max_token_length");
        else {
            snprintf(needle, sizeof needle, "token %d:", token);
            expect_load_fail(path, VOCAB, SL_EFORMAT, needle);
        }
    }

    /* The wrong vocabulary size, either way; one more byte at the end. */
    expect_load_fail(TOK_PATH, 511, SL_EFORMAT, "token 511:");
    expect_load_fail(TOK_PATH, 513, SL_EFORMAT, "token 512:");
    memcpy(buf, good, size);
    buf[size] = 0;
    write_all(path, buf, size + 1);
    expect_load_fail(path, VOCAB, SL_EFORMAT, "token 512: expected the end of the file");
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = NULL;
    ck_assert_int_eq(sl_tokenizer_load(ctx, TOK_PATH, 100, &t), SL_EARG);
    ck_assert_int_eq(sl_tokenizer_load(ctx, TOK_PATH, -1, &t), SL_EARG);
    ck_assert_int_eq(sl_tokenizer_load(ctx, TOK_PATH, (int64_t)1 << 40, &t), SL_EARG);
    ck_assert_int_eq(sl_tokenizer_load(ctx, NULL, VOCAB, &t), SL_EARG);
    ck_assert_ptr_null(t);
    tu_ctx_done(ctx, &a);

    /* Lengths: negative, past max_token_length, absurd. */
    const int32_t lens[] = {-1, -100000, 8, 1 << 30};
    for (int i = 0; i < 4; i++) {
        memcpy(buf, good, size);
        put_i32(buf + off[300] + 4, lens[i]);
        write_all(path, buf, size);
        snprintf(needle, sizeof needle, "token 300: expected a length of 0 .. 7 (max_token_length), found %d",
                 (int)lens[i]);
        expect_load_fail(path, VOCAB, SL_EFORMAT, needle);
    }
    /* max_token_length itself. */
    const int32_t maxes[] = {0, -7, 1 << 30};
    for (int i = 0; i < 3; i++) {
        memcpy(buf, good, size);
        put_i32(buf, maxes[i]);
        write_all(path, buf, size);
        expect_load_fail(path, VOCAB, SL_EFORMAT, "max_token_length");
    }
    /* A smaller max_token_length than the longest piece. */
    memcpy(buf, good, size);
    put_i32(buf, 3);
    write_all(path, buf, size);
    expect_load_fail(path, VOCAB, SL_EFORMAT, "(max_token_length), found");
    /* Scores that are not numbers. */
    const float bad_scores[] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
        memcpy(buf, good, size);
        memcpy(buf + off[9], &bad_scores[i], 4);
        write_all(path, buf, size);
        expect_load_fail(path, VOCAB, SL_EFORMAT, "token 9: expected a finite score");
    }
    free(buf);
    free(good);
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(test_bad_calls)
{
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = load_ok(ctx, TOK_PATH, VOCAB);
    sl_tensor ids;
    ck_assert_int_eq(sl_tokenizer_encode(ctx, t, NULL, 1, 0, &ids), SL_EARG);
    ck_assert_ptr_null(ids.buf);
    ck_assert_int_eq(sl_tokenizer_encode(ctx, NULL, "x", 1, 0, &ids), SL_EARG);
    ck_assert_int_eq(sl_tokenizer_encode(ctx, t, "x", 1, 0, NULL), SL_EARG);
    ck_assert_int_eq(sl_tokenizer_load(ctx, TOK_PATH, VOCAB, NULL), SL_EARG);
    ck_assert_int_eq(sl_tokenizer_vocab(NULL), 0);
    /* A tokenizer serves any context; its memory belongs to the one that loaded it. */
    tu_alloc b;
    sl_ctx *other = tu_ctx(&b);
    int64_t n;
    int32_t *got = encode(other, t, "Once upon a time", 1, 0, &n);
    expect_ids(got, n, (const int32_t[]){1, 403, 407, 261, 378}, 5, "another context");
    free(got);
    tu_ctx_done(other, &b);
    sl_tokenizer_free(ctx, t);
    tu_ctx_done(ctx, &a);
}
END_TEST

/* ---- failure of every allocation ------------------------------------------------ */

START_TEST(test_fault_load)
{
    int failures = 0;
    for (long k = 1;; k++) {
        ck_assert_int_lt(k, 100);
        tu_alloc a;
        sl_ctx *ctx = tu_ctx(&a);
        a.fail_at = a.calls + k;
        sl_tokenizer *t = NULL;
        sl_status s = sl_tokenizer_load(ctx, TOK_PATH, VOCAB, &t);
        if (s == SL_OK) {
            ck_assert_int_eq(sl_tokenizer_vocab(t), VOCAB);
            sl_tokenizer_free(ctx, t);
            tu_ctx_done(ctx, &a);
            break;
        }
        failures++;
        ck_assert_msg(s == SL_ENOMEM, "allocation %ld: %s: %s", k, sl_status_name(s), sl_ctx_error(ctx));
        ck_assert_ptr_null(t);
        tu_ctx_done(ctx, &a);
    }
    ck_assert_int_ge(failures, 1);
}
END_TEST

START_TEST(test_fault_encode)
{
    const char *text = "Once upon a time, a caf\xC3\xA9 sold \xE6\x97\xA5\xE6\x9C\xAC tea.";
    tu_alloc a;
    sl_ctx *ctx = tu_ctx(&a);
    sl_tokenizer *t = load_ok(ctx, TOK_PATH, VOCAB);
    int64_t n_want;
    int32_t *want = encode(ctx, t, text, 1, 1, &n_want);
    int failures = 0;
    for (long k = 1;; k++) {
        ck_assert_int_lt(k, 100);
        size_t live = sl_ctx_live_allocs(ctx);
        a.fail_at = a.calls + k;
        sl_tensor ids;
        sl_status s = sl_tokenizer_encode(ctx, t, text, 1, 1, &ids);
        a.fail_at = 0;
        if (s == SL_OK) {
            expect_ids(ids.data, ids.shape[0], want, n_want, "after failures");
            sl_tensor_release(&ids);
            ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
            break;
        }
        failures++;
        ck_assert_msg(s == SL_ENOMEM, "allocation %ld: %s: %s", k, sl_status_name(s), sl_ctx_error(ctx));
        ck_assert_ptr_null(ids.buf);
        ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
    }
    ck_assert_int_ge(failures, 2);
    free(want);
    sl_tokenizer_free(ctx, t);
    tu_ctx_done(ctx, &a);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------- */

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("readme");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_load_and_decode);
    tcase_add_test(tc, test_readme_example);
    tcase_add_test(tc, test_readme_sample);
    tcase_add_test(tc, test_texts);
    suite_add_tcase(s, tc);

    tc = tcase_create("encoding");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_utf8);
    tcase_add_test(tc, test_random_strings);
    tcase_add_test(tc, test_merge_rule);
    suite_add_tcase(s, tc);

    tc = tcase_create("robustness");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_bad_calls);
    tcase_add_test(tc, test_fault_load);
    tcase_add_test(tc, test_fault_encode);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(tokenizer_suite()); }
