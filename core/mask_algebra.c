/* mask_algebra.c — algebra on materialised block masks: union, intersect,
 * difference (block-wise merges with head broadcasting), per-head assign,
 * permutation of token positions and its inverse, the causal test on
 * original positions, resize to other block sizes, token → block coarsening,
 * and the semantic-vs-executed alignment report. */
#include "mask_impl.h"

#include <string.h>

static sl_status check_pair(sl_ctx *ctx, const char *fn, const sl_mask *a, const sl_mask *b)
{
    if (a->n_q != b->n_q || a->n_k != b->n_k || a->bq != b->bq || a->bk != b->bk)
        return sl_ctx_fail(ctx, SL_ESHAPE,
                           "%s: sizes differ (n_q %lld/%lld, n_k %lld/%lld, blocks %dx%d/%dx%d); resize first", fn,
                           (long long)a->n_q, (long long)b->n_q, (long long)a->n_k, (long long)b->n_k, a->bq, a->bk,
                           b->bq, b->bk);
    if (a->n_heads != b->n_heads && a->n_heads != 1 && b->n_heads != 1)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %d and %d heads; expected equal counts or 1", fn, a->n_heads,
                           b->n_heads);
    return SL_OK;
}

/* ---- union, intersect, difference ------------------------------------------------------------ */

typedef enum { OP_UNION, OP_INTERSECT, OP_DIFFERENCE } set_op;

typedef struct set_job {
    const sl_mask *a, *b;
    const sl__mgeom *g;
    set_op op;
} set_job;

static void set_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const set_job *J = ud;
    const sl_mask *a = J->a, *b = J->b;
    const sl__mgeom *g = J->g;
    uint8_t *tmp = scratch;
    const int32_t *ra = sl__mask_rows(a, h), *rb = sl__mask_rows(b, h);
    const int32_t *ca = a->col_idx.data, *cb = b->col_idx.data, *pa = a->part.data, *pb = b->part.data;
    int64_t rows = sl__mg_rows(g, r);
    int32_t x = ra[r], y = rb[r];
    while (x < ra[r + 1] || y < rb[r + 1]) {
        int32_t cx = x < ra[r + 1] ? ca[x] : INT32_MAX, cy = y < rb[r + 1] ? cb[y] : INT32_MAX;
        int32_t c = cx < cy ? cx : cy;
        int32_t px = cx == c ? pa[x] : -2, py = cy == c ? pb[y] : -2; /* -2 absent, -1 full */
        x += cx == c;
        y += cy == c;
        const uint8_t *bx = px >= 0 ? sl__mask_part_bits(a, px) : NULL, *by = py >= 0 ? sl__mask_part_bits(b, py) : NULL;
        switch (J->op) {
        case OP_UNION:
            if (px == -1 || py == -1)
                sl__mb_emit(sink, c, SL__BLK_FULL, NULL);
            else if (!by || !bx)
                sl__mb_emit(sink, c, SL__BLK_PARTIAL, bx ? bx : by);
            else {
                for (int64_t i = 0; i < rows * g->bk; i++)
                    tmp[i] = bx[i] | by[i];
                sl__mb_emit(sink, c, SL__BLK_PARTIAL, tmp);
            }
            break;
        case OP_INTERSECT:
            if (px == -2 || py == -2)
                break;
            if (px == -1 && py == -1)
                sl__mb_emit(sink, c, SL__BLK_FULL, NULL);
            else if (px == -1 || py == -1)
                sl__mb_emit(sink, c, SL__BLK_PARTIAL, bx ? bx : by);
            else {
                for (int64_t i = 0; i < rows * g->bk; i++)
                    tmp[i] = bx[i] & by[i];
                sl__mb_emit(sink, c, SL__BLK_PARTIAL, tmp);
            }
            break;
        case OP_DIFFERENCE:
            if (px == -2 || py == -1)
                break;
            if (py == -2)
                sl__mb_emit(sink, c, px == -1 ? SL__BLK_FULL : SL__BLK_PARTIAL, bx);
            else {
                for (int64_t i = 0; i < rows * g->bk; i++)
                    tmp[i] = (uint8_t)((bx ? bx[i] : 1) & !by[i]);
                sl__mb_emit(sink, c, SL__BLK_PARTIAL, tmp);
            }
            break;
        }
    }
}

