/* cpu/mm.c — the mm family on threads (issue 17).
 *
 * mm.dense: one OpenBLAS sgemm per chunk of output columns.
 * mm.nm / mm.bitmap: one row of activations (decode) walks each compressed
 * weight row and gathers x (memory-bound: the format's bytes are the cost).
 * 2..8 rows with AVX2: x transposed into xb[k][8], each weight row read
 * straight from its format into one 8-lane accumulator pair.
 * More rows: x is transposed once into blocks xb[b][k][TB] (TB activation
 * rows of column k contiguous); a work item is a chunk of weight rows, each
 * row decoded once into a (column, value) list, then per block of TB rows
 * the list runs as TB-wide AXPYs into registers (AVX2+FMA when the CPU has
 * it, a portable loop otherwise). Work is the kept entries only.
 * mm.act_sparse: a work item is (block of 8 activation rows, chunk of
 * outputs); per column k in the rows' support union, wt[k, chunk] is loaded
 * once and added into each row whose x[t, k] != 0 (a 2-D tile of y kept in
 * L1). Zero activations are never touched in wt. */
#include "cpu.h"
#include "parallel.h"
#include "rowops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define ROWS_PER_ITEM 16 /* weight rows per work item of the blocked path */
#define ACT_ROWS 8       /* activation rows per mm.act_sparse item */
#define ACT_COLS 512     /* outputs per mm.act_sparse item */

/* ---- mm.dense ---- */

typedef struct dense_job {
    const float *x, *w;
    float *y;
    int64_t T, K, N, chunk;
} dense_job;

static void dense_item(int64_t i, void *ud, int thread)
{
    (void)thread;
    const dense_job *j = ud;
    int64_t c0 = i * j->chunk, nc = j->N - c0 < j->chunk ? j->N - c0 : j->chunk;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->T, (int)nc, (int)j->K, 1.f, j->x, (int)j->K,
                j->w + c0 * j->K, (int)j->K, 0.f, j->y + c0, (int)j->N);
}

sl_status sl__cpu_mm_dense(const sl__kargs *a)
{
    dense_job j = {a->in[0].data, a->in[1].data, a->out[0].data, a->in[0].shape[0], a->in[0].shape[1],
                   a->in[1].shape[0], 0};
    if (j.T == 0 || j.N == 0)
        return SL_OK;
    if (j.K == 0) {
        memset(j.y, 0, sizeof(float) * (size_t)(j.T * j.N));
        return SL_OK;
    }
    int th = sl_ctx_threads(a->ctx);
    j.chunk = (j.N + 4 * th - 1) / (4 * th);
    j.chunk = (j.chunk + 15) / 16 * 16;
    return sl__cpu_parallel(a->ctx, (j.N + j.chunk - 1) / j.chunk, dense_item, &j);
}

/* ---- the encoders ---- */

static void nm_encode_row(int64_t r, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_mm_nm_params *p = a->params;
    int64_t K = a->in[0].shape[1], m = p->m, n = p->n, G = (K + m - 1) / m;
    const float *w = (const float *)a->in[0].data + r * K;
    float *vals = (float *)a->out[0].data + r * G * n;
    uint8_t *pos = (uint8_t *)a->out[1].data + r * G * n;
    for (int64_t g = 0; g < G; g++) {
        int64_t c0 = g * m, width = K - c0 < m ? K - c0 : m, kept = width < n ? width : n;
        /* selection of the kept set by rank: a stable partial selection sort
         * on (|w| descending, column ascending), then the set in column order */
        uint8_t take[256] = {0};
        for (int64_t s = 0; s < kept; s++) {
            int64_t best = -1;
            float bv = 0;
            for (int64_t i = 0; i < width; i++) {
                float v = w[c0 + i] < 0 ? -w[c0 + i] : w[c0 + i];
                if (!take[i] && (best < 0 || v > bv))
                    best = i, bv = v;
            }
            if (best < 0)
                break;
            take[best] = 1;
        }
        int64_t s = 0;
        for (int64_t i = 0; i < width; i++)
            if (take[i]) {
                vals[g * n + s] = w[c0 + i];
                pos[g * n + s++] = (uint8_t)i;
            }
        for (; s < n; s++)
            vals[g * n + s] = 0, pos[g * n + s] = 0;
    }
}

sl_status sl__cpu_mm_nm_encode(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], nm_encode_row, (void *)a);
}

