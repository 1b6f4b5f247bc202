/* test_nsattn_ops.c — the nsattn family (attention whose weights are not a
 * softmax; issue 16): attn.entmax on ref and every other wanted backend
 * (SL_TEST_BACKENDS) against ref, and ref against float64 math written out
 * here: sparsemax as the Euclidean projection onto the simplex (Duchi et
 * al.'s sort-based projection and its KKT conditions), weights that sum to
 * one with exact zeros, alpha -> 1 approaching softmax, bisection agreeing
 * with the exact form, shift invariance, masked keys and a dominant score. */

#include "opsutil.h"

/* Shapes small enough for the simulator: ragged, GQA, not causal with n_q <
 * n_k, one query row, head_dim 128, a single token. */
static const shape_case NS_CASES[] = {
    {2, 1, 37, 37, 16, 1}, {4, 2, 40, 40, 32, 1}, {2, 2, 20, 50, 16, 0},
    {3, 3, 1, 77, 24, 1},  {2, 1, 9, 20, 128, 1}, {1, 1, 1, 1, 4, 1},
};
#define N_NS_CASES (int)(sizeof NS_CASES / sizeof NS_CASES[0])

static sl_attn_entmax_params entmax_p(int causal, double alpha, int algo)
{
    sl_attn_entmax_params p = {.causal = causal, .scale = 0, .alpha = alpha, .algo = algo, .n_iter = 50};
    return p;
}

/* O within tol of ref's scale; supports equal, except rows where a weight
 * sits within rounding of the threshold: at most one key off, in at most one
 * row in fifty. */
static void assert_entmax_close(const sl_tensor *o, const sl_tensor *sup, const sl_tensor *ro, const sl_tensor *rsup,
                                double tol, const char *what)
{
    assert_tensor_close(o, ro, tol, what);
    int64_t rows = sl_tensor_numel(rsup), off = 0;
    const int32_t *a = sup->data, *b = rsup->data;
    for (int64_t i = 0; i < rows; i++) {
        if (a[i] == b[i])
            continue;
        if (abs(a[i] - b[i]) > 1)
            ck_abort_msg("%s: support[%lld] = %d, ref %d", what, (long long)i, a[i], b[i]);
        off++;
    }
    ck_assert_msg(off * 50 <= rows, "%s: %lld of %lld supports differ from ref", what, (long long)off, (long long)rows);
}

/* op (outputs O and one int32 per row) on every backend in bs against ref
 * (assert_entmax_close at 1e-5); a backend other than cpu that answers
 * SL_EUNSUPPORTED is skipped with a line. what names the case. */
