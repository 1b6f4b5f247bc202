/* test_ipar_ops.c — ipar.rectify (Rectified SpaAttn with IPAR's isolated
 * text pooling) on every backend in SL_TEST_BACKENDS against ref, and ref
 * against independent facts: without text tokens it is correct.rectify
 * (another op, non-causal, bq = bk); with blocks of one token and every
 * text column kept, the pooled probabilities are the exact softmax and
 * every error is 0, so O equals attn.dense for any video mask; a mask that
 * keeps every block gives r = 1, N = 0, O = o_sparse; r + restored = 1;
 * gapr = 0 restores every dropped video block; text query rows keep
 * o_sparse; bad shapes and parameters are one-line errors. */

#include "opsutil.h"

/* A random u8 block-keep [hm, nb, nb] with every text block (outside
 * [v0b, v0b + nbv)) kept as a column and as a row when text_dense. */
static sl_tensor random_keep(sl_ctx *ctx, sl_rng *rng, int64_t hm, int64_t nb, int64_t v0b, int64_t nbv, double p,
                             int text_dense)
{
    sl_tensor t;
    int64_t sh[3] = {hm, nb, nb};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, sh, &t), SL_OK);
    uint8_t *k = t.data;
    for (int64_t h = 0; h < hm; h++)
        for (int64_t I = 0; I < nb; I++)
            for (int64_t J = 0; J < nb; J++) {
                int textI = I < v0b || I >= v0b + nbv, textJ = J < v0b || J >= v0b + nbv;
                k[(h * nb + I) * nb + J] = (uint8_t)(textJ || (textI && text_dense) || I == J || sl_rng_uniform(rng) < p);
            }
    return t;
}

typedef struct ipar_case {
    int64_t hq, hkv, n, d, b, v0, nv;
} ipar_case;

/* Block-coherent rows (a per-block mean plus 0.4 x noise), the data on
 * which GAPR trusts pooled blocks (on iid rows it trusts none: the card). */
static void coherent(sl_rng *rng, sl_tensor *x, int64_t b)
{
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2];
    float *xd = x->data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t r0 = 0; r0 < n; r0 += b)
            for (int64_t c = 0; c < d; c++) {
                double u = sl_rng_normal(rng);
                for (int64_t r = r0; r < r0 + b && r < n; r++)
                    xd[(h * n + r) * d + c] = (float)(u + 0.4 * xd[(h * n + r) * d + c]);
            }
}

/* inputs in[8]: q, k, v, the mask's four arrays, o_sparse (attn.block_sparse on ref) */
static void make_inputs(sl_ctx *ctx, sl_rng *rng, const ipar_case *c, double p, int hm, sl_mask *m, sl_tensor in[8])
{
    in[0] = tu_randn(ctx, rng, c->hq, c->n, c->d, 1);
    in[1] = tu_randn(ctx, rng, c->hkv, c->n, c->d, 1);
    in[2] = tu_randn(ctx, rng, c->hkv, c->n, c->d, 1);
    if (c->b > 1) {
        coherent(rng, &in[0], c->b);
        coherent(rng, &in[1], c->b);
    }
    int64_t nb = (c->n + c->b - 1) / c->b;
    sl_tensor keep = random_keep(ctx, rng, hm, nb, c->v0 / c->b, c->nv / c->b, p, 1);
    ck_assert_int_eq(sl_mask_from_blocks(ctx, &keep, c->n, c->n, (int)c->b, (int)c->b, 0, m), SL_OK);
    sl_tensor_release(&keep);
    sl_mask_inputs(m, &in[0], &in[1], &in[2], in);
    sl_attn_block_params bp = {.bq = c->b, .bk = c->b};
    sl_tensor o[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &bp, in, o), SL_OK);
    in[7] = o[0];
    sl_tensor_release(&o[1]);
}

static void release_inputs(sl_tensor in[8], sl_mask *m)
{
    sl_tensor_release(&in[0]);
    sl_tensor_release(&in[1]);
    sl_tensor_release(&in[2]);
    sl_tensor_release(&in[7]);
    sl_mask_release(m);
}

