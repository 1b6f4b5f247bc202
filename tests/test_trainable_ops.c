/* test_trainable_ops.c — the trainable family (issue 14; card nsa) on every
 * backend of SL_TEST_BACKENDS against ref, ref against an independent
 * float64 NSA written here (full compressed probabilities, the block
 * importance by distributing each compressed token's probability over its
 * tokens, selection by sorting), and the card's checks: compressed-token
 * visibility, the first l-1 queries see none (o_cmp = 0, no NaN), selected
 * blocks inside the causal ones with the forced ones present, n = all blocks
 * with gates (0, 1, 0) equals dense, one block set per GQA group; bad
 * parameters and shapes rejected with one-line messages. */

#include "opsutil.h"

typedef struct nsa_cfg { int64_t l, s, bs, n, init, local, window; } nsa_cfg;

static sl_trainable_nsa_params params_of(const nsa_cfg *c)
{
    return (sl_trainable_nsa_params){.l = c->l, .s = c->s, .bs = c->bs, .n = c->n, .init = c->init,
                                     .local = c->local, .window = c->window};
}

static sl_tensor uniform2(sl_ctx *ctx, sl_rng *rng, int64_t a, int64_t b)
{
    sl_tensor t = f32_2d(ctx, a, b);
    for (int64_t i = 0; i < a * b; i++)
        f32p(&t)[i] = (float)sl_rng_uniform(rng);
    return t;
}

/* in[0..7] for trainable.nsa: q, k, v, kc, vc (mean pooled, windows of l by
 * s, from trainable.compress on ref), gates uniform in [0, 1). */
static void nsa_inputs(sl_ctx *ctx, sl_rng *rng, int64_t hq, int64_t hkv, int64_t nq, int64_t nk, int64_t d,
                       const nsa_cfg *c, sl_tensor in[8])
{
    in[0] = tu_randn(ctx, rng, hq, nq, d, 1.0);
    in[1] = tu_randn(ctx, rng, hkv, nk, d, 1.0);
    in[2] = tu_randn(ctx, rng, hkv, nk, d, 1.0);
    sl_trainable_compress_params cp = {.l = c->l, .s = c->s, .mode = 0};
    for (int i = 0; i < 2; i++) {
        sl_tensor cin[3] = {in[1 + i], {0}, {0}};
        in[3 + i] = run_op1(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_COMPRESS, &cp, cin);
    }
    for (int i = 5; i < 8; i++)
        in[i] = uniform2(ctx, rng, hq, nq);
}

/* ---- the independent float64 NSA ---- */

typedef struct indep_out {
    double *o, *lse, *imp;
    int32_t *blocks;
} indep_out;

static double dotd(const float *a, const float *b, int64_t d)
{
    double s = 0;
    for (int64_t e = 0; e < d; e++)
        s += (double)a[e] * b[e];
    return s;
}

/* Softmax over the keys j < nk with sel[j]: adds gate · O to o, returns the lse. */
static double softmax_into(const float *qv, const float *k, const float *v, const uint8_t *sel, int64_t nk,
                           int64_t d, double scale, double gate, double *o)
{
    double *s = malloc(sizeof *s * (size_t)nk), m = -INFINITY, z = 0;
    for (int64_t j = 0; j < nk; j++)
        if (sel[j]) {
            s[j] = dotd(qv, k + j * d, d) * scale;
            m = fmax(m, s[j]);
        }
    for (int64_t j = 0; j < nk; j++)
        if (sel[j])
            z += exp(s[j] - m);
    for (int64_t j = 0; j < nk && m > -INFINITY; j++)
        if (sel[j])
            for (int64_t e = 0; e < d; e++)
                o[e] += gate * exp(s[j] - m) / z * v[j * d + e];
    free(s);
    return m > -INFINITY ? m + log(z) : -INFINITY;
}

static indep_out indep_nsa(const sl_tensor in[8], const nsa_cfg *c)
{
    int64_t hq = in[0].shape[0], nq = in[0].shape[1], d = in[0].shape[2], hkv = in[1].shape[0],
            nk = in[1].shape[1], nc = in[3].shape[1], g = hq / hkv, nb = (nk + c->bs - 1) / c->bs;
    double scale = 1.0 / sqrt((double)d);
    indep_out r = {calloc((size_t)(hq * nq * d), sizeof(double)), calloc((size_t)(hq * nq), sizeof(double)),
                   calloc((size_t)(hkv * nq * nb), sizeof(double)), calloc((size_t)(hkv * nq * c->n), sizeof(int32_t))};
    uint8_t *sel = malloc((size_t)(nk > nc ? nk : nc));
    double *tok = malloc(sizeof *tok * (size_t)nk);
    int64_t *order = malloc(sizeof *order * (size_t)nb);
    const float *Q = in[0].data;
    for (int64_t kv = 0; kv < hkv; kv++)
        for (int64_t t = 0; t < nq; t++) {
            int64_t pos = nk - nq + t, jq = pos / c->bs;
            const float *kc = f32p(&in[3]) + kv * nc * d, *vc = f32p(&in[4]) + kv * nc * d;
            for (int64_t j = 0; j < nk; j++)
                tok[j] = 0;
            for (int64_t i = 0; i < nc; i++)
                sel[i] = i * c->s + c->l <= pos + 1;
            for (int64_t hh = 0; hh < g; hh++) {
                int64_t h = kv * g + hh;
                const float *qv = Q + (h * nq + t) * d;
                double *o = r.o + (h * nq + t) * d;
                double lse = softmax_into(qv, kc, vc, sel, nc, d, scale, f32p(&in[5])[h * nq + t], o);
                /* token level: compressed token i gives p_i / s to each of its l tokens */
                for (int64_t i = 0; i < nc && lse > -INFINITY; i++)
                    if (sel[i]) {
                        double p = exp(dotd(qv, kc + i * d, d) * scale - lse);
                        for (int64_t tt = i * c->s; tt < i * c->s + c->l && tt < nk; tt++)
                            tok[tt] += p / (double)c->s;
                    }
            }
            double *imp = r.imp + (kv * nq + t) * nb;
            for (int64_t j = 0; j < nk; j++)
                imp[j / c->bs] += tok[j];
            /* causal blocks ordered by (forced first, importance down, index up) */
            int64_t m = jq + 1;
            for (int64_t j = 0; j < m; j++)
                order[j] = j;
            for (int64_t x = 1; x < m; x++)
                for (int64_t y = x; y > 0; y--) {
                    int64_t a = order[y - 1], b = order[y];
                    int fa = a < c->init || a > jq - c->local, fb = b < c->init || b > jq - c->local;
                    int swap = fb > fa || (fb == fa && (imp[b] > imp[a] || (imp[b] == imp[a] && b < a)));
                    if (!swap)
                        break;
                    order[y - 1] = b, order[y] = a;
                }
            int64_t take = m < c->n ? m : c->n;
            uint8_t *blk = calloc((size_t)nb, 1);
            for (int64_t x = 0; x < take; x++)
                blk[order[x]] = 1;
            int32_t *brow = r.blocks + (kv * nq + t) * c->n;
            int64_t cnt = 0;
            for (int64_t j = 0; j < nb; j++)
                if (blk[j])
                    brow[cnt++] = (int32_t)j;
            for (; cnt < c->n; cnt++)
                brow[cnt] = -1;
            const float *k = f32p(&in[1]) + kv * nk * d, *v = f32p(&in[2]) + kv * nk * d;
            for (int64_t hh = 0; hh < g; hh++) {
                int64_t h = kv * g + hh;
                const float *qv = Q + (h * nq + t) * d;
                double *o = r.o + (h * nq + t) * d;
                for (int64_t j = 0; j < nk; j++)
                    sel[j] = j <= pos && blk[j / c->bs];
                softmax_into(qv, k, v, sel, nk, d, scale, f32p(&in[6])[h * nq + t], o);
                for (int64_t j = 0; j < nk; j++)
                    sel[j] = j <= pos && pos - j < c->window;
                softmax_into(qv, k, v, sel, nk, d, scale, f32p(&in[7])[h * nq + t], o);
                for (int64_t j = 0; j < nk; j++)
                    sel[j] = j <= pos && (blk[j / c->bs] || pos - j < c->window);
                double dummy[1024] = {0};
                r.lse[h * nq + t] = softmax_into(qv, k, v, sel, nk, d, scale, 0.0, dummy);
            }
            free(blk);
        }
    free(sel), free(tok), free(order);
    return r;
}