static sl_status set_op_run(sl_ctx *ctx, const char *fn, set_op op, const sl_mask *a, const sl_mask *b, sl_mask *out)
{
    memset(out, 0, sizeof *out);
    sl_status s = check_pair(ctx, fn, a, b);
    if (s)
        return s;
    sl__mgeom g = sl__mgeom_of(a);
    set_job job = {a, b, &g, op};
    int heads = a->n_heads > b->n_heads ? a->n_heads : b->n_heads;
    return sl__mask_build(ctx, fn, heads, &g, set_row, &job, (size_t)a->bq * (size_t)a->bk, out);
}

sl_status sl_mask_union(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, sl_mask *out)
{
    return set_op_run(ctx, "mask union", OP_UNION, a, b, out);
}

sl_status sl_mask_intersect(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, sl_mask *out)
{
    return set_op_run(ctx, "mask intersect", OP_INTERSECT, a, b, out);
}

sl_status sl_mask_difference(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, sl_mask *out)
{
    return set_op_run(ctx, "mask difference", OP_DIFFERENCE, a, b, out);
}

/* ---- assign ------------------------------------------------------------------------------------ */

sl_status sl_mask_assign(sl_ctx *ctx, const sl_mask *masks, int n, sl_mask *out)
{
    memset(out, 0, sizeof *out);
    if (n < 1 || !masks)
        return sl_ctx_fail(ctx, SL_EARG, "mask assign: expected at least one mask, found %d", n);
    int64_t heads = 0, nnz = 0, n_part = 0;
    for (int i = 0; i < n; i++) {
        sl_status s = check_pair(ctx, "mask assign", &masks[0], &masks[i]);
        if (s)
            return s;
        heads += masks[i].n_heads;
        nnz += masks[i].col_idx.shape[0];
        n_part += masks[i].bits.shape[0];
    }
    if (heads > 65536 || nnz > INT32_MAX || n_part > INT32_MAX)
        return sl_ctx_fail(ctx, SL_EARG, "mask assign: %lld heads and %lld blocks exceed the limits (65536, 2^31)",
                           (long long)heads, (long long)nnz);
    const sl_mask *m0 = &masks[0];
    *out = (sl_mask){.n_heads = (int)heads, .n_q = m0->n_q, .n_k = m0->n_k, .bq = m0->bq, .bk = m0->bk,
                     .n_qb = m0->n_qb, .n_kb = m0->n_kb};
    sl_status s = sl__mask_alloc(ctx, out, nnz, n_part);
    if (s) {
        memset(out, 0, sizeof *out);
        return s;
    }
    int32_t *rp = out->row_ptr.data, *col = out->col_idx.data, *part = out->part.data;
    uint8_t *bits = out->bits.data;
    size_t blk = (size_t)m0->bq * (size_t)m0->bk;
    int64_t h = 0, e0 = 0, p0 = 0;
    for (int i = 0; i < n; i++) {
        const sl_mask *m = &masks[i];
        const int32_t *mrp = m->row_ptr.data, *mc = m->col_idx.data, *mp = m->part.data;
        int64_t mn = m->col_idx.shape[0], mparts = m->bits.shape[0];
        for (int64_t x = 0; x < m->n_heads * (m->n_qb + 1); x++)
            rp[h * (m->n_qb + 1) + x] = (int32_t)(mrp[x] + e0);
        for (int64_t e = 0; e < mn; e++) {
            col[e0 + e] = mc[e];
            part[e0 + e] = mp[e] < 0 ? -1 : (int32_t)(mp[e] + p0);
        }
        if (mparts)
            memcpy(bits + (size_t)p0 * blk, m->bits.data, (size_t)mparts * blk);
        h += m->n_heads;
        e0 += mn;
        p0 += mparts;
    }
    return SL_OK;
}

