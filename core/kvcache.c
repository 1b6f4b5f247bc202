/* kvcache.c — the paged KV cache of decode (issue 13; cards quest,
 * double_sparsity, spatten, snapkv baselines): keys and values per kv head
 * with the page metadata of page.meta (channel-wise min, max and mean per
 * page of P tokens) kept up to date incrementally. An append folds each new
 * key into its page's min, max and running mean; an eviction
 * compacts each head and rebuilds only the pages from the first one it
 * touched. The metadata equals page.meta over the cached keys (the test
 * checks it after random appends and evictions). */
#include "internal.h"

#include <float.h>
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
    /* quantised pages that replace K (and V): kbits / vbits 0 (f32), 4 or 8 */
    int kbits, vbits;
    sl_tensor kc, vc;          /* u8 codes [h, cap, d or ceil(d/2)] */
    sl_tensor ksc, vsc;        /* f32 per page and channel scales [h, cap_p, d] */
    int asym;                  /* 1: unsigned codes with zero points (min/max quantisation) */
    sl_tensor kz, vz;          /* f32 per page and channel zero points [h, cap_p, d] (asym) */
    float *kst, *vst;          /* f32 rows of the open (last) page [h, page, d] */
    sl_tensor ps;              /* i32 [h, cap, 1]: each slot's token position (issue 13, session 4b) */
    int64_t next;              /* position of the next appended token (tokens ever appended) */
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
    sl_tensor_release(&c->kc);
    sl_tensor_release(&c->vc);
    sl_tensor_release(&c->ksc);
    sl_tensor_release(&c->vsc);
    sl_tensor_release(&c->kz);
    sl_tensor_release(&c->vz);
    sl_tensor_release(&c->ps);
    if (c->kst)
        sl_ctx_dealloc(c->ctx, c->kst, sizeof(float) * (size_t)(c->h * c->page * c->d));
    if (c->vst)
        sl_ctx_dealloc(c->ctx, c->vst, sizeof(float) * (size_t)(c->h * c->page * c->d));
    sl_ctx_dealloc(c->ctx, c, sizeof *c);
}

int64_t sl_kvcache_len(const sl_kvcache *c) { return c->len; }
int64_t sl_kvcache_pages(const sl_kvcache *c) { return (c->len + c->page - 1) / c->page; }
int64_t sl_kvcache_page_size(const sl_kvcache *c) { return c->page; }
int64_t sl_kvcache_heads(const sl_kvcache *c) { return c->h; }
int64_t sl_kvcache_head_dim(const sl_kvcache *c) { return c->d; }
int sl_kvcache_bits(const sl_kvcache *c) { return c->bits; }

/* Bytes per token row of one side (K or V) stored with b bits (0: f32). */
static int64_t row_bytes(int bits, int64_t d)
{
    return bits == 0 ? (int64_t)sizeof(float) * d : bits == 8 ? d : (d + 1) / 2;
}

size_t sl_kvcache_bytes(const sl_kvcache *c)
{
    size_t side = (size_t)(c->h * c->cap) * (size_t)(row_bytes(c->kbits, c->d) + row_bytes(c->vbits, c->d));
    size_t pages = (size_t)(c->h * c->cap_p * c->d) * sizeof(float);
    size_t open = (size_t)(c->h * c->page * c->d) * sizeof(float);
    return side + 3 * pages + (c->kbits ? (c->asym ? 2 : 1) * pages + open : 0) +
           (c->vbits ? (c->asym ? 2 : 1) * pages + open : 0) +
           (c->bits ? (size_t)(c->h * c->cap * c->d) + 2 * sizeof(float) * (size_t)(c->h * c->cap) : 0) +
           sizeof(int32_t) * (size_t)(c->h * c->cap);
}

