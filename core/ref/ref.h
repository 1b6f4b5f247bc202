/* ref/ref.h — what the reference backend's files share: the row routine of
 * the attention kernels and the kernel declarations (generated from ops.def).
 * No other backend includes it: ref is the independent oracle. */
#ifndef SL_REF_H
#define SL_REF_H

#include "../internal.h"

/* Options of one reference row: bias (n_k values added to the scaled
 * scores), a starting state (O, L of an earlier pass), pv_skip over key
 * blocks of pv_bk keys (0: off). */
typedef struct sl__ref_row_opts {
    const float *bias;
    const float *state_o;
    float state_lse;
    int64_t pv_bk;
    double pv_skip;
} sl__ref_row_opts;

/* One query row over the keys with keep[j] != 0 (keep is scratch: pv_skip
 * marks keys 2); score holds n_k + d doubles. opt may be NULL. */
void sl__ref_row(const float *q, const float *k, const float *v, int64_t n_k, int64_t d, double scale, uint8_t *keep,
                 const sl__ref_row_opts *opt, double *score, float *o, float *lse);
/* keep[j] for row r of query head h under the block mask whose four arrays
 * are mask[0..3] (row_ptr, col_idx, part, bits). */
void sl__ref_keep_block(const sl_tensor *mask, int64_t bq, int64_t bk, int64_t hq, int64_t h, int64_t r, int64_t nk,
                        uint8_t *keep);

/* Two partial attentions of one row over disjoint keys merged through their
 * log-sum-exps (o2 NULL: the first alone); O = 0 and L = -inf when both are
 * empty. */
void sl__ref_merge_row(const float *o1, float l1, const float *o2, float l2, int64_t d, float *o, float *lse);

/* Every kernel sl__ref_<fn> of ops.def and each family's scratch function
 * sl__ref_<family>_scratch (bytes a call needs; 0 for none). */
#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc)                                  \
    sl_status sl__ref_##fn(const sl__kargs *a);                                                        \
    size_t sl__ref_##family##_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads);
#include "../ops.def"
#undef SL_OP

size_t sl__ref_keep_bytes(int64_t n_k);

#endif
