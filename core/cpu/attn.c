/* cpu/attn.c — flash-style attention executors on the CPU (attn.dense,
 * attn.block_sparse): per (head, query tile) work items on our thread pool,
 * scores of a key chunk by one OpenBLAS sgemm, online softmax with the
 * vectorised row operations of rowops.c, P·V by a second sgemm. Never materialises N×N.
 * The tile steps are declared in cpu.h. *
 * Also the gathered executors (attn.token_sparse, attn.vs_mixed, attn.rows
 * and attn.lse_merge: keys and values read by index, a few query rows per
 * item), attn.linear (the running state S = sum phi(k) v^T, z = sum phi(k)
 * in double, each key read once per query head: O(n d^2) instead of the
 * reference's O(n^2 d)), attn.pooled_kv (K and V pooled once per level in
 * use, then the flash tile over each kept block's pooled keys with the
 * log(count) bias) and attn.bucket (keys sorted by bucket per head). */
#include "attn_lines.h"
#include "cpu.h"
#include "parallel.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef DENSE_BQ
#define DENSE_BQ 128     /* query rows per work item of attn.dense */
#endif
#ifndef DENSE_BK
#define DENSE_BK 256     /* keys per chunk of attn.dense */
#endif
#define SPARSE_KMAX 512  /* consecutive kept blocks are merged into chunks up to this many keys */
_Static_assert(SPARSE_KMAX <= SL__CPU_MAX_CHUNK_BLOCKS, "a chunk of 1-key blocks must fit the pv_skip marks");

size_t sl__cpu_tile_floats(int64_t bq, int64_t kmax, int64_t d) { return (size_t)(bq * d + bq * kmax + bq * d + 2 * bq); }

sl__cpu_tile sl__cpu_tile_make(float *base, int64_t bq, int64_t kmax, int64_t d)
{
    sl__cpu_tile w = {base, base + bq * d, base + bq * d + bq * kmax, NULL, NULL};
    w.m = w.acc + bq * d;
    w.l = w.m + bq;
    return w;
}

static sl__cpu_tile ws_at(void *scratch, int thread, int64_t bq, int64_t kmax, int64_t d)
{
    return sl__cpu_tile_make((float *)scratch + (size_t)thread * sl__cpu_tile_floats(bq, kmax, d), bq, kmax, d);
}

void sl__cpu_tile_reset(sl__cpu_tile *w, int64_t rows, int64_t d)
{
    memset(w->acc, 0, (size_t)(rows * d) * sizeof(float));
    for (int64_t a = 0; a < rows; a++) {
        w->m[a] = -INFINITY;
        w->l[a] = 0.f;
    }
}

void sl__cpu_tile_state(sl__cpu_tile *w, int64_t a, int64_t d, const float *o, float lse)
{
    /* (m, l, acc) = (L, 1, O) is the finished pass's state up to the choice of m. */
    if (lse == -INFINITY)
        return;
    w->m[a] = lse;
    w->l[a] = 1.f;
    memcpy(w->acc + a * d, o, (size_t)d * sizeof(float));
}

static void tile_begin(sl__cpu_tile *w, const float *q, int64_t rows, int64_t d, float scale)
{
    for (int64_t i = 0; i < rows * d; i++)
        w->qs[i] = q[i] * scale;
    sl__cpu_tile_reset(w, rows, d);
}

void sl__cpu_tile_scores(sl__cpu_tile *w, int64_t rows, int64_t d, const float *k, int64_t nc, int64_t ld_s)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)nc, (int)d, 1.f, w->qs, (int)d, k, (int)d,
                0.f, w->s, (int)ld_s);
}

/* The mask of a chunk; mask_bits (a row operation, NULL: plain loops) sets
 * -inf where a bit is 0. */
static void tile_mask_with(sl__cpu_tile *w, int64_t rows, int64_t nc, int64_t ld_s, const sl__cpu_chunk_mask *cm,
                           void (*mask_bits)(float *s, const uint8_t *bits, int64_t n))
{
    for (int64_t a = 0; a < rows; a++) {
        float *s = w->s + a * ld_s;
        if (cm->keep_to)
            for (int64_t j = cm->keep_to[a] < 0 ? 0 : cm->keep_to[a]; j < nc; j++)
                s[j] = -INFINITY;
        if (cm->bits)
            for (int64_t c = 0; c * cm->bk < nc; c++) {
                const uint8_t *b = cm->bits[c];
                if (!b)
                    continue;
                b += (cm->row0 + a) * cm->bk;
                int64_t width = nc - c * cm->bk < cm->bk ? nc - c * cm->bk : cm->bk;
                if (mask_bits) {
                    mask_bits(s + c * cm->bk, b, width);
                    continue;
                }
                for (int64_t j = 0; j < width; j++)
                    if (!b[j])
                        s[c * cm->bk + j] = -INFINITY;
            }
    }
}

void sl__cpu_tile_mask(sl__cpu_tile *w, int64_t rows, int64_t nc, int64_t ld_s, const sl__cpu_chunk_mask *cm)
{
    tile_mask_with(w, rows, nc, ld_s, cm, NULL);
}

/* SpargeAttn's test for one row of a chunk that starts on a key-block
 * boundary: marks in skip[] the blocks whose max lies more than pv_skip below
 * the running max (this block included), starting from the row's max m.
 * Returns how many blocks with a visible key keep their P·V. */
static int64_t pv_skip_marks(const float *s, int64_t nc, float m, int64_t bk, float pv_skip, uint8_t *skip)
{
    int64_t live = 0;
    for (int64_t c = 0; c * bk < nc; c++) {
        int64_t width = nc - c * bk < bk ? nc - c * bk : bk;
        float b = -INFINITY;
        for (int64_t j = 0; j < width; j++)
            b = s[c * bk + j] > b ? s[c * bk + j] : b;
        m = b > m ? b : m;
        skip[c] = b != -INFINITY && b < m - pv_skip;
        live += b != -INFINITY && !skip[c];
    }
    return live;
}

/* The online softmax of a chunk's scores: P in w->s, (m, l) updated, acc
 * rescaled. Returns whether any row has a P·V left to do. */
static int tile_softmax(sl__cpu_tile *w, const sl__cpu_rowops *ro, int64_t rows, int64_t d, int64_t nc, int64_t ld_s,
                        int64_t pv_bk, float pv_skip)
{
    int any_p = 0;
    uint8_t skip[SL__CPU_MAX_CHUNK_BLOCKS];
    for (int64_t a = 0; a < rows; a++) {
        float *s = w->s + a * ld_s;
        int64_t live = pv_bk > 0 ? pv_skip_marks(s, nc, w->m[a], pv_bk, pv_skip, skip) : 1;
        float mnew = ro->max(s, nc, w->m[a]);
        if (mnew == -INFINITY) {
            /* Nothing visible yet in this row: P is all zero. */
            memset(s, 0, (size_t)nc * sizeof(float));
            continue;
        }
        float alpha = w->m[a] == -INFINITY ? 0.f : expf(w->m[a] - mnew);
        float sum = ro->exp_sum(s, nc, mnew);
        w->l[a] = w->l[a] * alpha + sum;
        w->m[a] = mnew;
        if (alpha != 1.f)
            ro->scale(w->acc + a * d, d, alpha);
        if (pv_bk > 0)
            for (int64_t c = 0; c * pv_bk < nc; c++)
                if (skip[c])
                    memset(s + c * pv_bk, 0, (size_t)(nc - c * pv_bk < pv_bk ? nc - c * pv_bk : pv_bk) * sizeof(float));
        any_p |= live > 0;
    }
    return any_p;
}

void sl__cpu_tile_update(sl__cpu_tile *w, const sl__cpu_rowops *ro, int64_t rows, int64_t d, const float *v, int64_t nc,
                         int64_t ld_s, int64_t pv_bk, float pv_skip)
{
    if (tile_softmax(w, ro, rows, d, nc, ld_s, pv_bk, pv_skip)) /* with pv_skip a chunk may have nothing left to multiply */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)d, (int)nc, 1.f, w->s, (int)ld_s, v,
                    (int)d, 1.f, w->acc, (int)d);
}

void sl__cpu_tile_end_row(const sl__cpu_tile *w, int64_t a, int64_t d, float *o, float *lse)
{
    if (w->l[a] <= 0.f) {
        memset(o, 0, (size_t)d * sizeof(float));
        *lse = -INFINITY;
        return;
    }
    float inv = 1.f / w->l[a];
    for (int64_t c = 0; c < d; c++)
        o[c] = w->acc[a * d + c] * inv;
    *lse = w->m[a] + logf(w->l[a]);
}

/* Scores of the chunk's keys, masked, folded into the running softmax. */
static void tile_chunk(sl__cpu_tile *w, const sl__cpu_rowops *ro, int64_t rows, int64_t d, const float *k,
                       const float *v, int64_t nc, int64_t ld_s, const sl__cpu_chunk_mask *cm, int64_t pv_bk,
                       float pv_skip)
{
    sl__cpu_tile_scores(w, rows, d, k, nc, ld_s);
    if (cm)
        tile_mask_with(w, rows, nc, ld_s, cm, ro->mask_bits);
    sl__cpu_tile_update(w, ro, rows, d, v, nc, ld_s, pv_bk, pv_skip);
}