int sl_kvcache_quant(const sl_kvcache *c, int *vbits)
{
    if (vbits)
        *vbits = c->vbits;
    return c->kbits;
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

/* Storage for cap tokens (a multiple of the page, >= len): every part is
 * reallocated and the first len tokens (np pages) copied. */
static sl_status resize(sl_ctx *ctx, sl_kvcache *c, int64_t cap);

/* Room for want tokens (capacity grows by half, rounded to whole pages). */
static sl_status reserve(sl_ctx *ctx, sl_kvcache *c, int64_t want)
{
    if (want <= c->cap)
        return SL_OK;
    int64_t cap = c->cap + c->cap / 2 > want ? c->cap + c->cap / 2 : want;
    return resize(ctx, c, (cap + c->page - 1) / c->page * c->page);
}

sl_status sl_kvcache_shrink(sl_ctx *ctx, sl_kvcache *c)
{
    int64_t cap = (c->len + c->page - 1) / c->page * c->page;
    return cap < c->cap ? resize(ctx, c, cap > 0 ? cap : c->page) : SL_OK;
}

static sl_status resize(sl_ctx *ctx, sl_kvcache *c, int64_t cap)
{
    int64_t cap_p = cap / c->page, np = sl_kvcache_pages(c);
    sl_status s;
    if ((!c->kbits && (s = regrow(ctx, &c->k, c->h, c->cap, cap, c->d, c->len))) ||
        (!c->vbits && (s = regrow(ctx, &c->v, c->h, c->cap, cap, c->d, c->len))) ||
        (c->kbits && ((s = regrow_as(ctx, &c->kc, SL_U8, c->h, c->cap, cap, row_bytes(c->kbits, c->d), c->len)) ||
                      (s = regrow(ctx, &c->ksc, c->h, c->cap_p, cap_p, c->d, np)) ||
                      (c->asym && (s = regrow(ctx, &c->kz, c->h, c->cap_p, cap_p, c->d, np))))) ||
        (c->vbits && ((s = regrow_as(ctx, &c->vc, SL_U8, c->h, c->cap, cap, row_bytes(c->vbits, c->d), c->len)) ||
                      (s = regrow(ctx, &c->vsc, c->h, c->cap_p, cap_p, c->d, np)) ||
                      (c->asym && (s = regrow(ctx, &c->vz, c->h, c->cap_p, cap_p, c->d, np))))) ||
        (s = regrow_as(ctx, &c->ps, SL_I32, c->h, c->cap, cap, 1, c->len)) ||
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

/* ---- quantised pages (kbits / vbits 4 or 8) ----
 * Each full page holds b-bit codes with one symmetric scale per channel:
 * scale = max |x| over the page's tokens / (2^(b-1) - 1), code = round(x /
 * scale) + 2^(b-1) (sparselab.h, page.attend_q). The open (last) page keeps
 * its f32 rows in a one-page staging buffer and is re-quantised from them on
 * every append, so its codes always use its current range.
 * Asymmetric pages (sl_kvcache_set_quant_zero, issue 13 session 4): per
 * page and channel zero = min x, scale = (max x - min x) / (2^b - 1), code =
 * round((x - zero) / scale) in [0, 2^b - 1], value = code . scale + zero. */

static sl_tensor *codes_of(sl_kvcache *c, int side) { return side ? &c->vc : &c->kc; }
static sl_tensor *scales_of(sl_kvcache *c, int side) { return side ? &c->vsc : &c->ksc; }
static sl_tensor *zeros_of(sl_kvcache *c, int side) { return side ? &c->vz : &c->kz; }
static float *staging_of(sl_kvcache *c, int side) { return side ? c->vst : c->kst; }
static int bits_of(const sl_kvcache *c, int side) { return side ? c->vbits : c->kbits; }

/* Quantises rows [0, rows) of head h's staging into page pg's codes and scales. */
static void quantise_page(sl_kvcache *c, int side, int64_t h, int64_t pg, int64_t rows)
{
    int bits = bits_of(c, side);
    int64_t d = c->d, rb = row_bytes(bits, d), qmax = (1 << (bits - 1)) - 1, off = 1 << (bits - 1);
    const float *x = staging_of(c, side) + h * c->page * d;
    float *sc = (float *)scales_of(c, side)->data + (h * c->cap_p + pg) * d;
    float *z = c->asym ? (float *)zeros_of(c, side)->data + (h * c->cap_p + pg) * d : NULL;
    uint8_t *code = (uint8_t *)codes_of(c, side)->data + (h * c->cap + pg * c->page) * rb;
    long umax = (1L << bits) - 1;
    for (int64_t ch = 0; ch < d; ch++) {
        float amax = 0, lo = INFINITY, hi = -INFINITY;
        for (int64_t r = 0; r < rows; r++) {
            float x0 = x[r * d + ch];
            amax = fabsf(x0) > amax ? fabsf(x0) : amax;
            lo = x0 < lo ? x0 : lo;
            hi = x0 > hi ? x0 : hi;
        }
        if (z) {
            /* a range wider than FLT_MAX (finite values near +-FLT_MAX) would make the scale inf and the
             * codes NaN: such a channel saturates to [-FLT_MAX/2, FLT_MAX/2] instead */
            if (!isfinite(hi - lo)) {
                lo = lo < -FLT_MAX / 2 ? -FLT_MAX / 2 : lo;
                hi = hi > FLT_MAX / 2 ? FLT_MAX / 2 : hi;
            }
            z[ch] = lo;
            sc[ch] = (hi - lo) / (float)umax;
        } else
            sc[ch] = amax / (float)qmax;
    }
    memset(code, 0, (size_t)(rows * rb));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t ch = 0; ch < d; ch++) {
            long v;
            if (z) {
                float e = sc[ch] > 0 ? (x[r * d + ch] - z[ch]) / sc[ch] : 0;
                if (!isfinite(e)) /* x - z past FLT_MAX (a saturated channel): in double */
                    e = ((double)x[r * d + ch] - z[ch]) / sc[ch] > umax ? (float)umax : 0;
                v = e > (float)umax ? umax : e < 0 ? 0 : lrintf(e);
            } else {
                v = sc[ch] > 0 ? lrintf(x[r * d + ch] / sc[ch]) : 0;
                v = (v > qmax ? qmax : v < -qmax ? -qmax : v) + off;
            }
            uint8_t u = (uint8_t)v;
            if (bits == 8)
                code[r * rb + ch] = u;
            else
                code[r * rb + ch / 2] |= (uint8_t)(ch % 2 == 0 ? u : u << 4);
        }
}

static void dequant_token(sl_kvcache *c, int side, int64_t h, int64_t t, float *out);

/* Token t of head h, dequantised (or read from the open page's f32 rows). */
static void token_row(sl_kvcache *c, int side, int64_t h, int64_t t, float *out)
{
    int bits = bits_of(c, side);
    int64_t d = c->d;
    if (!bits) {
        memcpy(out, (const float *)(side ? c->v : c->k).data + (h * c->cap + t) * d, sizeof(float) * (size_t)d);
        return;
    }
    int64_t open = c->len > 0 ? (c->len - 1) / c->page * c->page : 0;
    if (t >= open && t < c->len) {
        memcpy(out, staging_of(c, side) + (h * c->page + t - open) * d, sizeof(float) * (size_t)d);
        return;
    }
    dequant_token(c, side, h, t, out);
}

/* Token t of head h from its codes (side quantised). */
static void dequant_token(sl_kvcache *c, int side, int64_t h, int64_t t, float *out)
{
    int bits = bits_of(c, side);
    int64_t d = c->d, rb = row_bytes(bits, d), off = 1 << (bits - 1);
    const uint8_t *code = (const uint8_t *)codes_of(c, side)->data + (h * c->cap + t) * rb;
    const float *sc = (const float *)scales_of(c, side)->data + (h * c->cap_p + t / c->page) * d;
    const float *z = c->asym ? (const float *)zeros_of(c, side)->data + (h * c->cap_p + t / c->page) * d : NULL;
    for (int64_t ch = 0; ch < d; ch++) {
        int u = bits == 8 ? code[ch] : ch % 2 == 0 ? (code[ch / 2] & 0x0F) : (code[ch / 2] >> 4);
        /* the same float expressions as the kernels: (c - off) . s, or c . s + z */
        out[ch] = z ? (float)u * sc[ch] + z[ch] : (float)(u - off) * sc[ch];
    }
}

/* Page pg's metadata over its first `rows` keys as stored (dequantised):
 * what page.attend_q reads, so Quest's bound holds for it. */
static void meta_from_codes(sl_kvcache *c, int64_t h, int64_t pg, int64_t rows)
{
    int64_t d = c->d, rb = row_bytes(c->kbits, d), off = 1 << (c->kbits - 1);
    size_t o = (size_t)((h * c->cap_p + pg) * d);
    float *mn = (float *)c->mn.data + o, *mx = (float *)c->mx.data + o, *me = (float *)c->me.data + o;
    const float *sc = (const float *)c->ksc.data + o, *z = c->asym ? (const float *)c->kz.data + o : NULL;
    const uint8_t *code = (const uint8_t *)c->kc.data + (h * c->cap + pg * c->page) * rb;
    for (int64_t ch = 0; ch < d; ch++) {
        double sum = 0;
        float lo = INFINITY, hi = -INFINITY;
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t *cr = code + r * rb;
            int u = c->kbits == 8 ? cr[ch] : ch % 2 == 0 ? (cr[ch / 2] & 0x0F) : (cr[ch / 2] >> 4);
            float x = z ? (float)u * sc[ch] + z[ch] : (float)(u - off) * sc[ch];
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
            sum += x;
        }
        mn[ch] = lo;
        mx[ch] = hi;
        me[ch] = (float)(sum / (double)rows);
    }
}

/* Stores token t of head h (k row kx, v row vx; t <= len, room reserved);
 * `flush`: the last token of this batch (its page is (re)quantised even if
 * not full). */
static void store_token(sl_kvcache *c, int64_t h, int64_t t, const float *kx, const float *vx, int flush)
{
    int64_t d = c->d, off = t % c->page, pg = t / c->page;
    int done = off == c->page - 1 || flush;
    for (int side = 0; side < 2; side++) {
        const float *x = side ? vx : kx;
        if (bits_of(c, side)) {
            memcpy(staging_of(c, side) + (h * c->page + off) * d, x, sizeof(float) * (size_t)d);
            if (done)
                quantise_page(c, side, h, pg, off + 1);
        } else
            memcpy((float *)(side ? c->v : c->k).data + (h * c->cap + t) * d, x, sizeof(float) * (size_t)d);
    }
    if (!c->kbits)
        fold_token(c, h, t);
    else if (done)
        meta_from_codes(c, h, pg, off + 1);
}

/* The checks of sl_kvcache_set_quant (nothing changed). */
static sl_status quant_check(sl_ctx *ctx, const sl_kvcache *c, int kbits, int vbits)
{
    if ((kbits != 0 && kbits != 4 && kbits != 8) || (vbits != 0 && vbits != 4 && vbits != 8) || (!kbits && vbits))
        return sl_ctx_fail(ctx, SL_EARG,
                           "sl_kvcache_set_quant: kbits = %d, vbits = %d; expected kbits 0, 4 or 8 and vbits 0, 4 or 8 "
                           "(vbits only with kbits)", kbits, vbits);
    if (c->len > 0 || c->cap > 0)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_set_quant: the cache already holds %lld tokens; set it before the first append",
                           (long long)c->len);
    if (c->bits && kbits)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_set_quant: the cache keeps a %d-bit copy of K (sl_kvcache_set_bits); "
                           "quantised pages replace K instead", c->bits);
    return SL_OK;
}

