/* test_correct_ext_ops.c — the ops of issue 5 for cards re_ttention
 * (correct.reshape), flashblock (correct.cache_reuse), salad
 * (correct.linear_branch, attn.linear) and psa_pyramid (attn.pooled_kv):
 * every available backend against ref on fresh seeded inputs (sentinel
 * allocator: no leak, no overrun), closed forms computed here in float64,
 * the cards' invariants (refresh then an unchanged sparse step gives dense;
 * a cached disjoint part merged back gives dense; gate 0 gives the sparse
 * branch; all level 1 gives attn.dense; a level-s group of identical keys
 * equals level 1), NaN and out-of-range inputs rejected with the op's name. */
#include "opsutil.h"

static sl_tensor f32_new(sl_ctx *ctx, int ndim, const int64_t *shape)
{
    sl_tensor t;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, ndim, shape, &t), SL_OK);
    return t;
}

static sl_tensor randn_shape(sl_ctx *ctx, sl_rng *rng, int ndim, const int64_t *shape, double std)
{
    sl_tensor t = f32_new(ctx, ndim, shape);
    sl_tensor_fill_normal(ctx, &t, rng, std);
    return t;
}

static float *F(const sl_tensor *t) { return (float *)t->data; }

/* Every output of op on every wanted backend within tol (relative to the
 * largest |ref| of that output; infinities equal) of ref's. */
static void check_vs_ref(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, double tol, const char *what)
{
    const sl_op_info *info = sl_op_info_get(op);
    sl_tensor ref[4], out[4];
    sl_status s = sl_op_run(ctx, SL_BACKEND_REF, op, p, in, ref);
    ck_assert_msg(s == SL_OK, "%s on ref: %s", what, sl_ctx_error(ctx));
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int b = 0; b < nb; b++) {
        s = sl_op_run(ctx, bs[b], op, p, in, out);
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
        for (int o = 0; o < info->n_out; o++) {
            int64_t n = sl_tensor_numel(&ref[o]);
            double scale = 1e-30;
            for (int64_t i = 0; i < n; i++)
                if (isfinite(F(&ref[o])[i]))
                    scale = fmax(scale, fabs(F(&ref[o])[i]));
            for (int64_t i = 0; i < n; i++) {
                float x = F(&out[o])[i], y = F(&ref[o])[i];
                if (isnan(x) || (isinf(y) ? x != y : !(fabs(x - y) <= tol * fmax(scale, 1.0))))
                    ck_abort_msg("%s on %s: output %d [%lld] = %.9g, ref %.9g", what, sl_backend_name(bs[b]), o,
                                 (long long)i, x, y);
            }
        }
        release_n(out, info->n_out);
    }
    release_n(ref, info->n_out);
}

/* The op fails with status st, its message starting with the op's name and holding text. */
static void expect_fail(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, sl_status st, const char *text)
{
    sl_tensor out[4] = {{0}};
    for (int b = SL_BACKEND_REF; b <= SL_BACKEND_CPU; b++) {
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)b, op, p, in, out), st);
        const char *name = sl_op_info_get(op)->name;
        ck_assert_msg(strncmp(sl_ctx_error(ctx), name, strlen(name)) == 0, "%s", sl_ctx_error(ctx));
        ck_assert_msg(strstr(sl_ctx_error(ctx), text), "expected '%s' in: %s", text, sl_ctx_error(ctx));
        ck_assert_ptr_null(out[0].buf);
    }
}

/* A sparse pass over a window of w keys and the dense pass: (o, lse) each. */
static void window_and_dense(sl_ctx *ctx, const shape_case *c, const sl_tensor *qkv, int64_t w, sl_tensor sp[2],
                             sl_tensor de[2], sl_mask *win)
{
    sl_pattern_term t = {.kind = SL_PAT_WINDOW, .a = w};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &t, 1, c->nq, c->nk, 16, 16, win), SL_OK);
    sl_tensor in[7];
    sl_mask_inputs(win, &qkv[0], &qkv[1], &qkv[2], in);
    sl_attn_block_params pb = {.bq = 16, .bk = 16};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, sp);
    sl_attn_params pd = {.causal = 1};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, qkv, de);
}

