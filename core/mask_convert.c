/* mask_convert.c — conversions between the mask forms: block → index lists
 * (per row or per query block, the inputs of attn.token_sparse), index →
 * block with token bits, block → dense bits and dense bits → block, and
 * the masks of selections (issue 4): kept blocks, kept columns as index
 * lists, kept diagonals (exact, or widened to tiles as MInference executes). */
#include "mask_impl.h"
#include "mask_lists.h"
#include "parallel.h"

#include <stdlib.h>
#include <string.h>

/* ---- block -> index --------------------------------------------------------------------------- */

typedef struct idx_job {
    const sl_mask *m;
    int64_t b, n_entries;
    uint8_t *scratch;     /* per thread: keep[n_k] then flag[n_kb], both kept zero between entries */
    size_t sb;
    int64_t *cnt;         /* per (head, entry): count, then start */
    int32_t *col;         /* fill pass */
} idx_job;

static void idx_one(int64_t i, void *ud, int thread)
{
    idx_job *J = ud;
    const sl_mask *m = J->m;
    int h = (int)(i / J->n_entries);
    int64_t e = i % J->n_entries, r0 = e * J->b, r1 = r0 + J->b < m->n_q ? r0 + J->b : m->n_q;
    uint8_t *keep = J->scratch + (size_t)thread * J->sb, *flag = keep + m->n_k;
    const int32_t *rp = sl__mask_rows(m, h), *col = m->col_idx.data;
    for (int64_t row = r0; row < r1; row++) {
        int64_t r = row / m->bq;
        sl__mask_row_keys(m, h, row, keep);
        for (int32_t x = rp[r]; x < rp[r + 1]; x++)
            flag[col[x]] = 1;
    }
    int64_t n = 0, out = J->col ? J->cnt[i] : 0;
    for (int64_t c = 0; c < m->n_kb; c++) {
        if (!flag[c])
            continue;
        flag[c] = 0;
        int64_t j1 = (c + 1) * m->bk < m->n_k ? (c + 1) * m->bk : m->n_k;
        for (int64_t j = c * m->bk; j < j1; j++)
            if (keep[j]) {
                keep[j] = 0;
                if (J->col)
                    J->col[out + n] = (int32_t)j;
                n++;
            }
    }
    if (!J->col)
        J->cnt[i] = n;
}

sl_status sl_mask_to_index(sl_ctx *ctx, const sl_mask *m, int64_t rows_per_entry, sl_mask_index *out)
{
    const char *fn = "mask to_index";
    memset(out, 0, sizeof *out);
    if (rows_per_entry < 1 || rows_per_entry > (INT64_C(1) << 40))
        return sl_ctx_fail(ctx, SL_EARG, "%s: rows_per_entry must be >= 1, found %lld", fn, (long long)rows_per_entry);
    int64_t n_entries = (m->n_q + rows_per_entry - 1) / rows_per_entry, n_rows = m->n_heads * n_entries;
    int threads = sl_ctx_threads(ctx);
    if (m->n_q * (m->n_kb + 1) * m->n_heads < 4096)
        threads = 1;
    if (threads > n_rows)
        threads = n_rows > 0 ? (int)n_rows : 1;
    size_t sb = ((size_t)m->n_k + (size_t)m->n_kb + 63) / 64 * 64, scr_bytes = sb * (size_t)threads + 1;
    size_t cnt_bytes = (size_t)(n_rows + 1) * sizeof(int64_t);
    uint8_t *scr = sl_ctx_alloc(ctx, scr_bytes);
    int64_t *cnt = sl_ctx_alloc(ctx, cnt_bytes);
    sl_status s = scr && cnt ? SL_OK : SL_ENOMEM;
    if (!s) {
        memset(scr, 0, scr_bytes);
        idx_job job = {m, rows_per_entry, n_entries, scr, sb, cnt, NULL};
        s = sl__parallel_for(ctx, n_rows, threads, idx_one, &job);
        int64_t nnz = 0;
        for (int64_t i = 0; !s && i < n_rows; i++) {
            int64_t c = cnt[i];
            cnt[i] = nnz;
            nnz += c;
        }
        cnt[n_rows] = nnz;
        if (!s && nnz > INT32_MAX)
            s = sl_ctx_fail(ctx, SL_EARG, "%s: %lld indices exceed the i32 index", fn, (long long)nnz);
        int64_t rs[2] = {m->n_heads, n_entries + 1}, ns[1] = {nnz};
        if (!s && !(s = sl_tensor_new(ctx, SL_I32, 2, rs, &out->row_ptr)))
            s = sl_tensor_new(ctx, SL_I32, 1, ns, &out->col);
        if (!s) {
            int32_t *rp = out->row_ptr.data;
            for (int h = 0; h < m->n_heads; h++)
                for (int64_t e = 0; e <= n_entries; e++)
                    rp[h * (n_entries + 1) + e] = (int32_t)cnt[h * n_entries + e];
            job.col = out->col.data;
            s = sl__parallel_for(ctx, n_rows, threads, idx_one, &job);
        }
        if (!s) {
            out->n_heads = m->n_heads;
            out->n_q = m->n_q;
            out->n_k = m->n_k;
            out->rows_per_entry = rows_per_entry;
            out->n_entries = n_entries;
        } else
            sl_mask_index_release(out);
    }
    if (scr)
        sl_ctx_dealloc(ctx, scr, scr_bytes);
    if (cnt)
        sl_ctx_dealloc(ctx, cnt, cnt_bytes);
    return s;
}