/* The checks of sl_kvcache_set_quant_zero against the kbits the cache will
 * have (nothing changed). */
static sl_status zero_check(sl_ctx *ctx, const sl_kvcache *c, int asym, int kbits)
{
    if (asym != 0 && asym != 1)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_set_quant_zero: asym = %d; expected 0 or 1", asym);
    if (c->len > 0 || c->cap > 0)
        return sl_ctx_fail(ctx, SL_EARG,
                           "sl_kvcache_set_quant_zero: the cache already holds %lld tokens; set it before the first append",
                           (long long)c->len);
    if (asym && !kbits)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_set_quant_zero: the cache keeps f32 K; zero points go with "
                           "quantised pages (sl_kvcache_set_quant first)");
    return SL_OK;
}

/* Checked kbits, vbits: the open-page buffers every side needs are
 * allocated first (on failure the ones just allocated are freed and the
 * cache is unchanged), then the unneeded ones freed and the widths set. */
static sl_status quant_apply(sl_ctx *ctx, sl_kvcache *c, int kbits, int vbits)
{
    size_t open = sizeof(float) * (size_t)(c->h * c->page * c->d);
    float *fresh[2] = {NULL, NULL};
    for (int side = 0; side < 2; side++) {
        float *st = side ? c->vst : c->kst;
        int want = side ? vbits : kbits;
        if (!st && want && !(fresh[side] = sl_ctx_alloc(ctx, open))) {
            if (fresh[0])
                sl_ctx_dealloc(ctx, fresh[0], open);
            return sl_ctx_fail(ctx, SL_ENOMEM, "sl_kvcache_set_quant: out of memory");
        }
    }
    for (int side = 0; side < 2; side++) {
        float **st = side ? &c->vst : &c->kst;
        int want = side ? vbits : kbits;
        if (*st && !want) {
            sl_ctx_dealloc(ctx, *st, open);
            *st = NULL;
        } else if (fresh[side])
            *st = fresh[side];
    }
    c->kbits = kbits;
    c->vbits = vbits;
    return SL_OK;
}