static void bitmap_encode_row(int64_t r, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    int64_t K = a->in[0].shape[1], nw = a->out[0].shape[1], cap = a->out[1].shape[1];
    const float *w = (const float *)a->in[0].data + r * K;
    uint32_t *bits = (uint32_t *)a->out[0].data + r * nw;
    float *vals = (float *)a->out[1].data + r * cap;
    int64_t c = 0;
    for (int64_t j = 0; j < nw; j++) {
        uint32_t word = 0;
        int64_t k0 = j * 32, len = K - k0 < 32 ? K - k0 : 32;
        for (int64_t b = 0; b < len; b++)
            if (w[k0 + b] != 0) {
                word |= 1u << b;
                vals[c++] = w[k0 + b];
            }
        bits[j] = word;
    }
    memset(vals + c, 0, sizeof *vals * (size_t)(cap - c));
}

sl_status sl__cpu_mm_bitmap_encode(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], bitmap_encode_row, (void *)a);
}

/* ---- the sparse executors ---- */

typedef struct sp_job {
    const sl__kargs *a;
    int64_t T, K, N, tb, n_blocks, list_cap;
    float *xb;     /* [n_blocks][K][tb] */
    char *thread_lists; /* per thread: ROWS_PER_ITEM lists of list_cap (int32 column, float value) */
    size_t list_bytes;  /* per thread */
} sp_job;

/* Row r's slots as (column, value) pairs in slot order; returns the count. */
static int64_t decode_row(const sl__kargs *a, int64_t r, int32_t *col, float *val)
{
    int64_t c = 0;
    if (a->op == SL_OP_MM_NM) {
        const sl_mm_nm_params *p = a->params;
        int64_t K = a->in[0].shape[1], m = p->m, n = p->n, G = (K + m - 1) / m;
        const float *v = (const float *)a->in[1].data + r * G * n;
        const uint8_t *pos = (const uint8_t *)a->in[2].data + r * G * n;
        for (int64_t g = 0; g < G; g++)
            for (int64_t t = 0; t < n; t++, c++) {
                col[c] = (int32_t)(g * m + pos[c]);
                val[c] = v[c];
            }
    } else {
        int64_t nw = a->in[1].shape[1], cap = a->in[2].shape[1];
        const uint32_t *bits = (const uint32_t *)a->in[1].data + r * nw;
        const float *v = (const float *)a->in[2].data + r * cap;
        for (int64_t j = 0; j < nw; j++)
            for (uint32_t b = bits[j]; b; b &= b - 1) {
                col[c] = (int32_t)(j * 32 + __builtin_ctz(b));
                val[c] = v[c];
                c++;
            }
    }
    return c;
}

/* acc[0..tb) += sum over the list of val[i] . xb[col[i]][0..tb), portable. */
static void list_axpy_plain(const float *xb, int64_t tb, const int32_t *col, const float *val, int64_t cnt, float *acc)
{
    for (int64_t i = 0; i < cnt; i++) {
        const float *xr = xb + (int64_t)col[i] * tb;
        for (int64_t t = 0; t < tb; t++)
            acc[t] += val[i] * xr[t];
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma")))

/* tb = 32: four accumulators, two list entries per step (eight chains), added into acc. */
AVX2 static void list_axpy32_avx2(const float *xb, const int32_t *col, const float *val, int64_t cnt, float *acc)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t i = 0;
    for (; i + 1 < cnt; i += 2) {
        const float *x0 = xb + (int64_t)col[i] * 32, *x1 = xb + (int64_t)col[i + 1] * 32;
        __m256 v0 = _mm256_broadcast_ss(val + i), v1 = _mm256_broadcast_ss(val + i + 1);
        a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0), a0);
        a1 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 8), a1);
        a2 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 16), a2);
        a3 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 24), a3);
        b0 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1), b0);
        b1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1 + 8), b1);
        b2 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1 + 16), b2);
        b3 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1 + 24), b3);
    }
    if (i < cnt) {
        const float *x0 = xb + (int64_t)col[i] * 32;
        __m256 v0 = _mm256_broadcast_ss(val + i);
        a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0), a0);
        a1 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 8), a1);
        a2 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 16), a2);
        a3 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 24), a3);
    }
    _mm256_storeu_ps(acc, _mm256_add_ps(_mm256_loadu_ps(acc), _mm256_add_ps(a0, b0)));
    _mm256_storeu_ps(acc + 8, _mm256_add_ps(_mm256_loadu_ps(acc + 8), _mm256_add_ps(a1, b1)));
    _mm256_storeu_ps(acc + 16, _mm256_add_ps(_mm256_loadu_ps(acc + 16), _mm256_add_ps(a2, b2)));
    _mm256_storeu_ps(acc + 24, _mm256_add_ps(_mm256_loadu_ps(acc + 24), _mm256_add_ps(a3, b3)));
}

