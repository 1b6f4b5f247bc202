/* test_score_ops.c — the estimators (score.*: pooled, last_q, rows, exact,
 * lowbit, hash, antidiag, strided, anchor) on every backend in
 * SL_TEST_BACKENDS against ref (fresh seeded inputs, ragged sizes, decode
 * offsets, GQA, one query row, NaN and bad shapes rejected, allocation
 * failures leak nothing), and each against an independent float64
 * computation written here: probabilities against attn.dense's lse, pooled
 * scores by hand, exact relative scores at 16 bits and a quantiser of our own
 * at 4 bits, the LSH argmax, the antidiagonal of each S x S tile, softmax on
 * the strided grid, the anchor as a row max over the init + local keys. */
#include "opsutil.h"

static double qk(const sl_tensor *q, const sl_tensor *k, int64_t h, int64_t i, int64_t g, int64_t j)
{
    int64_t d = q->shape[2];
    const float *a = (const float *)q->data + (h * q->shape[1] + i) * d, *b = (const float *)k->data + (g * k->shape[1] + j) * d;
    double s = 0;
    for (int64_t t = 0; t < d; t++)
        s += (double)a[t] * (double)b[t];
    return s;
}

static double dot64(const float *a, const float *b, int64_t d)
{
    double s = 0;
    for (int64_t c = 0; c < d; c++)
        s += (double)a[c] * (double)b[c];
    return s;
}

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
                check_op_vs_ref(ctx, SL_OP_SCORE_POOLED, &p, in, 2e-5, w);
            }
    for (int b = 0; b < 3; b++)
        for (int red = 0; red < 2; red++) {
            sl_score_exact_params p = {.bq = blocks[b][0], .bk = blocks[b][1], .reduce = red, .causal = c->causal,
                                       .scale = 0, .normalize = b == 2};
            char w[96];
            snprintf(w, sizeof w, "exact case %d blocks %d reduce %d", _i, b, red);
            check_op_vs_ref(ctx, SL_OP_SCORE_EXACT, &p, in, 2e-5, w);
        }
    const int64_t lasts[] = {64, 1, 1000};
    for (int l = 0; l < 3; l++) {
        sl_score_last_q_params p = {.last = lasts[l], .causal = c->causal, .scale = 0.3};
        check_op_vs_ref(ctx, SL_OP_SCORE_LAST_Q, &p, in, 2e-5, "last_q");
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
        check_op_vs_ref(ctx, SL_OP_SCORE_ROWS, &p, in, 2e-5, "rows");
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
    sl_tensor in[3] = {{0}};
    qkv_of(ctx, &rng, c, 1.0, in);
    int64_t off = c->nk - c->nq, grp = c->hq / c->hkv;
    double scale = 1.0 / sqrt((double)c->d);
    sl_attn_params pa = {.causal = c->causal};
    sl_tensor dense[2];
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pa, in, dense);
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        sl_score_last_q_params pl = {.last = 5, .causal = c->causal};
        sl_tensor P = run_op1(ctx, (sl_backend_id)b, SL_OP_SCORE_LAST_Q, &pl, in);
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
        sl_tensor E = run_op1(ctx, (sl_backend_id)b, SL_OP_SCORE_EXACT, &pe, in);
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
            sl_tensor B = run_op1(ctx, (sl_backend_id)b, SL_OP_SCORE_EXACT, &pb, in);
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
        sl_tensor S = run_op1(ctx, (sl_backend_id)b, SL_OP_SCORE_POOLED, &pp, in);
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
        sl_tensor SP = run_op1(ctx, (sl_backend_id)b, SL_OP_SCORE_POOLED, &pp, in);
        assert_tensor_close(&SP, &E, 2e-5, "pooled 1x1 softmax vs exact 1x1");
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
        sl_tensor S = run_op1(ctx, SL_BACKEND_CPU, SL_OP_SCORE_POOLED, &p, in);
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

/* An independent quantiser: per group of rows, step = max|x| / qmax. */
static void quantise(const float *x, int64_t rows, int64_t d, int64_t group, int bits, double *out)
{
    double qmax = (double)((1 << (bits - 1)) - 1);
    for (int64_t g0 = 0; g0 < rows; g0 += group) {
        int64_t g1 = g0 + group < rows ? g0 + group : rows;
        double mx = 0;
        for (int64_t i = g0 * d; i < g1 * d; i++)
            mx = fmax(mx, fabs(x[i]));
        double step = mx > 0 ? (float)(mx / qmax) : 1.0;
        for (int64_t i = g0 * d; i < g1 * d; i++) {
            double v = bits >= 16 ? x[i] : step * fmin(qmax, fmax(-qmax, round((float)(x[i] / step))));
            out[i] = v;
        }
    }
}

