/* kvcache.c — the paged KV cache of decode (issue 13; cards quest,
 * double_sparsity, spatten, snapkv baselines): keys and values per kv head
 * with the page metadata of page.meta (channel-wise min, max and mean per
 * page of P tokens) kept up to date incrementally. An append folds each new
 * key into its page's min, max and running mean; an eviction
 * compacts each head and rebuilds only the pages from the first one it
 * touched. The metadata equals page.meta over the cached keys (the test
 * checks it after random appends and evictions). */
#include "internal.h"

#include <math.h>
#include <string.h>

struct sl_kvcache {
    sl_ctx *ctx;
    int64_t h, d, page, len, cap, cap_p;
    sl_tensor k, v;            /* f32 [h, cap, d] */
    sl_tensor mn, mx, me;      /* f32 [h, cap_p, d] */
    int bits;                  /* 0: no low-bit copy of K; 2..8: codes and per-token lo, step */
    sl_tensor kq;              /* u8 [h, cap, d] */
    sl_tensor ks;              /* f32 [h, cap, 2]: lo, step */
};

sl_status sl_kvcache_new(sl_ctx *ctx, int64_t heads, int64_t head_dim, int64_t page, sl_kvcache **out)
{
    *out = NULL;
    if (heads < 1 || head_dim < 1 || page < 1)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_new: heads = %lld, head_dim = %lld, page = %lld; expected each >= 1",
                           (long long)heads, (long long)head_dim, (long long)page);
    sl_kvcache *c = sl_ctx_alloc(ctx, sizeof *c);
    if (!c)
        return sl_ctx_fail(ctx, SL_ENOMEM, "sl_kvcache_new: out of memory");
    memset(c, 0, sizeof *c);
    c->ctx = ctx;
    c->h = heads;
    c->d = head_dim;
    c->page = page;
    *out = c;
    return SL_OK;
}

void sl_kvcache_free(sl_kvcache *c)
{
    if (!c)
        return;
    sl_tensor_release(&c->k);
    sl_tensor_release(&c->v);
    sl_tensor_release(&c->mn);
    sl_tensor_release(&c->mx);
    sl_tensor_release(&c->me);
    sl_tensor_release(&c->kq);
    sl_tensor_release(&c->ks);
    sl_ctx_dealloc(c->ctx, c, sizeof *c);
}

int64_t sl_kvcache_len(const sl_kvcache *c) { return c->len; }
int64_t sl_kvcache_pages(const sl_kvcache *c) { return (c->len + c->page - 1) / c->page; }
int64_t sl_kvcache_page_size(const sl_kvcache *c) { return c->page; }
int64_t sl_kvcache_heads(const sl_kvcache *c) { return c->h; }
int64_t sl_kvcache_head_dim(const sl_kvcache *c) { return c->d; }
int sl_kvcache_bits(const sl_kvcache *c) { return c->bits; }

size_t sl_kvcache_bytes(const sl_kvcache *c)
{
    return sizeof(float) * (size_t)(2 * c->h * c->cap * c->d + 3 * c->h * c->cap_p * c->d) +
           (c->bits ? (size_t)(c->h * c->cap * c->d) + 2 * sizeof(float) * (size_t)(c->h * c->cap) : 0);
}

/* Copies rows [0, rows) of every head from a [h, old_rows, d] tensor into a
 * fresh zeroed [h, new_rows, d] one, which replaces it. */
static sl_status regrow_as(sl_ctx *ctx, sl_tensor *t, sl_dtype dt, int64_t h, int64_t old_rows, int64_t new_rows,
                           int64_t d, int64_t rows)
{
    sl_tensor n;
    int64_t sh[3] = {h, new_rows, d};
    sl_status s = sl_tensor_zeros(ctx, dt, 3, sh, &n);
    if (s)
        return s;
    size_t es = sl_dtype_size(dt);
    for (int64_t i = 0; t->buf && i < h; i++)
        memcpy((char *)n.data + (size_t)(i * new_rows * d) * es, (const char *)t->data + (size_t)(i * old_rows * d) * es,
               es * (size_t)(rows * d));
    sl_tensor_release(t);
    *t = n;
    return SL_OK;
}

