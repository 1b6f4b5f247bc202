/* test_correct_ops.c — the corrections (correct.*) on every available
 * backend against ref (sentinel allocator, NaN and shape rejection, edge
 * sizes), and their closed forms computed here with plain loops from the
 * contracts in sparselab.h: correct.delta's sampled and tail rows are the
 * dense rows bit for bit and the other rows follow the delta rule;
 * correct.rectify reproduces dense attention with token pooling, with
 * block-constant Q and K, and with a full mask, its weights summing to one,
 * and trusts no block on iid noise; correct.compensate's exact SDC gives the
 * dense L and scales O by e^{L - L_full}; smooth_k's keys have mean zero and
 * its shifted L is the dense L; lepe's box filter. */
#include "opsutil.h"

/* The layout of the delta_attention card, derived here independently:
 * n_tail = (n mod gamma) + max(tail, gamma) clamped to n; groups cover
 * [0, n - n_tail) in steps of gamma. */
static void delta_layout(int64_t n, int64_t gamma, int64_t tail, int64_t *s_p, int64_t *groups, int64_t *n_tail)
{
    int64_t t = n % gamma + (tail > gamma ? tail : gamma);
    *n_tail = t < n ? t : n;
    *s_p = n - *n_tail;
    *groups = 0;
    for (int64_t i = 0; i < *s_p; i += gamma)
        (*groups)++;
}

static sl_tensor lse_tensor(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t n, int with_neg_inf)
{
    sl_tensor t;
    int64_t sh[2] = {h, n};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, sh, &t), SL_OK);
    for (int64_t i = 0; i < h * n; i++)
        ((float *)t.data)[i] = with_neg_inf && i % 5 == 2 ? -INFINITY : (float)(2.0 * sl_rng_normal(rng));
    return t;
}

typedef struct delta_case { int64_t h, n, d, gamma, tail; } delta_case;

static const delta_case DELTA_CASES[] = {
    {2, 300, 16, 16, 128}, /* the card's layout with a tail of 128 + n mod gamma */
    {3, 200, 8, 24, 10},   /* gamma does not divide 128: a short last group */
    {1, 1000, 32, 64, 128},
    {2, 50, 8, 64, 128},   /* tail clamped to n: every row dense */
    {2, 97, 4, 1, 0},      /* gamma = 1: every row sampled */
    {1, 1, 8, 4, 0},       /* one row */
    {4, 130, 64, 7, 0},    /* tail = n mod gamma + gamma */
};
#define N_DELTA (int)(sizeof DELTA_CASES / sizeof DELTA_CASES[0])

/* Random inputs of one case: in[0..3] = o_sparse, lse_sparse, o_rows, lse_rows. */
static void delta_inputs(sl_ctx *ctx, sl_rng *rng, const delta_case *c, sl_tensor in[4])
{
    int64_t s_p, g, t;
    delta_layout(c->n, c->gamma, c->tail, &s_p, &g, &t);
    in[0] = tu_randn(ctx, rng, c->h, c->n, c->d, 1.0);
    in[1] = lse_tensor(ctx, rng, c->h, c->n, 1);
    in[2] = tu_randn(ctx, rng, c->h, g + t, c->d, 1.0);
    in[3] = lse_tensor(ctx, rng, c->h, g + t, 0);
}

START_TEST(test_delta_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7100 + (uint64_t)_i);
    const delta_case *c = &DELTA_CASES[_i];
    sl_tensor in[4];
    delta_inputs(ctx, &rng, c, in);
    for (int mode = 0; mode < 2; mode++)
        for (int smooth = 0; smooth < 2; smooth++) {
            sl_correct_delta_params p = {.gamma = c->gamma, .tail = c->tail, .smooth = smooth, .mode = mode};
            char what[96];
            snprintf(what, sizeof what, "delta case %d mode %d smooth %d", _i, mode, smooth);
            check_backends(ctx, SL_OP_CORRECT_DELTA, &p, in, what);
        }
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Every backend: sampled and tail rows equal o_rows exactly (and their L),
 * other rows A*[i] + (A[g] - A*[g·gamma]) (smooth: interpolated), L the
 * sparse L there; recompute leaves the other rows untouched. */
