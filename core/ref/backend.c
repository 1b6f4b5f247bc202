/* ref/backend.c — the reference backend's kernel table: naive, float64
 * accumulation, every op. */
#include "ref.h"

static int ref_available(void) { return 1; }
static const char *ref_status(void) { return ""; }

static const sl__kernel_fn ref_kernels[SL_OP__COUNT] = {
    [SL_OP_ATTN_DENSE] = sl__ref_attn_dense,
    [SL_OP_ATTN_BLOCK_SPARSE] = sl__ref_attn_block_sparse,
    [SL_OP_ATTN_TOKEN_SPARSE] = sl__ref_attn_token_sparse,
    [SL_OP_ATTN_VS_MIXED] = sl__ref_attn_vs_mixed,
    [SL_OP_ATTN_ROWS] = sl__ref_attn_rows,
    [SL_OP_ATTN_LSE_MERGE] = sl__ref_attn_lse_merge,
    [SL_OP_METRIC_REL_L2] = sl__ref_metric_rel_l2,
    [SL_OP_METRIC_COSINE] = sl__ref_metric_cosine,
    [SL_OP_METRIC_MAX_ABS] = sl__ref_metric_max_abs,
    [SL_OP_METRIC_RECALL] = sl__ref_metric_recall,
    [SL_OP_CORRECT_RESHAPE] = sl__ref_correct_reshape,
    [SL_OP_CORRECT_CACHE_REUSE] = sl__ref_correct_cache_reuse,
    [SL_OP_CORRECT_LINEAR_BRANCH] = sl__ref_correct_linear_branch,
    [SL_OP_ATTN_LINEAR] = sl__ref_attn_linear,
    [SL_OP_ATTN_POOLED_KV] = sl__ref_attn_pooled_kv,
    [SL_OP_CORRECT_DELTA] = sl__ref_correct_delta,
    [SL_OP_SCORE_POOLED] = sl__ref_score_pooled,
    [SL_OP_SCORE_LAST_Q] = sl__ref_score_last_q,
    [SL_OP_SCORE_ROWS] = sl__ref_score_rows,
    [SL_OP_SCORE_EXACT] = sl__ref_score_exact,
    [SL_OP_REDUCE_COLUMNS] = sl__ref_reduce_columns,
    [SL_OP_REDUCE_DIAGONALS] = sl__ref_reduce_diagonals,
    [SL_OP_REDUCE_BLOCK] = sl__ref_reduce_block,
    [SL_OP_REDUCE_HEADS] = sl__ref_reduce_heads,
    [SL_OP_SELECT_TOPK] = sl__ref_select_topk,
    [SL_OP_SELECT_TOPP] = sl__ref_select_topp,
    [SL_OP_SELECT_THRESHOLD] = sl__ref_select_threshold,
    [SL_OP_POOL_TOKENS] = sl__ref_pool_tokens,
    [SL_OP_SCORE_LOWBIT] = sl__ref_score_lowbit,
    [SL_OP_SCORE_ANTIDIAG] = sl__ref_score_antidiag,
    [SL_OP_SCORE_STRIDED] = sl__ref_score_strided,
    [SL_OP_SCORE_ANCHOR] = sl__ref_score_anchor,
    [SL_OP_GATHER_ROWS] = sl__ref_gather_rows,
    [SL_OP_ATTN_BUCKET] = sl__ref_attn_bucket,
    [SL_OP_SCORE_HASH] = sl__ref_score_hash,
    [SL_OP_CORRECT_RECTIFY] = sl__ref_correct_rectify,
    [SL_OP_CORRECT_COMPENSATE] = sl__ref_correct_compensate,
    [SL_OP_CORRECT_SMOOTH_K] = sl__ref_correct_smooth_k,
    [SL_OP_CORRECT_LEPE] = sl__ref_correct_lepe,
};

static size_t ref_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)n_threads;
    switch (op) {
    case SL_OP_ATTN_DENSE:
    case SL_OP_ATTN_BLOCK_SPARSE:
    case SL_OP_ATTN_TOKEN_SPARSE:
    case SL_OP_ATTN_VS_MIXED:
    case SL_OP_ATTN_ROWS: return sl__ref_attn_scratch(in);
    case SL_OP_CORRECT_RECTIFY:
    case SL_OP_CORRECT_SMOOTH_K: return sl__ref_correct_scratch(op, in);
    case SL_OP_ATTN_LINEAR:
    case SL_OP_ATTN_POOLED_KV: return sl__ref_correct_ext_scratch(op, in);
    case SL_OP_SCORE_POOLED:
    case SL_OP_SCORE_LAST_Q:
    case SL_OP_SCORE_ROWS:
    case SL_OP_SCORE_EXACT: return sl__ref_score_scratch(op, params, in);
    case SL_OP_SELECT_TOPK:
    case SL_OP_SELECT_TOPP: return sl__ref_select_scratch(in);
    default: return 0;
    }
}

const sl__backend sl__backend_ref = {"ref", ref_available, ref_status, ref_kernels, ref_scratch};
