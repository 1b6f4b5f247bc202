/* model/tok_bpe.c — byte-level BPE from a Hugging Face tokenizer.json (see
 * tok_bpe.h). Tokens are kept as raw bytes: the vocabulary's keys and the
 * merges are mapped back through GPT-2's byte-to-unicode table at load, so
 * encoding starts from one token per byte and decoding concatenates bytes.
 * Encoding follows the tokenizers library: added tokens are split out of the
 * text first (leftmost, longest), the pre-tokenizer steps split the rest in
 * order, and each piece is merged by rank (lowest rank first, leftmost on a
 * tie) unless ignore_merges and the whole piece is a token. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok_bpe.h"

#include "json.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BPE_MAX_FILE (1LL << 30) /* Llama 3's tokenizer.json is 9 MB */
#define BPE_MAX_STEPS 8
#define BPE_MAX_DEPTH 64
#define BPE_BYTE_CPS 324 /* code points 0 .. 323 carry the 256 bytes */

/* The pre-tokenizer regex of ByteLevel with use_regex (GPT-2's). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct bpe_tok {
    const unsigned char *s;
    int32_t len; /* -1: no token has this id */
    int32_t id;
} bpe_tok;

typedef struct bpe_merge {
    int32_t a, b, rank, out;
} bpe_merge;

enum { STEP_SPLIT = 1, STEP_BYTELEVEL };

typedef struct bpe_step {
    int kind;
    int prefix_space;  /* ByteLevel add_prefix_space */
    pcre2_code *re;    /* NULL: ByteLevel without use_regex */
} bpe_step;

struct sl__bpe {
    int32_t size, n_sorted, n_merges, n_added, bos, eos, unk;
    size_t cap_sorted, cap_added, cap_merges; /* entries allocated */
    int ignore_merges, n_steps;
    bpe_tok *by_id;  /* [size] */
    bpe_tok *sorted; /* [n_sorted] byte-level vocabulary, by bytes then id */
    bpe_merge *merges; /* [n_merges] by (a, b) */
    bpe_tok *added;  /* [n_added] */
    unsigned char *text;
    size_t text_bytes;
    bpe_step steps[BPE_MAX_STEPS];
    unsigned char added_first[256]; /* 1 when an added token starts with this byte */
    int16_t unmap[BPE_BYTE_CPS];    /* code point -> byte, -1 for none */
};

/* ---- helpers ------------------------------------------------------------------ */

static int in_printable(unsigned c) { return (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF); }

static void build_unmap(int16_t *unmap)
{
    for (int i = 0; i < BPE_BYTE_CPS; i++)
        unmap[i] = -1;
    int n = 0;
    for (unsigned b = 0; b < 256; b++) {
        if (in_printable(b))
            unmap[b] = (int16_t)b;
        else
            unmap[256 + n++] = (int16_t)b;
    }
}

/* Length of the well-formed UTF-8 sequence at p and its code point, 0 if none
 * (declared in tok_bpe.h: the SentencePiece path checks its input with it too). */
size_t sl__utf8_next(const unsigned char *p, size_t avail, uint32_t *cp)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    size_t k;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF)
        k = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        lo = c == 0xE0 ? 0xA0 : lo;
        hi = c == 0xED ? 0x9F : hi;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        lo = c == 0xF0 ? 0x90 : lo;
        hi = c == 0xF4 ? 0x8F : hi;
    } else
        return 0;
    if (avail < k || p[1] < lo || p[1] > hi)
        return 0;
    uint32_t v = c & (k == 2 ? 0x1F : k == 3 ? 0x0F : 0x07);
    for (size_t j = 1; j < k; j++) {
        if (j >= 2 && (p[j] & 0xC0) != 0x80)
            return 0;
        v = v << 6 | (p[j] & 0x3F);
    }
    *cp = v;
    return k;
}

/* Maps a byte-level string (each code point one byte) to its bytes in out
 * (room for strlen(s)); returns the byte count, or -1 when a code point is
 * outside the byte alphabet. */
