/* test_score_ops.c — the estimators, reductions and selectors of issue 4
 * (score.pooled, score.last_q, score.rows, score.exact, reduce.*, select.*)
 * on every available backend against ref (fresh seeded inputs, ragged
 * sizes, decode offsets, GQA, one query row, k = 0 and k = C, p = 0 and
 * p = 1, ties, -inf entries, NaN and +inf rejected), independent checks
 * (probabilities against attn.dense's lse, diagonal sums and pooled scores
 * against plain loops here, the minimality of top-p), and the masks made
 * from selections (from_blocks, index_from_columns, from_slashes) against
 * the causal mask, attn.dense and a transcription of MInference's index
 * conversion. */
#include "opsutil.h"

/* Every element within tol × (largest |ref|, at least 1) of ref; infinities
 * equal; no NaN. */
static void assert_close(const sl_tensor *x, const sl_tensor *ref, double tol, const char *what)
{
    ck_assert_int_eq(x->ndim, ref->ndim);
    for (int d = 0; d < x->ndim; d++)
        ck_assert_int_eq(x->shape[d], ref->shape[d]);
    int64_t n = sl_tensor_numel(ref);
    double scale = 1;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(tu_at(ref, i)))
            scale = fmax(scale, fabs(tu_at(ref, i)));
    for (int64_t i = 0; i < n; i++) {
        float a = tu_at(x, i), b = tu_at(ref, i);
        if (isnan(a))
            ck_abort_msg("%s: [%lld] is NaN", what, (long long)i);
        if (isinf(b) ? a != b : !(fabs(a - b) <= tol * scale))
            ck_abort_msg("%s: [%lld] = %.9g, ref %.9g", what, (long long)i, a, b);
    }
}

static void assert_same_u8(const sl_tensor *x, const sl_tensor *ref, const char *what)
{
    int64_t n = sl_tensor_numel(ref);
    ck_assert_int_eq(sl_tensor_numel(x), n);
    ck_assert_int_eq(x->dtype, SL_U8);
    const uint8_t *a = x->data, *b = ref->data;
    for (int64_t i = 0; i < n; i++)
        if (a[i] != b[i])
            ck_abort_msg("%s: keep[%lld] = %d, ref %d", what, (long long)i, a[i], b[i]);
}

static sl_tensor run1(sl_ctx *ctx, sl_backend_id b, sl_op op, const void *p, const sl_tensor *in)
{
    sl_tensor out;
    sl_status s = sl_op_run(ctx, b, op, p, in, &out);
    ck_assert_msg(s == SL_OK, "%s on %s: %s", sl_op_info_get(op)->name, sl_backend_name(b), sl_ctx_error(ctx));
    return out;
}

/* op on ref and every other wanted backend: floats within tol, keeps exactly. */
static void check_one(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, double tol, const char *what)
{
    sl_tensor ref = run1(ctx, SL_BACKEND_REF, op, p, in);
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int k = 0; k < nb; k++) {
        sl_tensor out;
        sl_status s = sl_op_run(ctx, bs[k], op, p, in, &out);
        if (s == SL_EUNSUPPORTED && bs[k] != SL_BACKEND_CPU) {
            printf("SKIP %s on %s: %s\n", what, sl_backend_name(bs[k]), sl_ctx_error(ctx));
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name(bs[k]), sl_ctx_error(ctx));
        char w[160];
        snprintf(w, sizeof w, "%s on %s", what, sl_backend_name(bs[k]));
        if (ref.dtype == SL_U8)
            assert_same_u8(&out, &ref, w);
        else
            assert_close(&out, &ref, tol, w);
        sl_tensor_release(&out);
    }
    sl_tensor_release(&ref);
}

static double qk(const sl_tensor *q, const sl_tensor *k, int64_t h, int64_t i, int64_t g, int64_t j)
{
    int64_t d = q->shape[2];
    const float *a = (const float *)q->data + (h * q->shape[1] + i) * d, *b = (const float *)k->data + (g * k->shape[1] + j) * d;
    double s = 0;
    for (int64_t t = 0; t < d; t++)
        s += (double)a[t] * (double)b[t];
    return s;
}

/* ---- estimators: backends against ref ---- */

