/* opsutil.h — what the op suites (tests/test_<family>_ops.c, one per op
 * family of core/ops.def, and test_op_dispatch.c) share: the shape tables
 * (CASES, and ATTN_BIG_D for head_dim 128 and 256), input makers (seeded
 * random tensors of a shape, GQA q/k/v of a case, log-sum-exps with empty
 * rows, score maps with -inf), backend selection (SL_TEST_BACKENDS, default
 * ref,cpu,cuda; an unavailable backend prints "SKIP backend <name>: <why>",
 * a line other tools grep), the comparisons with ref (attention within
 * tolerance, every output of an op within tolerance, u8 and i32 exactly)
 * and the error check (status and a message starting with the op's name).
 * Sentinels around every allocation come from testutil.h's allocator.
 * Static functions only: each suite includes it once. The float64 oracles
 * each suite computes by hand stay in that suite. */
#ifndef SL_OPSUTIL_H
#define SL_OPSUTIL_H

#include "testutil.h"

typedef struct shape_case { int64_t hq, hkv, nq, nk, d; int causal; } shape_case;

static const shape_case CASES[] = {
    {2, 2, 37, 37, 16, 1},   /* ragged */
    {4, 2, 64, 64, 32, 1},   /* GQA 2:1, exact tiles */
    {8, 2, 130, 130, 64, 1}, /* GQA 4:1, ragged past one tile */
    {2, 1, 1, 100, 8, 1},    /* one query (decode) */
    {3, 3, 5, 77, 24, 1},    /* decode offset */
    {2, 2, 50, 90, 16, 0},   /* not causal, n_q < n_k */
    {1, 1, 300, 300, 64, 1}, /* several key chunks */
    {2, 1, 1, 1, 4, 1},      /* a single token */
};
#define N_CASES (int)(sizeof CASES / sizeof CASES[0])

/* Head dims past the d <= 64 of CASES (128 and 256: the common model sizes,
 * and past a CUDA kernel's register tile), kept small in n so that a slow
 * simulator still runs them: ragged, GQA, one query row, not causal. */
static const shape_case ATTN_BIG_D[] = {
    {2, 1, 33, 33, 128, 1},  /* ragged, GQA 2:1 */
    {4, 1, 1, 70, 128, 1},   /* one query row (decode), GQA 4:1 */
    {2, 2, 96, 96, 256, 1},  /* ragged past one 64-row tile */
    {4, 2, 21, 45, 256, 0},  /* not causal, n_q < n_k, GQA 2:1 */
    {2, 1, 1, 1, 256, 1},    /* a single token */
};
#define N_BIG_D (int)(sizeof ATTN_BIG_D / sizeof ATTN_BIG_D[0])
/* The attention suites loop over CASES then ATTN_BIG_D. */
#define N_ATTN_CASES (N_CASES + N_BIG_D)

static inline const shape_case *attn_case(int i) { return i < N_CASES ? &CASES[i] : &ATTN_BIG_D[i - N_CASES]; }