static void indep_free(indep_out *r) { free(r->o), free(r->lse), free(r->imp), free(r->blocks); }

/* The configurations: the paper's (overlapping windows, initial block
 * forced) and FLA's (mean pooling, window = block = stride, local only),
 * scaled down; GQA groups of 2; prefill and a decode offset. */
static const nsa_cfg PAPER = {.l = 8, .s = 4, .bs = 16, .n = 4, .init = 1, .local = 2, .window = 12};
static const nsa_cfg FLA = {.l = 8, .s = 8, .bs = 8, .n = 4, .init = 0, .local = 1, .window = 10};

START_TEST(test_nsa_vs_indep)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14001);
    const nsa_cfg *cfgs[2] = {&PAPER, &FLA};
    /* shape 3: more than 32 compressed tokens and key blocks per row, so the
     * CUDA kernel's lanes each take several (and the block argmax reduces
     * across lanes) */
    const int64_t shapes[4][5] = {{4, 2, 77, 77, 8}, {2, 2, 40, 40, 16}, {4, 1, 9, 70, 8}, {2, 1, 24, 300, 8}};
    for (int ci = 0; ci < 2; ci++)
        for (int si = 0; si < 4; si++) {
            const int64_t *sh = shapes[si];
            sl_tensor in[8];
            nsa_inputs(ctx, &rng, sh[0], sh[1], sh[2], sh[3], sh[4], cfgs[ci], in);
            sl_trainable_nsa_params p = params_of(cfgs[ci]);
            char what[96];
            snprintf(what, sizeof what, "trainable.nsa %s shape %d", ci ? "fla" : "paper", si);
            check_op_vs_ref(ctx, SL_OP_TRAINABLE_NSA, &p, in, 2e-5, what);
            sl_tensor out[4];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_NSA, &p, in, out), SL_OK);
            indep_out r = indep_nsa(in, cfgs[ci]);
            for (int64_t i = 0; i < sl_tensor_numel(&out[0]); i++)
                ck_assert_msg(fabs(tu_at(&out[0], i) - r.o[i]) <= 1e-5, "%s: o[%lld] %g vs %g", what, (long long)i,
                              tu_at(&out[0], i), r.o[i]);
            for (int64_t i = 0; i < sl_tensor_numel(&out[1]); i++)
                ck_assert_msg(fabs(tu_at(&out[1], i) - r.lse[i]) <= 1e-5 * fmax(1, fabs(r.lse[i])),
                              "%s: lse[%lld] %g vs %g", what, (long long)i, tu_at(&out[1], i), r.lse[i]);
            for (int64_t i = 0; i < sl_tensor_numel(&out[3]); i++)
                ck_assert_msg(fabs(tu_at(&out[3], i) - r.imp[i]) <= 1e-5, "%s: imp[%lld] %g vs %g (overlap mapping)",
                              what, (long long)i, tu_at(&out[3], i), r.imp[i]);
            const int32_t *b = out[2].data;
            for (int64_t i = 0; i < sl_tensor_numel(&out[2]); i++)
                ck_assert_msg(b[i] == r.blocks[i], "%s: blocks[%lld] %d vs %d", what, (long long)i, b[i], r.blocks[i]);
            indep_free(&r);
            release_n(out, 4);
            release_n(in, 8);
        }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Card checks on the paper configuration. */
