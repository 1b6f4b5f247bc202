/* model/tokenizer.c — the llama2.c tokenizer: loads tokenizer.bin (int32
 * max_token_length, then per id f32 score, int32 len, len bytes), encodes
 * UTF-8 text (code point lookup, byte fallback, greedy highest-score pair
 * merges) and decodes one token at a time. */
#include "internal.h"
#include "tok_bpe.h"
#include "tok_spm.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_BOS 1
#define TOK_EOS 2
#define TOK_BYTE0 3            /* id of <0x00>: byte b falls back to id b + 3 */
#define TOK_MIN_VOCAB 259      /* the specials and the 256 byte pieces */
#define TOK_MAX_LEN 65536      /* longest max_token_length believed (real files: 7 .. ~50) */

typedef struct piece {
    const unsigned char *s;
    int32_t len;
    int32_t id;
} piece;

/* One allocation holds the struct, both piece tables, the scores and the text. */
struct sl_tokenizer {
    size_t bytes;
    int64_t vocab;
    int32_t max_len;
    piece *by_id;   /* [vocab] */
    piece *sorted;  /* [vocab], by bytes, then by id */
    float *score;   /* [vocab] */
    int kind;       /* TOK_LLAMA2C, or a tokenizer of another library below */
    sl__spm *spm;
    sl__bpe *bpe;
};

enum { TOK_LLAMA2C = 0, TOK_SPM, TOK_BPE };

static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t as_i32(uint32_t u)
{
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static float as_f32(uint32_t u)
{
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Byte order only; the index must not depend on the id for the search. */
static int cmp_bytes(const void *a, const void *b)
{
    const piece *x = a, *y = b;
    int32_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->s, y->s, (size_t)n) : 0;
    if (c)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

/* Duplicated pieces sort by id so that a lookup can return the lowest. */
static int cmp_bytes_id(const void *a, const void *b)
{
    int c = cmp_bytes(a, b);
    if (c)
        return c;
    return (((const piece *)a)->id > ((const piece *)b)->id) - (((const piece *)a)->id < ((const piece *)b)->id);
}

/* Pass one: checks every field without keeping anything, so that a bad
 * file costs no allocation and the message can name the token. */
static sl_status scan(sl_ctx *ctx, FILE *f, const char *path, long long vocab, int32_t max_len, size_t *text_bytes)
{
    long long pos = 4, total = 0;
    for (long long i = 0; i < vocab; i++) {
        unsigned char h[8], skip[256];
        size_t got = fread(h, 1, sizeof h, f);
        if (got < sizeof h)
            return sl_ctx_fail(ctx, SL_EFORMAT,
                               "%s: token %lld: expected a score and a length (8 bytes) at offset %lld, found %zu "
                               "bytes (truncated, or the file holds fewer than %lld tokens)",
                               path, i, pos, got, vocab);
        float score = as_f32(le32(h));
        int32_t len = as_i32(le32(h + 4));
        if (!isfinite(score))
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: token %lld: expected a finite score, found %g", path, i,
                               (double)score);
        if (len < 0 || len > max_len)
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: token %lld: expected a length of 0 .. %d (max_token_length), found %d",
                               path, i, (int)max_len, (int)len);
        pos += 8;
        for (int32_t left = len; left > 0;) {
            size_t want = left < (int32_t)sizeof skip ? (size_t)left : sizeof skip;
            got = fread(skip, 1, want, f);
            left -= (int32_t)got;
            if (got < want)
                return sl_ctx_fail(ctx, SL_EFORMAT, "%s: token %lld: expected %d bytes of text at offset %lld, found %d (truncated)",
                                   path, i, (int)len, pos, (int)(len - left));
        }
        pos += len;
        total += len;
    }
    if (fgetc(f) != EOF)
        return sl_ctx_fail(ctx, SL_EFORMAT,
                           "%s: token %lld: expected the end of the file at offset %lld, found more bytes "
                           "(the file holds more than vocab_size = %lld tokens)",
                           path, vocab, pos, vocab);
    *text_bytes = (size_t)total;
    return SL_OK;
}

