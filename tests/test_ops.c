/* test_ops.c — attn.dense, attn.block_sparse and the metrics on every
 * available backend against ref: fresh seeded inputs, sentinel-guarded
 * allocations, NaN rejection, ragged sizes, one query, decode offsets, fully
 * masked rows, and the dense-equivalence invariant (a full block
 * mask equals attn.dense). The executors over index lists and chosen rows are
 * in test_sparse_ops.c. SL_TEST_BACKENDS picks backends (opsutil.h). */
#include "opsutil.h"

START_TEST(test_dense_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[3] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    sl_attn_params p = {.causal = c->causal, .scale = 0};
    sl_tensor ref[2], out[2];
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &p, in, ref);
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int k = 0; k < nb; k++) {
        run_attn(ctx, bs[k], SL_OP_ATTN_DENSE, &p, in, out);
        char what[64];
        snprintf(what, sizeof what, "case %d on %s", _i, sl_backend_name(bs[k]));
        assert_attn_close(&out[0], &out[1], &ref[0], &ref[1], what);
        sl_tensor_release(&out[0]);
        sl_tensor_release(&out[1]);
    }
    for (int i = 0; i < 3; i++)
        sl_tensor_release(&in[i]);
    sl_tensor_release(&ref[0]);
    sl_tensor_release(&ref[1]);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Independent math: for one query the attention output is a convex
 * combination of V rows; with identical keys it is the mean of visible V rows
 * and L = log(n_visible) + the common score. */
START_TEST(test_dense_ref_against_closed_form)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7);
    int64_t n = 23, d = 8;
    sl_tensor q = tu_randn(ctx, &rng, 1, n, d, 1), k = tu_randn(ctx, &rng, 1, n, d, 1),
              v = tu_randn(ctx, &rng, 1, n, d, 1);
    for (int64_t j = 1; j < n; j++) /* every key equals key 0 */
        memcpy((float *)k.data + j * d, k.data, (size_t)d * sizeof(float));
    sl_tensor in[3] = {q, k, v}, out[2];
    sl_attn_params p = {.causal = 1, .scale = 0};
    for (int b = 0; b < 2; b++) {
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_DENSE, &p, in, out);
        for (int64_t r = 0; r < n; r++) {
            double sc = 0;
            for (int64_t c = 0; c < d; c++)
                sc += (double)tu_at(&q, r * d + c) * tu_at(&k, c);
            sc /= sqrt((double)d);
            ck_assert_double_eq_tol(tu_at(&out[1], r), sc + log((double)(r + 1)), 1e-4);
            for (int64_t c = 0; c < d; c++) {
                double mean = 0;
                for (int64_t j = 0; j <= r; j++)
                    mean += tu_at(&v, j * d + c);
                ck_assert_double_eq_tol(tu_at(&out[0], r * d + c), mean / (double)(r + 1), 1e-5);
            }
        }
        sl_tensor_release(&out[0]);
        sl_tensor_release(&out[1]);
    }
    sl_tensor_release(&q);
    sl_tensor_release(&k);
    sl_tensor_release(&v);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Dense equivalence: a full (or causal) block mask gives attn.dense, on
 * every backend and several block sizes that do and do not divide n. */
START_TEST(test_block_sparse_full_mask_equals_dense)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 2000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[7] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    sl_attn_params pd = {.causal = c->causal, .scale = 0};
    sl_tensor dense[2], out[2];
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    const int blocks[][2] = {{16, 16}, {7, 13}, {64, 32}};
    for (int bi = 0; bi < 3; bi++) {
        sl_mask m;
        mask_of(ctx, c->causal ? SL_PAT_CAUSAL : SL_PAT_FULL, 0, c->nq, c->nk, blocks[bi][0], blocks[bi][1], &m);
        sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
        sl_attn_block_params pb = {.bq = m.bq, .bk = m.bk, .scale = 0};
        for (int b = 0; b < SL_BACKEND__COUNT; b++) {
            if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
                continue;
            run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, out);
            char what[80];
            snprintf(what, sizeof what, "case %d blocks %dx%d on %s", _i, m.bq, m.bk, sl_backend_name((sl_backend_id)b));
            assert_attn_close(&out[0], &out[1], &dense[0], &dense[1], what);
            sl_tensor_release(&out[0]);
            sl_tensor_release(&out[1]);
        }
        sl_mask_release(&m);
    }
    for (int i = 0; i < 3; i++)
        sl_tensor_release(&in[i]);
    sl_tensor_release(&dense[0]);
    sl_tensor_release(&dense[1]);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Sparse masks (window ∪ sink, window alone) on every backend vs ref, and the
 * window result against a hand-made reference: attention over keys
 * [i-w+1, i] computed by attn.dense on the narrowed key range. */