START_TEST(test_nsa_card_checks)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14002);
    int64_t hq = 4, hkv = 2, n = 80, d = 8;
    const nsa_cfg *c = &PAPER;
    sl_tensor in[8];
    nsa_inputs(ctx, &rng, hq, hkv, n, n, d, c, in);
    sl_trainable_nsa_params p = params_of(c);
    /* gates (1, 0, 0): o = o_cmp */
    for (int64_t i = 0; i < hq * n; i++)
        f32p(&in[5])[i] = 1, f32p(&in[6])[i] = 0, f32p(&in[7])[i] = 0;
    sl_tensor base[4], moved[4];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_TRAINABLE_NSA, &p, in, base), SL_OK);
    /* the first l - 1 queries see no compressed token: o_cmp = 0, finite */
    for (int64_t h = 0; h < hq; h++)
        for (int64_t t = 0; t < n; t++)
            for (int64_t e = 0; e < d; e++) {
                float x = tu_at(&base[0], (h * n + t) * d + e);
                ck_assert_msg(isfinite(x), "o_cmp not finite at (%lld, %lld)", (long long)h, (long long)t);
                if (t < c->l - 1)
                    ck_assert_msg(x == 0.0f, "query %lld < l - 1 has o_cmp %g", (long long)t, x);
            }
    /* visibility: moving compressed token i changes exactly the rows t >= i s + l - 1 */
    int64_t nc = in[3].shape[1];
    for (int64_t i = 0; i < nc; i += 3) {
        float saved[2][8];
        for (int64_t kv = 0; kv < hkv; kv++)
            for (int64_t e = 0; e < d; e++) {
                saved[kv][e] = f32p(&in[4])[(kv * nc + i) * d + e];
                f32p(&in[4])[(kv * nc + i) * d + e] += 5.0f;
            }
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_TRAINABLE_NSA, &p, in, moved), SL_OK);
        for (int64_t h = 0; h < hq; h++)
            for (int64_t t = 0; t < n; t++) {
                int changed = 0;
                for (int64_t e = 0; e < d; e++)
                    changed |= tu_at(&moved[0], (h * n + t) * d + e) != tu_at(&base[0], (h * n + t) * d + e);
                int visible = i * c->s + c->l - 1 <= t;
                ck_assert_msg(changed == visible, "compressed token %lld, query %lld head %lld: changed %d, visible %d (%g vs %g)",
                              (long long)i, (long long)t, (long long)h, changed, visible, tu_at(&moved[0], (h * n + t) * d), tu_at(&base[0], (h * n + t) * d));
            }
        for (int64_t kv = 0; kv < hkv; kv++)
            for (int64_t e = 0; e < d; e++)
                f32p(&in[4])[(kv * nc + i) * d + e] = saved[kv][e];
        release_n(moved, 4);
    }
    /* selected blocks: causal, the forced ones present, min(n, causal) of them, ascending */
    const int32_t *b = base[2].data;
    for (int64_t kv = 0; kv < hkv; kv++)
        for (int64_t t = 0; t < n; t++) {
            int64_t jq = t / c->bs, cnt = 0;
            const int32_t *row = b + (kv * n + t) * c->n;
            int forced_seen = 0;
            for (int64_t x = 0; x < c->n; x++) {
                if (row[x] < 0)
                    continue;
                cnt++;
                ck_assert_msg(row[x] <= jq, "query %lld selected future block %d", (long long)t, row[x]);
                ck_assert(x == 0 || row[x] > row[x - 1]);
                forced_seen += row[x] < c->init || row[x] > jq - c->local;
            }
            int64_t forced = 0;
            for (int64_t j = 0; j <= jq; j++)
                forced += j < c->init || j > jq - c->local;
            ck_assert_int_eq(forced_seen, forced);
            ck_assert_int_eq(cnt, jq + 1 < c->n ? jq + 1 : c->n);
        }
    release_n(base, 4);
    /* n = all blocks, gates (0, 1, 0): dense causal attention */
    nsa_cfg all = *c;
    all.n = (n + c->bs - 1) / c->bs;
    sl_trainable_nsa_params pa = params_of(&all);
    for (int64_t i = 0; i < hq * n; i++)
        f32p(&in[5])[i] = 0, f32p(&in[6])[i] = 1, f32p(&in[7])[i] = 0;
    sl_attn_params ap = {.causal = 1};
    sl_tensor dense[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &ap, in, dense), SL_OK);
    for (int bk = SL_BACKEND_REF; bk <= SL_BACKEND_CPU; bk++) {
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)bk, SL_OP_TRAINABLE_NSA, &pa, in, base), SL_OK);
        assert_tensor_close(&base[0], &dense[0], 1e-5, "n = all, gates (0,1,0) vs dense: o");
        assert_tensor_close(&base[1], &dense[1], 1e-5, "n = all vs dense: lse");
        release_n(base, 4);
    }
    release_n(dense, 2);
    /* GQA: the block set of a group follows the group's summed importance,
     * so swapping the query heads inside a group leaves it unchanged */
    sl_tensor q2 = tu_randn(ctx, &rng, hq, n, d, 1.0);
    for (int64_t h = 0; h < hq; h++)
        memcpy(f32p(&q2) + h * n * d, f32p(&in[0]) + (h ^ 1) * n * d, sizeof(float) * (size_t)(n * d));
    sl_tensor swapped[8];
    memcpy(swapped, in, sizeof swapped);
    swapped[0] = q2;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_TRAINABLE_NSA, &p, in, base), SL_OK);
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_TRAINABLE_NSA, &p, swapped, moved), SL_OK);
    assert_i32_equal(&moved[2], &base[2], "GQA block sets under a head swap inside the group");
    release_n(base, 4);
    release_n(moved, 4);
    sl_tensor_release(&q2);
    release_n(in, 8);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_compress)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14003);
    int64_t H = 2, N = 37;
    /* D 40: more channels than the CUDA kernel's 32 lanes */
    for (int mi = 0; mi < 4; mi++)
        for (int with_pe = 0; with_pe < 2; with_pe++) {
            int mode = mi & 1;
            int64_t D = mi >= 2 ? 40 : 6;
            int64_t l = 8, s = mode ? 4 : 8;
            int64_t ws[3] = {H, l * D, D}, ps[3] = {H, l, D};
            sl_tensor in[3] = {tu_randn(ctx, &rng, H, N, D, 1.0), mode ? randn_shape(ctx, &rng, 3, ws, 0.3) : (sl_tensor){0},
                               with_pe ? randn_shape(ctx, &rng, 3, ps, 0.5) : (sl_tensor){0}};
            sl_trainable_compress_params p = {.l = l, .s = s, .mode = mode};
            char what[64];
            snprintf(what, sizeof what, "trainable.compress mode %d pe %d D %d", mode, with_pe, (int)D);
            check_op_vs_ref(ctx, SL_OP_TRAINABLE_COMPRESS, &p, in, 1e-5, what);
            sl_tensor y = run_op1(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_COMPRESS, &p, in);
            int64_t C = (N + s - 1) / s;
            ck_assert_int_eq(y.shape[1], C);
            /* independent: the window flattened, then phi */
            double *win = malloc(sizeof *win * (size_t)(l * D));
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < C; i++) {
                    for (int64_t r = 0; r < l; r++)
                        for (int64_t e = 0; e < D; e++)
                            win[r * D + e] = i * s + r < N ? (double)f32p(&in[0])[(h * N + i * s + r) * D + e] +
                                                                 (with_pe ? f32p(&in[2])[(h * l + r) * D + e] : 0.0)
                                                           : 0.0;
                    for (int64_t c = 0; c < D; c++) {
                        double want = 0;
                        for (int64_t x = 0; x < l * D; x++)
                            want += mode ? win[x] * f32p(&in[1])[(h * l * D + x) * D + c] : (x % D == c ? win[x] / l : 0);
                        double got = tu_at(&y, (h * C + i) * D + c);
                        ck_assert_msg(fabs(got - want) <= 1e-5 * fmax(1, fabs(want)), "%s [%lld,%lld,%lld]: %g vs %g",
                                      what, (long long)h, (long long)i, (long long)c, got, want);
                    }
                }
            free(win);
            sl_tensor_release(&y);
            release_n(in, 3);
        }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_trainable_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14004);
    sl_tensor in[8];
    nsa_inputs(ctx, &rng, 2, 1, 20, 20, 4, &PAPER, in);
    sl_trainable_nsa_params p = params_of(&PAPER);
    p.n = 2;
    expect_fail(ctx, SL_OP_TRAINABLE_NSA, &p, in, SL_EARG, "cannot hold the 3 forced");
    p = params_of(&PAPER);
    p.s = 16;
    expect_fail(ctx, SL_OP_TRAINABLE_NSA, &p, in, SL_EARG, "expected s <= l");
    p = params_of(&PAPER);
    sl_tensor good = in[6];
    in[6] = f32_2d(ctx, 2, 19);
    expect_fail(ctx, SL_OP_TRAINABLE_NSA, &p, in, SL_ESHAPE, "'g_slc' must be [2, 20]");
    sl_tensor_release(&in[6]);
    in[6] = good;
    f32p(&in[5])[3] = NAN;
    expect_fail(ctx, SL_OP_TRAINABLE_NSA, &p, in, SL_EARG, "NaN");
    f32p(&in[5])[3] = 0.5f;
    sl_tensor cin[3] = {in[1], in[0], {0}};
    sl_trainable_compress_params cp = {.l = 4, .s = 4, .mode = 0};
    expect_fail(ctx, SL_OP_TRAINABLE_COMPRESS, &cp, cin, SL_EARG, "expected mode 1");
    cp.mode = 1;
    expect_fail(ctx, SL_OP_TRAINABLE_COMPRESS, &cp, cin, SL_ESHAPE, "(heads, l·D, D)");
    release_n(in, 8);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- trainable.sparsek ---- */

/* The exact tau of the SPARSEK projection (Algorithm 1's breakpoints): f(tau)
 * = Σ clip(u - tau, 0, 1) is piecewise linear with breakpoints u_j and
 * u_j - 1; find the two neighbouring breakpoints around f = kk and
 * interpolate. */