START_TEST(test_score_lowbit)
{
    const shape_case *c = &CASES[_i];
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6100 + (uint64_t)_i);
    sl_tensor in[3] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1), {0}};
    /* shift the keys so smoothing has a mean to remove */
    float *kx = in[1].data;
    for (int64_t i = 0; i < sl_tensor_numel(&in[1]); i++)
        kx[i] += 0.7f;
    sl_attn_params ap = {.causal = c->causal, .scale = 0};
    sl_tensor dense[2];
    ck_assert_int_eq(sl_attn_dense(ctx, SL_BACKEND_REF, &ap, &in[0], &in[1], &in[1], &dense[0], &dense[1]), SL_OK);
    for (int bits = 4; bits <= 16; bits += 12)
        for (int with_lse = 0; with_lse < 2; with_lse++)
            for (int smooth = 0; smooth < 2; smooth++) {
                in[2] = with_lse ? dense[1] : (sl_tensor){0};
                sl_score_lowbit_params p = {.bq = 16, .bk = 8, .bits = bits, .q_group = 5, .k_group = 8,
                                            .smooth_k = smooth, .causal = c->causal, .scale = 0};
                char what[96];
                snprintf(what, sizeof what, "score.lowbit case %d bits %d lse %d smooth %d", _i, bits, with_lse, smooth);
                check_op_vs_ref(ctx, SL_OP_SCORE_LOWBIT, &p, in, 2e-5, what);
                sl_tensor out[1];
                ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_LOWBIT, &p, in, out), SL_OK);
                /* independent: smooth, quantise, max over pairs of (q~.k~ + q.mean)·scale - lse */
                int64_t nqb = (c->nq + 15) / 16, nkb = (c->nk + 7) / 8, g = c->hq / c->hkv, off = c->nk - c->nq;
                double *qq = malloc(sizeof *qq * (size_t)(c->nq * c->d)), *kq = malloc(sizeof *kq * (size_t)(c->nk * c->d));
                float *ks = malloc(sizeof *ks * (size_t)(c->nk * c->d));
                double *mean = malloc(sizeof *mean * (size_t)c->d), *want = malloc(sizeof *want * (size_t)(nqb * nkb));
                for (int64_t h = 0; h < c->hq; h++) {
                    const float *Q = (const float *)in[0].data + h * c->nq * c->d;
                    const float *K = (const float *)in[1].data + (h / g) * c->nk * c->d;
                    for (int64_t e = 0; e < c->d; e++) {
                        double s = 0;
                        for (int64_t t = 0; t < c->nk; t++)
                            s += K[t * c->d + e];
                        mean[e] = smooth ? (float)(s / (double)c->nk) : 0.0;
                    }
                    for (int64_t t = 0; t < c->nk * c->d; t++)
                        ks[t] = K[t] - (float)mean[t % c->d];
                    quantise(ks, c->nk, c->d, 8, bits, kq);
                    quantise(Q, c->nq, c->d, 5, bits, qq);
                    for (int64_t i = 0; i < nqb * nkb; i++)
                        want[i] = -INFINITY;
                    for (int64_t i = 0; i < c->nq; i++) {
                        double base = with_lse ? tu_at(&dense[1], h * c->nq + i) : 0, corr = 0;
                        for (int64_t e = 0; e < c->d; e++)
                            corr += (double)Q[i * c->d + e] * mean[e];
                        for (int64_t j = 0; j < c->nk; j++) {
                            if (c->causal && j > off + i)
                                continue;
                            double s = corr;
                            for (int64_t e = 0; e < c->d; e++)
                                s += qq[i * c->d + e] * kq[j * c->d + e];
                            double v = s / sqrt((double)c->d) - base;
                            double *w = &want[(i / 16) * nkb + j / 8];
                            *w = fmax(*w, v);
                        }
                    }
                    for (int64_t i = 0; i < nqb * nkb; i++) {
                        double got = tu_at(&out[0], h * nqb * nkb + i);
                        ck_assert_msg(isinf(want[i]) ? got == want[i] : fabs(got - want[i]) <= 1e-4 * fmax(1, fabs(want[i])),
                                      "%s: head %lld block %lld: %g vs independent %g", what, (long long)h, (long long)i,
                                      got, want[i]);
                    }
                }
                free(qq), free(kq), free(ks), free(mean), free(want);
                sl_tensor_release(&out[0]);
            }
    release_n(dense, 2);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* A group whose step max|x| / qmax underflows f32 (a subnormal row) and an
 * all-zero group quantise with step 1 (the contract): their scores are the
 * exact correction only, finite wherever the block has pairs, the same on
 * every backend. */