/* Pass two: reads the checked file into t. */
static sl_status fill(sl_ctx *ctx, FILE *f, const char *path, sl_tokenizer *t, unsigned char *text)
{
    if (fseek(f, 4, SEEK_SET) != 0)
        return sl_ctx_fail(ctx, SL_EIO, "%s: cannot seek: %s", path, strerror(errno));
    for (int64_t i = 0; i < t->vocab; i++) {
        unsigned char h[8];
        if (fread(h, 1, sizeof h, f) != sizeof h)
            return sl_ctx_fail(ctx, SL_EIO, "%s: token %lld: read failed (file changed while loading?)", path,
                               (long long)i);
        int32_t len = as_i32(le32(h + 4));
        if (len > 0 && fread(text, 1, (size_t)len, f) != (size_t)len)
            return sl_ctx_fail(ctx, SL_EIO, "%s: token %lld: read failed (file changed while loading?)", path,
                               (long long)i);
        t->score[i] = as_f32(le32(h));
        t->by_id[i] = (piece){text, len, (int32_t)i};
        text += len;
    }
    memcpy(t->sorted, t->by_id, (size_t)t->vocab * sizeof *t->sorted);
    qsort(t->sorted, (size_t)t->vocab, sizeof *t->sorted, cmp_bytes_id);
    return SL_OK;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A SentencePiece model or a tokenizer.json (sparselab.h, issue 18). */
static sl_status load_other(sl_ctx *ctx, const char *path, int kind, int64_t vocab_size, sl_tokenizer **out)
{
    if (vocab_size < 0 || vocab_size > INT32_MAX)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_load: %s: expected vocab_size 0 .. %d, found %lld", path,
                           INT32_MAX, (long long)vocab_size);
    sl_tokenizer *t = sl_ctx_alloc(ctx, sizeof *t);
    if (!t)
        return SL_ENOMEM;
    memset(t, 0, sizeof *t);
    t->bytes = sizeof *t;
    t->kind = kind;
    sl_status s = SL_OK;
    if (kind == TOK_SPM) {
        char err[512];
        if (!sl__spm_load(path, &t->spm, err, sizeof err))
            s = sl_ctx_fail(ctx, SL_EFORMAT, "%s", err);
        else
            t->vocab = sl__spm_size(t->spm);
    } else {
        s = sl__bpe_load(ctx, path, &t->bpe);
        if (!s)
            t->vocab = sl__bpe_size(t->bpe);
    }
    if (!s && vocab_size > 0 && t->vocab > vocab_size)
        s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: the tokenizer has %lld ids, the model's vocab_size is %lld (expected "
                        "at most that many)", path, (long long)t->vocab, (long long)vocab_size);
    if (s)
        sl_tokenizer_free(ctx, t);
    else
        *out = t;
    return s;
}

