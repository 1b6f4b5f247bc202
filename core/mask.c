/* mask.c — the block form of masks: geometry checks, queries (get, kept,
 * density), validation, release, and the canonical row-by-row builder that
 * every mask constructor (patterns, algebra, conversions) goes through. */
#include "mask_impl.h"
#include "parallel.h"

#include <stdatomic.h>
#include <string.h>

sl__mgeom sl__mgeom_make(int64_t n_q, int64_t n_k, int bq, int bk)
{
    return (sl__mgeom){n_q, n_k, n_k - n_q, bq, bk, (n_q + bq - 1) / bq, (n_k + bk - 1) / bk};
}

sl_status sl__mask_check_geometry(sl_ctx *ctx, const char *fn, int64_t n_q, int64_t n_k, int bq, int bk)
{
    if (n_q < 0 || n_k < 0 || n_q > n_k)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected 0 <= n_q <= n_k, found n_q = %lld, n_k = %lld", fn,
                           (long long)n_q, (long long)n_k);
    if (bq < 1 || bk < 1 || bq > 4096 || bk > 4096)
        return sl_ctx_fail(ctx, SL_EARG, "%s: block sizes must be in [1, 4096], found bq = %d, bk = %d", fn, bq, bk);
    /* Materialising visits every (query block, key block) pair: bound their
     * number (2^34, minutes of work at most) rather than run for days. */
    int64_t n_qb = n_q / bq, n_kb = n_k / bk; /* one less than the block counts: no overflow at INT64_MAX */
    if (n_kb >= INT32_MAX / 2 || n_qb >= INT32_MAX / 2 || n_qb >= ((int64_t)1 << 34) / (n_kb + 1))
        return sl_ctx_fail(ctx, SL_EARG, "%s: n_q = %lld, n_k = %lld in blocks of %d x %d make too many block pairs (at most 2^34)",
                           fn, (long long)n_q, (long long)n_k, bq, bk);
    return SL_OK;
}

sl_status sl__mask_alloc(sl_ctx *ctx, sl_mask *m, int64_t nnz, int64_t n_part)
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

/* ---- queries ---------------------------------------------------------------------------- */

