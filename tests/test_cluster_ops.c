/* test_cluster_ops.c — cluster.dpc, cluster.kmeans and cluster.route (issue
 * 17, session 3; cards token_merge_recycle, moe_split_route) on every
 * backend in SL_TEST_BACKENDS against ref (index outputs exactly, floats
 * within 1e-6), and ref against rules computed here: DPC recovers separated
 * blobs with one centre each, every row sits with its nearest centre, a
 * centre is in its own cluster, c = n makes every row its own cluster;
 * k-means with 0 rounds assigns to the nearest init row, after convergence
 * every centroid is the mean of its rows and every row is with its nearest
 * centroid; routing keeps exactly min(k, E) experts per row (the largest
 * logits), unit weights give h . scale or 0, softmax weights sum to scale;
 * bad shapes and expert ids are refused in one line. */

#include "opsutil.h"

#include <math.h>

/* n rows in `blobs` well separated clusters of d dims (row i in blob i % blobs) */
static sl_tensor blob_rows(sl_ctx *ctx, sl_rng *rng, int64_t n, int64_t d, int blobs)
{
    sl_tensor t = f32_2d(ctx, n, d);
    float *x = f32p(&t);
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < d; c++)
            x[i * d + c] = (float)(20.0 * (double)((i % blobs) == c % blobs) * (1 + (i % blobs)) +
                                   0.3 * sl_rng_normal(rng));
    return t;
}

static double dist2(const float *a, const float *b, int64_t d)
{
    double s = 0;
    for (int64_t c = 0; c < d; c++)
        s += ((double)a[c] - b[c]) * ((double)a[c] - b[c]);
    return s;
}

