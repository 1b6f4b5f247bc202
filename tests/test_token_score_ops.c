/* test_token_score_ops.c — pool.tokens, score.lowbit, score.hash and
 * attn.bucket on every available backend against ref (sentinel allocator,
 * ragged sizes, GQA, decode offsets), each against an independent
 * computation written here with plain loops in float64 (means and maxima,
 * exact relative scores at 16 bits and a quantiser of our own at 4 bits,
 * the LSH argmax, masked softmax attention), their invariants (one bucket
 * and tau = -inf equal attn.dense, a mean-pooled normalised block's squared
 * norm is its mean pairwise cosine) and the errors a caller sees (NaN,
 * malformed bounds, half of a bucket pair, negative buckets, bad shapes). */
#include "opsutil.h"

/* Every wanted backend against ref, output by output: floats within tol
 * (relative to the output's scale; infinities equal), i32 exactly. */
static void check_op_backends(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, double tol, const char *what)
{
    const sl_op_info *info = sl_op_info_get(op);
    sl_tensor ref[4], out[4];
    sl_status s = sl_op_run(ctx, SL_BACKEND_REF, op, p, in, ref);
    ck_assert_msg(s == SL_OK, "%s on ref: %s", what, sl_ctx_error(ctx));
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int b = 0; b < nb; b++) {
        s = sl_op_run(ctx, bs[b], op, p, in, out);
        if (s == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU) {
            printf("SKIP %s on %s: %s\n", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
        for (int o = 0; o < info->n_out; o++) {
            int64_t n = sl_tensor_numel(&ref[o]);
            ck_assert_int_eq(sl_tensor_numel(&out[o]), n);
            if (ref[o].dtype == SL_I32) {
                const int32_t *a = out[o].data, *r = ref[o].data;
                for (int64_t i = 0; i < n; i++)
                    if (a[i] != r[i])
                        ck_abort_msg("%s on %s: output %d [%lld] = %d, ref %d", what, sl_backend_name(bs[b]), o,
                                     (long long)i, a[i], r[i]);
                continue;
            }
            double scale = 1e-30;
            for (int64_t i = 0; i < n; i++)
                if (isfinite(tu_at(&ref[o], i)))
                    scale = fmax(scale, fabs(tu_at(&ref[o], i)));
            for (int64_t i = 0; i < n; i++) {
                float a = tu_at(&out[o], i), r = tu_at(&ref[o], i);
                int ok = isinf(r) ? a == r : fabs(a - r) <= tol * fmax(1.0, scale);
                if (!ok || isnan(a))
                    ck_abort_msg("%s on %s: output %d [%lld] = %.9g, ref %.9g", what, sl_backend_name(bs[b]), o,
                                 (long long)i, a, r);
            }
        }
        release_n(out, info->n_out);
    }
    release_n(ref, info->n_out);
}

static sl_tensor i32_vec(sl_ctx *ctx, const int32_t *v, int64_t n)
{
    sl_tensor t;
    int64_t sh[1] = {n};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, sh, &t), SL_OK);
    memcpy(t.data, v, sizeof *v * (size_t)n);
    return t;
}

/* ---- pool.tokens ---- */