/* ---- index -> block ----------------------------------------------------------------------------- */

sl_status sl_mask_index_validate(sl_ctx *ctx, const sl_mask_index *x)
{
    const char *fn = "mask index";
    if (x->n_heads < 1 || x->n_q < 0 || x->n_k < 0 || x->rows_per_entry < 1 ||
        x->n_entries != (x->n_q + x->rows_per_entry - 1) / x->rows_per_entry)
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "%s: inconsistent sizes (%d heads, n_q %lld, n_k %lld, %lld rows per entry, %lld entries)", fn,
                           x->n_heads, (long long)x->n_q, (long long)x->n_k, (long long)x->rows_per_entry,
                           (long long)x->n_entries);
    if (x->row_ptr.dtype != SL_I32 || x->row_ptr.ndim != 2 || x->row_ptr.shape[0] != x->n_heads ||
        x->row_ptr.shape[1] != x->n_entries + 1 || !sl_tensor_is_contiguous(&x->row_ptr))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: row_ptr must be contiguous i32 [%d, %lld]", fn, x->n_heads,
                           (long long)(x->n_entries + 1));
    if (x->col.dtype != SL_I32 || x->col.ndim != 1 || !sl_tensor_is_contiguous(&x->col))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: col must be a contiguous i32 vector", fn);
    int64_t nnz = x->col.shape[0], prev = 0;
    const int32_t *rp = x->row_ptr.data, *col = x->col.data;
    for (int h = 0; h < x->n_heads; h++) {
        const int32_t *hr = rp + h * (x->n_entries + 1);
        if (hr[0] != prev)
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: head %d starts at %d, expected %lld", fn, h, hr[0], (long long)prev);
        for (int64_t e = 0; e < x->n_entries; e++) {
            if (hr[e + 1] < hr[e] || hr[e + 1] > nnz)
                return sl_ctx_fail(ctx, SL_EFORMAT, "%s: row_ptr of head %d, entry %lld is not monotone within [0, %lld]",
                                   fn, h, (long long)e, (long long)nnz);
            for (int32_t i = hr[e]; i < hr[e + 1]; i++)
                if (col[i] < 0 || col[i] >= x->n_k || (i > hr[e] && col[i] <= col[i - 1]))
                    return sl_ctx_fail(ctx, SL_EFORMAT,
                                       "%s: head %d, entry %lld: keys must be sorted, unique and in [0, %lld)", fn, h,
                                       (long long)e, (long long)x->n_k);
        }
        prev = hr[x->n_entries];
    }
    if (prev != nnz)
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: row_ptr ends at %lld but col has %lld entries", fn, (long long)prev,
                           (long long)nnz);
    return SL_OK;
}

void sl_mask_index_release(sl_mask_index *x)
{
    if (!x)
        return;
    sl_tensor_release(&x->row_ptr);
    sl_tensor_release(&x->col);
    memset(x, 0, sizeof *x);
}

typedef struct from_idx_job {
    const sl_mask_index *x;
    const sl__mgeom *g;
} from_idx_job;

static void from_idx_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const from_idx_job *J = ud;
    const sl__mgeom *g = J->g;
    sl__mb_slots sl = sl__mb_slots_at(g, scratch);
    const int32_t *rp = (const int32_t *)J->x->row_ptr.data + (int64_t)h * (J->x->n_entries + 1), *col = J->x->col.data;
    int64_t rows = sl__mg_rows(g, r);
    for (int64_t a = 0; a < rows; a++) {
        int64_t e = (r * g->bq + a) / J->x->rows_per_entry;
        for (int32_t i = rp[e]; i < rp[e + 1]; i++) {
            int64_t c = col[i] / g->bk;
            sl__mb_slot(&sl, c)[a * g->bk + (col[i] - c * g->bk)] = 1;
        }
    }
    sl__mb_slots_flush(&sl, sink);
}

sl_status sl_mask_from_index(sl_ctx *ctx, const sl_mask_index *x, int bq, int bk, sl_mask *out)
{
    const char *fn = "mask from_index";
    memset(out, 0, sizeof *out);
    sl_status s = sl_mask_index_validate(ctx, x);
    if (!s)
        s = sl__mask_check_geometry(ctx, fn, x->n_q, x->n_k, bq, bk);
    if (s)
        return s;
    sl__mgeom g = sl__mgeom_make(x->n_q, x->n_k, bq, bk);
    from_idx_job job = {x, &g};
    return sl__mask_build(ctx, fn, x->n_heads, &g, from_idx_row, &job, sl__mb_slots_bytes(&g), out);
}

/* ---- dense bits ------------------------------------------------------------------------------- */

