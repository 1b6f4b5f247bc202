/* test_mm_ops.c — the mm family (issue 17) on every backend of
 * SL_TEST_BACKENDS against ref, and ref against float64 math written here:
 * N:M masks keep exactly N of every M and they are the N largest |w| (a
 * brute-force sort; a first-N selector fails the same check), compressed
 * formats decode to the masked weight bit-exactly, every sparse product
 * equals the dense product of the masked weight within 1e-5 relative, the
 * activation-sparse product equals the dense one and its FLOPs count only
 * the nonzeros, bad formats are refused. */

#include "opsutil.h"

#include <math.h>

#include <stdlib.h>

static sl_tensor u8_2d(sl_ctx *ctx, int64_t a, int64_t b)
{
    sl_tensor t;
    int64_t sh[2] = {a, b};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 2, sh, &t), SL_OK);
    return t;
}

/* w [N, K] normal, with every 7th entry copied from its neighbour's magnitude
 * (ties) and a fraction `zero` of exact zeros. */
static sl_tensor weight(sl_ctx *ctx, sl_rng *rng, int64_t N, int64_t K, double zero)
{
    int64_t sh[2] = {N, K};
    sl_tensor w = randn_shape(ctx, rng, 2, sh, 1.0);
    float *p = w.data;
    for (int64_t i = 1; i < N * K; i++) {
        if (i % 7 == 0)
            p[i] = -p[i - 1];
        if (sl_rng_uniform(rng) < zero)
            p[i] = 0;
    }
    return w;
}

/* y = x . W^T in float64, W given densely. */
static void dense_f64(const sl_tensor *x, const float *w, int64_t N, double *y)
{
    int64_t T = x->shape[0], K = x->shape[1];
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < N; r++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (double)tu_at(x, t * K + k) * w[r * K + k];
            y[t * N + r] = s;
        }
}

/* max |y - want| <= 1e-5 max |want| */
static void assert_close_f64(const sl_tensor *y, const double *want, const char *what)
{
    int64_t n = sl_tensor_numel(y);
    double scale = 1e-30, err = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(want[i]));
    for (int64_t i = 0; i < n; i++)
        err = fmax(err, fabs(tu_at(y, i) - want[i]));
    ck_assert_msg(err <= 1e-5 * scale, "%s: max error %g, scale %g", what, err, scale);
}

/* idx[0..n) sorted by |row[i]| descending, then index ascending (insertion sort). */
static void sort_by_magnitude(const float *row, int *idx, int n)
{
    for (int i = 1; i < n; i++) {
        int v = idx[i], j = i - 1;
        while (j >= 0 && (fabsf(row[idx[j]]) < fabsf(row[v]) || (fabsf(row[idx[j]]) == fabsf(row[v]) && idx[j] > v))) {
            idx[j + 1] = idx[j];
            j--;
        }
        idx[j + 1] = v;
    }
}

/* 1 when every group of (vals, pos) holds exactly the min(n, width) entries
 * of largest |w| (ties: lower column), by a sort, each with w's value, in
 * increasing position, padding slots 0 at position 0. */
static int nm_is_top(const float *w, int64_t N, int64_t K, int n, int m, const float *vals, const uint8_t *pos)
{
    int64_t G = (K + m - 1) / m;
    for (int64_t r = 0; r < N; r++)
        for (int64_t g = 0; g < G; g++) {
            int width = (int)(K - g * m < m ? K - g * m : m), kept = width < n ? width : n, idx[256];
            for (int i = 0; i < width; i++)
                idx[i] = i;
            const float *row = w + r * K + g * m;
            sort_by_magnitude(row, idx, width);
            int want[256] = {0};
            for (int i = 0; i < kept; i++)
                want[idx[i]] = 1;
            const float *v = vals + (r * G + g) * n;
            const uint8_t *q = pos + (r * G + g) * n;
            for (int s = 0, i = 0; i < width; i++)
                if (want[i]) {
                    if (q[s] != i || v[s] != row[i])
                        return 0;
                    s++;
                }
            for (int s = kept; s < n; s++)
                if (q[s] != 0 || v[s] != 0)
                    return 0;
        }
    return 1;
}