static void backends_match_ref2(sl_ctx *ctx, const sl_backend_id *bs, int nb, sl_op op, const void *p,
                                const sl_tensor *in, const sl_tensor ref[2], const char *what)
{
    const char *name = sl_op_info_get(op)->name;
    for (int b = 0; b < nb; b++) {
        sl_tensor out[2];
        sl_status s = sl_op_run(ctx, bs[b], op, p, in, out);
        if (s == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU) {
            printf("SKIP %s on %s: %s\n", name, sl_backend_name(bs[b]), sl_ctx_error(ctx));
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s on %s: %s", name, sl_backend_name(bs[b]), sl_ctx_error(ctx));
        char w[192];
        snprintf(w, sizeof w, "%s on %s", what, sl_backend_name(bs[b]));
        assert_entmax_close(&out[0], &out[1], &ref[0], &ref[1], 1e-5, w);
        release_n(out, 2);
    }
}

static void run2(sl_ctx *ctx, sl_backend_id b, const sl_attn_entmax_params *p, const sl_tensor *in, sl_tensor out[2])
{
    sl_status s = sl_op_run(ctx, b, SL_OP_ATTN_ENTMAX, p, in, out);
    ck_assert_msg(s == SL_OK, "attn.entmax on %s: %s", sl_backend_name(b), sl_ctx_error(ctx));
}

/* Every backend against ref for the exact forms (alpha 1, 1.5, 2) and the
 * bisection (alpha 1.3; alpha 1.5 and 2 in test_entmax_bisect_agrees_with_sort). */
START_TEST(test_entmax_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16000 + (uint64_t)_i);
    const shape_case *c = &NS_CASES[_i];
    sl_tensor in[3];
    qkv_of(ctx, &rng, c, 1.5, in);
    const double alphas[] = {1.0, 1.5, 2.0, 1.3};
    const int algos[] = {0, 0, 0, 1};
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int t = 0; t < 4; t++) {
        sl_attn_entmax_params p = entmax_p(c->causal, alphas[t], algos[t]);
        sl_tensor ref[2];
        run2(ctx, SL_BACKEND_REF, &p, in, ref);
        char w[128];
        snprintf(w, sizeof w, "attn.entmax alpha %g algo %d case %d", alphas[t], algos[t], _i);
        backends_match_ref2(ctx, bs, nb, SL_OP_ATTN_ENTMAX, &p, in, ref, w);
        release_n(ref, 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- independent float64 math ---- */

static int cmp_desc(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? 1 : a > b ? -1 : 0;
}

/* Euclidean projection of z[0..n) onto the probability simplex (Duchi,
 * Shalev-Shwartz, Singer, Chandra 2008): u sorted descending, rho the largest
 * j with u_j - (sum_{r<=j} u_r - 1) / j > 0, theta = (sum_{r<=rho} u_r - 1) /
 * rho, p = max(z - theta, 0). Returns theta. */
static double simplex_projection(const double *z, int64_t n, double *p)
{
    double *u = malloc((size_t)n * sizeof *u);
    ck_assert_ptr_nonnull(u);
    memcpy(u, z, (size_t)n * sizeof *u);
    qsort(u, (size_t)n, sizeof *u, cmp_desc);
    double run = 0, theta = 0;
    for (int64_t j = 1; j <= n; j++) {
        run += u[j - 1];
        double t = (run - 1.0) / (double)j;
        if (u[j - 1] - t > 0)
            theta = t;
    }
    for (int64_t j = 0; j < n; j++)
        p[j] = z[j] - theta > 0 ? z[j] - theta : 0;
    free(u);
    return theta;
}

/* scaled scores of row r of head h over its n visible keys, in float64 */
static int64_t row_scores(const sl_tensor *in, const shape_case *c, int64_t h, int64_t r, double scale, double *z)
{
    const float *q = in[0].data, *k = in[1].data;
    int64_t g = h / (c->hq / c->hkv), n = c->causal ? c->nk - c->nq + r + 1 : c->nk;
    for (int64_t j = 0; j < n; j++) {
        double s = 0;
        for (int64_t e = 0; e < c->d; e++)
            s += (double)q[(h * c->nq + r) * c->d + e] * (double)k[(g * c->nk + j) * c->d + e];
        z[j] = scale * s;
    }
    return n;
}

/* v [hkv, nk, d >= nk] with v[g, j] = e_j: then O's row is the weight row. */
static sl_tensor one_hot_values_d(sl_ctx *ctx, int64_t hkv, int64_t nk, int64_t d)
{
    int64_t sh[3] = {hkv, nk, d};
    sl_tensor v = f32_new(ctx, 3, sh);
    float *x = v.data;
    for (int64_t i = 0; i < hkv * nk * d; i++)
        x[i] = 0.f;
    for (int64_t g = 0; g < hkv; g++)
        for (int64_t j = 0; j < nk; j++)
            x[(g * nk + j) * d + j] = 1.f;
    return v;
}

static sl_tensor one_hot_values(sl_ctx *ctx, int64_t hkv, int64_t nk) { return one_hot_values_d(ctx, hkv, nk, nk); }

/* Sparsemax (alpha 2, exact and bisection) on every backend is the
 * Euclidean projection of the scaled scores onto the simplex: weights (read
 * as O through one-hot values) match the projection, sum to one, are exact
 * zeros below the threshold, and the support counts the positive ones; ref's
 * weights satisfy the projection's KKT conditions (z_j - p_j = tau on the
 * support, z_j <= tau off it). Causal and not. */
START_TEST(test_sparsemax_is_simplex_projection)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16100 + (uint64_t)_i);
    shape_case c = {2, 1, 12, 24, 24, _i};
    sl_tensor in[3];
    in[0] = tu_randn(ctx, &rng, c.hq, c.nq, c.d, 2.0);
    in[1] = tu_randn(ctx, &rng, c.hkv, c.nk, c.d, 2.0);
    in[2] = one_hot_values(ctx, c.hkv, c.nk);
    double scale = 1.0 / sqrt((double)c.d), z[24], p[24];
    int64_t total_support = 0, total_keys = 0;
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int algo = 0; algo < 2; algo++) {
            sl_attn_entmax_params pp = entmax_p(c.causal, 2.0, algo);
            sl_tensor out[2];
            run2(ctx, (sl_backend_id)b, &pp, in, out);
            for (int64_t h = 0; h < c.hq; h++)
                for (int64_t r = 0; r < c.nq; r++) {
                    int64_t n = row_scores(in, &c, h, r, scale, z);
                    double theta = simplex_projection(z, n, p), sum = 0;
                    const float *orow = f32p(&out[0]) + (h * c.nq + r) * c.nk;
                    int64_t pos = 0;
                    for (int64_t j = 0; j < c.nk; j++) {
                        double want = j < n ? p[j] : 0;
                        ck_assert_msg(fabs(orow[j] - want) <= 2e-5, "%s algo %d: p[%lld,%lld,%lld] = %.9g, projection %.9g",
                                      sl_backend_name((sl_backend_id)b), algo, (long long)h, (long long)r, (long long)j,
                                      orow[j], want);
                        ck_assert_msg(orow[j] >= 0.f, "negative weight");
                        if (j >= n || z[j] < theta - 1e-4)
                            ck_assert_msg(orow[j] == 0.f, "%s algo %d: weight %.3g where the projection is 0 (z - tau %.3g)",
                                          sl_backend_name((sl_backend_id)b), algo, orow[j], j < n ? z[j] - theta : -1.0);
                        sum += orow[j];
                        pos += orow[j] > 0;
                    }
                    ck_assert_msg(fabs(sum - 1.0) <= 1e-5, "weights sum to %.9g", sum);
                    ck_assert_int_eq(((int32_t *)out[1].data)[h * c.nq + r], pos);
                    if (b == SL_BACKEND_REF && algo == 0) {
                        total_support += pos;
                        total_keys += n;
                        /* KKT of min ||p - z||^2 on the simplex */
                        double tau = NAN;
                        for (int64_t j = 0; j < n; j++)
                            if (orow[j] > 0) {
                                double t = z[j] - orow[j];
                                if (isnan(tau))
                                    tau = t;
                                ck_assert_msg(fabs(t - tau) <= 1e-5, "z - p not constant on the support");
                            }
                        for (int64_t j = 0; j < n; j++)
                            if (orow[j] == 0.f)
                                ck_assert_msg(z[j] <= tau + 1e-5, "z[%lld] = %g above tau %g off the support", (long long)j,
                                              z[j], tau);
                    }
                }
            release_n(out, 2);
        }
    }
    /* the inputs make sparsemax sparse: the checks above saw exact zeros */
    ck_assert_msg(total_support < total_keys * 3 / 4, "support %lld of %lld keys: not sparse", (long long)total_support,
                  (long long)total_keys);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* alpha -> 1+: the bisection approaches softmax (attn.dense), the error
 * shrinking with alpha - 1; alpha = 1 is softmax itself with full support. */