#define MAX_BITS (INT64_C(1) << 28)

sl_status sl_mask_to_bits(sl_ctx *ctx, const sl_mask *m, sl_tensor *out)
{
    memset(out, 0, sizeof *out);
    if (m->n_q > 0 && m->n_k > 0 && (double)m->n_heads * (double)m->n_q * (double)m->n_k > (double)MAX_BITS)
        return sl_ctx_fail(ctx, SL_EARG, "mask to_bits: %d x %lld x %lld bits exceed 2^28 (dense bits are for small sizes)",
                           m->n_heads, (long long)m->n_q, (long long)m->n_k);
    int64_t shape[3] = {m->n_heads, m->n_q, m->n_k};
    sl_status s = sl_tensor_zeros(ctx, SL_U8, 3, shape, out);
    if (s)
        return s;
    uint8_t *d = out->data;
    for (int h = 0; h < m->n_heads; h++)
        for (int64_t row = 0; row < m->n_q; row++)
            sl__mask_row_keys(m, h, row, d + ((size_t)h * (size_t)m->n_q + (size_t)row) * (size_t)m->n_k);
    return SL_OK;
}

typedef struct from_bits_job {
    const uint8_t *data;
    int64_t st[3];   /* head, row, key strides in elements */
    const sl__mgeom *g;
} from_bits_job;

static void from_bits_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const from_bits_job *J = ud;
    const sl__mgeom *g = J->g;
    sl__mb_slots sl = sl__mb_slots_at(g, scratch);
    int64_t rows = sl__mg_rows(g, r);
    for (int64_t a = 0; a < rows; a++) {
        const uint8_t *src = J->data + h * J->st[0] + (r * g->bq + a) * J->st[1];
        for (int64_t c = 0; c < g->n_kb; c++) {
            int64_t cols = sl__mg_cols(g, c);
            uint8_t *dst = NULL;
            for (int64_t x = 0; x < cols; x++)
                if (src[(c * g->bk + x) * J->st[2]]) {
                    if (!dst)
                        dst = sl__mb_slot(&sl, c) + a * g->bk;
                    dst[x] = 1;
                }
        }
    }
    sl__mb_slots_flush(&sl, sink);
}

sl_status sl_mask_from_bits(sl_ctx *ctx, const sl_tensor *bits, int bq, int bk, sl_mask *out)
{
    const char *fn = "mask from_bits";
    memset(out, 0, sizeof *out);
    if (!bits->buf || bits->dtype != SL_U8 || (bits->ndim != 2 && bits->ndim != 3))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected u8 [H, n_q, n_k] or [n_q, n_k] bits, found %s %dD", fn,
                           bits->buf ? sl_dtype_name(bits->dtype) : "no tensor", bits->ndim);
    int three = bits->ndim == 3;
    int64_t heads = three ? bits->shape[0] : 1, n_q = bits->shape[three], n_k = bits->shape[three + 1];
    if (heads < 1 || heads > 65536)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %lld heads, expected 1..65536", fn, (long long)heads);
    sl_status s = sl__mask_check_geometry(ctx, fn, n_q, n_k, bq, bk);
    if (s)
        return s;
    sl__mgeom g = sl__mgeom_make(n_q, n_k, bq, bk);
    from_bits_job job = {bits->data, {three ? bits->stride[0] : 0, bits->stride[three], bits->stride[three + 1]}, &g};
    return sl__mask_build(ctx, fn, (int)heads, &g, from_bits_row, &job, sl__mb_slots_bytes(&g), out);
}

/* ---- masks from selections (issue 4) ---------------------------------------------------------- */

/* Token bits of key block c for query block r under the causal rule: pairs
 * (row a, key x) with key position <= query position, inside the clipped
 * area; returns the block's class. Row a keeps its first p0 + a - j0 + 1
 * keys (clipped to [0, cols]). */
static int causal_block(const sl__mgeom *g, int64_t r, int64_t c, uint8_t *bits)
{
    int64_t rows = sl__mg_rows(g, r), cols = sl__mg_cols(g, c);
    int64_t p0 = g->offset + r * g->bq, j0 = c * g->bk;
    if (j0 + cols - 1 <= p0)
        return SL__BLK_FULL;
    if (j0 > p0 + rows - 1)
        return SL__BLK_EMPTY;
    for (int64_t a = 0; a < g->bq; a++) {
        int64_t on = a < rows ? p0 + a - j0 + 1 : 0;
        on = on < 0 ? 0 : on > cols ? cols : on;
        memset(bits + a * g->bk, 1, (size_t)on);
        memset(bits + a * g->bk + on, 0, (size_t)(g->bk - on));
    }
    return SL__BLK_PARTIAL;
}