static void tile_end(const sl__cpu_tile *w, int64_t rows, int64_t d, float *o, float *lse)
{
    for (int64_t a = 0; a < rows; a++)
        sl__cpu_tile_end_row(w, a, d, o + a * d, lse + a);
}

/* ---- attn.dense ---- */

typedef struct dense_job {
    const sl__kargs *a;
    sl__cpu_rowops ro;
    sl__attn_dims dm;
    int causal;
    int64_t n_tiles;  /* query tiles per head */
} dense_job;

static void dense_item(int64_t item, void *ud, int thread)
{
    dense_job *j = ud;
    const sl__attn_dims *dm = &j->dm;
    /* Items run from the most expensive (last) query tiles to the cheapest. */
    int64_t h = item % dm->hq, t = j->n_tiles - 1 - item / dm->hq;
    int64_t r0 = t * DENSE_BQ, rows = dm->nq - r0 < DENSE_BQ ? dm->nq - r0 : DENSE_BQ;
    int64_t g = h / dm->group;
    const float *q = (const float *)j->a->in[0].data + (h * dm->nq + r0) * dm->d;
    const float *k = (const float *)j->a->in[1].data + g * dm->nk * dm->d;
    const float *v = (const float *)j->a->in[2].data + g * dm->nk * dm->d;
    sl__cpu_tile w = ws_at(j->a->scratch, thread, DENSE_BQ, DENSE_BK, dm->d);
    tile_begin(&w, q, rows, dm->d, (float)dm->scale);
    int64_t end = j->causal ? dm->offset + r0 + rows : dm->nk; /* keys past the last row's limit are never read */
    if (end > dm->nk)
        end = dm->nk;
    int64_t keep_to[DENSE_BQ];
    for (int64_t j0 = 0; j0 < end; j0 += DENSE_BK) {
        int64_t nc = end - j0 < DENSE_BK ? end - j0 : DENSE_BK;
        sl__cpu_chunk_mask cm = {NULL, NULL, 0, 0};
        if (j->causal && j0 + nc > dm->offset + r0 + 1) {
            for (int64_t a = 0; a < rows; a++)
                keep_to[a] = dm->offset + r0 + a + 1 - j0;
            cm.keep_to = keep_to;
        }
        tile_chunk(&w, &j->ro, rows, dm->d, k + j0 * dm->d, v + j0 * dm->d, nc, DENSE_BK, cm.keep_to ? &cm : NULL, 0, 0);
    }
    tile_end(&w, rows, dm->d, (float *)j->a->out[0].data + (h * dm->nq + r0) * dm->d,
             (float *)j->a->out[1].data + h * dm->nq + r0);
}

sl_status sl__cpu_attn_dense(const sl__kargs *a)
{
    const sl_attn_params *p = a->params;
    dense_job j = {a, sl__cpu_rowops_for(a->ctx), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), (int)p->causal, 0};
    j.n_tiles = (j.dm.nq + DENSE_BQ - 1) / DENSE_BQ;
    return sl__cpu_parallel(a->ctx, j.n_tiles * j.dm.hq, dense_item, &j);
}

/* ---- attn.block_sparse ---- */

typedef struct sparse_job {
    const sl__kargs *a;
    sl__cpu_rowops ro;
    sl__attn_dims dm;
    int64_t bq, bk, n_qb, hm, kmax;
    double pv_skip;
} sparse_job;

/* Floats of a block_sparse workspace: the tile, then K and V copies of one
 * chunk gathered from several runs (V only for short runs, see below). */
static size_t sparse_ws_floats(int64_t bq, int64_t kmax, int64_t d)
{
    return sl__cpu_tile_floats(bq, kmax, d) + (size_t)(2 * kmax * d) + (size_t)(bq * d);
}

/* Runs of at least this many keys on average have their values read in
 * place (one P·V product per run); shorter ones are copied (one product). */
#define SPARSE_PV_INPLACE_KEYS 32

/* Scores of nc keys k (rows of d floats) for the tile's rows into s (ld_s).
 * OpenBLAS multiplies without packing (its small-matrix kernel) when
 * M·N·K <= 100^3, except for a column-major TN product, which the row-major
 * q·kᵀ is. With the scaled q transposed (qt, d x rows) the product is TT
 * (qtᵀ·kᵀ) and runs unpacked in pieces of SPARSE_SMALL_MNK / (rows·d) keys:
 * at n = 16K, d = 64 a 64-key block no longer pays for packing q on every
 * call and a 512-key chunk's product ran faster in 128-key pieces than
 * packed (issue 20, session 4: single-thread CPU time, random blocks at
 * rho = 0.05 49 -> 45 ms). Pieces under 32 keys (d > 256) keep the packed
 * product. */
#define SPARSE_SMALL_MNK (64 * 128 * 64)

static int64_t sparse_piece_keys(int64_t rows, int64_t d)
{
    int64_t keys = SPARSE_SMALL_MNK / (rows * d) / 16 * 16;
    return keys < 32 ? 0 : keys;
}

static void sparse_scores(const sl__cpu_tile *w, const float *qt, int64_t ldq, int use_qt, int64_t rows, int64_t d,
                          const float *k, int64_t nc, int64_t ld_s, float *s)
{
    int64_t piece = use_qt ? sparse_piece_keys(rows, d) : 0;
    if (!piece) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)nc, (int)d, 1.f, w->qs, (int)d, k, (int)d,
                    0.f, s, (int)ld_s);
        return;
    }
    for (int64_t c0 = 0; c0 < nc; c0 += piece) {
        int64_t m = nc - c0 < piece ? nc - c0 : piece;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, (int)rows, (int)m, (int)d, 1.f, qt, (int)ldq, k + c0 * d,
                    (int)d, 0.f, s + c0, (int)ld_s);
    }
}

/* qt = q·scale transposed (d x rows), in 8 x 8 blocks: the same products
 * tile_begin's qs holds, laid out for the TT score product. */
static void transpose_q(const float *q, float scale, int64_t rows, int64_t d, float *qt)
{
    for (int64_t a0 = 0; a0 < rows; a0 += 8)
        for (int64_t c0 = 0; c0 < d; c0 += 8) {
            int64_t ae = a0 + 8 < rows ? a0 + 8 : rows, ce = c0 + 8 < d ? c0 + 8 : d;
            for (int64_t c = c0; c < ce; c++)
                for (int64_t a = a0; a < ae; a++)
                    qt[c * rows + a] = q[a * d + c] * scale;
        }
}

/* The columns at a chunk's two ends that no row of the tile keeps, found in
 * its first and last blocks when they are partial (bits: NULL for a full
 * block). A causal window's left edge and the diagonal block leave such
 * columns; they are masked to -inf whatever their scores, so neither their
 * scores nor their P·V are computed (issue 20, session 4). */
static void chunk_trim(const uint8_t *const *bits, int64_t n_blk, int64_t rows, int64_t bk, int64_t nc, int64_t *lead,
                       int64_t *trail)
{
    *lead = *trail = 0;
    if (bits[0]) {
        int64_t first = nc < bk ? nc : bk;
        for (int64_t a = 0; a < rows && first > 0; a++)
            for (int64_t c = 0; c < first; c++)
                if (bits[0][a * bk + c]) {
                    first = c;
                    break;
                }
        *lead = first;
    }
    const uint8_t *b = bits[n_blk - 1];
    if (b) {
        int64_t c0 = (n_blk - 1) * bk, width = nc - c0, lo = *lead > c0 ? *lead - c0 : 0, hi = lo;
        for (int64_t a = rows - 1; a >= 0 && hi < width; a--)
            for (int64_t c = width - 1; c >= hi; c--)
                if (b[a * bk + c]) {
                    hi = c + 1;
                    break;
                }
        *trail = width - hi;
    }
}

/* Rows [a0, a0 + m) of the tile over one run of nc keys k, v (its blocks'
 * bits; the chunk's columns at both ends that none of these rows keeps are
 * neither scored nor multiplied: chunk_trim), folded into their running
 * softmax. lead / trail < 0: found here. */