START_TEST(test_cluster_dpc)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9300);
    const int64_t shapes[][3] = {{1, 3, 1}, {7, 5, 3}, {40, 8, 4}, {97, 16, 10}, {60, 4, 60}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t n = shapes[si][0], d = shapes[si][1], c = shapes[si][2];
        int64_t xs[2] = {n, d};
        sl_tensor x = randn_shape(ctx, &rng, 2, xs, 1);
        sl_cluster_dpc_params p = {.c = (int)c};
        check_op_vs_ref(ctx, SL_OP_CLUSTER_DPC, &p, &x, 0, "cluster.dpc random");
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_CLUSTER_DPC, &p, &x, out), SL_OK);
        const int32_t *as = out[0].data, *ce = out[1].data;
        int64_t cc = out[1].shape[0];
        ck_assert_int_eq(cc, c < n ? c : n);
        for (int64_t k = 0; k < cc; k++) {
            ck_assert_int_eq(as[ce[k]], k); /* a centre is in its own cluster */
            if (k > 0)
                ck_assert_int_lt(ce[k - 1], ce[k]);
        }
        const float *xp = f32p(&x);
        for (int64_t i = 0; i < n; i++) { /* nearest centre (non-centres) */
            int is_centre = 0;
            for (int64_t k = 0; k < cc; k++)
                is_centre |= ce[k] == i;
            if (is_centre)
                continue;
            double mine = dist2(xp + i * d, xp + ce[as[i]] * d, d);
            for (int64_t k = 0; k < cc; k++)
                ck_assert_msg(mine <= dist2(xp + i * d, xp + ce[k] * d, d) * (1 + 1e-12), "row %lld", (long long)i);
        }
        if (c >= n) /* every row its own cluster */
            for (int64_t i = 0; i < n; i++)
                ck_assert_int_eq(ce[as[i]], i);
        release_n(out, 2);
        sl_tensor_release(&x);
    }
    /* separated blobs: recovered exactly, one centre per blob */
    for (int blobs = 2; blobs <= 5; blobs++) {
        int64_t n = 12 * blobs, d = 6;
        sl_tensor x = blob_rows(ctx, &rng, n, d, blobs);
        sl_cluster_dpc_params p = {.c = blobs};
        check_op_vs_ref(ctx, SL_OP_CLUSTER_DPC, &p, &x, 0, "cluster.dpc blobs");
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_CLUSTER_DPC, &p, &x, out), SL_OK);
        const int32_t *as = out[0].data, *ce = out[1].data;
        char seen[8] = {0};
        for (int k = 0; k < blobs; k++) {
            ck_assert(!seen[ce[k] % blobs]);
            seen[ce[k] % blobs] = 1;
        }
        for (int64_t i = 0; i < n; i++)
            ck_assert_int_eq(ce[as[i]] % blobs, i % blobs);
        release_n(out, 2);
        sl_tensor_release(&x);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_cluster_kmeans)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9400);
    const int64_t shapes[][3] = {{1, 2, 1}, {30, 4, 3}, {200, 16, 8}, {9, 3, 12}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t n = shapes[si][0], d = shapes[si][1], k = shapes[si][2];
        int64_t xs[2] = {n, d}, is[2] = {k, d};
        sl_tensor in[2] = {randn_shape(ctx, &rng, 2, xs, 1), randn_shape(ctx, &rng, 2, is, 1)};
        for (int iters = 0; iters <= 60; iters += 30) {
            sl_cluster_km_params p = {.iters = iters};
            check_op_vs_ref(ctx, SL_OP_CLUSTER_KMEANS, &p, in, 1e-6, "cluster.kmeans");
            sl_tensor out[2];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_CLUSTER_KMEANS, &p, in, out), SL_OK);
            const float *x = f32p(&in[0]), *C = f32p(&out[0]), *init = f32p(&in[1]);
            const int32_t *as = out[1].data;
            for (int64_t r = 0; r < n; r++) /* nearest centroid */
                for (int64_t e = 0; e < k; e++)
                    ck_assert(dist2(x + r * d, C + as[r] * d, d) <= dist2(x + r * d, C + e * d, d) + 1e-9);
            if (iters == 0)
                ck_assert_int_eq(memcmp(C, init, sizeof(float) * (size_t)(k * d)), 0);
            if (iters == 60) /* converged: each centroid with rows is their mean */
                for (int64_t e = 0; e < k; e++) {
                    double cnt = 0;
                    for (int64_t r = 0; r < n; r++)
                        cnt += as[r] == e;
                    for (int64_t t = 0; cnt > 0 && t < d; t++) {
                        double s = 0;
                        for (int64_t r = 0; r < n; r++)
                            s += as[r] == e ? x[r * d + t] : 0;
                        ck_assert_msg(fabs(s / cnt - C[e * d + t]) < 1e-5, "centroid %lld dim %lld", (long long)e,
                                      (long long)t);
                    }
                }
            release_n(out, 2);
        }
        release_n(in, 2);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_cluster_route)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9500);
    const int64_t shapes[][3] = {{1, 4, 1}, {17, 40, 4}, {64, 172, 8}, {5, 9, 9}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t T = shapes[si][0], H = shapes[si][1], E = shapes[si][2];
        int64_t hs[2] = {T, H}, ls[2] = {T, E};
        int32_t *ex = malloc(sizeof *ex * (size_t)H);
        ck_assert_ptr_nonnull(ex);
        for (int64_t j = 0; j < H; j++)
            ex[j] = (int32_t)(sl_rng_uniform(&rng) * (double)E) % (int32_t)E;
        sl_tensor in[3] = {randn_shape(ctx, &rng, 2, hs, 1), randn_shape(ctx, &rng, 2, ls, 1), i32_vec(ctx, ex, H)};
        if (T > 1) /* a tie: two equal logits in row 0 */
            f32p(&in[1])[1 % E] = f32p(&in[1])[0];
        for (int k = 1; k <= E + 1; k += (int)(E / 3 > 0 ? E / 3 : 1))
            for (int sm = 0; sm <= 1; sm++) {
                sl_cluster_route_params p = {.k = k, .softmax = sm, .scale = 1.5};
                check_op_vs_ref(ctx, SL_OP_CLUSTER_ROUTE, &p, in, 1e-6, "cluster.route");
                sl_tensor y = run_op1(ctx, SL_BACKEND_REF, SL_OP_CLUSTER_ROUTE, &p, in);
                const float *h = f32p(&in[0]), *l = f32p(&in[1]), *yy = f32p(&y);
                int64_t kk = k < E ? k : E;
                for (int64_t t = 0; t < T; t++) {
                    /* kept experts by a sort-free rule written here: e kept iff its (logit, -id) rank < k */
                    double wsum = 0;
                    int nkept = 0;
                    for (int64_t e = 0; e < E; e++) {
                        int rank = 0;
                        for (int64_t f = 0; f < E; f++)
                            rank += l[t * E + f] > l[t * E + e] || (l[t * E + f] == l[t * E + e] && f < e);
                        int kept = rank < kk;
                        nkept += kept;
                        double w = -1;
                        for (int64_t j = 0; j < H; j++)
                            if (ex[j] == e) {
                                if (!kept)
                                    ck_assert(yy[t * H + j] == 0.f);
                                else if (!sm)
                                    ck_assert(yy[t * H + j] == (float)(h[t * H + j] * 1.5));
                                else
                                    w = (double)yy[t * H + j] / h[t * H + j];
                            }
                        if (kept && sm && w >= 0)
                            wsum += w;
                    }
                    ck_assert_int_eq(nkept, kk);
                    if (sm && kk == E) {
                        int all_used = 1;
                        for (int64_t e = 0; e < E; e++) {
                            int used = 0;
                            for (int64_t j = 0; j < H; j++)
                                used |= ex[j] == e;
                            all_used &= used;
                        }
                        if (all_used)
                            ck_assert_msg(fabs(wsum - 1.5) < 1e-4, "softmax weights sum %g", wsum);
                    }
                }
                sl_tensor_release(&y);
            }
        release_n(in, 3);
        free(ex);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_cluster_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9600);
    int64_t hs[2] = {3, 4}, ls[2] = {3, 2};
    int32_t ex[4] = {0, 1, 2, 1};
    sl_tensor in[3] = {randn_shape(ctx, &rng, 2, hs, 1), randn_shape(ctx, &rng, 2, ls, 1), i32_vec(ctx, ex, 4)};
    expect_fail(ctx, SL_OP_CLUSTER_ROUTE, NULL, in, SL_EARG, "expert[2] = 2 is outside [0, 2)");
    int64_t bs[2] = {2, 5};
    sl_tensor km[2] = {randn_shape(ctx, &rng, 2, hs, 1), randn_shape(ctx, &rng, 2, bs, 1)};
    expect_fail(ctx, SL_OP_CLUSTER_KMEANS, NULL, km, SL_ESHAPE, "expected init [k >= 1, 4]");
    release_n(in, 3);
    release_n(km, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_cluster_dpc);
    tcase_add_test(tc, test_cluster_kmeans);
    tcase_add_test(tc, test_cluster_route);
    tcase_add_test(tc, test_cluster_validation);
}

int main(void) { return run_op_suite("cluster_ops", add_tests); }
