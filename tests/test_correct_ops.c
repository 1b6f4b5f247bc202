/* test_correct_ops.c — the corrections (correct.*) on every backend in
 * SL_TEST_BACKENDS against ref (sentinel allocator, NaN and shape rejection,
 * edge sizes), and their closed forms computed here with plain loops from the
 * contracts in sparselab.h: correct.delta's sampled and tail rows are the
 * dense rows bit for bit and the other rows follow the delta rule;
 * correct.rectify reproduces dense attention with token pooling, with
 * block-constant Q and K, and with a full mask, its weights summing to one,
 * and trusts no block on iid noise; correct.compensate's exact SDC gives the
 * dense L and scales O by e^{L - L_full}; smooth_k's keys have mean zero and
 * its shifted L is the dense L; lepe's box filter; correct.reshape's refresh
 * then an unchanged sparse step gives dense; correct.cache_reuse merging a
 * cached disjoint part gives dense; correct.linear_branch with gate 0 is the
 * sparse branch. */
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
    in[1] = lse_random(ctx, rng, c->h, c->n, 2.0, 5, 2);
    in[2] = tu_randn(ctx, rng, c->h, g + t, c->d, 1.0);
    in[3] = lse_random(ctx, rng, c->h, g + t, 2.0, 0, 0);
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
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out), SL_OK);
    release_n(out, 2);
    p.gamma = 32; /* rows were made for gamma 16 */
    expect_fail(ctx, SL_OP_CORRECT_DELTA, &p, in, SL_ESHAPE, "o_rows and lse_rows must be");
    p.gamma = 0;
    expect_fail(ctx, SL_OP_CORRECT_DELTA, &p, in, SL_EARG, "parameter 'gamma'");
    p.gamma = 16;
    ((float *)in[0].data)[17] = NAN;
    expect_fail(ctx, SL_OP_CORRECT_DELTA, &p, in, SL_EARG, "o_sparse");
    ((float *)in[0].data)[17] = 0.5f;
    ((float *)in[3].data)[3] = INFINITY;
    expect_fail(ctx, SL_OP_CORRECT_DELTA, &p, in, SL_EARG, "+inf");
    ((float *)in[3].data)[3] = -INFINITY; /* an empty dense row is allowed */
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out), SL_OK);
    release_n(out, 2);
    sl_tensor keep = in[1];
    in[1] = lse_random(ctx, &rng, 2, 299, 2.0, 0, 0);
    expect_fail(ctx, SL_OP_CORRECT_DELTA, &p, in, SL_ESHAPE, "lse_sparse must be [2, 300]");
    sl_tensor_release(&in[1]);
    in[1] = keep;
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
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
            sl_tensor in[8] = {{0}};
    qkv_of(ctx, &rng, c, 1.0, in);
            sl_mask m;
            rect_mask(ctx, kind, c->nq, c->nk, blocks[bi][0], blocks[bi][1], &m);
            sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
            block_sparse_out(ctx, in, &m, &in[7]);
            for (int variant = 0; variant < 4; variant++) {
                /* variant 3: causal means off (the all-keys reading); 0-2 with causal means */
                sl_correct_rectify_params p = {.bq = m.bq, .bk = m.bk, .causal = c->causal, .ipar = variant != 1,
                                               .gapr = variant != 2, .causal_means = variant != 3};
                char what[96];
                snprintf(what, sizeof what, "rectify case %d blocks %d mask %d variant %d", _i, bi, kind, variant);
                check_op_vs_ref(ctx, SL_OP_CORRECT_RECTIFY, &p, in, 2e-5, what);
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

/* Causal means (the default): no row's correction reads a key after its own
 * position — changing K and V after position p leaves rows <= p unchanged on
 * every backend, and equal to the independent float64 rectification written
 * here for the row that sees its diagonal block in part; with causal_means
 * = 0 (the earlier reading: the block's mean over all its keys) the rows
 * before p in p's block do change. */
static void rect_row_indep(const sl_tensor *in, const sl_mask *m, int gapr, int64_t h, int64_t i, double *o_out)
{
    int64_t nq = in[0].shape[1], nk = in[1].shape[1], d = in[0].shape[2], hq = in[0].shape[0], hkv = in[1].shape[0];
    int64_t bq = m->bq, bk = m->bk, g = h / (hq / hkv), I = i / bq, pos = nk - nq + i, nkb = (nk + bk - 1) / bk;
    const float *q = (const float *)in[0].data + h * nq * d, *k = (const float *)in[1].data + g * nk * d;
    const float *v = (const float *)in[2].data + g * nk * d, *os = (const float *)in[7].data + (h * nq + i) * d;
    double qm[64] = {0}, qe[64] = {0};
    int64_t i0 = I * bq, i1 = i0 + bq < nq ? i0 + bq : nq;
    for (int64_t c = 0; c < d; c++) {
        for (int64_t r = i0; r < i1; r++)
            qm[c] += q[r * d + c] / (double)(i1 - i0);
        for (int64_t r = i0; r < i1; r++)
            qe[c] += fabs(q[r * d + c] - qm[c]) / (double)(i1 - i0);
    }
    double s[64], w[64], vbar[64][64];
    int restored[64];
    double mx = -INFINITY;
    for (int64_t J = 0; J < nkb; J++) {
        int64_t j0 = J * bk, j1 = (j0 + bk < nk ? j0 + bk : nk);
        if (j1 > pos + 1)
            j1 = pos + 1;
        w[J] = 0;
        if (j1 <= j0)
            continue;
        double km[64] = {0}, ke[64] = {0};
        for (int64_t c = 0; c < d; c++) {
            vbar[J][c] = 0;
            for (int64_t r = j0; r < j1; r++) {
                km[c] += k[r * d + c] / (double)(j1 - j0);
                vbar[J][c] += v[r * d + c] / (double)(j1 - j0);
            }
            for (int64_t r = j0; r < j1; r++)
                ke[c] += fabs(k[r * d + c] - km[c]) / (double)(j1 - j0);
        }
        double raw = 0, e1 = 0, e2 = 0;
        for (int64_t c = 0; c < d; c++) {
            raw += qm[c] * km[c];
            e1 += qe[c] * km[c];
            e2 += qm[c] * ke[c];
        }
        int in_m = 0;
        const int32_t *rp = m->row_ptr.data, *ci = m->col_idx.data;
        int64_t mh = h / (hq / m->n_heads);
        for (int32_t e = rp[mh * (m->n_qb + 1) + I]; e < rp[mh * (m->n_qb + 1) + I + 1]; e++)
            in_m |= ci[e] == J;
        restored[J] = !in_m && (!gapr || fabs(raw) > fabs(e1) + fabs(e2));
        s[J] = raw / sqrt((double)d);
        w[J] = (double)(j1 - j0);
        mx = s[J] > mx ? s[J] : mx;
    }
    double z = 0, zc = 0, n[64] = {0};
    for (int64_t J = 0; J < nkb; J++) {
        if (w[J] == 0)
            continue;
        double x = w[J] * exp(s[J] - mx);
        z += x;
        if (!restored[J])
            zc += x;
        else
            for (int64_t c = 0; c < d; c++)
                n[c] += x * vbar[J][c];
    }
    for (int64_t c = 0; c < d; c++)
        o_out[c] = zc / z * os[c] + n[c] / z;
}

START_TEST(test_rectify_causal_means)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7750);
    int64_t n = 96, d = 8, p_cut = 69; /* keys after 69 change; block 4 holds 64..79 and drops block 0 */
    sl_tensor in[8] = {tu_randn(ctx, &rng, 2, n, d, 1.0), tu_randn(ctx, &rng, 1, n, d, 1.0), tu_randn(ctx, &rng, 1, n, d, 1.0)};
    sl_tensor in2[8] = {tu_randn(ctx, &rng, 2, n, d, 1.0), tu_randn(ctx, &rng, 1, n, d, 1.0), tu_randn(ctx, &rng, 1, n, d, 1.0)};
    for (int t = 0; t < 3; t++) /* in2: in with K, V (and Q) after p_cut replaced */
        for (int64_t h = 0; h < in[t].shape[0]; h++)
            memcpy((float *)in2[t].data + h * n * d, (const float *)in[t].data + h * n * d, (size_t)((p_cut + 1) * d) * sizeof(float));
    /* Q after p_cut must stay: q̄ of a block is the mean of all its rows (the card's pooled query) */
    memcpy(in2[0].data, in[0].data, (size_t)(2 * n * d) * sizeof(float));
    sl_mask m;
    rect_mask(ctx, 0, n, n, 16, 16, &m);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    sl_mask_inputs(&m, &in2[0], &in2[1], &in2[2], in2);
    block_sparse_out(ctx, in, &m, &in[7]);
    block_sparse_out(ctx, in2, &m, &in2[7]);
    for (int be = 0; be < SL_BACKEND__COUNT; be++) {
        if (!sl_backend_available((sl_backend_id)be) || !backend_wanted((sl_backend_id)be))
            continue;
        for (int cm = 0; cm < 4; cm++) { /* cm & 1: causal means; cm & 2: GAPR (on noise it trusts nothing) */
            sl_correct_rectify_params p = {.bq = 16, .bk = 16, .causal = 1, .ipar = 1, .gapr = cm >> 1,
                                           .causal_means = cm & 1};
            sl_tensor a[4], b[4];
            ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)be, SL_OP_CORRECT_RECTIFY, &p, in, a), SL_OK);
            ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)be, SL_OP_CORRECT_RECTIFY, &p, in2, b), SL_OK);
            double e = 0;
            for (int64_t h = 0; h < 2; h++)
                for (int64_t i = 0; i <= p_cut; i++)
                    for (int64_t c = 0; c < d; c++) {
                        int64_t at = (h * n + i) * d + c;
                        e = fmax(e, fabs(tu_at(&a[0], at) - tu_at(&b[0], at)));
                    }
            if (cm & 1)
                ck_assert_msg(e < 1e-6, "%s causal means: rows <= %lld moved by %g when later keys changed",
                              sl_backend_name((sl_backend_id)be), (long long)p_cut, e);
            else if (!(cm & 2))
                ck_assert_msg(e > 1e-4, "%s all-keys means: later keys should reach rows of their block (moved %g)",
                              sl_backend_name((sl_backend_id)be), e);
            if (cm & 1) { /* every row against the float64 rectification written above */
                double want[64], err = 0;
                for (int64_t h = 0; h < 2; h++)
                    for (int64_t i = 0; i < n; i++) {
                        rect_row_indep(in, &m, cm >> 1, h, i, want);
                        for (int64_t c = 0; c < d; c++)
                            err = fmax(err, fabs(want[c] - tu_at(&a[0], (h * n + i) * d + c)));
                    }
                ck_assert_msg(err < 2e-5, "%s causal means vs independent float64: %g", sl_backend_name((sl_backend_id)be), err);
            }
            release_n(a, 4);
            release_n(b, 4);
        }
    }
    sl_tensor_release(&in[7]);
    sl_tensor_release(&in2[7]);
    release_n(in, 3);
    release_n(in2, 3);
    sl_mask_release(&m);
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
            check_op_vs_ref(ctx, SL_OP_CORRECT_COMPENSATE, &p, in, 2e-5, what);
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
    check_op_vs_ref(ctx, SL_OP_CORRECT_SMOOTH_K, &p, in, 2e-5, "smooth_k without lse");
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
    check_op_vs_ref(ctx, SL_OP_CORRECT_SMOOTH_K, &p, in, 2e-5, "smooth_k with lse");
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
                check_op_vs_ref(ctx, SL_OP_CORRECT_LEPE, &p, in, 2e-5, what);
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
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_RECTIFY, &pr, in, out), SL_OK);
    release_n(out, 4);
    ((float *)in[7].data)[5] = NAN;
    expect_fail(ctx, SL_OP_CORRECT_RECTIFY, &pr, in, SL_EARG, "o_sparse");
    ((float *)in[7].data)[5] = 0;
    ((float *)in[1].data)[5] = NAN;
    expect_fail(ctx, SL_OP_CORRECT_RECTIFY, &pr, in, SL_EARG, "'k'");
    ((float *)in[1].data)[5] = 0;
    sl_tensor keep = in[7];
    in[7] = tu_randn(ctx, &rng, 4, n - 1, d, 1.0);
    expect_fail(ctx, SL_OP_CORRECT_RECTIFY, &pr, in, SL_ESHAPE, "o_sparse' must be [4, 40, 8]");
    sl_tensor_release(&in[7]);
    in[7] = keep;
    pr.bq = 16; /* not the mask's */
    expect_fail(ctx, SL_OP_CORRECT_RECTIFY, &pr, in, SL_ESHAPE, "");
    /* compensate */
    sl_tensor cin[4] = {in[0], f32_2d(ctx, 4, n), f32_2d(ctx, 4, n), in[2]};
    for (int64_t i = 0; i < 4 * n; i++)
        ((float *)cin[1].data)[i] = ((float *)cin[2].data)[i] = 1.0f;
    sl_correct_comp_params pc = {.sdc_scale = 1, .vmc = 1, .causal = 1};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_COMPENSATE, &pc, cin, out), SL_OK);
    release_n(out, 3);
    ((float *)cin[2].data)[3] = INFINITY;
    expect_fail(ctx, SL_OP_CORRECT_COMPENSATE, &pc, cin, SL_EARG, "+inf");
    ((float *)cin[2].data)[3] = NAN;
    expect_fail(ctx, SL_OP_CORRECT_COMPENSATE, &pc, cin, SL_EARG, "lse_ref");
    ((float *)cin[2].data)[3] = 1;
    pc.sdc_scale = -1;
    expect_fail(ctx, SL_OP_CORRECT_COMPENSATE, &pc, cin, SL_EARG, "sdc_scale");
    pc.sdc_scale = 1;
    sl_tensor bad_v = tu_randn(ctx, &rng, 3, n, d, 1.0);
    cin[3] = bad_v;
    expect_fail(ctx, SL_OP_CORRECT_COMPENSATE, &pc, cin, SL_ESHAPE, "GQA");
    sl_tensor_release(&bad_v);
    release_n(&cin[1], 2);
    /* smooth_k and lepe */
    sl_tensor sin[3] = {in[0], in[1], f32_2d(ctx, 4, n - 1)};
    sl_correct_smooth_params ps = {0};
    expect_fail(ctx, SL_OP_CORRECT_SMOOTH_K, &ps, sin, SL_ESHAPE, "opt.lse' must be [4, 40]");
    sl_tensor_release(&sin[2]);
    sl_tensor lin[3] = {in[0], in[2], tu_randn(ctx, &rng, 1, 4, d, 1.0)};
    sl_correct_lepe_params pl = {.kernel = 5, .causal = 1, .alpha = 1};
    expect_fail(ctx, SL_OP_CORRECT_LEPE, &pl, lin, SL_ESHAPE, "opt.w must be [1 or 4, 5, 8]");
    sl_tensor_release(&lin[2]);
    pl.kernel = 0;
    lin[2] = (sl_tensor){0};
    expect_fail(ctx, SL_OP_CORRECT_LEPE, &pl, lin, SL_EARG, "kernel");
    sl_tensor_release(&in[7]);
    release_n(in, 3);
    sl_mask_release(&m);
    tu_ctx_done(ctx, &al);
}
END_TEST

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
        f32p(&ratio)[i] = (float)sl_rng_uniform(&rng);
    for (int use_ratio = 0; use_ratio < 2; use_ratio++) {
        sl_correct_reshape_params p = {.drift = 0.04, .use_ratio = use_ratio};
        sl_tensor in[6] = {sp[0], sp[1], de[0], de[1]};
        check_op_vs_ref(ctx, SL_OP_CORRECT_RESHAPE, &p, in, 1e-5, "reshape refresh");
        sl_tensor in2[6] = {sp[0], sp[1], {0}, {0}, ratio, res};
        check_op_vs_ref(ctx, SL_OP_CORRECT_RESHAPE, &p, in2, 1e-5, "reshape step");
        in2[5] = (sl_tensor){0};
        check_op_vs_ref(ctx, SL_OP_CORRECT_RESHAPE, &p, in2, 1e-5, "reshape step without residual");
    }
    /* closed forms and the chain, on cpu */
    sl_correct_reshape_params p = {.drift = 0, .use_ratio = 1};
    sl_tensor in[6] = {sp[0], sp[1], de[0], de[1]}, st[3], step[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_RESHAPE, &p, in, st), SL_OK);
    for (int64_t i = 0; i < c.hq * c.nq; i++) {
        double r = exp((double)f32p(&sp[1])[i] - (double)f32p(&de[1])[i]);
        ck_assert_msg(fabs(f32p(&st[1])[i] - r) <= 1e-5 * fmax(1, r), "r[%lld] = %g, expected %g", (long long)i,
                      f32p(&st[1])[i], r);
        ck_assert_msg(r > 0 && r <= 1 + 1e-5, "0 < r <= 1 at refresh: %g", r);
        for (int64_t x = 0; x < c.d; x++) {
            ck_assert(f32p(&st[0])[i * c.d + x] == f32p(&de[0])[i * c.d + x]); /* refresh step = dense exactly */
            double want = (double)f32p(&de[0])[i * c.d + x] - r * (double)f32p(&sp[0])[i * c.d + x];
            ck_assert_double_eq_tol(f32p(&st[2])[i * c.d + x], want, 1e-5);
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
        ck_assert_double_eq_tol(f32p(&step[1])[i], (double)f32p(&st[1])[i] + 0.04, 1e-6);
    release_n(step, 3);
    release_n(st, 3);
    /* errors */
    sl_tensor none[6] = {sp[0], sp[1]};
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, none, SL_EARG, "found neither");
    sl_tensor half[6] = {sp[0], sp[1], de[0]};
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, half, SL_EARG, "come together");
    float save = f32p(&ratio)[0];
    f32p(&ratio)[0] = -0.5f;
    sl_tensor neg[6] = {sp[0], sp[1], {0}, {0}, ratio};
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, neg, SL_EARG, "expected >= 0");
    f32p(&ratio)[0] = NAN;
    expect_fail(ctx, SL_OP_CORRECT_RESHAPE, &p, neg, SL_EARG, "NaN");
    f32p(&ratio)[0] = save;
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
    check_op_vs_ref(ctx, SL_OP_CORRECT_CACHE_REUSE, &p, in, 1e-5, "cache_reuse without q");
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_CACHE_REUSE, &p, in, out), SL_OK);
    assert_attn_close(&out[0], &out[1], &de[0], &de[1], "fresh cache of the complement = dense");
    for (int64_t i = 0; i < c.hq * c.nq; i++)
        ck_assert(f32p(&out[2])[i] == 1.f);
    release_n(out, 3);
    /* query test: rows whose query moved by more than tau keep the sparse pass */
    sl_tensor q2 = tu_randn(ctx, &rng, c.hq, c.nq, c.d, 1.5);
    for (int64_t i = 0; i < c.hq * c.nq; i++)
        for (int64_t x = 0; x < c.d; x++) {
            float *a = f32p(&q2) + i * c.d + x, b = f32p(&qkv[0])[i * c.d + x];
            *a = i % 3 == 0 ? b : i % 3 == 1 ? b + 0.01f * *a : *a; /* same, near, far */
        }
    sl_tensor in2[6] = {sp[0], sp[1], rest[0], rest[1], q2, qkv[0]};
    check_op_vs_ref(ctx, SL_OP_CORRECT_CACHE_REUSE, &p, in2, 1e-5, "cache_reuse with q");
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_CACHE_REUSE, &p, in2, out), SL_OK);
    for (int64_t i = 0; i < c.hq * c.nq; i++) {
        double diff = 0, norm = 0;
        for (int64_t x = 0; x < c.d; x++) {
            double a = f32p(&q2)[i * c.d + x], b = f32p(&qkv[0])[i * c.d + x];
            diff += (a - b) * (a - b);
            norm += b * b;
        }
        int want = sqrt(diff) <= 0.25 * sqrt(norm);
        ck_assert_msg(f32p(&out[2])[i] == (float)want, "row %lld reused %g, expected %d", (long long)i, f32p(&out[2])[i], want);
        const float *src = want ? f32p(&de[0]) : f32p(&sp[0]);
        for (int64_t x = 0; x < c.d; x++)
            ck_assert_double_eq_tol(f32p(&out[0])[i * c.d + x], src[i * c.d + x], 2e-5);
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
        f32p(&gate)[i] = (float)sl_rng_uniform(&rng);
    f32p(&gate1)[0] = 0.f;
    for (int convex = 0; convex < 2; convex++)
        for (int with_p = 0; with_p < 2; with_p++) {
            sl_correct_linear_params p = {.convex = convex};
            sl_tensor in[4] = {o, ol, gate, with_p ? proj : (sl_tensor){0}}, out[1];
            check_op_vs_ref(ctx, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, 1e-5, "linear_branch");
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, out), SL_OK);
            for (int64_t i = 0; i < h * n; i++)
                for (int64_t x = 0; x < d; x++) {
                    double g = f32p(&gate)[i / n], y = f32p(&ol)[i * d + x];
                    if (with_p) {
                        y = 0;
                        for (int64_t e = 0; e < d; e++)
                            y += (double)f32p(&proj)[(i / n) * d * d + x * d + e] * f32p(&ol)[i * d + e];
                    }
                    double want = (convex ? 1 - g : 1) * f32p(&o)[i * d + x] + g * y;
                    ck_assert_double_eq_tol(f32p(&out[0])[i * d + x], want, 1e-5);
                }
            sl_tensor_release(&out[0]);
            /* gate 0: the sparse branch exactly */
            in[2] = gate1;
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, out), SL_OK);
            ck_assert_int_eq(memcmp(out[0].data, o.data, (size_t)(h * n * d) * sizeof(float)), 0);
            sl_tensor_release(&out[0]);
        }
    sl_correct_linear_params p = {0};
    f32p(&gate1)[0] = 1.5f;
    sl_tensor in[4] = {o, ol, gate1};
    expect_fail(ctx, SL_OP_CORRECT_LINEAR_BRANCH, &p, in, SL_EARG, "outside [0, 1]");
    int64_t g2[1] = {2};
    sl_tensor gate2 = f32_new(ctx, 1, g2);
    f32p(&gate2)[0] = f32p(&gate2)[1] = 0.5f;
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