/* ---- permute ---------------------------------------------------------------------------------- */

/* Checks that perm is a permutation of [0, n) and writes its inverse. */
static sl_status invert_perm(sl_ctx *ctx, const char *fn, const char *what, const int64_t *perm, int64_t n,
                             int64_t *inv)
{
    for (int64_t i = 0; i < n; i++)
        inv[i] = -1;
    for (int64_t i = 0; i < n; i++) {
        if (perm[i] < 0 || perm[i] >= n)
            return sl_ctx_fail(ctx, SL_EARG, "%s: %s[%lld] = %lld is outside [0, %lld)", fn, what, (long long)i,
                               (long long)perm[i], (long long)n);
        if (inv[perm[i]] >= 0)
            return sl_ctx_fail(ctx, SL_EARG, "%s: %s is not a permutation (%lld appears twice)", fn, what,
                               (long long)perm[i]);
        inv[perm[i]] = i;
    }
    return SL_OK;
}

typedef struct perm_job {
    const sl_mask *m;
    const sl__mgeom *g;
    const int64_t *src_q;  /* new row -> original row */
    const int64_t *dst_k;  /* original key -> new key */
} perm_job;

static void perm_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const perm_job *J = ud;
    const sl_mask *m = J->m;
    const sl__mgeom *g = J->g;
    sl__mb_slots sl = sl__mb_slots_at(g, scratch);
    const int32_t *rp = sl__mask_rows(m, h), *col = m->col_idx.data, *part = m->part.data;
    int64_t rows = sl__mg_rows(g, r);
    for (int64_t a = 0; a < rows; a++) {
        int64_t src = J->src_q[r * g->bq + a], sr = src / m->bq, sa = src - sr * m->bq;
        for (int32_t e = rp[sr]; e < rp[sr + 1]; e++) {
            int64_t j0 = (int64_t)col[e] * m->bk, cols = sl__mg_cols(g, col[e]);
            const uint8_t *b = part[e] >= 0 ? sl__mask_part_bits(m, part[e]) + sa * m->bk : NULL;
            for (int64_t x = 0; x < cols; x++) {
                if (b && !b[x])
                    continue;
                int64_t j = J->dst_k[j0 + x], c = j / g->bk;
                sl__mb_slot(&sl, c)[a * g->bk + (j - c * g->bk)] = 1;
            }
        }
    }
    sl__mb_slots_flush(&sl, sink);
}

/* out(r, c) = m(src_q[r], src_k[c]) for permutations given as "new -> original". */
static sl_status permute_run(sl_ctx *ctx, const char *fn, const sl_mask *m, const int64_t *perm_q,
                             const int64_t *perm_k, int inverse, sl_mask *out)
{
    memset(out, 0, sizeof *out);
    if (!perm_q)
        return sl_ctx_fail(ctx, SL_EARG, "%s: perm_q is NULL", fn);
    if (!perm_k && m->n_q != m->n_k)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: one permutation needs n_q == n_k, found %lld and %lld; give perm_k",
                           fn, (long long)m->n_q, (long long)m->n_k);
    if (!perm_k)
        perm_k = perm_q;
    size_t bq_bytes = (size_t)m->n_q * sizeof(int64_t), bk_bytes = (size_t)m->n_k * sizeof(int64_t);
    int64_t *inv_q = sl_ctx_alloc(ctx, bq_bytes + 8), *inv_k = sl_ctx_alloc(ctx, bk_bytes + 8);
    sl_status s = inv_q && inv_k ? SL_OK : SL_ENOMEM;
    if (!s)
        s = invert_perm(ctx, fn, "perm_q", perm_q, m->n_q, inv_q);
    if (!s)
        s = invert_perm(ctx, fn, "perm_k", perm_k, m->n_k, inv_k);
    if (!s) {
        /* permute: new row r reads original row perm_q[r]; original key j
         * lands at inv_k[j]. The inverse swaps the roles. */
        sl__mgeom g = sl__mgeom_of(m);
        perm_job job = {m, &g, inverse ? inv_q : perm_q, inverse ? perm_k : inv_k};
        s = sl__mask_build(ctx, fn, m->n_heads, &g, perm_row, &job, sl__mb_slots_bytes(&g), out);
    }
    if (inv_q)
        sl_ctx_dealloc(ctx, inv_q, bq_bytes + 8);
    if (inv_k)
        sl_ctx_dealloc(ctx, inv_k, bk_bytes + 8);
    return s;
}

