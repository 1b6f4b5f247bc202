/* mask.c — block masks: materialising analytic patterns (causal, window, sink,
 * full) into the block form, union, queries (get, kept, density), validation. */
#include "internal.h"

#include <string.h>

typedef enum { BLK_EMPTY = 0, BLK_FULL = 1, BLK_PARTIAL = 2 } blk_class;

const char *sl_pattern_name(sl_pattern_kind k)
{
    static const char *const names[SL_PAT__COUNT] = {"full", "causal", "window", "sink"};
    return (int)k >= 0 && k < SL_PAT__COUNT ? names[k] : "unknown";
}

/* Whether the term keeps (query position i, key j). */
static int term_keeps(const sl_pattern_term *t, int64_t i, int64_t j)
{
    switch (t->kind) {
    case SL_PAT_FULL: return 1;
    case SL_PAT_CAUSAL: return j <= i;
    case SL_PAT_WINDOW: return i - j >= 0 && i - j < t->a;
    case SL_PAT_SINK: return j < t->a && j <= i;
    default: return 0;
    }
}

/* Class of a block for one term from the block's corners: positions
 * [p0, p1] and keys [j0, j1] (inclusive). */
static blk_class term_class(const sl_pattern_term *t, int64_t p0, int64_t p1, int64_t j0, int64_t j1)
{
    switch (t->kind) {
    case SL_PAT_FULL: return BLK_FULL;
    case SL_PAT_CAUSAL:
        if (j1 <= p0)
            return BLK_FULL;
        return j0 > p1 ? BLK_EMPTY : BLK_PARTIAL;
    case SL_PAT_WINDOW: {
        int64_t dmin = p0 - j1, dmax = p1 - j0;
        if (dmax < 0 || dmin >= t->a)
            return BLK_EMPTY;
        return dmin >= 0 && dmax < t->a ? BLK_FULL : BLK_PARTIAL;
    }
    case SL_PAT_SINK:
        if (j0 >= t->a || j0 > p1)
            return BLK_EMPTY;
        return j1 < t->a && j1 <= p0 ? BLK_FULL : BLK_PARTIAL;
    default: return BLK_EMPTY;
    }
}

typedef struct geom {
    int64_t n_q, n_k, offset;
    int bq, bk;
    int64_t n_qb, n_kb;
} geom;

static int64_t rows_of(const geom *g, int64_t r) { return g->n_q - r * g->bq < g->bq ? g->n_q - r * g->bq : g->bq; }
static int64_t cols_of(const geom *g, int64_t c) { return g->n_k - c * g->bk < g->bk ? g->n_k - c * g->bk : g->bk; }

/* Fills bits (bq*bk bytes) for block (r, c) and returns its class after the
 * fact: a union of partial terms may cover the whole block. */
static blk_class block_bits(const geom *g, const sl_pattern_term *terms, int n_terms, int64_t r, int64_t c,
                            uint8_t *bits)
{
    int64_t rows = rows_of(g, r), cols = cols_of(g, c), kept = 0;
    memset(bits, 0, (size_t)g->bq * (size_t)g->bk);
    for (int64_t a = 0; a < rows; a++) {
        int64_t i = g->offset + r * g->bq + a;
        for (int64_t b = 0; b < cols; b++) {
            int64_t j = c * g->bk + b;
            for (int t = 0; t < n_terms; t++)
                if (term_keeps(&terms[t], i, j)) {
                    bits[a * g->bk + b] = 1;
                    kept++;
                    break;
                }
        }
    }
    if (kept == 0)
        return BLK_EMPTY;
    return kept == rows * cols ? BLK_FULL : BLK_PARTIAL;
}