START_TEST(test_delta_closed_form)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7200 + (uint64_t)_i);
    const delta_case *c = &DELTA_CASES[_i];
    sl_tensor in[4];
    delta_inputs(ctx, &rng, c, in);
    int64_t s_p, groups, n_tail;
    delta_layout(c->n, c->gamma, c->tail, &s_p, &groups, &n_tail);
    int64_t R = groups + n_tail, d = c->d;
    const float *os = in[0].data, *ls = in[1].data, *orw = in[2].data, *lr = in[3].data;
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int variant = 0; variant < 3; variant++) { /* plain, smooth, recompute */
            sl_correct_delta_params p = {.gamma = c->gamma, .tail = c->tail, .smooth = variant == 1, .mode = variant == 2};
            sl_tensor out[2];
            run_attn(ctx, (sl_backend_id)b, SL_OP_CORRECT_DELTA, &p, in, out);
            const float *o = out[0].data, *l = out[1].data;
            for (int64_t h = 0; h < c->h; h++)
                for (int64_t i = 0; i < c->n; i++) {
                    int64_t row = i >= s_p ? groups + (i - s_p) : (i % c->gamma == 0 ? i / c->gamma : -1);
                    const float *oi = o + (h * c->n + i) * d;
                    if (row >= 0) {
                        ck_assert_msg(memcmp(oi, orw + (h * R + row) * d, (size_t)d * sizeof(float)) == 0,
                                      "%s case %d: row %lld is not dense row %lld", sl_backend_name((sl_backend_id)b),
                                      _i, (long long)i, (long long)row);
                        ck_assert_msg(l[h * c->n + i] == lr[h * R + row], "L of dense row %lld", (long long)i);
                        continue;
                    }
                    float li = l[h * c->n + i], lsi = ls[h * c->n + i];
                    ck_assert_msg(li == lsi || (isinf(li) && isinf(lsi)), "L of row %lld is the sparse L", (long long)i);
                    int64_t g = i / c->gamma, g2 = g + 1 < groups ? g + 1 : g;
                    double r = variant == 1 ? (double)(i % c->gamma) / (double)c->gamma : 0;
                    for (int64_t k = 0; k < d; k++) {
                        double si = os[(h * c->n + i) * d + k];
                        double d1 = (double)orw[(h * R + g) * d + k] - os[(h * c->n + g * c->gamma) * d + k];
                        double d2 = (double)orw[(h * R + g2) * d + k] - os[(h * c->n + g2 * c->gamma) * d + k];
                        double want = variant == 2 ? si : si + (1 - r) * d1 + r * d2;
                        if (!(fabs(oi[k] - want) <= 2e-6 * (1 + fabs(want))))
                            ck_abort_msg("%s case %d variant %d: O[%lld, %lld, %lld] = %.9g, expected %.9g",
                                         sl_backend_name((sl_backend_id)b), _i, variant, (long long)h, (long long)i,
                                         (long long)k, oi[k], want);
                    }
                }
            release_n(out, 2);
        }
    }
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* FLOPs: one subtraction per delta element, one add per other element before s_p. */
START_TEST(test_delta_flops)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7300);
    delta_case c = {2, 4096, 16, 64, 128};
    sl_tensor in[4];
    delta_inputs(ctx, &rng, &c, in);
    sl_correct_delta_params p = {.gamma = 64, .tail = 128};
    /* 3968 rows before the tail, 62 groups */
    ck_assert(fabs(sl_op_flops(SL_OP_CORRECT_DELTA, &p, in) - 2.0 * 16 * 3968) < 1e-9);
    p.mode = 1;
    ck_assert(sl_op_flops(SL_OP_CORRECT_DELTA, &p, in) == 0);
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_delta_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7400);
    delta_case c = {2, 300, 8, 16, 128};
    sl_tensor in[4], out[2] = {{0}};
    delta_inputs(ctx, &rng, &c, in);
    sl_correct_delta_params p = {.gamma = 16, .tail = 128};