static void run_rows(const sparse_job *j, const sl__cpu_tile *w, const float *qt, int use_qt, int64_t rows,
                     int64_t a0, int64_t m, const float *k, const float *v, int64_t nc, const uint8_t *const *bits,
                     int64_t n_blk, int any_partial, int64_t lead, int64_t trail)
{
    int64_t d = j->dm.d, ld = j->kmax;
    sl__cpu_tile t = *w; /* the rows' view of the tile */
    t.qs += a0 * d, t.s += a0 * ld, t.acc += a0 * d, t.m += a0, t.l += a0;
    const uint8_t *rb[SL__CPU_MAX_CHUNK_BLOCKS];
    for (int64_t c = 0; c < n_blk; c++)
        rb[c] = bits[c] ? bits[c] + a0 * j->bk : NULL;
    if (lead < 0) {
        lead = trail = 0;
        if (any_partial)
            chunk_trim(rb, n_blk, m, j->bk, nc, &lead, &trail);
    }
    int64_t kc = nc - lead - trail;
    if (kc > 0)
        sparse_scores(&t, qt + a0, rows, use_qt, m, d, k + lead * d, kc, ld, t.s + lead);
    if (any_partial) { /* sets the trimmed columns' -inf too */
        sl__cpu_chunk_mask cm = {NULL, rb, j->bk, 0};
        tile_mask_with(&t, m, nc, ld, &cm, j->ro.mask_bits);
    }
    if (j->pv_skip > 0) { /* SpargeAttn's marks count key blocks from the chunk's first column */
        if (tile_softmax(&t, &j->ro, m, d, nc, ld, j->bk, (float)j->pv_skip) && kc > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)kc, 1.f, t.s + lead, (int)ld,
                        v + lead * d, (int)d, 1.f, t.acc, (int)d);
        return;
    }
    /* The trimmed columns hold -inf (P = 0): the softmax runs over the rest. */
    t.s += lead;
    if (kc > 0 && tile_softmax(&t, &j->ro, m, d, kc, ld, 0, 0.f))
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)kc, 1.f, t.s, (int)ld,
                    v + lead * d, (int)d, 1.f, t.acc, (int)d);
}

#ifndef SPARSE_SPLIT_ROWS
#define SPARSE_SPLIT_ROWS 16 /* rows of a part when a partial run's tile is split (below) */
#endif

/* A chunk of one run. When its first or last block is partial (a causal
 * window's left edge, the diagonal block), the tile's rows are split into
 * parts of SPARSE_SPLIT_ROWS rows, each trimmed to its own key range: the
 * masked triangles at the run's two ends are then mostly not computed
 * (issue 20, session 4b). The split is taken when it saves at least an
 * eighth of the run's score pairs. */
static void single_run(const sparse_job *j, const sl__cpu_tile *w, const float *qt, int use_qt, int64_t rows,
                       const float *k, const float *v, int64_t nc, const uint8_t *const *bits, int64_t n_blk,
                       int any_partial)
{
    enum { MAX_PARTS = 64 };
    int64_t n_parts = (rows + SPARSE_SPLIT_ROWS - 1) / SPARSE_SPLIT_ROWS;
    if (any_partial && n_parts > 1 && n_parts <= MAX_PARTS) {
        int64_t lead[MAX_PARTS], trail[MAX_PARTS], pairs = 0;
        const uint8_t *rb[SL__CPU_MAX_CHUNK_BLOCKS];
        for (int64_t p = 0; p < n_parts; p++) {
            int64_t a0 = p * SPARSE_SPLIT_ROWS, m = rows - a0 < SPARSE_SPLIT_ROWS ? rows - a0 : SPARSE_SPLIT_ROWS;
            for (int64_t c = 0; c < n_blk; c++)
                rb[c] = bits[c] ? bits[c] + a0 * j->bk : NULL;
            chunk_trim(rb, n_blk, m, j->bk, nc, &lead[p], &trail[p]);
            int64_t kc = nc - lead[p] - trail[p];
            pairs += m * (kc > 0 ? kc : 0);
        }
        int64_t lead_all = 0, trail_all = 0;
        chunk_trim(bits, n_blk, rows, j->bk, nc, &lead_all, &trail_all);
        int64_t whole = rows * (nc - lead_all - trail_all);
        if (pairs < whole) {
            for (int64_t p = 0; p < n_parts; p++) {
                int64_t a0 = p * SPARSE_SPLIT_ROWS, m = rows - a0 < SPARSE_SPLIT_ROWS ? rows - a0 : SPARSE_SPLIT_ROWS;
                run_rows(j, w, qt, use_qt, rows, a0, m, k, v, nc, bits, n_blk, 1, lead[p], trail[p]);
            }
            return;
        }
        run_rows(j, w, qt, use_qt, rows, 0, rows, k, v, nc, bits, n_blk, 1, lead_all, trail_all);
        return;
    }
    run_rows(j, w, qt, use_qt, rows, 0, rows, k, v, nc, bits, n_blk, any_partial, -1, -1);
}

static void sparse_item(int64_t item, void *ud, int thread)
{
    sparse_job *j = ud;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item % dm->hq, qb = item / dm->hq;
    int64_t r0 = qb * j->bq, rows = dm->nq - r0 < j->bq ? dm->nq - r0 : j->bq;
    int64_t g = h / dm->group, mh = h / (dm->hq / j->hm), d = dm->d;
    const float *q = (const float *)j->a->in[0].data + (h * dm->nq + r0) * d;
    const float *k = (const float *)j->a->in[1].data + g * dm->nk * d;
    const float *v = (const float *)j->a->in[2].data + g * dm->nk * d;
    const int32_t *rp = (const int32_t *)j->a->in[3].data + mh * (j->n_qb + 1);
    const int32_t *col = j->a->in[4].data, *part = j->a->in[5].data;
    const uint8_t *bits = j->a->in[6].data;
    size_t blk = (size_t)(j->bq * j->bk);
    float *base = (float *)j->a->scratch + (size_t)thread * sparse_ws_floats(j->bq, j->kmax, d);
    sl__cpu_tile w = sl__cpu_tile_make(base, j->bq, j->kmax, d);
    float *kbuf = base + sl__cpu_tile_floats(j->bq, j->kmax, d), *vbuf = kbuf + j->kmax * d, *qt = vbuf + j->kmax * d;
    int64_t run_k0[SL__CPU_MAX_CHUNK_BLOCKS], run_off[SL__CPU_MAX_CHUNK_BLOCKS], run_nc[SL__CPU_MAX_CHUNK_BLOCKS];
    if (rp[qb] == rp[qb + 1]) { /* nothing kept: zero output, -inf lse */
        memset((float *)j->a->out[0].data + (h * dm->nq + r0) * d, 0, (size_t)(rows * d) * sizeof(float));
        float *lse = (float *)j->a->out[1].data + h * dm->nq + r0;
        for (int64_t a = 0; a < rows; a++)
            lse[a] = -INFINITY;
        return;
    }
    int use_qt = sparse_piece_keys(rows, d) != 0;
    if (use_qt) { /* the score products read qt only (sparse_scores) */
        transpose_q(q, (float)dm->scale, rows, d, qt);
        sl__cpu_tile_reset(&w, rows, d);
    } else
        tile_begin(&w, q, rows, d, (float)dm->scale);
    sl__cpu_run run;
    const uint8_t *chunk_bits[SL__CPU_MAX_CHUNK_BLOCKS];
    for (int32_t e = rp[qb]; e < rp[qb + 1];) {
        /* One chunk: runs of consecutive kept blocks until kmax keys. A run
         * alone is read in place; the keys of several are copied side by
         * side, so that scattered blocks still make one score product of
         * kmax keys instead of one small product each (the profile's packing
         * and call overhead); values below. */
        int64_t used = 0, n_blk = 0, n_runs = 0, k0 = 0;
        int any_partial = 0;
        while (e < rp[qb + 1] && used + j->bk <= j->kmax) {
            sl__cpu_next_run(col, part, bits, blk, &e, rp[qb + 1], j->bk, j->kmax - used, dm->nk, &run);
            run_k0[n_runs] = run.k0, run_off[n_runs] = used, run_nc[n_runs] = run.nc;
            if (n_runs == 0)
                k0 = run.k0;
            else {
                if (n_runs == 1)
                    memcpy(kbuf, k + k0 * d, (size_t)(used * d) * sizeof(float));
                memcpy(kbuf + used * d, k + run.k0 * d, (size_t)(run.nc * d) * sizeof(float));
            }
            memcpy(chunk_bits + n_blk, run.bits, (size_t)run.n_blocks * sizeof *chunk_bits);
            n_blk += run.n_blocks;
            any_partial |= run.any_partial;
            used += run.nc;
            n_runs++;
        }
        sl__cpu_chunk_mask cm = {NULL, chunk_bits, j->bk, 0};
        if (n_runs == 1) {
            single_run(j, &w, qt, use_qt, rows, k + k0 * d, v + k0 * d, used, chunk_bits, n_blk, any_partial);
            continue;
        }
        /* Several runs: the scores by one product over the gathered keys;
         * P·V by one product per run over its values in place when runs are
         * long (the values are read once either way; a copy would add a pass
         * over them), else over a copy (many tiny products cost more). */
        sparse_scores(&w, qt, rows, use_qt, rows, d, kbuf, used, j->kmax, w.s);
        if (any_partial)
            tile_mask_with(&w, rows, used, j->kmax, &cm, j->ro.mask_bits);
        if (!tile_softmax(&w, &j->ro, rows, d, used, j->kmax, j->pv_skip > 0 ? j->bk : 0, (float)j->pv_skip))
            continue;
        if (used >= SPARSE_PV_INPLACE_KEYS * n_runs) {
            for (int64_t r = 0; r < n_runs; r++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)d, (int)run_nc[r], 1.f,
                            w.s + run_off[r], (int)j->kmax, v + run_k0[r] * d, (int)d, 1.f, w.acc, (int)d);
        } else {
            for (int64_t r = 0; r < n_runs; r++)
                memcpy(vbuf + run_off[r] * d, v + run_k0[r] * d, (size_t)(run_nc[r] * d) * sizeof(float));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)d, (int)used, 1.f, w.s,
                        (int)j->kmax, vbuf, (int)d, 1.f, w.acc, (int)d);
        }
    }
    tile_end(&w, rows, d, (float *)j->a->out[0].data + (h * dm->nq + r0) * d, (float *)j->a->out[1].data + h * dm->nq + r0);
}