static blk_class block_class(const geom *g, const sl_pattern_term *terms, int n_terms, int64_t r, int64_t c,
                             uint8_t *bits)
{
    int64_t p0 = g->offset + r * g->bq, p1 = p0 + rows_of(g, r) - 1;
    int64_t j0 = c * g->bk, j1 = j0 + cols_of(g, c) - 1;
    int any_partial = 0;
    for (int t = 0; t < n_terms; t++) {
        blk_class k = term_class(&terms[t], p0, p1, j0, j1);
        if (k == BLK_FULL)
            return BLK_FULL;
        any_partial |= k == BLK_PARTIAL;
    }
    return any_partial ? block_bits(g, terms, n_terms, r, c, bits) : BLK_EMPTY;
}

static sl_status mask_alloc(sl_ctx *ctx, sl_mask *m, int64_t nnz, int64_t n_part)
{
    int64_t rp[2] = {m->n_heads, m->n_qb + 1}, nz[1] = {nnz}, bs[3] = {n_part, m->bq, m->bk};
    sl_status s;
    if ((s = sl_tensor_new(ctx, SL_I32, 2, rp, &m->row_ptr)) || (s = sl_tensor_new(ctx, SL_I32, 1, nz, &m->col_idx)) ||
        (s = sl_tensor_new(ctx, SL_I32, 1, nz, &m->part)) || (s = sl_tensor_new(ctx, SL_U8, 3, bs, &m->bits))) {
        sl_mask_release(m);
        return s;
    }
    return SL_OK;
}

static sl_status check_geometry(sl_ctx *ctx, const char *fn, int64_t n_q, int64_t n_k, int bq, int bk)
{
    if (n_q < 0 || n_k < 0 || n_q > n_k)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected 0 <= n_q <= n_k, found n_q = %lld, n_k = %lld", fn,
                           (long long)n_q, (long long)n_k);
    if (bq < 1 || bk < 1 || bq > 4096 || bk > 4096)
        return sl_ctx_fail(ctx, SL_EARG, "%s: block sizes must be in [1, 4096], found bq = %d, bk = %d", fn, bq, bk);
    if (n_k / bk + 1 > INT32_MAX / 2)
        return sl_ctx_fail(ctx, SL_EARG, "%s: too many key blocks", fn);
    return SL_OK;
}

sl_status sl_mask_from_pattern(sl_ctx *ctx, const sl_pattern_term *terms, int n_terms, int64_t n_q, int64_t n_k,
                               int bq, int bk, sl_mask *out)
{
    memset(out, 0, sizeof *out);
    sl_status s = check_geometry(ctx, "sl_mask_from_pattern", n_q, n_k, bq, bk);
    if (s)
        return s;
    for (int t = 0; t < n_terms; t++) {
        if ((int)terms[t].kind < 0 || terms[t].kind >= SL_PAT__COUNT)
            return sl_ctx_fail(ctx, SL_EARG, "sl_mask_from_pattern: unknown pattern kind %d", (int)terms[t].kind);
        if ((terms[t].kind == SL_PAT_WINDOW && terms[t].a < 1) || (terms[t].kind == SL_PAT_SINK && terms[t].a < 0))
            return sl_ctx_fail(ctx, SL_EARG, "sl_mask_from_pattern: %s size %lld out of range (window >= 1, sink >= 0)",
                               sl_pattern_name(terms[t].kind), (long long)terms[t].a);
    }
    geom g = {n_q, n_k, n_k - n_q, bq, bk, (n_q + bq - 1) / bq, (n_k + bk - 1) / bk};
    size_t blk = (size_t)bq * (size_t)bk;
    uint8_t *tmp = sl_ctx_alloc(ctx, blk);
    if (!tmp)
        return SL_ENOMEM;
    /* Pass 1 counts entries and partial blocks; pass 2 fills them. */
    int64_t nnz = 0, n_part = 0;
    for (int64_t r = 0; r < g.n_qb; r++)
        for (int64_t c = 0; c < g.n_kb; c++) {
            blk_class k = block_class(&g, terms, n_terms, r, c, tmp);
            nnz += k != BLK_EMPTY;
            n_part += k == BLK_PARTIAL;
        }
    if (nnz > INT32_MAX) {
        sl_ctx_dealloc(ctx, tmp, blk);
        return sl_ctx_fail(ctx, SL_EARG, "sl_mask_from_pattern: %lld blocks exceed the i32 index", (long long)nnz);
    }
    *out = (sl_mask){.n_heads = 1, .n_q = n_q, .n_k = n_k, .bq = bq, .bk = bk, .n_qb = g.n_qb, .n_kb = g.n_kb};
    if ((s = mask_alloc(ctx, out, nnz, n_part))) {
        sl_ctx_dealloc(ctx, tmp, blk);
        return s;
    }
    int32_t *rp = out->row_ptr.data, *col = out->col_idx.data, *part = out->part.data;
    uint8_t *bits = out->bits.data;
    int32_t e = 0, pi = 0;
    for (int64_t r = 0; r < g.n_qb; r++) {
        rp[r] = e;
        for (int64_t c = 0; c < g.n_kb; c++) {
            blk_class k = block_class(&g, terms, n_terms, r, c, bits + (size_t)pi * blk);
            if (k == BLK_EMPTY)
                continue;
            col[e] = (int32_t)c;
            part[e++] = k == BLK_PARTIAL ? pi++ : -1;
        }
    }
    rp[g.n_qb] = e;
    sl_ctx_dealloc(ctx, tmp, blk);
    return SL_OK;
}