/* tb = 8: four chains over consecutive list entries, added into acc. */
AVX2 static void list_axpy8_avx2(const float *xb, const int32_t *col, const float *val, int64_t cnt, float *acc)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 3 < cnt; i += 4) {
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(val + i), _mm256_loadu_ps(xb + (int64_t)col[i] * 8), a0);
        a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(val + i + 1), _mm256_loadu_ps(xb + (int64_t)col[i + 1] * 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(val + i + 2), _mm256_loadu_ps(xb + (int64_t)col[i + 2] * 8), a2);
        a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(val + i + 3), _mm256_loadu_ps(xb + (int64_t)col[i + 3] * 8), a3);
    }
    for (; i < cnt; i++)
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(val + i), _mm256_loadu_ps(xb + (int64_t)col[i] * 8), a0);
    _mm256_storeu_ps(acc, _mm256_add_ps(_mm256_loadu_ps(acc), _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))));
}

/* y[0..n) += s . w[0..n) */
AVX2 static void axpy_avx2(float *y, const float *w, int64_t n, float s)
{
    __m256 sv = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(sv, _mm256_loadu_ps(w + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += s * w[i];
}

/* One weight row against one block of 8 activation rows, straight from the
 * format (no decoded list): acc[0..8) = sum of v . xb[col][0..8). */
AVX2 static void row8_avx2(const sl__kargs *a, int64_t r, const float *xb, float *acc)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    if (a->op == SL_OP_MM_NM) {
        const sl_mm_nm_params *p = a->params;
        int64_t K = a->in[0].shape[1], m = p->m, n = p->n, G = (K + m - 1) / m;
        const float *v = (const float *)a->in[1].data + r * G * n;
        const uint8_t *pos = (const uint8_t *)a->in[2].data + r * G * n;
        for (int64_t g = 0, c = 0; g < G; g++)
            for (int64_t t = 0; t < n; t++, c++) {
                __m256 x = _mm256_loadu_ps(xb + (g * m + pos[c]) * 8);
                if (c & 1)
                    s1 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + c), x, s1);
                else
                    s0 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + c), x, s0);
            }
    } else {
        int64_t nw = a->in[1].shape[1], cap = a->in[2].shape[1];
        const uint32_t *bits = (const uint32_t *)a->in[1].data + r * nw;
        const float *v = (const float *)a->in[2].data + r * cap;
        for (int64_t w = 0; w < nw; w++) {
            const float *xw = xb + w * 32 * 8;
            for (uint32_t b = bits[w]; b; b &= b - 1) {
                s0 = _mm256_fmadd_ps(_mm256_broadcast_ss(v++), _mm256_loadu_ps(xw + __builtin_ctz(b) * 8), s0);
                b &= b - 1;
                if (!b)
                    break;
                s1 = _mm256_fmadd_ps(_mm256_broadcast_ss(v++), _mm256_loadu_ps(xw + __builtin_ctz(b) * 8), s1);
            }
        }
    }
    _mm256_storeu_ps(acc, _mm256_add_ps(s0, s1));
}

static int have_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
static int have_avx2(void) { return 0; }
#endif

static void list_axpy(const float *xb, int64_t tb, const int32_t *col, const float *val, int64_t cnt, float *acc)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        if (tb == 32) {
            list_axpy32_avx2(xb, col, val, cnt, acc);
            return;
        }
        if (tb == 8) {
            list_axpy8_avx2(xb, col, val, cnt, acc);
            return;
        }
    }
#endif
    list_axpy_plain(xb, tb, col, val, cnt, acc);
}

static void axpy(float *y, const float *w, int64_t n, float s)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        axpy_avx2(y, w, n, s);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        y[i] += s * w[i];
}

