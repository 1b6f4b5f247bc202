/* test_pool_ops.c — pool.tokens on every backend in SL_TEST_BACKENDS
 * against ref (blocks and segments, mean, max and min, normalised tokens)
 * and against means and maxima written here in float64; malformed bounds
 * and NaN rejected. */

#include "opsutil.h"

START_TEST(test_pool_tokens)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6001);
    int64_t H = 3, n = 53, d = 12;
    sl_tensor in[2] = {tu_randn(ctx, &rng, H, n, d, 1.5), {0}};
    int32_t starts[5] = {0, 1, 9, 30, 31};
    for (int with_bounds = 0; with_bounds < 2; with_bounds++)
        for (int mode = 0; mode < 3; mode++)
            for (int norm = 0; norm < 2; norm++)
                for (int len_norm = 0; len_norm < 2; len_norm++) {
                    in[1] = with_bounds ? i32_vec(ctx, starts, 5) : (sl_tensor){0};
                    sl_pool_params p = {.block = 8, .mode = mode, .normalize = norm, .len_norm = len_norm};
                    char what[96];
                    snprintf(what, sizeof what, "pool.tokens bounds %d mode %d normalize %d len_norm %d", with_bounds,
                             mode, norm, len_norm);
                    check_op_vs_ref(ctx, SL_OP_POOL_TOKENS, &p, in, 1e-6, what);
                    /* independent: each segment from its definition */
                    sl_tensor out[1];
                    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_POOL_TOKENS, &p, in, out), SL_OK);
                    int64_t S = with_bounds ? 5 : (n + 7) / 8;
                    ck_assert_int_eq(out[0].shape[1], S);
                    const float *x = in[0].data;
                    for (int64_t h = 0; h < H; h++)
                        for (int64_t s = 0; s < S; s++) {
                            int64_t t0 = with_bounds ? starts[s] : s * 8;
                            int64_t t1 = with_bounds ? (s + 1 < S ? starts[s + 1] : n) : (t0 + 8 < n ? t0 + 8 : n);
                            for (int64_t c = 0; c < d; c++) {
                                double acc = mode == 0 ? 0 : mode == 1 ? -1e300 : 1e300;
                                for (int64_t t = t0; t < t1; t++) {
                                    double nn = 0;
                                    for (int64_t e = 0; e < d; e++)
                                        nn += (double)x[(h * n + t) * d + e] * x[(h * n + t) * d + e];
                                    double v = x[(h * n + t) * d + c] / (norm ? sqrt(nn) : 1.0);
                                    acc = mode == 0 ? acc + v : mode == 1 ? fmax(acc, v) : fmin(acc, v);
                                }
                                if (mode == 0)
                                    acc /= (double)(t1 - t0);
                                if (len_norm)
                                    acc *= sqrt((double)(t1 - t0));
                                double got = tu_at(&out[0], (h * S + s) * d + c);
                                ck_assert_msg(fabs(got - acc) <= 1e-5 * fmax(1, fabs(acc)), "%s: [%lld,%lld,%lld] %g vs %g",
                                              what, (long long)h, (long long)s, (long long)c, got, acc);
                            }
                        }
                    sl_tensor_release(&out[0]);
                    sl_tensor_release(&in[1]);
                }
    /* the self-similarity identity: |mean of normalised tokens|^2 = mean pairwise cosine */
    sl_pool_params p = {.block = 7, .mode = 0, .normalize = 1};
    in[1] = (sl_tensor){0};
    sl_tensor out[1];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_POOL_TOKENS, &p, in, out), SL_OK);
    const float *x = in[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t s = 0; s < (n + 6) / 7; s++) {
            int64_t t0 = s * 7, t1 = t0 + 7 < n ? t0 + 7 : n;
            double cs = 0;
            for (int64_t a = t0; a < t1; a++)
                for (int64_t b = t0; b < t1; b++) {
                    double ab = 0, aa = 0, bb = 0;
                    for (int64_t e = 0; e < d; e++) {
                        double u = x[(h * n + a) * d + e], v = x[(h * n + b) * d + e];
                        ab += u * v, aa += u * u, bb += v * v;
                    }
                    cs += ab / sqrt(aa * bb);
                }
            cs /= (double)((t1 - t0) * (t1 - t0));
            double sq = 0;
            for (int64_t e = 0; e < d; e++)
                sq += pow(tu_at(&out[0], (h * ((n + 6) / 7) + s) * d + e), 2);
            ck_assert_msg(fabs(sq - cs) < 1e-5, "self-similarity: %g vs %g", sq, cs);
        }
    sl_tensor_release(&out[0]);
    sl_tensor_release(&in[0]);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* pool.tokens: NaN, bounds not starting at 0, not increasing, past n. */
START_TEST(test_pool_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6400);
    sl_tensor x[2] = {tu_randn(ctx, &rng, 2, 10, 4, 1), {0}};
    sl_pool_params pp = {.block = 4};
    ((float *)x[0].data)[5] = NAN;
    expect_fail(ctx, SL_OP_POOL_TOKENS, &pp, x, SL_EARG, "NaN");
    ((float *)x[0].data)[5] = 0.5f;
    int32_t b1[3] = {1, 3, 5}, b2[3] = {0, 3, 3}, b3[3] = {0, 3, 10};
    const int32_t *bad[3] = {b1, b2, b3};
    const char *why[3] = {"expected 0", "strictly increasing", "strictly increasing"};
    for (int i = 0; i < 3; i++) {
        x[1] = i32_vec(ctx, bad[i], 3);
        expect_fail(ctx, SL_OP_POOL_TOKENS, &pp, x, SL_EARG, why[i]);
        sl_tensor_release(&x[1]);
    }
    sl_tensor_release(&x[0]);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_pool_tokens);
    tcase_add_test(tc, test_pool_validation);
}

int main(void) { return run_op_suite("pool_ops", add_tests); }