/* The entry of key block c in block row r of head h, or -1. */
static int32_t find_entry(const sl_mask *m, int h, int64_t r, int64_t c)
{
    const int32_t *rp = sl__mask_rows(m, h), *col = m->col_idx.data;
    int32_t lo = rp[r], hi = rp[r + 1];
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (col[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < rp[r + 1] && col[lo] == c ? lo : -1;
}

int sl_mask_get(const sl_mask *m, int head, int64_t row, int64_t key)
{
    if (head < 0 || row < 0 || key < 0 || row >= m->n_q || key >= m->n_k || (m->n_heads > 1 && head >= m->n_heads))
        return 0;
    int64_t r = row / m->bq, c = key / m->bk;
    int32_t e = find_entry(m, head, r, c);
    if (e < 0)
        return 0;
    int32_t p = ((const int32_t *)m->part.data)[e];
    if (p < 0)
        return 1;
    return sl__mask_part_bits(m, p)[(row - r * m->bq) * m->bk + (key - c * m->bk)] != 0;
}

void sl__mask_row_keys(const sl_mask *m, int h, int64_t row, uint8_t *keep)
{
    sl__mgeom g = sl__mgeom_of(m);
    int64_t r = row / m->bq, a = row - r * m->bq;
    const int32_t *rp = sl__mask_rows(m, h), *col = m->col_idx.data, *part = m->part.data;
    for (int32_t e = rp[r]; e < rp[r + 1]; e++) {
        int64_t j0 = (int64_t)col[e] * m->bk, cols = sl__mg_cols(&g, col[e]);
        if (part[e] < 0) {
            memset(keep + j0, 1, (size_t)cols);
            continue;
        }
        const uint8_t *b = sl__mask_part_bits(m, part[e]) + a * m->bk;
        for (int64_t x = 0; x < cols; x++)
            keep[j0 + x] |= b[x] != 0;
    }
}

int64_t sl_mask_kept(const sl_mask *m, int head)
{
    if (head < 0 || (m->n_heads > 1 && head >= m->n_heads) || !m->row_ptr.buf)
        return 0;
    const int32_t *rp = sl__mask_rows(m, head), *col = m->col_idx.data, *part = m->part.data;
    sl__mgeom g = sl__mgeom_of(m);
    size_t blk = (size_t)m->bq * (size_t)m->bk;
    int64_t kept = 0;
    for (int64_t r = 0; r < m->n_qb; r++)
        for (int32_t e = rp[r]; e < rp[r + 1]; e++) {
            if (part[e] < 0) {
                kept += sl__mg_rows(&g, r) * sl__mg_cols(&g, col[e]);
                continue;
            }
            const uint8_t *bits = sl__mask_part_bits(m, part[e]);
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
    if (m->n_heads < 1 || m->bq < 1 || m->bk < 1 || m->n_q < 0 || m->n_k < m->n_q ||
        m->n_qb != (m->n_q + m->bq - 1) / m->bq || m->n_kb != (m->n_k + m->bk - 1) / m->bk)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: inconsistent sizes (%d heads, n_q %lld, n_k %lld, blocks %dx%d, %lld x %lld)",
                           fn, m->n_heads, (long long)m->n_q, (long long)m->n_k, m->bq, m->bk, (long long)m->n_qb,
                           (long long)m->n_kb);
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

/* ---- the builder ------------------------------------------------------------------------ */

/* Two 64-bit hashes (FNV-1a style and a multiply-rotate one) of the clipped
 * bits of a block, eight bytes per step (a byte per step made the hash a
 * multiply-latency chain per bit: 15 % of a flexprefill estimate at n = 8192
 * went here; issue 20, session 3). Only equality within one build matters:
 * the count and the fill pass hash alike and the fill pass compares bits. */
static void block_hash(const uint8_t *bits, int64_t rows, int64_t cols, int64_t bk, uint64_t out[2])
{
    uint64_t a = 1469598103934665603ull, b = 0x9e3779b97f4a7c15ull ^ (uint64_t)cols;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *p = bits + r * bk;
        int64_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            uint64_t w;
            memcpy(&w, p + j, sizeof w);
            a = (a ^ w) * 1099511628211ull;
            b = (b ^ w) * 0xff51afd7ed558ccdull;
            b = b << 29 | b >> 35;
        }
        uint64_t w = (uint64_t)(r + 1) << 56; /* the tail, and the row break */
        for (int64_t t = 0; j < cols; j++, t++)
            w |= (uint64_t)p[j] << (8 * t);
        a = (a ^ w) * 1099511628211ull;
        b = (b ^ w) * 0xff51afd7ed558ccdull;
        b = b << 29 | b >> 35;
    }
    out[0] = a;
    out[1] = b;
}

/* The part of an earlier partial block of this row with these bits, or -1. */
static int64_t recent_part(sl__mb_sink *s, const uint8_t *bits, int64_t rows, int64_t cols, const uint64_t h[2])
{
    for (int i = 0; i < s->n_recent && i < SL__MB_RECENT; i++) {
        if (s->recent_hash[i][0] != h[0] || s->recent_hash[i][1] != h[1])
            continue;
        if (s->fill) {
            const uint8_t *old = s->bits + (size_t)s->recent_part[i] * (size_t)s->g->bq * (size_t)s->g->bk;
            for (int64_t a = 0; a < rows; a++)
                if (memcmp(old + a * s->g->bk, bits + a * s->g->bk, (size_t)cols) != 0) {
                    s->bad = 1; /* a hash collision: the count pass shared what differs */
                    return -1;
                }
        }
        return s->recent_part[i];
    }
    return -1;
}

/* Pairs kept in the clipped rows × cols of a block (bytes 0 / 1), eight at a
 * time: per row at most cols / 8 words are added, so a byte lane stays below
 * 256 while cols < 2048 (wider rows fall back to bytes); the eight lanes are
 * then added as four 16-bit lanes. */
static int64_t block_kept(const uint8_t *bits, int64_t rows, int64_t cols, int64_t bk)
{
    const uint64_t lo = 0x00ff00ff00ff00ffull;
    int64_t kept = 0;
    for (int64_t a = 0; a < rows; a++) {
        const uint8_t *row = bits + a * bk;
        int64_t b = 0;
        if (cols < 2048) {
            uint64_t acc = 0;
            for (; b + 8 <= cols; b += 8) {
                uint64_t w;
                memcpy(&w, row + b, sizeof w);
                acc += w;
            }
            uint64_t t = (acc & lo) + ((acc >> 8) & lo);
            kept += (int64_t)((t * 0x0001000100010001ull) >> 48);
        }
        int64_t x = 0;
        for (; b < cols; b++)
            x += row[b];
        kept += x;
    }
    return kept;
}

void sl__mb_summary(const sl__mb_sink *s, int64_t c, const uint8_t *bits, int64_t *kept, uint64_t h[2])
{
    const sl__mgeom *g = s->g;
    int64_t rows = sl__mg_rows(g, s->r), cols = sl__mg_cols(g, c);
    *kept = block_kept(bits, rows, cols, g->bk);
    block_hash(bits, rows, cols, g->bk, h);
}

/* The common tail: cls FULL, or PARTIAL with its hash h. */
static void emit_block(sl__mb_sink *s, int64_t c, int cls, const uint8_t *bits, const uint64_t *h)
{
    if (cls == SL__BLK_FULL) { /* the common case, on its own (no clipping, hash or bits) */
        if (s->fill && s->nnz < s->nnz_end) {
            s->col[s->nnz] = (int32_t)c;
            s->part[s->nnz] = -1;
        }
        s->nnz++;
        return;
    }
    const sl__mgeom *g = s->g;
    int64_t rows = sl__mg_rows(g, s->r), cols = sl__mg_cols(g, c);
    int64_t shared = -1;
    if (cls == SL__BLK_PARTIAL) {
        shared = recent_part(s, bits, rows, cols, h);
        if (shared < 0) {
            int slot = s->n_recent % SL__MB_RECENT;
            s->recent_hash[slot][0] = h[0];
            s->recent_hash[slot][1] = h[1];
            s->recent_part[slot] = s->n_part;
            s->n_recent++;
        }
    }
    /* A producer that emits more in the fill pass than it counted would
     * write into the next row: the builder reports it (a bug, not a crash). */
    if (s->fill && s->nnz < s->nnz_end && (cls == SL__BLK_FULL || shared >= 0 || s->n_part < s->part_end)) {
        s->col[s->nnz] = (int32_t)c;
        if (cls == SL__BLK_FULL)
            s->part[s->nnz] = -1;
        else if (shared >= 0)
            s->part[s->nnz] = (int32_t)shared;
        else {
            s->part[s->nnz] = (int32_t)s->n_part;
            uint8_t *dst = s->bits + (size_t)s->n_part * (size_t)g->bq * (size_t)g->bk;
            for (int64_t a = 0; a < g->bq; a++) {
                uint8_t *d = dst + a * g->bk;
                if (a < rows) {
                    memcpy(d, bits + a * g->bk, (size_t)cols);
                    memset(d + cols, 0, (size_t)(g->bk - cols));
                } else
                    memset(d, 0, (size_t)g->bk);
            }
        }
    }
    s->nnz++;
    s->n_part += cls == SL__BLK_PARTIAL && shared < 0;
}

void sl__mb_emit_full_run(sl__mb_sink *s, const uint8_t *keep, int64_t stride, int64_t c_end)
{
    if (!s->fill) {
        int64_t n = 0;
        for (int64_t c = 0; c < c_end; c++)
            n += keep[c * stride] != 0;
        s->nnz += n;
        return;
    }
    for (int64_t c = 0; c < c_end; c++)
        if (keep[c * stride]) {
            if (s->nnz < s->nnz_end) {
                s->col[s->nnz] = (int32_t)c;
                s->part[s->nnz] = -1;
            }
            s->nnz++;
        }
}

void sl__mb_emit_known(sl__mb_sink *s, int64_t c, const uint8_t *bits, int64_t kept, const uint64_t h[2])
{
    const sl__mgeom *g = s->g;
    int64_t rows = sl__mg_rows(g, s->r), cols = sl__mg_cols(g, c);
    if (kept == 0)
        return;
    if (kept == rows * cols)
        emit_block(s, c, SL__BLK_FULL, bits, NULL);
    else
        emit_block(s, c, SL__BLK_PARTIAL, bits, h);
}

void sl__mb_emit(sl__mb_sink *s, int64_t c, int cls, const uint8_t *bits)
{
    if (cls == SL__BLK_EMPTY)
        return;
    if (cls == SL__BLK_FULL) {
        emit_block(s, c, SL__BLK_FULL, bits, NULL);
        return;
    }
    int64_t kept;
    uint64_t h[2];
    sl__mb_summary(s, c, bits, &kept, h);
    sl__mb_emit_known(s, c, bits, kept, h);
}

typedef struct build_job {
    const sl__mgeom *g;
    sl__mb_row_fn row;
    void *ud;
    uint8_t *scratch;
    size_t sb;
    int64_t *cnt; /* per row: nnz and n_part (count pass), then their starts */
    sl_mask *out;
    int fill;
    atomic_int bad;
} build_job;

static void build_one(int64_t i, void *ud, int thread)
{
    build_job *j = ud;
    int h = (int)(i / j->g->n_qb);
    int64_t r = i % j->g->n_qb;
    sl__mb_sink s = {.g = j->g, .fill = j->fill, .r = r};
    if (j->fill) {
        s.nnz = j->cnt[2 * i];
        s.n_part = j->cnt[2 * i + 1];
        s.col = j->out->col_idx.data;
        s.part = j->out->part.data;
        s.bits = j->out->bits.data;
        s.nnz_end = j->cnt[2 * i + 2];
        s.part_end = j->cnt[2 * i + 3];
    }
    j->row(j->ud, j->scratch + (size_t)thread * j->sb, h, r, &s);
    if (!j->fill) {
        j->cnt[2 * i] = s.nnz;
        j->cnt[2 * i + 1] = s.n_part;
    } else if (s.nnz != j->cnt[2 * i + 2] || s.n_part != j->cnt[2 * i + 3] || s.bad)
        atomic_store(&j->bad, 1);
}

sl_status sl__mask_build(sl_ctx *ctx, const char *fn, int n_heads, const sl__mgeom *g, sl__mb_row_fn row, void *ud,
                         size_t scratch_bytes, sl_mask *out)
{
    memset(out, 0, sizeof *out);
    int64_t n_rows = (int64_t)n_heads * g->n_qb;
    size_t sb = (scratch_bytes + 63) / 64 * 64;
    int threads = sl_ctx_threads(ctx);
    if (n_rows * (g->n_kb + 1) < 2048)
        threads = 1;
    if (sb > 0 && sb * (size_t)threads > ((size_t)256 << 20))
        threads = (int)(((size_t)256 << 20) / sb);
    if (threads < 1)
        threads = 1;
    if (threads > n_rows)
        threads = n_rows > 0 ? (int)n_rows : 1;
    size_t cnt_bytes = (size_t)(2 * n_rows + 2) * sizeof(int64_t), scr_bytes = sb * (size_t)threads + 64;
    int64_t *cnt = sl_ctx_alloc(ctx, cnt_bytes);
    if (!cnt)
        return SL_ENOMEM;
    uint8_t *scr_raw = scr_bytes ? sl_ctx_alloc(ctx, scr_bytes) : NULL;
    if (!scr_raw) {
        sl_ctx_dealloc(ctx, cnt, cnt_bytes);
        return SL_ENOMEM;
    }
    uint8_t *scr = scr_raw + (64 - ((uintptr_t)scr_raw & 63)) % 64;
    for (int t = 0; sb > 0 && t < threads; t++) /* a producer's memo header (from_blocks) starts invalid */
        memset(scr + (size_t)t * sb, 0, 64);
    build_job job = {.g = g, .row = row, .ud = ud, .scratch = scr, .sb = sb, .cnt = cnt};
    atomic_init(&job.bad, 0);
    sl_status s = sl__parallel_for(ctx, n_rows, threads, build_one, &job);
    int64_t nnz = 0, n_part = 0;
    if (!s) {
        for (int64_t i = 0; i < n_rows; i++) {
            int64_t a = cnt[2 * i], b = cnt[2 * i + 1];
            cnt[2 * i] = nnz;
            cnt[2 * i + 1] = n_part;
            nnz += a;
            n_part += b;
        }
        cnt[2 * n_rows] = nnz;
        cnt[2 * n_rows + 1] = n_part;
        if (nnz > INT32_MAX || n_part > INT32_MAX)
            s = sl_ctx_fail(ctx, SL_EARG, "%s: %lld blocks exceed the i32 index", fn, (long long)nnz);
    }
    if (!s) {
        *out = (sl_mask){.n_heads = n_heads, .n_q = g->n_q, .n_k = g->n_k, .bq = g->bq, .bk = g->bk,
                         .n_qb = g->n_qb, .n_kb = g->n_kb};
        s = sl__mask_alloc(ctx, out, nnz, n_part);
    }
    if (!s) {
        int32_t *rp = out->row_ptr.data;
        for (int h = 0; h < n_heads; h++) {
            for (int64_t r = 0; r < g->n_qb; r++)
                rp[h * (g->n_qb + 1) + r] = (int32_t)cnt[2 * (h * g->n_qb + r)];
            rp[h * (g->n_qb + 1) + g->n_qb] = (int32_t)cnt[2 * ((h + 1) * g->n_qb)];
        }
        job.fill = 1;
        job.out = out;
        s = sl__parallel_for(ctx, n_rows, threads, build_one, &job);
        if (!s && atomic_load(&job.bad))
            s = sl_ctx_fail(ctx, SL_EINTERNAL, "%s: a mask row came out differently on its second pass", fn);
        if (s)
            sl_mask_release(out);
    }
    if (s)
        memset(out, 0, sizeof *out);
    sl_ctx_dealloc(ctx, scr_raw, scr_bytes);
    sl_ctx_dealloc(ctx, cnt, cnt_bytes);
    return s;
}

size_t sl__mb_slots_bytes(const sl__mgeom *g)
{
    return (size_t)g->n_kb * ((size_t)g->bq * (size_t)g->bk + 1) + 16;
}

sl__mb_slots sl__mb_slots_at(const sl__mgeom *g, void *scratch)
{
    size_t blk = (size_t)g->bq * (size_t)g->bk;
    sl__mb_slots s = {(uint8_t *)scratch, (uint8_t *)scratch + (size_t)g->n_kb * blk, g->n_kb, blk};
    memset(s.state, 0, (size_t)g->n_kb);
    return s;
}

void sl__mb_slots_flush(sl__mb_slots *s, sl__mb_sink *sink)
{
    for (int64_t c = 0; c < s->n_kb; c++) {
        if (s->state[c] == 0)
            continue;
        sl__mb_emit(sink, c, s->state[c] == 2 ? SL__BLK_FULL : SL__BLK_PARTIAL, s->bits + (size_t)c * s->blk);
        s->state[c] = 0;
    }
}