sl_status sl_kvcache_set_quant(sl_ctx *ctx, sl_kvcache *c, int kbits, int vbits)
{
    sl_status s = quant_check(ctx, c, kbits, vbits);
    return s ? s : quant_apply(ctx, c, kbits, vbits);
}

sl_status sl_kvcache_set_quant_zero(sl_ctx *ctx, sl_kvcache *c, int asym)
{
    sl_status s = zero_check(ctx, c, asym, c->kbits);
    if (s)
        return s;
    c->asym = asym;
    return SL_OK;
}

sl_status sl_kvcache_set_quant_all(sl_ctx *ctx, sl_kvcache *c, int kbits, int vbits, int asym)
{
    sl_status s;
    if ((s = quant_check(ctx, c, kbits, vbits)) || (s = zero_check(ctx, c, asym, kbits)) ||
        (s = quant_apply(ctx, c, kbits, vbits)))
        return s;
    c->asym = asym;
    return SL_OK;
}

int sl_kvcache_quant_zero(const sl_kvcache *c) { return c->asym; }

sl_status sl_kvcache_set_bits(sl_ctx *ctx, sl_kvcache *c, int bits)
{
    if (bits != 0 && (bits < 2 || bits > 8))
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_set_bits: bits = %d; expected 0 or 2..8", bits);
    if (bits && c->kbits)
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_set_bits: the cache holds %d-bit pages instead of f32 K; a low-bit "
                           "copy needs the f32 keys", c->kbits);
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
    return sl_kvcache_append_at(ctx, c, k, v, NULL);
}