START_TEST(test_entmax_alpha_to_one_is_softmax)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16200);
    const shape_case *c = &NS_CASES[0];
    sl_tensor in[3];
    qkv_of(ctx, &rng, c, 1.0, in);
    sl_attn_params dp = {.causal = 1, .scale = 0};
    sl_tensor dense[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &dp, in, dense), SL_OK);
    sl_backend_id bs[SL_BACKEND__COUNT + 1] = {SL_BACKEND_REF};
    int nb = 1 + other_backends(bs + 1);
    for (int b = 0; b < nb; b++) {
        double err[3];
        const double alphas[3] = {1.1, 1.01, 1.001};
        for (int t = 0; t < 3; t++) {
            sl_attn_entmax_params p = entmax_p(1, alphas[t], 1);
            sl_tensor out[2];
            run2(ctx, bs[b], &p, in, out);
            double num = 0, den = 0;
            for (int64_t i = 0; i < sl_tensor_numel(&dense[0]); i++) {
                double e = tu_at(&out[0], i) - tu_at(&dense[0], i);
                num += e * e;
                den += (double)tu_at(&dense[0], i) * tu_at(&dense[0], i);
            }
            err[t] = sqrt(num / den);
            release_n(out, 2);
        }
        ck_assert_msg(err[2] < 2e-3 && err[1] < err[0] && err[2] < err[1],
                      "%s: rel_l2 to softmax at alpha 1.1, 1.01, 1.001: %.3g %.3g %.3g", sl_backend_name(bs[b]), err[0],
                      err[1], err[2]);
        sl_attn_entmax_params p = entmax_p(1, 1.0, 0);
        sl_tensor out[2];
        run2(ctx, bs[b], &p, in, out);
        assert_tensor_close(&out[0], &dense[0], 1e-5, "alpha 1 vs attn.dense");
        for (int64_t r = 0; r < c->nq; r++)
            ck_assert_int_eq(((int32_t *)out[1].data)[r], (int32_t)(r + 1));
        release_n(out, 2);
    }
    release_n(dense, 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* The bisection (50 iterations) and the exact form agree for alpha 1.5 and
 * 2 on every backend (card: ~1e-6 in fp32). A score-blind threshold (the
 * bracket's starting midpoint, no search) does not: the check has teeth. */
START_TEST(test_entmax_bisect_agrees_with_sort)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16300);
    const shape_case *c = &NS_CASES[1];
    sl_tensor in[3];
    qkv_of(ctx, &rng, c, 1.5, in);
    sl_backend_id bs[SL_BACKEND__COUNT + 1] = {SL_BACKEND_REF};
    int nb = 1 + other_backends(bs + 1);
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < 2; t++) {
            double alpha = t ? 2.0 : 1.5;
            sl_attn_entmax_params pe = entmax_p(1, alpha, 0), pb = entmax_p(1, alpha, 1);
            sl_tensor ex[2], bi[2], rough[2];
            run2(ctx, bs[b], &pe, in, ex);
            run2(ctx, bs[b], &pb, in, bi);
            char w[96];
            snprintf(w, sizeof w, "bisection vs exact, alpha %g on %s", alpha, sl_backend_name(bs[b]));
            assert_entmax_close(&bi[0], &bi[1], &ex[0], &ex[1], 2e-6, w);
            pb.n_iter = 1;
            run2(ctx, bs[b], &pb, in, rough);
            double worst = 0;
            for (int64_t i = 0; i < sl_tensor_numel(&ex[0]); i++)
                worst = fmax(worst, fabs(tu_at(&rough[0], i) - tu_at(&ex[0], i)));
            ck_assert_msg(worst > 1e-3, "one bisection step already matches (%.3g): the check is blind", worst);
            release_n(ex, 2);
            release_n(bi, 2);
            release_n(rough, 2);
        }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* 1.5-entmax (exact) against a float64 root solve written here: tau with
 * sum [X - tau]_+^2 = 1 by 200 bisection steps on [max X - 1, max X]. */
START_TEST(test_entmax15_root)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16400);
    shape_case c = {2, 2, 10, 20, 20, 0};
    sl_tensor in[3];
    in[0] = tu_randn(ctx, &rng, c.hq, c.nq, c.d, 2.0);
    in[1] = tu_randn(ctx, &rng, c.hkv, c.nk, c.d, 2.0);
    in[2] = one_hot_values(ctx, c.hkv, c.nk);
    sl_attn_entmax_params p = entmax_p(0, 1.5, 0);
    sl_tensor out[2];
    run2(ctx, SL_BACKEND_REF, &p, in, out);
    double z[20], scale = 1.0 / sqrt((double)c.d);
    for (int64_t h = 0; h < c.hq; h++)
        for (int64_t r = 0; r < c.nq; r++) {
            int64_t n = row_scores(in, &c, h, r, scale, z);
            double mx = -INFINITY;
            for (int64_t j = 0; j < n; j++)
                mx = fmax(mx, z[j] *= 0.5);
            double lo = mx - 1, hi = mx;
            for (int it = 0; it < 200; it++) {
                double mid = 0.5 * (lo + hi), s = 0;
                for (int64_t j = 0; j < n; j++)
                    s += z[j] > mid ? (z[j] - mid) * (z[j] - mid) : 0;
                if (s >= 1)
                    lo = mid;
                else
                    hi = mid;
            }
            for (int64_t j = 0; j < n; j++) {
                double want = z[j] > lo ? (z[j] - lo) * (z[j] - lo) : 0;
                ck_assert_msg(fabs(tu_at(&out[0], (h * c.nq + r) * c.nk + j) - want) <= 1e-6, "1.5-entmax weight");
            }
        }
    release_n(out, 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Shift invariance (a constant added to every score of a row leaves the
 * weights unchanged), masked keys get exactly 0, and a row whose top score
 * beats the next by more than 1 is one-hot under sparsemax. */
START_TEST(test_entmax_card_properties)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16500);
    shape_case c = {1, 1, 16, 16, 16, 1};
    sl_tensor in[3], sh[3];
    in[0] = tu_randn(ctx, &rng, 1, c.nq, c.d, 2.0);
    in[1] = tu_randn(ctx, &rng, 1, c.nk, c.d, 2.0);
    in[2] = one_hot_values(ctx, 1, c.nk);
    /* shifted: q and k get one more channel, q's = 1 and k's = 3 */
    sh[0] = tu_randn(ctx, &rng, 1, c.nq, c.d + 1, 1.0);
    sh[1] = tu_randn(ctx, &rng, 1, c.nk, c.d + 1, 1.0);
    for (int64_t i = 0; i < c.nq; i++)
        for (int64_t e = 0; e <= c.d; e++) {
            f32p(&sh[0])[i * (c.d + 1) + e] = e < c.d ? f32p(&in[0])[i * c.d + e] : 1.f;
            f32p(&sh[1])[i * (c.d + 1) + e] = e < c.d ? f32p(&in[1])[i * c.d + e] : 3.f;
        }
    sh[2] = one_hot_values_d(ctx, 1, c.nk, c.d + 1);
    sl_backend_id bs[SL_BACKEND__COUNT + 1] = {SL_BACKEND_REF};
    int nb = 1 + other_backends(bs + 1);
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < 3; t++) {
            double alpha = t == 0 ? 1.5 : 2.0;
            sl_attn_entmax_params p = entmax_p(1, alpha, t == 2), ps = p;
            p.scale = ps.scale = 0.25;
            sl_tensor a[2], s[2];
            run2(ctx, bs[b], &p, in, a);
            run2(ctx, bs[b], &ps, sh, s);
            for (int64_t r = 0; r < c.nq; r++)
                for (int64_t j = 0; j < c.nk; j++)
                    ck_assert_msg(fabs(tu_at(&s[0], r * (c.d + 1) + j) - tu_at(&a[0], r * c.nk + j)) <= 1e-5,
                                  "shifted scores change weight [%lld, %lld]", (long long)r, (long long)j);
            for (int64_t r = 0; r < c.nq; r++)
                for (int64_t j = r + 1; j < c.nk; j++)
                    ck_assert_msg(tu_at(&a[0], r * c.nk + j) == 0.f, "masked key %lld of row %lld has weight %g",
                                  (long long)j, (long long)r, tu_at(&a[0], r * c.nk + j));
            release_n(a, 2);
            release_n(s, 2);
        }
    /* dominant score: key 5 = 3 x the last query row, so its score leads by far */
    for (int64_t e = 0; e < c.d; e++)
        f32p(&in[1])[5 * c.d + e] = 3.f * f32p(&in[0])[(c.nq - 1) * c.d + e];
    for (int b = 0; b < nb; b++) {
        sl_attn_entmax_params p = entmax_p(1, 2.0, 0);
        sl_tensor a[2];
        run2(ctx, bs[b], &p, in, a);
        for (int64_t j = 0; j < c.nk; j++)
            ck_assert_msg(tu_at(&a[0], (c.nq - 1) * c.nk + j) == (j == 5 ? 1.f : 0.f), "not one-hot at %lld: %g",
                          (long long)j, tu_at(&a[0], (c.nq - 1) * c.nk + j));
        ck_assert_int_eq(((int32_t *)a[1].data)[c.nq - 1], 1);
        release_n(a, 2);
    }
    release_n(in, 3);
    release_n(sh, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_entmax_errors)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16600);
    sl_tensor in[3];
    qkv_of(ctx, &rng, &NS_CASES[0], 1.0, in);
    sl_attn_entmax_params p = entmax_p(1, 1.7, 0);
    expect_fail(ctx, SL_OP_ATTN_ENTMAX, &p, in, SL_EARG, "needs alpha 1, 1.5 or 2, found 1.7");
    p = entmax_p(1, 2.5, 1);
    expect_fail(ctx, SL_OP_ATTN_ENTMAX, &p, in, SL_EARG, "alpha");
    p = entmax_p(1, 1.5, 0);
    f32p(&in[2])[3] = NAN;
    expect_fail(ctx, SL_OP_ATTN_ENTMAX, &p, in, SL_EARG, "NaN");
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- attn.relu, norm.rms_gated ---- */