#define EXPECT(st, text)                                                                                       \
    do {                                                                                                       \
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out), st);                \
        ck_assert_msg(strncmp(sl_ctx_error(ctx), "correct.delta", 13) == 0, "%s", sl_ctx_error(ctx));          \
        ck_assert_msg(strstr(sl_ctx_error(ctx), text), "%s", sl_ctx_error(ctx));                              \
        ck_assert_ptr_null(out[0].buf);                                                                        \
    } while (0)
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out), SL_OK);
    release_n(out, 2);
    p.gamma = 32; /* rows were made for gamma 16 */
    EXPECT(SL_ESHAPE, "o_rows and lse_rows must be");
    p.gamma = 0;
    EXPECT(SL_EARG, "parameter 'gamma'");
    p.gamma = 16;
    ((float *)in[0].data)[17] = NAN;
    EXPECT(SL_EARG, "o_sparse");
    ((float *)in[0].data)[17] = 0.5f;
    ((float *)in[3].data)[3] = INFINITY;
    EXPECT(SL_EARG, "+inf");
    ((float *)in[3].data)[3] = -INFINITY; /* an empty dense row is allowed */
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out), SL_OK);
    release_n(out, 2);
    sl_tensor keep = in[1];
    in[1] = lse_tensor(ctx, &rng, 2, 299, 0);
    EXPECT(SL_ESHAPE, "lse_sparse must be [2, 300]");
    sl_tensor_release(&in[1]);
    in[1] = keep;
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
#undef EXPECT
}
END_TEST

START_TEST(test_correct_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 20; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 7500);
        delta_case c = {2, 100, 8, 8, 16};
        sl_tensor in[4], out[2] = {{0}};
        delta_inputs(ctx, &rng, &c, in);
        al.fail_at = al.calls + fail;
        sl_correct_delta_params p = {.gamma = 8, .tail = 16};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out);
        ck_assert(s == SL_OK || s == SL_ENOMEM);
        if (s == SL_OK)
            release_n(out, 2);
        al.fail_at = 0;
        release_n(in, 4);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

/* ---- correct.rectify, correct.compensate, correct.smooth_k, correct.lepe ---- */

/* Runs op on ref and every other wanted backend; n_out outputs compared
 * within tol relative to each output's scale (infinities must match). */
static void check_outputs_n(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, int n_out, const char *what)
{
    sl_tensor ref[4], out[4];
    ck_assert_msg(sl_op_run(ctx, SL_BACKEND_REF, op, p, in, ref) == SL_OK, "%s on ref: %s", what, sl_ctx_error(ctx));
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int b = 0; b < nb; b++) {
        sl_status s = sl_op_run(ctx, bs[b], op, p, in, out);
        if (s == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU) {
            printf("SKIP %s on %s: %s\n", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
        for (int o = 0; o < n_out; o++) {
            int64_t n = sl_tensor_numel(&ref[o]);
            ck_assert_int_eq(sl_tensor_numel(&out[o]), n);
            double scale = 1e-30;
            for (int64_t i = 0; i < n; i++)
                if (isfinite(tu_at(&ref[o], i)))
                    scale = fmax(scale, fabs(tu_at(&ref[o], i)));
            for (int64_t i = 0; i < n; i++) {
                float x = tu_at(&out[o], i), y = tu_at(&ref[o], i);
                if (isnan(x) || (isinf(y) ? x != y : !(fabs(x - y) <= 2e-5 * fmax(scale, 1.0))))
                    ck_abort_msg("%s on %s: output %d [%lld] = %.9g, ref %.9g", what, sl_backend_name(bs[b]), o,
                                 (long long)i, x, y);
            }
        }
        release_n(out, n_out);
    }
    release_n(ref, n_out);
}

/* Block masks of the rectify cases: 0 a causal window (token edges, the
 * diagonal kept), 1 sinks + a short window, 2 causal (every block),
 * 3 and 4 the whole blocks a window touches (3: ∩ causal). */
static void rect_mask(sl_ctx *ctx, int kind, int64_t nq, int64_t nk, int bq, int bk, sl_mask *m)
{
    if (kind == 0) {
        mask_of(ctx, SL_PAT_WINDOW, 2 * bk + 3, nq, nk, bq, bk, m);
        return;
    }
    if (kind == 2) {
        mask_of(ctx, SL_PAT_CAUSAL, 0, nq, nk, bq, bk, m);
        return;
    }
    if (kind == 3 || kind == 4) { /* whole blocks of a window (3: ∩ causal, the diagonal partial) */
        sl_mask w, c, wc;
        mask_of(ctx, SL_PAT_WINDOW, 2 * bk + 3, nq, nk, bq, bk, &w);
        ck_assert_int_eq(sl_mask_coarsen(ctx, &w, bq, bk, &wc), SL_OK);
        sl_mask_release(&w);
        if (kind == 4) {
            *m = wc;
            return;
        }
        mask_of(ctx, SL_PAT_CAUSAL, 0, nq, nk, bq, bk, &c);
        ck_assert_int_eq(sl_mask_intersect(ctx, &wc, &c, m), SL_OK);
        sl_mask_release(&wc);
        sl_mask_release(&c);
        return;
    }
    sl_pattern_term t[2] = {{.kind = SL_PAT_SINK, .a = bk}, {.kind = SL_PAT_WINDOW, .a = bk}};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, t, 2, nq, nk, bq, bk, m), SL_OK);
}