START_TEST(test_pool_tokens)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6001);
    int64_t H = 3, n = 53, d = 12;
    sl_tensor in[2] = {tu_randn(ctx, &rng, H, n, d, 1.5), {0}};
    int32_t starts[5] = {0, 1, 9, 30, 31};
    for (int with_bounds = 0; with_bounds < 2; with_bounds++)
        for (int mode = 0; mode < 3; mode++)
            for (int norm = 0; norm < 2; norm++)
                for (int len_norm = 0; len_norm < 2; len_norm++) {
                    in[1] = with_bounds ? i32_vec(ctx, starts, 5) : (sl_tensor){0};
                    sl_pool_params p = {.block = 8, .mode = mode, .normalize = norm, .len_norm = len_norm};
                    char what[96];
                    snprintf(what, sizeof what, "pool.tokens bounds %d mode %d normalize %d len_norm %d", with_bounds,
                             mode, norm, len_norm);
                    check_op_backends(ctx, SL_OP_POOL_TOKENS, &p, in, 1e-6, what);
                    /* independent: each segment from its definition */
                    sl_tensor out[1];
                    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_POOL_TOKENS, &p, in, out), SL_OK);
                    int64_t S = with_bounds ? 5 : (n + 7) / 8;
                    ck_assert_int_eq(out[0].shape[1], S);
                    const float *x = in[0].data;
                    for (int64_t h = 0; h < H; h++)
                        for (int64_t s = 0; s < S; s++) {
                            int64_t t0 = with_bounds ? starts[s] : s * 8;
                            int64_t t1 = with_bounds ? (s + 1 < S ? starts[s + 1] : n) : (t0 + 8 < n ? t0 + 8 : n);
                            for (int64_t c = 0; c < d; c++) {
                                double acc = mode == 0 ? 0 : mode == 1 ? -1e300 : 1e300;
                                for (int64_t t = t0; t < t1; t++) {
                                    double nn = 0;
                                    for (int64_t e = 0; e < d; e++)
                                        nn += (double)x[(h * n + t) * d + e] * x[(h * n + t) * d + e];
                                    double v = x[(h * n + t) * d + c] / (norm ? sqrt(nn) : 1.0);
                                    acc = mode == 0 ? acc + v : mode == 1 ? fmax(acc, v) : fmin(acc, v);
                                }
                                if (mode == 0)
                                    acc /= (double)(t1 - t0);
                                if (len_norm)
                                    acc *= sqrt((double)(t1 - t0));
                                double got = tu_at(&out[0], (h * S + s) * d + c);
                                ck_assert_msg(fabs(got - acc) <= 1e-5 * fmax(1, fabs(acc)), "%s: [%lld,%lld,%lld] %g vs %g",
                                              what, (long long)h, (long long)s, (long long)c, got, acc);
                            }
                        }
                    sl_tensor_release(&out[0]);
                    sl_tensor_release(&in[1]);
                }
    /* the self-similarity identity: |mean of normalised tokens|^2 = mean pairwise cosine */
    sl_pool_params p = {.block = 7, .mode = 0, .normalize = 1};
    in[1] = (sl_tensor){0};
    sl_tensor out[1];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_POOL_TOKENS, &p, in, out), SL_OK);
    const float *x = in[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t s = 0; s < (n + 6) / 7; s++) {
            int64_t t0 = s * 7, t1 = t0 + 7 < n ? t0 + 7 : n;
            double cs = 0;
            for (int64_t a = t0; a < t1; a++)
                for (int64_t b = t0; b < t1; b++) {
                    double ab = 0, aa = 0, bb = 0;
                    for (int64_t e = 0; e < d; e++) {
                        double u = x[(h * n + a) * d + e], v = x[(h * n + b) * d + e];
                        ab += u * v, aa += u * u, bb += v * v;
                    }
                    cs += ab / sqrt(aa * bb);
                }
            cs /= (double)((t1 - t0) * (t1 - t0));
            double sq = 0;
            for (int64_t e = 0; e < d; e++)
                sq += pow(tu_at(&out[0], (h * ((n + 6) / 7) + s) * d + e), 2);
            ck_assert_msg(fabs(sq - cs) < 1e-5, "self-similarity: %g vs %g", sq, cs);
        }
    sl_tensor_release(&out[0]);
    sl_tensor_release(&in[0]);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- score.lowbit ---- */

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
                check_op_backends(ctx, SL_OP_SCORE_LOWBIT, &p, in, 2e-5, what);
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

/* ---- score.hash ---- */

START_TEST(test_score_hash)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6200);
    int64_t hx = 2, hr = 4, n = 61, d = 10, m = 4;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hx, n, d, 1), tu_randn(ctx, &rng, hr, d, m, 1)};
    check_op_backends(ctx, SL_OP_SCORE_HASH, NULL, in, 0, "score.hash");
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

/* ---- attn.bucket ---- */

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
        check_op_backends(ctx, SL_OP_ATTN_BUCKET, &p, in, 1e-5, what);
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

START_TEST(test_token_score_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 6400);
    sl_tensor out[4] = {{0}};