static sl_attn_relu_params relu_p(int causal, double power, double bias, int norm)
{
    sl_attn_relu_params p = {.causal = causal, .scale = 0, .power = power, .bias = bias, .norm = norm};
    return p;
}

/* ReLA (power 1, no normalisation), HSR's ReLU^alpha (power 2 and 3, a
 * threshold, with and without normalisation): every backend against ref
 * (counts as entmax's supports), ref against the formula written out here
 * in float64 with the reference's multiplicative 0/1 mask (logits times 0
 * for future keys, then ReLU) where bias is 0. */
START_TEST(test_relu_backends_and_formula)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16700 + (uint64_t)_i);
    const shape_case *c = &NS_CASES[_i];
    sl_tensor in[3];
    qkv_of(ctx, &rng, c, 1.0, in);
    const double powers[] = {1, 2, 3, 1.5}, biases[] = {0, 0.3, -0.2, 0};
    const int norms[] = {0, 1, 0, 1};
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    const float *q = in[0].data, *k = in[1].data, *v = in[2].data;
    double scale = 1.0 / sqrt((double)c->d);
    for (int t = 0; t < 4; t++) {
        sl_attn_relu_params p = relu_p(c->causal, powers[t], biases[t], norms[t]);
        sl_tensor ref[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_RELU, &p, in, ref), SL_OK);
        /* the formula */
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t i = 0; i < c->nq; i++) {
                int64_t g = h / (c->hq / c->hkv);
                double num[128] = {0}, den = 0;
                int cnt = 0;
                for (int64_t j = 0; j < c->nk; j++) {
                    double s = 0;
                    for (int64_t e = 0; e < c->d; e++)
                        s += (double)q[(h * c->nq + i) * c->d + e] * k[(g * c->nk + j) * c->d + e];
                    int visible = !c->causal || j <= i + c->nk - c->nq;
                    double x;
                    if (biases[t] == 0)
                        x = s * scale * (visible ? 1.0 : 0.0); /* bzhangGo/zero: logits *= 0/1 mask, then relu */
                    else
                        x = visible ? s * scale - biases[t] : -1.0;
                    double w = x > 0 ? pow(x, powers[t]) : 0;
                    cnt += w > 0;
                    den += w;
                    for (int64_t e = 0; e < c->d; e++)
                        num[e] += w * v[(g * c->nk + j) * c->d + e];
                }
                for (int64_t e = 0; e < c->d; e++) {
                    double want = norms[t] ? (den > 0 ? num[e] / den : 0) : num[e];
                    double got = tu_at(&ref[0], (h * c->nq + i) * c->d + e);
                    ck_assert_msg(fabs(got - want) <= 1e-5 * fmax(1.0, fabs(want)), "relu case %d t %d: O %.9g, formula %.9g",
                                  _i, t, got, want);
                }
                ck_assert_int_eq(((int32_t *)ref[1].data)[h * c->nq + i], cnt);
            }
        char w[96];
        snprintf(w, sizeof w, "attn.relu t %d case %d", t, _i);
        backends_match_ref2(ctx, bs, nb, SL_OP_ATTN_RELU, &p, in, ref, w);
        release_n(ref, 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* A row whose scores are all <= 0 (bias above every score) is zero, with
 * count 0, normalised or not; the op rejects NaN. */
START_TEST(test_relu_switched_off_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16800);
    sl_tensor in[3];
    qkv_of(ctx, &rng, &NS_CASES[0], 1.0, in);
    sl_backend_id bs[SL_BACKEND__COUNT + 1] = {SL_BACKEND_REF};
    int nb = 1 + other_backends(bs + 1);
    for (int b = 0; b < nb; b++)
        for (int norm = 0; norm < 2; norm++) {
            sl_attn_relu_params p = relu_p(1, 1, 1e3, norm);
            sl_tensor out[2];
            ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_RELU, &p, in, out), SL_OK);
            for (int64_t i = 0; i < sl_tensor_numel(&out[0]); i++)
                ck_assert(tu_at(&out[0], i) == 0.f);
            for (int64_t i = 0; i < sl_tensor_numel(&out[1]); i++)
                ck_assert_int_eq(((int32_t *)out[1].data)[i], 0);
            release_n(out, 2);
        }
    sl_attn_relu_params p = relu_p(1, 1, 0, 0);
    f32p(&in[0])[5] = NAN;
    expect_fail(ctx, SL_OP_ATTN_RELU, &p, in, SL_EARG, "NaN");
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* norm.rms_gated against the formula in float64 (with and without g, w and
 * the gate), every backend against ref; without the gate, scaling x by c
 * leaves y unchanged (RMSNorm's scale invariance); a zero token stays 0. */
START_TEST(test_rms_gated)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 16900);
    const int64_t H = 3, N = 11, D = 8;
    sl_tensor x = tu_randn(ctx, &rng, H, N, D, 1.5);
    int64_t e1[1] = {H * D};
    sl_tensor gw = randn_shape(ctx, &rng, 1, e1, 1.0), ww = randn_shape(ctx, &rng, 1, e1, 1.0);
    for (int n = 0; n < H * D; n++)
        f32p(&gw)[n] += 1.f;
    for (int with = 0; with < 2; with++)
        for (int gate = 0; gate < 2; gate++) {
            sl_norm_rms_gated_params p = {.eps = 1.1920928955078125e-07, .gate = gate};
            sl_tensor in[3] = {x, with ? gw : (sl_tensor){0}, with ? ww : (sl_tensor){0}}, out[1];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_NORM_RMS_GATED, &p, in, out), SL_OK);
            for (int64_t n = 0; n < N; n++) {
                double ms = 0;
                for (int64_t e = 0; e < H * D; e++) {
                    double u = tu_at(&x, ((e / D) * N + n) * D + e % D);
                    ms += u * u / (double)(H * D);
                }
                for (int64_t e = 0; e < H * D; e++) {
                    double u = tu_at(&x, ((e / D) * N + n) * D + e % D);
                    double g = with ? tu_at(&gw, e) : 1, w = with ? tu_at(&ww, e) : 1;
                    double want = g * u / sqrt(ms + p.eps) * (gate ? 1 / (1 + exp(-w * u)) : 1);
                    ck_assert_double_eq_tol(tu_at(&out[0], ((e / D) * N + n) * D + e % D), want, 1e-5 * fmax(1, fabs(want)));
                }
            }
            sl_tensor_release(&out[0]);
            check_op_vs_ref(ctx, SL_OP_NORM_RMS_GATED, &p, in, 1e-5, "norm.rms_gated");
        }
    /* scale invariance without the gate; a zero token */
    sl_norm_rms_gated_params p = {.eps = 1e-12, .gate = 0};
    sl_tensor xs = tu_randn(ctx, &rng, H, N, D, 1.0);
    for (int64_t i = 0; i < H * N * D; i++)
        f32p(&xs)[i] = 7.f * tu_at(&x, i);
    for (int64_t h = 0; h < H; h++)
        for (int64_t c = 0; c < D; c++)
            f32p(&x)[(h * N + 2) * D + c] = 0.f;
    for (int64_t h = 0; h < H; h++)
        for (int64_t c = 0; c < D; c++)
            f32p(&xs)[(h * N + 2) * D + c] = 0.f;
    sl_tensor a[1], b2[1], in1[3] = {x, {0}, {0}}, in2[3] = {xs, {0}, {0}};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_NORM_RMS_GATED, &p, in1, a), SL_OK);
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_NORM_RMS_GATED, &p, in2, b2), SL_OK);
    assert_tensor_close(&b2[0], &a[0], 1e-5, "rms norm of 7x");
    for (int64_t h = 0; h < H; h++)
        for (int64_t c = 0; c < D; c++)
            ck_assert(tu_at(&a[0], (h * N + 2) * D + c) == 0.f);
    sl_tensor_release(&a[0]);
    sl_tensor_release(&b2[0]);
    int64_t bad[1] = {5};
    sl_tensor wrong = randn_shape(ctx, &rng, 1, bad, 1.0), in3[3] = {x, wrong, {0}};
    expect_fail(ctx, SL_OP_NORM_RMS_GATED, &p, in3, SL_ESHAPE, "opt.g must be [24]");
    sl_tensor_release(&wrong);
    sl_tensor_release(&xs);
    sl_tensor_release(&x);
    sl_tensor_release(&gw);
    sl_tensor_release(&ww);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- attn.sigmoid_gate ---- */

