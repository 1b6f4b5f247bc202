/* test_attn_ops.c — the attention family (attn.*) on every backend in
 * SL_TEST_BACKENDS against ref: attn.dense, attn.block_sparse (dense
 * equivalence of a full mask, patterns, pv_skip, fully masked rows, bad
 * masks), the executors over index lists and chosen rows (attn.token_sparse,
 * attn.vs_mixed, attn.rows: bias, state chaining, decode, empty lists, NaN
 * only where read), attn.lse_merge, attn.linear, attn.pooled_kv and
 * attn.bucket; shapes from CASES and ATTN_BIG_D (head_dim 128 and 256,
 * ragged, GQA, one query row) in opsutil.h; closed forms and float64
 * oracles written here; NaN, shape and allocation-failure paths. */

#include "opsutil.h"

/* Index lists from a rule keep(ud, list head, entry, key). */
typedef int (*list_rule)(const void *ud, int64_t h, int64_t e, int64_t j);

static void make_lists(sl_ctx *ctx, int64_t hm, int64_t n_e, int64_t nk, list_rule keep, const void *ud, sl_tensor *rp,
                       sl_tensor *col)
{
    int64_t nnz = 0;
    for (int64_t h = 0; h < hm; h++)
        for (int64_t e = 0; e < n_e; e++)
            for (int64_t j = 0; j < nk; j++)
                nnz += keep(ud, h, e, j) != 0;
    int64_t rs[2] = {hm, n_e + 1}, cs[1] = {nnz};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 2, rs, rp), SL_OK);
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, col), SL_OK);
    int32_t *r = rp->data, *c = col->data, n = 0;
    for (int64_t h = 0; h < hm; h++) {
        for (int64_t e = 0; e < n_e; e++) {
            r[h * (n_e + 1) + e] = n;
            for (int64_t j = 0; j < nk; j++)
                if (keep(ud, h, e, j))
                    c[n++] = (int32_t)j;
        }
        r[h * (n_e + 1) + n_e] = n;
    }
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x9e3779b97f4a7c15ULL;
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ULL;
    return x ^ (x >> 32);
}

/* The rules the tests use: keys kept with probability p (a seeded hash),
 * optionally only causal ones (per row: entry e is row e), optionally only
 * one side of a random split. */
typedef struct rule {
    uint64_t seed;
    double p;           /* 1: every key */
    int64_t b;          /* rows per entry */
    int64_t offset;     /* n_k - n_q */
    int causal;         /* only keys j <= offset + last row of the entry */
    int side;           /* 0: all; 1 or 2: keys whose split hash falls on that side */
    const sl_mask *not_in; /* drop keys this mask keeps at the entry's row (b = 1, head 0) */
} rule;

static int rule_keep(const void *ud, int64_t h, int64_t e, int64_t j)
{
    const rule *r = ud;
    if (r->causal && j > r->offset + (e + 1) * r->b - 1)
        return 0;
    uint64_t x = mix(r->seed ^ mix((uint64_t)h * 1000003u + (uint64_t)e * 7919u + (uint64_t)j));
    if (r->p < 1 && (double)(x >> 11) / 9007199254740992.0 >= r->p)
        return 0;
    if (r->side && (int)(mix(x + 17) & 1) != r->side - 1)
        return 0;
    if (r->not_in && sl_mask_get(r->not_in, 0, e, j))
        return 0;
    return 1;
}

static sl_tensor levels_new(sl_ctx *ctx, int64_t hm, int64_t nqb, int64_t nkb)
{
    sl_tensor t;
    int64_t s[3] = {hm, nqb, nkb};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, s, &t), SL_OK);
    return t;
}

START_TEST(test_dense_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1000 + (uint64_t)_i);
    const shape_case *c = attn_case(_i);
    sl_tensor in[3] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
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
    const shape_case *c = attn_case(_i);
    sl_tensor in[7] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
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

/* Scores beyond float range (q, k of 1e20: q·k is 1e40) are an error naming
 * the op and its inputs on every backend, before any kernel runs (the cpu
 * kernel's running max became +inf, inf - inf NaN reached its exp: undefined
 * behaviour, and NaN in O). Large scores within range still give a finite
 * result. */
START_TEST(test_scores_overflow_f32)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 5010);
    sl_tensor q = tu_randn(ctx, &rng, 2, 9, 8, 1), k = tu_randn(ctx, &rng, 2, 9, 8, 1),
              v = tu_randn(ctx, &rng, 2, 9, 8, 1);
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!backend_wanted((sl_backend_id)b) || !sl_backend_available((sl_backend_id)b))
            continue;
        for (int big = 0; big < 2; big++) {
            float f = big ? 1e20f : 1e16f; /* 1e16: |q·k| <= ~1e33 · 8, in range */
            sl_tensor qs, ks;
            ck_assert_int_eq(sl_tensor_convert(ctx, &q, SL_F32, &qs), SL_OK);
            ck_assert_int_eq(sl_tensor_convert(ctx, &k, SL_F32, &ks), SL_OK);
            for (int64_t i = 0; i < sl_tensor_numel(&qs); i++)
                ((float *)qs.data)[i] *= f, ((float *)ks.data)[i] *= f;
            sl_tensor in[3] = {qs, ks, v}, out[2] = {{0}};
            sl_status s = sl_op_run(ctx, (sl_backend_id)b, SL_OP_ATTN_DENSE, NULL, in, out);
            if (big) {
                ck_assert_msg(s == SL_EARG, "%s: status %s (%s)", sl_backend_name((sl_backend_id)b),
                              sl_status_name(s), sl_ctx_error(ctx));
                ck_assert_msg(strncmp(sl_ctx_error(ctx), "attn.dense: scores overflow float32", 35) == 0, "%s",
                              sl_ctx_error(ctx));
                ck_assert_msg(strstr(sl_ctx_error(ctx), "|q| up to ") && strstr(sl_ctx_error(ctx), "|k| up to "),
                              "%s", sl_ctx_error(ctx));
                ck_assert_ptr_null(out[0].buf);
            } else {
                ck_assert_msg(s == SL_OK, "%s: %s", sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
                for (int o = 0; o < 2; o++)
                    for (int64_t i = 0; i < sl_tensor_numel(&out[o]); i++)
                        ck_assert_msg(isfinite(((float *)out[o].data)[i]), "%s: output %d [%lld] = %g",
                                      sl_backend_name((sl_backend_id)b), o, (long long)i,
                                      (double)((float *)out[o].data)[i]);
                release_n(out, 2);
            }
            sl_tensor_release(&qs);
            sl_tensor_release(&ks);
        }
    }
    sl_tensor_release(&q);
    sl_tensor_release(&k);
    sl_tensor_release(&v);
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

/* Random lists (some entries empty) per row, per query block and per head,
 * shared and per-head list heads, with and without bias and state: every
 * backend against ref. */
START_TEST(test_token_sparse_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8000 + (uint64_t)_i);
    const shape_case *c = attn_case(_i);
    sl_tensor in[8] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
    sl_tensor bias = tu_randn(ctx, &rng, c->hq, c->nq, c->nk, 1.0);
    sl_tensor st_o = tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0);
    sl_tensor st_l = lse_random(ctx, &rng, c->hq, c->nq, 1.0, 5, 0);
    const int64_t bs[] = {1, 3, 16, c->nq > 0 ? c->nq : 1};
    for (int bi = 0; bi < 4; bi++)
        for (int hm_i = 0; hm_i < 2; hm_i++) {
            int64_t b = bs[bi], hm = hm_i ? c->hq : 1, n_e = (c->nq + b - 1) / b;
            rule r = {.seed = (uint64_t)(bi * 10 + hm_i), .p = 0.3, .b = b, .offset = c->nk - c->nq,
                      .causal = c->causal && b == 1};
            make_lists(ctx, hm, n_e, c->nk, rule_keep, &r, &in[3], &in[4]);
            sl_attn_token_params p = {.rows_per_entry = b, .scale = 0};
            for (int opt = 0; opt < 3; opt++) {
                in[5] = opt == 1 ? bias : (sl_tensor){0};
                in[6] = opt == 2 ? st_o : (sl_tensor){0};
                in[7] = opt == 2 ? st_l : (sl_tensor){0};
                char what[96];
                snprintf(what, sizeof what, "token_sparse case %d b %lld hm %lld opt %d", _i, (long long)b,
                         (long long)hm, opt);
                check_backends(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, what);
            }
            release_n(&in[3], 2);
        }
    release_n(in, 3);
    sl_tensor_release(&bias);
    sl_tensor_release(&st_o);
    sl_tensor_release(&st_l);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Dense equivalence of the index form: causal per-row lists equal causal
 * attn.dense; all-key lists per row, per query block and per head equal
 * non-causal attn.dense; per-block all-key lists with a causal bias of -1e9
 * equal causal attn.dense. */