/* One activation row: per weight row a gathered dot product. */
static void gemv_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sp_job *j = ud;
    const sl__kargs *a = j->a;
    const float *x = a->in[0].data;
    float *y = a->out[0].data;
    int64_t r1 = (item + 1) * 64 < j->N ? (item + 1) * 64 : j->N;
    for (int64_t r = item * 64; r < r1; r++) {
        float s0 = 0, s1 = 0;
        if (a->op == SL_OP_MM_NM) {
            const sl_mm_nm_params *p = a->params;
            int64_t m = p->m, n = p->n, G = (j->K + m - 1) / m;
            const float *v = (const float *)a->in[1].data + r * G * n;
            const uint8_t *pos = (const uint8_t *)a->in[2].data + r * G * n;
            if (n == 2) {
                for (int64_t g = 0; g < G; g++) {
                    s0 += v[2 * g] * x[g * m + pos[2 * g]];
                    s1 += v[2 * g + 1] * x[g * m + pos[2 * g + 1]];
                }
            } else {
                for (int64_t g = 0; g < G; g++)
                    for (int64_t s = 0; s < n; s++)
                        s0 += v[g * n + s] * x[g * m + pos[g * n + s]];
            }
        } else {
            int64_t nw = a->in[1].shape[1], cap = a->in[2].shape[1];
            const uint32_t *bits = (const uint32_t *)a->in[1].data + r * nw;
            const float *v = (const float *)a->in[2].data + r * cap;
            for (int64_t w = 0; w < nw; w++) {
                const float *xw = x + w * 32;
                uint32_t b = bits[w];
                for (; b; b &= b - 1) {
                    s0 += *v++ * xw[__builtin_ctz(b)];
                    b &= b - 1;
                    if (!b)
                        break;
                    s1 += *v++ * xw[__builtin_ctz(b)];
                }
            }
        }
        y[r] = s0 + s1;
    }
}

/* Activation rows in blocks of tb: xb[b][k][t] = x[b.tb + t, k] (0 past T). */
static void transpose_item(int64_t b, void *ud, int thread)
{
    (void)thread;
    const sp_job *j = ud;
    const float *x = j->a->in[0].data;
    float *dst = j->xb + b * j->K * j->tb;
    int64_t t0 = b * j->tb, nt = j->T - t0 < j->tb ? j->T - t0 : j->tb;
    for (int64_t t = 0; t < j->tb; t++)
        if (t >= nt)
            for (int64_t k = 0; k < j->K; k++)
                dst[k * j->tb + t] = 0;
        else
            for (int64_t k = 0; k < j->K; k++)
                dst[k * j->tb + t] = x[(t0 + t) * j->K + k];
}

static void blocked_item(int64_t item, void *ud, int thread)
{
    const sp_job *j = ud;
    int32_t *cols = (int32_t *)(j->thread_lists + (size_t)thread * j->list_bytes);
    float *vals = (float *)(cols + ROWS_PER_ITEM * j->list_cap);
    int64_t r0 = item * ROWS_PER_ITEM, nr = j->N - r0 < ROWS_PER_ITEM ? j->N - r0 : ROWS_PER_ITEM;
    int64_t cnt[ROWS_PER_ITEM];
    for (int64_t i = 0; i < nr; i++)
        cnt[i] = decode_row(j->a, r0 + i, cols + i * j->list_cap, vals + i * j->list_cap);
    float *y = j->a->out[0].data;
    float acc[ROWS_PER_ITEM][32];
    int64_t cur[ROWS_PER_ITEM];
    /* columns in tiles of 16 KiB of xb (L1): every row of the item runs its
     * entries of the tile before the next tile is touched */
    int64_t kt = 4096 / j->tb;
    for (int64_t b = 0; b < j->n_blocks; b++) {
        const float *xb = j->xb + b * j->K * j->tb;
        int64_t t0 = b * j->tb, nt = j->T - t0 < j->tb ? j->T - t0 : j->tb;
        for (int64_t i = 0; i < nr; i++) {
            memset(acc[i], 0, sizeof acc[i]);
            cur[i] = 0;
        }
        for (int64_t k1 = kt; k1 < j->K + kt; k1 += kt)
            for (int64_t i = 0; i < nr; i++) {
                const int32_t *c = cols + i * j->list_cap;
                int64_t e = cur[i];
                while (e < cnt[i] && c[e] < k1)
                    e++;
                list_axpy(xb, j->tb, c + cur[i], vals + i * j->list_cap + cur[i], e - cur[i], acc[i]);
                cur[i] = e;
            }
        for (int64_t i = 0; i < nr; i++)
            for (int64_t t = 0; t < nt; t++)
                y[(t0 + t) * j->N + r0 + i] = acc[i][t];
    }
}

