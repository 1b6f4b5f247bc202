/* test_metric_ops.c — the metrics (metric.rel_l2, metric.cosine,
 * metric.max_abs, metric.recall) on ref and every other wanted backend
 * (SL_TEST_BACKENDS) against sums written out here in float64, and on inputs
 * large enough for many partial sums against ref. */

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
    sl_backend_id bs[SL_BACKEND__COUNT + 1] = {SL_BACKEND_REF};
    int nb = 1 + other_backends(bs + 1);
    sl_tensor in[2] = {x, y}, out[1];
    for (int i = 0; i < nb; i++) {
        sl_backend_id b = bs[i];
        ck_assert_int_eq(sl_op_run(ctx, b, SL_OP_METRIC_REL_L2, NULL, in, out), SL_OK);
        ck_assert_double_eq_tol(((double *)out[0].data)[0], sqrt(num / den), 1e-9);
        sl_tensor_release(&out[0]);
        ck_assert_int_eq(sl_op_run(ctx, b, SL_OP_METRIC_MAX_ABS, NULL, in, out), SL_OK);
        ck_assert_double_eq_tol(((double *)out[0].data)[0], mx, 1e-9);
        sl_tensor_release(&out[0]);
        ck_assert_int_eq(sl_op_run(ctx, b, SL_OP_METRIC_COSINE, NULL, in, out), SL_OK);
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
    for (int i = 0; i < nb; i++) {
        ck_assert_int_eq(sl_op_run(ctx, bs[i], SL_OP_METRIC_RECALL, NULL, rin, out), SL_OK);
        ck_assert_double_eq_tol(((double *)out[0].data)[0], (exp(-0.5) + 0 + 1) / 3, 1e-7);
        ck_assert_double_eq_tol(((double *)out[0].data)[1], 0, 1e-12);
        sl_tensor_release(&out[0]);
    }
    sl_tensor_release(&ls);
    sl_tensor_release(&ld);
    sl_tensor_release(&x);
    sl_tensor_release(&y);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* op's f64 outputs on every other wanted backend within tol (relative, at
 * least 1) of ref's: only the order of the float64 sums may differ. */
static void metric_vs_ref(sl_ctx *ctx, sl_op op, const sl_tensor *in, const char *what)
{
    sl_tensor ref, out;
    ck_assert_msg(sl_op_run(ctx, SL_BACKEND_REF, op, NULL, in, &ref) == SL_OK, "%s on ref: %s", what, sl_ctx_error(ctx));
    ck_assert_int_eq(ref.dtype, SL_F64);
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int b = 0; b < nb; b++) {
        sl_status s = sl_op_run(ctx, bs[b], op, NULL, in, &out);
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
        ck_assert_int_eq(out.dtype, SL_F64);
        ck_assert_int_eq(sl_tensor_numel(&out), sl_tensor_numel(&ref));
        for (int64_t i = 0; i < sl_tensor_numel(&ref); i++) {
            double x = ((const double *)out.data)[i], r = ((const double *)ref.data)[i];
            ck_assert_msg(fabs(x - r) <= 1e-12 * fmax(1, fabs(r)), "%s on %s: [%lld] = %.17g, ref %.17g", what,
                          sl_backend_name(bs[b]), (long long)i, x, r);
        }
        sl_tensor_release(&out);
    }
    sl_tensor_release(&ref);
}

/* Every backend against ref on inputs spread over many blocks of a device
 * kernel (and a grid-stride share per thread), the empty-row rules included:
 * a zero row in both tensors for the cosine, -inf reference rows for recall. */
START_TEST(test_metrics_vs_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6001);
    const int64_t shapes[][3] = {{1, 1, 1}, {2, 3, 4}, {4, 300, 17}, {3, 1000, 64}, {1, 70000, 1}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int64_t *sh = shapes[c];
        sl_tensor in[2] = {tu_randn(ctx, &rng, sh[0], sh[1], sh[2], 1), tu_randn(ctx, &rng, sh[0], sh[1], sh[2], 1)};
        for (int64_t e = 0; e < sh[2]; e++)  /* row 0 is zero in both */
            f32p(&in[0])[e] = f32p(&in[1])[e] = 0.f;
        char what[96];
        const sl_op ops[] = {SL_OP_METRIC_REL_L2, SL_OP_METRIC_MAX_ABS, SL_OP_METRIC_COSINE};
        for (int o = 0; o < 3; o++) {
            snprintf(what, sizeof what, "%s [%lld, %lld, %lld]", sl_op_info_get(ops[o])->name, (long long)sh[0],
                     (long long)sh[1], (long long)sh[2]);
            metric_vs_ref(ctx, ops[o], in, what);
        }
        release_n(in, 2);
        int64_t n = sh[0] * sh[1] * sh[2];
        sl_tensor rin[2] = {lse_random(ctx, &rng, 1, n, 0.5, 0, 0), lse_random(ctx, &rng, 1, n, 0.5, 7, 3)};
        f32p(&rin[0])[0] = -INFINITY; /* nothing kept of a row with mass */
        snprintf(what, sizeof what, "metric.recall [%lld]", (long long)n);
        metric_vs_ref(ctx, SL_OP_METRIC_RECALL, rin, what);
        release_n(rin, 2);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_metrics);
    tcase_add_test(tc, test_metrics_vs_ref);
}

int main(void) { return run_op_suite("metric_ops", add_tests); }