/* The causal tiles last made in a thread's scratch (issue 20, session 5):
 * its bits depend only on (p0 - j0, rows, cols), so the diagonal tiles of
 * every row and head with the same key reuse the bits, the kept count and
 * the hash (before: each tile rebuilt, counted and hashed in both passes —
 * 10.7 of 13 ms for 8 heads × 128 blocks of 64 at n = 8192). Session 5c:
 * CAUSAL_MEMO_SLOTS tiles, not one — with bq = 2·bk a row has two partial
 * tiles (p0 - j0 = 0 and -bk) that took turns evicting each other, so one
 * slot missed on every tile (sparge_attn's all-forced mask at n = 8192: 6.4
 * ms). The scratch starts with a header (n_used, next: the slot to evict,
 * round robin) that the builder zeroes once per build, then the slots, each
 * a 64-byte causal_memo and bq·bk bits. */
typedef struct causal_memo {
    int64_t delta, rows, cols, kept;
    uint64_t h[2];
} causal_memo;
typedef struct causal_memo_head {
    int32_t n_used, next;
} causal_memo_head;
#define CAUSAL_MEMO_BYTES 64 /* the header, and each slot's record in front of its bits (64-byte aligned) */
#define CAUSAL_MEMO_SLOTS 4
static size_t causal_memo_slot_bytes(int bq, int bk) /* a record and its bits, rounded to 64 bytes */
{
    return (CAUSAL_MEMO_BYTES + (size_t)bq * (size_t)bk + 63) / 64 * 64;
}

typedef struct from_blocks_job {
    const uint8_t *keep;
    const int32_t *list; /* the list form (issue 19): i32 [H, n_qb, len], NULL for a u8 keep */
    int64_t st[3];    /* head (0 when one head), query block, key block (list: entry) strides */
    int64_t len;      /* list form: entries per row */
    int causal;
    const sl__mgeom *g;
} from_blocks_job;

static void from_blocks_emit(const from_blocks_job *J, void *scratch, int64_t r, int64_t c, sl__mb_sink *sink)
{
    if (!J->causal) {
        sl__mb_emit(sink, c, SL__BLK_FULL, NULL);
        return;
    }
    const sl__mgeom *g = J->g;
    causal_memo_head *hd = scratch;
    size_t slot_bytes = causal_memo_slot_bytes(g->bq, g->bk);
    int64_t rows = sl__mg_rows(g, r), cols = sl__mg_cols(g, c);
    int64_t delta = g->offset + r * g->bq - c * g->bk; /* p0 - j0 */
    if (cols - 1 <= delta) { /* causal_block's classes, without touching the memo */
        sl__mb_emit(sink, c, SL__BLK_FULL, NULL);
        return;
    }
    if (0 > delta + rows - 1)
        return;
    causal_memo *m = NULL;
    uint8_t *bits = NULL;
    for (int i = 0; i < hd->n_used; i++) {
        uint8_t *at = (uint8_t *)scratch + CAUSAL_MEMO_BYTES + (size_t)i * slot_bytes;
        causal_memo *x = (causal_memo *)at;
        if (x->delta == delta && x->rows == rows && x->cols == cols) {
            m = x;
            bits = at + CAUSAL_MEMO_BYTES;
            break;
        }
    }
    if (!m) {
        int i = hd->n_used < CAUSAL_MEMO_SLOTS ? hd->n_used : hd->next;
        uint8_t *at = (uint8_t *)scratch + CAUSAL_MEMO_BYTES + (size_t)i * slot_bytes;
        m = (causal_memo *)at;
        bits = at + CAUSAL_MEMO_BYTES;
        if (hd->n_used < CAUSAL_MEMO_SLOTS)
            hd->n_used++;
        else
            hd->next = (hd->next + 1) % CAUSAL_MEMO_SLOTS;
        if (causal_block(g, r, c, bits) != SL__BLK_PARTIAL) { /* cannot happen: the tests above agree */
            m->rows = -1; /* matches no tile */
            return;
        }
        sl__mb_summary(sink, c, bits, &m->kept, m->h);
        m->delta = delta;
        m->rows = rows;
        m->cols = cols;
    }
    sl__mb_emit_known(sink, c, bits, m->kept, m->h);
}

static void from_blocks_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const from_blocks_job *J = ud;
    if (J->list) {
        const int32_t *row = J->list + h * J->st[0] + r * J->st[1];
        for (int64_t e = 0; e < J->len && row[e * J->st[2]] >= 0; e++)
            from_blocks_emit(J, scratch, r, row[e * J->st[2]], sink);
        return;
    }
    const uint8_t *row = J->keep + h * J->st[0] + r * J->st[1];
    const sl__mgeom *g = J->g;
    int64_t c = 0;
    if (J->causal) {
        /* Causally full key blocks are a prefix [0, c_full): the last key of
         * block c, min((c + 1) bk, n_k) - 1, grows with c. They go out in one
         * tight run (the keep's kept entries, no per-block class test). */
        int64_t p0 = g->offset + r * g->bq, c_full = p0 < 0 ? 0 : (p0 + 1) / g->bk;
        if (c_full < g->n_kb && p0 >= g->n_k - 1)
            c_full = g->n_kb; /* the ragged last block ends at or before p0 */
        c_full = c_full > g->n_kb ? g->n_kb : c_full;
        sl__mb_emit_full_run(sink, row, J->st[2], c_full);
        c = c_full;
    }
    for (; c < g->n_kb; c++)
        if (row[c * J->st[2]])
            from_blocks_emit(J, scratch, r, c, sink);
}