/* Headwise and elementwise gates against the formula (float64) and every
 * backend against ref, with and without skipping (eps); logits of 100
 * (sigmoid = 1 in float) leave O unchanged; a headwise gate equals the
 * elementwise gate that repeats it over D. */
START_TEST(test_sigmoid_gate)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17000);
    const int64_t H = 3, N = 13, D = 8;
    sl_tensor o = tu_randn(ctx, &rng, H, N, D, 1.0);
    for (int G = 1; G <= D; G += D - 1) {
        sl_tensor g = tu_randn(ctx, &rng, H, N, G, 2.0);
        for (int t = 0; t < 2; t++) {
            sl_attn_sigmoid_gate_params p = {.eps = t ? 0.3 : 0};
            sl_tensor in[2] = {o, g}, out[2];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_SIGMOID_GATE, &p, in, out), SL_OK);
            for (int64_t r = 0; r < H * N; r++) {
                int kept = 0;
                for (int64_t c = 0; c < D; c++) {
                    double sig = 1 / (1 + exp(-(double)tu_at(&g, r * G + (G == 1 ? 0 : c))));
                    double want = sig >= p.eps ? tu_at(&o, r * D + c) * sig : 0;
                    kept += sig >= p.eps;
                    ck_assert_double_eq_tol(tu_at(&out[0], r * D + c), want, 1e-6);
                    if (sig < p.eps)
                        ck_assert(tu_at(&out[0], r * D + c) == 0.f);
                }
                ck_assert_int_eq(((int32_t *)out[1].data)[r], kept);
            }
            release_n(out, 2);
            check_op_vs_ref(ctx, SL_OP_ATTN_SIGMOID_GATE, &p, in, 1e-6, "attn.sigmoid_gate");
        }
        sl_tensor_release(&g);
    }
    /* open gates and the headwise broadcast */
    int64_t sh1[3] = {H, N, 1}, shd[3] = {H, N, D};
    sl_tensor big = f32_new(ctx, 3, sh1), hw = randn_shape(ctx, &rng, 3, sh1, 1.0), ew = f32_new(ctx, 3, shd);
    for (int64_t r = 0; r < H * N; r++) {
        f32p(&big)[r] = 100.f;
        for (int64_t c = 0; c < D; c++)
            f32p(&ew)[r * D + c] = f32p(&hw)[r];
    }
    sl_backend_id bs[SL_BACKEND__COUNT + 1] = {SL_BACKEND_REF};
    int nb = 1 + other_backends(bs + 1);
    sl_attn_sigmoid_gate_params p = {.eps = 0};
    for (int b = 0; b < nb; b++) {
        sl_tensor in[2] = {o, big}, out[2], a1[2], a2[2];
        ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_SIGMOID_GATE, &p, in, out), SL_OK);
        for (int64_t i = 0; i < H * N * D; i++)
            ck_assert(tu_at(&out[0], i) == tu_at(&o, i));
        release_n(out, 2);
        sl_tensor i1[2] = {o, hw}, i2[2] = {o, ew};
        ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_SIGMOID_GATE, &p, i1, a1), SL_OK);
        ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_SIGMOID_GATE, &p, i2, a2), SL_OK);
        assert_tensor_close(&a1[0], &a2[0], 1e-7, "headwise = repeated elementwise");
        release_n(a1, 2);
        release_n(a2, 2);
    }
    int64_t shb[3] = {H, N, 3};
    sl_tensor bad = randn_shape(ctx, &rng, 3, shb, 1.0), inb[2] = {o, bad};
    expect_fail(ctx, SL_OP_ATTN_SIGMOID_GATE, &p, inb, SL_ESHAPE, "g must be [3, 13, 1 or 8]");
    sl_tensor_release(&bad);
    sl_tensor_release(&big);
    sl_tensor_release(&hw);
    sl_tensor_release(&ew);
    sl_tensor_release(&o);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- attn.fastmax ---- */

