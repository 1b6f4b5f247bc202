/* test_metric_ops.c — the metrics (metric.rel_l2, metric.cosine,
 * metric.max_abs, metric.recall) on ref and cpu against sums written out
 * here in float64. */

#include "opsutil.h"

/* Metrics against sums written out here. */
START_TEST(test_metrics)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6000);
    sl_tensor x = tu_randn(ctx, &rng, 3, 7, 5, 1), y = tu_randn(ctx, &rng, 3, 7, 5, 1);
    double num = 0, den = 0, mx = 0, cmin = 1e9, csum = 0;
    for (int64_t r = 0; r < 21; r++) {
        double xy = 0, xx = 0, yy = 0;
        for (int64_t c = 0; c < 5; c++) {
            double a = tu_at(&x, r * 5 + c), b = tu_at(&y, r * 5 + c);
            num += (a - b) * (a - b);
            den += b * b;
            mx = fmax(mx, fabs(a - b));
            xy += a * b, xx += a * a, yy += b * b;
        }
        double cs = xy / sqrt(xx * yy);
        csum += cs;
        cmin = fmin(cmin, cs);
    }
    sl_tensor in[2] = {x, y}, out[1];
    for (int b = 0; b < 2; b++) {
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_METRIC_REL_L2, NULL, in, out), SL_OK);
        ck_assert_double_eq_tol(((double *)out[0].data)[0], sqrt(num / den), 1e-9);
        sl_tensor_release(&out[0]);
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_METRIC_MAX_ABS, NULL, in, out), SL_OK);
        ck_assert_double_eq_tol(((double *)out[0].data)[0], mx, 1e-9);
        sl_tensor_release(&out[0]);
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_METRIC_COSINE, NULL, in, out), SL_OK);
        ck_assert_double_eq_tol(((double *)out[0].data)[0], csum / 21, 1e-9);
        ck_assert_double_eq_tol(((double *)out[0].data)[1], cmin, 1e-9);
        sl_tensor_release(&out[0]);
    }
    /* recall: exp(Ls - Ld) per row, -inf reference rows skipped */
    int64_t sh[1] = {4};
    sl_tensor ls, ld;
    sl_tensor_new(ctx, SL_F32, 1, sh, &ls);
    sl_tensor_new(ctx, SL_F32, 1, sh, &ld);
    float lsv[4] = {0.5f, -INFINITY, 1.0f, -INFINITY}, ldv[4] = {1.0f, 2.0f, 1.0f, -INFINITY};
    memcpy(ls.data, lsv, sizeof lsv);
    memcpy(ld.data, ldv, sizeof ldv);
    sl_tensor rin[2] = {ls, ld};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_METRIC_RECALL, NULL, rin, out), SL_OK);
    ck_assert_double_eq_tol(((double *)out[0].data)[0], (exp(-0.5) + 0 + 1) / 3, 1e-7);
    ck_assert_double_eq_tol(((double *)out[0].data)[1], 0, 1e-12);
    sl_tensor_release(&out[0]);
    sl_tensor_release(&ls);
    sl_tensor_release(&ld);
    sl_tensor_release(&x);
    sl_tensor_release(&y);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_metrics);
}

int main(void) { return run_op_suite("metric_ops", add_tests); }