START_TEST(test_block_sparse_patterns_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 3000);
    int64_t hq = 4, hkv = 2, n = 203, d = 32, w = 29;
    sl_tensor in[7] = {tu_randn(ctx, &rng, hq, n, d, 1.5), tu_randn(ctx, &rng, hkv, n, d, 1.5),
                       tu_randn(ctx, &rng, hkv, n, d, 1.0)};
    sl_pattern_term terms[2] = {{.kind = SL_PAT_WINDOW, .a = w}, {.kind = SL_PAT_SINK, .a = 5}};
    for (int nt = 1; nt <= 2; nt++) {
        sl_mask m;
        ck_assert_int_eq(sl_mask_from_pattern(ctx, terms, nt, n, n, 16, 32, &m), SL_OK);
        sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
        sl_attn_block_params pb = {.bq = m.bq, .bk = m.bk, .scale = 0};
        sl_tensor ref[2], out[2];
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, ref);
        sl_backend_id bs[SL_BACKEND__COUNT];
        int nb = other_backends(bs);
        for (int k = 0; k < nb; k++) {
            run_attn(ctx, bs[k], SL_OP_ATTN_BLOCK_SPARSE, &pb, in, out);
            assert_attn_close(&out[0], &out[1], &ref[0], &ref[1], sl_backend_name(bs[k]));
            sl_tensor_release(&out[0]);
            sl_tensor_release(&out[1]);
        }
        if (nt == 1) {
            /* Row i by hand: dense attention of that one query over keys [i-w+1, i]. */
            for (int64_t i = 0; i < n; i += 17) {
                int64_t j0 = i - w + 1 < 0 ? 0 : i - w + 1;
                sl_tensor sub[3], o1[2];
                ck_assert_int_eq(sl_tensor_narrow(ctx, &in[0], 1, i, 1, &sub[0]), SL_OK);
                ck_assert_int_eq(sl_tensor_narrow(ctx, &in[1], 1, j0, i - j0 + 1, &sub[1]), SL_OK);
                ck_assert_int_eq(sl_tensor_narrow(ctx, &in[2], 1, j0, i - j0 + 1, &sub[2]), SL_OK);
                sl_attn_params pn = {.causal = 0, .scale = 0};
                run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pn, sub, o1);
                for (int64_t h = 0; h < hq; h++) {
                    ck_assert_double_eq_tol(tu_at(&o1[1], h), tu_at(&ref[1], h * n + i), 1e-5);
                    for (int64_t c = 0; c < d; c++)
                        ck_assert_double_eq_tol(tu_at(&o1[0], h * d + c), tu_at(&ref[0], (h * n + i) * d + c), 1e-5);
                }
                for (int t = 0; t < 3; t++)
                    sl_tensor_release(&sub[t]);
                sl_tensor_release(&o1[0]);
                sl_tensor_release(&o1[1]);
            }
        }
        sl_tensor_release(&ref[0]);
        sl_tensor_release(&ref[1]);
        sl_mask_release(&m);
    }
    for (int i = 0; i < 3; i++)
        sl_tensor_release(&in[i]);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* A mask with nothing kept: O = 0 and L = -inf on every backend, never NaN;
 * recall treats those rows as having no mass to lose. */