/* The dense W~ of an N:M encoding (a sum over slots). */
static float *nm_decode(const sl_tensor *vals, const sl_tensor *pos, int64_t K, int n, int m)
{
    int64_t N = vals->shape[0], G = (K + m - 1) / m;
    float *w = calloc((size_t)(N * K + 1), sizeof *w);
    for (int64_t r = 0; r < N; r++)
        for (int64_t i = 0; i < G * n; i++)
            w[r * K + (i / n) * m + ((const uint8_t *)pos->data)[r * G * n + i]] += tu_at(vals, r * G * n + i);
    return w;
}

START_TEST(test_mm_dense)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17001);
    int64_t shapes[][3] = {{1, 37, 19}, {9, 64, 40}, {33, 70, 45}};
    for (int c = 0; c < 3; c++) {
        int64_t T = shapes[c][0], K = shapes[c][1], N = shapes[c][2], sx[2] = {T, K};
        sl_tensor in[2] = {randn_shape(ctx, &rng, 2, sx, 1.0), weight(ctx, &rng, N, K, 0)};
        check_op_vs_ref(ctx, SL_OP_MM_DENSE, NULL, in, 1e-5, "mm.dense");
        sl_tensor y = run_op1(ctx, SL_BACKEND_REF, SL_OP_MM_DENSE, NULL, in);
        double *want = malloc(sizeof *want * (size_t)(T * N));
        dense_f64(&in[0], in[1].data, N, want);
        assert_close_f64(&y, want, "mm.dense ref vs float64");
        ck_assert_double_eq(sl_op_flops(SL_OP_MM_DENSE, NULL, in), 2.0 * T * N * K);
        free(want);
        sl_tensor_release(&y);
        release_n(in, 2);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_mm_nm)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17002);
    int nm[][2] = {{2, 4}, {4, 8}, {3, 6}, {1, 4}, {4, 4}};
    int64_t Ks[] = {64, 70, 37}; /* exact groups, ragged, ragged past n */
    int64_t Ts[] = {1, 5, 40};   /* decode, a block of 8, blocks of 32 */
    for (int c = 0; c < 5; c++)
        for (int kk = 0; kk < 3; kk++) {
            int n = nm[c][0], m = nm[c][1];
            int64_t K = Ks[kk], N = 13 + c, T = Ts[(c + kk) % 3];
            sl_mm_nm_params p = {.n = n, .m = m};
            sl_tensor w = weight(ctx, &rng, N, K, c == 3 ? 0.3 : 0);
            check_op_vs_ref(ctx, SL_OP_MM_NM_ENCODE, &p, &w, 0, "mm.nm_encode");
            sl_tensor enc[2];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_MM_NM_ENCODE, &p, &w, enc), SL_OK);
            ck_assert_int_eq(enc[1].dtype, SL_U8);
            /* the card's check: exactly N kept per M, the N largest by a sort */
            ck_assert(nm_is_top(w.data, N, K, n, m, enc[0].data, enc[1].data));
            float *wm = nm_decode(&enc[0], &enc[1], K, n, m);
            /* decode reproduces the masked W bit-exactly: kept entries are w's, the rest 0 */
            for (int64_t r = 0; r < N; r++)
                for (int64_t g = 0; g * m < K; g++) {
                    int64_t width = K - g * m < m ? K - g * m : m, kept = 0;
                    for (int64_t i = 0; i < width; i++) {
                        float d = wm[r * K + g * m + i], o = tu_at(&w, r * K + g * m + i);
                        ck_assert(d == 0 || d == o);
                        kept += d != 0;
                    }
                    int64_t nz = 0;
                    for (int64_t i = 0; i < width; i++)
                        nz += tu_at(&w, r * K + g * m + i) != 0;
                    ck_assert_int_le(kept, n);
                    ck_assert_int_eq(kept, nz < (width < n ? width : n) ? nz : (width < n ? width : n));
                }
            int64_t sx[2] = {T, K};
            sl_tensor in[3] = {randn_shape(ctx, &rng, 2, sx, 1.0), enc[0], enc[1]};
            check_op_vs_ref(ctx, SL_OP_MM_NM, &p, in, 1e-5, "mm.nm");
            for (int b = 0; b < SL_BACKEND__COUNT; b++) {
                if (!backend_wanted((sl_backend_id)b) || !sl_backend_available((sl_backend_id)b))
                    continue;
                sl_tensor y;
                sl_status s = sl_op_run(ctx, (sl_backend_id)b, SL_OP_MM_NM, &p, in, &y);
                ck_assert_msg(s == SL_OK, "mm.nm on %s: %s", sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
                double *want = malloc(sizeof *want * (size_t)(T * N));
                dense_f64(&in[0], wm, N, want);
                assert_close_f64(&y, want, "mm.nm vs dense of the masked weight");
                free(want);
                sl_tensor_release(&y);
            }
            ck_assert_double_eq(sl_op_flops(SL_OP_MM_NM, &p, in), 2.0 * T * N * ((K + m - 1) / m) * n);
            free(wm);
            sl_tensor_release(&in[0]);
            release_n(enc, 2);
            sl_tensor_release(&w);
        }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* The N-largest check is not vacuous: a first-N selector (score-blind) fails it. */