static int32_t unmap_str(const sl__bpe *b, const char *s, unsigned char *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), w = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = sl__utf8_next(p + i, n - i, &cp);
        if (!k || cp >= BPE_BYTE_CPS || b->unmap[cp] < 0)
            return -1;
        out[w++] = (unsigned char)b->unmap[cp];
        i += k;
    }
    return (int32_t)w;
}

static int cmp_tok(const void *x, const void *y)
{
    const bpe_tok *a = x, *b = y;
    int32_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->s, b->s, (size_t)n) : 0;
    if (c)
        return c;
    return (a->len > b->len) - (a->len < b->len);
}

static int cmp_tok_id(const void *x, const void *y)
{
    int c = cmp_tok(x, y);
    if (c)
        return c;
    return (((const bpe_tok *)x)->id > ((const bpe_tok *)y)->id) - (((const bpe_tok *)x)->id < ((const bpe_tok *)y)->id);
}

static int32_t lookup(const sl__bpe *b, const unsigned char *s, size_t n)
{
    if (!b->n_sorted)
        return -1;
    bpe_tok key = {s, (int32_t)n, 0};
    const bpe_tok *hit = bsearch(&key, b->sorted, (size_t)b->n_sorted, sizeof *hit, cmp_tok);
    if (!hit)
        return -1;
    while (hit > b->sorted && cmp_tok(hit - 1, &key) == 0)
        hit--;
    return hit->id;
}

static int cmp_merge(const void *x, const void *y)
{
    const bpe_merge *a = x, *b = y;
    if (a->a != b->a)
        return (a->a > b->a) - (a->a < b->a);
    if (a->b != b->b)
        return (a->b > b->b) - (a->b < b->b);
    return (a->rank > b->rank) - (a->rank < b->rank);
}

static const bpe_merge *find_merge(const sl__bpe *b, int32_t x, int32_t y)
{
    bpe_merge key = {x, y, -1, 0};
    /* the lowest rank of (x, y): the first entry not below key */
    size_t lo = 0, hi = (size_t)b->n_merges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_merge(&b->merges[mid], &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < (size_t)b->n_merges && b->merges[lo].a == x && b->merges[lo].b == y)
        return &b->merges[lo];
    return NULL;
}

static const char *str_or(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* 1 when key is absent, null, false, or an empty string. */
static int unset(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return !v || cJSON_IsNull(v) || cJSON_IsFalse(v) || (cJSON_IsString(v) && !v->valuestring[0]);
}

static sl_status refuse(sl_ctx *ctx, const char *path, const char *what, const cJSON *v, const char *supported)
{
    char found[96];
    sl__json_describe(v, found, sizeof found);
    return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: %s: found %s; supported: %s", path, what, found, supported);
}

static sl_status add_regex(sl_ctx *ctx, const char *path, sl__bpe *b, const char *pattern, int kind, int prefix)
{
    if (b->n_steps >= BPE_MAX_STEPS)
        return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: pre_tokenizer: expected at most %d steps", path, BPE_MAX_STEPS);
    pcre2_code *re = NULL;
    if (pattern) {
        int code;
        PCRE2_SIZE off;
        re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(code, msg, sizeof msg);
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: pre_tokenizer regex \"%s\": libpcre2 refuses it at offset %zu: %s",
                               path, pattern, (size_t)off, (const char *)msg);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreted when JIT is unavailable */
    }
    b->steps[b->n_steps++] = (bpe_step){kind, prefix, re};
    return SL_OK;
}