START_TEST(test_token_sparse_full_lists_equal_dense)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8500 + (uint64_t)_i);
    const shape_case *c = attn_case(_i);
    sl_tensor in[8] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
    sl_tensor dense_c[2], dense_n[2];
    sl_attn_params pc = {.causal = 1, .scale = 0}, pn = {.causal = 0, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pc, in, dense_c);
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pn, in, dense_n);
    int64_t off = c->nk - c->nq;
    const int64_t bs[] = {1, 16, c->nq > 0 ? c->nq : 1};
    for (int bi = 0; bi < 3; bi++)
        for (int causal = 0; causal < 2; causal++) {
            int64_t b = bs[bi], n_e = (c->nq + b - 1) / b;
            rule r = {.p = 1, .b = b, .offset = off, .causal = causal && b == 1};
            make_lists(ctx, 1, n_e, c->nk, rule_keep, &r, &in[3], &in[4]);
            sl_attn_token_params p = {.rows_per_entry = b, .scale = 0};
            sl_tensor bias = {0};
            if (causal && b > 1) {
                bias = tu_randn(ctx, &rng, 1, c->nq, c->nk, 0);
                for (int64_t i = 0; i < c->nq; i++)
                    for (int64_t j = 0; j < c->nk; j++)
                        ((float *)bias.data)[i * c->nk + j] = j > off + i ? -1e9f : 0.f;
            }
            in[5] = bias;
            char what[80];
            snprintf(what, sizeof what, "full lists case %d b %lld causal %d", _i, (long long)b, causal);
            check_equals(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, causal ? dense_c : dense_n, what);
            sl_tensor_release(&bias);
            in[5] = (sl_tensor){0};
            release_n(&in[3], 2);
        }
    release_n(in, 3);
    release_n(dense_c, 2);
    release_n(dense_n, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Independent math: a one-key list gives O = v of that key and L = its
 * scaled score; an empty list gives O = 0, L = -inf (also with no entries at
 * all); a constant bias c leaves O and adds c to L. */
START_TEST(test_token_sparse_closed_forms)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8700);
    int64_t hq = 4, hkv = 2, nq = 6, nk = 40, d = 16;
    sl_tensor in[8] = {tu_randn(ctx, &rng, hq, nq, d, 1), tu_randn(ctx, &rng, hkv, nk, d, 1),
                       tu_randn(ctx, &rng, hkv, nk, d, 1)};
    /* one key per row: key 3 * row + head-dependent offset */
    in[3] = i32_tensor(ctx, hq, nq + 1);
    int64_t cs[1] = {hq * nq};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, &in[4]), SL_OK);
    for (int64_t h = 0; h < hq; h++)
        for (int64_t r = 0; r <= nq; r++) {
            ((int32_t *)in[3].data)[h * (nq + 1) + r] = (int32_t)(h * nq + r);
            if (r < nq)
                ((int32_t *)in[4].data)[h * nq + r] = (int32_t)(3 * r + h);
        }
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0.5};
    sl_tensor bias = tu_randn(ctx, &rng, 1, nq, nk, 0);
    for (int64_t i = 0; i < nq * nk; i++)
        ((float *)bias.data)[i] = 2.5f;
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int withb = 0; withb < 2; withb++) {
            in[5] = withb ? bias : (sl_tensor){0};
            sl_tensor out[2];
            sl_status s = sl_op_run(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out);
            if (s == SL_EUNSUPPORTED && b > SL_BACKEND_CPU) {
                printf("SKIP token_sparse closed form on %s: %s\n", sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
                continue;
            }
            ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(ctx));
            for (int64_t h = 0; h < hq; h++)
                for (int64_t r = 0; r < nq; r++) {
                    int64_t key = 3 * r + h, g = h / 2;
                    double sc = 0;
                    for (int64_t c = 0; c < d; c++) {
                        sc += (double)tu_at(&in[0], (h * nq + r) * d + c) * tu_at(&in[1], (g * nk + key) * d + c);
                        ck_assert_double_eq_tol(tu_at(&out[0], (h * nq + r) * d + c),
                                                tu_at(&in[2], (g * nk + key) * d + c), 1e-6);
                    }
                    ck_assert_double_eq_tol(tu_at(&out[1], h * nq + r), 0.5 * sc + (withb ? 2.5 : 0), 1e-5);
                }
            release_n(out, 2);
        }
    }
    in[5] = (sl_tensor){0};
    sl_tensor_release(&bias);
    release_n(&in[3], 2);
    /* empty lists: nothing at all, and lists that exist but are empty */
    for (int variant = 0; variant < 2; variant++) {
        rule r = {.p = variant ? 0 : 1, .b = 1};
        if (variant == 0) {
            in[3] = i32_tensor(ctx, 1, nq + 1);
            memset(in[3].data, 0, (size_t)(nq + 1) * sizeof(int32_t));
            int64_t z[1] = {0};
            ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, z, &in[4]), SL_OK);
        } else
            make_lists(ctx, hq, nq, nk, rule_keep, &r, &in[3], &in[4]);
        for (int b = 0; b < SL_BACKEND__COUNT; b++) {
            if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
                continue;
            sl_tensor out[2];
            run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out);
            for (int64_t i = 0; i < sl_tensor_numel(&out[0]); i++)
                ck_assert_msg(tu_at(&out[0], i) == 0.f, "O not zero on %s", sl_backend_name((sl_backend_id)b));
            for (int64_t i = 0; i < sl_tensor_numel(&out[1]); i++)
                ck_assert_msg(isinf(tu_at(&out[1], i)) && tu_at(&out[1], i) < 0, "L not -inf");
            release_n(out, 2);
        }
        release_n(&in[3], 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Decode: Nq = 1 .. 4 queries at the end of a long cache, GQA 4:1, lists per
 * row, per query block and per head, list heads 1, Hkv and Hq (the direct
 * path with bundles of heads sharing a list), against ref and dense. */
START_TEST(test_token_sparse_decode)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8800 + (uint64_t)_i);
    int64_t hq = 8, hkv = 2, nk = 700, d = 64, nq = _i + 1;
    sl_tensor in[8] = {tu_randn(ctx, &rng, hq, nq, d, 1.5), tu_randn(ctx, &rng, hkv, nk, d, 1.5),
                       tu_randn(ctx, &rng, hkv, nk, d, 1.0)};
    const int64_t hms[3] = {1, hkv, hq}, bs[3] = {1, 2, 64};
    for (int hi = 0; hi < 3; hi++)
        for (int bi = 0; bi < 3; bi++) {
            int64_t b = bs[bi], n_e = (nq + b - 1) / b;
            rule r = {.seed = (uint64_t)(hi * 3 + bi), .p = 0.2, .b = b, .offset = nk - nq, .causal = 1};
            make_lists(ctx, hms[hi], n_e, nk, rule_keep, &r, &in[3], &in[4]);
            sl_attn_token_params p = {.rows_per_entry = b, .scale = 0};
            char what[80];
            snprintf(what, sizeof what, "decode nq %lld hm %lld b %lld", (long long)nq, (long long)hms[hi], (long long)b);
            check_backends(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, what);
            release_n(&in[3], 2);
        }
    /* every causal key per row = dense with the decode offset */
    rule all = {.p = 1, .b = 1, .offset = nk - nq, .causal = 1};
    make_lists(ctx, hq, nq, nk, rule_keep, &all, &in[3], &in[4]);
    sl_tensor dense[2];
    sl_attn_params pc = {.causal = 1, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pc, in, dense);
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0};
    check_equals(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, dense, "decode full lists");
    release_n(dense, 2);
    release_n(&in[3], 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* attn.rows: random rows (any order, repeats) with random limits (0 and Nk
 * included), bias and state, against ref; all rows with causal limits equal
 * attn.dense; limit 1 gives O = v of key 0. */
START_TEST(test_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9000 + (uint64_t)_i);
    const shape_case *c = attn_case(_i);
    sl_tensor in[8] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
    int64_t n_out = 2 * c->nq + 3;
    sl_tensor bias = tu_randn(ctx, &rng, 1, c->nq, c->nk, 1.0);
    sl_tensor st_o = tu_randn(ctx, &rng, c->hq, n_out, c->d, 1.0);
    sl_tensor st_l = lse_random(ctx, &rng, c->hq, n_out, 1.0, 3, 0);
    sl_attn_rows_params p = {.scale = 0};
    for (int per_head = 0; per_head < 2; per_head++) {
        int64_t hr = per_head ? c->hq : 1;
        in[3] = i32_tensor(ctx, hr, n_out);
        in[4] = i32_tensor(ctx, hr, n_out);
        for (int64_t i = 0; i < hr * n_out; i++) {
            ((int32_t *)in[3].data)[i] = (int32_t)(sl_rng_next(&rng) % (uint64_t)c->nq);
            int64_t lim = (int64_t)(sl_rng_next(&rng) % (uint64_t)(c->nk + 1));
            ((int32_t *)in[4].data)[i] = (int32_t)(i % 7 == 0 ? 0 : i % 7 == 1 ? c->nk : lim);
        }
        for (int opt = 0; opt < 3; opt++) {
            in[5] = opt == 1 ? bias : (sl_tensor){0};
            in[6] = opt == 2 ? st_o : (sl_tensor){0};
            in[7] = opt == 2 ? st_l : (sl_tensor){0};
            char what[80];
            snprintf(what, sizeof what, "rows case %d hr %lld opt %d", _i, (long long)hr, opt);
            check_backends(ctx, SL_OP_ATTN_ROWS, &p, in, what);
        }
        in[5] = in[6] = in[7] = (sl_tensor){0};
        release_n(&in[3], 2);
    }
    /* all rows, causal (or full) limits = dense */
    in[3] = i32_tensor(ctx, 1, c->nq);
    in[4] = i32_tensor(ctx, 1, c->nq);
    for (int64_t r = 0; r < c->nq; r++) {
        ((int32_t *)in[3].data)[r] = (int32_t)r;
        ((int32_t *)in[4].data)[r] = (int32_t)(c->causal ? c->nk - c->nq + r + 1 : c->nk);
    }
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = c->causal, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    check_equals(ctx, SL_OP_ATTN_ROWS, &p, in, dense, "rows = dense");
    release_n(dense, 2);
    /* limit 1: O = v[0] */
    for (int64_t r = 0; r < c->nq; r++)
        ((int32_t *)in[4].data)[r] = 1;
    sl_tensor out[2];
    run_attn(ctx, SL_BACKEND_CPU, SL_OP_ATTN_ROWS, &p, in, out);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t r = 0; r < c->nq; r++)
            for (int64_t x = 0; x < c->d; x++)
                ck_assert_double_eq_tol(tu_at(&out[0], (h * c->nq + r) * c->d + x),
                                        tu_at(&in[2], (h / (c->hq / c->hkv)) * c->nk * c->d + x), 1e-6);
    release_n(out, 2);
    release_n(&in[3], 2);
    release_n(in, 3);
    sl_tensor_release(&bias);
    sl_tensor_release(&st_o);
    sl_tensor_release(&st_l);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* lse_merge: closed forms with infinities, and the union invariant: two
 * token_sparse passes over a random split of the causal keys merge into
 * attn.dense, and over a random split of random keys into token_sparse over
 * their union. */