START_TEST(test_mm_nm_score_blind_fails)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17003);
    int64_t N = 8, K = 32;
    int n = 2, m = 4, G = 8;
    sl_tensor w = weight(ctx, &rng, N, K, 0);
    float vals[8 * 16];
    uint8_t pos[8 * 16];
    for (int64_t r = 0; r < N; r++)
        for (int g = 0; g < G; g++)
            for (int s = 0; s < n; s++) {
                vals[(r * G + g) * n + s] = tu_at(&w, r * K + g * m + s);
                pos[(r * G + g) * n + s] = (uint8_t)s;
            }
    ck_assert(!nm_is_top(w.data, N, K, n, m, vals, pos));
    sl_mm_nm_params p = {.n = n, .m = m};
    sl_tensor enc[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_MM_NM_ENCODE, &p, &w, enc), SL_OK);
    ck_assert(nm_is_top(w.data, N, K, n, m, enc[0].data, enc[1].data));
    release_n(enc, 2);
    sl_tensor_release(&w);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_mm_bitmap)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17004);
    double zero[] = {1.0, 0.99, 0.9, 0.5, 0.0}; /* densities 0, 1%, 10%, 50%, 100% */
    int64_t Ks[] = {40, 64, 77};
    int64_t Ts[] = {1, 3, 35, 9, 70};
    for (int c = 0; c < 5; c++) {
        int64_t K = Ks[c % 3], N = 21, T = Ts[c], nw = (K + 31) / 32;
        sl_tensor w = weight(ctx, &rng, N, K, zero[c]);
        if (c == 0)
            memset(w.data, 0, sizeof(float) * (size_t)(N * K));
        int64_t maxc = 0, total = 0;
        for (int64_t r = 0; r < N; r++) {
            int64_t cnt = 0;
            for (int64_t k = 0; k < K; k++)
                cnt += tu_at(&w, r * K + k) != 0;
            maxc = cnt > maxc ? cnt : maxc;
            total += cnt;
        }
        for (int packed = 0; packed < 2; packed++) {
            /* packed: cuda's cuSPARSE CSR path in an nvcc build (density < 1); unpacked: the CUDA-core
             * kernel (the only one under the simulator) */
            sl_mm_bitmap_params p = {.cap = packed ? maxc : 0, .csr_below = packed ? 1.0 : 0.0};
            if (packed && maxc == 0)
                continue;
            check_op_vs_ref(ctx, SL_OP_MM_BITMAP_ENCODE, &p, &w, 0, "mm.bitmap_encode");
            sl_tensor enc[2];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_MM_BITMAP_ENCODE, &p, &w, enc), SL_OK);
            int64_t cap = enc[1].shape[1];
            ck_assert_int_eq(cap, packed ? maxc : K);
            ck_assert_int_eq(enc[0].shape[1], nw);
            /* decode: bit set iff nonzero, the values in column order, sum of popcounts = nnz */
            int64_t pop = 0;
            for (int64_t r = 0; r < N; r++) {
                int64_t cnt = 0;
                for (int64_t k = 0; k < K; k++) {
                    uint32_t word = ((const uint32_t *)enc[0].data)[r * nw + k / 32];
                    int bit = (word >> (k % 32)) & 1;
                    ck_assert_int_eq(bit, tu_at(&w, r * K + k) != 0);
                    if (bit)
                        ck_assert(tu_at(&enc[1], r * cap + cnt++) == tu_at(&w, r * K + k));
                }
                for (int64_t j = 0; j < nw; j++)
                    pop += __builtin_popcount(((const uint32_t *)enc[0].data)[r * nw + j]);
            }
            ck_assert_int_eq(pop, total);
            int64_t sx[2] = {T, K};
            sl_tensor in[3] = {randn_shape(ctx, &rng, 2, sx, 1.0), enc[0], enc[1]};
            check_op_vs_ref(ctx, SL_OP_MM_BITMAP, &p, in, 1e-5, "mm.bitmap");
            double *want = malloc(sizeof *want * (size_t)(T * N));
            dense_f64(&in[0], w.data, N, want);
            for (int b = 0; b < SL_BACKEND__COUNT; b++) {
                if (!backend_wanted((sl_backend_id)b) || !sl_backend_available((sl_backend_id)b))
                    continue;
                sl_tensor y;
                sl_status s = sl_op_run(ctx, (sl_backend_id)b, SL_OP_MM_BITMAP, &p, in, &y);
                ck_assert_msg(s == SL_OK, "mm.bitmap on %s: %s", sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
                assert_close_f64(&y, want, "mm.bitmap vs dense of the masked weight");
                sl_tensor_release(&y);
            }
            ck_assert_double_eq(sl_op_flops(SL_OP_MM_BITMAP, &p, in), 2.0 * T * total);
            free(want);
            sl_tensor_release(&in[0]);
            release_n(enc, 2);
        }
        sl_tensor_release(&w);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_mm_act_sparse)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17005);
    double zero[] = {1.0, 0.7, 0.0};
    int64_t Ts[] = {1, 11, 20};
    for (int c = 0; c < 3; c++) {
        int64_t T = Ts[c], K = 45, N = 600, sx[2] = {T, K}, sw[2] = {K, N};
        sl_tensor in[2] = {randn_shape(ctx, &rng, 2, sx, 1.0), randn_shape(ctx, &rng, 2, sw, 1.0)};
        int64_t nz = 0;
        for (int64_t i = 0; i < T * K; i++) {
            /* row 2 all zero; column 5 all zero */
            if (sl_rng_uniform(&rng) < zero[c] || i / K == 2 || i % K == 5)
                f32p(&in[0])[i] = 0;
            nz += tu_at(&in[0], i) != 0;
        }
        check_op_vs_ref(ctx, SL_OP_MM_ACT_SPARSE, NULL, in, 1e-5, "mm.act_sparse");
        /* W = wt^T densely, then the plain product */
        float *w = malloc(sizeof *w * (size_t)(N * K));
        for (int64_t k = 0; k < K; k++)
            for (int64_t r = 0; r < N; r++)
                w[r * K + k] = tu_at(&in[1], k * N + r);
        double *want = malloc(sizeof *want * (size_t)(T * N));
        dense_f64(&in[0], w, N, want);
        for (int b = 0; b < SL_BACKEND__COUNT; b++) {
            if (!backend_wanted((sl_backend_id)b) || !sl_backend_available((sl_backend_id)b))
                continue;
            sl_tensor y = run_op1(ctx, (sl_backend_id)b, SL_OP_MM_ACT_SPARSE, NULL, in);
            assert_close_f64(&y, want, "mm.act_sparse vs dense");
            if (c == 0)
                for (int64_t i = 0; i < T * N; i++)
                    ck_assert(tu_at(&y, i) == 0);
            sl_tensor_release(&y);
        }
        ck_assert_double_eq(sl_op_flops(SL_OP_MM_ACT_SPARSE, NULL, in), 2.0 * nz * N);
        free(w);
        free(want);
        release_n(in, 2);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_mm_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17006);
    int64_t sx[2] = {2, 10};
    sl_mm_nm_params p = {.n = 2, .m = 4};
    /* a position past a ragged last group (K = 10: groups 4, 4, 2) */
    sl_tensor in[3] = {randn_shape(ctx, &rng, 2, sx, 1.0), f32_2d(ctx, 3, 6), u8_2d(ctx, 3, 6)};
    for (int i = 0; i < 18; i++)
        f32p(&in[1])[i] = 1, ((uint8_t *)in[2].data)[i] = (uint8_t)(i % 2);
    ((uint8_t *)in[2].data)[5] = 2;
    expect_fail(ctx, SL_OP_MM_NM, &p, in, SL_EARG, "pos[0, 5] = 2 is outside its group of 2 columns");
    ((uint8_t *)in[2].data)[5] = 1;
    sl_mm_nm_params bad = {.n = 5, .m = 4};
    expect_fail(ctx, SL_OP_MM_NM, &bad, in, SL_EARG, "n = 5 kept per group exceeds the group size m = 4");
    f32p(&in[0])[4] = NAN; /* column 4: slot (group 1, position 0) of every row */
    expect_fail(ctx, SL_OP_MM_NM, &p, in, SL_EARG, "an input holds NaN");
    release_n(in, 3);
    /* bitmap: a bit past K, more bits than value slots, cap below a row's count */
    sl_tensor bin[3] = {randn_shape(ctx, &rng, 2, sx, 1.0), i32_tensor(ctx, 2, 1), f32_2d(ctx, 2, 3)};
    for (int i = 0; i < 6; i++)
        f32p(&bin[2])[i] = 1;
    ((int32_t *)bin[1].data)[0] = 1 << 10;
    ((int32_t *)bin[1].data)[1] = 1;
    expect_fail(ctx, SL_OP_MM_BITMAP, NULL, bin, SL_EARG, "row 0 of bits has a bit past column K = 10");
    ((int32_t *)bin[1].data)[0] = 0xF;
    expect_fail(ctx, SL_OP_MM_BITMAP, NULL, bin, SL_EARG, "row 0 of bits has 4 bits set, more than vals' 3 slots");
    release_n(bin, 3);
    sl_tensor w = randn_shape(ctx, &rng, 2, sx, 1.0);
    sl_mm_bitmap_params bp = {.cap = 9};
    expect_fail(ctx, SL_OP_MM_BITMAP_ENCODE, &bp, &w, SL_EARG, "row 0 of w has 10 nonzeros, more than cap = 9");
    /* shapes: w's K must be x's */
    sl_tensor din[2] = {randn_shape(ctx, &rng, 2, sx, 1.0), f32_2d(ctx, 4, 9)};
    expect_fail(ctx, SL_OP_MM_DENSE, NULL, din, SL_ESHAPE, "input 'w' must be [any, 10]");
    release_n(din, 2);
    sl_tensor_release(&w);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* mm.out_sparse (issue 17, session 3; card act_sparse_matmul step 2): every backend vs ref; ref
 * vs the float64 product written here: listed outputs = x[t] . w[i] (times the gate), the rest
 * exactly 0; -1 padding and repeats; S = 0 gives zeros; every output listed = the dense product;
 * FLOPs count the listed entries; an out-of-range entry is refused. */