static void block_sparse_out(sl_ctx *ctx, const sl_tensor *in, const sl_mask *m, sl_tensor *o)
{
    sl_tensor bin[7] = {in[0], in[1], in[2]}, out[2];
    sl_mask_inputs(m, &in[0], &in[1], &in[2], bin);
    sl_attn_block_params p = {.bq = m->bq, .bk = m->bk};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &p, bin, out);
    *o = out[0];
    sl_tensor_release(&out[1]);
}

START_TEST(test_rectify_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7600 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    int blocks[3][2] = {{16, 16}, {8, 24}, {1, 1}};
    for (int bi = 0; bi < 3; bi++)
        for (int kind = 0; kind < 2; kind++) {
            sl_tensor in[8] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0),
                               tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
            sl_mask m;
            rect_mask(ctx, kind, c->nq, c->nk, blocks[bi][0], blocks[bi][1], &m);
            sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
            block_sparse_out(ctx, in, &m, &in[7]);
            for (int variant = 0; variant < 3; variant++) {
                sl_correct_rectify_params p = {.bq = m.bq, .bk = m.bk, .causal = c->causal, .ipar = variant != 1,
                                               .gapr = variant != 2};
                char what[96];
                snprintf(what, sizeof what, "rectify case %d blocks %d mask %d variant %d", _i, bi, kind, variant);
                check_outputs_n(ctx, SL_OP_CORRECT_RECTIFY, &p, in, 4, what);
            }
            sl_tensor_release(&in[7]);
            sl_tensor_release(&in[0]);
            sl_tensor_release(&in[1]);
            sl_tensor_release(&in[2]);
            sl_mask_release(&m);
        }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Dense attention of the inputs by the ref kernel. */
static sl_tensor dense_out(sl_ctx *ctx, const sl_tensor *in, int causal)
{
    sl_tensor out[2];
    sl_attn_params p = {.causal = causal};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &p, in, out);
    sl_tensor_release(&out[1]);
    return out[0];
}

static double max_diff(const sl_tensor *a, const sl_tensor *b)
{
    double e = 0;
    for (int64_t i = 0; i < sl_tensor_numel(a); i++)
        e = fmax(e, fabs(tu_at(a, i) - tu_at(b, i)));
    return e;
}

/* The card's exactness checks on every backend: bq = bk = 1 (token pooling)
 * reproduces dense for any mask; Q and K constant within blocks reproduce
 * dense (non-causal, and causal with the diagonal kept); r + restored = 1
 * with 0 < r <= 1; a mask keeping every block is a no-op. */