sl_status sl_tokenizer_load(sl_ctx *ctx, const char *path, int64_t vocab_size, sl_tokenizer **out)
{
    if (!out || !path)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_load: expected a path and an output, found NULL");
    *out = NULL;
    int kind = ends_with(path, ".model") ? TOK_SPM : ends_with(path, ".json") ? TOK_BPE : TOK_LLAMA2C;
    if (kind != TOK_LLAMA2C)
        return load_other(ctx, path, kind, vocab_size, out);
    if (vocab_size < TOK_MIN_VOCAB || vocab_size > INT32_MAX)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_load: %s: expected vocab_size %d .. %d, found %lld", path,
                           TOK_MIN_VOCAB, INT32_MAX, (long long)vocab_size);
    FILE *f = fopen(path, "rb");
    if (!f)
        return sl_ctx_fail(ctx, SL_EIO, "%s: cannot open: %s", path, strerror(errno));
    sl_status s = SL_OK;
    unsigned char h[4];
    size_t got = fread(h, 1, sizeof h, f);
    if (got < sizeof h) {
        s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected a 4-byte max_token_length, found %zu bytes", path, got);
        goto done;
    }
    int32_t max_len = as_i32(le32(h));
    if (max_len < 1 || max_len > TOK_MAX_LEN) {
        s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected max_token_length 1 .. %d, found %d", path, TOK_MAX_LEN,
                        (int)max_len);
        goto done;
    }
    size_t text_bytes = 0;
    s = scan(ctx, f, path, (long long)vocab_size, max_len, &text_bytes);
    if (s)
        goto done;
    size_t v = (size_t)vocab_size;
    size_t o_piece = align16(sizeof(sl_tokenizer)), o_sorted = o_piece + align16(v * sizeof(piece));
    size_t o_score = o_sorted + align16(v * sizeof(piece)), o_text = o_score + align16(v * sizeof(float));
    size_t bytes = o_text + text_bytes;
    unsigned char *block = sl_ctx_alloc(ctx, bytes);
    if (!block) {
        s = SL_ENOMEM;
        goto done;
    }
    sl_tokenizer *t = (sl_tokenizer *)block;
    *t = (sl_tokenizer){bytes, vocab_size, max_len, (piece *)(block + o_piece), (piece *)(block + o_sorted),
                        (float *)(block + o_score), TOK_LLAMA2C, NULL, NULL};
    s = fill(ctx, f, path, t, block + o_text);
    if (s)
        sl_ctx_dealloc(ctx, block, bytes);
    else
        *out = t;
done:
    fclose(f);
    return s;
}

void sl_tokenizer_free(sl_ctx *ctx, sl_tokenizer *t)
{
    if (!t)
        return;
    if (t->spm)
        sl__spm_free(t->spm);
    if (t->bpe)
        sl__bpe_free(ctx, t->bpe);
    sl_ctx_dealloc(ctx, t, t->bytes);
}

int64_t sl_tokenizer_vocab(const sl_tokenizer *t) { return t ? t->vocab : 0; }

/* The lowest id whose piece is these bytes, or -1. */
static int32_t lookup(const sl_tokenizer *t, const unsigned char *s, size_t n)
{
    piece key = {s, (int32_t)n, 0};
    const piece *hit = bsearch(&key, t->sorted, (size_t)t->vocab, sizeof *hit, cmp_bytes);
    if (!hit)
        return -1;
    while (hit > t->sorted && cmp_bytes(hit - 1, &key) == 0)
        hit--;
    return hit->id;
}

/* The id of the piece a + b, or -1; buf holds max_len bytes. */
static int32_t merged(const sl_tokenizer *t, int32_t a, int32_t b, unsigned char *buf)
{
    const piece *x = &t->by_id[a], *y = &t->by_id[b];
    if (x->len + y->len > t->max_len)
        return -1;
    memcpy(buf, x->s, (size_t)x->len);
    memcpy(buf + x->len, y->s, (size_t)y->len);
    return lookup(t, buf, (size_t)(x->len + y->len));
}

static sl_status spm_encode(sl_ctx *ctx, const sl_tokenizer *t, const char *text, int bos, int eos, sl_tensor *ids)
{
    int32_t b = sl__spm_bos(t->spm), e = sl__spm_eos(t->spm);
    if ((bos && b < 0) || (eos && e < 0))
        return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_encode: expected a %s id in the SentencePiece model, found none",
                           bos && b < 0 ? "BOS" : "EOS");
    int32_t *v = NULL;
    size_t m = 0;
    char err[512];
    if (!sl__spm_encode(t->spm, text, strlen(text), &v, &m, err, sizeof err))
        return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_encode: %s", err);
    int64_t n = (int64_t)m + (bos != 0) + (eos != 0);
    sl_status s = sl_tensor_new(ctx, SL_I32, 1, &n, ids);
    if (!s) {
        int32_t *o = ids->data;
        if (bos)
            *o++ = b;
        if (m)
            memcpy(o, v, m * sizeof *v);
        if (eos)
            o[m] = e;
    }
    free(v);
    return s;
}