static sl_status regrow(sl_ctx *ctx, sl_tensor *t, int64_t h, int64_t old_rows, int64_t new_rows, int64_t d,
                        int64_t rows)
{
    return regrow_as(ctx, t, SL_F32, h, old_rows, new_rows, d, rows);
}

/* Room for want tokens (capacity grows by half, rounded to whole pages). */
static sl_status reserve(sl_ctx *ctx, sl_kvcache *c, int64_t want)
{
    if (want <= c->cap)
        return SL_OK;
    int64_t cap = c->cap + c->cap / 2 > want ? c->cap + c->cap / 2 : want;
    cap = (cap + c->page - 1) / c->page * c->page;
    int64_t cap_p = cap / c->page, np = sl_kvcache_pages(c);
    sl_status s;
    if ((s = regrow(ctx, &c->k, c->h, c->cap, cap, c->d, c->len)) || (s = regrow(ctx, &c->v, c->h, c->cap, cap, c->d, c->len)) ||
        (s = regrow(ctx, &c->mn, c->h, c->cap_p, cap_p, c->d, np)) ||
        (s = regrow(ctx, &c->mx, c->h, c->cap_p, cap_p, c->d, np)) ||
        (s = regrow(ctx, &c->me, c->h, c->cap_p, cap_p, c->d, np)) ||
        (c->bits && ((s = regrow_as(ctx, &c->kq, SL_U8, c->h, c->cap, cap, c->d, c->len)) ||
                     (s = regrow(ctx, &c->ks, c->h, c->cap, cap, 2, c->len)))))
        return s;
    c->cap = cap;
    c->cap_p = cap_p;
    return SL_OK;
}

/* Folds token t of head h (already stored) into its page's metadata: min,
 * max and the running mean m += (x - m) / count. */
static void fold_token(sl_kvcache *c, int64_t h, int64_t t)
{
    int64_t pg = t / c->page, off = t % c->page, d = c->d;
    const float *x = (const float *)c->k.data + (h * c->cap + t) * d;
    size_t o = (size_t)((h * c->cap_p + pg) * d);
    float *mn = (float *)c->mn.data + o, *mx = (float *)c->mx.data + o, *me = (float *)c->me.data + o;
    if (off == 0) {
        for (int64_t i = 0; i < d; i++)
            mn[i] = mx[i] = me[i] = x[i];
        return;
    }
    float inv = 1.0f / (float)(off + 1);
    for (int64_t i = 0; i < d; i++) {
        mn[i] = x[i] < mn[i] ? x[i] : mn[i];
        mx[i] = x[i] > mx[i] ? x[i] : mx[i];
        me[i] += (x[i] - me[i]) * inv;
    }
}

/* The low-bit copy of token t of head h: per token asymmetric min/max over
 * the d channels, 2^bits levels (page.token_scores' quantisation). */