START_TEST(test_rectify_exact_cases)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7700);
    int64_t hq = 4, hkv = 2, n = 48, d = 8;
    for (int setup = 0; setup < 5; setup++) {
        /* 0, 1: bq = bk = 1 (causal, not); 2, 3: block-constant Q, K, blocks 8 (causal, not); 4: full mask */
        int causal = setup % 2 == 0, b = setup < 2 ? 1 : 8;
        sl_tensor in[8] = {tu_randn(ctx, &rng, hq, n, d, 1.0), tu_randn(ctx, &rng, hkv, n, d, 1.0),
                           tu_randn(ctx, &rng, hkv, n, d, 1.0)};
        if (setup == 2 || setup == 3)
            for (int t = 0; t < 2; t++) { /* copy each block's first row over the block */
                float *x = in[t].data;
                int64_t heads = in[t].shape[0];
                for (int64_t h = 0; h < heads; h++)
                    for (int64_t i = 0; i < n; i++)
                        memcpy(x + (h * n + i) * d, x + (h * n + (i / b) * b) * d, (size_t)d * sizeof(float));
            }
        sl_mask m;
        if (setup == 4)
            rect_mask(ctx, 2, n, n, 8, 8, &m);
        else
            rect_mask(ctx, setup < 2 ? 1 : setup == 2 ? 3 : 4, n, n, b, b, &m);
        sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
        block_sparse_out(ctx, in, &m, &in[7]);
        sl_tensor dense = dense_out(ctx, in, causal);
        ck_assert_msg(max_diff(&in[7], &dense) > 1e-2 || setup == 4, "setup %d: the mask must drop something", setup);
        for (int be = 0; be < SL_BACKEND__COUNT; be++) {
            if (!sl_backend_available((sl_backend_id)be) || !backend_wanted((sl_backend_id)be))
                continue;
            sl_correct_rectify_params p = {.bq = m.bq, .bk = m.bk, .causal = causal, .ipar = 1, .gapr = 1};
            sl_tensor out[4];
            ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)be, SL_OP_CORRECT_RECTIFY, &p, in, out), SL_OK);
            double e = max_diff(&out[0], &dense);
            ck_assert_msg(e < 1e-5, "%s setup %d: rectified O differs from dense by %g", sl_backend_name((sl_backend_id)be),
                          setup, e);
            for (int64_t i = 0; i < hq * n; i++) {
                float r = tu_at(&out[1], i), rest = tu_at(&out[2], i);
                ck_assert_msg(r > 0 && r <= 1 + 1e-6 && fabs(r + rest - 1) < 1e-6, "setup %d row %lld: R %g restored %g",
                              setup, (long long)i, r, rest);
                if (setup == 4)
                    ck_assert_msg(r == 1 && rest == 0, "full mask: R %g restored %g", r, rest);
            }
            release_n(out, 4);
        }
        sl_tensor_release(&dense);
        sl_tensor_release(&in[7]);
        release_n(in, 3);
        sl_mask_release(&m);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* iid Gaussian Q, K with blocks of 16: GAPR trusts no dropped block, so the
 * output is the plain block-sparse output (R = 1); without GAPR every
 * dropped block is restored. */
START_TEST(test_rectify_gapr_trusts_nothing_on_noise)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7800);
    int64_t n = 128, d = 16;
    sl_tensor in[8] = {tu_randn(ctx, &rng, 2, n, d, 1.0), tu_randn(ctx, &rng, 1, n, d, 1.0), tu_randn(ctx, &rng, 1, n, d, 1.0)};
    sl_mask m;
    rect_mask(ctx, 0, n, n, 16, 16, &m);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    block_sparse_out(ctx, in, &m, &in[7]);
    sl_correct_rectify_params p = {.bq = 16, .bk = 16, .causal = 1, .ipar = 1, .gapr = 1};
    sl_tensor out[4];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_RECTIFY, &p, in, out), SL_OK);
    ck_assert_msg(max_diff(&out[0], &in[7]) < 1e-6, "no trusted block: O = O*, found diff %g", max_diff(&out[0], &in[7]));
    for (int64_t i = 0; i < sl_tensor_numel(&out[3]); i++)
        ck_assert(tu_at(&out[3], i) == 0);
    release_n(out, 4);
    p.gapr = 0;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_RECTIFY, &p, in, out), SL_OK);
    double restored = 0;
    for (int64_t i = 0; i < sl_tensor_numel(&out[3]); i++)
        restored += tu_at(&out[3], i);
    ck_assert_msg(restored > 0 && max_diff(&out[0], &in[7]) > 1e-3, "without GAPR dropped blocks are restored");
    release_n(out, 4);
    sl_tensor_release(&in[7]);
    release_n(in, 3);
    sl_mask_release(&m);
    tu_ctx_done(ctx, &al);
}
END_TEST

static sl_tensor f32_2d(sl_ctx *ctx, int64_t a, int64_t b)
{
    sl_tensor t;
    int64_t sh[2] = {a, b};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, sh, &t), SL_OK);
    return t;
}

/* Backends against ref on random inputs with kept L below the full L, some
 * empty rows (-inf), decode offsets; and the card's closed forms. */