/* T <= 8 with AVX2: rows read straight from the format (decoding into a
 * list would cost as much as the one block of products). */
static void direct8_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sp_job *j = ud;
    float *y = j->a->out[0].data, acc[8];
    int64_t r1 = (item + 1) * 64 < j->N ? (item + 1) * 64 : j->N;
    for (int64_t r = item * 64; r < r1; r++) {
#if defined(__x86_64__) && defined(__GNUC__)
        row8_avx2(j->a, r, j->xb, acc);
#else
        memset(acc, 0, sizeof acc); /* not reached: direct8 needs AVX2 */
#endif
        for (int64_t t = 0; t < j->T; t++)
            y[t * j->N + r] = acc[t];
    }
}

static int64_t block_rows(int64_t T) { return T <= 8 ? 8 : 32; }

static int64_t list_cap(sl_op op, const void *params, const sl_tensor *in)
{
    if (op == SL_OP_MM_NM)
        return in[1].shape[1];
    (void)params;
    return in[2].shape[1] < in[0].shape[1] ? in[2].shape[1] : in[0].shape[1];
}

static sl_status sparse_run(const sl__kargs *a)
{
    sp_job j = {.a = a, .T = a->in[0].shape[0], .K = a->in[0].shape[1], .N = a->out[0].shape[1]};
    if (j.T == 0 || j.N == 0)
        return SL_OK;
    if (j.T == 1)
        return sl__cpu_parallel(a->ctx, (j.N + 63) / 64, gemv_item, &j);
    j.tb = block_rows(j.T);
    j.n_blocks = (j.T + j.tb - 1) / j.tb;
    j.list_cap = list_cap(a->op, a->params, a->in);
    j.list_bytes = (size_t)ROWS_PER_ITEM * (size_t)j.list_cap * (sizeof(int32_t) + sizeof(float));
    j.xb = a->scratch;
    j.thread_lists = (char *)a->scratch + sizeof(float) * (size_t)(j.n_blocks * j.tb * j.K);
    sl_status s = sl__cpu_parallel(a->ctx, j.n_blocks, transpose_item, &j);
    if (s)
        return s;
    if (j.tb == 8 && have_avx2())
        return sl__cpu_parallel(a->ctx, (j.N + 63) / 64, direct8_item, &j);
    return sl__cpu_parallel(a->ctx, (j.N + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM, blocked_item, &j);
}

sl_status sl__cpu_mm_nm(const sl__kargs *a) { return sparse_run(a); }

sl_status sl__cpu_mm_bitmap(const sl__kargs *a) { return sparse_run(a); }

/* ---- mm.act_sparse ---- */

typedef struct act_job {
    const sl__kargs *a;
    int64_t T, K, N, n_col_chunks;
} act_job;

static void act_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const act_job *j = ud;
    int64_t rb = item / j->n_col_chunks, c0 = (item % j->n_col_chunks) * ACT_COLS;
    int64_t t0 = rb * ACT_ROWS, nt = j->T - t0 < ACT_ROWS ? j->T - t0 : ACT_ROWS;
    int64_t nc = j->N - c0 < ACT_COLS ? j->N - c0 : ACT_COLS;
    const float *x = (const float *)j->a->in[0].data + t0 * j->K, *wt = j->a->in[1].data;
    float acc[ACT_ROWS][ACT_COLS];
    for (int64_t t = 0; t < nt; t++)
        memset(acc[t], 0, sizeof(float) * (size_t)nc);
    for (int64_t k = 0; k < j->K; k++) {
        /* the column is loaded (by the first AXPY) only when some row uses it */
        const float *w = wt + k * j->N + c0;
        for (int64_t t = 0; t < nt; t++) {
            float s = x[t * j->K + k];
            if (s != 0)
                axpy(acc[t], w, nc, s);
        }
    }
    float *y = (float *)j->a->out[0].data + t0 * j->N + c0;
    for (int64_t t = 0; t < nt; t++)
        memcpy(y + t * j->N, acc[t], sizeof(float) * (size_t)nc);
}

sl_status sl__cpu_mm_act_sparse(const sl__kargs *a)
{
    act_job j = {a, a->in[0].shape[0], a->in[0].shape[1], a->in[1].shape[1], 0};
    if (j.T == 0 || j.N == 0)
        return SL_OK;
    j.n_col_chunks = (j.N + ACT_COLS - 1) / ACT_COLS;
    return sl__cpu_parallel(a->ctx, (j.T + ACT_ROWS - 1) / ACT_ROWS * j.n_col_chunks, act_item, &j);
}

