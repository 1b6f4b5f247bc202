/* mask_convert.c — conversions between the mask forms: block → index lists
 * (per row or per query block, the inputs of attn.token_sparse), index →
 * block with token bits, block → dense bits and dense bits → block. */
#include "mask_impl.h"

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