START_TEST(test_lse_merge)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9500 + (uint64_t)_i);
    /* closed forms, [3 rows, 2 dims] */
    {
        int64_t so[2] = {3, 2}, sl[1] = {3};
        sl_tensor m[4];
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, so, &m[0]), SL_OK);
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 1, sl, &m[1]), SL_OK);
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, so, &m[2]), SL_OK);
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 1, sl, &m[3]), SL_OK);
        const float o1[6] = {1, 2, 3, 4, 5, 6}, o2[6] = {-1, 0, 7, 8, 9, 10};
        const float l1[3] = {0.f, -INFINITY, -INFINITY}, l2[3] = {logf(3.f), 1.5f, -INFINITY};
        memcpy(m[0].data, o1, sizeof o1);
        memcpy(m[1].data, l1, sizeof l1);
        memcpy(m[2].data, o2, sizeof o2);
        memcpy(m[3].data, l2, sizeof l2);
        for (int b = 0; b < SL_BACKEND__COUNT; b++) {
            if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
                continue;
            sl_tensor out[2];
            run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_LSE_MERGE, NULL, m, out);
            ck_assert_double_eq_tol(tu_at(&out[0], 0), 0.25 * 1 + 0.75 * -1, 1e-6);
            ck_assert_double_eq_tol(tu_at(&out[0], 1), 0.25 * 2 + 0.75 * 0, 1e-6);
            ck_assert_double_eq_tol(tu_at(&out[1], 0), log(4.0), 1e-6);
            ck_assert(tu_at(&out[0], 2) == 7.f && tu_at(&out[0], 3) == 8.f && tu_at(&out[1], 1) == 1.5f);
            ck_assert(tu_at(&out[0], 4) == 0.f && tu_at(&out[0], 5) == 0.f);
            ck_assert(isinf(tu_at(&out[1], 2)) && tu_at(&out[1], 2) < 0);
            release_n(out, 2);
        }
        release_n(m, 4);
    }
    const shape_case *c = &CASES[_i];
    sl_tensor in[8] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = c->causal, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int random_keys = 0; random_keys < 2; random_keys++) {
            sl_tensor part[2][2], un[2], merged[2];
            double pk = random_keys ? 0.4 : 1;
            for (int side = 1; side <= 2; side++) {
                rule r = {.seed = 5, .p = pk, .b = 1, .offset = c->nk - c->nq, .causal = c->causal, .side = side};
                make_lists(ctx, c->hq, c->nq, c->nk, rule_keep, &r, &in[3], &in[4]);
                run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, part[side - 1]);
                release_n(&in[3], 2);
            }
            rule r = {.seed = 5, .p = pk, .b = 1, .offset = c->nk - c->nq, .causal = c->causal};
            make_lists(ctx, c->hq, c->nq, c->nk, rule_keep, &r, &in[3], &in[4]);
            run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_TOKEN_SPARSE, &p, in, un);
            release_n(&in[3], 2);
            sl_tensor m[4] = {part[0][0], part[0][1], part[1][0], part[1][1]};
            run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_LSE_MERGE, NULL, m, merged);
            char what[80];
            snprintf(what, sizeof what, "merge case %d on %s", _i, sl_backend_name((sl_backend_id)b));
            assert_attn_close(&merged[0], &merged[1], random_keys ? &un[0] : &dense[0], random_keys ? &un[1] : &dense[1],
                              what);
            release_n(m, 4);
            release_n(un, 2);
            release_n(merged, 2);
        }
    }
    release_n(dense, 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Continue-from-state: passes over disjoint key sets chained through
 * (O, L) equal one pass over their union — token_sparse then token_sparse,
 * token_sparse (far keys) then rows (near keys), and an empty first pass. */
START_TEST(test_state_chaining)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9700 + (uint64_t)_i);
    const shape_case *c = attn_case(_i);
    sl_tensor in[8] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        sl_tensor first[2], chained[2], whole[2];
        rule r1 = {.seed = 9, .p = 0.5, .b = 1, .offset = c->nk - c->nq, .causal = c->causal, .side = 1};
        make_lists(ctx, 1, c->nq, c->nk, rule_keep, &r1, &in[3], &in[4]);
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, first);
        release_n(&in[3], 2);
        rule r2 = r1;
        r2.side = 2;
        make_lists(ctx, 1, c->nq, c->nk, rule_keep, &r2, &in[3], &in[4]);
        in[6] = first[0];
        in[7] = first[1];
        sl_status s = sl_op_run(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, chained);
        in[6] = in[7] = (sl_tensor){0};
        release_n(&in[3], 2);
        if (s == SL_EUNSUPPORTED && b > SL_BACKEND_CPU) {
            printf("SKIP token_sparse chained state on %s: %s\n", sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
            release_n(first, 2);
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(ctx));
        rule r3 = r1;
        r3.side = 0;
        make_lists(ctx, 1, c->nq, c->nk, rule_keep, &r3, &in[3], &in[4]);
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_TOKEN_SPARSE, &p, in, whole);
        release_n(&in[3], 2);
        assert_attn_close(&chained[0], &chained[1], &whole[0], &whole[1], "token_sparse chained");
        release_n(chained, 2);
        release_n(whole, 2);
        release_n(first, 2);

        /* far keys [0, split) by token_sparse, then rows over [split, ...) is
         * not expressible (rows start at 0), so: keys [h0, end) first by
         * token_sparse, then rows over [0, h0) from that state. */
        int64_t off = c->nk - c->nq;
        rule far = {.p = 1, .b = 1, .offset = off, .causal = c->causal};
        (void)far;
        sl_tensor rp = i32_tensor(ctx, 1, c->nq + 1), col;
        int64_t nnz = 0;
        int32_t *rpd = rp.data;
        for (int64_t r = 0; r < c->nq; r++) {
            int64_t end = c->causal ? off + r + 1 : c->nk, h0 = end / 2;
            rpd[r] = (int32_t)nnz;
            nnz += end - h0;
        }
        rpd[c->nq] = (int32_t)nnz;
        int64_t cs[1] = {nnz};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, &col), SL_OK);
        for (int64_t r = 0, n = 0; r < c->nq; r++) {
            int64_t end = c->causal ? off + r + 1 : c->nk;
            for (int64_t j = end / 2; j < end; j++)
                ((int32_t *)col.data)[n++] = (int32_t)j;
        }
        in[3] = rp;
        in[4] = col;
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, first);
        release_n(&in[3], 2);
        in[3] = i32_tensor(ctx, 1, c->nq);
        in[4] = i32_tensor(ctx, 1, c->nq);
        for (int64_t r = 0; r < c->nq; r++) {
            ((int32_t *)in[3].data)[r] = (int32_t)r;
            ((int32_t *)in[4].data)[r] = (int32_t)((c->causal ? off + r + 1 : c->nk) / 2);
        }
        in[6] = first[0];
        in[7] = first[1];
        sl_attn_rows_params pr = {.scale = 0};
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_ROWS, &pr, in, chained);
        in[6] = in[7] = (sl_tensor){0};
        release_n(&in[3], 2);
        sl_attn_params pd = {.causal = c->causal, .scale = 0};
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, whole);
        assert_attn_close(&chained[0], &chained[1], &whole[0], &whole[1], "token_sparse then rows");
        release_n(chained, 2);
        release_n(whole, 2);
        release_n(first, 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* attn.vs_mixed: window ∪ sink blocks plus random columns (some inside kept
 * blocks) against ref on every backend, with bias and state; equal to
 * lse_merge(block_sparse(blocks), token_sparse(columns the blocks miss));
 * empty lists equal block_sparse; a causal mask with causal columns equals
 * attn.dense (every column is a duplicate). */
START_TEST(test_vs_mixed)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9900 + (uint64_t)_i);
    /* hq, hkv, nq, bq, bk, d: blocks shorter and longer than a CUDA key tile, decode offset */
    const int geo[6][6] = {{2, 1, 203, 16, 32, 32}, {4, 2, 100, 7, 13, 32}, {2, 2, 5, 64, 8, 32}, {4, 1, 150, 32, 40, 72},
                           {2, 1, 45, 16, 8, 128}, {4, 2, 70, 32, 16, 256}}; /* head_dim 128 and 256 */
    int64_t hq = geo[_i][0], hkv = geo[_i][1], nq = geo[_i][2], nk = nq + (_i == 2 ? 150 : 0), d = geo[_i][5];
    int bq = geo[_i][3], bk = geo[_i][4];
    sl_tensor in[12] = {tu_randn(ctx, &rng, hq, nq, d, 1.5), tu_randn(ctx, &rng, hkv, nk, d, 1.5),
                        tu_randn(ctx, &rng, hkv, nk, d, 1.0)};
    sl_pattern_term terms[2] = {{.kind = SL_PAT_WINDOW, .a = 21}, {.kind = SL_PAT_SINK, .a = 3}};
    sl_mask m;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, terms, 2, nq, nk, bq, bk, &m), SL_OK);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    int64_t n_qb = (nq + bq - 1) / bq;
    rule cols = {.seed = 3, .p = 0.15, .b = bq};
    make_lists(ctx, hq, n_qb, nk, rule_keep, &cols, &in[7], &in[8]);
    sl_attn_vs_params p = {.bq = bq, .bk = bk, .scale = 0};
    sl_tensor bias = tu_randn(ctx, &rng, hq, nq, nk, 1.0), st_o = tu_randn(ctx, &rng, hq, nq, d, 1.0), st_l;
    int64_t ls[2] = {hq, nq};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, ls, &st_l), SL_OK);
    for (int64_t i = 0; i < hq * nq; i++)
        ((float *)st_l.data)[i] = i % 4 == 0 ? -INFINITY : (float)sl_rng_normal(&rng);
    for (int opt = 0; opt < 3; opt++) {
        in[9] = opt == 1 ? bias : (sl_tensor){0};
        in[10] = opt == 2 ? st_o : (sl_tensor){0};
        in[11] = opt == 2 ? st_l : (sl_tensor){0};
        char what[64];
        snprintf(what, sizeof what, "vs_mixed geo %d opt %d", _i, opt);
        check_backends(ctx, SL_OP_ATTN_VS_MIXED, &p, in, what);
    }
    in[9] = in[10] = in[11] = (sl_tensor){0};
    /* = lse_merge(block_sparse, token_sparse over the columns the blocks miss) */
    sl_tensor bs_out[2], ts_out[2], want[2];
    sl_attn_block_params pb = {.bq = bq, .bk = bk, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, bs_out);
    sl_tensor tin[8] = {in[0], in[1], in[2]};
    /* per-row lists: the query block's columns minus the pairs the mask keeps */
    {
        int64_t nnz = 0;
        for (int pass = 0; pass < 2; pass++) {
            nnz = 0;
            for (int64_t h = 0; h < hq; h++)
                for (int64_t r = 0; r < nq; r++) {
                    if (pass)
                        ((int32_t *)tin[3].data)[h * (nq + 1) + r] = (int32_t)nnz;
                    const int32_t *lrp = (const int32_t *)in[7].data + h * (n_qb + 1);
                    for (int32_t e = lrp[r / bq]; e < lrp[r / bq + 1]; e++) {
                        int32_t j = ((const int32_t *)in[8].data)[e];
                        if (sl_mask_get(&m, 0, r, j))
                            continue;
                        if (pass)
                            ((int32_t *)tin[4].data)[nnz] = j;
                        nnz++;
                    }
                    if (pass && r == nq - 1)
                        ((int32_t *)tin[3].data)[h * (nq + 1) + nq] = (int32_t)nnz;
                }
            if (!pass) {
                tin[3] = i32_tensor(ctx, hq, nq + 1);
                int64_t cs[1] = {nnz};
                ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, &tin[4]), SL_OK);
            }
        }
    }
    sl_attn_token_params pt = {.rows_per_entry = 1, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_TOKEN_SPARSE, &pt, tin, ts_out);
    sl_tensor mi[4] = {bs_out[0], bs_out[1], ts_out[0], ts_out[1]};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_LSE_MERGE, NULL, mi, want);
    check_equals(ctx, SL_OP_ATTN_VS_MIXED, &p, in, want, "vs_mixed = merge(blocks, columns)");
    release_n(want, 2);
    release_n(ts_out, 2);
    release_n(&tin[3], 2);
    /* empty lists = block_sparse */
    release_n(&in[7], 2);
    rule none = {.p = 0, .b = bq};
    make_lists(ctx, 1, n_qb, nk, rule_keep, &none, &in[7], &in[8]);
    check_equals(ctx, SL_OP_ATTN_VS_MIXED, &p, in, bs_out, "vs_mixed, empty lists = block_sparse");
    release_n(bs_out, 2);
    release_n(&in[7], 2);
    sl_mask_release(&m);
    /* causal mask + causal columns = dense */
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &(sl_pattern_term){.kind = SL_PAT_CAUSAL}, 1, nq, nk, bq, bk, &m), SL_OK);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    rule causal_cols = {.seed = 4, .p = 0.3, .b = 1, .offset = nk - nq, .causal = 1};
    p.bq = 1; /* one row per entry: bq of a 1-row-block mask */
    sl_mask_release(&m);
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &(sl_pattern_term){.kind = SL_PAT_CAUSAL}, 1, nq, nk, 1, bk, &m), SL_OK);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    make_lists(ctx, hq, nq, nk, rule_keep, &causal_cols, &in[7], &in[8]);
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = 1, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    check_equals(ctx, SL_OP_ATTN_VS_MIXED, &p, in, dense, "vs_mixed, causal mask + causal columns = dense");
    release_n(dense, 2);
    release_n(&in[7], 2);
    sl_mask_release(&m);
    sl_tensor_release(&bias);
    sl_tensor_release(&st_o);
    sl_tensor_release(&st_l);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* pv_skip: every backend matches ref (blocks shorter than, equal to and
 * longer than a CUDA key tile, ragged last blocks, one run of kept blocks
 * per row and scattered runs with partial blocks); L never changes; a huge
 * threshold changes nothing; and a hand-made case: keys scoring 10 and 0 in
 * blocks of one key with pv_skip 5 drop the second value,
 * O = v0 e^10 / (e^10 + 1), on every backend. */