static const int32_t *head_rows(const sl_mask *m, int h) { return (const int32_t *)m->row_ptr.data + h * (m->n_qb + 1); }

int sl_mask_get(const sl_mask *m, int head, int64_t row, int64_t key)
{
    if (head < 0 || row < 0 || key < 0 || row >= m->n_q || key >= m->n_k)
        return 0;
    const int32_t *rp = head_rows(m, m->n_heads == 1 ? 0 : head);
    const int32_t *col = m->col_idx.data, *part = m->part.data;
    int64_t r = row / m->bq, c = key / m->bk;
    int32_t lo = rp[r], hi = rp[r + 1];
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (col[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo >= rp[r + 1] || col[lo] != c)
        return 0;
    if (part[lo] < 0)
        return 1;
    const uint8_t *bits = (const uint8_t *)m->bits.data + (size_t)part[lo] * (size_t)m->bq * (size_t)m->bk;
    return bits[(row - r * m->bq) * m->bk + (key - c * m->bk)];
}

int64_t sl_mask_kept(const sl_mask *m, int head)
{
    const int32_t *rp = head_rows(m, head), *col = m->col_idx.data, *part = m->part.data;
    geom g = {m->n_q, m->n_k, m->n_k - m->n_q, m->bq, m->bk, m->n_qb, m->n_kb};
    size_t blk = (size_t)m->bq * (size_t)m->bk;
    int64_t kept = 0;
    for (int64_t r = 0; r < m->n_qb; r++)
        for (int32_t e = rp[r]; e < rp[r + 1]; e++) {
            if (part[e] < 0) {
                kept += rows_of(&g, r) * cols_of(&g, col[e]);
                continue;
            }
            const uint8_t *bits = (const uint8_t *)m->bits.data + (size_t)part[e] * blk;
            for (size_t i = 0; i < blk; i++)
                kept += bits[i] != 0;
        }
    return kept;
}

double sl_mask_density(const sl_mask *m, int causal)
{
    double total = 0;
    int64_t offset = m->n_k - m->n_q;
    if (causal)
        for (int64_t r = 0; r < m->n_q; r++)
            total += (double)(offset + r + 1 < m->n_k ? offset + r + 1 : m->n_k);
    else
        total = (double)m->n_q * (double)m->n_k;
    if (total <= 0 || m->n_heads <= 0)
        return 0;
    double kept = 0;
    for (int h = 0; h < m->n_heads; h++)
        kept += (double)sl_mask_kept(m, h);
    return kept / (total * m->n_heads);
}

sl_status sl_mask_validate(sl_ctx *ctx, const sl_mask *m)
{
    const char *fn = "block mask";
    if (m->row_ptr.dtype != SL_I32 || m->row_ptr.ndim != 2 || m->row_ptr.shape[0] != m->n_heads ||
        m->row_ptr.shape[1] != m->n_qb + 1)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: row_ptr must be i32 [%d, %lld] for %lld query rows in blocks of %d",
                           fn, m->n_heads, (long long)(m->n_qb + 1), (long long)m->n_q, m->bq);
    int64_t nnz = m->col_idx.ndim == 1 ? m->col_idx.shape[0] : -1;
    if (m->col_idx.dtype != SL_I32 || m->part.dtype != SL_I32 || nnz < 0 || m->part.ndim != 1 ||
        m->part.shape[0] != nnz)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: col_idx and part must be i32 vectors of one length", fn);
    if (m->bits.dtype != SL_U8 || m->bits.ndim != 3 || m->bits.shape[1] != m->bq || m->bits.shape[2] != m->bk)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: bits must be u8 [n_part, %d, %d]", fn, m->bq, m->bk);
    int64_t n_part = m->bits.shape[0];
    const int32_t *rp = m->row_ptr.data, *col = m->col_idx.data, *part = m->part.data;
    int32_t prev_end = 0;
    for (int h = 0; h < m->n_heads; h++) {
        const int32_t *hr = rp + h * (m->n_qb + 1);
        if (hr[0] != prev_end)
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: head %d starts at entry %d, expected %d", fn, h, hr[0], prev_end);
        for (int64_t r = 0; r < m->n_qb; r++) {
            if (hr[r + 1] < hr[r] || hr[r + 1] > nnz)
                return sl_ctx_fail(ctx, SL_EFORMAT, "%s: row_ptr of head %d, block %lld is not monotone within [0, %lld]",
                                   fn, h, (long long)r, (long long)nnz);
            for (int32_t e = hr[r]; e < hr[r + 1]; e++) {
                if (col[e] < 0 || col[e] >= m->n_kb || (e > hr[r] && col[e] <= col[e - 1]))
                    return sl_ctx_fail(ctx, SL_EFORMAT,
                                       "%s: head %d, query block %lld: key blocks must be sorted, unique and in [0, %lld)",
                                       fn, h, (long long)r, (long long)m->n_kb);
                if (part[e] < -1 || part[e] >= n_part)
                    return sl_ctx_fail(ctx, SL_EFORMAT, "%s: entry %d refers to partial block %d of %lld", fn, e, part[e],
                                       (long long)n_part);
            }
        }
        prev_end = hr[m->n_qb];
    }
    if (prev_end != nnz)
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: row_ptr ends at %d but there are %lld entries", fn, prev_end,
                           (long long)nnz);
    return SL_OK;
}