START_TEST(test_compensate)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7900 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[4] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), f32_2d(ctx, c->hq, c->nq), f32_2d(ctx, c->hq, c->nq),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    for (int64_t i = 0; i < c->hq * c->nq; i++) {
        float full = (float)(3 * sl_rng_normal(&rng));
        ((float *)in[2].data)[i] = full;
        ((float *)in[1].data)[i] = i % 6 == 1 ? -INFINITY : full - (float)(2 * sl_rng_uniform(&rng));
    }
    for (int estimate = 0; estimate < 2; estimate++)
        for (int vmc = 0; vmc < 2; vmc++) {
            sl_correct_comp_params p = {.sdc_scale = estimate ? 0.5 : 1.0, .estimate = estimate, .vmc = vmc,
                                        .causal = c->causal, .min_len = _i % 2 ? 3 : 0};
            char what[80];
            snprintf(what, sizeof what, "compensate case %d estimate %d vmc %d", _i, estimate, vmc);
            check_outputs_n(ctx, SL_OP_CORRECT_COMPENSATE, &p, in, 3, what);
        }
    /* closed forms (exact estimate, c = 1): without VMC, O = o·e^{L - L_full} and L = L_full */
    sl_correct_comp_params p = {.sdc_scale = 1, .estimate = 0, .vmc = 0, .causal = c->causal};
    sl_tensor out[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_COMPENSATE, &p, in, out), SL_OK);
    for (int64_t r = 0; r < c->hq * c->nq; r++) {
        double L = tu_at(&in[1], r), F = tu_at(&in[2], r), f = isinf(L) ? 0 : exp(L - F);
        ck_assert_msg(fabs(tu_at(&out[1], r) - F) < 1e-5 * fmax(1, fabs(F)), "L = L_full at row %lld", (long long)r);
        ck_assert_msg(fabs(tu_at(&out[2], r) - (1 - f)) < 1e-6, "lost mass at row %lld", (long long)r);
        for (int64_t k = 0; k < c->d; k++)
            ck_assert(fabs(tu_at(&out[0], r * c->d + k) - f * tu_at(&in[0], r * c->d + k)) < 1e-6);
    }
    release_n(out, 3);
    /* with VMC the lost mass goes to the causal mean of V: constant V rows give o_const exactly */
    float *v = in[3].data;
    for (int64_t i = 0; i < sl_tensor_numel(&in[3]); i++)
        v[i] = (float)(1 + (i % c->d));
    float *o = in[0].data;
    for (int64_t i = 0; i < sl_tensor_numel(&in[0]); i++)
        o[i] = (float)(1 + (i % c->d));
    p.vmc = 1;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_COMPENSATE, &p, in, out), SL_OK);
    ck_assert_msg(max_diff(&out[0], &in[0]) < 1e-5, "constant V: O = V row, diff %g", max_diff(&out[0], &in[0]));
    release_n(out, 3);
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Backends against ref; K' has mean zero per channel; attention over K'
 * equals attention over K and L + shift equals dense L. */
START_TEST(test_smooth_k)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[3] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    float *k = in[1].data;
    for (int64_t i = 0; i < sl_tensor_numel(&in[1]); i++)
        k[i] += (float)(i % c->d) * 0.5f; /* a common offset per channel, what smoothing removes */
    sl_correct_smooth_params p = {.scale = 0};
    check_outputs_n(ctx, SL_OP_CORRECT_SMOOTH_K, &p, in, 2, "smooth_k without lse");
    sl_tensor v = tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0);
    sl_tensor dq[3] = {in[0], in[1], v}, dense[2];
    sl_attn_params pa = {.causal = c->causal};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pa, dq, dense);
    sl_tensor sm[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_SMOOTH_K, &p, in, sm), SL_OK);
    for (int64_t g = 0; g < c->hkv; g++)
        for (int64_t ch = 0; ch < c->d; ch++) {
            double m = 0;
            for (int64_t j = 0; j < c->nk; j++)
                m += tu_at(&sm[0], (g * c->nk + j) * c->d + ch);
            ck_assert_msg(fabs(m / (double)c->nk) < 1e-5, "K' mean %g", m / (double)c->nk);
        }
    sl_tensor sq[3] = {in[0], sm[0], v}, smoothed[2];
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pa, sq, smoothed);
    ck_assert_msg(max_diff(&smoothed[0], &dense[0]) < 1e-5, "O over K' = O over K");
    in[2] = smoothed[1];
    check_outputs_n(ctx, SL_OP_CORRECT_SMOOTH_K, &p, in, 2, "smooth_k with lse");
    sl_tensor back[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_SMOOTH_K, &p, in, back), SL_OK);
    for (int64_t r = 0; r < c->hq * c->nq; r++)
        ck_assert_msg(fabs(tu_at(&back[1], r) - tu_at(&dense[1], r)) < 1e-4 * fmax(1, fabs(tu_at(&dense[1], r))),
                      "row %lld: shifted L %g, dense L %g", (long long)r, tu_at(&back[1], r), tu_at(&dense[1], r));
    release_n(back, 2);
    release_n(smoothed, 2);
    release_n(sm, 2);
    release_n(dense, 2);
    sl_tensor_release(&v);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Backends against ref (with and without weights, both tap layouts) and the
 * box filter written out with plain loops. */