sl_status sl_kvcache_append_at(sl_ctx *ctx, sl_kvcache *c, const sl_tensor *k, const sl_tensor *v, const sl_tensor *pos)
{
    sl_status s;
    if ((s = check_kv(ctx, c, k, "k")) || (s = check_kv(ctx, c, v, "v")))
        return s;
    if (k->shape[1] != v->shape[1])
        return sl_ctx_fail(ctx, SL_ESHAPE, "sl_kvcache_append: k has %lld tokens, v has %lld", (long long)k->shape[1],
                           (long long)v->shape[1]);
    if (pos) {
        char desc[96];
        sl_tensor_describe(pos, desc, sizeof desc);
        if (!pos->buf || pos->dtype != SL_I32 || pos->ndim != 2 || pos->shape[0] != c->h ||
            pos->shape[1] != k->shape[1] || !sl_tensor_is_contiguous(pos))
            return sl_ctx_fail(ctx, SL_ESHAPE, "sl_kvcache_append: pos must be contiguous i32 [%lld, %lld], found %s",
                               (long long)c->h, (long long)k->shape[1], desc);
        for (int64_t i = 0; i < c->h * k->shape[1]; i++)
            if (((const int32_t *)pos->data)[i] < 0)
                return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_append: pos[%lld] = %d; expected token positions >= 0",
                                   (long long)i, ((const int32_t *)pos->data)[i]);
    }
    sl_tensor kc = {0}, vc = {0};
    if ((s = sl_tensor_convert(ctx, k, SL_F32, &kc)) || (s = sl_tensor_convert(ctx, v, SL_F32, &vc)) ||
        (s = sl_tensor_check_finite(ctx, &kc, "sl_kvcache_append: k", 0)) ||
        (s = sl_tensor_check_finite(ctx, &vc, "sl_kvcache_append: v", 0)) || (s = reserve(ctx, c, c->len + k->shape[1]))) {
        sl_tensor_release(&kc);
        sl_tensor_release(&vc);
        return s;
    }
    int64_t t = k->shape[1], d = c->d;
    for (int64_t h = 0; c->kbits && h < c->h; h++)
        for (int64_t i = 0; i < t; i++)
            store_token(c, h, c->len + i, (const float *)kc.data + (h * t + i) * d, (const float *)vc.data + (h * t + i) * d,
                        i == t - 1);
    for (int64_t h = 0; !c->kbits && h < c->h; h++) {
        memcpy((float *)c->k.data + (h * c->cap + c->len) * d, (const float *)kc.data + h * t * d,
               sizeof(float) * (size_t)(t * d));
        memcpy((float *)c->v.data + (h * c->cap + c->len) * d, (const float *)vc.data + h * t * d,
               sizeof(float) * (size_t)(t * d));
        for (int64_t i = 0; i < t; i++) {
            fold_token(c, h, c->len + i);
            quantise_token(c, h, c->len + i);
        }
    }
    int64_t next = pos ? c->next : c->next + t;
    for (int64_t h = 0; h < c->h; h++)
        for (int64_t i = 0; i < t; i++) {
            int64_t x = pos ? ((const int32_t *)pos->data)[h * t + i] : c->next + i;
            ((int32_t *)c->ps.data)[h * c->cap + c->len + i] = (int32_t)x;
            next = x + 1 > next ? x + 1 : next;
        }
    c->next = next;
    c->len += t;
    sl_tensor_release(&kc);
    sl_tensor_release(&vc);
    return SL_OK;
}