START_TEST(test_score_lowbit_tiny_groups)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6150);
    sl_tensor in[3] = {tu_randn(ctx, &rng, 2, 8, 4, 1), tu_randn(ctx, &rng, 1, 8, 4, 1), {0}};
    float *q = in[0].data;
    for (int c = 0; c < 4; c++) {
        q[0 * 4 + c] = c == 0 ? 1e-45f : 0.0f; /* head 0, row 0: max/qmax rounds to 0 */
        q[1 * 4 + c] = 0.0f;                    /* head 0, row 1: all zero */
        q[(8 + 2) * 4 + c] = c == 1 ? -1e-45f : 0.0f;
    }
    sl_score_lowbit_params p = {.bq = 1, .bk = 4, .bits = 8, .q_group = 1, .k_group = 4, .smooth_k = 1,
                                .causal = 0, .scale = 0};
    check_op_vs_ref(ctx, SL_OP_SCORE_LOWBIT, &p, in, 2e-5, "score.lowbit tiny groups");
    sl_tensor out[1];
    for (int b = SL_BACKEND_REF; b <= SL_BACKEND_CPU; b++) {
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_SCORE_LOWBIT, &p, in, out), SL_OK);
        for (int64_t i = 0; i < sl_tensor_numel(&out[0]); i++)
            ck_assert_msg(isfinite(tu_at(&out[0], i)), "backend %s: block %lld is %g; every block has pairs",
                          sl_backend_name((sl_backend_id)b), (long long)i, tu_at(&out[0], i));
        sl_tensor_release(&out[0]);
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* At 16 bits with the dense lse, the estimate of a block is the log of the
 * largest true attention probability in it: never above 0, and a row's best
 * block reaches at least log(1/n_keys). */
