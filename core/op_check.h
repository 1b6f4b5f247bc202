/* op_check.h — the input checks every op family shares (op_check.c). Each
 * returns SL_OK or fails the context with one line naming the op (info),
 * the input, what was expected and what was found. */
#ifndef SL_OP_CHECK_H
#define SL_OP_CHECK_H

#include "internal.h"

int sl__is_float(sl_dtype t);
int64_t sl__ceil_div(int64_t a, int64_t b);
/* Element i (row-major order) of an i32 tensor of 1 or 2 dims, through its strides. */
int64_t sl__i32_at(const sl_tensor *t, int64_t i);
/* The name of input i ("q", "mask.row_ptr", ...) from the op's input list. */
void sl__input_name(const sl_op_info *info, int i, char *buf, size_t n);
int sl__same_shape(const sl_tensor *t, int ndim, const int64_t *shape);

/* Input i present and float (ndim dims unless ndim < 0). */
sl_status sl__need_float(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim);
/* Input i present, contiguous, of dtype dt with ndim dims (index arrays). */
sl_status sl__need_index(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, sl_dtype dt, int ndim);
/* Input i a float tensor of exactly this shape (ndim 2 or 3). */
sl_status sl__need_shape(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int ndim,
                         const int64_t *shape);
/* t present, float, 3 dims (nm names it). */
sl_status sl__need_float3(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm);

/* An optional i32 input: absent, or contiguous i32 of ndim dims whose shape
 * is want (NULL: any). */
sl_status sl__opt_i32(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm, int ndim,
                      const int64_t *want);

/* q, k, v = in[0..2]: float [Hq, Nq, D], [Hkv, Nk, D] twice; Hq a multiple of
 * Hkv, n_q <= n_k, D > 0. */
sl_status sl__check_qkv(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in);
/* q = in[0], k = in[1] of the estimators (no v), the same rules. */
sl_status sl__check_qk(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in);
/* The same for q at slot iq and k at slot ik (messages name both inputs),
 * without the head_dim > 0 rule. */
sl_status sl__check_qk_at(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int iq, int ik);
/* The block mask at in[3..6] (row_ptr, col_idx, part, bits) for q = in[0],
 * k = in[1] with blocks bq x bk: shapes, dtypes and sl_mask_validate. */
sl_status sl__check_block_mask(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in,
                               const sl_attn_block_params *p);
/* x = in[0] of a reduction: float [H, R, C]; of a selector (allow_2d): also [H, C]. */
sl_status sl__check_scores(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int allow_2d);
/* q = in[0], k = in[1] (normalised, contiguous) of an op with a "scale"
 * parameter and maybe an opt.bias input: fails when scale·q·k (+ bias) can
 * leave float32's range, bounded cheaply by scale·D·max|q|·max|k| + max|bias|
 * against FLT_MAX / 2 (a running max of +inf would make the softmax NaN). */
sl_status sl__check_score_range(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in);

#endif