START_TEST(test_score_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 41000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[3] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    const int64_t blocks[][2] = {{16, 16}, {7, 5}, {64, 32}, {1, 1}};
    for (int b = 0; b < 4; b++)
        for (int pool = 0; pool < 3; pool++)
            for (int sm = 0; sm < 2; sm++) {
                sl_score_pooled_params p = {.bq = blocks[b][0], .bk = blocks[b][1], .causal = c->causal, .scale = 0,
                                            .pool = pool, .softmax = sm, .pad = b == 1};
                char w[96];
                snprintf(w, sizeof w, "pooled case %d blocks %d pool %d softmax %d", _i, b, pool, sm);
                check_one(ctx, SL_OP_SCORE_POOLED, &p, in, 2e-5, w);
            }
    for (int b = 0; b < 3; b++)
        for (int red = 0; red < 2; red++) {
            sl_score_exact_params p = {.bq = blocks[b][0], .bk = blocks[b][1], .reduce = red, .causal = c->causal,
                                       .scale = 0, .normalize = b == 2};
            char w[96];
            snprintf(w, sizeof w, "exact case %d blocks %d reduce %d", _i, b, red);
            check_one(ctx, SL_OP_SCORE_EXACT, &p, in, 2e-5, w);
        }
    const int64_t lasts[] = {64, 1, 1000};
    for (int l = 0; l < 3; l++) {
        sl_score_last_q_params p = {.last = lasts[l], .causal = c->causal, .scale = 0.3};
        check_one(ctx, SL_OP_SCORE_LAST_Q, &p, in, 2e-5, "last_q");
    }
    /* rows in any order with repeats, and one row */
    for (int n_rows = 1; n_rows <= 40; n_rows += 39) {
        sl_tensor rows;
        int64_t rs[1] = {n_rows};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, rs, &rows), SL_OK);
        for (int i = 0; i < n_rows; i++)
            ((int32_t *)rows.data)[i] = (int32_t)(sl_rng_next(&rng) % (uint64_t)c->nq);
        in[2] = rows;
        sl_score_rows_params p = {.causal = c->causal, .scale = 0};
        check_one(ctx, SL_OP_SCORE_ROWS, &p, in, 2e-5, "rows");
        sl_tensor_release(&rows);
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* score.last_q and score.rows against attn.dense's lse: p = exp(s·q·k − L),
 * rows sum to 1, future keys 0. score.exact with 1 × 1 blocks equals the
 * probabilities of every row; with blocks its rows add to the block's row
 * count (normalize: to 1). score.pooled with 1 × 1 blocks is the scaled
 * q·k (-inf in the future); its softmax is the probability map. */