void sl__cpu_next_run(const int32_t *col, const int32_t *part, const uint8_t *bits, size_t blk, int32_t *e,
                      int32_t end, int64_t bk, int64_t kmax, int64_t nk, sl__cpu_run *run)
{
    int64_t c0 = col[*e];
    run->n_blocks = 0;
    run->any_partial = 0;
    while (*e < end && col[*e] == c0 + run->n_blocks && (run->n_blocks + 1) * bk <= kmax &&
           run->n_blocks < SL__CPU_MAX_CHUNK_BLOCKS) {
        run->bits[run->n_blocks++] = part[*e] < 0 ? NULL : bits + (size_t)part[*e] * blk;
        run->any_partial |= part[*e] >= 0;
        (*e)++;
    }
    run->k0 = c0 * bk;
    run->nc = run->n_blocks * bk;
    if (run->k0 + run->nc > nk)
        run->nc = nk - run->k0;
}

int64_t sl__cpu_sparse_kmax(int64_t bk) { return bk >= SPARSE_KMAX ? bk : SPARSE_KMAX / bk * bk; }

sl_status sl__cpu_attn_block_sparse(const sl__kargs *a)
{
    const sl_attn_block_params *p = a->params;
    sparse_job j = {a, sl__cpu_rowops_for(a->ctx), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), p->bq, p->bk, a->in[3].shape[1] - 1,
                    a->in[3].shape[0], sl__cpu_sparse_kmax(p->bk), p->pv_skip};
    return sl__cpu_parallel(a->ctx, j.n_qb * j.dm.hq, sparse_item, &j);
}

static size_t flash_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    int64_t d = in[0].shape[2];
    if (op == SL_OP_ATTN_DENSE)
        return sl__cpu_tile_floats(DENSE_BQ, DENSE_BK, d) * sizeof(float) * (size_t)n_threads;
    const sl_attn_block_params *p = params;
    return sparse_ws_floats(p->bq, sl__cpu_sparse_kmax(p->bk), d) * sizeof(float) * (size_t)n_threads;
}

#define GATHER_TQ 64     /* query rows per work item of the gather path */
#define GATHER_KC 256    /* gathered keys per chunk */
#define DIRECT_ROWS 16   /* items with at most this many rows stream keys directly (decode) */
#define DIRECT_KC 64     /* keys per softmax step of the direct path */
#define PREFETCH_KEYS 10 /* how far ahead the direct path prefetches K and V rows */
#define ROWS_TQ 64       /* query rows per work item of attn.rows */
#define ROWS_KC 256      /* keys per chunk of attn.rows */

/* One query row of a tile: where its query, bias, state and result live. */
typedef struct row_ref {
    const float *q;
    const float *bias;   /* n_k biases of this row, or NULL */
    const float *st_o;   /* state of an earlier pass, or NULL */
    float st_lse;
    float *o, *lse;
} row_ref;

/* Fills row a's bias and state pointers from the optional inputs at slot
 * first (bias by query row qr, state by output row r) and its output. */
static void ref_options(row_ref *rr, const sl__kargs *a, int first, const sl__attn_dims *dm, int64_t h, int64_t qr,
                        int64_t r, int64_t n_out)
{
    const sl_tensor *bias = &a->in[first], *so = &a->in[first + 1], *sl = &a->in[first + 2];
    rr->q = (const float *)a->in[0].data + (h * dm->nq + qr) * dm->d;
    rr->bias = bias->buf ? (const float *)bias->data + ((bias->shape[0] == 1 ? 0 : h) * dm->nq + qr) * dm->nk : NULL;
    rr->st_o = so->buf ? (const float *)so->data + (h * n_out + r) * dm->d : NULL;
    rr->st_lse = so->buf ? ((const float *)sl->data)[h * n_out + r] : -INFINITY;
    rr->o = (float *)a->out[0].data + (h * n_out + r) * dm->d;
    rr->lse = (float *)a->out[1].data + h * n_out + r;
}

static void tile_open(sl__cpu_tile *w, const row_ref *rr, int64_t rows, int64_t d, float scale)
{
    for (int64_t a = 0; a < rows; a++)
        for (int64_t c = 0; c < d; c++)
            w->qs[a * d + c] = rr[a].q[c] * scale;
    sl__cpu_tile_reset(w, rows, d);
    for (int64_t a = 0; a < rows; a++)
        if (rr[a].st_o)
            sl__cpu_tile_state(w, a, d, rr[a].st_o, rr[a].st_lse);
}

static void tile_close(const sl__cpu_tile *w, const row_ref *rr, int64_t rows, int64_t d)
{
    for (int64_t a = 0; a < rows; a++)
        sl__cpu_tile_end_row(w, a, d, rr[a].o, rr[a].lse);
}

/* Adds each row's bias to the scores of keys k0 .. k0 + nc - 1 (keys NULL)
 * or of keys[0 .. nc - 1]. */
static void add_bias(sl__cpu_tile *w, const row_ref *rr, int64_t rows, int64_t k0, const int32_t *keys, int64_t nc,
                     int64_t ld_s)
{
    for (int64_t a = 0; a < rows; a++) {
        if (!rr[a].bias)
            continue;
        float *s = w->s + a * ld_s;
        if (keys)
            for (int64_t j = 0; j < nc; j++)
                s[j] += rr[a].bias[keys[j]];
        else
            for (int64_t j = 0; j < nc; j++)
                s[j] += rr[a].bias[k0 + j];
    }
}

/* K/V rows read by gathered executors are not scanned for NaN beforehand
 * (see op.c): a NaN score makes its row's sum NaN, which no later chunk
 * repairs, so O and L come out NaN and the dispatcher reports it. (The
 * vectorised max and exp would otherwise drop a NaN score silently; a NaN
 * value row reaches O through P·V by itself.) */
static void poison_nan_rows(sl__cpu_tile *w, int64_t rows, int64_t nc, int64_t ld_s)
{
    for (int64_t a = 0; a < rows; a++) {
        const float *s = w->s + a * ld_s;
        float acc = 0.f;
        for (int64_t j = 0; j < nc; j++)
            acc += s[j] - s[j];
        if (acc != 0.f)
            w->l[a] = NAN;
    }
}

/* Which gathered columns of attn.vs_mixed the block part already counts:
 * per column the part of its kept block (-1 full, else an index into bits)
 * or -2 when its block is not kept, and its offset inside the block. */
typedef struct dup_mask {
    const int32_t *part;
    const int32_t *off;
    const uint8_t *bits;
    int64_t bq, bk;
} dup_mask;

/* Scores of nc gathered keys (copied into kbuf/vbuf), biased, with the
 * duplicates of vs_mixed dropped, folded into the tile. */
static void gather_chunk(sl__cpu_tile *w, float *kbuf, float *vbuf, const sl__cpu_rowops *ro, const row_ref *rr,
                         int64_t rows, int64_t d, const float *k, const float *v, const int32_t *keys, int64_t nc,
                         int64_t ld_s, const dup_mask *dup)
{
    for (int64_t j = 0; j < nc; j++) {
        memcpy(kbuf + j * d, k + (int64_t)keys[j] * d, (size_t)d * sizeof(float));
        memcpy(vbuf + j * d, v + (int64_t)keys[j] * d, (size_t)d * sizeof(float));
    }
    sl__cpu_tile_scores(w, rows, d, kbuf, nc, ld_s);
    poison_nan_rows(w, rows, nc, ld_s);
    add_bias(w, rr, rows, 0, keys, nc, ld_s);
    if (dup)
        for (int64_t j = 0; j < nc; j++) {
            if (dup->part[j] == -2)
                continue;
            for (int64_t a = 0; a < rows; a++)
                if (dup->part[j] == -1 ||
                    dup->bits[((size_t)dup->part[j] * (size_t)dup->bq + (size_t)a) * (size_t)dup->bk + (size_t)dup->off[j]])
                    w->s[a * ld_s + j] = -INFINITY;
        }
    sl__cpu_tile_update(w, ro, rows, d, vbuf, nc, ld_s, 0, 0.f);
}

static void prefetch_row(const float *row, int64_t d)
{
    for (int64_t off = 0; off < d; off += 16)
        __builtin_prefetch(row + off);
}

/* The decode path: a few rows sharing one key list, K/V rows read in place
 * (never copied) and prefetched PREFETCH_KEYS keys ahead; scores by dot
 * products that read each key row once for all rows, P·V per chunk with the
 * accumulator held in registers. */