static double exact_tau(const float *u, int64_t m, double kk)
{
    double *bp = malloc(sizeof *bp * (size_t)(2 * m));
    for (int64_t j = 0; j < m; j++)
        bp[2 * j] = u[j], bp[2 * j + 1] = (double)u[j] - 1.0;
    for (int64_t x = 1; x < 2 * m; x++)
        for (int64_t y = x; y > 0 && bp[y - 1] > bp[y]; y--) {
            double tmp = bp[y];
            bp[y] = bp[y - 1], bp[y - 1] = tmp;
        }
    double tau = bp[0];
    for (int64_t x = 0; x + 1 < 2 * m; x++) {
        double f0 = 0, f1 = 0;
        for (int64_t j = 0; j < m; j++) {
            f0 += fmin(1, fmax(0, u[j] - bp[x]));
            f1 += fmin(1, fmax(0, u[j] - bp[x + 1]));
        }
        if (f0 >= kk && f1 <= kk) {
            tau = f0 == f1 ? bp[x] : bp[x] + (f0 - kk) / (f0 - f1) * (bp[x + 1] - bp[x]);
            break;
        }
    }
    free(bp);
    return tau;
}

/* Independent SparseK: S by a stable sort of the prefix, weights from the exact tau. */
static void indep_sparsek(const sl_tensor in[4], const sl_trainable_sparsek_params *p, double *o, double *lse,
                          int32_t *count)
{
    int64_t hq = in[0].shape[0], nq = in[0].shape[1], d = in[0].shape[2], hkv = in[1].shape[0], nk = in[1].shape[1];
    double scale = 1.0 / sqrt((double)d);
    int64_t *ord = malloc(sizeof *ord * (size_t)nk);
    double *w = malloc(sizeof *w * (size_t)nk);
    for (int64_t kv = 0; kv < hkv; kv++)
        for (int64_t t = 0; t < nq; t++) {
            int64_t pos = nk - nq + t, m = pos + 1, kk = p->k < m ? p->k : m;
            const float *u = f32p(&in[3]) + kv * nk;
            for (int64_t j = 0; j < m; j++)
                ord[j] = j;
            for (int64_t x = 1; x < m; x++)
                for (int64_t y = x; y > 0 && (u[ord[y]] > u[ord[y - 1]]); y--) {
                    int64_t tmp = ord[y];
                    ord[y] = ord[y - 1], ord[y - 1] = tmp;
                }
            double tau = kk > 0 && kk < m ? exact_tau(u, m, (double)kk) : 0;
            for (int64_t j = 0; j < m; j++)
                w[j] = j > pos - p->window ? 1.0 : -1.0; /* -1: not attended */
            for (int64_t r = 0; r < kk; r++) {
                int64_t j = ord[r];
                w[j] = p->weight && kk < m ? fmin(1, fmax(0, u[j] - tau)) : 1.0;
            }
            int32_t c = 0;
            for (int64_t j = 0; j < m; j++)
                c += w[j] >= 0;
            count[kv * nq + t] = c;
            for (int64_t hh = 0; hh < hq / hkv; hh++) {
                int64_t h = kv * (hq / hkv) + hh;
                const float *qv = f32p(&in[0]) + (h * nq + t) * d;
                double mx = -INFINITY, z = 0;
                for (int64_t j = 0; j < m; j++)
                    if (w[j] >= 0)
                        mx = fmax(mx, dotd(qv, f32p(&in[1]) + (kv * nk + j) * d, d) * w[j] * scale + (p->bias ? u[j] : 0));
                for (int64_t e = 0; e < d; e++)
                    o[(h * nq + t) * d + e] = 0;
                for (int64_t j = 0; j < m; j++)
                    if (w[j] >= 0) {
                        double pr = exp(dotd(qv, f32p(&in[1]) + (kv * nk + j) * d, d) * w[j] * scale + (p->bias ? u[j] : 0) - mx);
                        z += pr;
                        for (int64_t e = 0; e < d; e++)
                            o[(h * nq + t) * d + e] += pr * w[j] * f32p(&in[2])[(kv * nk + j) * d + e];
                    }
                for (int64_t e = 0; e < d; e++)
                    o[(h * nq + t) * d + e] = z > 0 ? o[(h * nq + t) * d + e] / z : 0;
                lse[h * nq + t] = z > 0 ? mx + log(z) : -INFINITY;
            }
        }
    free(ord), free(w);
}