static sl_status pre_step(sl_ctx *ctx, const char *path, sl__bpe *b, const cJSON *p, int *has_bytelevel)
{
    const char *type = str_or(p, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list))
            return refuse(ctx, path, "pre_tokenizer Sequence 'pretokenizers'", list, "an array");
        sl_status s = SL_OK;
        for (const cJSON *e = list->child; e && !s; e = e->next)
            s = pre_step(ctx, path, b, e, has_bytelevel);
        return s;
    }
    if (type && strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *re = pat ? str_or(pat, "Regex") : NULL;
        if (!re)
            return refuse(ctx, path, "pre_tokenizer Split 'pattern'", pat, "{\"Regex\": \"...\"}");
        const char *beh = str_or(p, "behavior");
        if (!beh || strcmp(beh, "Isolated") != 0)
            return refuse(ctx, path, "pre_tokenizer Split 'behavior'", cJSON_GetObjectItemCaseSensitive(p, "behavior"),
                          "\"Isolated\"");
        if (!unset(p, "invert"))
            return refuse(ctx, path, "pre_tokenizer Split 'invert'", cJSON_GetObjectItemCaseSensitive(p, "invert"), "false");
        return add_regex(ctx, path, b, re, STEP_SPLIT, 0);
    }
    if (type && strcmp(type, "ByteLevel") == 0) {
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
        int use_regex = !ur || cJSON_IsTrue(ur); /* the library's default is true */
        *has_bytelevel = 1;
        return add_regex(ctx, path, b, use_regex ? GPT2_PATTERN : NULL, STEP_BYTELEVEL, !unset(p, "add_prefix_space"));
    }
    return refuse(ctx, path, "pre_tokenizer", cJSON_GetObjectItemCaseSensitive(p, "type"),
                  "Sequence, Split (Regex, Isolated), ByteLevel");
}

/* The id of the special token called name in a template's special_tokens. */
static sl_status special_id(sl_ctx *ctx, const char *path, const sl__bpe *b, const cJSON *tp, const char *name, int32_t *id)
{
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tp, "special_tokens"), name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(sp, "ids");
    if (!cJSON_IsArray(ids) || cJSON_GetArraySize(ids) != 1 || !sl__json_integral(ids->child, 0, (double)b->size - 1))
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: post_processor: special token '%s': expected one id below %d in special_tokens",
                           path, name, (int)b->size);
    *id = (int32_t)ids->child->valuedouble;
    return SL_OK;
}

static sl_status post_step(sl_ctx *ctx, const char *path, sl__bpe *b, const cJSON *p)
{
    if (!p || cJSON_IsNull(p))
        return SL_OK;
    const char *type = str_or(p, "type");
    if (type && strcmp(type, "ByteLevel") == 0)
        return SL_OK; /* offsets only */
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
        sl_status s = cJSON_IsArray(list) ? SL_OK : refuse(ctx, path, "post_processor Sequence 'processors'", list, "an array");
        for (const cJSON *e = cJSON_IsArray(list) ? list->child : NULL; e && !s; e = e->next)
            s = post_step(ctx, path, b, e);
        return s;
    }
    if (type && strcmp(type, "TemplateProcessing") == 0) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
        if (!cJSON_IsArray(single))
            return refuse(ctx, path, "post_processor 'single'", single, "an array");
        int seen_a = 0, n_before = 0, n_after = 0;
        for (const cJSON *e = single->child; e; e = e->next) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(e, "Sequence")) {
                seen_a = 1;
                continue;
            }
            const char *name = st ? str_or(st, "id") : NULL;
            if (!name)
                return refuse(ctx, path, "post_processor 'single' item", e, "{\"SpecialToken\": {...}} or {\"Sequence\": {...}}");
            int32_t id = -1;
            sl_status s = special_id(ctx, path, b, p, name, &id);
            if (s)
                return s;
            if (seen_a) {
                b->eos = id;
                n_after++;
            } else {
                b->bos = id;
                n_before++;
            }
        }
        if (n_before > 1 || n_after > 1)
            return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: post_processor: expected at most one special token before and "
                               "one after the text, found %d and %d", path, n_before, n_after);
        return SL_OK;
    }
    return refuse(ctx, path, "post_processor", cJSON_GetObjectItemCaseSensitive(p, "type"),
                  "null, ByteLevel, TemplateProcessing, Sequence of these");
}

/* ---- load --------------------------------------------------------------------- */