START_TEST(test_pv_skip)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9950);
    sl_mask m;
    const int geo[3][6] = {{4, 2, 150, 32, 16, 8}, {2, 1, 203, 72, 32, 40}, {2, 2, 130, 64, 64, 64}}; /* hq hkv n d bq bk */
    for (int gi = 0; gi < 3; gi++) {
        int64_t hq = geo[gi][0], hkv = geo[gi][1], n = geo[gi][2], d = geo[gi][3];
        sl_tensor in[7] = {tu_randn(ctx, &rng, hq, n, d, 3), tu_randn(ctx, &rng, hkv, n, d, 3),
                           tu_randn(ctx, &rng, hkv, n, d, 1.0)};
        /* geo 0 causal (one run of blocks per row); the others every third
         * key block, a window and sinks: scattered runs, partial blocks */
        sl_pattern_term terms[3] = {{.kind = SL_PAT_STRIDED, .a = 3, .unit = geo[gi][5]},
                                    {.kind = SL_PAT_WINDOW, .a = 20}, {.kind = SL_PAT_SINK, .a = 2}};
        if (gi == 0)
            mask_of(ctx, SL_PAT_CAUSAL, 0, n, n, geo[gi][4], geo[gi][5], &m);
        else
            ck_assert_int_eq(sl_mask_from_pattern(ctx, terms, 3, n, n, geo[gi][4], geo[gi][5], &m), SL_OK);
        sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
        sl_attn_block_params p0 = {.bq = geo[gi][4], .bk = geo[gi][5], .scale = 0, .pv_skip = 0};
        sl_tensor plain[2];
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &p0, in, plain);
        const double lambdas[3] = {1.0, 4.0, 1e4};
        for (int li = 0; li < 3; li++) {
            sl_attn_block_params p = p0;
            p.pv_skip = lambdas[li];
            char what[64];
            snprintf(what, sizeof what, "pv_skip %g geo %d", lambdas[li], gi);
            check_backends(ctx, SL_OP_ATTN_BLOCK_SPARSE, &p, in, what);
            sl_tensor out[2];
            run_attn(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BLOCK_SPARSE, &p, in, out);
            int64_t changed = 0;
            for (int64_t i = 0; i < hq * n; i++)
                ck_assert_double_eq_tol(tu_at(&out[1], i), tu_at(&plain[1], i), 1e-5 * fmax(1, fabs(tu_at(&plain[1], i))));
            for (int64_t i = 0; i < hq * n * d; i++)
                changed += fabs(tu_at(&out[0], i) - tu_at(&plain[0], i)) > 1e-4;
            if (lambdas[li] > 100)
                ck_assert_int_eq(changed, 0);
            else
                ck_assert_msg(changed > 0, "%s skipped nothing", what);
            release_n(out, 2);
        }
        release_n(plain, 2);
        sl_mask_release(&m);
        release_n(in, 3);
    }
    /* by hand */
    sl_tensor h[7] = {tu_randn(ctx, &rng, 1, 1, 1, 0), tu_randn(ctx, &rng, 1, 2, 1, 0), tu_randn(ctx, &rng, 1, 2, 1, 0)};
    ((float *)h[0].data)[0] = 1;
    ((float *)h[1].data)[0] = 10, ((float *)h[1].data)[1] = 0;
    ((float *)h[2].data)[0] = 2, ((float *)h[2].data)[1] = 7;
    mask_of(ctx, SL_PAT_FULL, 0, 1, 2, 1, 1, &m);
    sl_mask_inputs(&m, &h[0], &h[1], &h[2], h);
    sl_attn_block_params ph = {.bq = 1, .bk = 1, .scale = 1, .pv_skip = 5};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!backend_wanted((sl_backend_id)b) || !sl_backend_available((sl_backend_id)b))
            continue;
        sl_tensor out[2];
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_BLOCK_SPARSE, &ph, h, out);
        ck_assert_double_eq_tol(tu_at(&out[0], 0), 2 * exp(10) / (exp(10) + 1), 1e-5);
        ck_assert_double_eq_tol(tu_at(&out[1], 0), log(exp(10) + 1), 1e-5);
        release_n(out, 2);
    }
    sl_mask_release(&m);
    release_n(h, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Malformed index lists, rows, limits, options and log-sum-exps are
 * rejected with a message that starts with the op name. */
START_TEST(test_sparse_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9990);
    int64_t hq = 4, nq = 6, nk = 20, d = 8;
    sl_tensor in[8] = {tu_randn(ctx, &rng, hq, nq, d, 1), tu_randn(ctx, &rng, 2, nk, d, 1),
                       tu_randn(ctx, &rng, 2, nk, d, 1)};
    rule r = {.p = 0.5, .b = 1};
    make_lists(ctx, hq, nq, nk, rule_keep, &r, &in[3], &in[4]);
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0};
    sl_tensor out[2] = {{0}};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out), SL_OK);
    release_n(out, 2);
    int32_t *col = in[4].data, *rp = in[3].data;
    int32_t save = col[1];
    col[1] = col[0]; /* duplicate */
    expect_fail(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, SL_EFORMAT, "sorted");
    col[1] = (int32_t)nk; /* out of range */
    expect_fail(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, SL_EFORMAT, "sorted, unique and in [0, 20)");
    col[1] = save;
    rp[2] += 1000; /* past nnz */
    expect_fail(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, SL_EFORMAT, "monotone");
    rp[2] -= 1000;
    p.rows_per_entry = 2; /* row_ptr made for 1 */
    expect_fail(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, SL_ESHAPE, "idx.row_ptr must be");
    p.rows_per_entry = 1;
    sl_tensor bad_bias = tu_randn(ctx, &rng, 2, nq, nk, 1);
    in[5] = bad_bias;
    expect_fail(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, SL_ESHAPE, "opt.bias");
    in[5] = (sl_tensor){0};
    in[6] = tu_randn(ctx, &rng, hq, nq, d, 1);
    expect_fail(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, SL_EARG, "state.o");
    sl_tensor_release(&in[6]);
    sl_tensor_release(&bad_bias);
    release_n(&in[3], 2);
    /* list heads that do not divide Hq */
    make_lists(ctx, 3, nq, nk, rule_keep, &r, &in[3], &in[4]);
    expect_fail(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, SL_ESHAPE, "divisor");
    release_n(&in[3], 2);
    /* rows and limits */
    sl_attn_rows_params pr = {.scale = 0};
    in[3] = i32_tensor(ctx, 1, 3);
    in[4] = i32_tensor(ctx, 1, 3);
    int32_t rows[3] = {0, 5, 2}, lim[3] = {1, 20, 3};
    memcpy(in[3].data, rows, sizeof rows);
    memcpy(in[4].data, lim, sizeof lim);
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_ROWS, &pr, in, out), SL_OK);
    release_n(out, 2);
    ((int32_t *)in[3].data)[1] = (int32_t)nq;
    expect_fail(ctx, SL_OP_ATTN_ROWS, &pr, in, SL_EARG, "rows[1]");
    ((int32_t *)in[3].data)[1] = 5;
    ((int32_t *)in[4].data)[2] = (int32_t)nk + 1;
    expect_fail(ctx, SL_OP_ATTN_ROWS, &pr, in, SL_EARG, "limits[2]");
    release_n(&in[3], 2);
    in[3] = i32_tensor(ctx, 2, 3);
    in[4] = i32_tensor(ctx, 2, 3);
    expect_fail(ctx, SL_OP_ATTN_ROWS, &pr, in, SL_ESHAPE, "rows and limits");
    release_n(&in[3], 2);
    /* lse_merge: +inf and NaN in lse, mismatched shapes */
    int64_t sl1[1] = {4}, so1[2] = {4, 3};
    sl_tensor m[4];
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 2, so1, &m[0]), SL_OK);
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 1, sl1, &m[1]), SL_OK);
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 2, so1, &m[2]), SL_OK);
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 1, sl1, &m[3]), SL_OK);
    sl_tensor keep[3] = {in[0], in[1], in[2]};
    memcpy(in, m, sizeof m);
    ((float *)m[1].data)[2] = INFINITY;
    expect_fail(ctx, SL_OP_ATTN_LSE_MERGE, NULL, in, SL_EARG, "+inf");
    ((float *)m[1].data)[2] = NAN;
    expect_fail(ctx, SL_OP_ATTN_LSE_MERGE, NULL, in, SL_EARG, "NaN");
    ((float *)m[1].data)[2] = -INFINITY;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_LSE_MERGE, NULL, in, out), SL_OK);
    release_n(out, 2);
    in[3] = m[1].ndim ? keep[0] : m[3];
    expect_fail(ctx, SL_OP_ATTN_LSE_MERGE, NULL, in, SL_ESHAPE, "o2 and lse2");
    release_n(m, 4);
    release_n(keep, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* K and V are checked for NaN only where the lists read them: a NaN or an
 * infinity in a listed row is SL_EARG on every backend (direct and gather
 * paths), one in an unlisted row changes nothing. */
START_TEST(test_token_sparse_nan_in_read_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9980);
    int64_t hq = 2, nq = 24, nk = 50, d = 16;
    sl_tensor in[8] = {tu_randn(ctx, &rng, hq, nq, d, 1), tu_randn(ctx, &rng, 1, nk, d, 1),
                       tu_randn(ctx, &rng, 1, nk, d, 1)};
    /* every list holds the even keys only */
    for (int path = 0; path < 2; path++) {
        int64_t b = path ? nq : 1, n_e = (nq + b - 1) / b;
        in[3] = i32_tensor(ctx, 1, n_e + 1);
        int64_t cs[1] = {n_e * (nk / 2)};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, &in[4]), SL_OK);
        for (int64_t e = 0; e <= n_e; e++)
            ((int32_t *)in[3].data)[e] = (int32_t)(e * (nk / 2));
        for (int64_t i = 0; i < cs[0]; i++)
            ((int32_t *)in[4].data)[i] = (int32_t)(2 * (i % (nk / 2)));
        sl_attn_token_params p = {.rows_per_entry = b, .scale = 0};
        for (int b_ = 0; b_ < SL_BACKEND__COUNT; b_++) {
            if (!sl_backend_available((sl_backend_id)b_) || !backend_wanted((sl_backend_id)b_))
                continue;
            for (int which = 1; which <= 2; which++)
                for (int row = 7; row <= 8; row++) {
                    float *x = (float *)in[which].data + row * d + 3;
                    float save = *x;
                    for (int bad = 0; bad < 2; bad++) {
                        *x = bad ? INFINITY : NAN;
                        sl_tensor out[2] = {{0}};
                        sl_status s = sl_op_run(ctx, (sl_backend_id)b_, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out);
                        if (row % 2) {
                            ck_assert_msg(s == SL_OK, "unread row %d: %s", row, sl_ctx_error(ctx));
                            release_n(out, 2);
                        } else {
                            ck_assert_msg(s == SL_EARG, "%s path %d which %d bad %d: status %d", sl_backend_name((sl_backend_id)b_),
                                          path, which, bad, s);
                            ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "attn.token_sparse: input 'k' or 'v'"));
                            ck_assert_ptr_null(out[0].buf);
                        }
                    }
                    *x = save;
                }
        }
        release_n(&in[3], 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Every failing allocation inside the new executors leaves nothing behind. */
START_TEST(test_sparse_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 40; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 9999);
        sl_tensor in[8] = {tu_randn(ctx, &rng, 2, 20, 8, 1), tu_randn(ctx, &rng, 2, 20, 8, 1),
                           tu_randn(ctx, &rng, 2, 20, 8, 1)};
        rule r = {.p = 0.5, .b = 4};
        make_lists(ctx, 2, 5, 20, rule_keep, &r, &in[3], &in[4]);
        in[6] = tu_randn(ctx, &rng, 2, 20, 8, 1);
        in[7] = tu_randn(ctx, &rng, 1, 2, 20, 1);
        in[7].ndim = 2, in[7].shape[0] = 2, in[7].shape[1] = 20, in[7].stride[0] = 20, in[7].stride[1] = 1;
        sl_tensor half; /* a strided state.o forces a conversion (one more allocation) */
        ck_assert_int_eq(sl_tensor_narrow(ctx, &in[6], 2, 0, 8, &half), SL_OK);
        al.fail_at = al.calls + fail;
        sl_attn_token_params p = {.rows_per_entry = 4, .scale = 0};
        sl_tensor out[2] = {{0}};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out);
        ck_assert(s == SL_OK || s == SL_ENOMEM);
        if (s == SL_OK)
            release_n(out, 2);
        al.fail_at = 0;
        sl_tensor_release(&half);
        release_n(in, 8);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

