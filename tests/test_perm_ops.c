/* test_perm_ops.c — perm.apply on every backend in SL_TEST_BACKENDS against
 * ref and against plain index arithmetic; forward then inverse is the
 * identity bit for bit (one order for all heads and one per head); a row
 * that is not a bijection (out of range, repeated) is a one-line error. */

#include "opsutil.h"

/* A seeded random permutation of [0, n) (Fisher-Yates). */
static void random_perm(sl_rng *rng, int32_t *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = (int32_t)i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(sl_rng_uniform(rng) * (double)(i + 1));
        if (j > i)
            j = i;
        int32_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

static void check_round_trip(sl_ctx *ctx, sl_rng *rng, int64_t H, int64_t P, int64_t n, int64_t d)
{
    sl_tensor in[2] = {tu_randn(ctx, rng, H, n, d, 1), i32_tensor(ctx, P, n)};
    int32_t *pm = in[1].data;
    for (int64_t g = 0; g < P; g++)
        random_perm(rng, pm + g * n, n);
    sl_perm_params fwd = {.inverse = 0}, inv = {.inverse = 1};
    check_op_vs_ref(ctx, SL_OP_PERM_APPLY, &fwd, in, 0, "perm.apply forward");
    check_op_vs_ref(ctx, SL_OP_PERM_APPLY, &inv, in, 0, "perm.apply inverse");
    const float *x = in[0].data;
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        sl_tensor y, z;
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_PERM_APPLY, &fwd, in, &y), SL_OK);
        /* independent math: position t of head h holds token pm[g, t] */
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < n; t++)
                for (int64_t c = 0; c < d; c++)
                    ck_assert(tu_at(&y, (h * n + t) * d + c) == x[(h * n + pm[(h / (H / P)) * n + t]) * d + c]);
        sl_tensor in2[2] = {y, in[1]};
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_PERM_APPLY, &inv, in2, &z), SL_OK);
        for (int64_t i = 0; i < H * n * d; i++)
            ck_assert_msg(tu_at(&z, i) == x[i], "round trip on %s differs at %lld", sl_backend_name((sl_backend_id)b),
                          (long long)i);
        sl_tensor_release(&y);
        sl_tensor_release(&z);
    }
    ck_assert_double_eq(sl_op_flops(SL_OP_PERM_APPLY, &fwd, in), 0);
    release_n(in, 2);
}

START_TEST(test_perm_apply)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15001);
    check_round_trip(ctx, &rng, 4, 1, 37, 5);   /* one order for every head */
    check_round_trip(ctx, &rng, 4, 2, 300, 3);  /* one per head group, more than one cpu chunk */
    check_round_trip(ctx, &rng, 3, 3, 16, 8);   /* one per head */
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Out of range and repeated entries, a wrong token count and a row count
 * that does not divide the heads are rejected with one line. */
START_TEST(test_perm_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15002);
    sl_tensor in[2] = {tu_randn(ctx, &rng, 2, 4, 3, 1), i32_tensor(ctx, 1, 4)};
    int32_t *p = in[1].data;
    int32_t out_of_range[4] = {0, 1, 4, 2}, repeated[4] = {3, 1, 3, 0};
    memcpy(p, out_of_range, sizeof out_of_range);
    expect_fail(ctx, SL_OP_PERM_APPLY, NULL, in, SL_EARG, "perm[0, 2] = 4 is outside [0, 4): not a bijection");
    memcpy(p, repeated, sizeof repeated);
    expect_fail(ctx, SL_OP_PERM_APPLY, NULL, in, SL_EARG, "not a bijection: 3 at positions 0 and 2");
    release_n(in, 2);
    sl_tensor short_in[2] = {tu_randn(ctx, &rng, 2, 5, 3, 1), i32_tensor(ctx, 1, 4)};
    expect_fail(ctx, SL_OP_PERM_APPLY, NULL, short_in, SL_ESHAPE, "perm orders 4 tokens, x has 5");
    release_n(short_in, 2);
    sl_tensor rows_in[2] = {tu_randn(ctx, &rng, 2, 4, 3, 1), i32_tensor(ctx, 3, 4)};
    expect_fail(ctx, SL_OP_PERM_APPLY, NULL, rows_in, SL_ESHAPE, "expected a divisor of the heads");
    release_n(rows_in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* [H, N] inputs (log-sum-exps, -inf entries moved as they are). */
START_TEST(test_perm_apply_2d)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15003);
    int64_t H = 4, n = 45, sh[2] = {H, n};
    sl_tensor in[2];
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, sh, &in[0]), SL_OK);
    in[1] = i32_tensor(ctx, 2, n);
    float *x = in[0].data;
    for (int64_t i = 0; i < H * n; i++)
        x[i] = i % 7 == 3 ? -INFINITY : (float)sl_rng_normal(&rng);
    int32_t *pm = in[1].data;
    random_perm(&rng, pm, n);
    random_perm(&rng, pm + n, n);
    sl_perm_params fwd = {.inverse = 0}, inv = {.inverse = 1};
    check_op_vs_ref(ctx, SL_OP_PERM_APPLY, &fwd, in, 0, "perm.apply 2-d forward");
    check_op_vs_ref(ctx, SL_OP_PERM_APPLY, &inv, in, 0, "perm.apply 2-d inverse");
    sl_tensor y;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_PERM_APPLY, &inv, in, &y), SL_OK);
    ck_assert_int_eq(y.ndim, 2);
    for (int64_t h = 0; h < H; h++)
        for (int64_t t = 0; t < n; t++) {
            float want = x[h * n + t], got = tu_at(&y, h * n + pm[(h / 2) * n + t]);
            ck_assert(isinf(want) ? isinf(got) && got < 0 : got == want);
        }
    sl_tensor_release(&y);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_perm_apply_2d);
    tcase_add_test(tc, test_perm_apply);
    tcase_add_test(tc, test_perm_validation);
}

int main(void) { return run_op_suite("perm_ops", add_tests); }