/* The list form's rule: per row, key blocks ascending (no repeats) in
 * [0, n_kb), then only -1. */
static sl_status check_block_lists(sl_ctx *ctx, const char *fn, const sl_tensor *t, int three, int64_t n_kb)
{
    int64_t heads = three ? t->shape[0] : 1, rows = t->shape[three], len = t->shape[three + 1];
    const int32_t *base = t->data;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t r = 0; r < rows; r++) {
            const int32_t *row = base + (three ? h * t->stride[0] : 0) + r * t->stride[three];
            int64_t prev = -1;
            int pad = 0;
            for (int64_t e = 0; e < len; e++) {
                int64_t c = row[e * t->stride[three + 1]];
                if (pad && c != -1)
                    return sl_ctx_fail(ctx, SL_EARG, "%s: lists: head %lld, query block %lld: entry %lld is %lld after -1 padding, expected -1",
                                       fn, (long long)h, (long long)r, (long long)e, (long long)c);
                if (c == -1) {
                    pad = 1;
                    continue;
                }
                if (c < 0 || c >= n_kb || c <= prev)
                    return sl_ctx_fail(ctx, SL_EARG,
                                       "%s: lists: head %lld, query block %lld: entry %lld is %lld, expected ascending key blocks in (%lld, %lld) or -1",
                                       fn, (long long)h, (long long)r, (long long)e, (long long)c, (long long)prev,
                                       (long long)n_kb);
                prev = c;
            }
        }
    return SL_OK;
}

sl_status sl_mask_from_blocks(sl_ctx *ctx, const sl_tensor *keep, int64_t n_q, int64_t n_k, int bq, int bk, int causal,
                              sl_mask *out)
{
    const char *fn = "mask from_blocks";
    memset(out, 0, sizeof *out);
    sl_status s = sl__mask_check_geometry(ctx, fn, n_q, n_k, bq, bk);
    if (s)
        return s;
    sl__mgeom g = sl__mgeom_make(n_q, n_k, bq, bk);
    if (!keep->buf || (keep->dtype != SL_U8 && keep->dtype != SL_I32) || (keep->ndim != 2 && keep->ndim != 3))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected u8 keep [H, %lld, %lld] or [%lld, %lld] (or i32 lists [H, %lld, L]), found %s %dD", fn,
                           (long long)g.n_qb, (long long)g.n_kb, (long long)g.n_qb, (long long)g.n_kb, (long long)g.n_qb,
                           keep->buf ? sl_dtype_name(keep->dtype) : "no tensor", keep->ndim);
    int three = keep->ndim == 3, lists = keep->dtype == SL_I32;
    int64_t heads = three ? keep->shape[0] : 1;
    if (lists && keep->shape[three] != g.n_qb)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: lists have %lld query blocks, expected %lld for n_q = %lld in blocks of %d", fn,
                           (long long)keep->shape[three], (long long)g.n_qb, (long long)n_q, bq);
    if (!lists && (keep->shape[three] != g.n_qb || keep->shape[three + 1] != g.n_kb))
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "%s: keep has %lld x %lld blocks, expected %lld x %lld for n_q = %lld, n_k = %lld in blocks of %d x %d",
                           fn, (long long)keep->shape[three], (long long)keep->shape[three + 1], (long long)g.n_qb,
                           (long long)g.n_kb, (long long)n_q, (long long)n_k, bq, bk);
    if (heads < 1 || heads > 65536)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %lld heads, expected 1..65536", fn, (long long)heads);
    if (lists && (s = check_block_lists(ctx, fn, keep, three, g.n_kb)))
        return s;
    from_blocks_job job = {lists ? NULL : keep->data, lists ? keep->data : NULL,
                           {three ? keep->stride[0] : 0, keep->stride[three], keep->stride[three + 1]},
                           keep->shape[three + 1], causal, &g};
    _Static_assert(sizeof(causal_memo) <= CAUSAL_MEMO_BYTES && sizeof(causal_memo_head) <= CAUSAL_MEMO_BYTES,
                   "causal_memo outgrew its header");
    return sl__mask_build(ctx, fn, (int)heads, &g, from_blocks_row, &job,
                          CAUSAL_MEMO_BYTES + CAUSAL_MEMO_SLOTS * causal_memo_slot_bytes(bq, bk),
                          out);
}

