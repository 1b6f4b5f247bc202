/* test_quant_ops.c — quant.fake on every backend in SL_TEST_BACKENDS
 * against ref (bit for bit: the contract's f32 arithmetic), and ref against
 * properties computed here in float64: every output is an integer multiple
 * of its group's step with |multiple| <= qmax, the error is at most half a
 * step, the group's largest |x| maps to exactly qmax steps, an all-zero
 * group stays zero, and the error falls as bits rise. */

#include "opsutil.h"

static void check_props(const sl_tensor *x, const sl_tensor *y, int bits, int64_t group)
{
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2];
    const float *src = x->data;
    double qmax = (double)((1 << (bits - 1)) - 1);
    for (int64_t h = 0; h < H; h++)
        for (int64_t r0 = 0; r0 < n; r0 += group) {
            int64_t r1 = r0 + group < n ? r0 + group : n;
            double m = 0;
            for (int64_t i = (h * n + r0) * d; i < (h * n + r1) * d; i++)
                m = fmax(m, fabs((double)src[i]));
            double step = m > 0 ? m / qmax : 1;
            for (int64_t i = (h * n + r0) * d; i < (h * n + r1) * d; i++) {
                double v = tu_at(y, i), k = v / step;
                ck_assert_msg(fabs(k - round(k)) < 1e-3 && fabs(round(k)) <= qmax, "y[%lld] = %g is not on the grid",
                              (long long)i, v);
                ck_assert_msg(fabs(v - src[i]) <= 0.5 * step * (1 + 1e-5), "error past half a step at %lld",
                              (long long)i);
                if (fabs((double)src[i]) == m && m > 0)
                    ck_assert(fabs(fabs(round(k)) - qmax) < 0.5);
            }
        }
}

START_TEST(test_quant_fake)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15201);
    sl_tensor x = tu_randn(ctx, &rng, 3, 70, 9, 1);
    float *xd = x.data;
    for (int64_t i = (2 * 70 + 64) * 9; i < 3 * 70 * 9; i++) /* head 2's last (ragged) group all zero: step 1 */
        xd[i] = 0;
    double prev = INFINITY;
    for (int bits = 2; bits <= 8; bits += 2) {
        sl_quant_fake_params p = {.bits = bits, .group = 32};
        check_op_vs_ref(ctx, SL_OP_QUANT_FAKE, &p, &x, 0, "quant.fake");
        sl_tensor y;
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_QUANT_FAKE, &p, &x, &y), SL_OK);
        check_props(&x, &y, bits, 32);
        double err = 0;
        for (int64_t i = 0; i < sl_tensor_numel(&x); i++)
            err = fmax(err, fabs(tu_at(&y, i) - xd[i]));
        ck_assert_msg(err < prev, "error %g at %d bits does not fall (%g before)", err, bits, prev);
        prev = err;
        ck_assert_double_eq(sl_op_flops(SL_OP_QUANT_FAKE, &p, &x), 3.0 * 3 * 70 * 9);
        sl_tensor_release(&y);
    }
    sl_quant_fake_params one = {.bits = 8, .group = 1};
    check_op_vs_ref(ctx, SL_OP_QUANT_FAKE, &one, &x, 0, "quant.fake per row");
    sl_tensor_release(&x);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_quant_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15202);
    sl_tensor x = tu_randn(ctx, &rng, 2, 4, 3, 1);
    sl_quant_fake_params p = {.bits = 1, .group = 4};
    expect_fail(ctx, SL_OP_QUANT_FAKE, &p, &x, SL_EARG, "bits");
    sl_tensor_release(&x);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_quant_fake);
    tcase_add_test(tc, test_quant_validation);
}

int main(void) { return run_op_suite("quant_ops", add_tests); }
