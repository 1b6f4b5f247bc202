/* test_prune_ops.c — the prune family (issue 17) on every backend of
 * SL_TEST_BACKENDS against ref, and the cards' checks computed here:
 * magnitude pruning zeroes exactly floor(s.numel) entries, every kept |w| is
 * >= every pruned one (a random mask of the same count fails this), masks
 * nest and pruning is idempotent; N:M keeps exactly N of every M, the
 * largest; SparseGPT hits the block sparsity exactly, leaves w unchanged at
 * s = 0, equals magnitude pruning for white inputs in one block, zeroes dead
 * columns and reconstructs the calibration outputs better than magnitude
 * pruning at the same sparsity (and a random mask does worse than both);
 * the whitened low-rank factors beat plain (data-blind) SVD on the
 * calibration outputs, are exact at full rank and respect rho's budget. */

#include "opsutil.h"

#include <stdlib.h>

/* normal entries with every 5th a copy of its neighbour's magnitude (ties), no zeros */
static sl_tensor weights(sl_ctx *ctx, sl_rng *rng, int ndim, const int64_t *shape)
{
    sl_tensor w = randn_shape(ctx, rng, ndim, shape, 1.0);
    float *p = w.data;
    int64_t n = sl_tensor_numel(&w);
    for (int64_t i = 0; i < n; i++) {
        if (p[i] == 0)
            p[i] = 0.5f;
        if (i % 5 == 4)
            p[i] = -p[i - 1];
    }
    return w;
}

/* 1 when every nonzero of out equals w's entry, and min kept |w| >= max pruned |w| */
static int kept_dominate(const sl_tensor *w, const float *out)
{
    int64_t n = sl_tensor_numel(w);
    double min_kept = INFINITY, max_pruned = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = fabs(tu_at(w, i));
        if (out[i] != 0) {
            if (out[i] != tu_at(w, i))
                return 0;
            min_kept = fmin(min_kept, v);
        } else
            max_pruned = fmax(max_pruned, v);
    }
    return min_kept >= max_pruned;
}

static int64_t zeros_of(const float *p, int64_t n)
{
    int64_t z = 0;
    for (int64_t i = 0; i < n; i++)
        z += p[i] == 0;
    return z;
}