/* Eviction with quantised pages: each head's tokens from its first touched
 * page are read back (the open page from its f32 rows, the others
 * dequantised), compacted and stored again page by page (re-quantised). */
static sl_status evict_quant(sl_ctx *ctx, sl_kvcache *c, const int32_t *ix, int64_t m)
{
    int64_t d = c->d, len = c->len - m, from = c->len;
    for (int64_t h = 0; h < c->h; h++)
        from = ix[h * m] / c->page * c->page < from ? ix[h * m] / c->page * c->page : from;
    size_t bytes = sizeof(float) * (size_t)((c->len - from) * d) * 2;
    float *tk = sl_ctx_alloc(ctx, bytes ? bytes : 1);
    if (!tk)
        return sl_ctx_fail(ctx, SL_ENOMEM, "sl_kvcache_evict: out of memory (%zu bytes to re-quantise)", bytes);
    float *tv = tk + (c->len - from) * d;
    int64_t old = c->len;
    for (int64_t h = 0; h < c->h; h++) {
        int64_t t0 = ix[h * m] / c->page * c->page, w = 0, j = 0;
        for (int64_t t = t0; t < old; t++) {
            if (j < m && t == ix[h * m + j]) {
                j++;
                continue;
            }
            token_row(c, 0, h, t, tk + w * d);
            token_row(c, 1, h, t, tv + w * d);
            w++;
        }
        for (int64_t i = 0; i < w; i++)
            store_token(c, h, t0 + i, tk + i * d, tv + i * d, i == w - 1);
        if (w == 0 && len > 0) /* the new open page is a stored full page: its rows from the codes */
            for (int64_t t = (len - 1) / c->page * c->page; t < len; t++) {
                int64_t o = (t % c->page) * d;
                dequant_token(c, 0, h, t, c->kst + h * c->page * d + o);
                if (c->vbits)
                    dequant_token(c, 1, h, t, c->vst + h * c->page * d + o);
            }
        if (!c->vbits)
            memset((float *)c->v.data + (h * c->cap + len) * d, 0, sizeof(float) * (size_t)(m * d));
    }
    sl_ctx_dealloc(ctx, tk, bytes ? bytes : 1);
    c->len = len;
    return SL_OK;
}

