/* opsutil.h — what the op suites share (test_ops.c, test_sparse_ops.c): the
 * shape cases, backend selection (SL_TEST_BACKENDS, default ref,cpu,cuda;
 * unavailable ones print SKIP), the attention comparison and small tensor
 * helpers. Static functions: each suite includes it once. */
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

#endif