sl_status sl_tokenizer_encode(sl_ctx *ctx, const sl_tokenizer *t, const char *text, int bos, int eos, sl_tensor *ids)
{
    if (!ids)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_encode: expected an output tensor, found NULL");
    memset(ids, 0, sizeof *ids);
    if (!t || !text)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_encode: expected a tokenizer and a text, found NULL");
    if (t->kind == TOK_BPE)
        return sl__bpe_encode(ctx, t->bpe, text, strlen(text), bos, eos, ids);
    if (t->kind == TOK_SPM)
        return spm_encode(ctx, t, text, bos, eos, ids);
    const unsigned char *p = (const unsigned char *)text;
    size_t n_text = strlen(text);
    /* Every byte gives at most one token, plus BOS, the dummy prefix and EOS. */
    if (n_text > (SIZE_MAX - 2 * (size_t)t->max_len) / (2 * sizeof(int32_t)) - 3)
        return sl_ctx_fail(ctx, SL_ENOMEM, "sl_tokenizer_encode: a text of %zu bytes is too long", n_text);
    size_t cap = n_text + 3, scratch_bytes = 2 * cap * sizeof(int32_t) + 2 * (size_t)t->max_len;
    int32_t *tok = sl_ctx_alloc(ctx, scratch_bytes);
    if (!tok)
        return SL_ENOMEM;
    int32_t *pair = tok + cap; /* pair[i]: the piece tok[i] + tok[i+1], or -1 */
    unsigned char *buf = (unsigned char *)(pair + cap);
    int64_t n = 0;
    if (bos)
        tok[n++] = TOK_BOS;
    int64_t lo = n; /* BOS takes no part in merges */
    if (n_text > 0) {
        int32_t sp = lookup(t, (const unsigned char *)" ", 1);
        tok[n++] = sp >= 0 ? sp : TOK_BYTE0 + ' ';
    }
    for (size_t i = 0; i < n_text;) {
        uint32_t cp;
        size_t k = sl__utf8_next(p + i, n_text - i, &cp);
        int32_t id = k ? lookup(t, p + i, k) : -1;
        if (id >= 0)
            tok[n++] = id;
        for (size_t j = 0; id < 0 && j < (k ? k : 1); j++)
            tok[n++] = TOK_BYTE0 + p[i + j];
        i += k ? k : 1;
    }
    for (int64_t i = lo; i + 1 < n; i++)
        pair[i] = merged(t, tok[i], tok[i + 1], buf);
    for (;;) {
        /* The best-scoring pair; strict > keeps the leftmost of a tie. */
        int64_t best = -1;
        for (int64_t i = lo; i + 1 < n; i++)
            if (pair[i] >= 0 && (best < 0 || t->score[pair[i]] > t->score[pair[best]]))
                best = i;
        if (best < 0)
            break;
        tok[best] = pair[best];
        memmove(tok + best + 1, tok + best + 2, (size_t)(n - best - 2) * sizeof *tok);
        if (n - best - 3 > 0)
            memmove(pair + best + 1, pair + best + 2, (size_t)(n - best - 3) * sizeof *pair);
        n--;
        if (best > lo)
            pair[best - 1] = merged(t, tok[best - 1], tok[best], buf);
        if (best + 1 < n)
            pair[best] = merged(t, tok[best], tok[best + 1], buf);
    }
    if (eos)
        tok[n++] = TOK_EOS;
    sl_status s = sl_tensor_new(ctx, SL_I32, 1, &n, ids);
    if (s == SL_OK && n > 0)
        memcpy(ids->data, tok, (size_t)n * sizeof *tok);
    sl_ctx_dealloc(ctx, tok, scratch_bytes);
    return s;
}

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

