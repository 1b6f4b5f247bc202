/* mask_lists.h — list parsing of mask_convert.c that mask_vs.c shares (issue 20, session 3). */
#ifndef SL_MASK_LISTS_H
#define SL_MASK_LISTS_H

#include "internal.h"

/* Per head, the valid entries of an i32 list [H, n] or [n] (-1 = padding)
 * or a u8 keep [H, hi], sorted and unique: vals[h·n ..] holds cnt[h] of them
 * (release with sl_ctx_dealloc(ctx, vals, bytes)). */
sl_status sl__mask_sorted_lists(sl_ctx *ctx, const char *fn, const char *what, const sl_tensor *t, int64_t hi,
                                int64_t *heads, int64_t *n, int64_t **vals, int64_t **cnt, size_t *bytes);

#endif