static void direct_rows(sl__cpu_tile *w, const sl__cpu_rowops *ro, const sl__cpu_vecops *vo, const row_ref *rr,
                        int64_t rows, int64_t d, float scale, const float *k, const float *v, const int32_t *keys,
                        int64_t nnz)
{
    tile_open(w, rr, rows, d, scale);
    for (int64_t c0 = 0; c0 < nnz; c0 += DIRECT_KC) {
        int64_t nc = nnz - c0 < DIRECT_KC ? nnz - c0 : DIRECT_KC;
        for (int64_t j = 0; j < nc; j++) {
            if (c0 + j + PREFETCH_KEYS < nnz) {
                prefetch_row(k + (int64_t)keys[c0 + j + PREFETCH_KEYS] * d, d);
                prefetch_row(v + (int64_t)keys[c0 + j + PREFETCH_KEYS] * d, d);
            }
            vo->dots(w->qs, rows, d, k + (int64_t)keys[c0 + j] * d, w->s + j, DIRECT_KC);
        }
        poison_nan_rows(w, rows, nc, DIRECT_KC);
        for (int64_t a = 0; a < rows; a++)
            if (rr[a].bias)
                for (int64_t j = 0; j < nc; j++)
                    w->s[a * DIRECT_KC + j] += rr[a].bias[keys[c0 + j]];
        for (int64_t a = 0; a < rows; a++) {
            float *s = w->s + a * DIRECT_KC;
            float mnew = ro->max(s, nc, w->m[a]);
            if (mnew == -INFINITY) {
                memset(s, 0, (size_t)nc * sizeof(float));
                continue;
            }
            float alpha = w->m[a] == -INFINITY ? 0.f : expf(w->m[a] - mnew);
            w->l[a] = w->l[a] * alpha + ro->exp_sum(s, nc, mnew);
            w->m[a] = mnew;
            if (alpha != 1.f)
                ro->scale(w->acc + a * d, d, alpha);
        }
        const float *vrow[DIRECT_KC];
        for (int64_t j = 0; j < nc; j++)
            vrow[j] = v + (int64_t)keys[c0 + j] * d;
        vo->pv(w->acc, rows, d, vrow, w->s, DIRECT_KC, nc);
    }
    tile_close(w, rr, rows, d);
}

/* A thread's workspace: the tile (tq rows, chunks of kc keys), contiguous
 * copies of one chunk's K and V rows, the tile's row refs, the duplicate
 * marks of vs_mixed and the key limits of attn.rows. */
typedef struct workspace {
    sl__cpu_tile t;
    float *kbuf, *vbuf;
    row_ref *rr;
    int32_t *dup_part, *dup_off;
    int64_t *keep_to;
} workspace;

static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

static size_t ws_bytes(int64_t tq, int64_t kc, int64_t d)
{
    size_t floats = sl__cpu_tile_floats(tq, kc, d) + (size_t)(2 * kc * d);
    return round64(floats * sizeof(float)) + round64((size_t)tq * sizeof(row_ref)) +
           round64((size_t)(2 * kc) * sizeof(int32_t)) + round64((size_t)tq * sizeof(int64_t));
}

static workspace gather_ws_at(void *scratch, int thread, int64_t tq, int64_t kc, int64_t d)
{
    char *base = (char *)scratch + (size_t)thread * ws_bytes(tq, kc, d);
    workspace w;
    w.t = sl__cpu_tile_make((float *)base, tq, kc, d);
    w.kbuf = (float *)base + sl__cpu_tile_floats(tq, kc, d);
    w.vbuf = w.kbuf + kc * d;
    base += round64((sl__cpu_tile_floats(tq, kc, d) + (size_t)(2 * kc * d)) * sizeof(float));
    w.rr = (row_ref *)(void *)base;
    base += round64((size_t)tq * sizeof(row_ref));
    w.dup_part = (int32_t *)(void *)base;
    w.dup_off = w.dup_part + kc;
    base += round64((size_t)(2 * kc) * sizeof(int32_t));
    w.keep_to = (int64_t *)(void *)base;
    return w;
}

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* ---- attn.token_sparse ---- */

/* A work item is (bundle, entry, sub-tile): a bundle is the query heads that
 * share both their kv head and their list head, so one read of each listed
 * K/V row serves all of them; the item's rows are (head, row) pairs of the
 * bundle and the entry, GATHER_TQ at a time. */
typedef struct tok_job {
    const sl__kargs *a;
    sl__cpu_rowops ro;
    sl__cpu_vecops vo;
    sl__attn_dims dm;
    int64_t b, n_e, lists_per, bundle, n_sub;
} tok_job;

static void tok_item(int64_t item, void *ud, int thread)
{
    const tok_job *j = ud;
    const sl__attn_dims *dm = &j->dm;
    const sl__kargs *a = j->a;
    int64_t sub = item % j->n_sub, e = item / j->n_sub % j->n_e, u = item / j->n_sub / j->n_e;
    int64_t rows_e = dm->nq - e * j->b < j->b ? dm->nq - e * j->b : j->b;
    int64_t total = j->bundle * rows_e, t0 = sub * GATHER_TQ;
    if (t0 >= total)
        return;
    int64_t rows = total - t0 < GATHER_TQ ? total - t0 : GATHER_TQ;
    int64_t h0 = u * j->bundle, lh = h0 / j->lists_per, g = h0 / dm->group;
    workspace w = gather_ws_at(a->scratch, thread, GATHER_TQ, GATHER_KC, dm->d);
    for (int64_t t = 0; t < rows; t++) {
        int64_t h = h0 + (t0 + t) / rows_e, r = e * j->b + (t0 + t) % rows_e;
        ref_options(&w.rr[t], a, 5, dm, h, r, r, dm->nq);
    }
    const int32_t *rp = (const int32_t *)a->in[3].data + lh * (j->n_e + 1);
    const int32_t *keys = (const int32_t *)a->in[4].data + rp[e];
    int64_t nnz = rp[e + 1] - rp[e];
    const float *k = (const float *)a->in[1].data + g * dm->nk * dm->d;
    const float *v = (const float *)a->in[2].data + g * dm->nk * dm->d;
    if (rows <= DIRECT_ROWS) {
        direct_rows(&w.t, &j->ro, &j->vo, w.rr, rows, dm->d, (float)dm->scale, k, v, keys, nnz);
        return;
    }
    tile_open(&w.t, w.rr, rows, dm->d, (float)dm->scale);
    for (int64_t c0 = 0; c0 < nnz; c0 += GATHER_KC) {
        int64_t nc = nnz - c0 < GATHER_KC ? nnz - c0 : GATHER_KC;
        gather_chunk(&w.t, w.kbuf, w.vbuf, &j->ro, w.rr, rows, dm->d, k, v, keys + c0, nc, GATHER_KC, NULL);
    }
    tile_close(&w.t, w.rr, rows, dm->d);
}

sl_status sl__cpu_attn_token_sparse(const sl__kargs *a)
{
    const sl_attn_token_params *p = a->params;
    tok_job j = {a, sl__cpu_rowops_for(a->ctx), sl__cpu_vecops_for(a->ctx), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), 0, 0,
                 0, 0, 0};
    if (j.dm.hq == 0 || j.dm.nq == 0)
        return SL_OK;
    j.b = p->rows_per_entry;
    j.n_e = a->in[3].shape[1] - 1;
    j.lists_per = j.dm.hq / a->in[3].shape[0];
    j.bundle = gcd64(j.dm.group, j.lists_per);
    int64_t rows_max = j.bundle * (j.b < j.dm.nq ? j.b : j.dm.nq);
    j.n_sub = (rows_max + GATHER_TQ - 1) / GATHER_TQ;
    return sl__cpu_parallel(a->ctx, j.dm.hq / j.bundle * j.n_e * j.n_sub, tok_item, &j);
}

/* ---- attn.vs_mixed ---- */

/* A work item is (head, query block), as in attn.block_sparse: first the
 * kept blocks (consecutive ones merged into chunks), then the gathered
 * columns of the block's list, minus the pairs the blocks already hold. */
typedef struct vs_job {
    const sl__kargs *a;
    sl__cpu_rowops ro;
    sl__attn_dims dm;
    int64_t bq, bk, n_qb, hm, lists_per, kmax;
} vs_job;