void sl_mask_release(sl_mask *m)
{
    if (!m)
        return;
    sl_tensor_release(&m->row_ptr);
    sl_tensor_release(&m->col_idx);
    sl_tensor_release(&m->part);
    sl_tensor_release(&m->bits);
}

void sl_mask_inputs(const sl_mask *m, const sl_tensor *q, const sl_tensor *k, const sl_tensor *v, sl_tensor in[7])
{
    in[0] = *q;
    in[1] = *k;
    in[2] = *v;
    in[3] = m->row_ptr;
    in[4] = m->col_idx;
    in[5] = m->part;
    in[6] = m->bits;
}

/* Union of one head of a with one head of b, appended at entry *e / part *pi.
 * When out is NULL only counts. */
static void union_head(const sl_mask *a, int ha, const sl_mask *b, int hb, sl_mask *out, int h, int64_t *e,
                       int64_t *pi)
{
    size_t blk = (size_t)a->bq * (size_t)a->bk;
    geom g = {a->n_q, a->n_k, 0, a->bq, a->bk, a->n_qb, a->n_kb};
    const int32_t *ra = head_rows(a, ha), *rb = head_rows(b, hb);
    const int32_t *ca = a->col_idx.data, *cb = b->col_idx.data, *pa = a->part.data, *pb = b->part.data;
    const uint8_t *ba = a->bits.data, *bb = b->bits.data;
    for (int64_t r = 0; r < a->n_qb; r++) {
        if (out)
            ((int32_t *)out->row_ptr.data)[h * (out->n_qb + 1) + r] = (int32_t)*e;
        int32_t x = ra[r], y = rb[r];
        while (x < ra[r + 1] || y < rb[r + 1]) {
            int32_t cx = x < ra[r + 1] ? ca[x] : INT32_MAX, cy = y < rb[r + 1] ? cb[y] : INT32_MAX;
            int32_t c = cx < cy ? cx : cy;
            int32_t px = cx == c ? pa[x] : -2, py = cy == c ? pb[y] : -2; /* -2: absent */
            x += cx == c;
            y += cy == c;
            int full = px == -1 || py == -1;
            uint8_t *dst = NULL;
            if (!full && out)
                dst = (uint8_t *)out->bits.data + (size_t)*pi * blk;
            if (!full) {
                /* OR the partial bits; the union may turn out full. */
                int64_t kept = 0, rows = rows_of(&g, r), cols = cols_of(&g, c);
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t j = 0; j < cols; j++) {
                        size_t o = (size_t)(i * a->bk + j);
                        int bit = (px >= 0 && ba[(size_t)px * blk + o]) || (py >= 0 && bb[(size_t)py * blk + o]);
                        kept += bit;
                        if (dst)
                            dst[o] = (uint8_t)bit;
                    }
                full = kept == rows * cols;
                if (dst && !full)
                    for (int64_t i = 0; i < a->bq; i++)
                        for (int64_t j = 0; j < a->bk; j++)
                            if (i >= rows || j >= cols)
                                dst[i * a->bk + j] = 0;
            }
            if (out) {
                ((int32_t *)out->col_idx.data)[*e] = c;
                ((int32_t *)out->part.data)[*e] = full ? -1 : (int32_t)*pi;
            }
            (*e)++;
            *pi += !full;
        }
    }
    if (out)
        ((int32_t *)out->row_ptr.data)[h * (out->n_qb + 1) + a->n_qb] = (int32_t)*e;
}