static sl_attn_fastmax_params fastmax_p(int causal, int p2, int normalize)
{
    sl_attn_fastmax_params p = {.causal = causal, .p = p2 ? 2 : 1, .a0 = 1, .a1 = 1, .a2 = 0.5, .normalize = normalize,
                                .lim = 1};
    return p;
}

/* The cpu's factorised form (running key states) and CUDA's explicit rows
 * against ref's explicit rows (card: factorised == explicit to ~1e-5), p = 1
 * and 2, causal or not, normalised or not; ref against the row-normalised
 * f(QK^T)V written out here (after the max-norm scaling). */
START_TEST(test_fastmax_backends_and_formula)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17100 + (uint64_t)_i);
    const shape_case *c = &NS_CASES[_i];
    sl_tensor in[3];
    qkv_of(ctx, &rng, c, 0.3, in);
    const float *q = in[0].data, *k = in[1].data, *v = in[2].data;
    for (int t = 0; t < 4; t++) {
        sl_attn_fastmax_params p = fastmax_p(c->causal, t & 1, t < 3);
        check_op_vs_ref(ctx, SL_OP_ATTN_FASTMAX, &p, in, 2e-5, "attn.fastmax");
        sl_tensor ref[1];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_FASTMAX, &p, in, ref), SL_OK);
        for (int64_t h = 0; h < c->hq; h++) {
            int64_t g = h / (c->hq / c->hkv);
            double mq = 0, mk = 0;
            for (int64_t i = 0; i < c->nq; i++) {
                double s = 0;
                for (int64_t e = 0; e < c->d; e++)
                    s += (double)q[(h * c->nq + i) * c->d + e] * q[(h * c->nq + i) * c->d + e];
                mq = fmax(mq, sqrt(s));
            }
            for (int64_t j = 0; j < c->nk; j++) {
                double s = 0;
                for (int64_t e = 0; e < c->d; e++)
                    s += (double)k[(g * c->nk + j) * c->d + e] * k[(g * c->nk + j) * c->d + e];
                mk = fmax(mk, sqrt(s));
            }
            double scl = p.normalize ? 1 / (mq * mk) : 1;
            for (int64_t i = 0; i < c->nq; i++) {
                double num[128] = {0}, den = 0;
                for (int64_t j = 0; j <= (c->causal ? i + c->nk - c->nq : c->nk - 1); j++) {
                    double x = 0;
                    for (int64_t e = 0; e < c->d; e++)
                        x += (double)q[(h * c->nq + i) * c->d + e] * k[(g * c->nk + j) * c->d + e];
                    x *= scl;
                    double f = 1 + x + (p.p == 2 ? x * x / 2 : 0);
                    if (p.normalize)
                        ck_assert_msg(f > 0, "fastmax weight %g <= 0", f);
                    den += f;
                    for (int64_t e = 0; e < c->d; e++)
                        num[e] += f * v[(g * c->nk + j) * c->d + e];
                }
                for (int64_t e = 0; e < c->d; e++)
                    ck_assert_double_eq_tol(tu_at(&ref[0], (h * c->nq + i) * c->d + e), num[e] / den, 1e-5);
            }
        }
        sl_tensor_release(&ref[0]);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- attn.tra ---- */

static sl_attn_tra_params tra_p(int causal, int qk_norm)
{
    sl_attn_tra_params p = {.causal = causal, .scale = 0, .qk_norm = qk_norm, .eps = 1e-6};
    return p;
}

/* float64 TRA of one row written from the card: c_ij counted by its
 * definition (kept keys l with j <= l <= last visible). */
static int tra_row(const float *q, const float *k, const float *v, int64_t n, int64_t d, double scale, int qk_norm,
                   double eps, double delta, double *o)
{
    double S[256], nq = 0;
    for (int64_t e = 0; e < d; e++)
        nq += (double)q[e] * q[e];
    double iq = qk_norm ? 1 / sqrt(nq / (double)d + eps) : 1;
    for (int64_t j = 0; j < n; j++) {
        double s = 0, nk = 0;
        for (int64_t e = 0; e < d; e++) {
            s += (double)q[e] * k[j * d + e];
            nk += (double)k[j * d + e] * k[j * d + e];
        }
        S[j] = scale * s * iq * (qk_norm ? 1 / sqrt(nk / (double)d + eps) : 1);
    }
    double mx = -INFINITY, A[256];
    int kept = 0;
    for (int64_t j = 0; j < n; j++) {
        if (!(S[j] > 0))
            continue;
        int c = 0;
        for (int64_t l = j; l < n; l++)
            c += S[l] > 0;
        A[j] = S[j] + delta * c;
        mx = fmax(mx, A[j]);
        kept++;
    }
    double l = 0;
    for (int64_t e = 0; e < d; e++)
        o[e] = 0;
    for (int64_t j = 0; j < n; j++)
        if (S[j] > 0) {
            double w = exp(A[j] - mx);
            l += w;
            for (int64_t e = 0; e < d; e++)
                o[e] += w * v[j * d + e];
        }
    for (int64_t e = 0; e < d; e++)
        o[e] = kept ? o[e] / l : 0;
    return kept;
}