START_TEST(test_prune_magnitude)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17101);
    int64_t s2[2] = {7, 37}, s3[3] = {3, 4, 9};
    double sp[] = {0, 0.3, 0.5, 0.75, 0.9, 1};
    for (int c = 0; c < 2; c++) {
        sl_tensor w = c ? weights(ctx, &rng, 3, s3) : weights(ctx, &rng, 2, s2);
        int64_t n = sl_tensor_numel(&w);
        uint8_t *prev = calloc((size_t)n, 1);
        for (int i = 0; i < 6; i++) {
            sl_prune_mag_params p = {.sparsity = sp[i], .n = 0, .m = 4};
            check_op_vs_ref(ctx, SL_OP_PRUNE_MAGNITUDE, &p, &w, 0, "prune.magnitude");
            sl_tensor out = run_op1(ctx, SL_BACKEND_REF, SL_OP_PRUNE_MAGNITUDE, &p, &w);
            const float *o = out.data;
            ck_assert_int_eq(zeros_of(o, n), (int64_t)floor(sp[i] * (double)n));
            ck_assert(kept_dominate(&w, o));
            /* nested: what a lower sparsity pruned stays pruned */
            for (int64_t j = 0; j < n; j++) {
                ck_assert(!prev[j] || o[j] == 0);
                prev[j] = o[j] == 0;
            }
            /* idempotent */
            sl_tensor again = run_op1(ctx, SL_BACKEND_CPU, SL_OP_PRUNE_MAGNITUDE, &p, &out);
            for (int64_t j = 0; j < n; j++)
                ck_assert(tu_at(&again, j) == o[j]);
            sl_tensor_release(&again);
            sl_tensor_release(&out);
        }
        /* score-blind: a random mask of the same count fails the dominance check */
        float *rnd = malloc(sizeof *rnd * (size_t)n);
        for (int64_t j = 0; j < n; j++)
            rnd[j] = tu_at(&w, j);
        for (int64_t z = 0; z < n / 2;) {
            int64_t j = (int64_t)(sl_rng_uniform(&rng) * (double)n);
            if (rnd[j] != 0)
                rnd[j] = 0, z++;
        }
        ck_assert(!kept_dominate(&w, rnd));
        free(rnd);
        free(prev);
        sl_tensor_release(&w);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_prune_magnitude_nm)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17102);
    int nm[][2] = {{2, 4}, {4, 8}, {3, 6}, {1, 4}};
    for (int c = 0; c < 4; c++) {
        int64_t sh[2] = {6, 30}; /* ragged for every m */
        sl_tensor w = weights(ctx, &rng, 2, sh);
        sl_prune_mag_params p = {.sparsity = 0.5, .n = nm[c][0], .m = nm[c][1]};
        check_op_vs_ref(ctx, SL_OP_PRUNE_MAGNITUDE, &p, &w, 0, "prune.magnitude n:m");
        sl_tensor out = run_op1(ctx, SL_BACKEND_REF, SL_OP_PRUNE_MAGNITUDE, &p, &w);
        for (int64_t r = 0; r < 6; r++)
            for (int64_t c0 = 0; c0 < 30; c0 += p.m) {
                int64_t width = 30 - c0 < p.m ? 30 - c0 : p.m, kept = 0;
                double min_kept = INFINITY, max_pruned = 0;
                for (int64_t i = 0; i < width; i++) {
                    float o = tu_at(&out, r * 30 + c0 + i), v = tu_at(&w, r * 30 + c0 + i);
                    if (o != 0) {
                        ck_assert(o == v);
                        kept++;
                        min_kept = fmin(min_kept, fabs(v));
                    } else
                        max_pruned = fmax(max_pruned, fabs(v));
                }
                ck_assert_int_eq(kept, width < p.n ? width : p.n);
                ck_assert(min_kept >= max_pruned);
            }
        sl_tensor_release(&out);
        sl_tensor_release(&w);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ||(W - V) X^T||_F over calibration rows x [S, K] */
static double recon_err(const sl_tensor *w, const float *v, const sl_tensor *x)
{
    int64_t N = w->shape[0], K = w->shape[1], S = x->shape[0];
    double e = 0;
    for (int64_t r = 0; r < N; r++)
        for (int64_t t = 0; t < S; t++) {
            double d = 0;
            for (int64_t k = 0; k < K; k++)
                d += ((double)tu_at(w, r * K + k) - v[r * K + k]) * tu_at(x, t * K + k);
            e += d * d;
        }
    return sqrt(e);
}

/* anisotropic, correlated calibration inputs: x = z A with column scales 0.1 .. 3 */
static sl_tensor calib(sl_ctx *ctx, sl_rng *rng, int64_t S, int64_t K)
{
    int64_t sh[2] = {S, K};
    sl_tensor z = randn_shape(ctx, rng, 2, sh, 1.0), x = f32_2d(ctx, S, K);
    for (int64_t t = 0; t < S; t++)
        for (int64_t k = 0; k < K; k++) {
            double v = tu_at(&z, t * K + k) + 0.6 * tu_at(&z, t * K + (k + 1) % K);
            f32p(&x)[t * K + k] = (float)(v * (0.1 + 2.9 * (double)((k * 7) % K) / (double)K));
        }
    sl_tensor_release(&z);
    return x;
}

START_TEST(test_prune_sparsegpt)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17103);
    int64_t N = 12, K = 40, S = 64, sh[2] = {N, K};
    sl_tensor in[2] = {weights(ctx, &rng, 2, sh), calib(ctx, &rng, S, K)};
    double sp[] = {0.5, 0.7};
    for (int i = 0; i < 2; i++) {
        sl_prune_sgpt_params p = {.sparsity = sp[i], .n = 0, .m = 4, .blocksize = 16, .percdamp = 0.01};
        check_op_vs_ref(ctx, SL_OP_PRUNE_SPARSEGPT, &p, in, 1e-5, "prune.sparsegpt");
        sl_tensor out = run_op1(ctx, SL_BACKEND_REF, SL_OP_PRUNE_SPARSEGPT, &p, in);
        /* exact sparsity per block of 16 columns (the last one 8 wide) */
        for (int64_t i1 = 0; i1 < K; i1 += 16) {
            int64_t bw = K - i1 < 16 ? K - i1 : 16, z = 0;
            for (int64_t r = 0; r < N; r++)
                for (int64_t c = 0; c < bw; c++)
                    z += tu_at(&out, r * K + i1 + c) == 0;
            ck_assert_int_eq(z, (int64_t)floor(sp[i] * (double)(N * bw)));
        }
        /* calibration error below magnitude pruning's at the same sparsity */
        sl_prune_mag_params mp = {.sparsity = sp[i], .n = 0, .m = 4};
        sl_tensor mag = run_op1(ctx, SL_BACKEND_REF, SL_OP_PRUNE_MAGNITUDE, &mp, &in[0]);
        double e_sgpt = recon_err(&in[0], out.data, &in[1]), e_mag = recon_err(&in[0], mag.data, &in[1]);
        ck_assert_msg(e_sgpt < 0.8 * e_mag, "sparsegpt %g vs magnitude %g", e_sgpt, e_mag);
        /* score-blind: a random mask of the same count (no Hessian, no magnitude) is worse still */
        float *rnd = malloc(sizeof *rnd * (size_t)(N * K));
        for (int64_t j = 0; j < N * K; j++)
            rnd[j] = sl_rng_uniform(&rng) < sp[i] ? 0 : tu_at(&in[0], j);
        ck_assert(recon_err(&in[0], rnd, &in[1]) > e_sgpt);
        free(rnd);
        sl_tensor_release(&mag);
        sl_tensor_release(&out);
    }
    /* N:M: exactly n of every m kept per row */
    sl_prune_sgpt_params pnm = {.sparsity = 0, .n = 2, .m = 4, .blocksize = 18, .percdamp = 0.01};
    check_op_vs_ref(ctx, SL_OP_PRUNE_SPARSEGPT, &pnm, in, 1e-5, "prune.sparsegpt 2:4");
    sl_tensor out = run_op1(ctx, SL_BACKEND_CPU, SL_OP_PRUNE_SPARSEGPT, &pnm, in);
    for (int64_t g = 0; g < N * K / 4; g++)
        ck_assert_int_eq(4 - zeros_of(f32p(&out) + 4 * g, 4), 2);
    sl_prune_mag_params mnm = {.sparsity = 0, .n = 2, .m = 4};
    sl_tensor mag = run_op1(ctx, SL_BACKEND_REF, SL_OP_PRUNE_MAGNITUDE, &mnm, &in[0]);
    ck_assert(recon_err(&in[0], out.data, &in[1]) < recon_err(&in[0], mag.data, &in[1]));
    sl_tensor_release(&mag);
    sl_tensor_release(&out);
    /* s = 0: w unchanged up to round-off */
    sl_prune_sgpt_params p0 = {.sparsity = 0, .n = 0, .m = 4, .blocksize = 16, .percdamp = 0.01};
    out = run_op1(ctx, SL_BACKEND_CPU, SL_OP_PRUNE_SPARSEGPT, &p0, in);
    assert_tensor_close(&out, &in[0], 1e-6, "sparsegpt at s = 0");
    sl_tensor_release(&out);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* White inputs (H a multiple of I) in one block: the mask is the magnitude
 * mask and the kept weights are untouched; a dead input column is zeroed. */