static void vs_item(int64_t item, void *ud, int thread)
{
    const vs_job *j = ud;
    const sl__attn_dims *dm = &j->dm;
    const sl__kargs *a = j->a;
    int64_t h = item % dm->hq, qb = item / dm->hq;
    int64_t r0 = qb * j->bq, rows = dm->nq - r0 < j->bq ? dm->nq - r0 : j->bq;
    int64_t g = h / dm->group, mh = h / (dm->hq / j->hm), lh = h / j->lists_per;
    const float *k = (const float *)a->in[1].data + g * dm->nk * dm->d;
    const float *v = (const float *)a->in[2].data + g * dm->nk * dm->d;
    const int32_t *rp = (const int32_t *)a->in[3].data + mh * (j->n_qb + 1);
    const int32_t *col = a->in[4].data, *part = a->in[5].data;
    const uint8_t *bits = a->in[6].data;
    size_t blk = (size_t)(j->bq * j->bk);
    workspace w = gather_ws_at(a->scratch, thread, j->bq, j->kmax, dm->d);
    for (int64_t t = 0; t < rows; t++)
        ref_options(&w.rr[t], a, 9, dm, h, r0 + t, r0 + t, dm->nq);
    tile_open(&w.t, w.rr, rows, dm->d, (float)dm->scale);
    sl__cpu_run run;
    for (int32_t e = rp[qb]; e < rp[qb + 1];) {
        sl__cpu_next_run(col, part, bits, blk, &e, rp[qb + 1], j->bk, j->kmax, dm->nk, &run);
        int64_t k0 = run.k0, nc = run.nc;
        sl__cpu_tile_scores(&w.t, rows, dm->d, k + k0 * dm->d, nc, j->kmax);
        if (run.any_partial) {
            sl__cpu_chunk_mask cm = {NULL, run.bits, j->bk, 0};
            sl__cpu_tile_mask(&w.t, rows, nc, j->kmax, &cm);
        }
        add_bias(&w.t, w.rr, rows, k0, NULL, nc, j->kmax);
        sl__cpu_tile_update(&w.t, &j->ro, rows, dm->d, v + k0 * dm->d, nc, j->kmax, 0, 0.f);
    }
    const int32_t *lrp = (const int32_t *)a->in[7].data + lh * (j->n_qb + 1);
    const int32_t *keys = (const int32_t *)a->in[8].data + lrp[qb];
    int64_t nnz = lrp[qb + 1] - lrp[qb];
    int32_t e = rp[qb];
    for (int64_t c0 = 0; c0 < nnz; c0 += j->kmax) {
        int64_t nc = nnz - c0 < j->kmax ? nnz - c0 : j->kmax;
        /* Both lists are sorted, so one cursor over the kept blocks finds
         * each column's block. */
        for (int64_t c = 0; c < nc; c++) {
            int64_t kb = keys[c0 + c] / j->bk;
            while (e < rp[qb + 1] && col[e] < kb)
                e++;
            w.dup_part[c] = e < rp[qb + 1] && col[e] == kb ? part[e] : -2;
            w.dup_off[c] = (int32_t)(keys[c0 + c] - kb * j->bk);
        }
        dup_mask dup = {w.dup_part, w.dup_off, bits, j->bq, j->bk};
        gather_chunk(&w.t, w.kbuf, w.vbuf, &j->ro, w.rr, rows, dm->d, k, v, keys + c0, nc, j->kmax, &dup);
    }
    tile_close(&w.t, w.rr, rows, dm->d);
}

sl_status sl__cpu_attn_vs_mixed(const sl__kargs *a)
{
    const sl_attn_vs_params *p = a->params;
    vs_job j = {a, sl__cpu_rowops_for(a->ctx), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), p->bq, p->bk,
                a->in[3].shape[1] - 1, a->in[3].shape[0], 1, sl__cpu_sparse_kmax(p->bk)};
    if (j.dm.hq == 0)
        return SL_OK;
    j.lists_per = j.dm.hq / a->in[7].shape[0];
    return sl__cpu_parallel(a->ctx, j.n_qb * j.dm.hq, vs_item, &j);
}

/* ---- attn.rows ---- */

/* Rows are visited in order of their key limit (per rows head), so a tile's
 * rows need about as many keys as each other; a work item is (head, tile). */
typedef struct rows_job {
    const sl__kargs *a;
    sl__cpu_rowops ro;
    sl__attn_dims dm;
    int64_t hr, n_out, n_tiles;
    const int64_t *order; /* per rows head: (limit << 32 | r), ascending */
} rows_job;

static void rows_item(int64_t item, void *ud, int thread)
{
    const rows_job *j = ud;
    const sl__attn_dims *dm = &j->dm;
    const sl__kargs *a = j->a;
    int64_t h = item % dm->hq, t = j->n_tiles - 1 - item / dm->hq; /* the longest rows first */
    int64_t rh = j->hr == 1 ? 0 : h, g = h / dm->group;
    int64_t i0 = t * ROWS_TQ, rows = j->n_out - i0 < ROWS_TQ ? j->n_out - i0 : ROWS_TQ;
    const int64_t *order = j->order + rh * j->n_out + i0;
    const int32_t *qrow = (const int32_t *)a->in[3].data + rh * j->n_out;
    const float *k = (const float *)a->in[1].data + g * dm->nk * dm->d;
    const float *v = (const float *)a->in[2].data + g * dm->nk * dm->d;
    workspace w = gather_ws_at(a->scratch, thread, ROWS_TQ, ROWS_KC, dm->d);
    int64_t end = 0;
    for (int64_t i = 0; i < rows; i++) {
        int64_t r = order[i] & 0xffffffff, limit = order[i] >> 32;
        ref_options(&w.rr[i], a, 5, dm, h, qrow[r], r, j->n_out);
        w.keep_to[i] = limit;
        end = limit > end ? limit : end;
    }
    tile_open(&w.t, w.rr, rows, dm->d, (float)dm->scale);
    int64_t keep_to[ROWS_TQ];
    for (int64_t j0 = 0; j0 < end; j0 += ROWS_KC) {
        int64_t nc = end - j0 < ROWS_KC ? end - j0 : ROWS_KC;
        sl__cpu_tile_scores(&w.t, rows, dm->d, k + j0 * dm->d, nc, ROWS_KC);
        int masked = 0;
        for (int64_t i = 0; i < rows; i++) {
            keep_to[i] = w.keep_to[i] - j0;
            masked |= keep_to[i] < nc;
        }
        if (masked) {
            sl__cpu_chunk_mask cm = {keep_to, NULL, 0, 0};
            sl__cpu_tile_mask(&w.t, rows, nc, ROWS_KC, &cm);
        }
        add_bias(&w.t, w.rr, rows, j0, NULL, nc, ROWS_KC);
        sl__cpu_tile_update(&w.t, &j->ro, rows, dm->d, v + j0 * dm->d, nc, ROWS_KC, 0, 0.f);
    }
    tile_close(&w.t, w.rr, rows, dm->d);
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

sl_status sl__cpu_attn_rows(const sl__kargs *a)
{
    const sl_attn_rows_params *p = a->params;
    rows_job j = {a, sl__cpu_rowops_for(a->ctx), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), a->in[3].shape[0],
                  a->in[3].shape[1], 0, a->scratch};
    if (j.dm.hq == 0 || j.n_out == 0)
        return SL_OK;
    j.n_tiles = (j.n_out + ROWS_TQ - 1) / ROWS_TQ;
    int64_t *order = a->scratch;
    const int32_t *limits = a->in[4].data;
    for (int64_t rh = 0; rh < j.hr; rh++) {
        for (int64_t r = 0; r < j.n_out; r++)
            order[rh * j.n_out + r] = (int64_t)limits[rh * j.n_out + r] << 32 | r;
        qsort(order + rh * j.n_out, (size_t)j.n_out, sizeof *order, cmp_i64);
    }
    sl__kargs shifted = *a; /* the tiles' workspaces follow the order */
    shifted.scratch = (char *)a->scratch + round64((size_t)(j.hr * j.n_out) * sizeof(int64_t));
    j.a = &shifted;
    return sl__cpu_parallel(a->ctx, j.n_tiles * j.dm.hq, rows_item, &j);
}

/* ---- attn.lse_merge ---- */

#define MERGE_ROWS 1024 /* rows per work item */

typedef struct merge_job {
    const sl__kargs *a;
    int64_t d, rows;
} merge_job;

static void merge_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const merge_job *j = ud;
    const float *o1 = j->a->in[0].data, *l1 = j->a->in[1].data, *o2 = j->a->in[2].data, *l2 = j->a->in[3].data;
    float *o = j->a->out[0].data, *lse = j->a->out[1].data;
    int64_t end = (item + 1) * MERGE_ROWS < j->rows ? (item + 1) * MERGE_ROWS : j->rows;
    for (int64_t i = item * MERGE_ROWS; i < end; i++) {
        float x = l1[i], y = l2[i], m = x > y ? x : y;
        if (m == -INFINITY) {
            memset(o + i * j->d, 0, (size_t)j->d * sizeof(float));
            lse[i] = -INFINITY;
            continue;
        }
        /* An empty side has weight exactly 0; the other then passes through. */
        float w1 = expf(x - m), w2 = expf(y - m), sum = w1 + w2;
        w1 /= sum;
        w2 /= sum;
        for (int64_t c = 0; c < j->d; c++)
            o[i * j->d + c] = w1 * o1[i * j->d + c] + w2 * o2[i * j->d + c];
        lse[i] = m + logf(sum);
    }
}

sl_status sl__cpu_attn_lse_merge(const sl__kargs *a)
{
    const sl_tensor *o1 = &a->in[0];
    merge_job j = {a, o1->ndim ? o1->shape[o1->ndim - 1] : 1, sl_tensor_numel(&a->in[1])};
    return sl__parallel_for(a->ctx, (j.rows + MERGE_ROWS - 1) / MERGE_ROWS, sl_ctx_threads(a->ctx), merge_item, &j);
}