sl_status sl_mask_permute(sl_ctx *ctx, const sl_mask *m, const int64_t *perm_q, const int64_t *perm_k, sl_mask *out)
{
    return permute_run(ctx, "mask permute", m, perm_q, perm_k, 0, out);
}

sl_status sl_mask_permute_inverse(sl_ctx *ctx, const sl_mask *m, const int64_t *perm_q, const int64_t *perm_k,
                                  sl_mask *out)
{
    return permute_run(ctx, "mask permute_inverse", m, perm_q, perm_k, 1, out);
}

int64_t sl_mask_causal_violations(const sl_mask *m, const int64_t *perm_q, const int64_t *perm_k)
{
    if (!perm_k)
        perm_k = perm_q;
    sl__mgeom g = sl__mgeom_of(m);
    const int32_t *col = m->col_idx.data, *part = m->part.data;
    int64_t bad = 0;
    for (int h = 0; h < m->n_heads; h++) {
        const int32_t *rp = sl__mask_rows(m, h);
        for (int64_t row = 0; row < m->n_q; row++) {
            int64_t r = row / m->bq, a = row - r * m->bq;
            int64_t pos = g.offset + (perm_q ? perm_q[row] : row);
            for (int32_t e = rp[r]; e < rp[r + 1]; e++) {
                int64_t j0 = (int64_t)col[e] * m->bk, cols = sl__mg_cols(&g, col[e]);
                const uint8_t *b = part[e] >= 0 ? sl__mask_part_bits(m, part[e]) + a * m->bk : NULL;
                if (!perm_k && !b) {
                    int64_t lo = pos + 1 > j0 ? pos + 1 : j0;
                    bad += lo < j0 + cols ? j0 + cols - lo : 0;
                    continue;
                }
                for (int64_t x = 0; x < cols; x++)
                    if ((!b || b[x]) && (perm_k ? perm_k[j0 + x] : j0 + x) > pos)
                        bad++;
            }
        }
    }
    return bad;
}

/* ---- resize and coarsen ------------------------------------------------------------------------ */

typedef struct resize_job {
    const sl_mask *m;
    const sl__mgeom *g;  /* the new geometry */
    int coarsen;
} resize_job;

static void resize_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const resize_job *J = ud;
    const sl_mask *m = J->m;
    const sl__mgeom *g = J->g;
    sl__mgeom og = sl__mgeom_of(m);
    sl__mb_slots sl = sl__mb_slots_at(g, scratch);
    const int32_t *rp = sl__mask_rows(m, h), *col = m->col_idx.data, *part = m->part.data;
    int64_t rows = sl__mg_rows(g, r), bk = g->bk;
    for (int64_t a = 0; a < rows; a++) {
        int64_t row = r * g->bq + a, sr = row / m->bq, sa = row - sr * m->bq;
        for (int32_t e = rp[sr]; e < rp[sr + 1]; e++) {
            int64_t j0 = (int64_t)col[e] * m->bk, j1 = j0 + sl__mg_cols(&og, col[e]) - 1;
            const uint8_t *b = part[e] >= 0 ? sl__mask_part_bits(m, part[e]) + sa * m->bk : NULL;
            for (int64_t c = j0 / bk; c <= j1 / bk; c++) {
                int64_t lo = c * bk > j0 ? c * bk : j0, hi = c * bk + bk - 1 < j1 ? c * bk + bk - 1 : j1;
                if (J->coarsen) {
                    if (sl.state[c] == 2)
                        continue;
                    int any = !b;
                    for (int64_t j = lo; j <= hi && !any; j++)
                        any = b[j - j0] != 0;
                    if (any)
                        sl.state[c] = 2;
                    continue;
                }
                uint8_t *dst = sl__mb_slot(&sl, c) + a * bk;
                if (!b)
                    memset(dst + (lo - c * bk), 1, (size_t)(hi - lo + 1));
                else
                    for (int64_t j = lo; j <= hi; j++)
                        dst[j - c * bk] |= b[j - j0];
            }
        }
    }
    sl__mb_slots_flush(&sl, sink);
}