/* The blocked path of mm.nm and mm.bitmap: the transposed activations and
 * each thread's decoded lists. */
/* mm.out_sparse: one activation row per work item; each listed output is one
 * dot product of x[t] with a contiguous row of w (the context's vector dot). */
typedef struct out_sparse_job {
    const sl__kargs *a;
    sl__cpu_vecops ops;
} out_sparse_job;

static void out_sparse_row(int64_t t, void *ud, int thread)
{
    (void)thread;
    const out_sparse_job *j = ud;
    const sl__kargs *a = j->a;
    int64_t K = a->in[0].shape[1], N = a->in[1].shape[0], S = a->in[2].shape[1];
    const float *x = (const float *)a->in[0].data + t * K, *w = a->in[1].data;
    const float *g = a->in[3].buf ? (const float *)a->in[3].data + t * N : NULL;
    const int32_t *sel = (const int32_t *)a->in[2].data + t * S;
    float *y = (float *)a->out[0].data + t * N;
    memset(y, 0, sizeof *y * (size_t)N);
    for (int64_t s = 0; s < S; s++) {
        int32_t r = sel[s];
        if (r < 0)
            continue;
        float v = j->ops.dot(x, w + (int64_t)r * K, K);
        y[r] = g ? v * g[r] : v;
    }
}

sl_status sl__cpu_mm_out_sparse(const sl__kargs *a)
{
    out_sparse_job j = {a, sl__cpu_vecops_for(a->ctx)};
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], out_sparse_row, &j);
}

/* ---- mm.moe: the grouped-GEMM MoE executor (issue 17, session 4) ----
 * 1. the (token, slot) pairs are counting-sorted by expert (stable: token
 *    order within an expert), which gives the segment of each expert;
 * 2. the pairs' x rows are gathered into xs [P, D] in that order (parallel);
 * 3. one task per (expert, block of MOE_ROWS pairs, chunk of MOE_UNITS
 *    units): G = X_e . W1_e^T and U = X_e . W3_e^T (two sgemms), h = silu(G) U
 *    into hs [P, H] (row p holds pair p's units of its expert);
 *    then one task per (expert, row block, chunk of MOE_COLS outputs): Y =
 *    h_e . W2t_e (one sgemm) into ys [P, D];
 * 4. per token, y = sum over its slots in slot order of rw . ys[pair].
 * Every task writes its own rows and columns: no atomics, deterministic.
 * Below MOE_SERIAL_MACS multiply-adds the phases run on the calling thread. */
#define MOE_ROWS 64
#define MOE_UNITS 256
#define MOE_COLS 512

typedef struct moe_task {
    int32_t e, p0, rows, c0; /* expert, first pair, pairs, first unit / output */
} moe_task;

typedef struct moe_job {
    const sl__kargs *a;
    int64_t T, D, H, k, E;
    const int32_t *offs;
    int32_t *ptok, *pos; /* sorted pair -> token; slot t*k+j -> sorted pair or -1 */
    float *xs, *hs, *ys, *ubuf;
    moe_task *tasks;
    int64_t n_tasks;
} moe_job;

static size_t moe_align(size_t b) { return (b + 63) / 64 * 64; }

static void moe_gather(int64_t p, void *ud, int thread)
{
    (void)thread;
    const moe_job *j = ud;
    memcpy(j->xs + p * j->D, (const float *)j->a->in[0].data + (int64_t)j->ptok[p] * j->D, sizeof(float) * (size_t)j->D);
}

static void moe_up(int64_t i, void *ud, int thread)
{
    const moe_job *j = ud;
    const moe_task *t = &j->tasks[i];
    const float *w1 = j->a->in[1].data, *w3 = j->a->in[2].data;
    int64_t D = j->D, H = j->H, u0 = j->offs[t->e] + t->c0;
    int64_t nu = j->offs[t->e + 1] - u0 < MOE_UNITS ? j->offs[t->e + 1] - u0 : MOE_UNITS;
    float *g = j->hs + (int64_t)t->p0 * H + t->c0, *u = j->ubuf + (int64_t)thread * MOE_ROWS * MOE_UNITS;
    const float *x = j->xs + (int64_t)t->p0 * D;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->rows, (int)nu, (int)D, 1.f, x, (int)D, w1 + u0 * D,
                (int)D, 0.f, g, (int)H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->rows, (int)nu, (int)D, 1.f, x, (int)D, w3 + u0 * D,
                (int)D, 0.f, u, MOE_UNITS);
    for (int64_t r = 0; r < t->rows; r++)
        for (int64_t c = 0; c < nu; c++) {
            float v = g[r * H + c];
            g[r * H + c] = v / (1.f + expf(-v)) * u[r * MOE_UNITS + c];
        }
}

