/* test_gather_ops.c — gather.rows on every backend in SL_TEST_BACKENDS
 * against ref and against plain row copies (GQA head mapping), zero FLOPs,
 * out-of-range indices rejected. */

#include "opsutil.h"

START_TEST(test_gather_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7600);
    int64_t hx = 2, n = 30, d = 5, hi = 4, m = 17;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hx, n, d, 1), i32_tensor(ctx, hi, m)};
    int32_t *ix = in[1].data;
    for (int64_t i = 0; i < hi * m; i++)
        ix[i] = (int32_t)((i * 7 + 3) % n);
    check_op_vs_ref(ctx, SL_OP_GATHER_ROWS, NULL, in, 0, "gather.rows");
    sl_tensor out;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_GATHER_ROWS, NULL, in, &out), SL_OK);
    ck_assert_int_eq(out.shape[0], hi);
    ck_assert_int_eq(out.shape[1], m);
    const float *x = in[0].data;
    for (int64_t h = 0; h < hi; h++)
        for (int64_t t = 0; t < m; t++)
            for (int64_t c = 0; c < d; c++)
                ck_assert(tu_at(&out, (h * m + t) * d + c) == x[((h / 2) * n + ix[h * m + t]) * d + c]);
    sl_tensor_release(&out);
    ck_assert_double_eq(sl_op_flops(SL_OP_GATHER_ROWS, NULL, in), 0);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* An index past the rows is rejected with its position. */
START_TEST(test_gather_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7700);
    sl_tensor gin[2] = {tu_randn(ctx, &rng, 1, 20, 4, 1), i32_tensor(ctx, 1, 3)};
    int32_t bad[3] = {0, 20, 1};
    memcpy(gin[1].data, bad, sizeof bad);
    expect_fail(ctx, SL_OP_GATHER_ROWS, NULL, gin, SL_EARG, "idx[1] = 20");
    release_n(gin, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_gather_rows);
    tcase_add_test(tc, test_gather_validation);
}

int main(void) { return run_op_suite("gather_ops", add_tests); }