static sl_status load_tree(sl_ctx *ctx, const char *path, const cJSON *root, sl__bpe *b)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *mtype = model ? str_or(model, "type") : NULL;
    if (!cJSON_IsObject(model) || (mtype && strcmp(mtype, "BPE") != 0))
        return refuse(ctx, path, "model 'type'", model ? cJSON_GetObjectItemCaseSensitive(model, "type") : model,
                      "\"BPE\" (byte-level)");
    if (!unset(model, "byte_fallback"))
        return refuse(ctx, path, "model 'byte_fallback'", cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"),
                      "false (byte-level BPE; a SentencePiece-style model ships tokenizer.model: load that)");
    if (!unset(model, "continuing_subword_prefix") || !unset(model, "end_of_word_suffix") || !unset(model, "dropout"))
        return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: model: expected no continuing_subword_prefix, end_of_word_suffix "
                           "or dropout (byte-level BPE)", path);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm))
        return refuse(ctx, path, "normalizer", cJSON_GetObjectItemCaseSensitive(norm, "type"), "null");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const char *dtype = dec ? str_or(dec, "type") : NULL;
    if (!dtype || strcmp(dtype, "ByteLevel") != 0)
        return refuse(ctx, path, "decoder", dec ? cJSON_GetObjectItemCaseSensitive(dec, "type") : dec, "ByteLevel");
    b->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab))
        return refuse(ctx, path, "model 'vocab'", vocab, "an object {token: id}");
    if (merges && !cJSON_IsArray(merges))
        return refuse(ctx, path, "model 'merges'", merges, "an array");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return refuse(ctx, path, "added_tokens", added, "an array");
    /* sizes */
    int64_t size = 0, n_vocab = 0, n_added = 0;
    size_t text_bytes = 0;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        if (!sl__json_integral(e, 0, INT32_MAX - 1))
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: model.vocab[\"%s\"]: expected an id 0 .. %d", path, e->string, INT32_MAX - 1);
        size = (int64_t)e->valuedouble + 1 > size ? (int64_t)e->valuedouble + 1 : size;
        text_bytes += strlen(e->string);
        n_vocab++;
    }
    for (const cJSON *e = cJSON_IsArray(added) ? added->child : NULL; e; e = e->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const char *content = str_or(e, "content");
        if (!sl__json_integral(id, 0, INT32_MAX - 1) || !content || !content[0])
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: added_tokens[%lld]: expected an id 0 .. %d and a non-empty content",
                               path, (long long)n_added, INT32_MAX - 1);
        if (!unset(e, "lstrip") || !unset(e, "rstrip") || !unset(e, "single_word"))
            return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: added token \"%s\": lstrip, rstrip and single_word are not "
                               "supported (expected false)", path, content);
        size = (int64_t)id->valuedouble + 1 > size ? (int64_t)id->valuedouble + 1 : size;
        text_bytes += strlen(content);
        n_added++;
    }
    if (size == 0)
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: model.vocab: expected at least one token, found none", path);
    /* ids index a table: a vocabulary with a few holes is fine, one id far past the token count is not */
    if (size > n_vocab + n_added + 65536)
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: token ids run to %lld for %lld tokens; expected ids below the token "
                           "count + 65536", path, (long long)size - 1, (long long)(n_vocab + n_added));
    b->size = (int32_t)size;
    b->text_bytes = text_bytes + 1;
    b->by_id = sl_ctx_alloc(ctx, (size_t)size * sizeof *b->by_id);
    b->cap_sorted = (size_t)(n_vocab ? n_vocab : 1);
    b->cap_added = (size_t)(n_added ? n_added : 1);
    b->sorted = sl_ctx_alloc(ctx, b->cap_sorted * sizeof *b->sorted);
    b->added = sl_ctx_alloc(ctx, b->cap_added * sizeof *b->added);
    b->text = sl_ctx_alloc(ctx, b->text_bytes);
    if (!b->by_id || !b->sorted || !b->added || !b->text)
        return SL_ENOMEM;
    for (int32_t i = 0; i < b->size; i++)
        b->by_id[i] = (bpe_tok){NULL, -1, i};
    unsigned char *w = b->text;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int32_t id = (int32_t)e->valuedouble;
        if (b->by_id[id].len >= 0)
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: model.vocab: id %d is given to two tokens (\"%s\" and another)",
                               path, (int)id, e->string);
        int32_t len = unmap_str(b, e->string, w);
        if (len >= 0)
            b->sorted[b->n_sorted++] = (bpe_tok){w, len, id};
        else { /* outside the byte alphabet: decodes as written, never produced by merges */
            len = (int32_t)strlen(e->string);
            memcpy(w, e->string, (size_t)len);
        }
        b->by_id[id] = (bpe_tok){w, len, id};
        w += len;
    }
    for (const cJSON *e = cJSON_IsArray(added) ? added->child : NULL; e; e = e->next) {
        int32_t id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        const char *content = str_or(e, "content");
        int32_t len = (int32_t)strlen(content);
        memcpy(w, content, (size_t)len);
        b->by_id[id] = b->added[b->n_added++] = (bpe_tok){w, len, id};
        b->added_first[w[0]] = 1;
        w += len;
    }
    qsort(b->sorted, (size_t)b->n_sorted, sizeof *b->sorted, cmp_tok_id);
    const char *unk = str_or(model, "unk_token");
    b->unk = -1;
    if (unk) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(vocab, unk);
        if (!u)
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: model.unk_token \"%s\" is not in the vocabulary", path, unk);
        b->unk = (int32_t)u->valuedouble;
    }

    /* merges: "a b" or ["a", "b"]; rank = position */
    int n_merges = merges ? cJSON_GetArraySize(merges) : 0;
    b->cap_merges = (size_t)(n_merges ? n_merges : 1);
    b->merges = sl_ctx_alloc(ctx, b->cap_merges * sizeof *b->merges);
    if (!b->merges)
        return SL_ENOMEM;
    size_t longest = 0;
    for (int32_t i = 0; i < b->n_sorted; i++)
        longest = (size_t)b->sorted[i].len > longest ? (size_t)b->sorted[i].len : longest;
    unsigned char *buf = sl_ctx_alloc(ctx, 4 * longest + 8);
    char *pair = sl_ctx_alloc(ctx, 8 * longest + 16);
    if (!buf || !pair) {
        if (buf)
            sl_ctx_dealloc(ctx, buf, 4 * longest + 8);
        if (pair)
            sl_ctx_dealloc(ctx, pair, 8 * longest + 16);
        return SL_ENOMEM;
    }
    sl_status s = SL_OK;
    int rank = 0;
    for (const cJSON *e = merges ? merges->child : NULL; e && !s; e = e->next, rank++) {
        const char *parts[2] = {NULL, NULL};
        char *sp = NULL;
        if (cJSON_IsString(e) && strlen(e->valuestring) < 8 * longest + 16) {
            strcpy(pair, e->valuestring);
            sp = strchr(pair, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                *sp = '\0';
                parts[0] = pair;
                parts[1] = sp + 1;
            }
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            parts[0] = e->child->valuestring;
            parts[1] = e->child->next->valuestring;
        }
        int32_t ids[2] = {-1, -1}, la = -1, lb = -1;
        if (parts[0] && strlen(parts[0]) <= 4 * longest && strlen(parts[1]) <= 4 * longest) {
            la = unmap_str(b, parts[0], buf);
            ids[0] = la >= 0 ? lookup(b, buf, (size_t)la) : -1;
            lb = la >= 0 ? unmap_str(b, parts[1], buf + la) : -1;
            ids[1] = lb >= 0 ? lookup(b, buf + la, (size_t)lb) : -1;
        }
        int32_t out = ids[0] >= 0 && ids[1] >= 0 ? lookup(b, buf, (size_t)(la + lb)) : -1;
        if (out < 0) {
            char shown[96];
            sl__json_describe(e, shown, sizeof shown);
            s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: model.merges[%d] = %s: expected two tokens of the vocabulary whose "
                            "concatenation is one too", path, rank, shown);
            break;
        }
        b->merges[b->n_merges++] = (bpe_merge){ids[0], ids[1], rank, out};
    }
    sl_ctx_dealloc(ctx, buf, 4 * longest + 8);
    sl_ctx_dealloc(ctx, pair, 8 * longest + 16);
    if (s)
        return s;
    qsort(b->merges, (size_t)b->n_merges, sizeof *b->merges, cmp_merge);

    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    int has_bytelevel = 0;
    if (pre && !cJSON_IsNull(pre) && (s = pre_step(ctx, path, b, pre, &has_bytelevel)))
        return s;
    if (!has_bytelevel)
        return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: pre_tokenizer: expected a ByteLevel step (byte-level BPE), found "
                           "none", path);
    b->bos = b->eos = -1;
    return post_step(ctx, path, b, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
}