START_TEST(test_mm_out_sparse)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17006);
    const int64_t shapes[][4] = {{1, 64, 172, 40}, {5, 77, 33, 0}, {9, 40, 21, 21}, {3, 300, 100, 7}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t T = shapes[si][0], K = shapes[si][1], N = shapes[si][2], S = shapes[si][3];
        int64_t xs[2] = {T, K}, ws[2] = {N, K}, gs[2] = {T, N};
        int32_t *sel = malloc(sizeof *sel * (size_t)(T * S + 1));
        ck_assert_ptr_nonnull(sel);
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < S; j++) {
                int64_t r = S == N ? j : (int64_t)(sl_rng_uniform(&rng) * (double)N) % N;
                sel[t * S + j] = (S != N && j % 5 == 4) ? -1 : (int32_t)r; /* padding, repeats possible */
            }
        sl_tensor sel_t = i32_tensor(ctx, T, S);
        memcpy(sel_t.data, sel, sizeof *sel * (size_t)(T * S));
        sl_tensor in[4] = {randn_shape(ctx, &rng, 2, xs, 1), randn_shape(ctx, &rng, 2, ws, 1), sel_t, {0}};
        sl_tensor gate = randn_shape(ctx, &rng, 2, gs, 1);
        for (int with_gate = 0; with_gate < 2; with_gate++) {
            in[3] = with_gate ? gate : (sl_tensor){0};
            check_op_vs_ref(ctx, SL_OP_MM_OUT_SPARSE, NULL, in, 1e-5, "mm.out_sparse");
            sl_tensor y = run_op1(ctx, SL_BACKEND_REF, SL_OP_MM_OUT_SPARSE, NULL, in);
            const float *x = f32p(&in[0]), *w = f32p(&in[1]), *g = f32p(&gate), *yy = f32p(&y);
            double listed = 0;
            for (int64_t t = 0; t < T; t++)
                for (int64_t i = 0; i < N; i++) {
                    int hit = 0;
                    for (int64_t j = 0; j < S; j++)
                        hit |= sel[t * S + j] == i;
                    double want = 0;
                    if (hit) {
                        for (int64_t k = 0; k < K; k++)
                            want += (double)x[t * K + k] * w[i * K + k];
                        if (with_gate)
                            want = (double)(float)want * g[t * N + i];
                    }
                    ck_assert_msg(fabs(yy[t * N + i] - want) <= 1e-5 * (1 + fabs(want)), "t %lld i %lld",
                                  (long long)t, (long long)i);
                    if (!hit)
                        ck_assert(yy[t * N + i] == 0.f);
                }
            for (int64_t j = 0; j < T * S; j++)
                listed += sel[j] >= 0;
            ck_assert_double_eq(sl_op_flops(SL_OP_MM_OUT_SPARSE, NULL, in), listed * (2.0 * K + with_gate));
            if (S == N && !with_gate) { /* everything listed: the dense product */
                sl_tensor d = run_op1(ctx, SL_BACKEND_CPU, SL_OP_MM_DENSE, NULL, in);
                sl_tensor o = run_op1(ctx, SL_BACKEND_CPU, SL_OP_MM_OUT_SPARSE, NULL, in);
                assert_tensor_close(&o, &d, 1e-5, "out_sparse with every output = mm.dense");
                sl_tensor_release(&d);
                sl_tensor_release(&o);
            }
            sl_tensor_release(&y);
        }
        in[3] = (sl_tensor){0};
        if (T * S > 0) {
            ((int32_t *)in[2].data)[0] = (int32_t)N;
            expect_fail(ctx, SL_OP_MM_OUT_SPARSE, NULL, in, SL_EARG, "is outside");
        }
        release_n(in, 3);
        sl_tensor_release(&gate);
        free(sel);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* mm.moe (issue 17, session 4; card moe_split_route, executor steps 1-4): every backend vs ref
 * (the grouped executors vs the float64 per-token loop); ref vs the MoE written here on the
 * unpermuted FFN (W1, W3 [H, D], W2 [D, H], a random unit -> expert map, the permutation to
 * contiguous expert blocks built here); k = E with unit weights equals the dense FFN (the card's
 * check); -1 slots, repeated experts, empty experts and experts with no tokens; FLOPs count the
 * routed units; bad routes and offsets are refused. */
