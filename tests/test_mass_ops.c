/* test_mass_ops.c — mass.blocks on every backend in SL_TEST_BACKENDS
 * against ref; ref against a plain float64 softmax written here: with the
 * rows' own log-sum-exp (from attn.dense) every block row sums to its row
 * count and matches score.exact's sum; with a shifted (stale) LSE every
 * entry scales by exp(-shift); causal limits; -inf rows add nothing. */

#include "opsutil.h"

/* W from the definition, in float64: exp(scale q.k - lse) summed per tile. */
static double block_mass(const sl_tensor *q, const sl_tensor *k, const float *lse, int64_t h, int64_t I, int64_t J,
                         int64_t bq, int64_t bk, int causal)
{
    int64_t nq = q->shape[1], nk = k->shape[1], d = q->shape[2], g = q->shape[0] / k->shape[0];
    const float *qd = q->data, *kd = k->data;
    double w = 0, scale = 1.0 / sqrt((double)d);
    for (int64_t i = I * bq; i < (I + 1) * bq && i < nq; i++) {
        if (isinf(lse[h * nq + i]))
            continue;
        for (int64_t j = J * bk; j < (J + 1) * bk && j < nk; j++) {
            if (causal && j > i + nk - nq)
                continue;
            double s = 0;
            for (int64_t c = 0; c < d; c++)
                s += (double)qd[(h * nq + i) * d + c] * (double)kd[((h / g) * nk + j) * d + c];
            w += exp(scale * s - lse[h * nq + i]);
        }
    }
    return w;
}

static void check_case(sl_ctx *ctx, sl_rng *rng, int64_t hq, int64_t hkv, int64_t nq, int64_t nk, int64_t d,
                       int64_t bq, int64_t bk, int causal)
{
    sl_tensor q = tu_randn(ctx, rng, hq, nq, d, 1), k = tu_randn(ctx, rng, hkv, nk, d, 1),
              v = tu_randn(ctx, rng, hkv, nk, d, 1);
    sl_attn_params ap = {.causal = causal};
    sl_tensor dense[2];
    ck_assert_int_eq(sl_attn_dense(ctx, SL_BACKEND_REF, &ap, &q, &k, &v, &dense[0], &dense[1]), SL_OK);
    sl_mass_blocks_params p = {.bq = bq, .bk = bk, .causal = causal};
    sl_tensor in[3] = {q, k, dense[1]};
    check_op_vs_ref(ctx, SL_OP_MASS_BLOCKS, &p, in, 2e-5, "mass.blocks");
    sl_tensor w;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_MASS_BLOCKS, &p, in, &w), SL_OK);
    int64_t nqb = (nq + bq - 1) / bq, nkb = (nk + bk - 1) / bk;
    const float *lse = dense[1].data;
    for (int64_t h = 0; h < hq; h++)
        for (int64_t I = 0; I < nqb; I++) {
            double row = 0;
            for (int64_t J = 0; J < nkb; J++) {
                double want = block_mass(&q, &k, lse, h, I, J, bq, bk, causal), got = tu_at(&w, (h * nqb + I) * nkb + J);
                ck_assert_msg(fabs(got - want) <= 1e-5 * (1 + fabs(want)), "W[%lld,%lld,%lld] = %g, want %g",
                              (long long)h, (long long)I, (long long)J, got, want);
                row += got;
            }
            int64_t rows = (I + 1) * bq < nq ? bq : nq - I * bq;
            ck_assert_msg(fabs(row - (double)rows) < 1e-4, "fresh LSE: block row sums to %g, want %lld", row,
                          (long long)rows);
        }
    /* the same as score.exact's block sums (fresh LSE) */
    sl_score_exact_params ep = {.bq = bq, .bk = bk, .causal = causal};
    sl_tensor ex;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_SCORE_EXACT, &ep, in, &ex), SL_OK);
    for (int64_t i = 0; i < hq * nqb * nkb; i++)
        ck_assert(fabs(tu_at(&ex, i) - tu_at(&w, i)) < 1e-5);
    /* a stale LSE (shifted by 0.5, one row -inf) scales every entry by exp(-0.5) */
    sl_tensor stale;
    int64_t sh[2] = {hq, nq};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, sh, &stale), SL_OK);
    float *sl_ = stale.data;
    for (int64_t i = 0; i < hq * nq; i++)
        sl_[i] = lse[i] + 0.5f;
    sl_[0] = -INFINITY;
    sl_tensor in2[3] = {q, k, stale};
    check_op_vs_ref(ctx, SL_OP_MASS_BLOCKS, &p, in2, 2e-5, "mass.blocks stale");
    sl_tensor w2;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_MASS_BLOCKS, &p, in2, &w2), SL_OK);
    for (int64_t h = 0; h < hq; h++)
        for (int64_t I = 0; I < nqb; I++)
            for (int64_t J = 0; J < nkb; J++) {
                double want = block_mass(&q, &k, sl_, h, I, J, bq, bk, causal);
                double got = tu_at(&w2, (h * nqb + I) * nkb + J);
                ck_assert(fabs(got - want) <= 1e-5 * (1 + fabs(want)));
            }
    ck_assert(sl_op_flops(SL_OP_MASS_BLOCKS, &p, in) > 0);
    sl_tensor_release(&w);
    sl_tensor_release(&w2);
    sl_tensor_release(&ex);
    sl_tensor_release(&stale);
    release_n(dense, 2);
    sl_tensor_release(&q);
    sl_tensor_release(&k);
    sl_tensor_release(&v);
}

START_TEST(test_mass_blocks)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15101);
    check_case(ctx, &rng, 2, 2, 37, 37, 8, 8, 8, 0);
    check_case(ctx, &rng, 4, 2, 30, 45, 6, 7, 5, 1);
    check_case(ctx, &rng, 2, 1, 16, 16, 16, 16, 4, 0);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_mass_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15102);
    sl_tensor in[3] = {tu_randn(ctx, &rng, 2, 8, 4, 1), tu_randn(ctx, &rng, 2, 8, 4, 1), tu_randn(ctx, &rng, 1, 2, 8, 1)};
    sl_tensor lse;
    int64_t sh[2] = {2, 7};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, sh, &lse), SL_OK);
    sl_tensor_release(&in[2]);
    in[2] = lse;
    expect_fail(ctx, SL_OP_MASS_BLOCKS, NULL, in, SL_ESHAPE, "lse");
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_mass_blocks);
    tcase_add_test(tc, test_mass_validation);
}

int main(void) { return run_op_suite("mass_ops", add_tests); }