START_TEST(test_score_lowbit_oracle_is_log_probability)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6150);
    int64_t hq = 2, n = 40, d = 8;
    sl_tensor in[3] = {tu_randn(ctx, &rng, hq, n, d, 2), tu_randn(ctx, &rng, hq, n, d, 2), {0}};
    sl_attn_params ap = {.causal = 1, .scale = 0};
    sl_tensor dense[2];
    ck_assert_int_eq(sl_attn_dense(ctx, SL_BACKEND_REF, &ap, &in[0], &in[1], &in[1], &dense[0], &dense[1]), SL_OK);
    in[2] = dense[1];
    sl_score_lowbit_params p = {.bq = 1, .bk = n, .bits = 16, .q_group = 1, .k_group = 1, .smooth_k = 1, .causal = 1};
    sl_tensor out[1];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_LOWBIT, &p, in, out), SL_OK);
    for (int64_t h = 0; h < hq; h++)
        for (int64_t i = 0; i < n; i++) {
            float v = tu_at(&out[0], h * n + i);
            ck_assert_msg(v <= 1e-5 && v >= -log((double)(i + 1)) - 1e-5, "row %lld: %g", (long long)i, v);
        }
    sl_tensor_release(&out[0]);
    release_n(dense, 2);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_score_hash)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6200);
    int64_t hx = 2, hr = 4, n = 61, d = 10, m = 4;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hx, n, d, 1), tu_randn(ctx, &rng, hr, d, m, 1)};
    check_op_vs_ref(ctx, SL_OP_SCORE_HASH, NULL, in, 0, "score.hash");
    sl_tensor out[1];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_HASH, NULL, in, out), SL_OK);
    ck_assert_int_eq(out[0].dtype, SL_I32);
    int seen[8] = {0};
    for (int64_t h = 0; h < hr; h++)
        for (int64_t t = 0; t < n; t++) {
            const float *x = (const float *)in[0].data + ((h / 2) * n + t) * d, *R = (const float *)in[1].data + h * d * m;
            double best = -1e300;
            int arg = -1;
            for (int k = 0; k < 2 * m; k++) {
                double v = 0;
                for (int64_t e = 0; e < d; e++)
                    v += (double)x[e] * R[e * m + k % m];
                v = k < m ? v : -v;
                if (v > best)
                    best = v, arg = k;
            }
            int32_t got = ((const int32_t *)out[0].data)[h * n + t];
            ck_assert_int_eq(got, arg);
            seen[got]++;
        }
    int used = 0;
    for (int k = 0; k < 8; k++)
        used += seen[k] > 0;
    ck_assert_msg(used >= 4, "only %d of 8 buckets used", used);
    sl_tensor_release(&out[0]);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_antidiag_backends)
{
    const shape_case *c = &CASES[_i];
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7000 + (uint64_t)_i);
    sl_tensor in[2] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1)};
    int64_t strides[3] = {1, 4, 8};
    for (int t = 0; t < 3; t++) {
        sl_score_antidiag_params p = {.block = strides[t] * 4, .stride = strides[t], .causal = c->causal};
        check_op_vs_ref(ctx, SL_OP_SCORE_ANTIDIAG, &p, in, 1e-5, "score.antidiag");
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* The definition from the full token score matrix: tile (I, J) of S × S
 * scores, its antidiagonal summed, softmax per super-row over the visible
 * super-tokens, tiles of B summed. Ragged n (zero rows). */
/* The cpu kernel computes groups of query blocks per product (issue 20,
 * session 3): several groups, a ragged last group and block, an offset
 * (n_q < n_k), causal and not, each against ref. */
START_TEST(test_antidiag_groups)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7100);
    static const shape_case G[] = {{2, 1, 600, 700, 16, 1}, {1, 1, 1100, 1100, 8, 1}, {2, 2, 530, 530, 16, 0}};
    for (int g = 0; g < 3; g++) {
        sl_tensor in[2] = {tu_randn(ctx, &rng, G[g].hq, G[g].nq, G[g].d, 1),
                           tu_randn(ctx, &rng, G[g].hkv, G[g].nk, G[g].d, 1)};
        int64_t st[2] = {1, 2};
        for (int t = 0; t < 2; t++) {
            sl_score_antidiag_params p = {.block = st[t] * 4, .stride = st[t], .causal = G[g].causal};
            check_op_vs_ref(ctx, SL_OP_SCORE_ANTIDIAG, &p, in, 1e-5, "score.antidiag groups");
        }
        release_n(in, 2);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_antidiag_independent)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7100);
    int64_t hq = 4, hkv = 2, n = 45, d = 8, S = 4, B = 8;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hq, n, d, 1), tu_randn(ctx, &rng, hkv, n, d, 1)};
    sl_score_antidiag_params p = {.block = B, .stride = S, .causal = 1};
    sl_tensor out;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANTIDIAG, &p, in, &out), SL_OK);
    int64_t M = (n + S - 1) / S, nb = (n + B - 1) / B;
    ck_assert_int_eq(out.shape[1], nb);
    const float *q = in[0].data, *k = in[1].data;
    double scale = 1.0 / (sqrt((double)d) * (double)S);
    for (int64_t h = 0; h < hq; h++) {
        double tok[45][45], want[12][12] = {{0}};
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                tok[i][j] = dot64(q + (h * n + i) * d, k + ((h / 2) * n + j) * d, d);
        for (int64_t I = 0; I < M; I++) {
            double s[12], mx = -INFINITY, z = 0;
            for (int64_t J = 0; J <= I; J++) {
                double x = 0;
                for (int64_t t = 0; t < S; t++) {
                    int64_t i = I * S + S - 1 - t, j = J * S + t;
                    if (i < n && j < n)
                        x += tok[i][j];
                }
                s[J] = scale * x;
                mx = fmax(mx, s[J]);
            }
            for (int64_t J = 0; J <= I; J++)
                z += exp(s[J] - mx);
            for (int64_t J = 0; J <= I; J++)
                want[I * S / B][J * S / B] += exp(s[J] - mx) / z;
        }
        for (int64_t r = 0; r < nb; r++) {
            double row = 0;
            for (int64_t cc = 0; cc < nb; cc++) {
                float got = tu_at(&out, (h * nb + r) * nb + cc);
                ck_assert_msg(fabs(got - want[r][cc]) < 1e-5, "head %lld tile (%lld, %lld): %.7g, want %.7g",
                              (long long)h, (long long)r, (long long)cc, got, want[r][cc]);
                row += got;
            }
            /* a tile row sums to its super-row count */
            int64_t rows = (r + 1) * (B / S) < M ? B / S : M - r * (B / S);
            ck_assert_msg(fabs(row - (double)rows) < 1e-5, "row %lld sums to %.7g", (long long)r, row);
        }
    }
    sl_tensor_release(&out);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_strided_backends)
{
    const shape_case *c = &CASES[_i];
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7200 + (uint64_t)_i);
    sl_tensor in[2] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1)};
    int64_t strides[3] = {1, 3, 8};
    for (int t = 0; t < 3; t++) {
        sl_score_strided_params p = {.stride = strides[t], .bq = 16, .bk = 8, .causal = c->causal};
        check_op_vs_ref(ctx, SL_OP_SCORE_STRIDED, &p, in, 1e-5, "score.strided");
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_strided_independent)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7300);
    int64_t hq = 2, n = 50, d = 8, S = 3, bq = 8, bk = 16;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hq, n, d, 1), tu_randn(ctx, &rng, 1, n, d, 1)};
    sl_score_strided_params p = {.stride = S, .bq = bq, .bk = bk, .causal = 1};
    sl_tensor out;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_STRIDED, &p, in, &out), SL_OK);
    int64_t nqb = (n + bq - 1) / bq, nkb = (n + bk - 1) / bk;
    const float *q = in[0].data, *k = in[1].data;
    for (int64_t h = 0; h < hq; h++) {
        double want[7][4] = {{0}};
        for (int64_t i = 0; i < n; i += S) {
            double s[50], mx = -INFINITY, z = 0;
            for (int64_t j = 0; j <= i; j += S) {
                s[j] = dot64(q + (h * n + i) * d, k + j * d, d) / sqrt((double)d);
                mx = fmax(mx, s[j]);
            }
            for (int64_t j = 0; j <= i; j += S)
                z += exp(s[j] - mx);
            for (int64_t j = 0; j <= i; j += S)
                want[i / bq][j / bk] = fmax(want[i / bq][j / bk], exp(s[j] - mx) / z);
        }
        for (int64_t r = 0; r < nqb; r++)
            for (int64_t cc = 0; cc < nkb; cc++) {
                float got = tu_at(&out, (h * nqb + r) * nkb + cc);
                ck_assert_msg(fabs(got - want[r][cc]) < 1e-6, "head %lld tile (%lld, %lld): %.7g, want %.7g",
                              (long long)h, (long long)r, (long long)cc, got, want[r][cc]);
            }
    }
    sl_tensor_release(&out);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_anchor_backends)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7400);
    int64_t ns[3] = {64, 100, 37};
    for (int t = 0; t < 3; t++) {
        sl_tensor in[2] = {tu_randn(ctx, &rng, 4, ns[t], 16, 1), tu_randn(ctx, &rng, 2, ns[t], 16, 1)};
        /* {block, step}: step > block (more pooled queries than rows per block) sized the
         * cpu kernel's scratch wrongly once (issue 18: 16-token blocks at 489 tokens) */
        static const int64_t bs[2][2] = {{4, 2}, {2, 8}};
        for (int c = 0; c < 2; c++)
            for (int overlap = 0; overlap < 2; overlap++)
                for (int lc = 1; lc < 3; lc++) {
                    sl_score_anchor_params p = {.block = bs[c][0], .step = bs[c][1], .init_cnt = 1, .local_cnt = lc,
                                                .theta = 1.5, .overlap = overlap};
                    check_op_vs_ref(ctx, SL_OP_SCORE_ANCHOR, &p, in, 0, "score.anchor");
                }
        release_n(in, 2);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* The card's rule written out: anchors as row maxima over init ∪ local,
 * pooled per B rows, keys of the middle region kept when within theta. */
START_TEST(test_anchor_independent)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7500);
    int64_t n = 70, d = 8, B = 5, step = 2, G = 10;
    sl_tensor in[2] = {tu_randn(ctx, &rng, 1, n, d, 1), tu_randn(ctx, &rng, 1, n, d, 1)};
    const float *q = in[0].data, *k = in[1].data;
    double sc = 1 / sqrt((double)d);
    for (int big = 0; big < 3; big++) {
        double theta = big == 0 ? 1e9 : big == 1 ? -1e9 : 0.7;
        sl_score_anchor_params p = {.block = B, .step = step, .init_cnt = 1, .local_cnt = 1, .theta = theta};
        sl_tensor out;
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANCHOR, &p, in, &out), SL_OK);
        const uint8_t *keep = out.data;
        for (int64_t b = 0; b < 7; b++) {
            for (int64_t j = 0; j < n; j++) {
                int middle = j >= G && j < b * G;
                int want = 0;
                if (middle && big == 0)
                    want = 1;
                else if (middle && big == 2)
                    for (int64_t t = 0; t < step && !want; t++) {
                        double qb[8] = {0}, xb = 0;
                        for (int64_t i = b * G + t * B; i < b * G + (t + 1) * B; i++) {
                            double mx = -INFINITY;
                            for (int64_t jj = 0; jj <= i; jj++)
                                if (jj < G || jj >= b * G)
                                    mx = fmax(mx, sc * dot64(q + i * d, k + jj * d, d));
                            xb += mx / (double)B;
                            for (int64_t c = 0; c < d; c++)
                                qb[c] += q[i * d + c] / (double)B;
                        }
                        double x = 0;
                        for (int64_t c = 0; c < d; c++)
                            x += qb[c] * k[j * d + c];
                        want = sc * x + theta >= xb;
                    }
                ck_assert_msg(keep[b * n + j] == want, "theta %g big block %lld key %lld: %d, want %d", theta,
                              (long long)b, (long long)j, keep[b * n + j], want);
            }
        }
        sl_tensor_release(&out);
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_stripe_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 20; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 7800);
        sl_tensor in[2] = {tu_randn(ctx, &rng, 2, 40, 8, 1), tu_randn(ctx, &rng, 1, 40, 8, 1)}, out = {0};
        al.fail_at = al.calls + fail;
        sl_score_antidiag_params ap = {.block = 8, .stride = 4, .causal = 1};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANTIDIAG, &ap, in, &out);
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "fail %ld: %d %s", fail, s, sl_ctx_error(ctx));
        if (s == SL_OK)
            sl_tensor_release(&out);
        sl_score_anchor_params np = {.block = 4, .step = 2, .init_cnt = 1, .local_cnt = 1, .theta = 1};
        s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANCHOR, &np, in, &out);
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "fail %ld: %d %s", fail, s, sl_ctx_error(ctx));
        if (s == SL_OK)
            sl_tensor_release(&out);
        al.fail_at = 0;
        release_n(in, 2);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