static void add_tests(TCase *tc)
{
    tcase_add_loop_test(tc, test_delta_backends_match_ref, 0, N_DELTA);
    tcase_add_loop_test(tc, test_delta_closed_form, 0, N_DELTA);
    tcase_add_test(tc, test_delta_flops);
    tcase_add_test(tc, test_delta_validation);
    tcase_add_test(tc, test_correct_alloc_failures_leak_nothing);
    tcase_add_loop_test(tc, test_rectify_backends_match_ref, 0, N_CASES);
    tcase_add_test(tc, test_rectify_exact_cases);
    tcase_add_test(tc, test_rectify_causal_means);
    tcase_add_test(tc, test_rectify_gapr_trusts_nothing_on_noise);
    tcase_add_loop_test(tc, test_compensate, 0, N_CASES);
    tcase_add_loop_test(tc, test_smooth_k, 0, N_CASES);
    tcase_add_loop_test(tc, test_lepe, 0, N_CASES);
    tcase_add_test(tc, test_correct_validation);
    tcase_add_loop_test(tc, test_reshape, 0, N_CASES);
    tcase_add_loop_test(tc, test_cache_reuse, 0, N_CASES);
    tcase_add_test(tc, test_linear_branch);
}

int main(void) { return run_op_suite("correct_ops", add_tests); }