START_TEST(test_fully_masked_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 4000);
    sl_tensor in[7] = {tu_randn(ctx, &rng, 2, 40, 16, 1), tu_randn(ctx, &rng, 2, 40, 16, 1),
                       tu_randn(ctx, &rng, 2, 40, 16, 1)};
    sl_mask m;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, NULL, 0, 40, 40, 16, 16, &m), SL_OK);
    ck_assert_int_eq((int)m.col_idx.shape[0], 0);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    sl_attn_block_params pb = {.bq = 16, .bk = 16, .scale = 0};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        sl_tensor out[2];
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, out);
        for (int64_t i = 0; i < sl_tensor_numel(&out[0]); i++)
            ck_assert_msg(tu_at(&out[0], i) == 0.f, "O not zero on %s", sl_backend_name((sl_backend_id)b));
        for (int64_t i = 0; i < sl_tensor_numel(&out[1]); i++)
            ck_assert_msg(isinf(tu_at(&out[1], i)) && tu_at(&out[1], i) < 0, "L not -inf");
        sl_tensor_release(&out[0]);
        sl_tensor_release(&out[1]);
    }
    /* Dense with no keys at all is the same empty sum. */
    sl_tensor k0 = tu_randn(ctx, &rng, 2, 0, 16, 1), q0 = tu_randn(ctx, &rng, 2, 0, 16, 1);
    sl_tensor in0[3] = {q0, k0, k0}, out0[2];
    run_attn(ctx, SL_BACKEND_CPU, SL_OP_ATTN_DENSE, NULL, in0, out0);
    ck_assert_int_eq((int)sl_tensor_numel(&out0[0]), 0);
    sl_tensor_release(&out0[0]);
    sl_tensor_release(&out0[1]);
    sl_tensor_release(&k0);
    sl_tensor_release(&q0);
    sl_mask_release(&m);
    for (int i = 0; i < 3; i++)
        sl_tensor_release(&in[i]);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_nan_and_shape_errors)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 5000);
    sl_tensor q = tu_randn(ctx, &rng, 4, 10, 8, 1), k = tu_randn(ctx, &rng, 2, 10, 8, 1),
              v = tu_randn(ctx, &rng, 2, 10, 8, 1), bad = tu_randn(ctx, &rng, 3, 10, 8, 1);
    sl_tensor out[2] = {{0}};
    for (int b = 0; b < 2; b++) {
        ((float *)q.data)[17] = NAN;
        sl_tensor in[3] = {q, k, v};
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_ATTN_DENSE, NULL, in, out), SL_EARG);
        ck_assert_msg(strstr(sl_ctx_error(ctx), "attn.dense") == sl_ctx_error(ctx), "%s", sl_ctx_error(ctx));
        ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "NaN"));
        ck_assert_ptr_null(out[0].buf);
        ((float *)q.data)[17] = 0.5f;
        sl_tensor in2[3] = {q, bad, bad};
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_ATTN_DENSE, NULL, in2, out), SL_ESHAPE);
        ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "GQA"));
        sl_tensor in3[3] = {q, k, bad};
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, SL_OP_ATTN_DENSE, NULL, in3, out), SL_ESHAPE);
    }
    sl_attn_params p;
    sl_op_params_default(SL_OP_ATTN_DENSE, &p);
    ck_assert_int_eq(sl_op_params_set(ctx, SL_OP_ATTN_DENSE, &p, "causl", 1), SL_EARG);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "causl"));
    ck_assert_int_eq(sl_op_params_set(ctx, SL_OP_ATTN_DENSE, &p, "causal", 2), SL_EARG);
    ck_assert_int_eq(sl_op_params_set(ctx, SL_OP_ATTN_DENSE, &p, "scale", -1), SL_EARG);
    sl_tensor_release(&q);
    sl_tensor_release(&k);
    sl_tensor_release(&v);
    sl_tensor_release(&bad);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* A malformed mask is rejected, not executed. */
START_TEST(test_bad_mask_rejected)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 5500);
    sl_tensor in[7] = {tu_randn(ctx, &rng, 1, 32, 8, 1), tu_randn(ctx, &rng, 1, 32, 8, 1),
                       tu_randn(ctx, &rng, 1, 32, 8, 1)};
    sl_mask m;
    mask_of(ctx, SL_PAT_CAUSAL, 0, 32, 32, 8, 8, &m);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    sl_attn_block_params pb = {.bq = 8, .bk = 8, .scale = 0};
    sl_tensor out[2];
    ((int32_t *)m.col_idx.data)[1] = 99; /* key block out of range */
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, out), SL_EFORMAT);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "attn.block_sparse"));
    ((int32_t *)m.col_idx.data)[1] = 0;
    pb.bq = 16; /* the mask was made for 8 */
    ck_assert_int_ne(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, out), SL_OK);
    sl_mask_release(&m);
    for (int i = 0; i < 3; i++)
        sl_tensor_release(&in[i]);
    tu_ctx_done(ctx, &al);
}
END_TEST

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

/* Recall from L equals the attention mass the mask keeps, computed from
 * explicit probabilities. */