static void moe_down(int64_t i, void *ud, int thread)
{
    (void)thread;
    const moe_job *j = ud;
    const moe_task *t = &j->tasks[i];
    const float *w2t = j->a->in[3].data;
    int64_t D = j->D, H = j->H, ne = j->offs[t->e + 1] - j->offs[t->e];
    int64_t nc = D - t->c0 < MOE_COLS ? D - t->c0 : MOE_COLS;
    float *y = j->ys + (int64_t)t->p0 * D + t->c0;
    if (ne == 0) {
        for (int64_t r = 0; r < t->rows; r++)
            memset(y + r * D, 0, sizeof(float) * (size_t)nc);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t->rows, (int)nc, (int)ne, 1.f,
                j->hs + (int64_t)t->p0 * H, (int)H, w2t + (int64_t)j->offs[t->e] * D + t->c0, (int)D, 0.f, y, (int)D);
}

static void moe_combine(int64_t t, void *ud, int thread)
{
    (void)thread;
    const moe_job *j = ud;
    const float *rw = j->a->in[6].buf ? (const float *)j->a->in[6].data + t * j->k : NULL;
    float *y = (float *)j->a->out[0].data + t * j->D;
    memset(y, 0, sizeof(float) * (size_t)j->D);
    for (int64_t s = 0; s < j->k; s++) {
        int32_t p = j->pos[t * j->k + s];
        if (p < 0)
            continue;
        float w = rw ? rw[s] : 1.f;
        const float *ys = j->ys + (int64_t)p * j->D;
        for (int64_t d = 0; d < j->D; d++)
            y[d] += w * ys[d];
    }
}

#define MOE_SERIAL_MACS 1048576.0 /* below: one thread */

static sl_status moe_for(sl_ctx *ctx, int serial, int64_t n, sl__parallel_fn fn, void *ud)
{
    if (!serial)
        return sl__cpu_parallel(ctx, n, fn, ud);
    int saved = openblas_get_num_threads();
    sl__cpu_blas_single();
    for (int64_t i = 0; i < n; i++)
        fn(i, ud, 0);
    if (saved != 1)
        openblas_set_num_threads(saved);
    return SL_OK;
}

/* builds the task list of one phase: per expert with pairs and units, row
 * blocks x chunks of `width` over `extent(e)` */
static int64_t moe_tasks(moe_job *j, const int64_t *seg, int up)
{
    int64_t n = 0;
    for (int64_t e = 0; e < j->E; e++) {
        int64_t cnt = seg[e + 1] - seg[e], ne = j->offs[e + 1] - j->offs[e];
        int64_t ext = up ? ne : j->D, width = up ? MOE_UNITS : MOE_COLS;
        if (cnt == 0 || (up && ne == 0))
            continue;
        for (int64_t r0 = 0; r0 < cnt; r0 += MOE_ROWS)
            for (int64_t c0 = 0; c0 < ext; c0 += width)
                j->tasks[n++] = (moe_task){(int32_t)e, (int32_t)(seg[e] + r0),
                                           (int32_t)(cnt - r0 < MOE_ROWS ? cnt - r0 : MOE_ROWS), (int32_t)c0};
    }
    return n;
}

