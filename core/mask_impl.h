/* mask_impl.h — what the mask files share (mask.c, mask_pattern.c,
 * mask_algebra.c, mask_convert.c): block geometry, the canonical block
 * builder that every constructor goes through, and reading a mask row. */
#ifndef SL_MASK_IMPL_H
#define SL_MASK_IMPL_H

#include "internal.h"

enum { SL__BLK_EMPTY = 0, SL__BLK_FULL = 1, SL__BLK_PARTIAL = 2 };

/* Geometry of a block mask; offset = n_k - n_q is the first query position. */
typedef struct sl__mgeom {
    int64_t n_q, n_k, offset;
    int bq, bk;
    int64_t n_qb, n_kb;
} sl__mgeom;

sl__mgeom sl__mgeom_make(int64_t n_q, int64_t n_k, int bq, int bk);
static inline sl__mgeom sl__mgeom_of(const sl_mask *m) { return sl__mgeom_make(m->n_q, m->n_k, m->bq, m->bk); }
/* Rows of query block r and keys of key block c after clipping. */
static inline int64_t sl__mg_rows(const sl__mgeom *g, int64_t r)
{
    return g->n_q - r * g->bq < g->bq ? g->n_q - r * g->bq : g->bq;
}
static inline int64_t sl__mg_cols(const sl__mgeom *g, int64_t c)
{
    return g->n_k - c * g->bk < g->bk ? g->n_k - c * g->bk : g->bk;
}

/* SL_ESHAPE / SL_EARG with a message starting with fn when the sizes cannot
 * make a block mask (0 <= n_q <= n_k, blocks in [1, 4096], i32 block counts). */
sl_status sl__mask_check_geometry(sl_ctx *ctx, const char *fn, int64_t n_q, int64_t n_k, int bq, int bk);
/* Allocates the four tensors of m (sizes already set); releases m on failure. */
sl_status sl__mask_alloc(sl_ctx *ctx, sl_mask *m, int64_t nnz, int64_t n_part);

static inline const int32_t *sl__mask_rows(const sl_mask *m, int h)
{
    return (const int32_t *)m->row_ptr.data + (int64_t)(m->n_heads == 1 ? 0 : h) * (m->n_qb + 1);
}
static inline const uint8_t *sl__mask_part_bits(const sl_mask *m, int32_t part)
{
    return (const uint8_t *)m->bits.data + (size_t)part * (size_t)m->bq * (size_t)m->bk;
}

/* Marks the keys that mask head h keeps for row `row` in keep[0..n_k)
 * (sets 1, never clears). */
void sl__mask_row_keys(const sl_mask *m, int h, int64_t row, uint8_t *keep);

/* ---- the builder ----------------------------------------------------------
 * A producer describes one row of blocks (head h, query block r) by calling
 * sl__mb_emit in ascending key-block order. The builder calls every producer
 * row twice (count, then fill), in parallel, so a producer must be
 * deterministic and may only write to its scratch. emit classifies: bits of
 * an SL__BLK_PARTIAL block (bq × bk, row-major) are counted inside the
 * clipped area, so an emitted block that turns out empty is dropped and one
 * that turns out all kept becomes full; the output is canonical. */
/* Partial blocks of one row with equal bits share one part (issue 19: a
 * column or row pattern repeated along a query block — global tokens,
 * timestamps — made n²/(bq·bk) copies of a few tiles): the row remembers
 * its last SL__MB_RECENT distinct partial blocks by a 128-bit hash, the
 * same decisions in the count and the fill pass; the fill pass compares the
 * bits before it shares (a mismatch is reported as a builder fault). */
#define SL__MB_RECENT 16
typedef struct sl__mb_sink {
    const sl__mgeom *g;
    int fill;             /* 0: count pass; 1: fill pass */
    int64_t r;
    int64_t nnz, n_part;  /* count pass: totals of this row; fill pass: next slots */
    int64_t nnz_end, part_end; /* fill pass: where this row's slots end */
    int32_t *col, *part;
    uint8_t *bits;
    uint64_t recent_hash[SL__MB_RECENT][2];
    int64_t recent_part[SL__MB_RECENT]; /* n_part when the block was first seen */
    int n_recent, bad;
} sl__mb_sink;

void sl__mb_emit(sl__mb_sink *s, int64_t c, int cls, const uint8_t *bits);

/* sl__mb_emit in two steps, for a producer that emits the same bits many
 * times (issue 20, session 5: from_blocks' causal diagonal tiles): the
 * summary (kept pairs of the clipped area and the 128-bit hash of the bits
 * of key block c in the sink's row) once, then sl__mb_emit_known with it —
 * exactly what sl__mb_emit(s, c, SL__BLK_PARTIAL, bits) does. */
void sl__mb_summary(const sl__mb_sink *s, int64_t c, const uint8_t *bits, int64_t *kept, uint64_t h[2]);
void sl__mb_emit_known(sl__mb_sink *s, int64_t c, const uint8_t *bits, int64_t kept, const uint64_t h[2]);

/* sl__mb_emit(s, c, SL__BLK_FULL, NULL) for every c in [0, c_end) with
 * keep[c · stride] != 0, in one loop (from_blocks' causally full prefix). */
void sl__mb_emit_full_run(sl__mb_sink *s, const uint8_t *keep, int64_t stride, int64_t c_end);

typedef void (*sl__mb_row_fn)(void *ud, void *scratch, int head, int64_t r, sl__mb_sink *sink);

/* Builds an n_heads mask of geometry g row by row. scratch_bytes of scratch
 * per thread (64-byte aligned; its first 64 bytes zeroed once per build,
 * the rest uninitialised). fn names the caller in
 * messages. On failure *out is zeroed. */
sl_status sl__mask_build(sl_ctx *ctx, const char *fn, int n_heads, const sl__mgeom *g, sl__mb_row_fn row, void *ud,
                         size_t scratch_bytes, sl_mask *out);

/* ---- a row workspace: one query block's key blocks as bit slots ----------
 * For producers that scatter pairs (permute, resize, from_bits, ...): slot c
 * holds the bq × bk bits of key block c; touching a slot zeroes it first. */
typedef struct sl__mb_slots {
    uint8_t *bits;     /* n_kb × bq × bk */
    uint8_t *state;    /* n_kb: 0 untouched, 1 bits, 2 full */
    int64_t n_kb;
    size_t blk;
} sl__mb_slots;

size_t sl__mb_slots_bytes(const sl__mgeom *g);
sl__mb_slots sl__mb_slots_at(const sl__mgeom *g, void *scratch);
static inline uint8_t *sl__mb_slot(sl__mb_slots *s, int64_t c)
{
    uint8_t *p = s->bits + (size_t)c * s->blk;
    if (s->state[c] == 0) {
        for (size_t i = 0; i < s->blk; i++)
            p[i] = 0;
        s->state[c] = 1;
    }
    return p;
}
/* Emits every touched slot in order and resets the workspace. */
void sl__mb_slots_flush(sl__mb_slots *s, sl__mb_sink *sink);

#endif
