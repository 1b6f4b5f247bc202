/* test_reduce_ops.c — the reductions (reduce.columns, reduce.diagonals,
 * reduce.block, reduce.heads) on every backend in SL_TEST_BACKENDS against
 * ref over shapes with one row, one column and -inf entries, sum, max and
 * mean modes; reduce.diagonals against a brute-force float64 loop over
 * every pair. */

#include "opsutil.h"

START_TEST(test_reduce_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 43000);
    const int64_t shapes[][3] = {{3, 17, 300}, {4, 1, 9}, {2, 64, 64}, {6, 5, 1}};
    for (int s = 0; s < 4; s++) {
        const int64_t *sh = shapes[s];
        for (int inf = 0; inf < 2; inf++) {
            sl_tensor x = random_scores(ctx, &rng, sh[0], sh[1], sh[2], inf);
            check_op_vs_ref(ctx, SL_OP_REDUCE_COLUMNS, NULL, &x, 1e-5, "columns");
            const int64_t pos0[] = {-1, 0, sh[2] + 3};
            for (int i = 0; i < 3; i++) {
                sl_reduce_diag_params p = {.row_pos0 = pos0[i]};
                check_op_vs_ref(ctx, SL_OP_REDUCE_DIAGONALS, &p, &x, 1e-5, "diagonals");
            }
            for (int mode = 0; mode < 3; mode++) {
                const int64_t bs[][2] = {{4, 7}, {1, 1}, {64, 64}};
                for (int b = 0; b < 3; b++) {
                    sl_reduce_block_params p = {.br = bs[b][0], .bc = bs[b][1], .mode = mode};
                    check_op_vs_ref(ctx, SL_OP_REDUCE_BLOCK, &p, &x, 1e-5, "block");
                }
                const int64_t groups[] = {0, 1, 2};
                for (int g = 0; g < 3; g++) {
                    if (groups[g] && sh[0] % groups[g])
                        continue;
                    sl_reduce_heads_params p = {.group = groups[g], .mode = mode};
                    check_op_vs_ref(ctx, SL_OP_REDUCE_HEADS, &p, &x, 1e-5, "heads");
                }
            }
            sl_tensor_release(&x);
        }
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* reduce.diagonals against a brute-force loop over every pair; the sum over
 * offsets equals the sum of the causal pairs. */
START_TEST(test_reduce_diagonals_brute_force)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 43500);
    int64_t H = 2, R = 11, C = 40;
    sl_tensor x = random_scores(ctx, &rng, H, R, C, 0);
    sl_tensor y = run_op1(ctx, SL_BACKEND_CPU, SL_OP_REDUCE_DIAGONALS, NULL, &x);
    double want[2][40] = {{0}};
    for (int64_t h = 0; h < H; h++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < C; j++) {
                int64_t pos = C - R + r;
                if (pos - j >= 0)
                    want[h][pos - j] += tu_at(&x, (h * R + r) * C + j);
            }
    for (int64_t h = 0; h < H; h++)
        for (int64_t o = 0; o < C; o++)
            ck_assert_msg(fabs(tu_at(&y, h * C + o) - want[h][o]) < 1e-5, "offset %lld: %g, want %g", (long long)o,
                          tu_at(&y, h * C + o), want[h][o]);
    sl_tensor_release(&y);
    sl_tensor_release(&x);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* reduce.far and reduce.columns64 (issue 20, session 4): every backend equals ref exactly (all
 * add in float64 in key order), over normal and non-negative scores, rows at the
 * end and at given positions, empty ranges (lo past the window, back past
 * row 0), block 1; ref against the streaming rule written the other way
 * round: a key counts when it is causal, not a sink key and not in the
 * back + 1 blocks ending at the row's block. */
static double far_at(const sl_tensor *y, int64_t i) { return ((const double *)y->data)[i]; }