/* Token positions move with their slots: each head's positions at and after
 * its first evicted index are compacted over the old length. */
static void compact_positions(sl_kvcache *c, const int32_t *ix, int64_t m, int64_t old_len)
{
    for (int64_t h = 0; h < c->h; h++) {
        int32_t *ph = (int32_t *)c->ps.data + h * c->cap;
        int64_t w = ix[h * m], j = 0;
        for (int64_t t = ix[h * m]; t < old_len; t++) {
            if (j < m && t == ix[h * m + j]) {
                j++;
                continue;
            }
            ph[w++] = ph[t];
        }
    }
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
    if (c->kbits) {
        int64_t old = c->len;
        sl_status st = evict_quant(ctx, c, ix, m); /* may fail (out of memory) before anything moved */
        if (st == SL_OK)
            compact_positions(c, ix, m, old);
        return st;
    }
    compact_positions(c, ix, m, c->len);
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
    if ((strcmp(which, "k") == 0 || strcmp(which, "v") == 0) && bits_of(c, which[0] == 'v')) {
        /* quantised side: the dequantised codes [H, len, D] (what page.attend_q reads) */
        int side = which[0] == 'v';
        int64_t sh[3] = {c->h, c->len, c->d};
        sl_status s = sl_tensor_new(ctx, SL_F32, 3, sh, out);
        for (int64_t h = 0; s == SL_OK && h < c->h; h++)
            for (int64_t t = 0; t < c->len; t++)
                dequant_token((sl_kvcache *)c, side, h, t, (float *)out->data + (h * c->len + t) * c->d);
        return s;
    }
    if (strcmp(which, "k") == 0 || strcmp(which, "v") == 0) {
        *out = sl_tensor_retain(which[0] == 'k' ? &c->k : &c->v);
        return SL_OK;
    }
    if (strcmp(which, "kzeros") == 0 || strcmp(which, "vzeros") == 0) {
        int side = which[0] == 'v';
        if (!bits_of(c, side) || !c->asym)
            return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_tensor: '%s': the cache's %s pages have no zero points "
                               "(sl_kvcache_set_quant_zero)", which, side ? "V" : "K");
        *out = sl_tensor_retain(zeros_of((sl_kvcache *)c, side));
        return SL_OK;
    }
    if (strncmp(which, "kcodes", 6) == 0 || strncmp(which, "vcodes", 6) == 0 || strcmp(which, "kscales") == 0 ||
        strcmp(which, "vscales") == 0) {
        int side = which[0] == 'v';
        if (!bits_of(c, side))
            return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_tensor: '%s': the cache keeps %s in f32 (sl_kvcache_set_quant)",
                               which, side ? "V" : "K");
        if (strcmp(which + 1, "codes") && strcmp(which + 1, "scales"))
            return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_tensor: unknown part '%s'", which);
        sl_kvcache *cc = (sl_kvcache *)c;
        *out = sl_tensor_retain(which[1] == 'c' ? codes_of(cc, side) : scales_of(cc, side));
        return SL_OK;
    }
    if (strcmp(which, "pos") == 0) { /* a copy [H, len] of the slots' token positions */
        int64_t sh[2] = {c->h, c->len};
        sl_status s = sl_tensor_new(ctx, SL_I32, 2, sh, out);
        for (int64_t h = 0; s == SL_OK && h < c->h; h++)
            memcpy((int32_t *)out->data + h * c->len, (const int32_t *)c->ps.data + h * c->cap,
                   sizeof(int32_t) * (size_t)c->len);
        return s;
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
        return sl_ctx_fail(ctx, SL_EARG, "sl_kvcache_tensor: unknown part '%s' (expected k, v, pos, kq, kscale, kcodes, kscales, kzeros, vcodes, vscales, vzeros, min, max or mean)",
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