START_TEST(test_score_independent)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 42000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[3] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    int64_t off = c->nk - c->nq, grp = c->hq / c->hkv;
    double scale = 1.0 / sqrt((double)c->d);
    sl_attn_params pa = {.causal = c->causal};
    sl_tensor dense[2];
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pa, in, dense);
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        sl_score_last_q_params pl = {.last = 5, .causal = c->causal};
        sl_tensor P = run1(ctx, (sl_backend_id)b, SL_OP_SCORE_LAST_Q, &pl, in);
        int64_t L = c->nq < 5 ? c->nq : 5;
        ck_assert_int_eq(P.shape[1], L);
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t t = 0; t < L; t++) {
                int64_t r = c->nq - L + t;
                double lse = tu_at(&dense[1], h * c->nq + r), sum = 0;
                for (int64_t j = 0; j < c->nk; j++) {
                    double want = c->causal && j > off + r ? 0 : exp(scale * qk(&in[0], &in[1], h, r, h / grp, j) - lse);
                    double got = tu_at(&P, (h * L + t) * c->nk + j);
                    sum += got;
                    if (!(fabs(got - want) <= 2e-5 * fmax(want, 1e-2)))
                        ck_abort_msg("last_q %s h %lld row %lld key %lld: %g, want %g", sl_backend_name((sl_backend_id)b),
                                     (long long)h, (long long)r, (long long)j, got, want);
                }
                ck_assert_msg(fabs(sum - 1) < 1e-5, "last_q row sums to %g", sum);
            }
        /* exact with 1 x 1 blocks: the whole probability map */
        sl_score_exact_params pe = {.bq = 1, .bk = 1, .causal = c->causal};
        sl_tensor E = run1(ctx, (sl_backend_id)b, SL_OP_SCORE_EXACT, &pe, in);
        for (int64_t t = 0; t < L; t++)
            for (int64_t h = 0; h < c->hq; h++)
                for (int64_t j = 0; j < c->nk; j++) {
                    float a = tu_at(&E, (h * c->nq + c->nq - L + t) * c->nk + j), want = tu_at(&P, (h * L + t) * c->nk + j);
                    if (!(fabs(a - want) <= 2e-6 + 1e-5 * want))
                        ck_abort_msg("exact 1x1 vs last_q: %g vs %g", a, want);
                }
        /* exact with blocks: raw rows add to the rows of the block, normalised ones to 1 */
        for (int norm = 0; norm < 2; norm++) {
            sl_score_exact_params pb = {.bq = 7, .bk = 9, .causal = c->causal, .normalize = norm};
            sl_tensor B = run1(ctx, (sl_backend_id)b, SL_OP_SCORE_EXACT, &pb, in);
            int64_t nqb = B.shape[1], nkb = B.shape[2];
            for (int64_t h = 0; h < c->hq; h++)
                for (int64_t r = 0; r < nqb; r++) {
                    double s = 0;
                    for (int64_t x = 0; x < nkb; x++)
                        s += tu_at(&B, (h * nqb + r) * nkb + x);
                    double want = norm ? 1 : (double)(c->nq - r * 7 < 7 ? c->nq - r * 7 : 7);
                    ck_assert_msg(fabs(s - want) < 1e-4, "exact block row sums to %g, want %g", s, want);
                }
            sl_tensor_release(&B);
        }
        /* pooled with 1 x 1 blocks */
        sl_score_pooled_params pp = {.bq = 1, .bk = 1, .causal = c->causal};
        sl_tensor S = run1(ctx, (sl_backend_id)b, SL_OP_SCORE_POOLED, &pp, in);
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t r = 0; r < c->nq; r++)
                for (int64_t j = 0; j < c->nk; j++) {
                    double want = c->causal && j > off + r ? -INFINITY : scale * qk(&in[0], &in[1], h, r, h / grp, j);
                    float got = tu_at(&S, (h * c->nq + r) * c->nk + j);
                    if (isinf(want) ? got != want : !(fabs(got - want) < 1e-5 * fmax(1, fabs(want))))
                        ck_abort_msg("pooled 1x1 [%lld, %lld, %lld] = %g, want %g", (long long)h, (long long)r,
                                     (long long)j, got, want);
                }
        pp.softmax = 1;
        sl_tensor SP = run1(ctx, (sl_backend_id)b, SL_OP_SCORE_POOLED, &pp, in);
        assert_close(&SP, &E, 2e-5, "pooled 1x1 softmax vs exact 1x1");
        sl_tensor_release(&S);
        sl_tensor_release(&SP);
        sl_tensor_release(&E);
        sl_tensor_release(&P);
    }
    release_n(dense, 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Mean pooling by hand: block means of q and k, the product scaled. */
START_TEST(test_pooled_mean_by_hand)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 42500);
    int64_t hq = 4, hkv = 2, nq = 23, nk = 30, d = 8, bq = 5, bk = 7;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hq, nq, d, 1.0), tu_randn(ctx, &rng, hkv, nk, d, 1.0)};
    for (int pad = 0; pad < 2; pad++) {
        sl_score_pooled_params p = {.bq = bq, .bk = bk, .causal = 1, .scale = 0.5, .pad = pad};
        sl_tensor S = run1(ctx, SL_BACKEND_CPU, SL_OP_SCORE_POOLED, &p, in);
        int64_t nqb = 5, nkb = 5;
        ck_assert_int_eq(S.shape[1], nqb);
        ck_assert_int_eq(S.shape[2], nkb);
        for (int64_t h = 0; h < hq; h++)
            for (int64_t r = 0; r < nqb; r++)
                for (int64_t cb = 0; cb < nkb; cb++) {
                    double s = 0;
                    int64_t nr = 0, nc = 0;
                    for (int64_t i = r * bq; i < nq && i < (r + 1) * bq; i++, nr++)
                        ;
                    for (int64_t j = cb * bk; j < nk && j < (cb + 1) * bk; j++, nc++)
                        ;
                    for (int64_t i = r * bq; i < r * bq + nr; i++)
                        for (int64_t j = cb * bk; j < cb * bk + nc; j++)
                            s += qk(&in[0], &in[1], h, i, h / 2, j);
                    double want = 0.5 * s / (double)(pad ? bq * bk : nr * nc);
                    int future = cb * bk > (nk - nq) + r * bq + nr - 1;
                    float got = tu_at(&S, (h * nqb + r) * nkb + cb);
                    if (future ? got != -INFINITY : !(fabs(got - want) < 1e-5))
                        ck_abort_msg("pooled pad %d [%lld, %lld, %lld] = %g, want %g%s", pad, (long long)h, (long long)r,
                                     (long long)cb, got, want, future ? " (-inf)" : "");
                }
        sl_tensor_release(&S);
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- reductions ---- */

static sl_tensor scores(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t r, int64_t c, int with_inf)
{
    sl_tensor x = tu_randn(ctx, rng, h, r, c, 1.0);
    float *d = x.data;
    for (int64_t i = 0; with_inf && i < h * r * c; i++)
        if (sl_rng_uniform(rng) < 0.1)
            d[i] = -INFINITY;
    return x;
}

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
            sl_tensor x = scores(ctx, &rng, sh[0], sh[1], sh[2], inf);
            check_one(ctx, SL_OP_REDUCE_COLUMNS, NULL, &x, 1e-5, "columns");
            const int64_t pos0[] = {-1, 0, sh[2] + 3};
            for (int i = 0; i < 3; i++) {
                sl_reduce_diag_params p = {.row_pos0 = pos0[i]};
                check_one(ctx, SL_OP_REDUCE_DIAGONALS, &p, &x, 1e-5, "diagonals");
            }
            for (int mode = 0; mode < 3; mode++) {
                const int64_t bs[][2] = {{4, 7}, {1, 1}, {64, 64}};
                for (int b = 0; b < 3; b++) {
                    sl_reduce_block_params p = {.br = bs[b][0], .bc = bs[b][1], .mode = mode};
                    check_one(ctx, SL_OP_REDUCE_BLOCK, &p, &x, 1e-5, "block");
                }
                const int64_t groups[] = {0, 1, 2};
                for (int g = 0; g < 3; g++) {
                    if (groups[g] && sh[0] % groups[g])
                        continue;
                    sl_reduce_heads_params p = {.group = groups[g], .mode = mode};
                    check_one(ctx, SL_OP_REDUCE_HEADS, &p, &x, 1e-5, "heads");
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
    sl_tensor x = scores(ctx, &rng, H, R, C, 0);
    sl_tensor y = run1(ctx, SL_BACKEND_CPU, SL_OP_REDUCE_DIAGONALS, NULL, &x);
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

/* ---- selectors ---- */

/* Scores with ties (a few levels) and -inf entries. */
static sl_tensor tied(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t r, int64_t c, int nonneg)
{
    sl_tensor x = scores(ctx, rng, h, r, c, 1);
    float *d = x.data;
    for (int64_t i = 0; i < h * r * c; i++)
        if (isfinite(d[i]))
            d[i] = nonneg ? (float)floor(fabs(d[i]) * 3) / 3.f : (float)floor(d[i] * 3) / 3.f;
    return x;
}

START_TEST(test_select_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 44000);
    const int64_t shapes[][3] = {{3, 7, 50}, {2, 1, 300}, {4, 3, 1}, {2, 0, 5}};
    for (int s = 0; s < 4; s++) {
        const int64_t *sh = shapes[s];
        for (int two = 0; two < 2; two++) {
            sl_tensor in[2] = {tied(ctx, &rng, sh[0], sh[1], sh[2], 1)};
            if (two) {
                /* [H, C]: the same data seen as H rows of R·C */
                in[0].ndim = 2;
                in[0].shape[1] = sh[1] * sh[2];
                in[0].stride[0] = sh[1] * sh[2];
                in[0].stride[1] = 1;
            }
            const int64_t ks[] = {0, 1, 3, sh[2], sh[2] + 5};
            for (int k = 0; k < 5; k++) {
                sl_select_topk_params p = {.k = ks[k]};
                check_one(ctx, SL_OP_SELECT_TOPK, &p, in, 0, "topk");
            }
            sl_select_topk_params pr = {.ratio = 0.3};
            check_one(ctx, SL_OP_SELECT_TOPK, &pr, in, 0, "topk ratio");
            const double ps[] = {0, 0.3, 0.9, 1};
            for (int i = 0; i < 4; i++)
                for (int norm = 0; norm < 2; norm++) {
                    sl_select_topp_params p = {.p = ps[i], .normalize = norm};
                    check_one(ctx, SL_OP_SELECT_TOPP, &p, in, 0, "topp");
                }
            for (int rel = 0; rel < 2; rel++) {
                sl_select_threshold_params p = {.t = 0.5, .relative = rel};
                check_one(ctx, SL_OP_SELECT_THRESHOLD, &p, in, 0, "threshold");
            }
            /* per-head budgets */
            int64_t hs[1] = {sh[0]};
            ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, hs, &in[1]), SL_OK);
            for (int64_t h = 0; h < sh[0]; h++)
                ((int32_t *)in[1].data)[h] = (int32_t)(h * 3);
            sl_select_topk_params pk = {.k = 1};
            check_one(ctx, SL_OP_SELECT_TOPK, &pk, in, 0, "topk opt.k");
            sl_tensor_release(&in[1]);
            ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 1, hs, &in[1]), SL_OK);
            for (int64_t h = 0; h < sh[0]; h++)
                ((float *)in[1].data)[h] = (float)(0.2 + 0.25 * (double)h);
            sl_select_topp_params pp = {.p = 0.5};
            check_one(ctx, SL_OP_SELECT_TOPP, &pp, in, 0, "topp opt.p");
            release_n(in, 2);
        }
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Properties checked here, not by comparison: topk keeps min(k, finite)
 * entries, none below an unkept finite one, ties to the lower index; topp's
 * set reaches p of the mass and loses it without its smallest member. */