sl_status sl__bpe_load(sl_ctx *ctx, const char *path, sl__bpe **out)
{
    *out = NULL;
    char *text = NULL;
    size_t n = 0;
    sl_status s = sl__json_read_file(ctx, path, BPE_MAX_FILE, &text, &n);
    if (s)
        return s;
    cJSON *root = NULL;
    s = sl__json_parse(ctx, path, text, n, 0, BPE_MAX_DEPTH, &root);
    sl_ctx_dealloc(ctx, text, n + 1);
    if (s)
        return s;
    sl__bpe *b = sl_ctx_alloc(ctx, sizeof *b);
    if (!b) {
        cJSON_Delete(root);
        return SL_ENOMEM;
    }
    memset(b, 0, sizeof *b);
    build_unmap(b->unmap);
    s = cJSON_IsObject(root) ? load_tree(ctx, path, root, b)
                             : sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected a JSON object (tokenizer.json)", path);
    cJSON_Delete(root);
    if (s)
        sl__bpe_free(ctx, b);
    else
        *out = b;
    return s;
}

void sl__bpe_free(sl_ctx *ctx, sl__bpe *b)
{
    if (!b)
        return;
    for (int i = 0; i < b->n_steps; i++)
        pcre2_code_free(b->steps[i].re);
    if (b->by_id)
        sl_ctx_dealloc(ctx, b->by_id, (size_t)b->size * sizeof *b->by_id);
    if (b->sorted) /* allocated for every vocabulary entry; n_sorted may be fewer */
        sl_ctx_dealloc(ctx, b->sorted, b->cap_sorted * sizeof *b->sorted);
    if (b->added)
        sl_ctx_dealloc(ctx, b->added, b->cap_added * sizeof *b->added);
    if (b->merges)
        sl_ctx_dealloc(ctx, b->merges, b->cap_merges * sizeof *b->merges);
    if (b->text)
        sl_ctx_dealloc(ctx, b->text, b->text_bytes);
    sl_ctx_dealloc(ctx, b, sizeof *b);
}