START_TEST(test_sparsek)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14005);
    const int64_t shapes[2][5] = {{4, 2, 45, 45, 8}, {2, 1, 7, 40, 16}};
    const int64_t ks[4] = {0, 1, 6, 1000}, wins[2] = {0, 5};
    for (int si = 0; si < 2; si++) {
        const int64_t *sh = shapes[si];
        sl_tensor in[4] = {tu_randn(ctx, &rng, sh[0], sh[2], sh[4], 1.0), tu_randn(ctx, &rng, sh[1], sh[3], sh[4], 1.0),
                           tu_randn(ctx, &rng, sh[1], sh[3], sh[4], 1.0), f32_2d(ctx, sh[1], sh[3])};
        for (int64_t i = 0; i < sh[1] * sh[3]; i++)
            f32p(&in[3])[i] = (float)(2.0 * sl_rng_normal(&rng));
        for (int ki = 0; ki < 4; ki++)
            for (int wi = 0; wi < 2; wi++)
                for (int wb = 0; wb < 4; wb++) {
                    int weight = wb & 1, bias = wb >> 1;
                    sl_trainable_sparsek_params p = {.k = ks[ki], .window = wins[wi], .weight = weight, .bias = bias};
                    char what[96];
                    snprintf(what, sizeof what, "trainable.sparsek shape %d k %lld window %lld weight %d bias %d", si,
                             (long long)p.k, (long long)p.window, weight, bias);
                    check_op_vs_ref(ctx, SL_OP_TRAINABLE_SPARSEK, &p, in, 2e-5, what);
                    sl_tensor out[3];
                    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_SPARSEK, &p, in, out), SL_OK);
                    int64_t no = sl_tensor_numel(&out[0]), nl = sl_tensor_numel(&out[1]);
                    double *o = malloc(sizeof *o * (size_t)no), *l = malloc(sizeof *l * (size_t)nl);
                    int32_t *c = malloc(sizeof *c * (size_t)sl_tensor_numel(&out[2]));
                    indep_sparsek(in, &p, o, l, c);
                    for (int64_t i = 0; i < no; i++)
                        ck_assert_msg(fabs(tu_at(&out[0], i) - o[i]) <= 1e-5, "%s: o[%lld] %g vs %g", what,
                                      (long long)i, tu_at(&out[0], i), o[i]);
                    for (int64_t i = 0; i < nl; i++)
                        ck_assert_msg((isinf(l[i]) && isinf(tu_at(&out[1], i))) ||
                                          fabs(tu_at(&out[1], i) - l[i]) <= 1e-5 * fmax(1, fabs(l[i])),
                                      "%s: lse[%lld] %g vs %g", what, (long long)i, tu_at(&out[1], i), l[i]);
                    for (int64_t i = 0; i < sl_tensor_numel(&out[2]); i++)
                        ck_assert_int_eq(((int32_t *)out[2].data)[i], c[i]);
                    free(o), free(l), free(c);
                    /* k >= n: dense causal attention (weights all 1) */
                    if (ks[ki] >= sh[3] && !bias) {
                        sl_attn_params ap = {.causal = 1};
                        sl_tensor dense[2];
                        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &ap, in, dense), SL_OK);
                        assert_tensor_close(&out[0], &dense[0], 1e-5, "sparsek k >= n vs dense");
                        release_n(dense, 2);
                    }
                    release_n(out, 3);
                }
        release_n(in, 4);
    }
    /* u of the wrong shape */
    sl_tensor bad[4] = {tu_randn(ctx, &rng, 2, 10, 4, 1), tu_randn(ctx, &rng, 1, 10, 4, 1), tu_randn(ctx, &rng, 1, 10, 4, 1),
                        f32_2d(ctx, 2, 10)};
    sl_trainable_sparsek_params p = {.k = 3};
    expect_fail(ctx, SL_OP_TRAINABLE_SPARSEK, &p, bad, SL_ESHAPE, "'u' must be [1, 10] (kv heads, keys)");
    release_n(bad, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- trainable.fsa ---- */

START_TEST(test_fsa)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14006);
    /* random block lists (unsorted, -1 holes, future blocks) on every backend vs ref and vs float64 here */
    /* (hq, hkv, nq, nk, d, bs, n); the last two: blocks of more than 32 keys,
     * and more than 32 slots per row (the CUDA lanes each take several) */
    const int64_t shapes[4][7] = {
        {4, 2, 50, 50, 8, 8, 4}, {4, 1, 6, 45, 16, 8, 4}, {2, 1, 12, 160, 8, 48, 3}, {2, 1, 8, 200, 8, 4, 36}};
    for (int si = 0; si < 4; si++) {
        const int64_t *sh = shapes[si];
        int64_t bs = sh[5], nb = (sh[3] + bs - 1) / bs, n = sh[6];
        int64_t bshape[3] = {sh[1], sh[2], n}, gshape[2] = {sh[0], sh[2]}, oshape[3] = {sh[0], sh[2], sh[4]};
        sl_tensor in[6] = {tu_randn(ctx, &rng, sh[0], sh[2], sh[4], 1.0), tu_randn(ctx, &rng, sh[1], sh[3], sh[4], 1.0),
                           tu_randn(ctx, &rng, sh[1], sh[3], sh[4], 1.0), {0}, {0}, {0}};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, bshape, &in[3]), SL_OK);
        int32_t *b = in[3].data;
        for (int64_t r = 0; r < sh[1] * sh[2]; r++) {
            int64_t c = 0;
            while (c < n) {
                int32_t j = sl_rng_uniform(&rng) < 0.2 ? -1 : (int32_t)(sl_rng_uniform(&rng) * (double)nb);
                int dup = 0;
                for (int64_t y = 0; y < c && j >= 0; y++)
                    dup |= b[r * n + y] == j;
                if (!dup)
                    b[r * n + c++] = j;
            }
        }
        sl_trainable_fsa_params p = {.bs = bs};
        for (int opts = 0; opts < 2; opts++) {
            if (opts) {
                in[4] = randn_shape(ctx, &rng, 2, gshape, 1.0);
                in[5] = randn_shape(ctx, &rng, 3, oshape, 1.0);
            }
            check_op_vs_ref(ctx, SL_OP_TRAINABLE_FSA, &p, in, 2e-5, opts ? "trainable.fsa gate+base" : "trainable.fsa");
            sl_tensor out[2];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_FSA, &p, in, out), SL_OK);
            int64_t hq = sh[0], nq = sh[2], d = sh[4], nk = sh[3], g = sh[0] / sh[1];
            uint8_t *sel = malloc((size_t)nk);
            double *o = malloc(sizeof *o * (size_t)d);
            for (int64_t h = 0; h < hq; h++)
                for (int64_t t = 0; t < nq; t++) {
                    int64_t pos = nk - nq + t;
                    for (int64_t j = 0; j < nk; j++) {
                        sel[j] = 0;
                        for (int64_t x = 0; x < n; x++)
                            sel[j] |= j <= pos && b[((h / g) * nq + t) * n + x] == j / bs;
                    }
                    for (int64_t e = 0; e < d; e++)
                        o[e] = opts ? f32p(&in[5])[(h * nq + t) * d + e] : 0;
                    double gate = opts ? f32p(&in[4])[h * nq + t] : 1.0;
                    double l = softmax_into(f32p(&in[0]) + (h * nq + t) * d, f32p(&in[1]) + (h / g) * nk * d,
                                            f32p(&in[2]) + (h / g) * nk * d, sel, nk, d, 1.0 / sqrt((double)d), gate, o);
                    for (int64_t e = 0; e < d; e++)
                        ck_assert_msg(fabs(tu_at(&out[0], (h * nq + t) * d + e) - o[e]) <= 1e-5, "fsa o (%lld,%lld)",
                                      (long long)h, (long long)t);
                    float got = tu_at(&out[1], h * nq + t);
                    ck_assert_msg((isinf(l) && isinf(got)) || fabs(got - l) <= 1e-5 * fmax(1, fabs(l)), "fsa lse");
                }
            free(sel), free(o);
            release_n(out, 2);
        }
        /* a repeated block in a row, a block id past the end */
        int32_t saved = b[1];
        b[1] = b[0] >= 0 ? b[0] : 0;
        b[0] = b[1];
        expect_fail(ctx, SL_OP_TRAINABLE_FSA, &p, in, SL_EARG, "appears twice");
        b[0] = (int32_t)nb;
        expect_fail(ctx, SL_OP_TRAINABLE_FSA, &p, in, SL_EARG, "expected -1 or a block id");
        b[0] = -1, b[1] = saved;
        release_n(in, 6);
    }
    /* NSA's selection branch through FSA: equal to trainable.nsa */
    sl_tensor nin[8];
    nsa_inputs(ctx, &rng, 4, 2, 70, 70, 8, &PAPER, nin);
    sl_trainable_nsa_params np = params_of(&PAPER);
    sl_tensor full[4], part[4];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_TRAINABLE_NSA, &np, nin, full), SL_OK);
    sl_tensor gslc = nin[6], zero = f32_2d(ctx, 4, 70);
    memset(zero.data, 0, sizeof(float) * 4 * 70);
    nin[6] = zero;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_TRAINABLE_NSA, &np, nin, part), SL_OK);
    sl_tensor fin[6] = {nin[0], nin[1], nin[2], part[2], gslc, part[0]};
    sl_trainable_fsa_params fp = {.bs = PAPER.bs};
    for (int bk = SL_BACKEND_REF; bk <= SL_BACKEND_CPU; bk++) {
        sl_tensor fo[2];
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)bk, SL_OP_TRAINABLE_FSA, &fp, fin, fo), SL_OK);
        assert_tensor_close(&fo[0], &full[0], 1e-5, "nsa with its selection branch through fsa");
        release_n(fo, 2);
    }
    nin[6] = gslc;
    sl_tensor_release(&zero);
    release_n(full, 4);
    release_n(part, 4);
    release_n(nin, 8);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- trainable.routing ---- */