/* attn.linear: backends against ref (the cpu's running state against the
 * reference's quadratic form) for both feature maps and causal or not; the
 * weights sum to one (constant values come back); row 0 of a causal prefill
 * is v[0]. */
START_TEST(test_attn_linear)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7400 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[3] = {{0}};
    qkv_of(ctx, &rng, c, 1.0, in);
    for (int feature = 0; feature < 2; feature++) {
        sl_attn_linear_params p = {.causal = c->causal, .feature = feature};
        check_op_vs_ref(ctx, SL_OP_ATTN_LINEAR, &p, in, 1e-5, "attn.linear");
    }
    sl_attn_linear_params p = {.causal = 1, .feature = 0};
    sl_tensor out[1];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_LINEAR, &p, in, out), SL_OK);
    if (c->nq == c->nk)
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t x = 0; x < c->d; x++)
                ck_assert_double_eq_tol(f32p(&out[0])[h * c->nq * c->d + x],
                                        f32p(&in[2])[(h / (c->hq / c->hkv)) * c->nk * c->d + x], 1e-6);
    sl_tensor_release(&out[0]);
    /* constant value rows: every output row is that constant */
    for (int64_t i = 0; i < sl_tensor_numel(&in[2]); i++)
        f32p(&in[2])[i] = (float)(1.0 + (double)(i % c->d));
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_LINEAR, &p, in, out), SL_OK);
    for (int64_t i = 0; i < c->hq * c->nq; i++)
        for (int64_t x = 0; x < c->d; x++)
            ck_assert_double_eq_tol(f32p(&out[0])[i * c->d + x], 1.0 + (double)x, 1e-4 * (1.0 + (double)x));
    sl_tensor_release(&out[0]);
    f32p(&in[1])[0] = NAN;
    expect_fail(ctx, SL_OP_ATTN_LINEAR, &p, in, SL_EARG, "NaN");
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* attn.pooled_kv: random level maps against ref; all level 1 equals
 * attn.dense; level s over groups of identical keys and values equals level
 * 1 (the log s bias); all level 0 gives O = 0, L = -inf; bad levels and
 * shapes rejected; the FLOP count of all level 1 equals attn.dense's. */
