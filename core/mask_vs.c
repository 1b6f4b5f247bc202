/* mask_vs.c — host-side pieces of the vertical-slash executed mask (issue 20,
 * session 3): what lua/sparselab/dynamic.lua computed in Lua loops when a
 * vertical-slash selection is widened to MInference's kernel (blocks +
 * gathered columns, attn.vs_mixed).
 *   sl_mask_columns_in_block: the pairs (i, j) of a listed column j inside
 *     row i's own query block (block start <= j <= i), as a block mask with
 *     token bits (the strict gathered lists leave them to the diagonal tile).
 *   sl_mask_index_overlap: the (row, listed key) pairs of index lists that a
 *     block mask already keeps (so the union's size counts them once).
 * Both read and write masks, which live on the host like every other mask
 * constructor (mask_convert.c); they are not backend ops. */
#include <string.h>

#include "mask_impl.h"
#include "mask_lists.h"

typedef struct inblock_job {
    const int64_t *vals, *cnt;
    int64_t n;
    const sl__mgeom *g;
} inblock_job;

/* First index of v[0..m) that is >= x (v ascending). */
static int64_t lower_bound(const int64_t *v, int64_t m, int64_t x)
{
    int64_t lo = 0, hi = m;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void inblock_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const inblock_job *J = ud;
    const sl__mgeom *g = J->g;
    uint8_t *bits = scratch;
    const int64_t *v = J->vals + h * J->n;
    int64_t m = J->cnt[h], rows = sl__mg_rows(g, r), p0 = r * g->bq, p1 = p0 + rows; /* positions [p0, p1) */
    int64_t i = lower_bound(v, m, p0);
    while (i < m && v[i] < p1) {
        int64_t c = v[i] / g->bk, j0 = c * g->bk, j1 = j0 + sl__mg_cols(g, c);
        memset(bits, 0, (size_t)g->bq * (size_t)g->bk);
        for (; i < m && v[i] < p1 && v[i] < j1; i++) {
            int64_t j = v[i];
            for (int64_t a = j - p0; a < rows; a++) /* rows at or after position j */
                bits[a * g->bk + (j - j0)] = 1;
        }
        sl__mb_emit(sink, c, SL__BLK_PARTIAL, bits);
    }
}

sl_status sl_mask_columns_in_block(sl_ctx *ctx, const sl_tensor *cols, int64_t n, int bq, int bk, sl_mask *out)
{
    const char *fn = "mask columns_in_block";
    memset(out, 0, sizeof *out);
    sl_status s = sl__mask_check_geometry(ctx, fn, n, n, bq, bk);
    if (s)
        return s;
    int64_t heads, w, *vals, *cnt;
    size_t bytes;
    if ((s = sl__mask_sorted_lists(ctx, fn, "cols", cols, n > 0 ? n : 1, &heads, &w, &vals, &cnt, &bytes)))
        return s;
    sl__mgeom g = sl__mgeom_make(n, n, bq, bk);
    inblock_job job = {vals, cnt, w, &g};
    s = sl__mask_build(ctx, fn, (int)heads, &g, inblock_row, &job, (size_t)bq * (size_t)bk, out);
    sl_ctx_dealloc(ctx, vals, bytes);
    return s;
}

sl_status sl_mask_index_overlap(sl_ctx *ctx, const sl_mask *m, const sl_mask_index *idx, int64_t *pairs)
{
    const char *fn = "mask index_overlap";
    *pairs = 0;
    sl_status s = sl_mask_index_validate(ctx, idx);
    if (s)
        return s;
    if (idx->n_q != m->n_q || idx->n_k != m->n_k || idx->rows_per_entry != m->bq)
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "%s: expected index lists of the mask's geometry (n_q %lld, n_k %lld, %d rows per entry), "
                           "found n_q %lld, n_k %lld, %lld rows per entry",
                           fn, (long long)m->n_q, (long long)m->n_k, m->bq, (long long)idx->n_q, (long long)idx->n_k,
                           (long long)idx->rows_per_entry);
    if (m->n_heads != 1 && m->n_heads < idx->n_heads)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: expected a mask of 1 or at least %d heads, found %d", fn, idx->n_heads,
                           m->n_heads);
    sl__mgeom g = sl__mgeom_of(m);
    size_t bytes = (size_t)(g.n_kb > 0 ? g.n_kb : 1) * sizeof(int32_t);
    int32_t *slot = sl_ctx_alloc(ctx, bytes); /* key block -> part (-1 full), -2 absent */
    if (!slot)
        return SL_ENOMEM;
    for (int64_t c = 0; c < g.n_kb; c++)
        slot[c] = -2;
    const int32_t *irp = idx->row_ptr.data, *icol = idx->col.data, *ci = m->col_idx.data, *pa = m->part.data;
    int64_t total = 0;
    for (int h = 0; h < idx->n_heads; h++) {
        const int32_t *brow = sl__mask_rows(m, h), *lrow = irp + (int64_t)h * (idx->n_entries + 1);
        for (int64_t r = 0; r < g.n_qb; r++) {
            int64_t rows = sl__mg_rows(&g, r);
            for (int32_t e = brow[r]; e < brow[r + 1]; e++)
                slot[ci[e]] = pa[e];
            for (int32_t e = lrow[r]; e < lrow[r + 1]; e++) {
                int64_t j = icol[e];
                int32_t pt = slot[j / g.bk];
                if (pt == -1)
                    total += rows;
                else if (pt >= 0) {
                    const uint8_t *b = sl__mask_part_bits(m, pt) + j % g.bk;
                    for (int64_t a = 0; a < rows; a++)
                        total += b[a * g.bk] != 0;
                }
            }
            for (int32_t e = brow[r]; e < brow[r + 1]; e++)
                slot[ci[e]] = -2;
        }
    }
    sl_ctx_dealloc(ctx, slot, bytes);
    *pairs = total;
    return SL_OK;
}