START_TEST(test_lepe)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8100 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[3] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    for (int causal = 0; causal < 2; causal++)
        for (int kernel = 1; kernel <= 6; kernel += 5)
            for (int weights = 0; weights < 2; weights++) {
                in[2] = weights ? tu_randn(ctx, &rng, weights == 1 ? 1 : c->hq, kernel, c->d, 1.0) : (sl_tensor){0};
                sl_correct_lepe_params p = {.kernel = kernel, .causal = causal, .alpha = 0.7};
                char what[80];
                snprintf(what, sizeof what, "lepe case %d causal %d kernel %d w %d", _i, causal, kernel, weights);
                check_outputs_n(ctx, SL_OP_CORRECT_LEPE, &p, in, 1, what);
                if (weights)
                    sl_tensor_release(&in[2]);
            }
    in[2] = (sl_tensor){0};
    sl_correct_lepe_params p = {.kernel = 5, .causal = 1, .alpha = 2};
    sl_tensor out;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_LEPE, &p, in, &out), SL_OK);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t i = 0; i < c->nq; i++)
            for (int64_t ch = 0; ch < c->d; ch++) {
                int64_t pos = c->nk - c->nq + i, g = h / (c->hq / c->hkv);
                double want = tu_at(&in[0], (h * c->nq + i) * c->d + ch);
                for (int64_t j = pos - 4; j <= pos; j++)
                    if (j >= 0)
                        want += 2.0 / 5.0 * tu_at(&in[1], (g * c->nk + j) * c->d + ch);
                ck_assert(fabs(tu_at(&out, (h * c->nq + i) * c->d + ch) - want) < 1e-5 * (1 + fabs(want)));
            }
    sl_tensor_release(&out);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_correct_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8200);
    int64_t n = 40, d = 8;
    sl_tensor in[8] = {tu_randn(ctx, &rng, 4, n, d, 1.0), tu_randn(ctx, &rng, 2, n, d, 1.0), tu_randn(ctx, &rng, 2, n, d, 1.0)};
    sl_tensor out[4] = {{0}};
    sl_mask m;
    rect_mask(ctx, 0, n, n, 8, 8, &m);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    block_sparse_out(ctx, in, &m, &in[7]);
    sl_correct_rectify_params pr = {.bq = 8, .bk = 8, .causal = 1, .ipar = 1, .gapr = 1};
