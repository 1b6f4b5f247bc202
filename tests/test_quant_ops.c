/* test_quant_ops.c — quant.fake on every backend in SL_TEST_BACKENDS
 * against ref (bit for bit: the contract's f32 arithmetic), and ref against
 * properties computed here in float64: every output is an integer multiple
 * of its group's step with |multiple| <= qmax, the error is at most half a
 * step, the group's largest |x| maps to exactly qmax steps, an all-zero
 * group stays zero, and the error falls as bits rise. */

#include "opsutil.h"

static void check_props(const sl_tensor *x, const sl_tensor *y, int bits, int64_t group)
{
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2];
    const float *src = x->data;
    double qmax = (double)((1 << (bits - 1)) - 1);
    for (int64_t h = 0; h < H; h++)
        for (int64_t r0 = 0; r0 < n; r0 += group) {
            int64_t r1 = r0 + group < n ? r0 + group : n;
            double m = 0;
            for (int64_t i = (h * n + r0) * d; i < (h * n + r1) * d; i++)
                m = fmax(m, fabs((double)src[i]));
            double step = m > 0 ? m / qmax : 1;
            for (int64_t i = (h * n + r0) * d; i < (h * n + r1) * d; i++) {
                double v = tu_at(y, i), k = v / step;
                ck_assert_msg(fabs(k - round(k)) < 1e-3 && fabs(round(k)) <= qmax, "y[%lld] = %g is not on the grid",
                              (long long)i, v);
                ck_assert_msg(fabs(v - src[i]) <= 0.5 * step * (1 + 1e-5), "error past half a step at %lld",
                              (long long)i);
                if (fabs((double)src[i]) == m && m > 0)
                    ck_assert(fabs(fabs(round(k)) - qmax) < 0.5);
            }
        }
}

START_TEST(test_quant_fake)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15201);
    sl_tensor x = tu_randn(ctx, &rng, 3, 70, 9, 1);
    float *xd = x.data;
    for (int64_t i = (2 * 70 + 64) * 9; i < 3 * 70 * 9; i++) /* head 2's last (ragged) group all zero: step 1 */
        xd[i] = 0;
    double prev = INFINITY;
    for (int bits = 2; bits <= 8; bits += 2) {
        sl_quant_fake_params p = {.bits = bits, .group = 32};
        check_op_vs_ref(ctx, SL_OP_QUANT_FAKE, &p, &x, 0, "quant.fake");
        sl_tensor y;
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_QUANT_FAKE, &p, &x, &y), SL_OK);
        check_props(&x, &y, bits, 32);
        double err = 0;
        for (int64_t i = 0; i < sl_tensor_numel(&x); i++)
            err = fmax(err, fabs(tu_at(&y, i) - xd[i]));
        ck_assert_msg(err < prev, "error %g at %d bits does not fall (%g before)", err, bits, prev);
        prev = err;
        ck_assert_double_eq(sl_op_flops(SL_OP_QUANT_FAKE, &p, &x), 3.0 * 3 * 70 * 9);
        sl_tensor_release(&y);
    }
    sl_quant_fake_params one = {.bits = 8, .group = 1};
    check_op_vs_ref(ctx, SL_OP_QUANT_FAKE, &one, &x, 0, "quant.fake per row");
    sl_tensor_release(&x);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_quant_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15202);
    sl_tensor x = tu_randn(ctx, &rng, 2, 4, 3, 1);
    sl_quant_fake_params p = {.bits = 1, .group = 4};
    expect_fail(ctx, SL_OP_QUANT_FAKE, &p, &x, SL_EARG, "bits");
    sl_tensor_release(&x);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- quant.attn_block ---- */

/* Every backend against ref. The P codes round qmax.exp(s - mu) and the
 * scores are f32 on cpu / cuda, float64 in ref, so a code can land on the
 * other side of a half (one unit of one P entry): at most 1 % of the output
 * rows may differ past 1e-5, and none by more than that unit can move a row
 * (max|v| / qmax). lse does not depend on the codes: 1e-5. */