static inline int backend_wanted(sl_backend_id b)
{
    const char *env = getenv("SL_TEST_BACKENDS");
    if (!env)
        env = "ref,cpu,cuda";
    const char *name = sl_backend_name(b);
    size_t n = strlen(name);
    for (const char *p = env; (p = strstr(p, name)); p += n)
        if ((p == env || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return 1;
    return 0;
}

/* Backends to compare with ref, excluding ref itself. */
static inline int other_backends(sl_backend_id *out)
{
    int n = 0;
    for (int b = SL_BACKEND_CPU; b < SL_BACKEND__COUNT; b++) {
        if (!backend_wanted((sl_backend_id)b))
            continue;
        if (!sl_backend_available((sl_backend_id)b)) {
            printf("SKIP backend %s: %s\n", sl_backend_name((sl_backend_id)b), sl_backend_status((sl_backend_id)b));
            continue;
        }
        out[n++] = (sl_backend_id)b;
    }
    return n;
}

/* O within 1e-5 relative to its scale, L within 1e-5 absolute, infinities
 * matching exactly, nothing NaN. (Check's asserts cost a write each, so the
 * element loops test first and fail through ck_abort_msg.) */
static inline void assert_attn_close(const sl_tensor *o, const sl_tensor *l, const sl_tensor *ro, const sl_tensor *rl,
                              const char *what)
{
    int64_t n = sl_tensor_numel(ro), rows = sl_tensor_numel(rl);
    ck_assert_int_eq(sl_tensor_numel(o), n);
    ck_assert_int_eq(sl_tensor_numel(l), rows);
    double scale = 1e-30;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(tu_at(ro, i)));
    for (int64_t i = 0; i < n; i++) {
        if (isnan(tu_at(o, i)))
            ck_abort_msg("%s: O[%lld] is NaN", what, (long long)i);
        if (!(fabs(tu_at(o, i) - tu_at(ro, i)) <= 1e-5 * scale))
            ck_abort_msg("%s: O[%lld] = %g, ref %g", what, (long long)i, tu_at(o, i), tu_at(ro, i));
    }
    for (int64_t i = 0; i < rows; i++) {
        float a = tu_at(l, i), b = tu_at(rl, i);
        if (isnan(a))
            ck_abort_msg("%s: L[%lld] is NaN", what, (long long)i);
        if (isinf(b) ? a != b : !(fabs(a - b) <= 1e-5 * fmax(1.0, fabs(b))))
            ck_abort_msg("%s: L[%lld] = %.9g, ref %.9g", what, (long long)i, a, b);
    }
}

static inline void run_attn(sl_ctx *ctx, sl_backend_id b, sl_op op, const void *p, const sl_tensor *in, sl_tensor out[2])
{
    sl_status s = sl_op_run(ctx, b, op, p, in, out);
    ck_assert_msg(s == SL_OK, "%s on %s: %s", sl_op_info_get(op)->name, sl_backend_name(b), sl_ctx_error(ctx));
}

static inline void mask_of(sl_ctx *ctx, sl_pattern_kind kind, int64_t a, int64_t nq, int64_t nk, int bq, int bk, sl_mask *m)
{
    sl_pattern_term t = {.kind = kind, .a = a};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &t, 1, nq, nk, bq, bk, m), SL_OK);
}

static inline void release_n(sl_tensor *t, int n)
{
    for (int i = 0; i < n; i++)
        sl_tensor_release(&t[i]);
}

/* Runs op on ref and on every other wanted backend and compares; a backend
 * other than ref and cpu may answer SL_EUNSUPPORTED for an option (SKIP). */
static inline void check_backends(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, const char *what)
{
    sl_tensor ref[2], out[2];
    run_attn(ctx, SL_BACKEND_REF, op, p, in, ref);
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int k = 0; k < nb; k++) {
        sl_status s = sl_op_run(ctx, bs[k], op, p, in, out);
        if (s == SL_EUNSUPPORTED && bs[k] != SL_BACKEND_CPU) {
            printf("SKIP %s on %s: %s\n", what, sl_backend_name(bs[k]), sl_ctx_error(ctx));
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name(bs[k]), sl_ctx_error(ctx));
        char w[160];
        snprintf(w, sizeof w, "%s on %s", what, sl_backend_name(bs[k]));
        assert_attn_close(&out[0], &out[1], &ref[0], &ref[1], w);
        release_n(out, 2);
    }
    release_n(ref, 2);
}

/* Every available backend (ref included) runs op and must match want. */
static inline void check_equals(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, const sl_tensor want[2],
                         const char *what)
{
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        sl_tensor out[2];
        sl_status s = sl_op_run(ctx, (sl_backend_id)b, op, p, in, out);
        if (s == SL_EUNSUPPORTED && b > SL_BACKEND_CPU) {
            printf("SKIP %s on %s: %s\n", what, sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
        char w[160];
        snprintf(w, sizeof w, "%s on %s", what, sl_backend_name((sl_backend_id)b));
        assert_attn_close(&out[0], &out[1], &want[0], &want[1], w);
        release_n(out, 2);
    }
}

static inline sl_tensor i32_tensor(sl_ctx *ctx, int64_t a, int64_t b)
{
    sl_tensor t;
    int64_t sh[2] = {a, b};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 2, sh, &t), SL_OK);
    return t;
}