static double silu_d(double g) { return g / (1.0 + exp(-g)); }

START_TEST(test_mm_moe)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 17040);
    /* T, D, H, E, k, skew (route most pairs to expert 0: more than 64 pairs in one segment) */
    const int64_t shapes[][6] = {{1, 16, 40, 4, 2, 0}, {7, 33, 43, 5, 2, 0}, {150, 12, 20, 3, 2, 1},
                                 {5, 20, 600, 2, 1, 0}, {3, 530, 30, 3, 3, 0}, {9, 24, 36, 6, 6, 0},
                                 {70, 128, 300, 4, 2, 0}}; /* the last above the cpu's serial threshold */
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t T = shapes[si][0], D = shapes[si][1], H = shapes[si][2], E = shapes[si][3], k = shapes[si][4];
        int skew = (int)shapes[si][5];
        int64_t xs[2] = {T, D}, ws[2] = {H, D}, w2s[2] = {D, H}, rs[2] = {T, k};
        sl_tensor x = randn_shape(ctx, &rng, 2, xs, 1), W1 = randn_shape(ctx, &rng, 2, ws, 0.3),
                  W3 = randn_shape(ctx, &rng, 2, ws, 0.3), W2 = randn_shape(ctx, &rng, 2, w2s, 0.3);
        sl_tensor rw = randn_shape(ctx, &rng, 2, rs, 1);
        /* unit -> expert: random, expert E - 1 left empty when E > 2 */
        int32_t *of = malloc(sizeof *of * (size_t)H), *offs = malloc(sizeof *offs * (size_t)(E + 1));
        int64_t *perm = malloc(sizeof *perm * (size_t)H);
        ck_assert(of && offs && perm);
        int64_t used = E > 2 ? E - 1 : E;
        for (int64_t u = 0; u < H; u++)
            of[u] = (int32_t)((int64_t)(sl_rng_uniform(&rng) * (double)used) % used);
        int64_t n = 0;
        offs[0] = 0;
        for (int64_t e = 0; e < E; e++) {
            for (int64_t u = 0; u < H; u++)
                if (of[u] == e)
                    perm[n++] = u;
            offs[e + 1] = (int32_t)n;
        }
        ck_assert_int_eq(n, H);
        sl_tensor w1 = f32_2d(ctx, H, D), w3 = f32_2d(ctx, H, D), w2t = f32_2d(ctx, H, D);
        for (int64_t i = 0; i < H; i++)
            for (int64_t d = 0; d < D; d++) {
                f32p(&w1)[i * D + d] = f32p(&W1)[perm[i] * D + d];
                f32p(&w3)[i * D + d] = f32p(&W3)[perm[i] * D + d];
                f32p(&w2t)[i * D + d] = f32p(&W2)[d * H + perm[i]];
            }
        sl_tensor route = i32_tensor(ctx, T, k);
        int32_t *r = route.data;
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < k; j++) {
                double v = sl_rng_uniform(&rng);
                r[t * k + j] = skew && v < 0.7 ? 0 : (int32_t)((int64_t)(v * (double)E) % E);
                if (k > 1 && j == k - 1 && t % 4 == 1)
                    r[t * k + j] = -1; /* an unused slot */
            }
        sl_tensor in[7] = {x, w1, w3, w2t, i32_vec(ctx, offs, E + 1), route, rw};
        for (int weighted = 0; weighted < 2; weighted++) {
            in[6] = weighted ? rw : (sl_tensor){0};
            check_op_vs_ref(ctx, SL_OP_MM_MOE, NULL, in, 1e-5, "mm.moe");
            /* ref vs the MoE on the unpermuted weights */
            double *want = calloc((size_t)(T * D), sizeof *want), flops = 0;
            ck_assert_ptr_nonnull(want);
            for (int64_t t = 0; t < T; t++)
                for (int64_t j = 0; j < k; j++) {
                    int32_t e = r[t * k + j];
                    if (e < 0)
                        continue;
                    double p = weighted ? f32p(&rw)[t * k + j] : 1.0, units = 0;
                    for (int64_t u = 0; u < H; u++) {
                        if (of[u] != e)
                            continue;
                        units++;
                        double g = 0, v = 0;
                        for (int64_t d = 0; d < D; d++) {
                            g += (double)f32p(&x)[t * D + d] * f32p(&W1)[u * D + d];
                            v += (double)f32p(&x)[t * D + d] * f32p(&W3)[u * D + d];
                        }
                        for (int64_t d = 0; d < D; d++)
                            want[t * D + d] += p * silu_d(g) * v * f32p(&W2)[d * H + u];
                    }
                    flops += 6 * units * (double)D + 4 * units + 2 * (double)D;
                }
            sl_tensor y = run_op1(ctx, SL_BACKEND_REF, SL_OP_MM_MOE, NULL, in);
            assert_close_f64(&y, want, "mm.moe ref vs the unpermuted MoE");
            ck_assert_double_eq_tol(sl_op_flops(SL_OP_MM_MOE, NULL, in), flops, 1e-6 * flops + 1e-9);
            sl_tensor_release(&y);
            free(want);
        }
        /* k = E, every expert once, unit weights: the dense FFN W2 (silu(W1 x) * W3 x) */
        sl_tensor all = i32_tensor(ctx, T, E);
        for (int64_t t = 0; t < T; t++)
            for (int64_t e = 0; e < E; e++)
                ((int32_t *)all.data)[t * E + e] = (int32_t)((e + t) % E);
        sl_tensor ina[7] = {x, w1, w3, w2t, in[4], all, {0}};
        double *dense = calloc((size_t)(T * D), sizeof *dense);
        ck_assert_ptr_nonnull(dense);
        for (int64_t t = 0; t < T; t++)
            for (int64_t u = 0; u < H; u++) {
                double g = 0, v = 0;
                for (int64_t d = 0; d < D; d++) {
                    g += (double)f32p(&x)[t * D + d] * f32p(&W1)[u * D + d];
                    v += (double)f32p(&x)[t * D + d] * f32p(&W3)[u * D + d];
                }
                for (int64_t d = 0; d < D; d++)
                    dense[t * D + d] += silu_d(g) * v * f32p(&W2)[d * H + u];
            }
        sl_backend_id bs[8];
        int nb = other_backends(bs);
        bs[nb++] = SL_BACKEND_REF;
        for (int b = 0; b < nb; b++) {
            sl_tensor y = run_op1(ctx, bs[b], SL_OP_MM_MOE, NULL, ina);
            assert_close_f64(&y, dense, "mm.moe with every expert = the dense FFN");
            sl_tensor_release(&y);
        }
        free(dense);
        /* refusals */
        r[0] = (int32_t)E;
        expect_fail(ctx, SL_OP_MM_MOE, NULL, in, SL_EARG, "is outside");
        r[0] = 0;
        ((int32_t *)in[4].data)[E] = (int32_t)H + 1;
        expect_fail(ctx, SL_OP_MM_MOE, NULL, in, SL_EARG, "offs must run from 0");
        if (E > 1) {
            ((int32_t *)in[4].data)[E] = (int32_t)H;
            int32_t keep = ((int32_t *)in[4].data)[1];
            ((int32_t *)in[4].data)[1] = (int32_t)H + 1;
            expect_fail(ctx, SL_OP_MM_MOE, NULL, in, SL_EARG, "nondecreasing");
            ((int32_t *)in[4].data)[1] = keep;
        }
        sl_tensor_release(&all);
        sl_tensor_release(&in[4]);
        release_n(in, 4);
        sl_tensor_release(&route);
        sl_tensor_release(&rw);
        release_n((sl_tensor[]){W1, W3, W2}, 3);
        free(of);
        free(offs);
        free(perm);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_mm_moe);
    tcase_add_test(tc, test_mm_out_sparse);
    tcase_add_test(tc, test_mm_dense);
    tcase_add_test(tc, test_mm_nm);
    tcase_add_test(tc, test_mm_nm_score_blind_fails);
    tcase_add_test(tc, test_mm_bitmap);
    tcase_add_test(tc, test_mm_act_sparse);
    tcase_add_test(tc, test_mm_validation);
}

int main(void) { return run_op_suite("mm_ops", add_tests); }
