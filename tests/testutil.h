/* testutil.h — helpers shared by the Check suites: a guarded allocator that
 * puts sentinel bytes after every allocation and can fail the N-th one,
 * seeded random tensors, and a temporary directory. */
#ifndef SL_TESTUTIL_H
#define SL_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sparselab.h"

#define TU_GUARD 32
#define TU_SENTINEL 0xA5

typedef struct tu_alloc {
    long calls;        /* allocations made so far */
    long fail_at;      /* fail the allocation with this number (1-based); 0 = never */
    long corrupted;    /* frees that found a sentinel overwritten */
} tu_alloc;

static inline void *tu_alloc_fn(void *ud, void *ptr, size_t old_bytes, size_t new_bytes)
{
    tu_alloc *a = ud;
    if (ptr) {
        unsigned char *p = ptr;
        for (size_t i = 0; i < TU_GUARD; i++)
            if (p[old_bytes + i] != TU_SENTINEL) {
                a->corrupted++;
                break;
            }
        if (new_bytes == 0) {
            free(p);
            return NULL;
        }
    } else if (new_bytes == 0)
        return NULL;
    a->calls++;
    if (a->fail_at && a->calls == a->fail_at)
        return NULL;
    unsigned char *q = realloc(ptr, new_bytes + TU_GUARD);
    if (!q)
        return NULL;
    memset(q + new_bytes, TU_SENTINEL, TU_GUARD);
    return q;
}

static inline sl_ctx *tu_ctx(tu_alloc *a)
{
    memset(a, 0, sizeof *a);
    sl_ctx_options o = {tu_alloc_fn, a, 2};
    return sl_ctx_new(&o);
}

/* Frees ctx after checking that nothing leaked and no sentinel was hit. */
static inline void tu_ctx_done(sl_ctx *ctx, tu_alloc *a)
{
    ck_assert_msg(sl_ctx_live_allocs(ctx) == 0, "%zu allocations leaked", sl_ctx_live_allocs(ctx));
    sl_ctx_free(ctx);
    ck_assert_msg(a->corrupted == 0, "%ld sentinels overwritten", a->corrupted);
}

static inline sl_tensor tu_randn(sl_ctx *ctx, sl_rng *r, int64_t a, int64_t b, int64_t c, double std)
{
    sl_tensor t;
    int64_t shape[3] = {a, b, c};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 3, shape, &t), SL_OK);
    sl_tensor_fill_normal(ctx, &t, r, std);
    return t;
}

static inline float tu_at(const sl_tensor *t, int64_t i) { return ((const float *)t->data)[i]; }

/* A fresh temporary directory (mkdtemp) under /tmp. */
static inline void tu_tmpdir(char *buf, size_t n)
{
    snprintf(buf, n, "/tmp/sltest.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(buf));
}

/* Runs a suite and returns the process exit status. */
static inline int tu_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

#endif