START_TEST(test_pooled_kv)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7500 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[4] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
    sl_attn_pooled_params p = {.bq = 16, .bk = 8, .causal = c->causal, .scale = 0};
    int64_t nqb = (c->nq + 15) / 16, nkb = (c->nk + 7) / 8;
    static const uint8_t choice[5] = {0, 1, 2, 4, 8};
    for (int per_head = 0; per_head < 2; per_head++) {
        in[3] = levels_new(ctx, per_head ? c->hq : 1, nqb, nkb);
        for (int64_t i = 0; i < sl_tensor_numel(&in[3]); i++)
            ((uint8_t *)in[3].data)[i] = choice[sl_rng_next(&rng) % 5];
        check_op_vs_ref(ctx, SL_OP_ATTN_POOLED_KV, &p, in, 1e-5, "pooled_kv random levels");
        sl_tensor_release(&in[3]);
    }
    /* all level 1 = dense */
    in[3] = levels_new(ctx, 1, nqb, nkb);
    memset(in[3].data, 1, (size_t)(nqb * nkb));
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = c->causal};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    check_equals(ctx, SL_OP_ATTN_POOLED_KV, &p, in, dense, "pooled_kv level 1 = dense");
    ck_assert_double_eq_tol(sl_op_flops(SL_OP_ATTN_POOLED_KV, &p, in), sl_op_flops(SL_OP_ATTN_DENSE, &pd, in), 1e-6);
    /* level 0 everywhere: nothing */
    memset(in[3].data, 0, (size_t)(nqb * nkb));
    sl_tensor out[2];
    run_attn(ctx, SL_BACKEND_CPU, SL_OP_ATTN_POOLED_KV, &p, in, out);
    for (int64_t i = 0; i < c->hq * c->nq; i++)
        ck_assert(isinf(f32p(&out[1])[i]) && f32p(&out[1])[i] < 0 && f32p(&out[0])[i * c->d] == 0.f);
    release_n(out, 2);
    /* groups of 4 identical keys and values, not causal (groups never split by
     * the causal cut): level 4 equals level 1 */
    sl_attn_pooled_params pn = p;
    pn.causal = 0;
    for (int64_t g = 0; g < c->hkv; g++)
        for (int64_t j = 0; j < c->nk; j++)
            for (int64_t x = 0; x < c->d; x++) {
                int64_t src = (g * c->nk + (j / 4) * 4) * c->d + x;
                f32p(&in[1])[(g * c->nk + j) * c->d + x] = f32p(&in[1])[src];
                f32p(&in[2])[(g * c->nk + j) * c->d + x] = f32p(&in[2])[src];
            }
    memset(in[3].data, 1, (size_t)(nqb * nkb));
    sl_tensor lvl1[2];
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_POOLED_KV, &pn, in, lvl1);
    memset(in[3].data, 4, (size_t)(nqb * nkb));
    check_equals(ctx, SL_OP_ATTN_POOLED_KV, &pn, in, lvl1, "identical keys: level 4 = level 1");
    release_n(lvl1, 2);
    /* errors */
    ((uint8_t *)in[3].data)[0] = 3;
    expect_fail(ctx, SL_OP_ATTN_POOLED_KV, &p, in, SL_EARG, "power of two");
    ((uint8_t *)in[3].data)[0] = 16;
    expect_fail(ctx, SL_OP_ATTN_POOLED_KV, &p, in, SL_EARG, "<= bk = 8");
    sl_tensor_release(&in[3]);
    in[3] = levels_new(ctx, 1, nqb + 1, nkb);
    memset(in[3].data, 1, (size_t)((nqb + 1) * nkb));
    expect_fail(ctx, SL_OP_ATTN_POOLED_KV, &p, in, SL_ESHAPE, "levels must be u8");
    sl_tensor_release(&in[3]);
    release_n(dense, 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_attn_bucket)
{
    const shape_case *c = &CASES[_i];
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6300 + (uint64_t)_i);
    sl_tensor in[5] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1), {0}, {0}};
    /* no buckets, no tau: attn.dense */
    sl_attn_bucket_params p = {.causal = c->causal, .scale = 0, .use_tau = 0, .tau = 0};
    sl_attn_params ap = {.causal = c->causal, .scale = 0};
    sl_tensor dense[2], out[3];
    ck_assert_int_eq(sl_attn_dense(ctx, SL_BACKEND_REF, &ap, &in[0], &in[1], &in[2], &dense[0], &dense[1]), SL_OK);
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &p, in, out), SL_OK);
    assert_attn_close(&out[0], &out[1], &dense[0], &dense[1], "attn.bucket, one bucket");
    release_n(out, 3);
    p.use_tau = 1, p.tau = -1e30;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &p, in, out), SL_OK);
    assert_attn_close(&out[0], &out[1], &dense[0], &dense[1], "attn.bucket, tau = -inf");
    release_n(out, 3);
    /* random buckets (3 ids), with and without tau: backends and an independent masked softmax */
    in[3] = i32_tensor(ctx, c->hq, c->nq);
    in[4] = i32_tensor(ctx, c->hq, c->nk);
    int32_t *qb = in[3].data, *kb = in[4].data;
    for (int64_t i = 0; i < c->hq * c->nq; i++)
        qb[i] = (int32_t)(sl_rng_uniform(&rng) * 3);
    for (int64_t i = 0; i < c->hq * c->nk; i++)
        kb[i] = (int32_t)(sl_rng_uniform(&rng) * 3);
    for (int tau = 0; tau < 2; tau++) {
        p.use_tau = tau, p.tau = 0.2;
        char what[64];
        snprintf(what, sizeof what, "attn.bucket case %d tau %d", _i, tau);
        check_op_vs_ref(ctx, SL_OP_ATTN_BUCKET, &p, in, 1e-5, what);
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &p, in, out), SL_OK);
        int64_t g = c->hq / c->hkv, off = c->nk - c->nq, d = c->d;
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t i = 0; i < c->nq; i++) {
                const float *q = (const float *)in[0].data + (h * c->nq + i) * d;
                double mx = -INFINITY, z = 0, acc[64] = {0};
                int n = 0;
                double s[400];
                for (int64_t j = 0; j < c->nk; j++) {
                    s[j] = NAN;
                    if ((c->causal && j > off + i) || qb[h * c->nq + i] != kb[h * c->nk + j])
                        continue;
                    double x = 0;
                    for (int64_t e = 0; e < d; e++)
                        x += (double)q[e] * ((const float *)in[1].data)[((h / g) * c->nk + j) * d + e];
                    x /= sqrt((double)d);
                    if (tau && x < 0.2)
                        continue;
                    s[j] = x, mx = fmax(mx, x), n++;
                }
                for (int64_t j = 0; j < c->nk; j++)
                    if (!isnan(s[j])) {
                        double w = exp(s[j] - mx);
                        z += w;
                        for (int64_t e = 0; e < d; e++)
                            acc[e] += w * ((const float *)in[2].data)[((h / g) * c->nk + j) * d + e];
                    }
                ck_assert_int_eq(((const int32_t *)out[2].data)[h * c->nq + i], n);
                float l = tu_at(&out[1], h * c->nq + i);
                ck_assert_msg(n ? fabs(l - (mx + log(z))) < 1e-4 : l == -INFINITY, "%s: L[%lld,%lld]", what,
                              (long long)h, (long long)i);
                for (int64_t e = 0; e < d; e++) {
                    double want = n ? acc[e] / z : 0, got = tu_at(&out[0], (h * c->nq + i) * d + e);
                    ck_assert_msg(fabs(got - want) < 1e-4, "%s: O[%lld,%lld,%lld] %g vs %g", what, (long long)h,
                                  (long long)i, (long long)e, got, want);
                }
            }
        release_n(out, 3);
    }
    release_n(dense, 2);
    release_n(in, 5);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Rows whose bucket has no visible key, and tau above every score: O = 0,
 * L = -inf, count 0, no NaN. */
START_TEST(test_attn_bucket_empty_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6500);
    sl_tensor in[5] = {tu_randn(ctx, &rng, 1, 6, 4, 1), tu_randn(ctx, &rng, 1, 6, 4, 1), tu_randn(ctx, &rng, 1, 6, 4, 1),
                       i32_tensor(ctx, 1, 6), i32_tensor(ctx, 1, 6)};
    int32_t qb[6] = {1, 0, 0, 0, 0, 0}, kb[6] = {0, 1, 1, 1, 1, 1};
    memcpy(in[3].data, qb, sizeof qb);
    memcpy(in[4].data, kb, sizeof kb);
    sl_attn_bucket_params p = {.causal = 1};
    check_op_vs_ref(ctx, SL_OP_ATTN_BUCKET, &p, in, 1e-5, "empty rows");
    sl_tensor out[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &p, in, out), SL_OK);
    /* row 0 (bucket 1) sees key 0 only (bucket 0): empty; rows 1.. see key 0 */
    ck_assert_int_eq(((int32_t *)out[2].data)[0], 0);
    ck_assert(tu_at(&out[1], 0) == -INFINITY);
    for (int e = 0; e < 4; e++)
        ck_assert(tu_at(&out[0], e) == 0.f);
    ck_assert_int_eq(((int32_t *)out[2].data)[3], 1);
    release_n(out, 3);
    p.use_tau = 1, p.tau = 1e6;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &p, in, out), SL_OK);
    for (int i = 0; i < 6; i++) {
        ck_assert(tu_at(&out[1], i) == -INFINITY);
        ck_assert_int_eq(((int32_t *)out[2].data)[i], 0);
    }
    release_n(out, 3);
    release_n(in, 5);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* attn.bucket: one bucket list only, a negative bucket, a wrong shape. */
START_TEST(test_attn_bucket_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6400);
    sl_tensor ab[5] = {tu_randn(ctx, &rng, 2, 5, 4, 1), tu_randn(ctx, &rng, 1, 7, 4, 1), tu_randn(ctx, &rng, 1, 7, 4, 1),
                       i32_tensor(ctx, 2, 5), i32_tensor(ctx, 2, 7)};
    memset(ab[3].data, 0, sizeof(int32_t) * 10);
    memset(ab[4].data, 0, sizeof(int32_t) * 14);
    sl_attn_bucket_params bp = {.causal = 1};
    sl_tensor keep4 = ab[4];
    ab[4] = (sl_tensor){0};
    expect_fail(ctx, SL_OP_ATTN_BUCKET, &bp, ab, SL_EARG, "come together");
    ab[4] = keep4;
    ((int32_t *)ab[4].data)[3] = -1;
    expect_fail(ctx, SL_OP_ATTN_BUCKET, &bp, ab, SL_EARG, "bucket ids >= 0");
    ((int32_t *)ab[4].data)[3] = 0;
    sl_tensor keep3 = ab[3];
    ab[3] = i32_tensor(ctx, 1, 5);
    expect_fail(ctx, SL_OP_ATTN_BUCKET, &bp, ab, SL_ESHAPE, "opt.qb");
    sl_tensor_release(&ab[3]);
    ab[3] = keep3;
    sl_tensor out[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &bp, ab, out), SL_OK);
    release_n(out, 3);
    release_n(ab, 5);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_attn_bucket_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 30; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 6600);
        sl_tensor in[5] = {tu_randn(ctx, &rng, 2, 20, 8, 1), tu_randn(ctx, &rng, 1, 20, 8, 1),
                           tu_randn(ctx, &rng, 1, 20, 8, 1), i32_tensor(ctx, 2, 20), i32_tensor(ctx, 2, 20)};
        memset(in[3].data, 0, sizeof(int32_t) * 40);
        memset(in[4].data, 0, sizeof(int32_t) * 40);
        al.fail_at = al.calls + fail;
        sl_tensor out[3] = {{0}};
        sl_attn_bucket_params bp = {.causal = 1};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &bp, in, out);
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "fail %ld: %d %s", fail, s, sl_ctx_error(ctx));
        if (s == SL_OK)
            release_n(out, 3);
        al.fail_at = 0;
        release_n(in, 5);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