static void quantise_token(sl_kvcache *c, int64_t h, int64_t t)
{
    if (!c->bits)
        return;
    int64_t d = c->d;
    const float *x = (const float *)c->k.data + (h * c->cap + t) * d;
    uint8_t *code = (uint8_t *)c->kq.data + (h * c->cap + t) * d;
    float *ls = (float *)c->ks.data + (h * c->cap + t) * 2;
    double lo = x[0], hi = x[0];
    for (int64_t i = 1; i < d; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    double step = (hi - lo) / (double)((1 << c->bits) - 1);
    for (int64_t i = 0; i < d; i++)
        code[i] = step > 0 ? (uint8_t)nearbyint((x[i] - lo) / step) : 0;
    ls[0] = (float)lo;
    ls[1] = (float)step;
}

sl_status sl_kvcache_set_bits(sl_ctx *ctx, sl_kvcache *c, int bits)
{
    if (bits != 0 && (bits < 2 || bits > 8))
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_set_bits: bits = %d; expected 0 or 2..8", bits);
    if (c->len > 0)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_set_bits: the cache already holds %lld tokens; set bits before the first append",
                           (long long)c->len);
    sl_tensor_release(&c->kq);
    sl_tensor_release(&c->ks);
    c->bits = bits;
    if (bits && c->cap > 0) {
        sl_status s;
        if ((s = regrow_as(ctx, &c->kq, SL_U8, c->h, c->cap, c->cap, c->d, 0)) ||
            (s = regrow(ctx, &c->ks, c->h, c->cap, c->cap, 2, 0)))
            return s;
    }
    return SL_OK;
}

static sl_status check_kv(sl_ctx *ctx, const sl_kvcache *c, const sl_tensor *t, const char *nm)
{
    char desc[96];
    sl_tensor_describe(t, desc, sizeof desc);
    if (!t->buf || t->ndim != 3 || t->shape[0] != c->h || t->shape[2] != c->d || t->shape[1] < 1 ||
        (t->dtype != SL_F32 && t->dtype != SL_F16 && t->dtype != SL_BF16 && t->dtype != SL_F64))
        return sl_ctx_fail(ctx, SL_ESHAPE, "sl_kvcache_append: %s must be float [%lld, t >= 1, %lld], found %s", nm,
                           (long long)c->h, (long long)c->d, desc);
    return SL_OK;
}

sl_status sl_kvcache_append(sl_ctx *ctx, sl_kvcache *c, const sl_tensor *k, const sl_tensor *v)
{
    sl_status s;
    if ((s = check_kv(ctx, c, k, "k")) || (s = check_kv(ctx, c, v, "v")))
        return s;
    if (k->shape[1] != v->shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "sl_kvcache_append: k has %lld tokens, v has %lld", (long long)k->shape[1],
                           (long long)v->shape[1]);
    sl_tensor kc = {0}, vc = {0};
    if ((s = sl_tensor_convert(ctx, k, SL_F32, &kc)) || (s = sl_tensor_convert(ctx, v, SL_F32, &vc)) ||
        (s = sl_tensor_check_finite(ctx, &kc, "sl_kvcache_append: k", 0)) ||
        (s = sl_tensor_check_finite(ctx, &vc, "sl_kvcache_append: v", 0)) || (s = reserve(ctx, c, c->len + k->shape[1]))) {
        sl_tensor_release(&kc);
        sl_tensor_release(&vc);
        return s;
    }
    int64_t t = k->shape[1], d = c->d;
    for (int64_t h = 0; h < c->h; h++) {
        memcpy((float *)c->k.data + (h * c->cap + c->len) * d, (const float *)kc.data + h * t * d,
               sizeof(float) * (size_t)(t * d));
        memcpy((float *)c->v.data + (h * c->cap + c->len) * d, (const float *)vc.data + h * t * d,
               sizeof(float) * (size_t)(t * d));
        for (int64_t i = 0; i < t; i++) {
            fold_token(c, h, c->len + i);
            quantise_token(c, h, c->len + i);
        }
    }
    c->len += t;
    sl_tensor_release(&kc);
    sl_tensor_release(&vc);
    return SL_OK;
}