static void check_qattn_vs_ref(sl_ctx *ctx, const sl_quant_attn_params *p, const sl_tensor *in, const char *what)
{
    sl_tensor ref[2], out[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_QUANT_ATTN_BLOCK, p, in, ref), SL_OK);
    double vmax = 0;
    for (int64_t i = 0; i < sl_tensor_numel(&in[2]); i++)
        vmax = fmax(vmax, fabs(tu_at(&in[2], i)));
    double unit = p->bits == 16 ? 0 : vmax / (double)((1 << (p->bits - 1)) - 1);
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    int64_t rows = ref[1].shape[0] * ref[1].shape[1], d = ref[0].shape[2];
    for (int b = 0; b < nb; b++) {
        sl_status s = sl_op_run(ctx, bs[b], SL_OP_QUANT_ATTN_BLOCK, p, in, out);
        if (s == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU) {
            printf("SKIP %s on %s: %s\n", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
        char w[160];
        snprintf(w, sizeof w, "%s on %s: lse", what, sl_backend_name(bs[b]));
        assert_tensor_close(&out[1], &ref[1], 1e-5, w);
        int64_t off = 0;
        for (int64_t r = 0; r < rows; r++) {
            double worst = 0;
            for (int64_t c = 0; c < d; c++)
                worst = fmax(worst, fabs(tu_at(&out[0], r * d + c) - tu_at(&ref[0], r * d + c)));
            ck_assert_msg(worst <= 1e-5 + 1.01 * unit, "%s on %s: row %lld off by %g (one P unit moves it %g at most)",
                          what, sl_backend_name(bs[b]), (long long)r, worst, unit);
            off += worst > 1e-5;
        }
        ck_assert_msg(off * 100 <= rows, "%s on %s: %lld of %lld rows differ from ref", what, sl_backend_name(bs[b]),
                      (long long)off, (long long)rows);
        release_n(out, 2);
    }
    release_n(ref, 2);
}

/* The contract's emulation for a mask keeping everything, in float64 from
 * the definition: per row and key block the codes, the V codes by the f32
 * rule, exact integer sums, the scales, the f32-P normaliser. */
static double emulated(const sl_tensor *q, const sl_tensor *k, const sl_tensor *v, int64_t h, int64_t i, int64_t c,
                       int64_t bk, int bits)
{
    int64_t nk = k->shape[1], d = q->shape[2], g = h / (q->shape[0] / k->shape[0]);
    const float *qi = (const float *)q->data + (h * q->shape[1] + i) * d;
    const float *kg = (const float *)k->data + g * nk * d, *vg = (const float *)v->data + g * nk * d;
    double qmax = (double)((1 << (bits - 1)) - 1), scale = 1 / sqrt((double)d), m = -INFINITY, l = 0, o = 0;
    double *s = malloc(sizeof *s * (size_t)nk);
    for (int64_t j = 0; j < nk; j++) {
        double x = 0;
        for (int64_t e = 0; e < d; e++)
            x += (double)qi[e] * kg[j * d + e];
        s[j] = scale * x;
        m = fmax(m, s[j]);
    }
    for (int64_t j = 0; j < nk; j++)
        l += exp(s[j] - m);
    for (int64_t j0 = 0; j0 < nk; j0 += bk) {
        int64_t j1 = j0 + bk < nk ? j0 + bk : nk;
        double mu = -INFINITY;
        float vm = 0;
        for (int64_t j = j0; j < j1; j++) {
            mu = fmax(mu, s[j]);
            vm = fmaxf(vm, fabsf(vg[j * d + c]));
        }
        float t = vm / (float)qmax;
        if (!(t > 0))
            t = 1;
        long long acc = 0;
        for (int64_t j = j0; j < j1; j++) {
            long long pc = llround(qmax * exp(s[j] - mu));
            ck_assert(pc >= 0 && pc <= (long long)qmax);
            float w = fminf(fmaxf(roundf(vg[j * d + c] / t), -(float)qmax), (float)qmax);
            acc += pc * (long long)w;
        }
        o += exp(mu - m) / qmax * (double)t * (double)acc;
    }
    free(s);
    return o / l;
}

static double rel_l2(const sl_tensor *a, const sl_tensor *b)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < sl_tensor_numel(b); i++) {
        double x = tu_at(a, i) - tu_at(b, i);
        num += x * x;
        den += (double)tu_at(b, i) * tu_at(b, i);
    }
    return sqrt(num / den);
}