/* Row blocks (issue 19): qb0, qbn give exactly those rows of the whole
 * output on every backend (the mean key, the quantisation groups, here 5
 * rows against 16-row blocks, and the causal rule stay the whole problem's),
 * every backend's row range matches ref's, the FLOPs of a partition into row
 * ranges add up to the whole call's, and a range outside the blocks is
 * refused. */
START_TEST(test_score_lowbit_row_blocks)
{
    const shape_case *c = &CASES[_i];
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6700 + (uint64_t)_i);
    sl_tensor in[3] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1), {0}};
    float *kx = in[1].data;
    for (int64_t i = 0; i < sl_tensor_numel(&in[1]); i++)
        kx[i] += 0.5f;
    sl_attn_params ap = {.causal = c->causal, .scale = 0};
    sl_tensor dense[2];
    ck_assert_int_eq(sl_attn_dense(ctx, SL_BACKEND_REF, &ap, &in[0], &in[1], &in[1], &dense[0], &dense[1]), SL_OK);
    in[2] = dense[1];
    sl_score_lowbit_params p = {.bq = 16, .bk = 8, .bits = 4, .q_group = 5, .k_group = 8, .smooth_k = 1,
                                .causal = c->causal, .scale = 0};
    int64_t nqb = (c->nq + 15) / 16, nkb = (c->nk + 7) / 8;
    sl_backend_id bs[SL_BACKEND__COUNT + 1];
    bs[0] = SL_BACKEND_REF;
    int nb = 1 + other_backends(bs + 1);
    const int64_t ranges[][2] = {{0, 1}, {nqb - 1, 0}, {nqb / 2, 0}, {nqb > 2 ? 1 : 0, nqb > 2 ? nqb - 2 : 1}, {0, 0}};
    for (int b = 0; b < nb; b++) {
        sl_tensor whole[1];
        sl_status s = sl_op_run(ctx, bs[b], SL_OP_SCORE_LOWBIT, &p, in, whole);
        if (s == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU && bs[b] != SL_BACKEND_REF)
            continue;
        ck_assert_msg(s == SL_OK, "%s: %s", sl_backend_name(bs[b]), sl_ctx_error(ctx));
        for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
            sl_score_lowbit_params pr = p;
            pr.qb0 = ranges[r][0], pr.qbn = ranges[r][1];
            int64_t rows = pr.qbn ? pr.qbn : nqb - pr.qb0;
            char what[128];
            snprintf(what, sizeof what, "score.lowbit rows case %d qb0 %lld qbn %lld on %s", _i, (long long)pr.qb0,
                     (long long)pr.qbn, sl_backend_name(bs[b]));
            if (b == 0)
                check_op_vs_ref(ctx, SL_OP_SCORE_LOWBIT, &pr, in, 2e-5, what);
            sl_tensor part = run_op1(ctx, bs[b], SL_OP_SCORE_LOWBIT, &pr, in);
            ck_assert_msg(part.shape[0] == c->hq && part.shape[1] == rows && part.shape[2] == nkb, "%s: shape", what);
            for (int64_t h = 0; h < c->hq; h++)
                for (int64_t x = 0; x < rows * nkb; x++) {
                    float got = ((const float *)part.data)[h * rows * nkb + x];
                    float want = ((const float *)whole[0].data)[(h * nqb + pr.qb0) * nkb + x];
                    ck_assert_msg(got == want || (isinf(got) && isinf(want) && got < 0 && want < 0),
                                  "%s: head %lld entry %lld is %g, the whole output's row has %g", what, (long long)h,
                                  (long long)x, got, want);
                }
            sl_tensor_release(&part);
        }
        sl_tensor_release(&whole[0]);
    }
    /* FLOPs: row ranges of one query block each add up to the whole call */
    double whole_f = sl_op_flops(SL_OP_SCORE_LOWBIT, &p, in), sum = 0;
    for (int64_t r = 0; r < nqb; r++) {
        sl_score_lowbit_params pr = p;
        pr.qb0 = r, pr.qbn = 1;
        sum += sl_op_flops(SL_OP_SCORE_LOWBIT, &pr, in);
    }
    ck_assert_msg(fabs(sum - whole_f) <= 1e-9 * whole_f, "case %d: row-range FLOPs %g, whole %g", _i, sum, whole_f);
    sl_score_lowbit_params bad = p;
    bad.qb0 = nqb;
    expect_fail(ctx, SL_OP_SCORE_LOWBIT, &bad, in, SL_EARG, "query blocks");
    bad.qb0 = 0, bad.qbn = nqb + 1;
    expect_fail(ctx, SL_OP_SCORE_LOWBIT, &bad, in, SL_EARG, "query blocks");
    release_n(in, 2);
    release_n(dense, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* score.lowbit: q/k head_dim mismatch, NaN in k, lse of the wrong shape;
 * score.hash: rotation heads not a multiple, wrong channel count. */
START_TEST(test_lowbit_hash_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6400);
    sl_tensor lb[3] = {tu_randn(ctx, &rng, 2, 6, 4, 1), tu_randn(ctx, &rng, 1, 6, 5, 1), {0}};
    sl_score_lowbit_params lp = {.bq = 4, .bk = 4, .bits = 4, .q_group = 2, .k_group = 2, .smooth_k = 1, .causal = 1};
    expect_fail(ctx, SL_OP_SCORE_LOWBIT, &lp, lb, SL_ESHAPE, "head_dim");
    sl_tensor_release(&lb[1]);
    lb[1] = tu_randn(ctx, &rng, 1, 6, 4, 1);
    ((float *)lb[1].data)[3] = NAN;
    expect_fail(ctx, SL_OP_SCORE_LOWBIT, &lp, lb, SL_EARG, "NaN");
    ((float *)lb[1].data)[3] = 0.f;
    lb[2] = tu_randn(ctx, &rng, 1, 2, 6, 1);
    lb[2].ndim = 2, lb[2].shape[0] = 1, lb[2].shape[1] = 12, lb[2].stride[0] = 12, lb[2].stride[1] = 1;
    expect_fail(ctx, SL_OP_SCORE_LOWBIT, &lp, lb, SL_ESHAPE, "opt.lse");
    sl_tensor_release(&lb[2]);
    sl_tensor hs[2] = {tu_randn(ctx, &rng, 2, 6, 4, 1), tu_randn(ctx, &rng, 3, 4, 2, 1)};
    expect_fail(ctx, SL_OP_SCORE_HASH, NULL, hs, SL_ESHAPE, "rot must be");
    sl_tensor_release(&hs[1]);
    hs[1] = tu_randn(ctx, &rng, 2, 5, 2, 1);
    expect_fail(ctx, SL_OP_SCORE_HASH, NULL, hs, SL_ESHAPE, "rot must be");
    release_n(lb, 2);
    release_n(hs, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* score.antidiag: block not a multiple of stride, NaN; score.anchor:
 * n_q != n_k. */
START_TEST(test_antidiag_anchor_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7700);
    sl_tensor in[2] = {tu_randn(ctx, &rng, 2, 20, 4, 1), tu_randn(ctx, &rng, 1, 20, 4, 1)};
    sl_score_antidiag_params ap = {.block = 6, .stride = 4, .causal = 1};
    expect_fail(ctx, SL_OP_SCORE_ANTIDIAG, &ap, in, SL_EARG, "multiple of stride");
    ((float *)in[0].data)[5] = NAN;
    ap.block = 8;
    expect_fail(ctx, SL_OP_SCORE_ANTIDIAG, &ap, in, SL_EARG, "NaN");
    ((float *)in[0].data)[5] = 0.5f;
    sl_tensor short_q = tu_randn(ctx, &rng, 2, 10, 4, 1);
    sl_tensor ain[2] = {short_q, in[1]};
    sl_score_anchor_params np = {.block = 2, .step = 2, .init_cnt = 1, .local_cnt = 1, .theta = 1};
    expect_fail(ctx, SL_OP_SCORE_ANCHOR, &np, ain, SL_ESHAPE, "n_q == n_k");
    sl_tensor_release(&short_q);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_lowbit_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 30; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 6600);
        sl_tensor in[3] = {tu_randn(ctx, &rng, 2, 20, 8, 1), tu_randn(ctx, &rng, 1, 20, 8, 1), {0}};
        al.fail_at = al.calls + fail;
        sl_tensor out[1] = {{0}};
        sl_score_lowbit_params lp = {.bq = 4, .bk = 4, .bits = 4, .q_group = 2, .k_group = 2, .smooth_k = 1, .causal = 1};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_LOWBIT, &lp, in, out);
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "fail %ld: %d %s", fail, s, sl_ctx_error(ctx));
        if (s == SL_OK)
            sl_tensor_release(&out[0]);
        al.fail_at = 0;
        release_n(in, 2);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_loop_test(tc, test_score_backends_match_ref, 0, N_CASES);
    tcase_add_loop_test(tc, test_score_independent, 0, N_CASES);
    tcase_add_test(tc, test_pooled_mean_by_hand);
    tcase_add_test(tc, test_score_validation);
    tcase_add_test(tc, test_pooled_flops_small);
    tcase_add_loop_test(tc, test_score_lowbit, 0, N_CASES);
    tcase_add_test(tc, test_score_lowbit_tiny_groups);
    tcase_add_loop_test(tc, test_score_lowbit_row_blocks, 0, N_CASES);
    tcase_add_test(tc, test_score_lowbit_oracle_is_log_probability);
    tcase_add_test(tc, test_score_hash);
    tcase_add_loop_test(tc, test_antidiag_backends, 0, N_CASES);
    tcase_add_test(tc, test_antidiag_independent);
    tcase_add_test(tc, test_antidiag_groups);
    tcase_add_loop_test(tc, test_strided_backends, 0, N_CASES);
    tcase_add_test(tc, test_strided_independent);
    tcase_add_test(tc, test_anchor_backends);
    tcase_add_test(tc, test_anchor_independent);
    tcase_add_test(tc, test_stripe_alloc_failures_leak_nothing);
    tcase_add_test(tc, test_lowbit_hash_validation);
    tcase_add_test(tc, test_antidiag_anchor_validation);
    tcase_add_test(tc, test_lowbit_alloc_failures_leak_nothing);
}

int main(void) { return run_op_suite("score_ops", add_tests); }