#define EXPECT_FAIL(op, params, in, st, text)                                                                   \
    do {                                                                                                        \
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, op, params, in, out), st);                              \
        ck_assert_msg(strncmp(sl_ctx_error(ctx), sl_op_info_get(op)->name, strlen(sl_op_info_get(op)->name)) == 0, \
                      "%s", sl_ctx_error(ctx));                                                                 \
        ck_assert_msg(strstr(sl_ctx_error(ctx), text), "%s", sl_ctx_error(ctx));                               \
        ck_assert_ptr_null(out[0].buf);                                                                         \
    } while (0)
    /* pool.tokens: NaN, bounds not starting at 0, not increasing, past n */
    sl_tensor x[2] = {tu_randn(ctx, &rng, 2, 10, 4, 1), {0}};
    sl_pool_params pp = {.block = 4};
    ((float *)x[0].data)[5] = NAN;
    EXPECT_FAIL(SL_OP_POOL_TOKENS, &pp, x, SL_EARG, "NaN");
    ((float *)x[0].data)[5] = 0.5f;
    int32_t b1[3] = {1, 3, 5}, b2[3] = {0, 3, 3}, b3[3] = {0, 3, 10};
    const int32_t *bad[3] = {b1, b2, b3};
    const char *why[3] = {"expected 0", "strictly increasing", "strictly increasing"};
    for (int i = 0; i < 3; i++) {
        x[1] = i32_vec(ctx, bad[i], 3);
        EXPECT_FAIL(SL_OP_POOL_TOKENS, &pp, x, SL_EARG, why[i]);
        sl_tensor_release(&x[1]);
    }
    /* score.lowbit: q/k head_dim mismatch, NaN in k, lse of the wrong shape */
    sl_tensor lb[3] = {tu_randn(ctx, &rng, 2, 6, 4, 1), tu_randn(ctx, &rng, 1, 6, 5, 1), {0}};
    sl_score_lowbit_params lp = {.bq = 4, .bk = 4, .bits = 4, .q_group = 2, .k_group = 2, .smooth_k = 1, .causal = 1};
    EXPECT_FAIL(SL_OP_SCORE_LOWBIT, &lp, lb, SL_ESHAPE, "head_dim");
    sl_tensor_release(&lb[1]);
    lb[1] = tu_randn(ctx, &rng, 1, 6, 4, 1);
    ((float *)lb[1].data)[3] = NAN;
    EXPECT_FAIL(SL_OP_SCORE_LOWBIT, &lp, lb, SL_EARG, "NaN");
    ((float *)lb[1].data)[3] = 0.f;
    lb[2] = tu_randn(ctx, &rng, 1, 2, 6, 1);
    lb[2].ndim = 2, lb[2].shape[0] = 1, lb[2].shape[1] = 12, lb[2].stride[0] = 12, lb[2].stride[1] = 1;
    EXPECT_FAIL(SL_OP_SCORE_LOWBIT, &lp, lb, SL_ESHAPE, "opt.lse");
    sl_tensor_release(&lb[2]);
    lb[2] = (sl_tensor){0};
    /* score.hash: rotation heads not a multiple, wrong channel count */
    sl_tensor hs[2] = {tu_randn(ctx, &rng, 2, 6, 4, 1), tu_randn(ctx, &rng, 3, 4, 2, 1)};
    EXPECT_FAIL(SL_OP_SCORE_HASH, NULL, hs, SL_ESHAPE, "rot must be");
    sl_tensor_release(&hs[1]);
    hs[1] = tu_randn(ctx, &rng, 2, 5, 2, 1);
    EXPECT_FAIL(SL_OP_SCORE_HASH, NULL, hs, SL_ESHAPE, "rot must be");
    /* attn.bucket: one bucket list only, a negative bucket, a wrong shape */
    sl_tensor ab[5] = {tu_randn(ctx, &rng, 2, 5, 4, 1), tu_randn(ctx, &rng, 1, 7, 4, 1), tu_randn(ctx, &rng, 1, 7, 4, 1),
                       i32_tensor(ctx, 2, 5), i32_tensor(ctx, 2, 7)};
    memset(ab[3].data, 0, sizeof(int32_t) * 10);
    memset(ab[4].data, 0, sizeof(int32_t) * 14);
    sl_attn_bucket_params bp = {.causal = 1};
    sl_tensor keep4 = ab[4];
    ab[4] = (sl_tensor){0};
    EXPECT_FAIL(SL_OP_ATTN_BUCKET, &bp, ab, SL_EARG, "come together");
    ab[4] = keep4;
    ((int32_t *)ab[4].data)[3] = -1;
    EXPECT_FAIL(SL_OP_ATTN_BUCKET, &bp, ab, SL_EARG, "bucket ids >= 0");
    ((int32_t *)ab[4].data)[3] = 0;
    sl_tensor keep3 = ab[3];
    ab[3] = i32_tensor(ctx, 1, 5);
    EXPECT_FAIL(SL_OP_ATTN_BUCKET, &bp, ab, SL_ESHAPE, "opt.qb");
    sl_tensor_release(&ab[3]);
    ab[3] = keep3;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &bp, ab, out), SL_OK);
    release_n(out, 3);
#undef EXPECT_FAIL
    release_n(x, 1);
    release_n(lb, 2);
    release_n(hs, 2);
    release_n(ab, 5);
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
    check_op_backends(ctx, SL_OP_ATTN_BUCKET, &p, in, 1e-5, "empty rows");
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

START_TEST(test_token_score_alloc_failures_leak_nothing)
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
        sl_score_lowbit_params lp = {.bq = 4, .bk = 4, .bits = 4, .q_group = 2, .k_group = 2, .smooth_k = 1, .causal = 1};
        sl_tensor lin[3] = {in[0], in[1], {0}};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_LOWBIT, &lp, lin, out);
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "fail %ld: %d %s", fail, s, sl_ctx_error(ctx));
        if (s == SL_OK)
            sl_tensor_release(&out[0]);
        sl_attn_bucket_params bp = {.causal = 1};
        s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BUCKET, &bp, in, out);
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "fail %ld: %d %s", fail, s, sl_ctx_error(ctx));
        if (s == SL_OK)
            release_n(out, 3);
        al.fail_at = 0;
        release_n(in, 5);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

static Suite *token_score_suite(void)
{
    Suite *s = suite_create("token_score_ops");
    TCase *tc = tcase_create("token_score_ops");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_pool_tokens);
    tcase_add_loop_test(tc, test_score_lowbit, 0, N_CASES);
    tcase_add_test(tc, test_score_lowbit_oracle_is_log_probability);
    tcase_add_test(tc, test_score_hash);
    tcase_add_loop_test(tc, test_attn_bucket, 0, N_CASES);
    tcase_add_test(tc, test_token_score_validation);
    tcase_add_test(tc, test_attn_bucket_empty_rows);
    tcase_add_test(tc, test_token_score_alloc_failures_leak_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(token_score_suite()); }