/* ---- input makers ---- */

static inline sl_tensor f32_new(sl_ctx *ctx, int ndim, const int64_t *shape)
{
    sl_tensor t;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, ndim, shape, &t), SL_OK);
    return t;
}

static inline sl_tensor f32_2d(sl_ctx *ctx, int64_t a, int64_t b)
{
    int64_t sh[2] = {a, b};
    return f32_new(ctx, 2, sh);
}

static inline float *f32p(const sl_tensor *t) { return (float *)t->data; }

/* Seeded normal entries of any shape (tu_randn is the 3-D case). */
static inline sl_tensor randn_shape(sl_ctx *ctx, sl_rng *rng, int ndim, const int64_t *shape, double std)
{
    sl_tensor t = f32_new(ctx, ndim, shape);
    sl_tensor_fill_normal(ctx, &t, rng, std);
    return t;
}

static inline sl_tensor i32_vec(sl_ctx *ctx, const int32_t *v, int64_t n)
{
    sl_tensor t;
    int64_t sh[1] = {n};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, sh, &t), SL_OK);
    memcpy(t.data, v, sizeof *v * (size_t)n);
    return t;
}

/* q [Hq, Nq, d], k and v [Hkv, Nk, d] of a case (q and k with std qk_std,
 * v with 1) into in[0..2]. */
static inline void qkv_of(sl_ctx *ctx, sl_rng *rng, const shape_case *c, double qk_std, sl_tensor *in)
{
    in[0] = tu_randn(ctx, rng, c->hq, c->nq, c->d, qk_std);
    in[1] = tu_randn(ctx, rng, c->hkv, c->nk, c->d, qk_std);
    in[2] = tu_randn(ctx, rng, c->hkv, c->nk, c->d, 1.0);
}

/* A log-sum-exp [h, n]: std × normal, with -inf (an empty row) at every
 * index i where i % inf_every == inf_at (inf_every 0: none). */
static inline sl_tensor lse_random(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t n, double std, int inf_every, int inf_at)
{
    sl_tensor t = f32_2d(ctx, h, n);
    for (int64_t i = 0; i < h * n; i++)
        f32p(&t)[i] = inf_every && i % inf_every == inf_at ? -INFINITY : (float)(std * sl_rng_normal(rng));
    return t;
}

/* Scores [h, r, c], normal, about a tenth -inf when with_inf. */
static inline sl_tensor random_scores(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t r, int64_t c, int with_inf)
{
    sl_tensor x = tu_randn(ctx, rng, h, r, c, 1.0);
    float *d = x.data;
    for (int64_t i = 0; with_inf && i < h * r * c; i++)
        if (sl_rng_uniform(rng) < 0.1)
            d[i] = -INFINITY;
    return x;
}

/* ---- comparisons ---- */

/* Every element within tol × (largest finite |ref|, at least 1) of ref;
 * infinities equal; no NaN; same shape. */
static inline void assert_tensor_close(const sl_tensor *x, const sl_tensor *ref, double tol, const char *what)
{
    ck_assert_int_eq(x->ndim, ref->ndim);
    for (int d = 0; d < x->ndim; d++)
        ck_assert_int_eq(x->shape[d], ref->shape[d]);
    int64_t n = sl_tensor_numel(ref);
    double scale = 1;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(tu_at(ref, i)))
            scale = fmax(scale, fabs(tu_at(ref, i)));
    for (int64_t i = 0; i < n; i++) {
        float a = tu_at(x, i), b = tu_at(ref, i);
        if (isnan(a))
            ck_abort_msg("%s: [%lld] is NaN", what, (long long)i);
        if (isinf(b) ? a != b : !(fabs(a - b) <= tol * scale))
            ck_abort_msg("%s: [%lld] = %.9g, ref %.9g", what, (long long)i, a, b);
    }
}