static int cmp_i64_asc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Per head, the valid entries of a [H, n] or [n] i32 list (-1 = padding,
 * skipped) sorted ascending and unique: vals[h·n ..] holds cnt[h] of them.
 * Entries outside [-1, hi) are SL_EARG naming what. A u8 keep [H, hi] (a
 * selector's output) lists the positions it keeps. */
static sl_status sorted_lists(sl_ctx *ctx, const char *fn, const char *what, const sl_tensor *t, int64_t hi,
                              int64_t *heads, int64_t *n, int64_t **vals, int64_t **cnt, size_t *bytes)
{
    *vals = NULL;
    *cnt = NULL;
    int keep = t->buf && t->dtype == SL_U8;
    if (!t->buf || (t->dtype != SL_I32 && !keep) || (t->ndim != 1 && t->ndim != 2))
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected %s as i32 [H, n] or [n] (or a u8 keep [H, %lld]), found %s %dD",
                           fn, what, (long long)hi, t->buf ? sl_dtype_name(t->dtype) : "no tensor", t->ndim);
    int two = t->ndim == 2;
    *heads = two ? t->shape[0] : 1;
    *n = t->shape[two];
    if (keep && *n != hi)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: a u8 keep of %s must have %lld entries per head (one per position), found %lld",
                           fn, what, (long long)hi, (long long)*n);
    if (*heads < 1 || *heads > 65536)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %s has %lld heads, expected 1..65536", fn, what, (long long)*heads);
    *bytes = (size_t)(*heads * *n + *heads + 1) * sizeof(int64_t);
    int64_t *v = sl_ctx_alloc(ctx, *bytes);
    if (!v)
        return SL_ENOMEM;
    int64_t *c = v + *heads * *n;
    const int32_t *d = t->data;
    for (int64_t h = 0; h < *heads; h++) {
        int64_t m = 0, *vh = v + h * *n;
        for (int64_t i = 0; i < *n; i++) {
            int64_t at = (two ? h * t->stride[0] : 0) + i * t->stride[two];
            int64_t x = keep ? (((const uint8_t *)t->data)[at] ? i : -1) : d[at];
            if (x < -1 || x >= hi) {
                sl_ctx_dealloc(ctx, v, *bytes);
                return sl_ctx_fail(ctx, SL_EARG, "%s: %s[%lld, %lld] = %lld is outside [0, %lld) (-1 = padding)", fn,
                                   what, (long long)h, (long long)i, (long long)x, (long long)hi);
            }
            if (x >= 0)
                vh[m++] = x;
        }
        qsort(vh, (size_t)m, sizeof *vh, cmp_i64_asc);
        int64_t u = 0;
        for (int64_t i = 0; i < m; i++)
            if (u == 0 || vh[i] != vh[u - 1])
                vh[u++] = vh[i];
        c[h] = u;
    }
    *vals = v;
    *cnt = c;
    return SL_OK;
}

sl_status sl_mask_index_from_columns(sl_ctx *ctx, const sl_tensor *cols, int64_t n_q, int64_t n_k,
                                     int64_t rows_per_entry, int causal, sl_mask_index *out)
{
    const char *fn = "mask index_from_columns";
    memset(out, 0, sizeof *out);
    if (n_q < 0 || n_k < 0 || n_q > n_k || n_k > INT32_MAX)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected 0 <= n_q <= n_k < 2^31, found n_q = %lld, n_k = %lld", fn,
                           (long long)n_q, (long long)n_k);
    if (rows_per_entry < 1 || rows_per_entry > (INT64_C(1) << 40))
        return sl_ctx_fail(ctx, SL_EARG, "%s: rows_per_entry must be >= 1, found %lld", fn, (long long)rows_per_entry);
    int64_t heads, n, *vals, *cnt;
    size_t bytes;
    sl_status s = sorted_lists(ctx, fn, "cols", cols, n_k, &heads, &n, &vals, &cnt, &bytes);
    if (s)
        return s;
    int64_t n_e = (n_q + rows_per_entry - 1) / rows_per_entry, offset = n_k - n_q;
    /* Entry e keeps the columns up to its last row's position (causal = 1)
     * or its first row's (causal = 2, strict: every row of the entry may see
     * every listed key, as the executors apply no causal rule to lists): a
     * prefix of the sorted list. */
    int64_t back = causal == 2 ? rows_per_entry - 1 : 0;
    double nnz = 0;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t e = 0, i = 0; e < n_e; e++) {
            int64_t last = offset + (e + 1) * rows_per_entry - 1 - back;
            last = last < n_k - 1 ? last : n_k - 1;
            while (causal && i < cnt[h] && vals[h * n + i] <= last)
                i++;
            nnz += causal ? (double)i : (double)cnt[h];
        }
    if (nnz > INT32_MAX) {
        sl_ctx_dealloc(ctx, vals, bytes);
        return sl_ctx_fail(ctx, SL_EARG, "%s: %.0f indices exceed the i32 index", fn, nnz);
    }
    int64_t rs[2] = {heads, n_e + 1}, ns[1] = {(int64_t)nnz};
    if (!(s = sl_tensor_new(ctx, SL_I32, 2, rs, &out->row_ptr)) && !(s = sl_tensor_new(ctx, SL_I32, 1, ns, &out->col))) {
        int32_t *rp = out->row_ptr.data, *col = out->col.data, k = 0;
        for (int64_t h = 0; h < heads; h++) {
            for (int64_t e = 0, i = 0; e < n_e; e++) {
                int64_t last = offset + (e + 1) * rows_per_entry - 1 - back;
                while (i < cnt[h] && (!causal || vals[h * n + i] <= last))
                    i++;
                rp[h * (n_e + 1) + e] = k;
                for (int64_t x = 0; x < i; x++)
                    col[k++] = (int32_t)vals[h * n + x];
            }
            rp[h * (n_e + 1) + n_e] = k;
        }
        out->n_heads = (int)heads;
        out->n_q = n_q;
        out->n_k = n_k;
        out->rows_per_entry = rows_per_entry;
        out->n_entries = n_e;
    } else
        sl_mask_index_release(out);
    sl_ctx_dealloc(ctx, vals, bytes);
    return s;
}