/* W distinct random members of [0, n) per cluster row (the last ones -1 when pad). */
static sl_tensor members(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t c, int64_t w, int64_t n, int pad)
{
    int64_t shape[3] = {h, c, w};
    sl_tensor t;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, shape, &t), SL_OK);
    int32_t *x = t.data;
    for (int64_t r = 0; r < h * c; r++)
        for (int64_t a = 0; a < w; a++) {
            if (pad && a >= w - 2) {
                x[r * w + a] = -1;
                continue;
            }
            int dup;
            do {
                x[r * w + a] = (int32_t)(sl_rng_uniform(rng) * (double)n);
                dup = 0;
                for (int64_t b = 0; b < a; b++)
                    dup |= x[r * w + b] == x[r * w + a];
            } while (dup);
        }
    return t;
}

START_TEST(test_routing)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14007);
    const int64_t shapes[2][5] = {{4, 2, 48, 48, 8}, {2, 1, 10, 40, 16}};
    for (int si = 0; si < 2; si++) {
        const int64_t *sh = shapes[si];
        int64_t C = 5, W = 12;
        sl_tensor in[5] = {tu_randn(ctx, &rng, sh[0], sh[2], sh[4], 1.0), tu_randn(ctx, &rng, sh[1], sh[3], sh[4], 1.0),
                           tu_randn(ctx, &rng, sh[1], sh[3], sh[4], 1.0), members(ctx, &rng, sh[0], C, W, sh[2], si),
                           members(ctx, &rng, sh[0], C, W, sh[3], 0)};
        sl_trainable_routing_params p = {0};
        check_op_vs_ref(ctx, SL_OP_TRAINABLE_ROUTING, &p, in, 2e-5, "trainable.routing");
        sl_tensor out[3];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_ROUTING, &p, in, out), SL_OK);
        int64_t hq = sh[0], nq = sh[2], nk = sh[3], d = sh[4], g = sh[0] / sh[1];
        uint8_t *sel = malloc((size_t)nk), *uni = malloc((size_t)nk);
        double *acc = malloc(sizeof *acc * (size_t)d), *sum = malloc(sizeof *sum * (size_t)d);
        const int32_t *qs = in[3].data, *ks = in[4].data;
        for (int64_t h = 0; h < hq; h++)
            for (int64_t t = 0; t < nq; t++) {
                int64_t pos = nk - nq + t, used = 0, cnt = 0;
                memset(uni, 0, (size_t)nk);
                for (int64_t e = 0; e < d; e++)
                    sum[e] = 0;
                for (int64_t c = 0; c < C; c++) {
                    int hold = 0;
                    for (int64_t x = 0; x < W; x++)
                        hold |= qs[(h * C + c) * W + x] == t;
                    if (!hold)
                        continue;
                    cnt++;
                    memset(sel, 0, (size_t)nk);
                    for (int64_t x = 0; x < W; x++) {
                        int32_t j = ks[(h * C + c) * W + x];
                        if (j <= pos)
                            sel[j] = uni[j] = 1;
                    }
                    for (int64_t e = 0; e < d; e++)
                        acc[e] = 0;
                    double l = softmax_into(f32p(&in[0]) + (h * nq + t) * d, f32p(&in[1]) + (h / g) * nk * d,
                                            f32p(&in[2]) + (h / g) * nk * d, sel, nk, d, 1.0 / sqrt((double)d), 1.0, acc);
                    if (isinf(l))
                        continue;
                    used++;
                    for (int64_t e = 0; e < d; e++)
                        sum[e] += acc[e];
                }
                for (int64_t e = 0; e < d; e++) {
                    double want = used ? sum[e] / (double)used : 0;
                    ck_assert_msg(fabs(tu_at(&out[0], (h * nq + t) * d + e) - want) <= 1e-5, "routing o (%lld,%lld)",
                                  (long long)h, (long long)t);
                }
                double l = softmax_into(f32p(&in[0]) + (h * nq + t) * d, f32p(&in[1]) + (h / g) * nk * d,
                                        f32p(&in[2]) + (h / g) * nk * d, uni, nk, d, 1.0 / sqrt((double)d), 0.0, acc);
                float got = tu_at(&out[1], h * nq + t);
                ck_assert_msg((isinf(l) && isinf(got)) || fabs(got - l) <= 1e-5 * fmax(1, fabs(l)), "routing lse");
                ck_assert_int_eq(((int32_t *)out[2].data)[h * nq + t], cnt);
            }
        free(sel), free(uni), free(acc), free(sum);
        release_n(out, 3);
        /* validation: a repeated member, an index past the end */
        int32_t *x = in[3].data, saved = x[1];
        x[1] = x[0];
        expect_fail(ctx, SL_OP_TRAINABLE_ROUTING, &p, in, SL_EARG, "twice in cluster row 0");
        x[1] = (int32_t)nq;
        expect_fail(ctx, SL_OP_TRAINABLE_ROUTING, &p, in, SL_EARG, "expected -1 or an index");
        x[1] = saved;
        release_n(in, 5);
    }
    /* one cluster holding every query and key: dense causal attention */
    int64_t n = 30;
    sl_tensor in[5] = {tu_randn(ctx, &rng, 2, n, 8, 1.0), tu_randn(ctx, &rng, 1, n, 8, 1.0),
                       tu_randn(ctx, &rng, 1, n, 8, 1.0), {0}, {0}};
    int64_t shape[3] = {2, 1, n};
    for (int i = 3; i < 5; i++) {
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, shape, &in[i]), SL_OK);
        for (int64_t j = 0; j < 2 * n; j++)
            ((int32_t *)in[i].data)[j] = (int32_t)((n - 1) - j % n); /* any order */
    }
    sl_trainable_routing_params p = {0};
    sl_attn_params ap = {.causal = 1};
    sl_tensor dense[2], out[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &ap, in, dense), SL_OK);
    for (int bk = SL_BACKEND_REF; bk <= SL_BACKEND_CPU; bk++) {
        ck_assert_int_eq(sl_op_run(ctx, (sl_backend_id)bk, SL_OP_TRAINABLE_ROUTING, &p, in, out), SL_OK);
        assert_tensor_close(&out[0], &dense[0], 1e-5, "routing C = 1, W = n vs dense");
        assert_tensor_close(&out[1], &dense[1], 1e-5, "routing C = 1 lse vs dense");
        release_n(out, 3);
    }
    release_n(dense, 2);
    release_n(in, 5);
    tu_ctx_done(ctx, &al);
}
END_TEST


/* ---- trainable.select (issue 14, session 3) ---- */

/* Features [H, n, r] in float64 of x (head h / (H / Hx)) times w[h] or its first r channels. */
static double *sel_feats(const sl_tensor *x, const sl_tensor *w, int64_t H, int64_t r)
{
    int64_t Hx = x->shape[0], n = x->shape[1], D = x->shape[2];
    double *f = calloc((size_t)(H * n * r + 1), sizeof *f);
    for (int64_t h = 0; h < H; h++)
        for (int64_t t = 0; t < n; t++)
            for (int64_t c = 0; c < r; c++) {
                const float *row = f32p(x) + ((h * Hx / H) * n + t) * D;
                double acc = 0;
                if (w)
                    for (int64_t e = 0; e < D; e++)
                        acc += (double)row[e] * f32p(w)[(h * D + e) * r + c];
                else
                    acc = row[c];
                f[(h * n + t) * r + c] = acc;
            }
    return f;
}