static size_t gather_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    int64_t d = in[0].ndim == 3 ? in[0].shape[2] : 0;
    switch (op) {
    case SL_OP_ATTN_TOKEN_SPARSE: return ws_bytes(GATHER_TQ, GATHER_KC, d) * (size_t)n_threads;
    case SL_OP_ATTN_VS_MIXED: {
        const sl_attn_vs_params *p = params;
        return ws_bytes(p->bq, sl__cpu_sparse_kmax(p->bk), d) * (size_t)n_threads;
    }
    case SL_OP_ATTN_ROWS:
        return round64((size_t)sl_tensor_numel(&in[3]) * sizeof(int64_t)) +
               ws_bytes(ROWS_TQ, ROWS_KC, d) * (size_t)n_threads;
    default: return 0;
    }
}

/* ---- attn.linear ---- */

static inline float phi(float x, int feature) { return feature == 0 ? (x > 0.f ? x + 1.f : expf(x)) : (x > 0.f ? x : 0.f); }

typedef struct lin_job {
    const sl__kargs *a;
    sl__attn_dims dm;
} lin_job;

/* One query head: keys are folded into (S, z) as the rows' limits grow. */
static void lin_item(int64_t h, void *ud, int thread)
{
    const lin_job *j = ud;
    const sl__kargs *a = j->a;
    const sl__attn_dims *dm = &j->dm;
    const sl_attn_linear_params *p = a->params;
    int64_t d = dm->d, g = h / dm->group;
    double *S = (double *)a->scratch + (size_t)thread * (size_t)(d * d + 3 * d), *z = S + d * d, *fq = z + d, *fk = fq + d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    const float *q = (const float *)a->in[0].data + h * dm->nq * d;
    float *o = (float *)a->out[0].data + h * dm->nq * d;
    int feature = (int)p->feature;
    memset(S, 0, (size_t)(d * d + d) * sizeof *S);
    int64_t seen = 0;
    for (int64_t r = 0; r < dm->nq; r++) {
        int64_t lim = p->causal ? dm->offset + r + 1 : dm->nk;
        for (; seen < lim; seen++) {
            const float *kj = k + seen * d, *vj = v + seen * d;
            for (int64_t c = 0; c < d; c++)
                fk[c] = phi(kj[c], feature);
            for (int64_t c = 0; c < d; c++) {
                double f = fk[c];
                double *Sr = S + c * d;
                z[c] += f;
                for (int64_t e = 0; e < d; e++)
                    Sr[e] += f * (double)vj[e];
            }
        }
        const float *qr = q + r * d;
        double den = 0;
        for (int64_t c = 0; c < d; c++) {
            fq[c] = phi(qr[c], feature);
            den += fq[c] * z[c];
        }
        float *orow = o + r * d;
        if (!(den > 0)) {
            memset(orow, 0, (size_t)d * sizeof *orow);
            continue;
        }
        /* o = fq^T S / den, accumulated row by row of S (contiguous) */
        double *acc = fk; /* fk is free until the next key */
        memset(acc, 0, (size_t)d * sizeof *acc);
        for (int64_t c = 0; c < d; c++) {
            double f = fq[c];
            const double *Sr = S + c * d;
            for (int64_t e = 0; e < d; e++)
                acc[e] += f * Sr[e];
        }
        for (int64_t e = 0; e < d; e++)
            orow[e] = (float)(acc[e] / den);
    }
}

sl_status sl__cpu_attn_linear(const sl__kargs *a)
{
    lin_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], 0)};
    return sl__parallel_for(a->ctx, j.dm.hq, sl_ctx_threads(a->ctx), lin_item, &j);
}

/* ---- attn.pooled_kv ---- */

#define MAX_LEVEL_LOG 12 /* levels up to 2^12 = 4096 = the largest bk */

/* Where level 2^e's pooled keys live in the scratch: per kv head and key
 * block, G = ceil(bk / 2^e) slots of k (d floats), v (d floats) and log c. */
typedef struct pooled_layout {
    int64_t off[MAX_LEVEL_LOG + 1]; /* float offset of level 2^e (e >= 1); -1 when unused */
    int64_t slots[MAX_LEVEL_LOG + 1];
    size_t floats;                  /* pooled part */
    size_t tile_floats;             /* one thread's tile */
} pooled_layout;

static pooled_layout pooled_plan(const sl_attn_pooled_params *p, const sl_tensor *in)
{
    pooled_layout L;
    int64_t hkv = in[1].shape[0], nk = in[1].shape[1], d = in[0].shape[2], nkb = (nk + p->bk - 1) / p->bk;
    int used[MAX_LEVEL_LOG + 1] = {0};
    const uint8_t *lv = in[3].data;
    for (int64_t i = 0; i < sl_tensor_numel(&in[3]); i++)
        for (int e = 1; e <= MAX_LEVEL_LOG; e++)
            if (lv[i] == (1 << e))
                used[e] = 1;
    L.floats = 0;
    for (int e = 0; e <= MAX_LEVEL_LOG; e++) {
        L.off[e] = -1;
        L.slots[e] = 0;
        if (e == 0 || !used[e])
            continue;
        L.slots[e] = (p->bk + (1 << e) - 1) >> e;
        L.off[e] = (int64_t)L.floats;
        L.floats += (size_t)(hkv * nkb * L.slots[e] * (2 * d + 1));
    }
    L.floats = (L.floats + 15) / 16 * 16;
    L.tile_floats = (sl__cpu_tile_floats(p->bq, p->bk, d) + 15) / 16 * 16;
    return L;
}

typedef struct pooled_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    pooled_layout L;
    sl__cpu_rowops ro;
    int64_t nqb, nkb, hm, n_used;
    int used_e[MAX_LEVEL_LOG];
} pooled_job;

/* Pointers of block c's slots at level 2^e for kv head g: k [G, d], v [G, d], logc [G]. */
static void slot_ptrs(const pooled_job *j, int e, int64_t g, int64_t c, float **k, float **v, float **lc)
{
    int64_t d = j->dm.d, G = j->L.slots[e];
    float *base = (float *)j->a->scratch + j->L.off[e];
    int64_t blocks = j->dm.hkv * j->nkb, at = g * j->nkb + c;
    *k = base + at * G * d;
    *v = base + blocks * G * d + at * G * d;
    *lc = base + 2 * blocks * G * d + at * G;
}

/* Item (level in use, kv head): pools every block of that head. */
static void pool_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const pooled_job *j = ud;
    const sl_attn_pooled_params *p = j->a->params;
    int e = j->used_e[item % j->n_used];
    int64_t g = item / j->n_used, d = j->dm.d, nk = j->dm.nk, s = (int64_t)1 << e;
    const float *K = (const float *)j->a->in[1].data + g * nk * d, *V = (const float *)j->a->in[2].data + g * nk * d;
    for (int64_t c = 0; c < j->nkb; c++) {
        float *pk, *pv, *lc;
        slot_ptrs(j, e, g, c, &pk, &pv, &lc);
        int64_t end = (c + 1) * p->bk < nk ? (c + 1) * p->bk : nk;
        for (int64_t t = 0, j0 = c * p->bk; j0 < end; t++, j0 += s) {
            int64_t j1 = j0 + s < end ? j0 + s : end, cnt = j1 - j0;
            float *kt = pk + t * d, *vt = pv + t * d;
            memset(kt, 0, (size_t)d * sizeof *kt);
            memset(vt, 0, (size_t)d * sizeof *vt);
            for (int64_t jj = j0; jj < j1; jj++)
                for (int64_t x = 0; x < d; x++) {
                    kt[x] += K[jj * d + x];
                    vt[x] += V[jj * d + x];
                }
            float inv = 1.f / (float)cnt;
            for (int64_t x = 0; x < d; x++) {
                kt[x] *= inv;
                vt[x] *= inv;
            }
            lc[t] = logf((float)cnt);
        }
    }
}

/* Item (query head, query block): the flash tile over every kept block. */
static void pooled_item(int64_t item, void *ud, int thread)
{
    const pooled_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_attn_pooled_params *p = a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item % dm->hq, qb = item / dm->hq, d = dm->d;
    int64_t r0 = qb * p->bq, rows = dm->nq - r0 < p->bq ? dm->nq - r0 : p->bq;
    int64_t g = h / dm->group, mh = h / (dm->hq / j->hm);
    sl__cpu_tile w = sl__cpu_tile_make((float *)a->scratch + j->L.floats + (size_t)thread * j->L.tile_floats, p->bq,
                                       p->bk, d);
    const float *q = (const float *)a->in[0].data + (h * dm->nq + r0) * d;
    for (int64_t i = 0; i < rows * d; i++)
        w.qs[i] = q[i] * (float)dm->scale;
    sl__cpu_tile_reset(&w, rows, d);
    const uint8_t *lv = (const uint8_t *)a->in[3].data + (mh * j->nqb + qb) * j->nkb;
    const float *K = (const float *)a->in[1].data + g * dm->nk * d, *V = (const float *)a->in[2].data + g * dm->nk * d;
    for (int64_t c = 0; c < j->nkb; c++) {
        int64_t s = lv[c];
        if (!s)
            continue;
        int64_t k0 = c * p->bk, len = dm->nk - k0 < p->bk ? dm->nk - k0 : p->bk;
        /* causal: skip a block no row of the tile sees at all */
        if (p->causal && k0 + (s < len ? s : len) - 1 > dm->offset + r0 + rows - 1)
            continue;
        const float *kp = K + k0 * d, *vp = V + k0 * d, *lc = NULL;
        int64_t nc = len;
        if (s > 1) {
            int e = 0;
            while (((int64_t)1 << e) < s)
                e++;
            float *pk, *pv, *plc;
            slot_ptrs(j, e, g, c, &pk, &pv, &plc);
            kp = pk, vp = pv, lc = plc;
            nc = (len + s - 1) / s;
        }
        sl__cpu_tile_scores(&w, rows, d, kp, nc, p->bk);
        for (int64_t r = 0; r < rows; r++) {
            float *sr = w.s + r * p->bk;
            int64_t pos = dm->offset + r0 + r;
            for (int64_t t = 0; t < nc; t++) {
                int64_t last = k0 + ((t + 1) * s < len ? (t + 1) * s : len) - 1;
                if (p->causal && last > pos)
                    sr[t] = -INFINITY;
                else if (lc)
                    sr[t] += lc[t];
            }
        }
        sl__cpu_tile_update(&w, &j->ro, rows, d, vp, nc, p->bk, 0, 0.f);
    }
    float *o = (float *)a->out[0].data + (h * dm->nq + r0) * d, *lse = (float *)a->out[1].data + h * dm->nq + r0;
    for (int64_t r = 0; r < rows; r++)
        sl__cpu_tile_end_row(&w, r, d, o + r * d, lse + r);
}