#define EXPECT(op, params, args, st, text)                                                                   \
    do {                                                                                                     \
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, op, params, args, out), st);                         \
        ck_assert_msg(strncmp(sl_ctx_error(ctx), sl_op_info_get(op)->name, strlen(sl_op_info_get(op)->name)) == 0, \
                      "%s", sl_ctx_error(ctx));                                                              \
        ck_assert_msg(strstr(sl_ctx_error(ctx), text), "%s", sl_ctx_error(ctx));                            \
        ck_assert_ptr_null(out[0].buf);                                                                      \
    } while (0)
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_RECTIFY, &pr, in, out), SL_OK);
    release_n(out, 4);
    ((float *)in[7].data)[5] = NAN;
    EXPECT(SL_OP_CORRECT_RECTIFY, &pr, in, SL_EARG, "o_sparse");
    ((float *)in[7].data)[5] = 0;
    ((float *)in[1].data)[5] = NAN;
    EXPECT(SL_OP_CORRECT_RECTIFY, &pr, in, SL_EARG, "'k'");
    ((float *)in[1].data)[5] = 0;
    sl_tensor keep = in[7];
    in[7] = tu_randn(ctx, &rng, 4, n - 1, d, 1.0);
    EXPECT(SL_OP_CORRECT_RECTIFY, &pr, in, SL_ESHAPE, "o_sparse' must be [4, 40, 8]");
    sl_tensor_release(&in[7]);
    in[7] = keep;
    pr.bq = 16; /* not the mask's */
    EXPECT(SL_OP_CORRECT_RECTIFY, &pr, in, SL_ESHAPE, "");
    /* compensate */
    sl_tensor cin[4] = {in[0], f32_2d(ctx, 4, n), f32_2d(ctx, 4, n), in[2]};
    for (int64_t i = 0; i < 4 * n; i++)
        ((float *)cin[1].data)[i] = ((float *)cin[2].data)[i] = 1.0f;
    sl_correct_comp_params pc = {.sdc_scale = 1, .vmc = 1, .causal = 1};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_COMPENSATE, &pc, cin, out), SL_OK);
    release_n(out, 3);
    ((float *)cin[2].data)[3] = INFINITY;
    EXPECT(SL_OP_CORRECT_COMPENSATE, &pc, cin, SL_EARG, "+inf");
    ((float *)cin[2].data)[3] = NAN;
    EXPECT(SL_OP_CORRECT_COMPENSATE, &pc, cin, SL_EARG, "lse_ref");
    ((float *)cin[2].data)[3] = 1;
    pc.sdc_scale = -1;
    EXPECT(SL_OP_CORRECT_COMPENSATE, &pc, cin, SL_EARG, "sdc_scale");
    pc.sdc_scale = 1;
    sl_tensor bad_v = tu_randn(ctx, &rng, 3, n, d, 1.0);
    cin[3] = bad_v;
    EXPECT(SL_OP_CORRECT_COMPENSATE, &pc, cin, SL_ESHAPE, "GQA");
    sl_tensor_release(&bad_v);
    release_n(&cin[1], 2);
    /* smooth_k and lepe */
    sl_tensor sin[3] = {in[0], in[1], f32_2d(ctx, 4, n - 1)};
    sl_correct_smooth_params ps = {0};
    EXPECT(SL_OP_CORRECT_SMOOTH_K, &ps, sin, SL_ESHAPE, "opt.lse' must be [4, 40]");
    sl_tensor_release(&sin[2]);
    sl_tensor lin[3] = {in[0], in[2], tu_randn(ctx, &rng, 1, 4, d, 1.0)};
    sl_correct_lepe_params pl = {.kernel = 5, .causal = 1, .alpha = 1};
    EXPECT(SL_OP_CORRECT_LEPE, &pl, lin, SL_ESHAPE, "opt.w must be [1 or 4, 5, 8]");
    sl_tensor_release(&lin[2]);
    pl.kernel = 0;
    lin[2] = (sl_tensor){0};
    EXPECT(SL_OP_CORRECT_LEPE, &pl, lin, SL_EARG, "kernel");
#undef EXPECT
    sl_tensor_release(&in[7]);
    release_n(in, 3);
    sl_mask_release(&m);
    tu_ctx_done(ctx, &al);
}
END_TEST

static Suite *correct_ops_suite(void)
{
    Suite *s = suite_create("correct_ops");
    TCase *tc = tcase_create("correct_ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_delta_backends_match_ref, 0, N_DELTA);
    tcase_add_loop_test(tc, test_delta_closed_form, 0, N_DELTA);
    tcase_add_test(tc, test_delta_flops);
    tcase_add_test(tc, test_delta_validation);
    tcase_add_test(tc, test_correct_alloc_failures_leak_nothing);
    tcase_add_loop_test(tc, test_rectify_backends_match_ref, 0, N_CASES);
    tcase_add_test(tc, test_rectify_exact_cases);
    tcase_add_test(tc, test_rectify_gapr_trusts_nothing_on_noise);
    tcase_add_loop_test(tc, test_compensate, 0, N_CASES);
    tcase_add_loop_test(tc, test_smooth_k, 0, N_CASES);
    tcase_add_loop_test(tc, test_lepe, 0, N_CASES);
    tcase_add_test(tc, test_correct_validation);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(correct_ops_suite()); }