/* Every backend against ref (counts as entmax's supports), ref against the
 * float64 row above, with and without the QK-norm, random gates delta <= 0.
 * (A score within float rounding of 0 could flip a key between the float
 * and float64 kernels; the seeds here have none.) */
START_TEST(test_tra_backends_and_formula)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17200 + (uint64_t)_i);
    const shape_case *c = &NS_CASES[_i];
    sl_tensor in[4];
    qkv_of(ctx, &rng, c, 1.0, in);
    in[3] = f32_2d(ctx, c->hq, c->nq);
    for (int64_t i = 0; i < c->hq * c->nq; i++)
        f32p(&in[3])[i] = (float)log(1 / (1 + exp(-2 * sl_rng_normal(&rng))));
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int qn = 0; qn < 2; qn++) {
        sl_attn_tra_params p = tra_p(c->causal, qn);
        sl_tensor ref[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_TRA, &p, in, ref), SL_OK);
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t i = 0; i < c->nq; i++) {
                int64_t g = h / (c->hq / c->hkv), n = c->causal ? i + c->nk - c->nq + 1 : c->nk;
                double o[128];
                int kept = tra_row(f32p(&in[0]) + (h * c->nq + i) * c->d, f32p(&in[1]) + g * c->nk * c->d,
                                   f32p(&in[2]) + g * c->nk * c->d, n, c->d, 1 / sqrt((double)c->d), qn, 1e-6,
                                   tu_at(&in[3], h * c->nq + i), o);
                ck_assert_int_eq(((int32_t *)ref[1].data)[h * c->nq + i], kept);
                for (int64_t e = 0; e < c->d; e++)
                    ck_assert_double_eq_tol(tu_at(&ref[0], (h * c->nq + i) * c->d + e), o[e], 1e-5);
            }
        char w[96];
        snprintf(w, sizeof w, "attn.tra qk_norm %d case %d", qn, _i);
        backends_match_ref2(ctx, bs, nb, SL_OP_ATTN_TRA, &p, in, ref, w);
        release_n(ref, 2);
    }
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Card checks: every score positive and delta = 0 is softmax attention over
 * the causal keys of the QK-normed q, k (attn.dense on them); an empty kept
 * set gives a zero row; inserting irrelevant keys (score <= 0 for every
 * query) between relevant ones leaves the output unchanged. */
START_TEST(test_tra_card_checks)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17300);
    const int64_t n = 24, d = 8;
    sl_tensor in[4];
    in[0] = tu_randn(ctx, &rng, 1, n, d, 1.0);
    in[1] = tu_randn(ctx, &rng, 1, n, d, 1.0);
    in[2] = tu_randn(ctx, &rng, 1, n, d, 1.0);
    in[3] = f32_2d(ctx, 1, n);
    for (int64_t i = 0; i < n * d; i++) {
        f32p(&in[0])[i] = fabsf(f32p(&in[0])[i]) + 0.1f;
        f32p(&in[1])[i] = fabsf(f32p(&in[1])[i]) + 0.1f;
    }
    for (int64_t i = 0; i < n; i++)
        f32p(&in[3])[i] = 0.f;
    /* normalised copies for attn.dense */
    sl_tensor nq = tu_randn(ctx, &rng, 1, n, d, 1.0), nk = tu_randn(ctx, &rng, 1, n, d, 1.0);
    for (int t = 0; t < 2; t++) {
        const float *x = in[t].data;
        float *y = (t ? nk : nq).data;
        for (int64_t i = 0; i < n; i++) {
            double ss = 0;
            for (int64_t e = 0; e < d; e++)
                ss += (double)x[i * d + e] * x[i * d + e];
            for (int64_t e = 0; e < d; e++)
                y[i * d + e] = (float)(x[i * d + e] / sqrt(ss / (double)d + 1e-6));
        }
    }
    sl_tensor din[3] = {nq, nk, in[2]}, dense[2];
    sl_attn_params dp = {.causal = 1, .scale = 0};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &dp, din, dense), SL_OK);
    sl_backend_id bs[SL_BACKEND__COUNT + 1] = {SL_BACKEND_REF};
    int nb = 1 + other_backends(bs + 1);
    sl_attn_tra_params p = tra_p(1, 1);
    for (int b = 0; b < nb; b++) {
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_TRA, &p, in, out), SL_OK);
        assert_tensor_close(&out[0], &dense[0], 1e-5, "tra with all scores > 0, delta 0 vs softmax");
        release_n(out, 2);
    }
    release_n(dense, 2);
    /* empty kept set: every key opposite to every query */
    sl_tensor neg[4] = {in[0], tu_randn(ctx, &rng, 1, n, d, 1.0), in[2], in[3]};
    for (int64_t i = 0; i < n * d; i++)
        f32p(&neg[1])[i] = -fabsf(f32p(&neg[1])[i]) - 0.1f;
    for (int b = 0; b < nb; b++) {
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_TRA, &p, neg, out), SL_OK);
        for (int64_t i = 0; i < n * d; i++)
            ck_assert(tu_at(&out[0], i) == 0.f && !isnan(tu_at(&out[0], i)));
        for (int64_t i = 0; i < n; i++)
            ck_assert_int_eq(((int32_t *)out[1].data)[i], 0);
        release_n(out, 2);
    }
    /* insertion of irrelevant keys: one query (not causal), 8 relevant keys,
     * then the same with 3 irrelevant keys after each of the first four */
    const int64_t nr = 8, ni = nr + 12;
    sl_tensor a[4], bb[4];
    a[0] = tu_randn(ctx, &rng, 1, 1, d, 1.0);
    a[1] = tu_randn(ctx, &rng, 1, nr, d, 1.0);
    a[2] = tu_randn(ctx, &rng, 1, nr, d, 1.0);
    a[3] = f32_2d(ctx, 1, 1);
    f32p(&a[3])[0] = -0.7f;
    for (int64_t e = 0; e < d; e++)
        f32p(&a[0])[e] = fabsf(f32p(&a[0])[e]) + 0.1f;
    for (int64_t i = 0; i < nr * d; i++)
        f32p(&a[1])[i] = fabsf(f32p(&a[1])[i]) + 0.1f;
    bb[0] = a[0];
    bb[3] = a[3];
    bb[1] = tu_randn(ctx, &rng, 1, ni, d, 1.0);
    bb[2] = tu_randn(ctx, &rng, 1, ni, d, 1.0);
    for (int64_t j = 0, src = 0; j < ni; j++) {
        /* layout: r0 i i i r1 i i i r2 i i i r3 i i i r4 r5 r6 r7 */
        int is_rel = j >= 16 || j % 4 == 0;
        for (int64_t e = 0; e < d; e++) {
            if (is_rel) {
                f32p(&bb[1])[j * d + e] = f32p(&a[1])[src * d + e];
                f32p(&bb[2])[j * d + e] = f32p(&a[2])[src * d + e];
            } else {
                f32p(&bb[1])[j * d + e] = -fabsf(f32p(&bb[1])[j * d + e]) - 0.1f;
            }
        }
        src += is_rel;
    }
    sl_attn_tra_params pn = tra_p(0, 1);
    for (int b = 0; b < nb; b++) {
        sl_tensor oa[2], ob[2];
        ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_TRA, &pn, a, oa), SL_OK);
        ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_TRA, &pn, bb, ob), SL_OK);
        assert_tensor_close(&ob[0], &oa[0], 1e-6, "irrelevant keys inserted");
        ck_assert_int_eq(((int32_t *)ob[1].data)[0], (int32_t)nr);
        release_n(oa, 2);
        release_n(ob, 2);
    }
    release_n(a, 4);
    sl_tensor_release(&bb[1]);
    sl_tensor_release(&bb[2]);
    sl_tensor_release(&neg[1]);
    sl_tensor_release(&nq);
    sl_tensor_release(&nk);
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- attn.monotonic ---- */

