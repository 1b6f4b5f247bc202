/* cpu/sparse.c — executors over gathered keys and chosen rows on the CPU
 * (attn.token_sparse, attn.vs_mixed, attn.rows) and attn.lse_merge, built on
 * the flash tile of cpu/attn.c. Gathered keys are copied into a contiguous
 * chunk so the scores and P·V stay two sgemms; decode-sized items (a few
 * query rows sharing one list) instead stream the listed K/V rows straight
 * from the cache with software prefetch, since there the cost is the memory
 * read and nothing else. Work items run on our thread pool. */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

static workspace ws_at(void *scratch, int thread, int64_t tq, int64_t kc, int64_t d)
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
    workspace w = ws_at(a->scratch, thread, GATHER_TQ, GATHER_KC, dm->d);
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
    tok_job j = {a, sl__cpu_rowops_get(), sl__cpu_vecops_get(), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), 0, 0,
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
    workspace w = ws_at(a->scratch, thread, j->bq, j->kmax, dm->d);
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
    vs_job j = {a, sl__cpu_rowops_get(), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), p->bq, p->bk,
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
    workspace w = ws_at(a->scratch, thread, ROWS_TQ, ROWS_KC, dm->d);
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
    rows_job j = {a, sl__cpu_rowops_get(), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), a->in[3].shape[0],
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

size_t sl__cpu_sparse_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
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