/* MInference's convert_vertical_slash_indexes, slash part: for query block r
 * (block end E = offset + (r + 1)·bq in positions, not clipped, as the
 * reference pads), each offset o < E gives the key range ending at
 * max(E - o, bq), bq wide; taken by descending offset, a range ending more
 * than bq past the current one starts a new range, one ending within bq
 * extends the current range by bq. Each range [s, e) is executed as key
 * blocks of bk starting at s (the last may pass e). */
typedef struct slash_job {
    const int64_t *vals, *cnt;
    int64_t n;
    const sl__mgeom *g;
} slash_job;

static int64_t slash_ranges(const slash_job *J, int h, int64_t r, int64_t *iv)
{
    const sl__mgeom *g = J->g;
    const int64_t *v = J->vals + h * J->n;
    int64_t E = g->offset + (r + 1) * g->bq, n_iv = 0, rs = 0, re = 0, have = 0;
    for (int64_t i = J->cnt[h] - 1; i >= 0; i--) {
        int64_t o = v[i];
        if (o >= E)
            continue;
        int64_t e = E - o > g->bq ? E - o : g->bq;
        if (!have) {
            rs = e - g->bq, re = e, have = 1;
        } else if (e > re + g->bq) {
            iv[2 * n_iv] = rs, iv[2 * n_iv + 1] = re, n_iv++;
            rs = e - g->bq, re = e;
        } else if (e > re)
            re += g->bq;
    }
    if (have)
        iv[2 * n_iv] = rs, iv[2 * n_iv + 1] = re, n_iv++;
    /* executed extents: whole bk blocks from the range start; merge overlaps */
    int64_t m = 0;
    for (int64_t i = 0; i < n_iv; i++) {
        int64_t s = iv[2 * i], e = s + (iv[2 * i + 1] - s + g->bk - 1) / g->bk * g->bk;
        if (m > 0 && s <= iv[2 * m - 1]) {
            iv[2 * m - 1] = e > iv[2 * m - 1] ? e : iv[2 * m - 1];
        } else {
            iv[2 * m] = s, iv[2 * m + 1] = e, m++;
        }
    }
    return m;
}

static void slash_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const slash_job *J = ud;
    const sl__mgeom *g = J->g;
    uint8_t *bits = scratch;
    int64_t *iv = (int64_t *)((uint8_t *)scratch + ((size_t)g->bq * (size_t)g->bk + 63) / 64 * 64);
    int64_t n_iv = slash_ranges(J, h, r, iv), rows = sl__mg_rows(g, r), p0 = g->offset + r * g->bq;
    int64_t i = 0;
    for (int64_t c = 0; c < g->n_kb && i < n_iv; c++) {
        int64_t j0 = c * g->bk, j1 = j0 + sl__mg_cols(g, c); /* keys [j0, j1) */
        while (i < n_iv && iv[2 * i + 1] <= j0)
            i++;
        if (i >= n_iv || iv[2 * i] >= j1 || j0 > p0 + rows - 1)
            continue;
        if (iv[2 * i] <= j0 && iv[2 * i + 1] >= j1 && j1 - 1 <= p0) {
            sl__mb_emit(sink, c, SL__BLK_FULL, NULL);
            continue;
        }
        memset(bits, 0, (size_t)g->bq * (size_t)g->bk);
        for (int64_t k = i; k < n_iv && iv[2 * k] < j1; k++) {
            int64_t s = iv[2 * k] > j0 ? iv[2 * k] : j0, e = iv[2 * k + 1] < j1 ? iv[2 * k + 1] : j1;
            for (int64_t a = 0; a < rows; a++)
                for (int64_t j = s; j < e && j <= p0 + a; j++)
                    bits[a * g->bk + (j - j0)] = 1;
        }
        sl__mb_emit(sink, c, SL__BLK_PARTIAL, bits);
    }
}

