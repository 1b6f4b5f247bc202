/* cpu/cpu.h — what the cpu backend's files share: the vectorised row
 * operations (rowops.c), the flash tile of the attention executors
 * (attn.c) and the kernel declarations (generated from ops.def). The
 * parallel-for is in parallel.h. */
#ifndef SL_CPU_H
#define SL_CPU_H

#include "rowops.h"

/* ---- the flash tile (cpu/attn.c), shared by the executors ----
 * A tile is a few query rows against chunks of keys: qs holds the scaled
 * queries [bq, d], s the scores of one chunk [bq, ld_s], acc the unnormalised
 * output [bq, d], m and l the running max and sum of each row. */
typedef struct sl__cpu_tile {
    float *qs, *s, *acc, *m, *l;
} sl__cpu_tile;

/* Floats a tile of bq rows, chunks up to kmax keys and head_dim d takes. */
size_t sl__cpu_tile_floats(int64_t bq, int64_t kmax, int64_t d);
sl__cpu_tile sl__cpu_tile_make(float *base, int64_t bq, int64_t kmax, int64_t d);
/* Every row empty: m = -inf, l = 0, acc = 0. */
void sl__cpu_tile_reset(sl__cpu_tile *w, int64_t rows, int64_t d);
/* Row a continues from a finished pass (O, L): (m, l, acc) = (L, 1, O). */
void sl__cpu_tile_state(sl__cpu_tile *w, int64_t a, int64_t d, const float *o, float lse);
/* s = qs · k^T for nc contiguous key rows. */
void sl__cpu_tile_scores(sl__cpu_tile *w, int64_t rows, int64_t d, const float *k, int64_t nc, int64_t ld_s);

/* Which scores of a chunk to drop: row a keeps keys [0, keep_to[a]) when
 * keep_to is set; with bits, key block c of the chunk (bk keys) keeps the
 * pairs its bq x bk bits allow (bits[c] NULL: all), rows counted from row0. */
typedef struct sl__cpu_chunk_mask {
    const int64_t *keep_to;
    const uint8_t *const *bits;
    int64_t bk;
    int64_t row0;
} sl__cpu_chunk_mask;

void sl__cpu_tile_mask(sl__cpu_tile *w, int64_t rows, int64_t nc, int64_t ld_s, const sl__cpu_chunk_mask *cm);

/* The most key blocks one chunk may hold when pv_skip is on. */
#define SL__CPU_MAX_CHUNK_BLOCKS 512

/* A run of consecutive kept key blocks of one (head, query block), merged
 * into one chunk of keys [k0, k0 + nc) of at most kmax keys. */
typedef struct sl__cpu_run {
    int64_t k0, nc;
    int64_t n_blocks;
    int any_partial;
    const uint8_t *bits[SL__CPU_MAX_CHUNK_BLOCKS]; /* per block: its token bits, NULL when full */
} sl__cpu_run;

/* Takes the next run from the block-mask entries [*e, end) (col, part and
 * bits as in the block form; blk = bq·bk), advancing *e. */
void sl__cpu_next_run(const int32_t *col, const int32_t *part, const uint8_t *bits, size_t blk, int32_t *e,
                      int32_t end, int64_t bk, int64_t kmax, int64_t nk, sl__cpu_run *run);

/* Folds the (masked, biased) scores in s into the running softmax and adds
 * P·V for nc contiguous value rows. pv_bk > 0 applies SpargeAttn's PV skip
 * over key blocks of pv_bk keys (the chunk starts on a block boundary). */
void sl__cpu_tile_update(sl__cpu_tile *w, const sl__cpu_rowops *ro, int64_t rows, int64_t d, const float *v, int64_t nc,
                         int64_t ld_s, int64_t pv_bk, float pv_skip);
/* Writes row a: O = acc / l and L = m + log l, or O = 0 and L = -inf when empty. */
void sl__cpu_tile_end_row(const sl__cpu_tile *w, int64_t a, int64_t d, float *o, float *lse);
/* Keys per chunk of attn.block_sparse for key blocks of bk. */
int64_t sl__cpu_sparse_kmax(int64_t bk);

/* Every kernel sl__cpu_<fn> of ops.def and each family's scratch function
 * sl__cpu_<family>_scratch (bytes a call needs on n_threads threads; 0 for
 * none), generated from ops.def; backend.c builds the table from the same rows. */
#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc)                                  \
    sl_status sl__cpu_##fn(const sl__kargs *a);                                                        \
    size_t sl__cpu_##family##_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads);
#include "../ops.def"
#undef SL_OP

/* The k-th smallest (0-based) of v[0..n) by quickselect; v is reordered
 * (cpu/prune.c; issue 17). */
float sl__cpu_select_kth_f(float *v, int64_t n, int64_t k);
double sl__cpu_select_kth_d(double *v, int64_t n, int64_t k);

#endif