START_TEST(test_select_properties)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 44500);
    int64_t H = 3, R = 6, C = 40;
    sl_tensor in[2] = {tied(ctx, &rng, H, R, C, 1)};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int64_t k = 0; k <= C; k += 7) {
            sl_select_topk_params p = {.k = k};
            sl_tensor keep = run1(ctx, (sl_backend_id)b, SL_OP_SELECT_TOPK, &p, in);
            const uint8_t *kp = keep.data;
            for (int64_t row = 0; row < H * R; row++) {
                const float *x = (const float *)in[0].data + row * C;
                int64_t n = 0, finite = 0;
                for (int64_t j = 0; j < C; j++) {
                    n += kp[row * C + j];
                    finite += isfinite(x[j]);
                    if (kp[row * C + j] && !isfinite(x[j]))
                        ck_abort_msg("topk kept -inf");
                }
                ck_assert_int_eq(n, k < finite ? k : finite);
                for (int64_t i = 0; i < C; i++)
                    for (int64_t j = 0; j < C; j++)
                        if (kp[row * C + i] && !kp[row * C + j] && isfinite(x[j]) &&
                            (x[j] > x[i] || (x[j] == x[i] && j < i)))
                            ck_abort_msg("topk k %lld keeps %lld (%g) but not %lld (%g)", (long long)k, (long long)i,
                                         x[i], (long long)j, x[j]);
            }
            sl_tensor_release(&keep);
        }
        for (int ip = 0; ip <= 4; ip++) {
            double pv = ip / 4.0;
            sl_select_topp_params p = {.p = pv};
            sl_tensor keep = run1(ctx, (sl_backend_id)b, SL_OP_SELECT_TOPP, &p, in);
            const uint8_t *kp = keep.data;
            for (int64_t row = 0; row < H * R; row++) {
                const float *x = (const float *)in[0].data + row * C;
                double total = 0, kept = 0, smallest = INFINITY;
                for (int64_t j = 0; j < C; j++) {
                    double w = isfinite(x[j]) ? x[j] : 0;
                    total += w;
                    if (kp[row * C + j]) {
                        kept += w;
                        smallest = fmin(smallest, w);
                    }
                }
                ck_assert_msg(kept >= pv * total - 1e-6 * total, "topp p %g keeps %g of %g", pv, kept, total);
                if (kept > 0)
                    ck_assert_msg(kept - smallest < pv * total + 1e-9 * total, "topp p %g is not minimal (%g - %g of %g)",
                                  pv, kept, smallest, total);
                else
                    ck_assert_msg(pv == 0 || total == 0, "topp p %g kept nothing of %g", pv, total);
            }
            sl_tensor_release(&keep);
        }
    }
    /* a row by hand: [1, 3, 3, 2, 3, -inf] with k = 2 keeps keys 1 and 2 */
    sl_tensor x;
    int64_t sh[2] = {1, 6};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, sh, &x), SL_OK);
    const float vals[6] = {1, 3, 3, 2, 3, -INFINITY};
    memcpy(x.data, vals, sizeof vals);
    sl_select_topk_params p2 = {.k = 2};
    sl_tensor one[2] = {x}, keep = run1(ctx, SL_BACKEND_CPU, SL_OP_SELECT_TOPK, &p2, one);
    const uint8_t want[6] = {0, 1, 1, 0, 0, 0};
    ck_assert_mem_eq(keep.data, want, 6);
    sl_tensor_release(&keep);
    /* top-p of masses {1, 3, 3, 2, 3} (sum 12) at p = 0.5 needs two 3s */
    sl_select_topp_params pp = {.p = 0.5};
    keep = run1(ctx, SL_BACKEND_CPU, SL_OP_SELECT_TOPP, &pp, one);
    ck_assert_mem_eq(keep.data, want, 6);
    sl_tensor_release(&keep);
    sl_tensor_release(&x);
    release_n(in, 1);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- validation ---- */