START_TEST(test_recall_is_kept_mass)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6500);
    int64_t n = 48, d = 8;
    sl_tensor in[7] = {tu_randn(ctx, &rng, 1, n, d, 2), tu_randn(ctx, &rng, 1, n, d, 2), tu_randn(ctx, &rng, 1, n, d, 1)};
    sl_attn_params pd = {.causal = 1, .scale = 0};
    sl_tensor dense[2], sp[2];
    run_attn(ctx, SL_BACKEND_CPU, SL_OP_ATTN_DENSE, &pd, in, dense);
    sl_mask m;
    mask_of(ctx, SL_PAT_WINDOW, 9, n, n, 8, 8, &m);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    sl_attn_block_params pb = {.bq = 8, .bk = 8, .scale = 0};
    run_attn(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, sp);
    for (int64_t i = 0; i < n; i++) {
        double s[64], mx = -1e300, tot = 0, kept = 0;
        for (int64_t j = 0; j <= i; j++) {
            s[j] = 0;
            for (int64_t c = 0; c < d; c++)
                s[j] += (double)tu_at(&in[0], i * d + c) * tu_at(&in[1], j * d + c);
            s[j] /= sqrt((double)d);
            mx = fmax(mx, s[j]);
        }
        for (int64_t j = 0; j <= i; j++) {
            tot += exp(s[j] - mx);
            kept += i - j < 9 ? exp(s[j] - mx) : 0;
        }
        ck_assert_double_eq_tol(exp((double)tu_at(&sp[1], i) - tu_at(&dense[1], i)), kept / tot, 1e-5);
    }
    sl_tensor_release(&dense[0]);
    sl_tensor_release(&dense[1]);
    sl_tensor_release(&sp[0]);
    sl_tensor_release(&sp[1]);
    sl_mask_release(&m);
    for (int i = 0; i < 3; i++)
        sl_tensor_release(&in[i]);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_every_op_has_ref_and_cpu)
{
    for (int op = 0; op < SL_OP__COUNT; op++) {
        ck_assert_msg(sl_backend_supports(SL_BACKEND_REF, (sl_op)op), "%s lacks ref", sl_op_info_get((sl_op)op)->name);
        ck_assert_msg(sl_backend_supports(SL_BACKEND_CPU, (sl_op)op), "%s lacks cpu", sl_op_info_get((sl_op)op)->name);
        ck_assert_int_eq(sl_op_find(sl_op_info_get((sl_op)op)->name), op);
    }
    ck_assert_int_eq(sl_op_find("attn.nonexistent"), SL_OP__COUNT);
}
END_TEST

/* Every failing allocation inside an op leaves nothing behind. */
START_TEST(test_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 60; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 7000);
        sl_tensor in[7] = {tu_randn(ctx, &rng, 2, 20, 8, 1), tu_randn(ctx, &rng, 2, 20, 8, 1),
                           tu_randn(ctx, &rng, 2, 20, 8, 1)};
        sl_mask m;
        mask_of(ctx, SL_PAT_CAUSAL, 0, 20, 20, 8, 8, &m);
        al.fail_at = al.calls + fail;
        sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
        sl_attn_block_params pb = {.bq = 8, .bk = 8, .scale = 0};
        sl_tensor out[2] = {{0}};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, out);
        ck_assert(s == SL_OK || s == SL_ENOMEM);
        if (s == SL_OK) {
            sl_tensor_release(&out[0]);
            sl_tensor_release(&out[1]);
        }
        al.fail_at = 0;
        sl_mask_release(&m);
        for (int i = 0; i < 3; i++)
            sl_tensor_release(&in[i]);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

static Suite *ops_suite(void)
{
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_dense_backends_match_ref, 0, N_CASES);
    tcase_add_test(tc, test_dense_ref_against_closed_form);
    tcase_add_loop_test(tc, test_block_sparse_full_mask_equals_dense, 0, N_CASES);
    tcase_add_test(tc, test_block_sparse_patterns_match_ref);
    tcase_add_test(tc, test_fully_masked_rows);
    tcase_add_test(tc, test_nan_and_shape_errors);
    tcase_add_test(tc, test_bad_mask_rejected);
    tcase_add_test(tc, test_metrics);
    tcase_add_test(tc, test_recall_is_kept_mass);
    tcase_add_test(tc, test_every_op_has_ref_and_cpu);
    tcase_add_test(tc, test_alloc_failures_leak_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(ops_suite()); }