/* correct.reshape: backends against ref in both modes, the closed forms and
 * the card's chain refresh -> sparse step (drift 0) == dense. */
START_TEST(test_reshape)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7100 + (uint64_t)_i);
    shape_case c = CASES[_i];
    c.causal = 1;
    sl_tensor qkv[3] = {tu_randn(ctx, &rng, c.hq, c.nq, c.d, 1.5), tu_randn(ctx, &rng, c.hkv, c.nk, c.d, 1.5),
                        tu_randn(ctx, &rng, c.hkv, c.nk, c.d, 1.0)};
    sl_tensor sp[2], de[2];
    sl_mask win;
    window_and_dense(ctx, &c, qkv, 5, sp, de, &win);
    int64_t rs[2] = {c.hq, c.nq};
    sl_tensor ratio = f32_new(ctx, 2, rs), res = tu_randn(ctx, &rng, c.hq, c.nq, c.d, 0.3);
    for (int64_t i = 0; i < c.hq * c.nq; i++)
        F(&ratio)[i] = (float)sl_rng_uniform(&rng);
    for (int use_ratio = 0; use_ratio < 2; use_ratio++) {
        sl_correct_reshape_params p = {.drift = 0.04, .use_ratio = use_ratio};
        sl_tensor in[6] = {sp[0], sp[1], de[0], de[1]};
        check_vs_ref(ctx, SL_OP_CORRECT_RESHAPE, &p, in, 1e-5, "reshape refresh");
        sl_tensor in2[6] = {sp[0], sp[1], {0}, {0}, ratio, res};
        check_vs_ref(ctx, SL_OP_CORRECT_RESHAPE, &p, in2, 1e-5, "reshape step");
        in2[5] = (sl_tensor){0};
        check_vs_ref(ctx, SL_OP_CORRECT_RESHAPE, &p, in2, 1e-5, "reshape step without residual");
    }
    /* closed forms and the chain, on cpu */
    sl_correct_reshape_params p = {.drift = 0, .use_ratio = 1};
    sl_tensor in[6] = {sp[0], sp[1], de[0], de[1]}, st[3], step[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_RESHAPE, &p, in, st), SL_OK);
    for (int64_t i = 0; i < c.hq * c.nq; i++) {
        double r = exp((double)F(&sp[1])[i] - (double)F(&de[1])[i]);
        ck_assert_msg(fabs(F(&st[1])[i] - r) <= 1e-5 * fmax(1, r), "r[%lld] = %g, expected %g", (long long)i,
                      F(&st[1])[i], r);
        ck_assert_msg(r > 0 && r <= 1 + 1e-5, "0 < r <= 1 at refresh: %g", r);
        for (int64_t x = 0; x < c.d; x++) {
            ck_assert(F(&st[0])[i * c.d + x] == F(&de[0])[i * c.d + x]); /* refresh step = dense exactly */
            double want = (double)F(&de[0])[i * c.d + x] - r * (double)F(&sp[0])[i * c.d + x];
            ck_assert_double_eq_tol(F(&st[2])[i * c.d + x], want, 1e-5);
        }
    }
    sl_tensor in3[6] = {sp[0], sp[1], {0}, {0}, st[1], st[2]};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_RESHAPE, &p, in3, step), SL_OK);
    assert_attn_close(&step[0], &step[1], &de[0], &st[1], "sparse step after refresh, unchanged inputs = dense");
    release_n(step, 3);
    /* drift: the ratio moves by drift after a step, the output uses the old one */
    p.drift = 0.04;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_RESHAPE, &p, in3, step), SL_OK);
    for (int64_t i = 0; i < c.hq * c.nq; i++)
        ck_assert_double_eq_tol(F(&step[1])[i], (double)F(&st[1])[i] + 0.04, 1e-6);
    release_n(step, 3);
    release_n(st, 3);
    /* errors */
    sl_tensor none[6] = {sp[0], sp[1]};
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, none, SL_EARG, "found neither");
    sl_tensor half[6] = {sp[0], sp[1], de[0]};
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, half, SL_EARG, "come together");
    float save = F(&ratio)[0];
    F(&ratio)[0] = -0.5f;
    sl_tensor neg[6] = {sp[0], sp[1], {0}, {0}, ratio};
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, neg, SL_EARG, "expected >= 0");
    F(&ratio)[0] = NAN;
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, neg, SL_EARG, "NaN");
    F(&ratio)[0] = save;
    sl_tensor badshape[6] = {sp[0], de[0], {0}, {0}, ratio};
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, badshape, SL_ESHAPE, "input 'lse' must be float [");
    sl_tensor_release(&ratio);
    sl_tensor_release(&res);
    release_n(sp, 2);
    release_n(de, 2);
    sl_mask_release(&win);
    release_n(qkv, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* correct.cache_reuse: a window pass plus the cached pass over the rest of
 * the causal keys is dense; the query test per row; backends against ref. */
START_TEST(test_cache_reuse)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7200 + (uint64_t)_i);
    shape_case c = CASES[_i];
    c.causal = 1;
    sl_tensor qkv[3] = {tu_randn(ctx, &rng, c.hq, c.nq, c.d, 1.5), tu_randn(ctx, &rng, c.hkv, c.nk, c.d, 1.5),
                        tu_randn(ctx, &rng, c.hkv, c.nk, c.d, 1.0)};
    sl_tensor sp[2], de[2], rest[2];
    sl_mask win, causal, out_m;
    window_and_dense(ctx, &c, qkv, 7, sp, de, &win);
    sl_pattern_term t = {.kind = SL_PAT_CAUSAL};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &t, 1, c.nq, c.nk, 16, 16, &causal), SL_OK);
    ck_assert_int_eq(sl_mask_difference(ctx, &causal, &win, &out_m), SL_OK);
    sl_tensor bin[7];
    sl_mask_inputs(&out_m, &qkv[0], &qkv[1], &qkv[2], bin);
    sl_attn_block_params pb = {.bq = 16, .bk = 16};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &pb, bin, rest);
    sl_correct_cache_params p = {.tau = 0.25};
    sl_tensor in[6] = {sp[0], sp[1], rest[0], rest[1]}, out[3];
    check_vs_ref(ctx, SL_OP_CORRECT_CACHE_REUSE, &p, in, 1e-5, "cache_reuse without q");
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_CACHE_REUSE, &p, in, out), SL_OK);
    assert_attn_close(&out[0], &out[1], &de[0], &de[1], "fresh cache of the complement = dense");
    for (int64_t i = 0; i < c.hq * c.nq; i++)
        ck_assert(F(&out[2])[i] == 1.f);
    release_n(out, 3);
    /* query test: rows whose query moved by more than tau keep the sparse pass */
    sl_tensor q2 = tu_randn(ctx, &rng, c.hq, c.nq, c.d, 1.5);
    for (int64_t i = 0; i < c.hq * c.nq; i++)
        for (int64_t x = 0; x < c.d; x++) {
            float *a = F(&q2) + i * c.d + x, b = F(&qkv[0])[i * c.d + x];
            *a = i % 3 == 0 ? b : i % 3 == 1 ? b + 0.01f * *a : *a; /* same, near, far */
        }
    sl_tensor in2[6] = {sp[0], sp[1], rest[0], rest[1], q2, qkv[0]};
    check_vs_ref(ctx, SL_OP_CORRECT_CACHE_REUSE, &p, in2, 1e-5, "cache_reuse with q");
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_CACHE_REUSE, &p, in2, out), SL_OK);
    for (int64_t i = 0; i < c.hq * c.nq; i++) {
        double diff = 0, norm = 0;
        for (int64_t x = 0; x < c.d; x++) {
            double a = F(&q2)[i * c.d + x], b = F(&qkv[0])[i * c.d + x];
            diff += (a - b) * (a - b);
            norm += b * b;
        }
        int want = sqrt(diff) <= 0.25 * sqrt(norm);
        ck_assert_msg(F(&out[2])[i] == (float)want, "row %lld reused %g, expected %d", (long long)i, F(&out[2])[i], want);
        const float *src = want ? F(&de[0]) : F(&sp[0]);
        for (int64_t x = 0; x < c.d; x++)
            ck_assert_double_eq_tol(F(&out[0])[i * c.d + x], src[i * c.d + x], 2e-5);
    }
    release_n(out, 3);
    sl_tensor half[6] = {sp[0], sp[1], rest[0], rest[1], q2};
    expect_fail(ctx, SL_OP_CORRECT_CACHE_REUSE, &p, half, SL_EARG, "come together");
    sl_tensor bad[6] = {sp[0], sp[1], rest[0], sp[0]};
    expect_fail(ctx, SL_OP_CORRECT_CACHE_REUSE, &p, bad, SL_ESHAPE, "cache_lse");
    sl_tensor_release(&q2);
    release_n(sp, 2);
    release_n(de, 2);
    release_n(rest, 2);
    sl_mask_release(&win);
    sl_mask_release(&causal);
    sl_mask_release(&out_m);
    release_n(qkv, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* correct.linear_branch: backends against ref (gate per head or shared,
 * projection or not, convex or not); gate 0 gives o exactly; the formula in
 * float64 here; gates outside [0, 1] rejected. */
START_TEST(test_linear_branch)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7300);
    int64_t h = 3, n = 41, d = 12, sh[3] = {h, n, d}, gs[1] = {h}, g1[1] = {1}, ps[3] = {h, d, d};
    sl_tensor o = randn_shape(ctx, &rng, 3, sh, 1), ol = randn_shape(ctx, &rng, 3, sh, 1);
    sl_tensor gate = f32_new(ctx, 1, gs), gate1 = f32_new(ctx, 1, g1), proj = randn_shape(ctx, &rng, 3, ps, 0.3);
    for (int64_t i = 0; i < h; i++)
        F(&gate)[i] = (float)sl_rng_uniform(&rng);
    F(&gate1)[0] = 0.f;
    for (int convex = 0; convex < 2; convex++)
        for (int with_p = 0; with_p < 2; with_p++) {
            sl_correct_linear_params p = {.convex = convex};
            sl_tensor in[4] = {o, ol, gate, with_p ? proj : (sl_tensor){0}}, out[1];
            check_vs_ref(ctx, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, 1e-5, "linear_branch");
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, out), SL_OK);
            for (int64_t i = 0; i < h * n; i++)
                for (int64_t x = 0; x < d; x++) {
                    double g = F(&gate)[i / n], y = F(&ol)[i * d + x];
                    if (with_p) {
                        y = 0;
                        for (int64_t e = 0; e < d; e++)
                            y += (double)F(&proj)[(i / n) * d * d + x * d + e] * F(&ol)[i * d + e];
                    }
                    double want = (convex ? 1 - g : 1) * F(&o)[i * d + x] + g * y;
                    ck_assert_double_eq_tol(F(&out[0])[i * d + x], want, 1e-5);
                }
            sl_tensor_release(&out[0]);
            /* gate 0: the sparse branch exactly */
            in[2] = gate1;
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, out), SL_OK);
            ck_assert_int_eq(memcmp(out[0].data, o.data, (size_t)(h * n * d) * sizeof(float)), 0);
            sl_tensor_release(&out[0]);
        }
    sl_correct_linear_params p = {0};
    F(&gate1)[0] = 1.5f;
    sl_tensor in[4] = {o, ol, gate1};
    expect_fail(ctx, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, SL_EARG, "outside [0, 1]");
    int64_t g2[1] = {2};
    sl_tensor gate2 = f32_new(ctx, 1, g2);
    F(&gate2)[0] = F(&gate2)[1] = 0.5f;
    in[2] = gate2;
    expect_fail(ctx, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, SL_ESHAPE, "one per head");
    sl_tensor_release(&gate2);
    sl_tensor_release(&o);
    sl_tensor_release(&ol);
    sl_tensor_release(&gate);
    sl_tensor_release(&gate1);
    sl_tensor_release(&proj);
    tu_ctx_done(ctx, &al);
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
    sl_tensor in[3] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    for (int feature = 0; feature < 2; feature++) {
        sl_attn_linear_params p = {.causal = c->causal, .feature = feature};
        check_vs_ref(ctx, SL_OP_ATTN_LINEAR, &p, in, 1e-5, "attn.linear");
    }
    sl_attn_linear_params p = {.causal = 1, .feature = 0};
    sl_tensor out[1];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_LINEAR, &p, in, out), SL_OK);
    if (c->nq == c->nk)
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t x = 0; x < c->d; x++)
                ck_assert_double_eq_tol(F(&out[0])[h * c->nq * c->d + x],
                                        F(&in[2])[(h / (c->hq / c->hkv)) * c->nk * c->d + x], 1e-6);
    sl_tensor_release(&out[0]);
    /* constant value rows: every output row is that constant */
    for (int64_t i = 0; i < sl_tensor_numel(&in[2]); i++)
        F(&in[2])[i] = (float)(1.0 + (double)(i % c->d));
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_LINEAR, &p, in, out), SL_OK);
    for (int64_t i = 0; i < c->hq * c->nq; i++)
        for (int64_t x = 0; x < c->d; x++)
            ck_assert_double_eq_tol(F(&out[0])[i * c->d + x], 1.0 + (double)x, 1e-4 * (1.0 + (double)x));
    sl_tensor_release(&out[0]);
    F(&in[1])[0] = NAN;
    expect_fail(ctx, SL_OP_ATTN_LINEAR, &p, in, SL_EARG, "NaN");
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static sl_tensor levels_new(sl_ctx *ctx, int64_t hm, int64_t nqb, int64_t nkb)
{
    sl_tensor t;
    int64_t s[3] = {hm, nqb, nkb};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, s, &t), SL_OK);
    return t;
}

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
    sl_tensor in[4] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    sl_attn_pooled_params p = {.bq = 16, .bk = 8, .causal = c->causal, .scale = 0};
    int64_t nqb = (c->nq + 15) / 16, nkb = (c->nk + 7) / 8;
    static const uint8_t choice[5] = {0, 1, 2, 4, 8};
    for (int per_head = 0; per_head < 2; per_head++) {
        in[3] = levels_new(ctx, per_head ? c->hq : 1, nqb, nkb);
        for (int64_t i = 0; i < sl_tensor_numel(&in[3]); i++)
            ((uint8_t *)in[3].data)[i] = choice[sl_rng_next(&rng) % 5];
        check_vs_ref(ctx, SL_OP_ATTN_POOLED_KV, &p, in, 1e-5, "pooled_kv random levels");
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
        ck_assert(isinf(F(&out[1])[i]) && F(&out[1])[i] < 0 && F(&out[0])[i * c->d] == 0.f);
    release_n(out, 2);
    /* groups of 4 identical keys and values, not causal (groups never split by
     * the causal cut): level 4 equals level 1 */
    sl_attn_pooled_params pn = p;
    pn.causal = 0;
    for (int64_t g = 0; g < c->hkv; g++)
        for (int64_t j = 0; j < c->nk; j++)
            for (int64_t x = 0; x < c->d; x++) {
                int64_t src = (g * c->nk + (j / 4) * 4) * c->d + x;
                F(&in[1])[(g * c->nk + j) * c->d + x] = F(&in[1])[src];
                F(&in[2])[(g * c->nk + j) * c->d + x] = F(&in[2])[src];
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

static Suite *correct_ext_suite(void)
{
    Suite *s = suite_create("correct_ext_ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_reshape, 0, N_CASES);
    tcase_add_loop_test(tc, test_cache_reuse, 0, N_CASES);
    tcase_add_test(tc, test_linear_branch);
    tcase_add_loop_test(tc, test_attn_linear, 0, N_CASES);
    tcase_add_loop_test(tc, test_pooled_kv, 0, N_CASES);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(correct_ext_suite()); }