/* Every backend against ref; ref against the pointer walk written here in
 * float64 (stop, the chunk's softmax O and L); the stops of every head
 * never decrease; r < 0 and r > 0 move the stops later and earlier. */
START_TEST(test_monotonic)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17400 + (uint64_t)_i);
    const shape_case *c = &NS_CASES[_i];
    sl_tensor in[3];
    qkv_of(ctx, &rng, c, 1.0, in);
    const float *q = in[0].data, *k = in[1].data, *v = in[2].data;
    double scale = 1 / sqrt((double)c->d);
    const double rs[3] = {0, -1.0, 0.8};
    const int64_t chunks[3] = {4, 1, 1000};
    for (int t = 0; t < 3; t++) {
        sl_attn_monotonic_params p = {.chunk = chunks[t], .r = rs[t], .causal = c->causal, .scale = 0};
        check_op_vs_ref(ctx, SL_OP_ATTN_MONOTONIC, &p, in, 1e-5, "attn.monotonic");
        sl_tensor ref[3];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_MONOTONIC, &p, in, ref), SL_OK);
        int64_t stops = 0;
        for (int64_t h = 0; h < c->hq; h++) {
            int64_t g = h / (c->hq / c->hkv), ptr = 0, last = -1;
            for (int64_t i = 0; i < c->nq; i++) {
                int64_t n = c->causal ? i + c->nk - c->nq + 1 : c->nk, found = -1;
                const float *qi = q + (h * c->nq + i) * c->d;
                double e[1024];
                for (int64_t j = 0; j < n; j++) {
                    double s = 0;
                    for (int64_t x = 0; x < c->d; x++)
                        s += (double)qi[x] * k[(g * c->nk + j) * c->d + x];
                    e[j] = scale * s;
                }
                for (int64_t j = ptr; j < n; j++)
                    if (e[j] + p.r >= 0) {
                        found = j;
                        break;
                    }
                ck_assert_int_eq(((int32_t *)ref[2].data)[h * c->nq + i], found);
                if (found < 0) {
                    ck_assert(isinf(tu_at(&ref[1], h * c->nq + i)));
                    continue;
                }
                ck_assert_int_ge(found, last);
                last = ptr = found;
                stops++;
                int64_t j0 = found - p.chunk + 1 > 0 ? found - p.chunk + 1 : 0;
                double mx = -INFINITY, l = 0, o[128] = {0};
                for (int64_t j = j0; j <= found; j++)
                    mx = fmax(mx, e[j]);
                for (int64_t j = j0; j <= found; j++) {
                    double w = exp(e[j] - mx);
                    l += w;
                    for (int64_t x = 0; x < c->d; x++)
                        o[x] += w * v[(g * c->nk + j) * c->d + x];
                }
                ck_assert_double_eq_tol(tu_at(&ref[1], h * c->nq + i), mx + log(l), 1e-5);
                for (int64_t x = 0; x < c->d; x++)
                    ck_assert_double_eq_tol(tu_at(&ref[0], (h * c->nq + i) * c->d + x), o[x] / l, 1e-5);
            }
        }
        ck_assert_msg(c->nq < 4 || stops > 0, "no row stopped");
        release_n(ref, 3);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_loop_test(tc, test_entmax_backends_match_ref, 0, N_NS_CASES);
    tcase_add_loop_test(tc, test_sparsemax_is_simplex_projection, 0, 2);
    tcase_add_test(tc, test_entmax_alpha_to_one_is_softmax);
    tcase_add_test(tc, test_entmax_bisect_agrees_with_sort);
    tcase_add_test(tc, test_entmax15_root);
    tcase_add_test(tc, test_entmax_card_properties);
    tcase_add_test(tc, test_entmax_errors);
    tcase_add_loop_test(tc, test_relu_backends_and_formula, 0, N_NS_CASES);
    tcase_add_test(tc, test_relu_switched_off_rows);
    tcase_add_test(tc, test_rms_gated);
    tcase_add_test(tc, test_sigmoid_gate);
    tcase_add_loop_test(tc, test_fastmax_backends_and_formula, 0, N_NS_CASES);
    tcase_add_loop_test(tc, test_tra_backends_and_formula, 0, N_NS_CASES);
    tcase_add_test(tc, test_tra_card_checks);
    tcase_add_loop_test(tc, test_monotonic, 0, N_NS_CASES);
}

int main(void) { return run_op_suite("nsattn_ops", add_tests); }
