/* test_token_ops.c — token.scatter (issue 17, part 2; card
 * sparse_token_update) on every backend in SL_TEST_BACKENDS against ref,
 * and ref against the rule written here: rows not in idx bit-identical to x
 * (replace and add), indexed rows equal to y (replace) or x + y (add, float64
 * here); gather.rows then token.scatter of the gathered rows round-trips;
 * FLOPs; bad indices, repeats and shapes rejected. */

#include "opsutil.h"

/* a permutation prefix of [0, n): m distinct rows, seeded */
static void distinct_rows(sl_rng *rng, int64_t n, int64_t m, int32_t *out)
{
    int32_t *perm = malloc(sizeof *perm * (size_t)n);
    ck_assert_ptr_nonnull(perm);
    for (int64_t i = 0; i < n; i++)
        perm[i] = (int32_t)i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(sl_rng_uniform(rng) * (double)(i + 1));
        if (j > i)
            j = i;
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    memcpy(out, perm, sizeof *out * (size_t)m);
    free(perm);
}

START_TEST(test_token_scatter)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9100);
    const int64_t shapes[][3] = {{1, 1, 1}, {37, 5, 11}, {300, 64, 300}, {600, 9, 0}, {513, 17, 200}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t n = shapes[si][0], d = shapes[si][1], m = shapes[si][2];
        int64_t xs[2] = {n, d}, ys[2] = {m, d};
        int32_t *ix = malloc(sizeof *ix * (size_t)(m > 0 ? m : 1));
        ck_assert_ptr_nonnull(ix);
        distinct_rows(&rng, n, m, ix);
        sl_tensor in[3] = {randn_shape(ctx, &rng, 2, xs, 1), randn_shape(ctx, &rng, 2, ys, 2), i32_vec(ctx, ix, m)};
        for (int add = 0; add <= 1; add++) {
            sl_token_scatter_params p = {.add = add};
            check_op_vs_ref(ctx, SL_OP_TOKEN_SCATTER, &p, in, 0, add ? "token.scatter add" : "token.scatter replace");
            sl_tensor out = run_op1(ctx, SL_BACKEND_REF, SL_OP_TOKEN_SCATTER, &p, in);
            ck_assert_int_eq(out.shape[0], n);
            ck_assert_int_eq(out.shape[1], d);
            char *hit = calloc((size_t)n, 1);
            ck_assert_ptr_nonnull(hit);
            const float *x = in[0].data, *y = in[1].data, *o = out.data;
            for (int64_t t = 0; t < m; t++) {
                hit[ix[t]] = 1;
                for (int64_t c = 0; c < d; c++) {
                    double want = add ? (double)x[ix[t] * d + c] + (double)y[t * d + c] : (double)y[t * d + c];
                    ck_assert_msg(o[ix[t] * d + c] == (float)want, "row %d col %lld", ix[t], (long long)c);
                }
            }
            for (int64_t r = 0; r < n; r++)
                if (!hit[r])
                    ck_assert_int_eq(memcmp(o + r * d, x + r * d, sizeof *o * (size_t)d), 0);
            free(hit);
            ck_assert_double_eq(sl_op_flops(SL_OP_TOKEN_SCATTER, &p, in), add ? (double)(m * d) : 0.0);
            sl_tensor_release(&out);
        }
        release_n(in, 3);
        free(ix);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* gather -> (identity) -> scatter gives x back, on every backend */
START_TEST(test_token_gather_scatter_roundtrip)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9200);
    int64_t n = 90, d = 12, m = 33;
    int64_t xs3[3] = {1, n, d};
    sl_tensor x3 = randn_shape(ctx, &rng, 3, xs3, 1);
    sl_tensor idx2 = i32_tensor(ctx, 1, m);
    distinct_rows(&rng, n, m, idx2.data);
    sl_tensor gin[2] = {x3, idx2};
    sl_backend_id bs[SL_BACKEND__COUNT + 1];
    int nb = other_backends(bs);
    bs[nb++] = SL_BACKEND_REF;
    for (int b = 0; b < nb; b++) {
        sl_tensor g;
        sl_status s = sl_op_run(ctx, bs[b], SL_OP_GATHER_ROWS, NULL, gin, &g);
        if (s == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU && bs[b] != SL_BACKEND_REF)
            continue;
        ck_assert_msg(s == SL_OK, "gather on %s: %s", sl_backend_name(bs[b]), sl_ctx_error(ctx));
        sl_tensor x2 = f32_2d(ctx, n, d), y2 = f32_2d(ctx, m, d), i1 = i32_vec(ctx, idx2.data, m);
        memcpy(x2.data, x3.data, sizeof(float) * (size_t)(n * d));
        memcpy(y2.data, g.data, sizeof(float) * (size_t)(m * d));
        sl_tensor sin[3] = {x2, y2, i1};
        sl_token_scatter_params p = {.add = 0};
        sl_tensor out;
        s = sl_op_run(ctx, bs[b], SL_OP_TOKEN_SCATTER, &p, sin, &out);
        ck_assert_msg(s == SL_OK, "scatter on %s: %s", sl_backend_name(bs[b]), sl_ctx_error(ctx));
        ck_assert_int_eq(memcmp(out.data, x3.data, sizeof(float) * (size_t)(n * d)), 0);
        sl_tensor_release(&out);
        sl_tensor_release(&g);
        release_n(sin, 3);
    }
    release_n(gin, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_token_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9300);
    int64_t xs[2] = {20, 4}, ys[2] = {3, 4}, ys5[2] = {3, 5};
    sl_token_scatter_params p = {.add = 0};
    int32_t out_of_range[3] = {0, 20, 1}, repeat[3] = {4, 7, 4};
    sl_tensor in[3] = {randn_shape(ctx, &rng, 2, xs, 1), randn_shape(ctx, &rng, 2, ys, 1),
                       i32_vec(ctx, out_of_range, 3)};
    expect_fail(ctx, SL_OP_TOKEN_SCATTER, &p, in, SL_EARG, "idx[1] = 20");
    memcpy(in[2].data, repeat, sizeof repeat);
    expect_fail(ctx, SL_OP_TOKEN_SCATTER, &p, in, SL_EARG, "idx[2] = 4 repeats idx[0]");
    sl_tensor_release(&in[1]);
    in[1] = randn_shape(ctx, &rng, 2, ys5, 1);
    expect_fail(ctx, SL_OP_TOKEN_SCATTER, &p, in, SL_ESHAPE, "y has 5 columns, x has 4");
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_token_scatter);
    tcase_add_test(tc, test_token_gather_scatter_roundtrip);
    tcase_add_test(tc, test_token_validation);
}

int main(void) { return run_op_suite("token_ops", add_tests); }