START_TEST(test_prune_sparsegpt_white_and_dead)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17104);
    int64_t N = 6, K = 20, sh[2] = {N, K};
    sl_tensor in[2] = {weights(ctx, &rng, 2, sh), f32_2d(ctx, K, K)};
    for (int64_t i = 0; i < K * K; i++)
        f32p(&in[1])[i] = i / K == i % K ? 3.f : 0.f;
    sl_prune_sgpt_params p = {.sparsity = 0.6, .n = 0, .m = 4, .blocksize = 128, .percdamp = 0.01};
    sl_prune_mag_params mp = {.sparsity = 0.6, .n = 0, .m = 4};
    sl_tensor mag = run_op1(ctx, SL_BACKEND_REF, SL_OP_PRUNE_MAGNITUDE, &mp, &in[0]);
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!backend_wanted((sl_backend_id)b) || !sl_backend_available((sl_backend_id)b))
            continue;
        sl_tensor out = run_op1(ctx, (sl_backend_id)b, SL_OP_PRUNE_SPARSEGPT, &p, in);
        assert_tensor_close(&out, &mag, 1e-6, "sparsegpt with white inputs = magnitude");
        sl_tensor_release(&out);
    }
    /* column 3 never active: dead, zeroed */
    f32p(&in[1])[3 * K + 3] = 0;
    check_op_vs_ref(ctx, SL_OP_PRUNE_SPARSEGPT, &p, in, 1e-5, "prune.sparsegpt dead column");
    sl_tensor out = run_op1(ctx, SL_BACKEND_CPU, SL_OP_PRUNE_SPARSEGPT, &p, in);
    for (int64_t r = 0; r < N; r++)
        ck_assert(tu_at(&out, r * K + 3) == 0);
    sl_tensor_release(&out);
    sl_tensor_release(&mag);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_prune_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17105);
    int64_t sh[2] = {4, 10}, sx[2] = {5, 9};
    sl_tensor in[2] = {randn_shape(ctx, &rng, 2, sh, 1.0), randn_shape(ctx, &rng, 2, sx, 1.0)};
    sl_prune_sgpt_params p = {.sparsity = 0.5, .n = 0, .m = 4, .blocksize = 128, .percdamp = 0.01};
    expect_fail(ctx, SL_OP_PRUNE_SPARSEGPT, &p, in, SL_ESHAPE, "x must be [S >= 1, 10] (w's columns), found [5, 9]");
    sl_prune_mag_params mp = {.sparsity = 0.5, .n = 5, .m = 4};
    expect_fail(ctx, SL_OP_PRUNE_MAGNITUDE, &mp, in, SL_EARG, "n = 5 kept per group exceeds the group size m = 4");
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* a.b [N, K] into out (float64 sums) */
static void product(const sl_tensor *a, const sl_tensor *b, float *out)
{
    int64_t N = a->shape[0], r = a->shape[1], K = b->shape[1];
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            double acc = 0;
            for (int64_t c = 0; c < r; c++)
                acc += (double)tu_at(a, n * r + c) * tu_at(b, c * K + k);
            out[n * K + k] = (float)acc;
        }
}