START_TEST(test_reduce_far)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 46000);
    const int64_t shapes[][3] = {{3, 17, 300}, {2, 64, 257}, {1, 1, 9}, {4, 5, 64}};
    const int64_t ps[][4] = {{0, 64, 0, -1}, {128, 64, 15, -1}, {7, 16, 1, -1}, {3, 1, 0, -1},
                             {0, 32, 2, 0},  {5, 8, 3, 100},    {400, 4, 0, -1}, {0, 4, 1000, -1}};
    for (int si = 0; si < 4; si++) {
        const int64_t *sh = shapes[si];
        for (int inf = 0; inf < 2; inf++) {
            sl_tensor x = inf ? random_scores(ctx, &rng, sh[0], sh[1], sh[2], 0) : tu_randn(ctx, &rng, sh[0], sh[1], sh[2], 1.0);
            for (int64_t i = 0; inf && i < sh[0] * sh[1] * sh[2]; i++) /* probabilities-like: >= 0 */
                ((float *)x.data)[i] = fabsf(((float *)x.data)[i]);
            {
                /* reduce.columns64: ref against the sums taken in reverse row order; every backend = ref exactly */
                sl_tensor ref = run_op1(ctx, SL_BACKEND_REF, SL_OP_REDUCE_COLUMNS64, NULL, &x);
                ck_assert_int_eq(ref.dtype, SL_F64);
                ck_assert_int_eq(ref.ndim, 2);
                ck_assert_int_eq(ref.shape[1], sh[2]);
                for (int64_t h = 0; h < sh[0]; h++)
                    for (int64_t c = 0; c < sh[2]; c++) {
                        double want = 0;
                        for (int64_t r = sh[1] - 1; r >= 0; r--)
                            want += tu_at(&x, (h * sh[1] + r) * sh[2] + c);
                        ck_assert_msg(fabs(far_at(&ref, h * sh[2] + c) - want) <= 1e-12 * (1 + fabs(want)),
                                      "columns64 [%lld, %lld]: %.17g, want %.17g", (long long)h, (long long)c,
                                      far_at(&ref, h * sh[2] + c), want);
                    }
                sl_backend_id bs[SL_BACKEND__COUNT];
                int nb = other_backends(bs);
                for (int b = 0; b < nb; b++) {
                    sl_tensor y;
                    sl_status st = sl_op_run(ctx, bs[b], SL_OP_REDUCE_COLUMNS64, NULL, &x, &y);
                    if (st == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU) {
                        printf("SKIP reduce.columns64 on %s: %s\n", sl_backend_name(bs[b]), sl_ctx_error(ctx));
                        continue;
                    }
                    ck_assert_msg(st == SL_OK, "reduce.columns64 on %s: %s", sl_backend_name(bs[b]), sl_ctx_error(ctx));
                    for (int64_t i = 0; i < sh[0] * sh[2]; i++)
                        ck_assert_msg(far_at(&y, i) == far_at(&ref, i), "columns64 on %s [%lld]: %.17g, ref %.17g",
                                      sl_backend_name(bs[b]), (long long)i, far_at(&y, i), far_at(&ref, i));
                    sl_tensor_release(&y);
                }
                sl_tensor_release(&ref);
            }
            for (int pi = 0; pi < 8; pi++) {
                sl_reduce_far_params p = {.lo = ps[pi][0], .block = ps[pi][1], .back = ps[pi][2], .row_pos0 = ps[pi][3]};
                sl_tensor ref = run_op1(ctx, SL_BACKEND_REF, SL_OP_REDUCE_FAR, &p, &x);
                ck_assert_int_eq(ref.dtype, SL_F64);
                ck_assert_int_eq(ref.ndim, 2);
                ck_assert_int_eq(ref.shape[0], sh[0]);
                ck_assert_int_eq(ref.shape[1], sh[1]);
                int64_t pos0 = p.row_pos0 < 0 ? sh[2] - sh[1] : p.row_pos0;
                for (int64_t h = 0; h < sh[0]; h++)
                    for (int64_t r = 0; r < sh[1]; r++) {
                        int64_t pos = pos0 + r;
                        double want = 0;
                        for (int64_t j = 0; j < sh[2]; j++) {
                            int causal = j <= pos, sink = j < p.lo, near = pos / p.block - j / p.block <= p.back;
                            if (causal && !sink && !near)
                                want += tu_at(&x, (h * sh[1] + r) * sh[2] + j);
                        }
                        double got = far_at(&ref, h * sh[1] + r);
                        ck_assert_msg(fabs(got - want) <= 1e-9 * (1 + fabs(want)), "far shape %d params %d [%lld, %lld]: %.17g, want %.17g",
                                      si, pi, (long long)h, (long long)r, got, want);
                    }
                sl_backend_id bs[SL_BACKEND__COUNT];
                int nb = other_backends(bs);
                for (int b = 0; b < nb; b++) {
                    sl_tensor y;
                    sl_status st = sl_op_run(ctx, bs[b], SL_OP_REDUCE_FAR, &p, &x, &y);
                    if (st == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU) {
                        printf("SKIP reduce.far on %s: %s\n", sl_backend_name(bs[b]), sl_ctx_error(ctx));
                        continue;
                    }
                    ck_assert_msg(st == SL_OK, "reduce.far on %s: %s", sl_backend_name(bs[b]), sl_ctx_error(ctx));
                    ck_assert_int_eq(y.dtype, SL_F64);
                    for (int64_t i = 0; i < sh[0] * sh[1]; i++)
                        ck_assert_msg(far_at(&y, i) == far_at(&ref, i), "far on %s shape %d params %d [%lld]: %.17g, ref %.17g",
                                      sl_backend_name(bs[b]), si, pi, (long long)i, far_at(&y, i), far_at(&ref, i));
                    sl_tensor_release(&y);
                }
                sl_tensor_release(&ref);
            }
            sl_tensor_release(&x);
        }
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* reduce.kth (issue 20, session 4): every backend against ref (the values
 * are entries of x: equal exactly), over rows with heavy ties (values on a
 * grid of 7), -inf entries, limits from 1 to C and ranks from 1 to the
 * limit; ref against the definition by counting (#{< y} < rank <= #{<= y}
 * over the first limit entries, y one of them); bad ranks and limits are
 * refused. */
START_TEST(test_reduce_kth)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 47000);
    const int64_t shapes[][3] = {{2, 9, 300}, {3, 4, 1}, {1, 16, 1000}, {2, 1, 77}};
    for (int si = 0; si < 4; si++) {
        const int64_t *sh = shapes[si];
        for (int ties = 0; ties < 2; ties++) {
            sl_tensor x = random_scores(ctx, &rng, sh[0], sh[1], sh[2], 1);
            float *xd = x.data;
            for (int64_t i = 0; ties && i < sh[0] * sh[1] * sh[2]; i++)
                if (isfinite(xd[i]))
                    xd[i] = (float)(floor(xd[i] * 2) / 2);
            int32_t rk[16], lim[16];
            for (int64_t r = 0; r < sh[1]; r++) {
                lim[r] = r == 0 ? (int32_t)sh[2] : 1 + (int32_t)(sl_rng_uniform(&rng) * (double)sh[2]);
                lim[r] = lim[r] > sh[2] ? (int32_t)sh[2] : lim[r];
                rk[r] = r == 1 ? 1 : r == 2 ? lim[r] : 1 + (int32_t)(sl_rng_uniform(&rng) * lim[r]);
                rk[r] = rk[r] > lim[r] ? lim[r] : rk[r];
            }
            sl_tensor in[3] = {x, i32_vec(ctx, rk, sh[1]), i32_vec(ctx, lim, sh[1])};
            sl_tensor ref = run_op1(ctx, SL_BACKEND_REF, SL_OP_REDUCE_KTH, NULL, in);
            ck_assert_int_eq(ref.dtype, SL_F32);
            for (int64_t h = 0; h < sh[0]; h++)
                for (int64_t r = 0; r < sh[1]; r++) {
                    const float *row = xd + (h * sh[1] + r) * sh[2];
                    float y = tu_at(&ref, h * sh[1] + r);
                    int64_t lt = 0, le = 0, is_entry = 0;
                    for (int64_t j = 0; j < lim[r]; j++) {
                        lt += row[j] < y;
                        le += row[j] <= y;
                        is_entry |= row[j] == y;
                    }
                    ck_assert_msg(is_entry && lt < rk[r] && rk[r] <= le,
                                  "kth shape %d ties %d [%lld, %lld]: %g with %lld below, %lld at or below, rank %d of %d",
                                  si, ties, (long long)h, (long long)r, y, (long long)lt, (long long)le, rk[r], lim[r]);
                }
            sl_tensor_release(&ref);
            check_op_vs_ref(ctx, SL_OP_REDUCE_KTH, NULL, in, 0, "kth");
            /* refused: rank 0, rank past the limit, limit past C */
            int32_t bad_rk[16], bad_lim[16];
            memcpy(bad_rk, rk, sizeof rk);
            memcpy(bad_lim, lim, sizeof lim);
            bad_rk[0] = 0;
            sl_tensor_release(&in[1]);
            in[1] = i32_vec(ctx, bad_rk, sh[1]);
            expect_fail(ctx, SL_OP_REDUCE_KTH, NULL, in, SL_EARG, "rank");
            bad_rk[0] = lim[0] + 1;
            sl_tensor_release(&in[1]);
            in[1] = i32_vec(ctx, bad_rk, sh[1]);
            expect_fail(ctx, SL_OP_REDUCE_KTH, NULL, in, SL_EARG, "limit");
            bad_lim[0] = (int32_t)sh[2] + 1;
            sl_tensor_release(&in[1]);
            in[1] = i32_vec(ctx, rk, sh[1]);
            sl_tensor_release(&in[2]);
            in[2] = i32_vec(ctx, bad_lim, sh[1]);
            expect_fail(ctx, SL_OP_REDUCE_KTH, NULL, in, SL_EARG, "limit");
            release_n(in, 3);
        }
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* A NaN input is rejected; heads not a multiple of the group are rejected. */
START_TEST(test_reduce_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 45000);
    sl_tensor x = tu_randn(ctx, &rng, 2, 3, 5, 1.0);
    ((float *)x.data)[4] = NAN;
    expect_fail(ctx, SL_OP_REDUCE_COLUMNS, NULL, &x, SL_EARG, "NaN");
    ((float *)x.data)[4] = -INFINITY;
    sl_reduce_heads_params ph = {.group = 4};
    expect_fail(ctx, SL_OP_REDUCE_HEADS, &ph, &x, SL_ESHAPE, "group");
    sl_tensor_release(&x);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* reduce.segments64 (issue 20, session 5): ref against the segments written
 * as explicit ranges (FlexPrefill's two poolings: offset block ob of offset
 * o is o / size, or with from_end nb - 1 - (C - 1 - o) / size), summed in the
 * other direction; every backend equals ref exactly (all add in float64
 * in column order); -inf entries; a non-2-D x refused. */
START_TEST(test_reduce_segments64)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 47000);
    const int64_t shapes[][2] = {{3, 300}, {2, 256}, {1, 1}, {4, 129}, {2, 7}};
    const int64_t sizes[] = {1, 7, 64, 128, 500};
    for (int si = 0; si < 5; si++) {
        int64_t H = shapes[si][0], C = shapes[si][1];
        for (int inf = 0; inf < 2; inf++) {
            sl_tensor x = randn_shape(ctx, &rng, 2, shapes[si], 1.0);
            for (int64_t i = 0; i < H * C; i++) {
                float v = fabsf(f32p(&x)[i]) * 1e3f;
                f32p(&x)[i] = inf && i % 37 == 5 ? -INFINITY : v;
            }
            for (int z = 0; z < 5; z++)
                for (int fe = 0; fe < 2; fe++) {
                    sl_reduce_segments_params p = {.size = sizes[z], .from_end = fe};
                    int64_t G = (C + p.size - 1) / p.size;
                    sl_tensor ref = run_op1(ctx, SL_BACKEND_REF, SL_OP_REDUCE_SEGMENTS64, &p, &x);
                    ck_assert_int_eq(ref.dtype, SL_F64);
                    ck_assert_int_eq(ref.ndim, 2);
                    ck_assert_int_eq(ref.shape[0], H);
                    ck_assert_int_eq(ref.shape[1], G);
                    for (int64_t h = 0; h < H; h++)
                        for (int64_t g = 0; g < G; g++) {
                            double want = 0;
                            int n_inf = 0;
                            for (int64_t o = C - 1; o >= 0; o--) {
                                int64_t ob = fe ? G - 1 - (C - 1 - o) / p.size : o / p.size;
                                if (ob != g)
                                    continue;
                                float v = tu_at(&x, h * C + o);
                                if (v == -INFINITY)
                                    n_inf++;
                                else
                                    want += v;
                            }
                            double got = far_at(&ref, h * G + g);
                            if (n_inf)
                                ck_assert_msg(got == -INFINITY, "segments64 [%lld, %lld]: %g, want -inf", (long long)h,
                                              (long long)g, got);
                            else
                                ck_assert_msg(fabs(got - want) <= 1e-12 * (1 + fabs(want)),
                                              "segments64 size %lld from_end %d [%lld, %lld]: %.17g, want %.17g",
                                              (long long)p.size, fe, (long long)h, (long long)g, got, want);
                        }
                    sl_backend_id bs[SL_BACKEND__COUNT];
                    int nb = other_backends(bs);
                    for (int b = 0; b < nb; b++) {
                        sl_tensor y;
                        sl_status st = sl_op_run(ctx, bs[b], SL_OP_REDUCE_SEGMENTS64, &p, &x, &y);
                        if (st == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU) {
                            printf("SKIP reduce.segments64 on %s: %s\n", sl_backend_name(bs[b]), sl_ctx_error(ctx));
                            continue;
                        }
                        ck_assert_msg(st == SL_OK, "reduce.segments64 on %s: %s", sl_backend_name(bs[b]),
                                      sl_ctx_error(ctx));
                        for (int64_t i = 0; i < H * G; i++)
                            ck_assert_msg(far_at(&y, i) == far_at(&ref, i) ||
                                              (isnan(far_at(&y, i)) && isnan(far_at(&ref, i))),
                                          "segments64 on %s [%lld]: %.17g, ref %.17g", sl_backend_name(bs[b]),
                                          (long long)i, far_at(&y, i), far_at(&ref, i));
                        sl_tensor_release(&y);
                    }
                    sl_tensor_release(&ref);
                }
            sl_tensor_release(&x);
        }
    }
    sl_tensor x3 = tu_randn(ctx, &rng, 2, 3, 4, 1.0);
    sl_reduce_segments_params p = {.size = 2};
    expect_fail(ctx, SL_OP_REDUCE_SEGMENTS64, &p, &x3, SL_ESHAPE, "must have 2 dims");
    sl_tensor_release(&x3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_reduce_backends_match_ref);
    tcase_add_test(tc, test_reduce_diagonals_brute_force);
    tcase_add_test(tc, test_reduce_validation);
    tcase_add_test(tc, test_reduce_far);
    tcase_add_test(tc, test_reduce_kth);
    tcase_add_test(tc, test_reduce_segments64);
}

int main(void) { return run_op_suite("reduce_ops", add_tests); }