static void expect_fail(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, sl_status want, const char *needle)
{
    for (int b = 0; b < 2; b++) {
        sl_tensor out;
        sl_status s = sl_op_run(ctx, (sl_backend_id)b, op, p, in, &out);
        ck_assert_msg(s == want, "%s: status %s, want %s (%s)", sl_op_info_get(op)->name, sl_status_name(s),
                      sl_status_name(want), sl_ctx_error(ctx));
        ck_assert_msg(strstr(sl_ctx_error(ctx), needle) && strncmp(sl_ctx_error(ctx), sl_op_info_get(op)->name,
                                                                     strlen(sl_op_info_get(op)->name)) == 0,
                      "message '%s' lacks '%s'", sl_ctx_error(ctx), needle);
    }
}

START_TEST(test_score_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 45000);
    sl_tensor in[3] = {tu_randn(ctx, &rng, 2, 8, 4, 1.0), tu_randn(ctx, &rng, 2, 10, 4, 1.0)};
    ((float *)in[0].data)[5] = NAN;
    expect_fail(ctx, SL_OP_SCORE_POOLED, NULL, in, SL_EARG, "NaN");
    expect_fail(ctx, SL_OP_SCORE_EXACT, NULL, in, SL_EARG, "NaN");
    expect_fail(ctx, SL_OP_SCORE_LAST_Q, NULL, in, SL_EARG, "NaN");
    ((float *)in[0].data)[5] = 0.5f;
    sl_tensor k3 = tu_randn(ctx, &rng, 3, 10, 4, 1.0), qlong = tu_randn(ctx, &rng, 2, 12, 4, 1.0);
    sl_tensor bad[3] = {in[0], k3};
    expect_fail(ctx, SL_OP_SCORE_POOLED, NULL, bad, SL_ESHAPE, "heads");
    bad[0] = qlong, bad[1] = in[1];
    expect_fail(ctx, SL_OP_SCORE_EXACT, NULL, bad, SL_ESHAPE, "n_q <= n_k");
    sl_tensor rows;
    int64_t rs[1] = {2};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, rs, &rows), SL_OK);
    ((int32_t *)rows.data)[0] = 3;
    ((int32_t *)rows.data)[1] = 8;
    in[2] = rows;
    expect_fail(ctx, SL_OP_SCORE_ROWS, NULL, in, SL_EARG, "outside [0, 8)");
    sl_score_pooled_params pp;
    sl_op_params_default(SL_OP_SCORE_POOLED, &pp);
    pp.bq = 0;
    expect_fail(ctx, SL_OP_SCORE_POOLED, &pp, in, SL_EARG, "'bq'");
    ck_assert_int_eq(sl_op_params_set(ctx, SL_OP_SELECT_TOPP, &pp, "p", 1.5), SL_EARG);
    ck_assert_int_eq(sl_op_params_set(ctx, SL_OP_SELECT_TOPK, &pp, "k", -1), SL_EARG);
    /* selector inputs: NaN and +inf rejected, -inf allowed, opt.k per head */
    sl_tensor x[2] = {tu_randn(ctx, &rng, 2, 3, 5, 1.0)};
    ((float *)x[0].data)[4] = INFINITY;
    expect_fail(ctx, SL_OP_SELECT_TOPK, NULL, x, SL_EARG, "+inf");
    ((float *)x[0].data)[4] = NAN;
    expect_fail(ctx, SL_OP_REDUCE_COLUMNS, NULL, x, SL_EARG, "NaN");
    ((float *)x[0].data)[4] = -INFINITY;
    ck_assert_int_eq(sl_op_check(ctx, SL_OP_SELECT_TOPK, NULL, x), SL_OK);
    expect_fail(ctx, SL_OP_SELECT_TOPP, NULL, x, SL_EARG, "masses must be >= 0");
    int64_t hs[1] = {3};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, hs, &x[1]), SL_OK);
    memset(x[1].data, 0, 12);
    expect_fail(ctx, SL_OP_SELECT_TOPK, NULL, x, SL_ESHAPE, "one per head");
    sl_tensor_release(&x[1]);
    hs[0] = 2;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, hs, &x[1]), SL_OK);
    ((int32_t *)x[1].data)[0] = 1;
    ((int32_t *)x[1].data)[1] = -2;
    expect_fail(ctx, SL_OP_SELECT_TOPK, NULL, x, SL_EARG, "k >= 0");
    sl_reduce_heads_params ph = {.group = 4};
    expect_fail(ctx, SL_OP_REDUCE_HEADS, &ph, x, SL_ESHAPE, "group");
    release_n(x, 2);
    sl_tensor_release(&rows);
    sl_tensor_release(&k3);
    sl_tensor_release(&qlong);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Estimator cost: pooled scores at n = 16K cost far less than dense attention. */