START_TEST(test_ipar_vs_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15301);
    const ipar_case cases[] = {
        {2, 2, 80, 16, 8, 16, 64}, /* text first, whole blocks */
        {4, 2, 75, 16, 8, 0, 64},  /* text last, its block ragged, GQA 2:1 */
        {2, 1, 96, 24, 16, 0, 96}, /* no text */
        {2, 2, 45, 8, 4, 8, 36},   /* text first (8 tokens), ragged text after the video too */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const ipar_case *c = &cases[ci];
        for (int gapr = 0; gapr <= 1; gapr++) {
            sl_mask m;
            sl_tensor in[8];
            make_inputs(ctx, &rng, c, 0.3, gapr ? (int)c->hq : 1, &m, in);
            sl_ipar_rectify_params p = {.bq = c->b, .bk = c->b, .gapr = gapr, .video0 = c->v0, .n_video = c->nv};
            char what[64];
            snprintf(what, sizeof what, "ipar.rectify case %zu gapr %d", ci, gapr);
            check_op_vs_ref(ctx, SL_OP_IPAR_RECTIFY, &p, in, 1e-5, what);
            sl_tensor out[3];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_IPAR_RECTIFY, &p, in, out), SL_OK);
            int64_t nbv = c->nv / c->b;
            double restored_total = 0;
            for (int64_t i = 0; i < c->hq * nbv; i++) {
                ck_assert_msg(fabs(tu_at(&out[1], i) + tu_at(&out[2], i) - 1) < 1e-5, "r + restored != 1");
                ck_assert(tu_at(&out[1], i) > 0 && tu_at(&out[1], i) <= 1 + 1e-6);
                restored_total += tu_at(&out[2], i);
            }
            ck_assert_msg(restored_total > 0, "%s: nothing restored (the test data must exercise N)", what);
            /* text query rows keep o_sparse */
            for (int64_t h = 0; h < c->hq; h++)
                for (int64_t t = 0; t < c->n; t++) {
                    if (t >= c->v0 && t < c->v0 + c->nv)
                        continue;
                    for (int64_t x = 0; x < c->d; x++) {
                        int64_t at = (h * c->n + t) * c->d + x;
                        ck_assert(tu_at(&out[0], at) == tu_at(&in[7], at));
                    }
                }
            /* no text: the same numbers as correct.rectify (non-causal) */
            if (c->nv == c->n) {
                sl_correct_rectify_params rp = {.bq = c->b, .bk = c->b, .causal = 0, .ipar = 1, .gapr = gapr,
                                                .causal_means = 1};
                sl_tensor cr[4];
                ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_CORRECT_RECTIFY, &rp, in, cr), SL_OK);
                assert_tensor_close(&out[0], &cr[0], 1e-5, "ipar.rectify without text = correct.rectify");
                release_n(cr, 4);
            }
            release_n(out, 3);
            release_inputs(in, &m);
        }
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Blocks of one token, text columns kept: P is the exact softmax of each
 * row (isolated text keys and one-token video "blocks"), GAPR's errors are
 * 0 so every dropped key is restored from its own value: O = dense. */
START_TEST(test_ipar_exact_when_b1)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15302);
    const ipar_case cases[] = {{2, 1, 40, 8, 1, 6, 30}, {2, 2, 33, 16, 1, 0, 25}};
    for (size_t ci = 0; ci < 2; ci++) {
        const ipar_case *c = &cases[ci];
        sl_mask m;
        sl_tensor in[8];
        make_inputs(ctx, &rng, c, 0.25, 1, &m, in);
        sl_ipar_rectify_params p = {.bq = 1, .bk = 1, .gapr = 1, .video0 = c->v0, .n_video = c->nv};
        sl_tensor out[3], dense[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_IPAR_RECTIFY, &p, in, out), SL_OK);
        sl_attn_params ap = {.causal = 0};
        ck_assert_int_eq(sl_attn_dense(ctx, SL_BACKEND_REF, &ap, &in[0], &in[1], &in[2], &dense[0], &dense[1]), SL_OK);
        assert_tensor_close(&out[0], &dense[0], 2e-5, "ipar.rectify b = 1 = dense");
        check_op_vs_ref(ctx, SL_OP_IPAR_RECTIFY, &p, in, 1e-5, "ipar.rectify b = 1");
        release_n(out, 3);
        release_n(dense, 2);
        release_inputs(in, &m);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Every block kept: nothing restored, O = o_sparse (= dense). */
START_TEST(test_ipar_all_kept)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15303);
    ipar_case c = {2, 2, 72, 16, 8, 8, 64};
    sl_mask m;
    sl_tensor in[8];
    make_inputs(ctx, &rng, &c, 1.0, 1, &m, in);
    sl_ipar_rectify_params p = {.bq = 8, .bk = 8, .gapr = 0, .video0 = 8, .n_video = 64};
    sl_tensor out[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_IPAR_RECTIFY, &p, in, out), SL_OK);
    for (int64_t i = 0; i < 2 * 8; i++) {
        ck_assert(fabs(tu_at(&out[1], i) - 1) < 1e-6);
        ck_assert(tu_at(&out[2], i) == 0);
    }
    assert_tensor_close(&out[0], &in[7], 1e-6, "all kept: O = o_sparse");
    release_n(out, 3);
    release_inputs(in, &m);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_ipar_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15304);
    ipar_case c = {2, 2, 40, 8, 8, 8, 32};
    sl_mask m;
    sl_tensor in[8];
    make_inputs(ctx, &rng, &c, 0.5, 1, &m, in);
    sl_ipar_rectify_params p = {.bq = 8, .bk = 8, .gapr = 1, .video0 = 4, .n_video = 32};
    expect_fail(ctx, SL_OP_IPAR_RECTIFY, &p, in, SL_EARG, "whole blocks");
    p.video0 = 8;
    p.n_video = 40;
    expect_fail(ctx, SL_OP_IPAR_RECTIFY, &p, in, SL_EARG, "whole blocks");
    p.n_video = 0;
    expect_fail(ctx, SL_OP_IPAR_RECTIFY, &p, in, SL_EARG, "whole blocks");
    release_inputs(in, &m);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_ipar_vs_ref);
    tcase_add_test(tc, test_ipar_exact_when_b1);
    tcase_add_test(tc, test_ipar_all_kept);
    tcase_add_test(tc, test_ipar_validation);
}

int main(void) { return run_op_suite("ipar_ops", add_tests); }