static sl_status resize_run(sl_ctx *ctx, const char *fn, const sl_mask *m, int bq, int bk, int coarsen, sl_mask *out)
{
    memset(out, 0, sizeof *out);
    sl_status s = sl__mask_check_geometry(ctx, fn, m->n_q, m->n_k, bq, bk);
    if (s)
        return s;
    sl__mgeom g = sl__mgeom_make(m->n_q, m->n_k, bq, bk);
    resize_job job = {m, &g, coarsen};
    return sl__mask_build(ctx, fn, m->n_heads, &g, resize_row, &job, sl__mb_slots_bytes(&g), out);
}

sl_status sl_mask_resize(sl_ctx *ctx, const sl_mask *m, int bq, int bk, sl_mask *out)
{
    return resize_run(ctx, "mask resize", m, bq, bk, 0, out);
}

sl_status sl_mask_coarsen(sl_ctx *ctx, const sl_mask *m, int bq, int bk, sl_mask *out)
{
    return resize_run(ctx, "mask coarsen", m, bq, bk, 1, out);
}

/* ---- align -------------------------------------------------------------------------------------- */

static int64_t kept_heads(const sl_mask *m, int heads)
{
    int64_t k = 0;
    for (int h = 0; h < heads; h++)
        k += sl_mask_kept(m, m->n_heads == 1 ? 0 : h);
    return k;
}

sl_status sl_mask_align(sl_ctx *ctx, const sl_mask *semantic, const sl_mask *executed, int causal,
                        sl_mask_alignment *out)
{
    const char *fn = "mask align";
    memset(out, 0, sizeof *out);
    if (semantic->n_q != executed->n_q || semantic->n_k != executed->n_k)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: sizes differ (n_q %lld/%lld, n_k %lld/%lld)", fn,
                           (long long)semantic->n_q, (long long)executed->n_q, (long long)semantic->n_k,
                           (long long)executed->n_k);
    if (semantic->n_heads != executed->n_heads && semantic->n_heads != 1 && executed->n_heads != 1)
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: %d and %d heads; expected equal counts or 1", fn, semantic->n_heads,
                           executed->n_heads);
    sl_mask resized = {0}, both;
    const sl_mask *exe = executed;
    sl_status s = SL_OK;
    if (executed->bq != semantic->bq || executed->bk != semantic->bk) {
        if ((s = sl_mask_resize(ctx, executed, semantic->bq, semantic->bk, &resized)))
            return s;
        exe = &resized;
    }
    s = sl_mask_intersect(ctx, semantic, exe, &both);
    if (!s) {
        int heads = semantic->n_heads > executed->n_heads ? semantic->n_heads : executed->n_heads;
        out->kept_semantic = kept_heads(semantic, heads);
        out->kept_executed = kept_heads(exe, heads);
        out->kept_both = kept_heads(&both, heads);
        double total = 0;
        int64_t offset = semantic->n_k - semantic->n_q;
        for (int64_t r = 0; r < semantic->n_q; r++)
            total += causal ? (double)(offset + r + 1 < semantic->n_k ? offset + r + 1 : semantic->n_k)
                            : (double)semantic->n_k;
        total *= heads;
        out->density_semantic = total > 0 ? (double)out->kept_semantic / total : 0;
        out->density_executed = total > 0 ? (double)out->kept_executed / total : 0;
        out->extra = total > 0 ? (double)(out->kept_executed - out->kept_both) / total : 0;
        out->recall = out->kept_semantic > 0 ? (double)out->kept_both / (double)out->kept_semantic : 1;
        sl_mask_release(&both);
    }
    sl_mask_release(&resized);
    return s;
}