START_TEST(test_pooled_flops_small)
{
    sl_tensor q = {0}, k = {0};
    q.ndim = k.ndim = 3;
    q.shape[0] = k.shape[0] = 8;
    q.shape[1] = k.shape[1] = 16384;
    q.shape[2] = k.shape[2] = 64;
    sl_tensor in[3] = {q, k, k};
    double dense = sl_op_flops(SL_OP_ATTN_DENSE, NULL, in), pooled = sl_op_flops(SL_OP_SCORE_POOLED, NULL, in);
    ck_assert_msg(pooled > 0 && pooled < 0.01 * dense, "pooled %g vs dense %g", pooled, dense);
    double exact = sl_op_flops(SL_OP_SCORE_EXACT, NULL, in);
    ck_assert_msg(exact > 0.4 * dense && exact < dense, "exact %g vs dense %g", exact, dense);
}
END_TEST

/* ---- masks from selections ---- */

static void assert_same_mask(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, const char *what)
{
    sl_tensor ba, bb;
    ck_assert_int_eq(sl_mask_to_bits(ctx, a, &ba), SL_OK);
    ck_assert_int_eq(sl_mask_to_bits(ctx, b, &bb), SL_OK);
    int64_t n = sl_tensor_numel(&bb), hb = bb.shape[0], ha = ba.shape[0], per = n / hb;
    /* a one-head mask stands for every head of the other */
    int64_t heads = ha > hb ? ha : hb;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < per; i++) {
            uint8_t x = ((uint8_t *)ba.data)[(ha == 1 ? 0 : h) * per + i], y = ((uint8_t *)bb.data)[(hb == 1 ? 0 : h) * per + i];
            if (x != y)
                ck_abort_msg("%s: head %lld pair %lld: %d vs %d", what, (long long)h, (long long)i, x, y);
        }
    sl_tensor_release(&ba);
    sl_tensor_release(&bb);
}

