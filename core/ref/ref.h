/* ref/ref.h — the reference backend's kernels, shared with backends that
 * reuse a reference kernel where speed does not matter (metrics). */
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

sl_status sl__ref_attn_dense(const sl__kargs *a);
sl_status sl__ref_attn_block_sparse(const sl__kargs *a);
size_t sl__ref_keep_bytes(int64_t n_k);
size_t sl__ref_attn_scratch(const sl_tensor *in);

sl_status sl__ref_attn_token_sparse(const sl__kargs *a);
sl_status sl__ref_attn_vs_mixed(const sl__kargs *a);
sl_status sl__ref_attn_rows(const sl__kargs *a);
sl_status sl__ref_attn_lse_merge(const sl__kargs *a);
sl_status sl__ref_correct_delta(const sl__kargs *a);
sl_status sl__ref_correct_rectify(const sl__kargs *a);
sl_status sl__ref_correct_compensate(const sl__kargs *a);
sl_status sl__ref_correct_smooth_k(const sl__kargs *a);
sl_status sl__ref_correct_lepe(const sl__kargs *a);
size_t sl__ref_correct_scratch(sl_op op, const sl_tensor *in);

sl_status sl__ref_metric_rel_l2(const sl__kargs *a);
sl_status sl__ref_metric_cosine(const sl__kargs *a);
sl_status sl__ref_metric_max_abs(const sl__kargs *a);
sl_status sl__ref_metric_recall(const sl__kargs *a);

/* ref/correct_ext.c: the ops of issue 5 (re_ttention, flashblock, salad, psa_pyramid) */
sl_status sl__ref_correct_reshape(const sl__kargs *a);
sl_status sl__ref_correct_cache_reuse(const sl__kargs *a);
sl_status sl__ref_correct_linear_branch(const sl__kargs *a);
sl_status sl__ref_attn_linear(const sl__kargs *a);
sl_status sl__ref_attn_pooled_kv(const sl__kargs *a);
size_t sl__ref_correct_ext_scratch(sl_op op, const sl_tensor *in);
sl_status sl__ref_score_pooled(const sl__kargs *a);
sl_status sl__ref_score_last_q(const sl__kargs *a);
sl_status sl__ref_score_rows(const sl__kargs *a);
sl_status sl__ref_score_exact(const sl__kargs *a);
size_t sl__ref_score_scratch(sl_op op, const void *params, const sl_tensor *in);

sl_status sl__ref_reduce_columns(const sl__kargs *a);
sl_status sl__ref_reduce_diagonals(const sl__kargs *a);
sl_status sl__ref_reduce_block(const sl__kargs *a);
sl_status sl__ref_reduce_heads(const sl__kargs *a);

sl_status sl__ref_select_topk(const sl__kargs *a);
sl_status sl__ref_select_topp(const sl__kargs *a);
sl_status sl__ref_select_threshold(const sl__kargs *a);
size_t sl__ref_select_scratch(const sl_tensor *in);
/* score.antidiag, score.strided, score.anchor, gather.rows (ref/stripe.c). */
sl_status sl__ref_score_antidiag(const sl__kargs *a);
sl_status sl__ref_score_strided(const sl__kargs *a);
sl_status sl__ref_score_anchor(const sl__kargs *a);
sl_status sl__ref_gather_rows(const sl__kargs *a);
/* pool.tokens, score.lowbit, score.hash, attn.bucket (ref/token_score.c). */
sl_status sl__ref_pool_tokens(const sl__kargs *a);
sl_status sl__ref_score_lowbit(const sl__kargs *a);
sl_status sl__ref_attn_bucket(const sl__kargs *a);
sl_status sl__ref_score_hash(const sl__kargs *a);
/* score.lowbit's quantisation of rows x [rows, d] in groups of `group` rows
 * (f32 arithmetic, the contract's rule; bits >= 16 copies), and its K
 * smoothing: ks = k - mean (mean over the nk keys; zero when !smooth). */
void sl__lowbit_quantise(const float *x, int64_t rows, int64_t d, int64_t group, int bits, float *out);
void sl__lowbit_prepare(const float *k, int64_t nk, int64_t d, int smooth, float *ks, float *mean);

#endif
