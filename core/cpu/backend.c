/* cpu/backend.c — the cpu backend's kernel table. Metrics are not hot and
 * reuse the reference kernels. */
#include "cpu.h"
#include "../ref/ref.h"

#include <cblas.h>

static int cpu_available(void) { return 1; }
static const char *cpu_status(void) { return ""; }

void sl__cpu_blas_single(void)
{
    if (openblas_get_num_threads() != 1)
        openblas_set_num_threads(1);
}

sl_status sl__cpu_parallel(sl_ctx *ctx, int64_t n, sl__parallel_fn fn, void *ud)
{
    int saved = openblas_get_num_threads();
    sl__cpu_blas_single();
    sl_status s = sl__parallel_for(ctx, n, sl_ctx_threads(ctx), fn, ud);
    if (saved != 1)
        openblas_set_num_threads(saved);
    return s;
}

static const sl__kernel_fn cpu_kernels[SL_OP__COUNT] = {
    [SL_OP_ATTN_DENSE] = sl__cpu_attn_dense,
    [SL_OP_ATTN_BLOCK_SPARSE] = sl__cpu_attn_block_sparse,
    [SL_OP_ATTN_TOKEN_SPARSE] = sl__cpu_attn_token_sparse,
    [SL_OP_ATTN_VS_MIXED] = sl__cpu_attn_vs_mixed,
    [SL_OP_ATTN_ROWS] = sl__cpu_attn_rows,
    [SL_OP_ATTN_LSE_MERGE] = sl__cpu_attn_lse_merge,
    [SL_OP_METRIC_REL_L2] = sl__ref_metric_rel_l2,
    [SL_OP_METRIC_COSINE] = sl__ref_metric_cosine,
    [SL_OP_METRIC_MAX_ABS] = sl__ref_metric_max_abs,
    [SL_OP_METRIC_RECALL] = sl__ref_metric_recall,
    [SL_OP_CORRECT_RESHAPE] = sl__cpu_correct_reshape,
    [SL_OP_CORRECT_CACHE_REUSE] = sl__cpu_correct_cache_reuse,
    [SL_OP_CORRECT_LINEAR_BRANCH] = sl__cpu_correct_linear_branch,
    [SL_OP_ATTN_LINEAR] = sl__cpu_attn_linear,
    [SL_OP_ATTN_POOLED_KV] = sl__cpu_attn_pooled_kv,
    [SL_OP_CORRECT_DELTA] = sl__cpu_correct_delta,
    [SL_OP_SCORE_POOLED] = sl__cpu_score_pooled,
    [SL_OP_SCORE_LAST_Q] = sl__cpu_score_last_q,
    [SL_OP_SCORE_ROWS] = sl__cpu_score_rows,
    [SL_OP_SCORE_EXACT] = sl__cpu_score_exact,
    [SL_OP_REDUCE_COLUMNS] = sl__cpu_reduce_columns,
    [SL_OP_REDUCE_DIAGONALS] = sl__cpu_reduce_diagonals,
    [SL_OP_REDUCE_BLOCK] = sl__cpu_reduce_block,
    [SL_OP_REDUCE_HEADS] = sl__cpu_reduce_heads,
    [SL_OP_SELECT_TOPK] = sl__cpu_select_topk,
    [SL_OP_SELECT_TOPP] = sl__cpu_select_topp,
    [SL_OP_SELECT_THRESHOLD] = sl__cpu_select_threshold,
    [SL_OP_POOL_TOKENS] = sl__cpu_pool_tokens,
    [SL_OP_SCORE_LOWBIT] = sl__cpu_score_lowbit,
    [SL_OP_SCORE_ANTIDIAG] = sl__cpu_score_antidiag,
    [SL_OP_SCORE_STRIDED] = sl__cpu_score_strided,
    [SL_OP_SCORE_ANCHOR] = sl__cpu_score_anchor,
    [SL_OP_GATHER_ROWS] = sl__cpu_gather_rows,
    [SL_OP_ATTN_BUCKET] = sl__cpu_attn_bucket,
    [SL_OP_SCORE_HASH] = sl__cpu_score_hash,
    [SL_OP_CORRECT_RECTIFY] = sl__cpu_correct_rectify,
    [SL_OP_CORRECT_COMPENSATE] = sl__cpu_correct_compensate,
    [SL_OP_CORRECT_SMOOTH_K] = sl__cpu_correct_smooth_k,
    [SL_OP_CORRECT_LEPE] = sl__cpu_correct_lepe,
};

static size_t cpu_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    switch (op) {
    case SL_OP_ATTN_DENSE:
    case SL_OP_ATTN_BLOCK_SPARSE: return sl__cpu_attn_scratch(op, params, in, n_threads);
    case SL_OP_ATTN_LINEAR:
    case SL_OP_ATTN_POOLED_KV: return sl__cpu_correct_ext_scratch(op, params, in, n_threads);
    case SL_OP_SCORE_POOLED:
    case SL_OP_SCORE_LAST_Q:
    case SL_OP_SCORE_ROWS:
    case SL_OP_SCORE_EXACT: return sl__cpu_score_scratch(op, params, in, n_threads);
    case SL_OP_SELECT_TOPK:
    case SL_OP_SELECT_TOPP: return sl__cpu_select_scratch(in, n_threads);
    case SL_OP_CORRECT_RECTIFY:
    case SL_OP_CORRECT_COMPENSATE:
    case SL_OP_CORRECT_SMOOTH_K: return sl__cpu_correct_scratch(op, params, in, n_threads);
    default: return sl__cpu_sparse_scratch(op, params, in, n_threads);
    }
}

const sl__backend sl__backend_cpu = {"cpu", cpu_available, cpu_status, cpu_kernels, cpu_scratch};