START_TEST(test_from_blocks)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 46000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    int bq = 16, bk = 8;
    int64_t nqb = (c->nq + bq - 1) / bq, nkb = (c->nk + bk - 1) / bk;
    sl_tensor keep;
    int64_t ks[3] = {c->hq, nqb, nkb};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, ks, &keep), SL_OK);
    memset(keep.data, 1, (size_t)sl_tensor_numel(&keep));
    sl_mask m, causal;
    ck_assert_int_eq(sl_mask_from_blocks(ctx, &keep, c->nq, c->nk, bq, bk, 1, &m), SL_OK);
    mask_of(ctx, SL_PAT_CAUSAL, 0, c->nq, c->nk, bq, bk, &causal);
    assert_same_mask(ctx, &m, &causal, "all blocks kept vs causal");
    ck_assert_msg(fabs(sl_mask_density(&m, 1) - 1) < 1e-12, "density %g", sl_mask_density(&m, 1));
    sl_tensor in[7] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    sl_tensor dense[2];
    sl_attn_params pa = {.causal = 1};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pa, in, dense);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    sl_attn_block_params pb = {.bq = bq, .bk = bk};
    check_equals(ctx, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, dense, "from_blocks all kept vs dense");
    /* random blocks: pair (i, j) kept iff its block is kept and j <= position of i */
    for (int64_t i = 0; i < sl_tensor_numel(&keep); i++)
        ((uint8_t *)keep.data)[i] = sl_rng_uniform(&rng) < 0.4;
    sl_mask r;
    ck_assert_int_eq(sl_mask_from_blocks(ctx, &keep, c->nq, c->nk, bq, bk, 1, &r), SL_OK);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t i = 0; i < c->nq; i++)
            for (int64_t j = 0; j < c->nk; j++) {
                int want = ((uint8_t *)keep.data)[(h * nqb + i / bq) * nkb + j / bk] && j <= c->nk - c->nq + i;
                ck_assert_int_eq(sl_mask_get(&r, (int)h, i, j), want);
            }
    sl_mask_release(&r);
    sl_mask_release(&m);
    sl_mask_release(&causal);
    release_n(dense, 2);
    release_n(in, 3);
    sl_tensor_release(&keep);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_index_from_columns)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 47000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[8] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    /* every column, listed twice in reverse with padding: dense (causal per row, all keys without) */
    sl_tensor cols = i32_tensor(ctx, 1, 2 * c->nk + 1);
    for (int64_t j = 0; j < c->nk; j++)
        ((int32_t *)cols.data)[j] = ((int32_t *)cols.data)[c->nk + j] = (int32_t)(c->nk - 1 - j);
    ((int32_t *)cols.data)[2 * c->nk] = -1;
    for (int causal = 0; causal < 2; causal++) {
        sl_mask_index x;
        ck_assert_int_eq(sl_mask_index_from_columns(ctx, &cols, c->nq, c->nk, 1, causal, &x), SL_OK);
        ck_assert_int_eq(sl_mask_index_validate(ctx, &x), SL_OK);
        in[3] = x.row_ptr, in[4] = x.col;
        sl_tensor dense[2];
        sl_attn_params pa = {.causal = causal};
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pa, in, dense);
        sl_attn_token_params pt = {.rows_per_entry = 1};
        check_equals(ctx, SL_OP_ATTN_TOKEN_SPARSE, &pt, in, dense, "index_from_columns all columns vs dense");
        release_n(dense, 2);
        sl_mask_index_release(&x);
    }
    sl_tensor_release(&cols);
    /* random per-head columns, entries of 5 rows: entry e lists the chosen columns up to its last row */
    int64_t n_c = 6, b = 5, n_e = (c->nq + b - 1) / b;
    cols = i32_tensor(ctx, c->hq, n_c);
    for (int64_t i = 0; i < c->hq * n_c; i++)
        ((int32_t *)cols.data)[i] = (int32_t)(sl_rng_next(&rng) % (uint64_t)c->nk);
    sl_mask_index x;
    ck_assert_int_eq(sl_mask_index_from_columns(ctx, &cols, c->nq, c->nk, b, 1, &x), SL_OK);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t e = 0; e < n_e; e++) {
            const int32_t *rp = (const int32_t *)x.row_ptr.data + h * (n_e + 1);
            int64_t last = c->nk - c->nq + (e + 1) * b - 1;
            for (int64_t j = 0; j < c->nk; j++) {
                int chosen = 0, listed = 0;
                for (int64_t i = 0; i < n_c; i++)
                    chosen |= ((int32_t *)cols.data)[h * n_c + i] == j;
                for (int32_t t = rp[e]; t < rp[e + 1]; t++)
                    listed |= ((int32_t *)x.col.data)[t] == j;
                ck_assert_int_eq(listed, chosen && j <= last);
            }
        }
    /* the same columns as a u8 keep [H, n_k] give the same lists */
    sl_tensor keep;
    int64_t ks[2] = {c->hq, c->nk};
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_U8, 2, ks, &keep), SL_OK);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t i = 0; i < n_c; i++)
            ((uint8_t *)keep.data)[h * c->nk + ((int32_t *)cols.data)[h * n_c + i]] = 1;
    sl_mask_index y;
    ck_assert_int_eq(sl_mask_index_from_columns(ctx, &keep, c->nq, c->nk, b, 1, &y), SL_OK);
    ck_assert_int_eq(sl_tensor_numel(&y.col), sl_tensor_numel(&x.col));
    ck_assert_mem_eq(y.row_ptr.data, x.row_ptr.data, (size_t)sl_tensor_nbytes(&x.row_ptr));
    if (sl_tensor_numel(&x.col))
        ck_assert_mem_eq(y.col.data, x.col.data, (size_t)sl_tensor_nbytes(&x.col));
    sl_mask_index_release(&y);
    sl_tensor_release(&keep);
    sl_mask_index_release(&x);
    sl_tensor_release(&cols);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* MInference's conversion as its kernel reads (slash part, one query block
 * of bq = bk = B rows ending at position end): offsets sorted descending,
 * ranges merged, saved blocks; then the keys ∩ causal. Written from the
 * reference's loop, apart from the library's version. */
static void minference_block_keys(const int64_t *off_desc, int64_t n_s, int64_t end, int64_t B, int64_t n_k, uint8_t *keys)
{
    memset(keys, 0, (size_t)n_k);
    int64_t s = 0;
    while (s < n_s && off_desc[s] >= end)
        s++;
    if (s == n_s)
        return;
    int64_t s_idx = end - off_desc[s++];
    s_idx = s_idx > B ? s_idx : B;
    int64_t range_start = s_idx - B, range_end = s_idx;
    for (;;) {
        if (s < n_s) {
            s_idx = end - off_desc[s++];
            s_idx = s_idx > B ? s_idx : B;
        } else {
            for (int64_t j = range_start; j < range_end && j < n_k; j++)
                keys[j] = 1;
            break;
        }
        if (s_idx > range_end + B) {
            for (int64_t j = range_start; j < range_end && j < n_k; j++)
                keys[j] = 1;
            range_start = s_idx - B;
            range_end = s_idx;
        } else if (s_idx > range_end) {
            range_end += B;
        }
    }
}