/* bytes of mm.moe's scratch: ptok, pos, seg, the tasks, xs, hs, ys, per-thread U */
static size_t moe_scratch(const sl_tensor *in, int n_threads, size_t part[8])
{
    int64_t T = in[0].shape[0], D = in[0].shape[1], H = in[1].shape[0], E = in[4].shape[0] - 1, k = in[5].shape[1];
    int64_t P = T * k, chunks = (H + MOE_UNITS - 1) / MOE_UNITS + (D + MOE_COLS - 1) / MOE_COLS + 1;
    part[0] = moe_align(sizeof(int32_t) * (size_t)(P + 1));
    part[1] = moe_align(sizeof(int32_t) * (size_t)(P + 1));
    part[2] = moe_align(sizeof(int64_t) * (size_t)(E + 2));
    part[3] = moe_align(sizeof(moe_task) * (size_t)((P / MOE_ROWS + E + 1) * chunks));
    part[4] = moe_align(sizeof(float) * (size_t)(P * D));
    part[5] = moe_align(sizeof(float) * (size_t)(P * H));
    part[6] = moe_align(sizeof(float) * (size_t)(P * D));
    part[7] = moe_align(sizeof(float) * (size_t)MOE_ROWS * MOE_UNITS * (size_t)(n_threads > 0 ? n_threads : 1));
    size_t total = 0;
    for (int i = 0; i < 8; i++)
        total += part[i];
    return total;
}

sl_status sl__cpu_mm_moe(const sl__kargs *a)
{
    moe_job j = {.a = a, .T = a->in[0].shape[0], .D = a->in[0].shape[1], .H = a->in[1].shape[0],
                 .k = a->in[5].shape[1], .E = a->in[4].shape[0] - 1, .offs = a->in[4].data};
    if (j.T == 0 || j.D == 0)
        return SL_OK;
    size_t part[8];
    moe_scratch(a->in, sl_ctx_threads(a->ctx), part);
    char *b = a->scratch;
    j.ptok = (int32_t *)b, b += part[0];
    j.pos = (int32_t *)b, b += part[1];
    int64_t *seg = (int64_t *)b;
    b += part[2];
    j.tasks = (moe_task *)b, b += part[3];
    j.xs = (float *)b, b += part[4];
    j.hs = (float *)b, b += part[5];
    j.ys = (float *)b, b += part[6];
    j.ubuf = (float *)b;
    /* 1. counting sort of the pairs by expert */
    const int32_t *route = a->in[5].data;
    int64_t P = j.T * j.k;
    memset(seg, 0, sizeof *seg * (size_t)(j.E + 2));
    for (int64_t i = 0; i < P; i++)
        if (route[i] >= 0)
            seg[route[i] + 2]++;
    for (int64_t e = 0; e < j.E; e++)
        seg[e + 2] += seg[e + 1];
    /* seg[e + 1] is now the start of expert e; filling advances it to the end */
    for (int64_t i = 0; i < P; i++) {
        int32_t e = route[i];
        if (e < 0) {
            j.pos[i] = -1;
            continue;
        }
        int64_t p = seg[e + 1]++;
        j.pos[i] = (int32_t)p;
        j.ptok[p] = (int32_t)(i / j.k);
    }
    seg[0] = 0; /* seg[e] .. seg[e + 1]: expert e's pairs */
    int64_t pairs = seg[j.E];
    double macs = 0;
    for (int64_t e = 0; e < j.E; e++)
        macs += 3.0 * (double)(seg[e + 1] - seg[e]) * (double)(j.offs[e + 1] - j.offs[e]) * (double)j.D;
    /* a small call (decode of a small model) runs on the calling thread:
     * each parallel region starts threads, which costs more than the work */
    int serial = macs < MOE_SERIAL_MACS;
    sl_status s = moe_for(a->ctx, serial, pairs, moe_gather, &j);
    if (s == SL_OK && (j.n_tasks = moe_tasks(&j, seg, 1)) > 0)
        s = moe_for(a->ctx, serial, j.n_tasks, moe_up, &j);
    if (s == SL_OK && (j.n_tasks = moe_tasks(&j, seg, 0)) > 0)
        s = moe_for(a->ctx, serial, j.n_tasks, moe_down, &j);
    if (s == SL_OK)
        s = moe_for(a->ctx, serial, j.T, moe_combine, &j);
    return s;
}

size_t sl__cpu_mm_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    if (op == SL_OP_MM_MOE) {
        size_t part[8];
        return moe_scratch(in, n_threads, part);
    }
    if (op != SL_OP_MM_NM && op != SL_OP_MM_BITMAP)
        return 0;
    int64_t T = in[0].shape[0], K = in[0].shape[1];
    if (T <= 1)
        return 0;
    int64_t tb = block_rows(T), nb = (T + tb - 1) / tb;
    size_t lists = (size_t)ROWS_PER_ITEM * (size_t)list_cap(op, params, in) * (sizeof(int32_t) + sizeof(float));
    return sizeof(float) * (size_t)(nb * tb * K) + lists * (size_t)(n_threads > 0 ? n_threads : 1);
}