sl_status sl__cpu_attn_pooled_kv(const sl__kargs *a)
{
    const sl_attn_pooled_params *p = a->params;
    pooled_job j = {.a = a, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), .L = pooled_plan(p, a->in),
                    .ro = sl__cpu_rowops_for(a->ctx)};
    j.nqb = a->in[3].shape[1];
    j.nkb = a->in[3].shape[2];
    j.hm = a->in[3].shape[0];
    for (int e = 1; e <= MAX_LEVEL_LOG; e++)
        if (j.L.off[e] >= 0)
            j.used_e[j.n_used++] = e;
    if (j.dm.hq == 0 || j.dm.nq == 0)
        return SL_OK;
    sl_status s = SL_OK;
    if (j.n_used)
        s = sl__parallel_for(a->ctx, j.dm.hkv * j.n_used, sl_ctx_threads(a->ctx), pool_item, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, j.dm.hq * j.nqb, pooled_item, &j);
    return s;
}

static size_t pooled_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    switch (op) {
    case SL_OP_ATTN_LINEAR: {
        int64_t d = in[0].shape[2];
        return (size_t)n_threads * (size_t)(d * d + 3 * d) * sizeof(double);
    }
    case SL_OP_ATTN_POOLED_KV: {
        pooled_layout L = pooled_plan(params, in);
        return (L.floats + (size_t)n_threads * L.tile_floats) * sizeof(float);
    }
    default: return 0;
    }
}

/* ---- attn.bucket ---- */

typedef struct bucket_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    sl__cpu_vecops vo;
    int32_t *order;  /* per query head: key indices sorted by (bucket, index) */
    float *work;     /* per thread: n_k scores + n_k key indices (as int32) + d accumulators */
    int64_t per_thread;
} bucket_job;

typedef struct key_sort {
    const int32_t *kb;
} key_sort;

static int cmp_key(const void *x, const void *y, void *ud)
{
    const int32_t *kb = ((const key_sort *)ud)->kb;
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    if (kb[a] != kb[b])
        return kb[a] < kb[b] ? -1 : 1;
    return (a > b) - (a < b);
}

/* qsort_r is not C11; a small merge sort keeps the order stable and portable. */
static void sort_keys(int32_t *v, int32_t *tmp, int64_t n, const int32_t *kb)
{
    key_sort ks = {kb};
    for (int64_t w = 1; w < n; w *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * w) {
            int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n, a = lo, b = mid, o = lo;
            while (a < mid && b < hi)
                tmp[o++] = cmp_key(&v[b], &v[a], &ks) < 0 ? v[b++] : v[a++];
            while (a < mid)
                tmp[o++] = v[a++];
            while (b < hi)
                tmp[o++] = v[b++];
        }
        memcpy(v, tmp, sizeof *v * (size_t)n);
    }
}

static void bucket_sort_head(int64_t h, void *ud, int thread)
{
    const bucket_job *j = ud;
    int64_t nk = j->dm.nk;
    int32_t *v = j->order + h * nk, *tmp = (int32_t *)(j->work + (size_t)thread * (size_t)j->per_thread);
    for (int64_t t = 0; t < nk; t++)
        v[t] = (int32_t)t;
    sort_keys(v, tmp, nk, (const int32_t *)j->a->in[4].data + h * nk);
}

static void bucket_row(int64_t item, void *ud, int thread)
{
    const bucket_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_attn_bucket_params *p = a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / dm->nq, i = item % dm->nq, d = dm->d, nk = dm->nk;
    float *s = j->work + (size_t)thread * (size_t)j->per_thread;
    int32_t *key = (int32_t *)(s + nk);
    float *acc = s + 2 * nk;
    const float *q = (const float *)a->in[0].data + item * d;
    const float *K = (const float *)a->in[1].data + (h / dm->group) * nk * d;
    const float *V = (const float *)a->in[2].data + (h / dm->group) * nk * d;
    int64_t jmax = p->causal ? dm->offset + i + 1 : nk;
    int64_t n = 0;
    if (a->in[3].buf) {
        /* the query's bucket is a run of the sorted keys, in index order */
        const int32_t *kb = (const int32_t *)a->in[4].data + h * nk, *ord = j->order + h * nk;
        int32_t b = ((const int32_t *)a->in[3].data)[item];
        int64_t lo = 0, hi = nk;
        while (lo < hi) {
            int64_t mid = (lo + hi) / 2;
            if (kb[ord[mid]] < b)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (int64_t e = lo; e < nk && kb[ord[e]] == b && ord[e] < jmax; e++)
            key[n++] = ord[e];
    } else
        for (int64_t t = 0; t < jmax; t++)
            key[n++] = (int32_t)t;
    float mx = -INFINITY, sc = (float)dm->scale;
    int64_t m = 0;
    for (int64_t e = 0; e < n; e++) {
        float x = j->vo.dot(q, K + (int64_t)key[e] * d, d) * sc;
        if (p->use_tau && (double)x < p->tau)
            continue;
        key[m] = key[e];
        s[m++] = x;
        mx = x > mx ? x : mx;
    }
    float *o = (float *)a->out[0].data + item * d;
    for (int64_t c = 0; c < d; c++)
        acc[c] = 0;
    double z = 0;
    for (int64_t e = 0; e < m; e++) {
        float w = expf(s[e] - mx);
        z += w;
        j->vo.axpy(acc, V + (int64_t)key[e] * d, d, w);
    }
    for (int64_t c = 0; c < d; c++)
        o[c] = m ? (float)(acc[c] / z) : 0.f;
    ((float *)a->out[1].data)[item] = m ? (float)(mx + log(z)) : -INFINITY;
    ((int32_t *)a->out[2].data)[item] = (int32_t)m;
}

sl_status sl__cpu_attn_bucket(const sl__kargs *a)
{
    const sl_attn_bucket_params *p = a->params;
    bucket_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), sl__cpu_vecops_for(a->ctx), NULL, NULL, 0};
    int nt = sl_ctx_threads(a->ctx);
    nt = nt > 0 ? nt : 1;
    j.per_thread = 2 * j.dm.nk + j.dm.d + 16;
    size_t wbytes = sizeof(float) * (size_t)j.per_thread * (size_t)nt;
    size_t obytes = a->in[3].buf ? sizeof(int32_t) * (size_t)(j.dm.hq * j.dm.nk) : 0;
    j.work = sl_ctx_alloc(a->ctx, wbytes);
    if (obytes)
        j.order = sl_ctx_alloc(a->ctx, obytes);
    sl_status s = SL_OK;
    if (!j.work || (obytes && !j.order))
        s = sl_ctx_fail(a->ctx, SL_ENOMEM, "attn.bucket[cpu]: out of memory for %zu bytes", wbytes + obytes);
    if (s == SL_OK && obytes)
        s = sl__cpu_parallel(a->ctx, j.dm.hq, bucket_sort_head, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, j.dm.hq * j.dm.nq, bucket_row, &j);
    if (j.work)
        sl_ctx_dealloc(a->ctx, j.work, wbytes);
    if (j.order)
        sl_ctx_dealloc(a->ctx, j.order, obytes);
    return s;
}


size_t sl__cpu_attn_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    switch (op) {
    case SL_OP_ATTN_DENSE:
    case SL_OP_ATTN_BLOCK_SPARSE: return flash_scratch(op, params, in, n_threads);
    case SL_OP_ATTN_TOKEN_SPARSE:
    case SL_OP_ATTN_VS_MIXED:
    case SL_OP_ATTN_ROWS: return gather_scratch(op, params, in, n_threads);
    case SL_OP_ATTN_LINES: return sl__cpu_attn_lines_scratch(in, n_threads);
    case SL_OP_ATTN_LINEAR:
    case SL_OP_ATTN_POOLED_KV: return pooled_scratch(op, params, in, n_threads);
    default: return 0;
    }
}