size_t sl_tokenizer_decode(const sl_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t n)
{
    if (t && t->kind == TOK_BPE)
        return sl__bpe_piece(t->bpe, id, buf, n);
    if (t && t->kind == TOK_SPM) {
        char first[2];
        size_t len = sl__spm_piece(t->spm, id, first, sizeof first);
        int strip = prev >= 0 && prev == sl__spm_bos(t->spm) && len > 0 && first[0] == ' ';
        sl__spm_piece(t->spm, id, buf, n);
        if (strip && buf && n > 0)
            memmove(buf, buf + 1, len < n - 1 ? len : n - 1); /* the NUL moves too */
        return len - (size_t)strip;
    }
    const unsigned char *s = (const unsigned char *)"";
    size_t len = 0;
    unsigned char byte;
    if (t && id >= 0 && id < t->vocab) {
        s = t->by_id[id].s;
        len = (size_t)t->by_id[id].len;
        /* The dummy prefix the encoder adds ends up at the start of the first piece. */
        if (prev == TOK_BOS && len > 0 && s[0] == ' ') {
            s++;
            len--;
        }
        if (len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hex_digit(s[3]) >= 0 && hex_digit(s[4]) >= 0) {
            byte = (unsigned char)(hex_digit(s[3]) << 4 | hex_digit(s[4]));
            s = &byte;
            len = 1;
        }
    }
    if (buf && n > 0) {
        size_t w = len < n - 1 ? len : n - 1;
        memcpy(buf, s, w);
        buf[w] = '\0';
    }
    return len;
}

/* SentencePiece: the library's Decode; after a prev other than BOS the text
 * of prev + ids less the text of prev, so that the dummy prefix is kept. */
static sl_status spm_decode_ids(sl_ctx *ctx, const sl_tokenizer *t, const int32_t *ids, int64_t n, int32_t prev,
                                char **text, size_t *len)
{
    int cont = prev >= 0 && prev != sl__spm_bos(t->spm);
    size_t m = (size_t)n + (size_t)cont;
    int32_t *v = sl_ctx_alloc(ctx, (m ? m : 1) * sizeof *v);
    if (!v)
        return SL_ENOMEM;
    if (cont)
        v[0] = prev;
    if (n > 0)
        memcpy(v + cont, ids, (size_t)n * sizeof *ids);
    char err[512], *all = NULL, *head = NULL;
    size_t n_all = 0, n_head = 0;
    sl_status s = SL_OK;
    if (!sl__spm_decode(t->spm, v, m, &all, &n_all, err, sizeof err) ||
        (cont && !sl__spm_decode(t->spm, v, 1, &head, &n_head, err, sizeof err)))
        s = sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_decode_ids: %s", err);
    sl_ctx_dealloc(ctx, v, (m ? m : 1) * sizeof *v);
    size_t skip = head && n_head <= n_all && memcmp(all, head, n_head) == 0 ? n_head : 0;
    if (!s) {
        *len = n_all - skip;
        *text = sl_ctx_alloc(ctx, *len + 1);
        if (!*text)
            s = SL_ENOMEM;
        else {
            memcpy(*text, all + skip, *len);
            (*text)[*len] = '\0';
        }
    }
    free(all);
    free(head);
    return s;
}

sl_status sl_tokenizer_decode_ids(sl_ctx *ctx, const sl_tokenizer *t, const int32_t *ids, int64_t n, int32_t prev,
                                  char **text, size_t *len)
{
    if (!t || !text || !len || (n > 0 && !ids) || n < 0)
        return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_decode_ids: expected a tokenizer, ids and outputs, found NULL");
    *text = NULL;
    *len = 0;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->vocab)
            return sl_ctx_fail(ctx, SL_EARG, "sl_tokenizer_decode_ids: id %d (position %lld) outside 0 .. %lld",
                               (int)ids[i], (long long)i, (long long)t->vocab - 1);
    if (t->kind == TOK_SPM)
        return spm_decode_ids(ctx, t, ids, n, prev, text, len);
    size_t total = 0;
    int32_t p = prev;
    for (int64_t i = 0; i < n; p = ids[i++])
        total += sl_tokenizer_decode(t, p, ids[i], NULL, 0);
    char *out = sl_ctx_alloc(ctx, total + 1);
    if (!out)
        return SL_ENOMEM;
    size_t w = 0;
    p = prev;
    for (int64_t i = 0; i < n; p = ids[i++]) {
        size_t k = sl_tokenizer_decode(t, p, ids[i], out + w, total + 1 - w);
        w += k;
    }
    out[total] = '\0';
    *text = out;
    *len = total;
    return SL_OK;
}