int32_t sl__bpe_size(const sl__bpe *b) { return b->size; }
int32_t sl__bpe_bos(const sl__bpe *b) { return b->bos; }
int32_t sl__bpe_eos(const sl__bpe *b) { return b->eos; }

size_t sl__bpe_piece(const sl__bpe *b, int32_t id, char *buf, size_t bn)
{
    size_t len = 0;
    const unsigned char *s = (const unsigned char *)"";
    if (b && id >= 0 && id < b->size && b->by_id[id].len >= 0) {
        s = b->by_id[id].s;
        len = (size_t)b->by_id[id].len;
    }
    if (buf && bn) {
        size_t w = len < bn - 1 ? len : bn - 1;
        memcpy(buf, s, w);
        buf[w] = '\0';
    }
    return len;
}

/* ---- encode ------------------------------------------------------------------- */

typedef struct piece_t {
    size_t off, len;
    int32_t added; /* the added token's id, or -1 */
} piece_t;

typedef struct enc {
    sl_ctx *ctx;
    const sl__bpe *b;
    unsigned char *arena;
    size_t used, cap;
    piece_t *in, *out;
    size_t n_in, n_out, cap_pieces;
    pcre2_match_data *md;
} enc;

static void push(enc *e, size_t off, size_t len, int32_t added)
{
    if (len > 0)
        e->out[e->n_out++] = (piece_t){off, len, added};
}