/* Phi^-1 by bisection on 0.5 erfc(-x / sqrt 2) (independent of Acklam's formula). */
static double sel_inv_phi(double p)
{
    double lo = -40, hi = 40;
    for (int i = 0; i < 200; i++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(-mid / sqrt(2.0)) < p)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* Every backend equals ref exactly; ref's lists checked here against scores
 * computed in the test: mode 0 keeps min(k, visible) keys per entry, every
 * kept key ranks above every dropped one (score, then the lower key), rows of
 * an entry keep the entry's keys they see; mode 1 keeps {z > theta} with theta
 * from an independent inverse normal (keys within 1e-9 of theta excused), k
 * >= visible keeps all, the cap keeps the cap largest. */
START_TEST(test_select)
{
    const shape_case *c = &CASES[_i];
    if (c->nq * c->nk > 20000)
        return; /* the simulator's per-row bisection: small shapes only */
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14300 + (uint64_t)_i);
    sl_tensor in[4] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0),
                       {0}, {0}};
    int64_t rank = c->d < 4 ? c->d : 4, wsh[3] = {c->hq, c->d, rank};
    sl_tensor wq = randn_shape(ctx, &rng, 3, wsh, 0.5), wk = randn_shape(ctx, &rng, 3, wsh, 0.5);
    struct { int64_t k, mode, cap, split, group; int w; } cfg[] = {
        {5, 0, 0, 0, 1, 1}, {3, 0, 0, 0, 3, 1}, {7, 0, 0, 2, 1, 0}, {1 << 20, 0, 0, 0, 2, 0},
        {6, 1, 0, 0, 1, 0}, {4, 1, 3, 2, 1, 0}, {9, 1, 0, 0, 1, 1}, {1 << 20, 1, 5, 0, 1, 0},
    };
    for (size_t x = 0; x < sizeof cfg / sizeof cfg[0]; x++) {
        sl_trainable_select_params p = {.k = cfg[x].k, .mode = cfg[x].mode, .cap = cfg[x].cap, .split = cfg[x].split,
                                        .group = cfg[x].group, .causal = c->causal};
        in[2] = cfg[x].w ? wq : (sl_tensor){0};
        in[3] = cfg[x].w ? wk : (sl_tensor){0};
        char what[96];
        snprintf(what, sizeof what, "trainable.select case %d cfg %zu", _i, x);
        check_op_vs_ref(ctx, SL_OP_TRAINABLE_SELECT, &p, in, 0, what);
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_SELECT, &p, in, out), SL_OK);
        int64_t r = cfg[x].w ? rank : (p.split > 0 && p.split < c->d ? p.split : c->d);
        double *qf = sel_feats(&in[0], cfg[x].w ? &wq : NULL, c->hq, r);
        double *kf = sel_feats(&in[1], cfg[x].w ? &wk : NULL, cfg[x].w ? c->hq : c->hkv, r);
        const int32_t *rp = out[0].data, *col = out[1].data;
        double *z = malloc(sizeof *z * (size_t)c->nk);
        uint8_t *kept = malloc((size_t)c->nk);
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t t = 0; t < c->nq; t++) {
                int64_t g0 = t / p.group * p.group, g1 = g0 + p.group - 1 < c->nq ? g0 + p.group - 1 : c->nq - 1;
                int64_t off = c->causal ? c->nk - c->nq : 0, m = c->causal ? off + g1 + 1 : c->nk;
                int64_t lim = c->causal ? off + t + 1 : c->nk;
                const double *kh = kf + (cfg[x].w ? h : h / (c->hq / c->hkv)) * c->nk * r;
                memset(kept, 0, (size_t)c->nk);
                for (int64_t j = 0; j < m; j++) {
                    z[j] = 0;
                    for (int64_t u = g0; u <= g1; u++)
                        for (int64_t e = 0; e < r; e++)
                            z[j] += qf[(h * c->nq + u) * r + e] * kh[j * r + e];
                }
                int32_t a = rp[h * (c->nq + 1) + t], b = rp[h * (c->nq + 1) + t + 1];
                for (int32_t e = a; e < b; e++) {
                    ck_assert(col[e] >= 0 && col[e] < lim);
                    if (e > a)
                        ck_assert_int_gt(col[e], col[e - 1]);
                    kept[col[e]] = 1;
                }
                if (p.mode == 0) {
                    /* the entry's choice: rank by counting over the entry's visible keys */
                    int64_t want = 0;
                    for (int64_t j = 0; j < m; j++) {
                        int64_t better = 0;
                        for (int64_t y = 0; y < m; y++)
                            better += z[y] > z[j] || (z[y] == z[j] && y < j);
                        int chosen = better < p.k;
                        if (j < lim) {
                            ck_assert_msg(chosen == kept[j], "%s: row %lld key %lld", what, (long long)t, (long long)j);
                            want += chosen;
                        }
                    }
                    ck_assert_int_eq(b - a, want);
                } else {
                    int64_t n_kept = 0;
                    if (p.k >= m) {
                        for (int64_t j = 0; j < m; j++)
                            n_kept += kept[j];
                        ck_assert_int_eq(n_kept, p.cap > 0 && p.cap < m ? p.cap : m);
                        continue;
                    }
                    double mean = 0, var = 0;
                    for (int64_t j = 0; j < m; j++)
                        mean += z[j] / (double)m;
                    for (int64_t j = 0; j < m; j++)
                        var += (z[j] - mean) * (z[j] - mean) / (double)m;
                    double th = mean + sqrt(var) * sel_inv_phi(1.0 - (double)p.k / (double)m), minkept = INFINITY;
                    int64_t above = 0;
                    for (int64_t j = 0; j < m; j++) {
                        above += z[j] > th;
                        if (kept[j])
                            minkept = fmin(minkept, z[j]);
                    }
                    for (int64_t j = 0; j < m; j++) {
                        if (fabs(z[j] - th) < 1e-9 * (1 + fabs(th)))
                            continue;
                        if (p.cap == 0 || above <= p.cap)
                            ck_assert_msg(kept[j] == (z[j] > th), "%s: row %lld key %lld", what, (long long)t, (long long)j);
                        else if (!kept[j] && z[j] > th)
                            ck_assert(z[j] <= minkept); /* capped: the cap largest */
                    }
                    if (p.cap > 0 && above > p.cap + 1)
                        ck_assert_int_eq(b - a, p.cap);
                }
            }
        free(z), free(kept), free(qf), free(kf);
        release_n(out, 2);
    }
    /* bad input: one weight alone; mode 1 with groups */
    sl_trainable_select_params p = {.k = 4, .mode = 0, .group = 1, .causal = 1};
    sl_tensor bad[4] = {in[0], in[1], wq, {0}};
    expect_fail(ctx, SL_OP_TRAINABLE_SELECT, &p, bad, SL_EARG, "go together");
    sl_trainable_select_params p1 = {.k = 4, .mode = 1, .group = 2, .causal = 1};
    sl_tensor plain[4] = {in[0], in[1], {0}, {0}};
    expect_fail(ctx, SL_OP_TRAINABLE_SELECT, &p1, plain, SL_EARG, "expected group 1");
    sl_tensor_release(&wq), sl_tensor_release(&wk);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST


/* trainable.cells (card sea): every backend equals ref exactly (values drawn
 * from 5 levels, so ties at the budget's cut are common); ref checked here:
 * per row the kept cells over all heads are the b best by rank counting
 * (value, then the lower flat index), b = the card's budget, and head h's
 * row lists exactly the keys j <= t whose resized cell is kept for h. */
START_TEST(test_cells)
{
    static const int64_t shapes[][3] = {{2, 40, 8}, {3, 17, 32}, {1, 64, 5}, {4, 9, 16}};
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14400 + (uint64_t)_i);
    int64_t H = shapes[_i][0], N = shapes[_i][1], tm = shapes[_i][2];
    sl_tensor a = f32_new(ctx, 3, shapes[_i]);
    for (int64_t x = 0; x < H * N * tm; x++)
        f32p(&a)[x] = (float)(sl_rng_uniform(&rng) < 0.5 ? floor(sl_rng_uniform(&rng) * 5) / 5 : sl_rng_uniform(&rng));
    double ks[] = {1, 2.5, 7, 1000};
    for (int q = 0; q < 4; q++) {
        sl_trainable_cells_params p = {.k = ks[q]};
        char what[64];
        snprintf(what, sizeof what, "trainable.cells shape %d k %g", _i, ks[q]);
        check_op_vs_ref(ctx, SL_OP_TRAINABLE_CELLS, &p, &a, 0, what);
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_CELLS, &p, &a, out), SL_OK);
        const int32_t *rp = out[0].data, *col = out[1].data;
        for (int64_t t = 0; t < N; t++) {
            int64_t w = t + 1, HT = H * tm;
            double bb = floor((double)H * ks[q] * (double)tm / (double)w + 0.5);
            int64_t b = bb < 1 ? 1 : bb > (double)HT ? HT : (int64_t)bb;
            for (int64_t h = 0; h < H; h++) {
                int64_t want = 0;
                int32_t lo = rp[h * (N + 1) + t], hi = rp[h * (N + 1) + t + 1];
                for (int64_t j = 0; j < w; j++) {
                    double cx = floor((j + 0.5) * (double)tm / (double)w - 1e-4);
                    int64_t c = cx < 0 ? 0 : cx > tm - 1 ? tm - 1 : (int64_t)cx, f = h * tm + c, better = 0;
                    float v = f32p(&a)[(h * N + t) * tm + c];
                    for (int64_t g = 0; g < HT; g++) {
                        float u = f32p(&a)[((g / tm) * N + t) * tm + g % tm];
                        better += u > v || (u == v && g < f);
                    }
                    if (better < b) {
                        ck_assert_msg(lo + want < hi && col[lo + want] == j, "%s: head %lld row %lld key %lld missing",
                                      what, (long long)h, (long long)t, (long long)j);
                        want++;
                    }
                }
                ck_assert_int_eq(hi - lo, want);
            }
        }
        release_n(out, 2);
    }
    sl_tensor_release(&a);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* trainable.performer (card sea, the Performer stand-in): every backend vs
 * ref to 1e-5; ref vs a float64 map written here without the stabilising
 * maxima (small inputs: no overflow), each key's p_j added to its cell; rows
 * sum to 1; a proj of the wrong width is a one-line error. */
START_TEST(test_performer)
{
    static const int64_t cfg[][6] = {{2, 1, 40, 8, 17, 8}, {4, 2, 33, 16, 11, 32}, {1, 1, 70, 4, 5, 7}, {3, 3, 12, 6, 9, 1}};
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 14500 + (uint64_t)_i);
    int64_t Hq = cfg[_i][0], Hkv = cfg[_i][1], N = cfg[_i][2], D = cfg[_i][3], m = cfg[_i][4], tm = cfg[_i][5];
    sl_tensor in[3] = {tu_randn(ctx, &rng, Hq, N, D, 0.8), tu_randn(ctx, &rng, Hkv, N, D, 0.8)};
    int64_t ps[2] = {m, D};
    in[2] = randn_shape(ctx, &rng, 2, ps, 1.0);
    sl_trainable_performer_params p = {.t_m = tm};
    char what[64];
    snprintf(what, sizeof what, "trainable.performer case %d", _i);
    check_op_vs_ref(ctx, SL_OP_TRAINABLE_PERFORMER, &p, in, 1e-5, what);
    sl_tensor a = run_op1(ctx, SL_BACKEND_REF, SL_OP_TRAINABLE_PERFORMER, &p, in);
    ck_assert_int_eq(a.shape[2], tm);
    double sc = pow((double)D, -0.25), *row = malloc(sizeof *row * (size_t)tm);
    for (int64_t h = 0; h < Hq; h++)
        for (int64_t t = 0; t < N; t++) {
            const float *qt = f32p(&in[0]) + (h * N + t) * D;
            double z = 0, sum = 0;
            for (int64_t c = 0; c < tm; c++)
                row[c] = 0;
            for (int64_t j = 0; j <= t; j++) {
                const float *kj = f32p(&in[1]) + ((h / (Hq / Hkv)) * N + j) * D;
                double pj = 0, nq = 0, nk = 0;
                for (int64_t e = 0; e < D; e++)
                    nq += qt[e] * sc * qt[e] * sc, nk += kj[e] * sc * kj[e] * sc;
                for (int64_t f = 0; f < m; f++) {
                    double wq = 0, wk = 0;
                    for (int64_t e = 0; e < D; e++)
                        wq += f32p(&in[2])[f * D + e] * qt[e] * sc, wk += f32p(&in[2])[f * D + e] * kj[e] * sc;
                    pj += exp(wq - nq / 2) * exp(wk - nk / 2);
                }
                double cx = floor((j + 0.5) * (double)tm / (double)(t + 1) - 1e-4);
                row[cx < 0 ? 0 : cx > tm - 1 ? tm - 1 : (int64_t)cx] += pj;
                z += pj;
            }
            for (int64_t c = 0; c < tm; c++) {
                double got = tu_at(&a, (h * N + t) * tm + c);
                sum += got;
                ck_assert_msg(fabs(got - row[c] / z) <= 1e-6, "%s: a[%lld, %lld, %lld] %g vs %g", what, (long long)h,
                              (long long)t, (long long)c, got, row[c] / z);
            }
            ck_assert_msg(fabs(sum - 1) <= 1e-5, "%s: row %lld sums to %g", what, (long long)t, sum);
        }
    free(row);
    sl_tensor_release(&a);
    sl_tensor_release(&in[2]);
    int64_t bad[2] = {m, D + 1};
    in[2] = randn_shape(ctx, &rng, 2, bad, 1.0);
    expect_fail(ctx, SL_OP_TRAINABLE_PERFORMER, &p, in, SL_ESHAPE, "proj must be");
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_routing);
    tcase_add_test(tc, test_fsa);
    tcase_add_test(tc, test_sparsek);
    tcase_add_test(tc, test_compress);
    tcase_add_test(tc, test_nsa_vs_indep);
    tcase_add_test(tc, test_nsa_card_checks);
    tcase_add_test(tc, test_trainable_validation);
    tcase_add_loop_test(tc, test_select, 0, N_CASES);
    tcase_add_loop_test(tc, test_cells, 0, 4);
    tcase_add_loop_test(tc, test_performer, 0, 4);
}

int main(void) { return run_op_suite("trainable_ops", add_tests); }