START_TEST(test_prune_lowrank)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17106);
    int64_t N = 12, K = 20, S = 50, sh[2] = {N, K};
    sl_tensor in[2] = {weights(ctx, &rng, 2, sh), calib(ctx, &rng, S, K)};
    float *ab = malloc(sizeof *ab * (size_t)(N * K));
    int64_t ranks[] = {3, 8};
    for (int i = 0; i < 2; i++) {
        sl_prune_lowrank_params pw = {.rank = ranks[i], .rho = 0.5, .whiten = 1}, pp = pw;
        pp.whiten = 0;
        check_op_vs_ref(ctx, SL_OP_PRUNE_LOWRANK, &pw, in, 1e-4, "prune.lowrank whitened");
        check_op_vs_ref(ctx, SL_OP_PRUNE_LOWRANK, &pp, in, 1e-4, "prune.lowrank plain");
        sl_tensor fw[2], fp[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_PRUNE_LOWRANK, &pw, in, fw), SL_OK);
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_PRUNE_LOWRANK, &pp, in, fp), SL_OK);
        ck_assert_int_eq(fw[0].shape[1], ranks[i]);
        ck_assert_int_eq(fw[1].shape[0], ranks[i]);
        /* the whitened factors reconstruct the calibration outputs better than plain SVD (data-blind) */
        product(&fw[0], &fw[1], ab);
        double ew = recon_err(&in[0], ab, &in[1]);
        product(&fp[0], &fp[1], ab);
        double ep = recon_err(&in[0], ab, &in[1]);
        ck_assert_msg(ew < ep, "rank %lld: whitened %g, plain %g", (long long)ranks[i], ew, ep);
        release_n(fw, 2);
        release_n(fp, 2);
    }
    /* full rank: a.b = w; rho's rank keeps at most rho.N.K parameters */
    sl_prune_lowrank_params full = {.rank = 100, .rho = 0.5, .whiten = 1};
    sl_tensor f[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_PRUNE_LOWRANK, &full, in, f), SL_OK);
    ck_assert_int_eq(f[0].shape[1], N);
    product(&f[0], &f[1], ab);
    for (int64_t j = 0; j < N * K; j++)
        ck_assert_msg(fabs(ab[j] - tu_at(&in[0], j)) <= 1e-4 * (1 + fabs(tu_at(&in[0], j))), "full rank [%lld]", (long long)j);
    release_n(f, 2);
    sl_prune_lowrank_params pr = {.rank = 0, .rho = 0.4, .whiten = 1};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_PRUNE_LOWRANK, &pr, in, f), SL_OK);
    ck_assert_int_le(f[0].shape[1] * (N + K), (int64_t)(0.4 * (double)(N * K)));
    release_n(f, 2);
    /* fewer samples than columns: G is singular, the damping makes it factor */
    int64_t sx[2] = {5, K};
    sl_tensor few[2] = {in[0], randn_shape(ctx, &rng, 2, sx, 1.0)};
    sl_prune_lowrank_params p4 = {.rank = 4, .rho = 0.5, .whiten = 1};
    check_op_vs_ref(ctx, SL_OP_PRUNE_LOWRANK, &p4, few, 1e-3, "prune.lowrank rank-deficient Gram");
    sl_tensor_release(&few[1]);
    free(ab);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_prune_lowrank);
    tcase_add_test(tc, test_prune_magnitude);
    tcase_add_test(tc, test_prune_magnitude_nm);
    tcase_add_test(tc, test_prune_sparsegpt);
    tcase_add_test(tc, test_prune_sparsegpt_white_and_dead);
    tcase_add_test(tc, test_prune_validation);
}

int main(void) { return run_op_suite("prune_ops", add_tests); }
