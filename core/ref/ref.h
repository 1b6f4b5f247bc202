/* ref/ref.h — the reference backend's kernels, shared with backends that
 * reuse a reference kernel where speed does not matter (metrics). */
#ifndef SL_REF_H
#define SL_REF_H

#include "../internal.h"

sl_status sl__ref_attn_dense(const sl__kargs *a);
sl_status sl__ref_attn_block_sparse(const sl__kargs *a);
size_t sl__ref_keep_bytes(int64_t n_k);
size_t sl__ref_attn_scratch(const sl_tensor *in);

sl_status sl__ref_metric_rel_l2(const sl__kargs *a);
sl_status sl__ref_metric_cosine(const sl__kargs *a);
sl_status sl__ref_metric_max_abs(const sl__kargs *a);
sl_status sl__ref_metric_recall(const sl__kargs *a);

#endif