START_TEST(test_from_slashes)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 48000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    int64_t B = 16, n_s = 5, off = c->nk - c->nq;
    sl_tensor offs = i32_tensor(ctx, c->hq, n_s);
    for (int64_t i = 0; i < c->hq * n_s; i++)
        ((int32_t *)offs.data)[i] = i % n_s == 0 ? 0 : (int32_t)(sl_rng_next(&rng) % (uint64_t)c->nk);
    sl_mask exact, wide;
    ck_assert_int_eq(sl_mask_from_slashes(ctx, &offs, c->nq, c->nk, (int)B, (int)B, 0, &exact), SL_OK);
    ck_assert_int_eq(sl_mask_from_slashes(ctx, &offs, c->nq, c->nk, (int)B, (int)B, 1, &wide), SL_OK);
    uint8_t *keys = malloc((size_t)c->nk);
    int64_t desc[5];
    for (int64_t h = 0; h < c->hq; h++) {
        /* offsets of head h, unique, descending */
        int64_t n = 0;
        for (int64_t i = 0; i < n_s; i++) {
            int64_t o = ((int32_t *)offs.data)[h * n_s + i], seen = 0;
            for (int64_t t = 0; t < n; t++)
                seen |= desc[t] == o;
            if (!seen)
                desc[n++] = o;
        }
        for (int64_t a = 0; a < n; a++)
            for (int64_t b2 = a + 1; b2 < n; b2++)
                if (desc[b2] > desc[a]) {
                    int64_t t = desc[a];
                    desc[a] = desc[b2];
                    desc[b2] = t;
                }
        for (int64_t r = 0; r * B < c->nq; r++) {
            minference_block_keys(desc, n, off + (r + 1) * B, B, c->nk, keys);
            for (int64_t i = r * B; i < c->nq && i < (r + 1) * B; i++)
                for (int64_t j = 0; j < c->nk; j++) {
                    int on_slash = 0;
                    for (int64_t t = 0; t < n; t++)
                        on_slash |= off + i - j == desc[t];
                    ck_assert_int_eq(sl_mask_get(&exact, (int)h, i, j), on_slash);
                    ck_assert_int_eq(sl_mask_get(&wide, (int)h, i, j), keys[j] && j <= off + i);
                    if (on_slash)
                        ck_assert_int_eq(sl_mask_get(&wide, (int)h, i, j), 1);
                }
        }
    }
    free(keys);
    sl_mask_release(&exact);
    sl_mask_release(&wide);
    sl_tensor_release(&offs);
    /* every offset: both forms are the causal mask */
    offs = i32_tensor(ctx, 1, c->nk);
    for (int64_t j = 0; j < c->nk; j++)
        ((int32_t *)offs.data)[j] = (int32_t)j;
    sl_mask causal;
    mask_of(ctx, SL_PAT_CAUSAL, 0, c->nq, c->nk, (int)B, (int)B, &causal);
    for (int w = 0; w < 2; w++) {
        sl_mask m;
        ck_assert_int_eq(sl_mask_from_slashes(ctx, &offs, c->nq, c->nk, (int)B, (int)B, w, &m), SL_OK);
        assert_same_mask(ctx, &m, &causal, w ? "widened, all offsets" : "exact, all offsets");
        sl_mask_release(&m);
    }
    sl_mask_release(&causal);
    sl_tensor_release(&offs);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_mask_builders_reject)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_tensor keep, cols = i32_tensor(ctx, 1, 2);
    int64_t ks[3] = {1, 2, 3};
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_U8, 3, ks, &keep), SL_OK);
    sl_mask m;
    sl_mask_index x;
    ck_assert_int_eq(sl_mask_from_blocks(ctx, &keep, 20, 20, 8, 8, 1, &m), SL_ESHAPE);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "mask from_blocks: keep has 2 x 3 blocks, expected 3 x 3"));
    ((int32_t *)cols.data)[0] = 3;
    ((int32_t *)cols.data)[1] = 20;
    ck_assert_int_eq(sl_mask_index_from_columns(ctx, &cols, 20, 20, 4, 1, &x), SL_EARG);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "outside [0, 20)"));
    ((int32_t *)cols.data)[1] = -3;
    ck_assert_int_eq(sl_mask_from_slashes(ctx, &cols, 20, 20, 8, 8, 1, &m), SL_EARG);
    ck_assert_int_eq(sl_mask_index_from_columns(ctx, &cols, 20, 20, 0, 1, &x), SL_EARG);
    sl_tensor_release(&keep);
    sl_tensor_release(&cols);
    tu_ctx_done(ctx, &al);
}
END_TEST

static Suite *score_ops_suite(void)
{
    Suite *s = suite_create("score_ops");
    TCase *tc = tcase_create("score_ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_score_backends_match_ref, 0, N_CASES);
    tcase_add_loop_test(tc, test_score_independent, 0, N_CASES);
    tcase_add_test(tc, test_pooled_mean_by_hand);
    tcase_add_test(tc, test_reduce_backends_match_ref);
    tcase_add_test(tc, test_reduce_diagonals_brute_force);
    tcase_add_test(tc, test_select_backends_match_ref);
    tcase_add_test(tc, test_select_properties);
    tcase_add_test(tc, test_score_validation);
    tcase_add_test(tc, test_pooled_flops_small);
    tcase_add_loop_test(tc, test_from_blocks, 0, N_CASES);
    tcase_add_loop_test(tc, test_index_from_columns, 0, N_CASES);
    tcase_add_loop_test(tc, test_from_slashes, 0, N_CASES);
    tcase_add_test(tc, test_mask_builders_reject);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(score_ops_suite()); }