sl_status sl_mask_union(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, sl_mask *out)
{
    memset(out, 0, sizeof *out);
    if (a->n_q != b->n_q || a->n_k != b->n_k || a->bq != b->bq || a->bk != b->bk)
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "mask union: sizes differ (n_q %lld/%lld, n_k %lld/%lld, blocks %dx%d/%dx%d); resize first",
                           (long long)a->n_q, (long long)b->n_q, (long long)a->n_k, (long long)b->n_k, a->bq, a->bk,
                           b->bq, b->bk);
    if (a->n_heads != b->n_heads && a->n_heads != 1 && b->n_heads != 1)
        return sl_ctx_fail(ctx, SL_ESHAPE, "mask union: %d and %d heads; expected equal counts or 1", a->n_heads,
                           b->n_heads);
    int heads = a->n_heads > b->n_heads ? a->n_heads : b->n_heads;
    int64_t nnz = 0, n_part = 0;
    for (int h = 0; h < heads; h++)
        union_head(a, a->n_heads == 1 ? 0 : h, b, b->n_heads == 1 ? 0 : h, NULL, h, &nnz, &n_part);
    if (nnz > INT32_MAX)
        return sl_ctx_fail(ctx, SL_EARG, "mask union: %lld blocks exceed the i32 index", (long long)nnz);
    *out = (sl_mask){.n_heads = heads, .n_q = a->n_q, .n_k = a->n_k, .bq = a->bq, .bk = a->bk, .n_qb = a->n_qb,
                     .n_kb = a->n_kb};
    sl_status s = mask_alloc(ctx, out, nnz, n_part);
    if (s)
        return s;
    int64_t e = 0, pi = 0;
    for (int h = 0; h < heads; h++)
        union_head(a, a->n_heads == 1 ? 0 : h, b, b->n_heads == 1 ? 0 : h, out, h, &e, &pi);
    return SL_OK;
}