static inline void assert_u8_equal(const sl_tensor *x, const sl_tensor *ref, const char *what)
{
    int64_t n = sl_tensor_numel(ref);
    ck_assert_int_eq(sl_tensor_numel(x), n);
    ck_assert_int_eq(x->dtype, SL_U8);
    const uint8_t *a = x->data, *b = ref->data;
    for (int64_t i = 0; i < n; i++)
        if (a[i] != b[i])
            ck_abort_msg("%s: keep[%lld] = %d, ref %d", what, (long long)i, a[i], b[i]);
}

static inline void assert_i32_equal(const sl_tensor *x, const sl_tensor *ref, const char *what)
{
    int64_t n = sl_tensor_numel(ref);
    ck_assert_int_eq(sl_tensor_numel(x), n);
    ck_assert_int_eq(x->dtype, SL_I32);
    const int32_t *a = x->data, *b = ref->data;
    for (int64_t i = 0; i < n; i++)
        if (a[i] != b[i])
            ck_abort_msg("%s: [%lld] = %d, ref %d", what, (long long)i, a[i], b[i]);
}

/* One output of an op against ref's: f32 within tol (assert_tensor_close),
 * u8 and i32 exactly. */
static inline void assert_output_close(const sl_tensor *x, const sl_tensor *ref, double tol, const char *what)
{
    ck_assert_int_eq(x->dtype, ref->dtype);
    if (ref->dtype == SL_U8)
        assert_u8_equal(x, ref, what);
    else if (ref->dtype == SL_I32)
        assert_i32_equal(x, ref, what);
    else
        assert_tensor_close(x, ref, tol, what);
}

/* Runs a one-output op, which must succeed. */
static inline sl_tensor run_op1(sl_ctx *ctx, sl_backend_id b, sl_op op, const void *p, const sl_tensor *in)
{
    sl_tensor out;
    sl_status s = sl_op_run(ctx, b, op, p, in, &out);
    ck_assert_msg(s == SL_OK, "%s on %s: %s", sl_op_info_get(op)->name, sl_backend_name(b), sl_ctx_error(ctx));
    return out;
}

/* Every output of op on ref and on every other wanted backend (SKIP lines
 * for unavailable ones; a backend other than ref and cpu may answer
 * SL_EUNSUPPORTED, SKIP), compared output by output with
 * assert_output_close. */
static inline void check_op_vs_ref(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, double tol, const char *what)
{
    int n_out = sl_op_info_get(op)->n_out;
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
        for (int o = 0; o < n_out; o++) {
            char w[192];
            snprintf(w, sizeof w, "%s on %s: output %d", what, sl_backend_name(bs[b]), o);
            assert_output_close(&out[o], &ref[o], tol, w);
        }
        release_n(out, n_out);
    }
    release_n(ref, n_out);
}

/* op fails on ref and on cpu with status want, its message starting with
 * the op's name and holding needle, and leaves no output behind. */
static inline void expect_fail(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, sl_status want, const char *needle)
{
    const char *name = sl_op_info_get(op)->name;
    for (int b = SL_BACKEND_REF; b <= SL_BACKEND_CPU; b++) {
        sl_tensor out[4] = {{0}};
        sl_status s = sl_op_run(ctx, (sl_backend_id)b, op, p, in, out);
        ck_assert_msg(s == want, "%s on %s: status %s, want %s (%s)", name, sl_backend_name((sl_backend_id)b),
                      sl_status_name(s), sl_status_name(want), sl_ctx_error(ctx));
        ck_assert_msg(strncmp(sl_ctx_error(ctx), name, strlen(name)) == 0, "%s", sl_ctx_error(ctx));
        ck_assert_msg(strstr(sl_ctx_error(ctx), needle), "expected '%s' in: %s", needle, sl_ctx_error(ctx));
        ck_assert_ptr_null(out[0].buf);
    }
}

/* ---- the suite ---- */

/* Runs one suite of one test case, both named name, with a 120 s timeout;
 * add registers the tests. Returns the process exit status. */
static inline int run_op_suite(const char *name, void (*add)(TCase *tc))
{
    Suite *s = suite_create(name);
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 120);
    add(tc);
    suite_add_tcase(s, tc);
    return tu_run(s);
}

#endif