sl_status sl_kvcache_evict(sl_ctx *ctx, sl_kvcache *c, const sl_tensor *idx)
{
    char desc[96];
    sl_tensor_describe(idx, desc, sizeof desc);
    if (!idx->buf || idx->dtype != SL_I32 || idx->ndim != 2 || idx->shape[0] != c->h || !sl_tensor_is_contiguous(idx))
        return sl_ctx_fail(ctx, SL_ESHAPE, "sl_kvcache_evict: idx must be contiguous i32 [%lld, m], found %s",
                           (long long)c->h, desc);
    int64_t m = idx->shape[1], d = c->d;
    const int32_t *ix = idx->data;
    if (m > c->len)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_evict: %lld tokens per head to evict, the cache holds %lld",
                           (long long)m, (long long)c->len);
    for (int64_t h = 0; h < c->h; h++)
        for (int64_t j = 0; j < m; j++) {
            int32_t x = ix[h * m + j];
            if (x < 0 || x >= c->len || (j > 0 && x <= ix[h * m + j - 1]))
                return sl_ctx_fail(ctx, SL_EARG,
                                   "sl_kvcache_evict: idx[%lld][%lld] = %d; expected strictly increasing token indices in [0, %lld)",
                                   (long long)h, (long long)j, x, (long long)c->len);
        }
    if (m == 0)
        return SL_OK;
    int64_t len = c->len - m;
    for (int64_t h = 0; h < c->h; h++) {
        float *kh = (float *)c->k.data + h * c->cap * d, *vh = (float *)c->v.data + h * c->cap * d;
        int64_t w = ix[h * m], j = 0;
        for (int64_t t = ix[h * m]; t < c->len; t++) {
            if (j < m && t == ix[h * m + j]) {
                j++;
                continue;
            }
            memmove(kh + w * d, kh + t * d, sizeof(float) * (size_t)d);
            memmove(vh + w * d, vh + t * d, sizeof(float) * (size_t)d);
            if (c->bits) {
                uint8_t *qh = (uint8_t *)c->kq.data + h * c->cap * d;
                float *sh = (float *)c->ks.data + h * c->cap * 2;
                memmove(qh + w * d, qh + t * d, (size_t)d);
                memmove(sh + w * 2, sh + t * 2, 2 * sizeof(float));
            }
            w++;
        }
        memset(kh + len * d, 0, sizeof(float) * (size_t)(m * d));
        memset(vh + len * d, 0, sizeof(float) * (size_t)(m * d));
        /* pages from the first touched one are rebuilt token by token */
        for (int64_t t = ix[h * m] / c->page * c->page; t < len; t++)
            fold_token(c, h, t);
    }
    c->len = len;
    return SL_OK;
}

sl_status sl_kvcache_tensor(sl_ctx *ctx, const sl_kvcache *c, const char *which, sl_tensor *out)
{
    *out = (sl_tensor){0};
    if (c->len == 0)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_tensor: the cache is empty (0 tokens): nothing to read as '%s'",
                           which);
    if (strcmp(which, "k") == 0 || strcmp(which, "v") == 0) {
        *out = sl_tensor_retain(which[0] == 'k' ? &c->k : &c->v);
        return SL_OK;
    }
    if (strcmp(which, "kq") == 0 || strcmp(which, "kscale") == 0) {
        if (!c->bits)
            return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_tensor: '%s': the cache keeps no low-bit keys (sl_kvcache_set_bits)",
                               which);
        *out = sl_tensor_retain(which[1] == 'q' ? &c->kq : &c->ks);
        return SL_OK;
    }
    const sl_tensor *src = strcmp(which, "min") == 0 ? &c->mn : strcmp(which, "max") == 0 ? &c->mx
                         : strcmp(which, "mean") == 0 ? &c->me : NULL;
    if (!src)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_tensor: unknown part '%s' (expected k, v, kq, kscale, min, max or mean)",
                           which);
    int64_t np = sl_kvcache_pages(c), sh[3] = {c->h, np, c->d};
    sl_status s = sl_tensor_new(ctx, SL_F32, 3, sh, out);
    if (s)
        return s;
    for (int64_t h = 0; h < c->h; h++)
        memcpy((float *)out->data + h * np * c->d, (const float *)src->data + h * c->cap_p * c->d,
               sizeof(float) * (size_t)(np * c->d));
    return SL_OK;
}