/* A float64 oracle of masked attention: row (h, i) of o and l against the
 * softmax over the keys j with keep[(h * n_q + i) * n_k + j] (scale
 * 1/sqrt(d), GQA head h / (Hq / Hkv)); a row with no key must be O = 0 and
 * L = -inf. Written here from the definition, apart from ref. */
static void assert_masked_attn(const shape_case *c, const sl_tensor *in, const uint8_t *keep, const sl_tensor *o,
                               const sl_tensor *l, const char *what)
{
    int64_t grp = c->hq / c->hkv, d = c->d;
    double *s = malloc(sizeof *s * (size_t)c->nk), *acc = malloc(sizeof *acc * (size_t)d);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t i = 0; i < c->nq; i++) {
            const float *q = f32p(&in[0]) + (h * c->nq + i) * d;
            const float *orow = f32p(o) + (h * c->nq + i) * d;
            const uint8_t *kr = keep + (h * c->nq + i) * c->nk;
            double mx = -INFINITY;
            for (int64_t j = 0; j < c->nk; j++) {
                if (!kr[j])
                    continue;
                const float *k = f32p(&in[1]) + ((h / grp) * c->nk + j) * d;
                s[j] = 0;
                for (int64_t x = 0; x < d; x++)
                    s[j] += (double)q[x] * (double)k[x];
                s[j] /= sqrt((double)d);
                mx = fmax(mx, s[j]);
            }
            float got_l = f32p(l)[h * c->nq + i];
            if (isinf(mx)) {
                if (!(isinf(got_l) && got_l < 0))
                    ck_abort_msg("%s: empty row (%lld, %lld) has L = %g", what, (long long)h, (long long)i, got_l);
                for (int64_t x = 0; x < d; x++)
                    if (orow[x] != 0.f)
                        ck_abort_msg("%s: empty row (%lld, %lld) has O = %g", what, (long long)h, (long long)i, orow[x]);
                continue;
            }
            double z = 0;
            memset(acc, 0, sizeof *acc * (size_t)d);
            for (int64_t j = 0; j < c->nk; j++) {
                if (!kr[j])
                    continue;
                double p = exp(s[j] - mx);
                const float *v = f32p(&in[2]) + ((h / grp) * c->nk + j) * d;
                z += p;
                for (int64_t x = 0; x < d; x++)
                    acc[x] += p * (double)v[x];
            }
            double want_l = mx + log(z);
            if (!(fabs(got_l - want_l) <= 1e-5 * fmax(1, fabs(want_l))))
                ck_abort_msg("%s: L(%lld, %lld) = %.9g, want %.9g", what, (long long)h, (long long)i, got_l, want_l);
            for (int64_t x = 0; x < d; x++)
                if (!(fabs(orow[x] - acc[x] / z) <= 2e-5))
                    ck_abort_msg("%s: O(%lld, %lld)[%lld] = %.9g, want %.9g", what, (long long)h, (long long)i,
                                 (long long)x, orow[x], acc[x] / z);
        }
    free(s);
    free(acc);
}

/* Index lists per row read from a dense keep [H, n_q, n_k] (entry e is row e). */
typedef struct dense_keep { const uint8_t *keep; int64_t nq, nk; } dense_keep;

static int dense_keep_rule(const void *ud, int64_t h, int64_t e, int64_t j)
{
    const dense_keep *k = ud;
    return k->keep[(h * k->nq + e) * k->nk + j];
}

/* Head dims 128 and 256 (ATTN_BIG_D: ragged, GQA, one query row, one token)
 * with fully masked rows, on every backend against ref and against the
 * float64 oracle above: attn.block_sparse with random kept blocks and head
 * 0's last query block empty; attn.token_sparse with per-row causal lists,
 * every third row's empty; attn.rows over every row with limit 0 on every
 * third row. */
START_TEST(test_big_d_masked_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9300 + (uint64_t)_i);
    const shape_case *c = &ATTN_BIG_D[_i];
    int64_t off = c->nk - c->nq, n_pairs = c->hq * c->nq * c->nk;
    sl_tensor in[8] = {{0}}, ref[2];
    qkv_of(ctx, &rng, c, 1.5, in);
    uint8_t *keep = malloc((size_t)n_pairs);
    char what[96];
    /* block_sparse */
    int bq = 16, bk = 16;
    int64_t nqb = (c->nq + bq - 1) / bq, nkb = (c->nk + bk - 1) / bk;
    sl_tensor blocks;
    int64_t bs[3] = {c->hq, nqb, nkb};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, bs, &blocks), SL_OK);
    for (int64_t i = 0; i < c->hq * nqb * nkb; i++)
        ((uint8_t *)blocks.data)[i] = sl_rng_uniform(&rng) < 0.5;
    memset((uint8_t *)blocks.data + (nqb - 1) * nkb, 0, (size_t)nkb);
    sl_mask m;
    ck_assert_int_eq(sl_mask_from_blocks(ctx, &blocks, c->nq, c->nk, bq, bk, c->causal, &m), SL_OK);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t i = 0; i < c->nq; i++)
            for (int64_t j = 0; j < c->nk; j++)
                keep[(h * c->nq + i) * c->nk + j] = (uint8_t)sl_mask_get(&m, (int)h, i, j);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    sl_attn_block_params pb = {.bq = bq, .bk = bk, .scale = 0};
    snprintf(what, sizeof what, "big d case %d block_sparse", _i);
    check_backends(ctx, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, what);
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, ref);
    assert_masked_attn(c, in, keep, &ref[0], &ref[1], what);
    release_n(ref, 2);
    sl_mask_release(&m);
    sl_tensor_release(&blocks);
    /* token_sparse, per-row lists */
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t i = 0; i < c->nq; i++)
            for (int64_t j = 0; j < c->nk; j++)
                keep[(h * c->nq + i) * c->nk + j] = (uint8_t)(i % 3 != 1 && j <= off + i && sl_rng_uniform(&rng) < 0.6);
    dense_keep dk = {keep, c->nq, c->nk};
    make_lists(ctx, c->hq, c->nq, c->nk, dense_keep_rule, &dk, &in[3], &in[4]);
    in[5] = in[6] = in[7] = (sl_tensor){0};
    sl_attn_token_params pt = {.rows_per_entry = 1, .scale = 0};
    snprintf(what, sizeof what, "big d case %d token_sparse", _i);
    check_backends(ctx, SL_OP_ATTN_TOKEN_SPARSE, &pt, in, what);
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_TOKEN_SPARSE, &pt, in, ref);
    assert_masked_attn(c, in, keep, &ref[0], &ref[1], what);
    release_n(ref, 2);
    release_n(&in[3], 2);
    /* rows: every row, limits 0 on every third */
    in[3] = i32_tensor(ctx, 1, c->nq);
    in[4] = i32_tensor(ctx, 1, c->nq);
    for (int64_t i = 0; i < c->nq; i++) {
        int64_t lim = i % 3 == 2 ? 0 : 1 + (int64_t)(sl_rng_next(&rng) % (uint64_t)c->nk);
        ((int32_t *)in[3].data)[i] = (int32_t)i;
        ((int32_t *)in[4].data)[i] = (int32_t)lim;
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t j = 0; j < c->nk; j++)
                keep[(h * c->nq + i) * c->nk + j] = j < lim;
    }
    sl_attn_rows_params pr = {.scale = 0};
    snprintf(what, sizeof what, "big d case %d rows", _i);
    check_backends(ctx, SL_OP_ATTN_ROWS, &pr, in, what);
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_ROWS, &pr, in, ref);
    assert_masked_attn(c, in, keep, &ref[0], &ref[1], what);
    release_n(ref, 2);
    release_n(&in[3], 2);
    free(keep);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST


/* bf16 and f16 q, k, v (issue 12, tensor cores on cuda): attn.dense,
 * attn.block_sparse and attn.token_sparse on every wanted backend against
 * ref, which gets the same bf16/f16 values converted exactly to f32 by the
 * dispatcher. cuda reads them natively (WMMA: Q·Kᵀ exact products summed in
 * f32, softmax in f32, P rounded to the input dtype before P·V, f32
 * accumulation), so O's error is about the rounding of P: 2^-9 (bf16, 8-bit
 * mantissa) or 2^-12 (f16, 11 bits) relative to the scale of V, bounded by
 * 2e-2·max|v| (bf16) and 3e-3·max|v| (f16); L's sum runs over unrounded
 * probabilities: 1e-3 absolute. Cases: ragged n, GQA, d 64 and 128, one
 * query row, d 256, fully masked rows (an empty block row; an empty list),
 * bias and state (token_sparse). On cuda the result must also differ
 * from the f32 kernels' on the same values by more than f32 noise: the test
 * fails if the dispatcher converted to f32 behind the kernel's back. */
static const shape_case LOWP_CASES[] = {
    {2, 1, 37, 37, 64, 1},   /* ragged, GQA 2:1 */
    {2, 2, 80, 80, 128, 1},  /* ragged past one 64-row tile, d 128 */
    {4, 2, 1, 80, 64, 0},    /* one query row, GQA 2:1 */
    {2, 1, 24, 48, 128, 1},  /* causal with an offset (n_q < n_k), d 128 */
    {2, 2, 20, 40, 256, 0},  /* d 256, not causal */
};
#define N_LOWP (int)(sizeof LOWP_CASES / sizeof LOWP_CASES[0])