sl_status sl_mask_from_slashes(sl_ctx *ctx, const sl_tensor *offsets, int64_t n_q, int64_t n_k, int bq, int bk,
                               int widen, sl_mask *out)
{
    const char *fn = "mask from_slashes";
    memset(out, 0, sizeof *out);
    sl_status s = sl__mask_check_geometry(ctx, fn, n_q, n_k, bq, bk);
    if (s)
        return s;
    int64_t heads, n, *vals, *cnt;
    size_t bytes;
    if ((s = sorted_lists(ctx, fn, "offsets", offsets, n_k > 0 ? n_k : 1, &heads, &n, &vals, &cnt, &bytes)))
        return s;
    sl__mgeom g = sl__mgeom_make(n_q, n_k, bq, bk);
    if (widen) {
        slash_job job = {vals, cnt, n, &g};
        size_t scr = ((size_t)bq * (size_t)bk + 63) / 64 * 64 + (size_t)(2 * n + 2) * sizeof(int64_t);
        s = sl__mask_build(ctx, fn, (int)heads, &g, slash_row, &job, scr, out);
    } else {
        /* the exact token rule is the slash pattern (width 1) with one list per head */
        int64_t *ptr = sl_ctx_alloc(ctx, (size_t)(heads + 1) * sizeof(int64_t));
        int64_t *flat = ptr ? sl_ctx_alloc(ctx, (size_t)(heads * n + 1) * sizeof(int64_t)) : NULL;
        if (!flat)
            s = SL_ENOMEM;
        else {
            int64_t k = 0;
            for (int64_t h = 0; h < heads; h++) {
                ptr[h] = k;
                for (int64_t i = 0; i < cnt[h]; i++)
                    flat[k++] = vals[h * n + i];
            }
            ptr[heads] = k;
            sl_pattern_term t = {.kind = SL_PAT_SLASH, .a = 1, .idx = flat, .n_idx = k, .idx_ptr = ptr,
                                 .n_lists = (int)heads};
            s = sl_mask_from_pattern_heads(ctx, &t, 1, (int)heads, n_q, n_k, bq, bk, out);
        }
        if (flat)
            sl_ctx_dealloc(ctx, flat, (size_t)(heads * n + 1) * sizeof(int64_t));
        if (ptr)
            sl_ctx_dealloc(ctx, ptr, (size_t)(heads + 1) * sizeof(int64_t));
    }
    sl_ctx_dealloc(ctx, vals, bytes);
    return s;
}

/* ---- shared with mask_vs.c (issue 20, session 3) ---- */
sl_status sl__mask_sorted_lists(sl_ctx *ctx, const char *fn, const char *what, const sl_tensor *t, int64_t hi,
                                int64_t *heads, int64_t *n, int64_t **vals, int64_t **cnt, size_t *bytes)
{
    return sorted_lists(ctx, fn, what, t, hi, heads, n, vals, cnt, bytes);
}

/* ---- keep -> block lists (issue 19: a selection's rows as lists, so that a
 * caller holding one row block of keep at a time keeps memory linear) ---- */
sl_status sl_mask_block_lists(sl_ctx *ctx, const sl_tensor *keep, int64_t len, sl_tensor *into, int64_t row0,
                              sl_tensor *out)
{
    const char *fn = "mask block_lists";
    if (out)
        memset(out, 0, sizeof *out);
    if (!keep->buf || keep->dtype != SL_U8 || keep->ndim != 3)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected u8 keep [H, R, C], found %s %dD", fn,
                           keep->buf ? sl_dtype_name(keep->dtype) : "no tensor", keep->ndim);
    if (len < 1 || len > INT32_MAX || keep->shape[2] > INT32_MAX)
        return sl_ctx_fail(ctx, SL_EARG, "%s: expected 1 <= L <= %d and C <= %d, found L = %lld, C = %lld", fn,
                           INT32_MAX, INT32_MAX, (long long)len, (long long)keep->shape[2]);
    int64_t heads = keep->shape[0], rows = keep->shape[1];
    sl_tensor fresh = {0}, *dst = into;
    if (into) {
        if (!into->buf || into->dtype != SL_I32 || into->ndim != 3 || into->shape[0] != heads ||
            into->shape[2] != len || row0 < 0 || row0 + rows > into->shape[1])
            return sl_ctx_fail(ctx, SL_ESHAPE,
                               "%s: expected i32 lists [%lld, >= %lld, %lld] to write rows %lld.. into, found %s %dD", fn,
                               (long long)heads, (long long)(row0 + rows), (long long)len, (long long)row0,
                               into->buf ? sl_dtype_name(into->dtype) : "no tensor", into->ndim);
    } else {
        int64_t shape[3] = {heads, rows, len};
        sl_status s = sl_tensor_new(ctx, SL_I32, 3, shape, &fresh);
        if (s)
            return s;
        dst = &fresh;
        row0 = 0;
    }
    const uint8_t *k = keep->data;
    int32_t *o = dst->data;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t *row = k + h * keep->stride[0] + r * keep->stride[1];
            int32_t *d = o + h * dst->stride[0] + (row0 + r) * dst->stride[1];
            int64_t e = 0;
            for (int64_t c = 0; c < keep->shape[2]; c++) {
                if (!row[c * keep->stride[2]])
                    continue;
                if (e == len) {
                    sl_tensor_release(&fresh);
                    return sl_ctx_fail(ctx, SL_EARG, "%s: head %lld, row %lld keeps more than L = %lld blocks", fn,
                                       (long long)h, (long long)r, (long long)len);
                }
                d[e++ * dst->stride[2]] = (int32_t)c;
            }
            for (; e < len; e++)
                d[e * dst->stride[2]] = -1;
        }
    if (out)
        *out = fresh;
    return SL_OK;
}