/* Every match of re in the piece is a piece, and so is every gap between them. */
static sl_status split_isolated(enc *e, const pcre2_code *re, piece_t p)
{
    const unsigned char *subj = e->arena + p.off;
    size_t pos = 0, start = 0;
    while (start <= p.len) {
        int rc = pcre2_match(re, subj, p.len, start, 0, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return sl_ctx_fail(e->ctx, SL_EFORMAT, "tokenizer: libpcre2 failed on the pre-tokenizer regex: %s",
                               (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* an empty match splits nothing; go on one character later */
            uint32_t cp;
            size_t k = ms < p.len ? sl__utf8_next(subj + ms, p.len - ms, &cp) : 1;
            start = ms + (k ? k : 1);
            continue;
        }
        push(e, p.off + pos, ms - pos, -1);
        push(e, p.off + ms, me - ms, -1);
        pos = start = me;
    }
    push(e, p.off + pos, p.len - pos, -1);
    return SL_OK;
}

static sl_status run_step(enc *e, const bpe_step *st)
{
    e->n_out = 0;
    for (size_t i = 0; i < e->n_in; i++) {
        piece_t p = e->in[i];
        if (p.added >= 0) {
            e->out[e->n_out++] = p;
            continue;
        }
        if (st->kind == STEP_BYTELEVEL && st->prefix_space && e->arena[p.off] != ' ') {
            e->arena[e->used] = ' ';
            memcpy(e->arena + e->used + 1, e->arena + p.off, p.len);
            p = (piece_t){e->used, p.len + 1, -1};
            e->used += p.len;
        }
        sl_status s = SL_OK;
        if (st->re)
            s = split_isolated(e, st->re, p);
        else
            push(e, p.off, p.len, -1);
        if (s)
            return s;
    }
    piece_t *t = e->in;
    e->in = e->out;
    e->out = t;
    e->n_in = e->n_out;
    return SL_OK;
}

/* Merges one piece; appends its ids to ids[*n]. sym and rank have room for len. */
static sl_status merge_piece(sl_ctx *ctx, const sl__bpe *b, const unsigned char *s, size_t len, int32_t *sym,
                             int32_t *rank, int32_t *ids, int64_t *n)
{
    if (b->ignore_merges) {
        int32_t whole = lookup(b, s, len);
        if (whole >= 0) {
            ids[(*n)++] = whole;
            return SL_OK;
        }
    }
    size_t m = 0;
    for (size_t i = 0; i < len; i++) {
        int32_t id = lookup(b, s + i, 1);
        if (id < 0 && b->unk < 0)
            return sl_ctx_fail(ctx, SL_EARG, "tokenizer: byte 0x%02x of the text has no token in the vocabulary "
                               "(and the model has no unk_token)", s[i]);
        sym[m++] = id < 0 ? b->unk : id;
    }
    for (size_t i = 0; i + 1 < m; i++) {
        const bpe_merge *mg = find_merge(b, sym[i], sym[i + 1]);
        rank[i] = mg ? mg->rank : -1;
    }
    for (;;) {
        size_t best = m;
        for (size_t i = 0; i + 1 < m; i++)
            if (rank[i] >= 0 && (best == m || rank[i] < rank[best]))
                best = i;
        if (best == m)
            break;
        sym[best] = find_merge(b, sym[best], sym[best + 1])->out;
        memmove(sym + best + 1, sym + best + 2, (m - best - 2) * sizeof *sym);
        if (m - best >= 3)
            memmove(rank + best + 1, rank + best + 2, (m - best - 3) * sizeof *rank);
        m--;
        if (best > 0) {
            const bpe_merge *mg = find_merge(b, sym[best - 1], sym[best]);
            rank[best - 1] = mg ? mg->rank : -1;
        }
        if (best + 1 < m) {
            const bpe_merge *mg = find_merge(b, sym[best], sym[best + 1]);
            rank[best] = mg ? mg->rank : -1;
        }
    }
    memcpy(ids + *n, sym, m * sizeof *sym);
    *n += (int64_t)m;
    return SL_OK;
}

sl_status sl__bpe_encode(sl_ctx *ctx, const sl__bpe *b, const char *text, size_t len, int bos, int eos, sl_tensor *ids)
{
    memset(ids, 0, sizeof *ids);
    const unsigned char *t = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = sl__utf8_next(t + i, len - i, &cp);
        if (!k)
            return sl_ctx_fail(ctx, SL_EARG, "tokenizer: expected UTF-8 text, found byte 0x%02x at byte %zu that "
                               "starts no well-formed sequence", t[i], i);
        i += k;
    }
    int n_prefix = 0;
    for (int i = 0; i < b->n_steps; i++)
        n_prefix += b->steps[i].prefix_space;
    if (len > (SIZE_MAX / 8 - 64) / (size_t)(2 * n_prefix + 2) / sizeof(piece_t))
        return sl_ctx_fail(ctx, SL_ENOMEM, "tokenizer: a text of %zu bytes is too long", len);
    /* a prefix-space step copies every piece with one more byte: at most 2 * len more */
    enc e = {ctx, b, NULL, len, len * (size_t)(2 * n_prefix + 1) + 1, NULL, NULL, 0, 0, 0, NULL};
    e.cap_pieces = e.cap + 1;
    size_t bytes_scratch = e.cap + 2 * e.cap_pieces * sizeof(piece_t);
    size_t n_ids_cap = e.cap + 2, bytes_ids = 3 * n_ids_cap * sizeof(int32_t);
    unsigned char *scratch = sl_ctx_alloc(ctx, bytes_scratch);
    int32_t *work = sl_ctx_alloc(ctx, bytes_ids);
    sl_status s = SL_OK;
    if (!scratch || !work) {
        s = SL_ENOMEM;
        goto done;
    }
    e.in = (piece_t *)scratch;
    e.out = e.in + e.cap_pieces;
    e.arena = (unsigned char *)(e.out + e.cap_pieces);
    memcpy(e.arena, t, len);
    /* added tokens first: leftmost, longest */
    size_t pos = 0;
    for (size_t i = 0; i < len && b->n_added;) {
        int32_t best = -1, best_len = 0;
        if (b->added_first[t[i]])
            for (int32_t a = 0; a < b->n_added; a++) {
                const bpe_tok *at = &b->added[a];
                if (at->len > best_len && (size_t)at->len <= len - i && memcmp(t + i, at->s, (size_t)at->len) == 0) {
                    best = at->id;
                    best_len = at->len;
                }
            }
        if (best < 0) {
            i++;
            continue;
        }
        push(&e, pos, i - pos, -1);
        push(&e, i, (size_t)best_len, best);
        i += (size_t)best_len;
        pos = i;
    }
    push(&e, pos, len - pos, -1);
    e.in = e.out;
    e.out = (piece_t *)scratch;
    e.n_in = e.n_out;
    if (b->n_steps) {
        e.md = pcre2_match_data_create(16, NULL);
        if (!e.md) {
            s = SL_ENOMEM;
            goto done;
        }
    }
    for (int i = 0; i < b->n_steps && !s; i++)
        s = run_step(&e, &b->steps[i]);
    if (s)
        goto done;
    int32_t *out = work, *sym = work + n_ids_cap, *rank = sym + n_ids_cap;
    int64_t n = 0;
    if (bos && b->bos >= 0)
        out[n++] = b->bos;
    for (size_t i = 0; i < e.n_in && !s; i++) {
        if (e.in[i].added >= 0)
            out[n++] = e.in[i].added;
        else
            s = merge_piece(ctx, b, e.arena + e.in[i].off, e.in[i].len, sym, rank, out, &n);
    }
    if (eos && !s) {
        if (b->eos < 0)
            s = sl_ctx_fail(ctx, SL_EARG, "tokenizer: an EOS was asked for, but tokenizer.json's post_processor adds none");
        else
            out[n++] = b->eos;
    }
    if (!s) {
        s = sl_tensor_new(ctx, SL_I32, 1, &n, ids);
        if (!s && n > 0)
            memcpy(ids->data, out, (size_t)n * sizeof *out);
    }
done:
    if (e.md)
        pcre2_match_data_free(e.md);
    if (scratch)
        sl_ctx_dealloc(ctx, scratch, bytes_scratch);
    if (work)
        sl_ctx_dealloc(ctx, work, bytes_ids);
    return s;
}
