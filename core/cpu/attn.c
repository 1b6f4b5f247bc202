/* cpu/attn.c — flash-style attention executors on the CPU (attn.dense,
 * attn.block_sparse): per (head, query tile) work items on our thread pool,
 * scores of a key chunk by one OpenBLAS sgemm, online softmax with the
 * vectorised row operations of rowops.c, P·V by a second sgemm. Never materialises N×N.
 * The tile steps are shared with cpu/sparse.c through cpu.h. */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
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

void sl__cpu_tile_mask(sl__cpu_tile *w, int64_t rows, int64_t nc, int64_t ld_s, const sl__cpu_chunk_mask *cm)
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
                for (int64_t j = 0; j < width; j++)
                    if (!b[j])
                        s[c * cm->bk + j] = -INFINITY;
            }
    }
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

void sl__cpu_tile_update(sl__cpu_tile *w, const sl__cpu_rowops *ro, int64_t rows, int64_t d, const float *v, int64_t nc,
                         int64_t ld_s, int64_t pv_bk, float pv_skip)
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
    if (any_p) /* with pv_skip a chunk may have nothing left to multiply */
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
        sl__cpu_tile_mask(w, rows, nc, ld_s, cm);
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
    dense_job j = {a, sl__cpu_rowops_get(), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), (int)p->causal, 0};
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
 * chunk gathered from several runs. */
static size_t sparse_ws_floats(int64_t bq, int64_t kmax, int64_t d)
{
    return sl__cpu_tile_floats(bq, kmax, d) + (size_t)(2 * kmax * d);
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
    float *kbuf = base + sl__cpu_tile_floats(j->bq, j->kmax, d), *vbuf = kbuf + j->kmax * d;
    tile_begin(&w, q, rows, d, (float)dm->scale);
    sl__cpu_run run;
    const uint8_t *chunk_bits[SL__CPU_MAX_CHUNK_BLOCKS];
    for (int32_t e = rp[qb]; e < rp[qb + 1];) {
        /* One chunk: runs of consecutive kept blocks until kmax keys. A run
         * alone is read in place; several are copied side by side, so that
         * scattered blocks still make one product of kmax keys instead of
         * one small product each (the profile's packing and call overhead). */
        int64_t used = 0, n_blk = 0, n_runs = 0, k0 = 0;
        int any_partial = 0;
        while (e < rp[qb + 1] && used + j->bk <= j->kmax) {
            sl__cpu_next_run(col, part, bits, blk, &e, rp[qb + 1], j->bk, j->kmax - used, dm->nk, &run);
            if (n_runs == 0)
                k0 = run.k0;
            else {
                if (n_runs == 1) {
                    memcpy(kbuf, k + k0 * d, (size_t)(used * d) * sizeof(float));
                    memcpy(vbuf, v + k0 * d, (size_t)(used * d) * sizeof(float));
                }
                memcpy(kbuf + used * d, k + run.k0 * d, (size_t)(run.nc * d) * sizeof(float));
                memcpy(vbuf + used * d, v + run.k0 * d, (size_t)(run.nc * d) * sizeof(float));
            }
            memcpy(chunk_bits + n_blk, run.bits, (size_t)run.n_blocks * sizeof *chunk_bits);
            n_blk += run.n_blocks;
            any_partial |= run.any_partial;
            used += run.nc;
            n_runs++;
        }
        sl__cpu_chunk_mask cm = {NULL, chunk_bits, j->bk, 0};
        const float *kc = n_runs > 1 ? kbuf : k + k0 * d, *vc = n_runs > 1 ? vbuf : v + k0 * d;
        tile_chunk(&w, &j->ro, rows, d, kc, vc, used, j->kmax, any_partial ? &cm : NULL, j->pv_skip > 0 ? j->bk : 0,
                   (float)j->pv_skip);
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
    sparse_job j = {a, sl__cpu_rowops_get(), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), p->bq, p->bk, a->in[3].shape[1] - 1,
                    a->in[3].shape[0], sl__cpu_sparse_kmax(p->bk), p->pv_skip};
    return sl__cpu_parallel(a->ctx, j.n_qb * j.dm.hq, sparse_item, &j);
}

size_t sl__cpu_attn_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    int64_t d = in[0].shape[2];
    if (op == SL_OP_ATTN_DENSE)
        return sl__cpu_tile_floats(DENSE_BQ, DENSE_BK, d) * sizeof(float) * (size_t)n_threads;
    const sl_attn_block_params *p = params;
    return sparse_ws_floats(p->bq, sl__cpu_sparse_kmax(p->bk), d) * sizeof(float) * (size_t)n_threads;
}