/* The largest errors of this test (each runs in its own process), per dtype
 * (0 bf16, 1 f16): O relative to max|v|, L absolute; printed at its end. */
static double lowp_err_o[2], lowp_err_l[2];

static void check_lowp(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, int n_in, int f16, double vmax,
                       const char *what)
{
    const double tol_o = (f16 ? 3e-3 : 2e-2) * vmax, tol_l = 1e-3;
    sl_tensor ref[2], out[2];
    run_attn(ctx, SL_BACKEND_REF, op, p, in, ref);
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int k = 0; k < nb; k++) {
        run_attn(ctx, bs[k], op, p, in, out);
        const char *bn = sl_backend_name(bs[k]);
        for (int64_t i = 0; i < sl_tensor_numel(&ref[0]); i++) {
            double x = tu_at(&out[0], i), r = tu_at(&ref[0], i), e = fabs(x - r);
            if (!(e <= tol_o))
                ck_abort_msg("%s on %s: O[%lld] = %g, ref %g (tolerance %g)", what, bn, (long long)i, x, r, tol_o);
            lowp_err_o[f16] = fmax(lowp_err_o[f16], e / vmax);
        }
        for (int64_t i = 0; i < sl_tensor_numel(&ref[1]); i++) {
            double x = tu_at(&out[1], i), r = tu_at(&ref[1], i);
            if (isnan(x) || (isinf(r) ? x != r : !(fabs(x - r) <= tol_l)))
                ck_abort_msg("%s on %s: L[%lld] = %.9g, ref %.9g", what, bn, (long long)i, x, r);
            if (!isinf(r))
                lowp_err_l[f16] = fmax(lowp_err_l[f16], fabs(x - r));
        }
        if (bs[k] == SL_BACKEND_CUDA) {
            /* The native path ran: the f32 kernels on the same values agree with ref to f32 noise (1e-5) and
             * differ from the bf16/f16 result by the rounding of P. */
            sl_tensor in32[SL_OP_MAX_INPUTS], o32[2];
            for (int i = 0; i < n_in; i++)
                in32[i] = in[i];
            for (int i = 0; i < 3; i++)
                ck_assert_int_eq(sl_tensor_convert(ctx, &in[i], SL_F32, &in32[i]), SL_OK);
            run_attn(ctx, SL_BACKEND_CUDA, op, p, in32, o32);
            double diff = 0;
            for (int64_t i = 0; i < sl_tensor_numel(&ref[0]); i++)
                diff = fmax(diff, fabs(tu_at(&o32[0], i) - tu_at(&out[0], i)));
            ck_assert_msg(diff > 1e-6 * vmax, "%s: the cuda result equals the f32 kernels' (max difference %g): "
                          "q, k, v were converted to f32 before the kernel", what, diff);
            release_n(o32, 2);
            release_n(in32, 3);
        }
        release_n(out, 2);
    }
    release_n(ref, 2);
}

static int lowp_list_rule(const void *ud, int64_t h, int64_t e, int64_t j)
{
    const int64_t *seed = ud;
    if (e == 1)
        return 0; /* an empty list: its rows see no key */
    return (mix((uint64_t)*seed ^ mix((uint64_t)h * 1000003u + (uint64_t)e * 7919u + (uint64_t)j)) >> 11) % 5 < 2;
}

START_TEST(test_lowp_attention)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9700 + (uint64_t)_i);
    const shape_case *c = &LOWP_CASES[_i / 2];
    const int f16 = _i % 2;
    const sl_dtype dt = f16 ? SL_F16 : SL_BF16;
    sl_tensor f32in[3] = {{0}}, in[8] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, f32in);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(sl_tensor_convert(ctx, &f32in[i], dt, &in[i]), SL_OK);
    release_n(f32in, 3);
    sl_tensor v32;
    ck_assert_int_eq(sl_tensor_convert(ctx, &in[2], SL_F32, &v32), SL_OK);
    double vmax = 1e-30;
    for (int64_t i = 0; i < sl_tensor_numel(&v32); i++)
        vmax = fmax(vmax, fabs(tu_at(&v32, i)));
    sl_tensor_release(&v32);
    char what[128];
    /* dense */
    sl_attn_params pd = {.causal = c->causal, .scale = 0};
    snprintf(what, sizeof what, "%s case %d dense", f16 ? "f16" : "bf16", _i / 2);
    check_lowp(ctx, SL_OP_ATTN_DENSE, &pd, in, 3, f16, vmax, what);
    /* block_sparse: random kept blocks ∩ causal (partial diagonal blocks), block row 1 empty */
    const int bq = 16, bk = 16;
    const int64_t nqb = (c->nq + bq - 1) / bq, nkb = (c->nk + bk - 1) / bk;
    sl_tensor blocks;
    int64_t bsh[3] = {c->hq, nqb, nkb};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, bsh, &blocks), SL_OK);
    for (int64_t i = 0; i < c->hq * nqb * nkb; i++)
        ((uint8_t *)blocks.data)[i] = sl_rng_uniform(&rng) < 0.6;
    if (nqb > 1)
        memset((uint8_t *)blocks.data + nkb, 0, (size_t)nkb);
    sl_mask m;
    ck_assert_int_eq(sl_mask_from_blocks(ctx, &blocks, c->nq, c->nk, bq, bk, c->causal, &m), SL_OK);
    sl_tensor mq = in[0], mk = in[1], mv = in[2];
    sl_mask_inputs(&m, &mq, &mk, &mv, in);
    sl_attn_block_params pb = {.bq = bq, .bk = bk, .scale = 0};
    snprintf(what, sizeof what, "%s case %d block_sparse", f16 ? "f16" : "bf16", _i / 2);
    check_lowp(ctx, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, 7, f16, vmax, what);
    sl_mask_release(&m);
    sl_tensor_release(&blocks);
    /* token_sparse: lists per entry of b rows (entry 1 empty), plain, with a bias, with a state */
    sl_tensor bias = tu_randn(ctx, &rng, c->hq, c->nq, c->nk, 1.0);
    sl_tensor st_o = tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0);
    sl_tensor st_l = lse_random(ctx, &rng, c->hq, c->nq, 1.0, 5, 0);
    const int64_t bs[2] = {1, 16};
    for (int bi = 0; bi < 2; bi++) {
        const int64_t b = bs[bi], n_e = (c->nq + b - 1) / b, seed = bi + 1;
        make_lists(ctx, bi ? 1 : c->hq, n_e, c->nk, lowp_list_rule, &seed, &in[3], &in[4]);
        sl_attn_token_params pt = {.rows_per_entry = b, .scale = 0};
        for (int opt = 0; opt < 3; opt++) {
            in[5] = opt == 1 ? bias : (sl_tensor){0};
            in[6] = opt == 2 ? st_o : (sl_tensor){0};
            in[7] = opt == 2 ? st_l : (sl_tensor){0};
            snprintf(what, sizeof what, "%s case %d token_sparse b %lld opt %d", f16 ? "f16" : "bf16", _i / 2,
                     (long long)b, opt);
            check_lowp(ctx, SL_OP_ATTN_TOKEN_SPARSE, &pt, in, 8, f16, vmax, what);
        }
        release_n(&in[3], 2);
    }
    printf("lowp %s case %d: max |O - ref| / max|v| %.3g, max |L - ref| %.3g\n", f16 ? "f16" : "bf16", _i / 2,
           lowp_err_o[f16], lowp_err_l[f16]);
    sl_tensor_release(&bias);
    sl_tensor_release(&st_o);
    sl_tensor_release(&st_l);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_loop_test(tc, test_dense_backends_match_ref, 0, N_ATTN_CASES);
    tcase_add_test(tc, test_dense_ref_against_closed_form);
    tcase_add_loop_test(tc, test_block_sparse_full_mask_equals_dense, 0, N_ATTN_CASES);
    tcase_add_test(tc, test_block_sparse_patterns_match_ref);
    tcase_add_test(tc, test_fully_masked_rows);
    tcase_add_test(tc, test_nan_and_shape_errors);
    tcase_add_test(tc, test_scores_overflow_f32);
    tcase_add_test(tc, test_bad_mask_rejected);
    tcase_add_test(tc, test_recall_is_kept_mass);
    tcase_add_test(tc, test_alloc_failures_leak_nothing);
    tcase_add_loop_test(tc, test_token_sparse_backends_match_ref, 0, N_ATTN_CASES);
    tcase_add_loop_test(tc, test_token_sparse_full_lists_equal_dense, 0, N_ATTN_CASES);
    tcase_add_test(tc, test_token_sparse_closed_forms);
    tcase_add_loop_test(tc, test_token_sparse_decode, 0, 4);
    tcase_add_loop_test(tc, test_rows, 0, N_ATTN_CASES);
    tcase_add_loop_test(tc, test_lse_merge, 0, N_CASES);
    tcase_add_loop_test(tc, test_state_chaining, 0, N_ATTN_CASES);
    tcase_add_loop_test(tc, test_vs_mixed, 0, 6);
    tcase_add_test(tc, test_pv_skip);
    tcase_add_test(tc, test_sparse_validation);
    tcase_add_test(tc, test_token_sparse_nan_in_read_rows);
    tcase_add_test(tc, test_sparse_alloc_failures_leak_nothing);
    tcase_add_loop_test(tc, test_attn_linear, 0, N_CASES);
    tcase_add_loop_test(tc, test_pooled_kv, 0, N_CASES);
    tcase_add_loop_test(tc, test_attn_bucket, 0, N_CASES);
    tcase_add_test(tc, test_attn_bucket_empty_rows);
    tcase_add_test(tc, test_attn_bucket_validation);
    tcase_add_test(tc, test_attn_bucket_alloc_failures_leak_nothing);
    tcase_add_loop_test(tc, test_big_d_masked_rows, 0, N_BIG_D);
    tcase_add_loop_test(tc, test_lowp_attention, 0, 2 * N_LOWP);
}

int main(void) { return run_op_suite("attn_ops", add_tests); }