START_TEST(test_quant_attn_block)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15203);
    const shape_case cases[] = {{2, 2, 70, 70, 16, 0}, {4, 2, 64, 96, 32, 1}, {2, 1, 33, 33, 8, 1}};
    for (int ci = 0; ci < 3; ci++) {
        const shape_case *c = &cases[ci];
        sl_tensor in[7];
        in[0] = tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5);
        in[1] = tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5);
        in[2] = tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1);
        for (int kind = 0; kind < 2; kind++) {
            /* kind 0: every pair (FULL); 1: causal (partial diagonal blocks) with a window */
            sl_mask m;
            sl_pattern_term t[1] = {{.kind = kind ? SL_PAT_WINDOW : SL_PAT_FULL, .a = kind ? 40 : 0}};
            ck_assert_int_eq(sl_mask_from_pattern(ctx, t, 1, c->nq, c->nk, 16, 16, &m), SL_OK);
            sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
            for (int bits = 4; bits <= 16; bits += 4) {
                if (bits == 12)
                    continue;
                sl_quant_attn_params p = {.bq = 16, .bk = 16, .bits = bits};
                char what[80];
                snprintf(what, sizeof what, "quant.attn_block case %d mask %d bits %d", ci, kind, bits);
                check_qattn_vs_ref(ctx, &p, in, what);
            }
            /* bits 16 is attn.block_sparse */
            sl_quant_attn_params p16 = {.bq = 16, .bk = 16, .bits = 16};
            sl_attn_block_params bp = {.bq = 16, .bk = 16};
            sl_tensor a[2], b[2];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_QUANT_ATTN_BLOCK, &p16, in, a), SL_OK);
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &bp, in, b), SL_OK);
            assert_tensor_close(&a[0], &b[0], 1e-5, "bits 16 = attn.block_sparse: O");
            assert_tensor_close(&a[1], &b[1], 1e-5, "bits 16 = attn.block_sparse: lse");
            /* INT8 close to f32, INT4 further away but bounded; lse unchanged */
            double err[2];
            for (int x = 0; x < 2; x++) {
                sl_quant_attn_params pq = {.bq = 16, .bk = 16, .bits = x ? 4 : 8};
                sl_tensor y[2];
                ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_QUANT_ATTN_BLOCK, &pq, in, y), SL_OK);
                err[x] = rel_l2(&y[0], &b[0]);
                assert_tensor_close(&y[1], &b[1], 1e-5, "quantised P.V keeps the f32 lse");
                /* against the contract's emulation written here (mask FULL) */
                if (kind == 0)
                    for (int64_t h = 0; h < c->hq; h += c->hq - 1)
                        for (int64_t i = 0; i < c->nq; i += 7)
                            for (int64_t e = 0; e < c->d; e += 3) {
                                double want = emulated(&in[0], &in[1], &in[2], h, i, e, 16, pq.bits);
                                double got = tu_at(&y[0], (h * c->nq + i) * c->d + e);
                                ck_assert_msg(fabs(got - want) < 1e-5, "bits %d O[%lld,%lld,%lld] = %g, emulation %g", (int)
                                              pq.bits, (long long)h, (long long)i, (long long)e, got, want);
                            }
                release_n(y, 2);
            }
            ck_assert_msg(err[0] < 0.02 && err[0] < err[1] && err[1] < 0.3, "rel_l2 INT8 %g, INT4 %g", err[0], err[1]);
            release_n(a, 2);
            release_n(b, 2);
            sl_mask_release(&m);
        }
        release_n(in, 3);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Key blocks of 1100: bk.qmax^2 >= 2^24 at 8 bits, the cpu kernel's int32
 * path (below it the code product runs as an exact f32 sgemm). */
START_TEST(test_quant_attn_wide_blocks)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15205);
    sl_tensor in[7];
    in[0] = tu_randn(ctx, &rng, 2, 12, 8, 1.5);
    in[1] = tu_randn(ctx, &rng, 1, 1300, 8, 1.5);
    in[2] = tu_randn(ctx, &rng, 1, 1300, 8, 1);
    sl_mask m;
    sl_pattern_term t[1] = {{.kind = SL_PAT_FULL}};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, t, 1, 12, 1300, 4, 1100, &m), SL_OK);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    for (int bits = 4; bits <= 8; bits += 4) {
        sl_quant_attn_params p = {.bq = 4, .bk = 1100, .bits = bits};
        check_qattn_vs_ref(ctx, &p, in, bits == 8 ? "quant.attn_block bk 1100 (int32 path)" : "quant.attn_block bk 1100 INT4");
        sl_tensor y[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_QUANT_ATTN_BLOCK, &p, in, y), SL_OK);
        for (int64_t i = 0; i < 12; i += 5)
            for (int64_t e = 0; e < 8; e += 3) {
                double want = emulated(&in[0], &in[1], &in[2], 1, i, e, 1100, bits);
                ck_assert_msg(fabs(tu_at(&y[0], (12 + i) * 8 + e) - want) < 1e-5, "bk 1100 vs emulation");
            }
        release_n(y, 2);
    }
    sl_mask_release(&m);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_quant_attn_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 15204);
    sl_tensor in[7];
    in[0] = tu_randn(ctx, &rng, 2, 20, 8, 1);
    in[1] = tu_randn(ctx, &rng, 2, 20, 8, 1);
    in[2] = tu_randn(ctx, &rng, 2, 20, 8, 1);
    sl_mask m;
    sl_pattern_term t[1] = {{.kind = SL_PAT_FULL}};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, t, 1, 20, 20, 8, 8, &m), SL_OK);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    sl_quant_attn_params p = {.bq = 8, .bk = 8, .bits = 12};
    expect_fail(ctx, SL_OP_QUANT_ATTN_BLOCK, &p, in, SL_EARG, "bits");
    sl_mask_release(&m);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_quant_attn_block);
    tcase_add_test(tc, test_quant_attn_wide_blocks);
    tcase_add_test(tc, test_quant_attn_validation);
    tcase_add_test(tc, test_quant_fake);
    tcase_add_test(tc, test_quant_validation);
}

int main(void) { return run_op_suite("quant_ops", add_tests); }
