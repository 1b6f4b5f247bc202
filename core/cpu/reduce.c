/* cpu/reduce.c — reductions of issue 4 on threads: reduce.columns and
 * reduce.diagonals over chunks of output columns (double accumulators on
 * the stack), reduce.block per row of tiles, reduce.heads per chunk of
 * elements, reduce.far per row, reduce.segments64 per chunk of segments. */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <string.h>

#define CHUNK 256

typedef struct red_job {
    const sl__kargs *a;
    int64_t H, R, C, n_chunks;
    int64_t pos0;               /* diagonals */
    int64_t br, bc, nr, nc, mode; /* block, heads */
    int64_t g;                  /* heads */
} red_job;

static void columns_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const red_job *j = ud;
    int64_t h = item / j->n_chunks, c0 = (item % j->n_chunks) * CHUNK;
    int64_t n = j->C - c0 < CHUNK ? j->C - c0 : CHUNK;
    const float *x = (const float *)j->a->in[0].data + h * j->R * j->C + c0;
    double acc[CHUNK] = {0};
    for (int64_t r = 0; r < j->R; r++)
        for (int64_t i = 0; i < n; i++)
            acc[i] += x[r * j->C + i];
    float *y = (float *)j->a->out[0].data + h * j->C + c0;
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)acc[i];
}

/* reduce.columns64: columns_item without the rounding */
static void columns64_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const red_job *j = ud;
    int64_t h = item / j->n_chunks, c0 = (item % j->n_chunks) * CHUNK;
    int64_t n = j->C - c0 < CHUNK ? j->C - c0 : CHUNK;
    const float *x = (const float *)j->a->in[0].data + h * j->R * j->C + c0;
    double *y = (double *)j->a->out[0].data + h * j->C + c0;
    for (int64_t i = 0; i < n; i++)
        y[i] = 0;
    for (int64_t r = 0; r < j->R; r++)
        for (int64_t i = 0; i < n; i++)
            y[i] += x[r * j->C + i];
}

static void diagonals_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const red_job *j = ud;
    int64_t h = item / j->n_chunks, o0 = (item % j->n_chunks) * CHUNK;
    int64_t n = j->C - o0 < CHUNK ? j->C - o0 : CHUNK;
    const float *x = (const float *)j->a->in[0].data + h * j->R * j->C;
    double acc[CHUNK] = {0};
    for (int64_t r = 0; r < j->R; r++) {
        /* offsets o0 + i read key j = pos - o0 - i: clip i to keys in [0, C) */
        int64_t pos = j->pos0 + r, i_lo = pos - o0 - (j->C - 1), i_hi = pos - o0;
        i_lo = i_lo < 0 ? 0 : i_lo;
        i_hi = i_hi > n - 1 ? n - 1 : i_hi;
        const float *xr = x + r * j->C + pos - o0;
        for (int64_t i = i_lo; i <= i_hi; i++)
            acc[i] += xr[-i];
    }
    float *y = (float *)j->a->out[0].data + h * j->C + o0;
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)acc[i];
}

static void block_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const red_job *j = ud;
    int64_t h = item / j->nr, br = item % j->nr, r0 = br * j->br, r1 = r0 + j->br < j->R ? r0 + j->br : j->R;
    const float *x = (const float *)j->a->in[0].data + h * j->R * j->C;
    float *y = (float *)j->a->out[0].data + (h * j->nr + br) * j->nc;
    for (int64_t bc = 0; bc < j->nc; bc++) {
        int64_t c0 = bc * j->bc, c1 = c0 + j->bc < j->C ? c0 + j->bc : j->C;
        double s = j->mode == 1 ? -INFINITY : 0;
        for (int64_t r = r0; r < r1; r++) {
            const float *xr = x + r * j->C;
            if (j->mode == 1)
                for (int64_t c = c0; c < c1; c++)
                    s = xr[c] > s ? xr[c] : s;
            else
                for (int64_t c = c0; c < c1; c++)
                    s += xr[c];
        }
        y[bc] = (float)(j->mode == 2 ? s / (double)((r1 - r0) * (c1 - c0)) : s);
    }
}

static void heads_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const red_job *j = ud;
    int64_t RC = j->R * j->C, o = item / j->n_chunks, e0 = (item % j->n_chunks) * CHUNK;
    int64_t n = RC - e0 < CHUNK ? RC - e0 : CHUNK;
    const float *x = (const float *)j->a->in[0].data;
    double acc[CHUNK];
    for (int64_t i = 0; i < n; i++)
        acc[i] = j->mode == 1 ? -INFINITY : 0;
    for (int64_t h = o * j->g; h < (o + 1) * j->g; h++) {
        const float *xh = x + h * RC + e0;
        if (j->mode == 1)
            for (int64_t i = 0; i < n; i++)
                acc[i] = xh[i] > acc[i] ? xh[i] : acc[i];
        else
            for (int64_t i = 0; i < n; i++)
                acc[i] += xh[i];
    }
    float *y = (float *)j->a->out[0].data + o * RC + e0;
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(j->mode == 2 ? acc[i] / (double)j->g : acc[i]);
}

/* reduce.far: one row per item, the range computed once, summed in key
 * order in float64 (the order ref and cuda use: equal results). */
static void far_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const red_job *j = ud;
    const sl_reduce_far_params *p = j->a->params;
    int64_t r = item % j->R, pos = j->pos0 + r;
    int64_t hi = (pos / p->block - p->back) * p->block;
    hi = hi < pos + 1 ? hi : pos + 1;
    hi = hi < j->C ? hi : j->C;
    const float *x = (const float *)j->a->in[0].data + item * j->C;
    double s = 0;
    for (int64_t k = p->lo; k < hi; k++)
        s += x[k];
    ((double *)j->a->out[0].data)[item] = s;
}

/* reduce.kth: the row's first limit entries copied to the thread's scratch,
 * then quickselect (median-of-three pivot, three-way partition) down to
 * position rank - 1: O(limit) on average. */
static float kth_smallest(float *v, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi];
        float piv = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        /* [lo, lt) < piv, [lt, i) == piv, (gt, hi] > piv */
        int64_t lt = lo, i = lo, gt = hi;
        while (i <= gt) {
            float t = v[i];
            if (t < piv) {
                v[i] = v[lt];
                v[lt++] = t;
                i++;
            } else if (t > piv) {
                v[i] = v[gt];
                v[gt--] = t;
            } else
                i++;
        }
        if (k < lt)
            hi = lt - 1;
        else if (k > gt)
            lo = gt + 1;
        else
            return piv;
    }
    return v[k];
}

static void kth_item(int64_t item, void *ud, int thread)
{
    const red_job *j = ud;
    int64_t r = item % j->R;
    const int32_t *rk = j->a->in[1].data, *lim = j->a->in[2].data;
    float *v = (float *)j->a->scratch + (size_t)thread * (size_t)j->C;
    memcpy(v, (const float *)j->a->in[0].data + item * j->C, (size_t)lim[r] * sizeof *v);
    ((float *)j->a->out[0].data)[item] = kth_smallest(v, lim[r], rk[r] - 1);
}

static red_job job_of(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    red_job j = {.a = a, .H = x->shape[0], .R = x->shape[1], .C = x->shape[2]};
    j.n_chunks = (j.C + CHUNK - 1) / CHUNK;
    return j;
}

sl_status sl__cpu_reduce_columns(const sl__kargs *a)
{
    red_job j = job_of(a);
    return sl__cpu_parallel(a->ctx, j.H * j.n_chunks, columns_item, &j);
}

sl_status sl__cpu_reduce_diagonals(const sl__kargs *a)
{
    const sl_reduce_diag_params *p = a->params;
    red_job j = job_of(a);
    j.pos0 = p->row_pos0 < 0 ? j.C - j.R : p->row_pos0;
    return sl__cpu_parallel(a->ctx, j.H * j.n_chunks, diagonals_item, &j);
}

sl_status sl__cpu_reduce_block(const sl__kargs *a)
{
    const sl_reduce_block_params *p = a->params;
    red_job j = job_of(a);
    j.br = p->br, j.bc = p->bc, j.mode = p->mode;
    j.nr = (j.R + j.br - 1) / j.br, j.nc = (j.C + j.bc - 1) / j.bc;
    return sl__cpu_parallel(a->ctx, j.H * j.nr, block_item, &j);
}

sl_status sl__cpu_reduce_heads(const sl__kargs *a)
{
    const sl_reduce_heads_params *p = a->params;
    red_job j = job_of(a);
    j.g = p->group ? p->group : j.H;
    j.mode = p->mode;
    j.n_chunks = (j.R * j.C + CHUNK - 1) / CHUNK;
    return sl__cpu_parallel(a->ctx, j.H / j.g * j.n_chunks, heads_item, &j);
}

sl_status sl__cpu_reduce_columns64(const sl__kargs *a)
{
    red_job j = job_of(a);
    return sl__cpu_parallel(a->ctx, j.H * j.n_chunks, columns64_item, &j);
}

/* reduce.segments64 (issue 20, session 5): one head's chunk of CHUNK
 * segments per work item, each summed from its first column on. */
static void segments64_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const red_job *j = ud;
    const sl_reduce_segments_params *p = j->a->params;
    int64_t G = j->nc, h = item / j->n_chunks, g0 = (item % j->n_chunks) * CHUNK;
    int64_t g1 = g0 + CHUNK < G ? g0 + CHUNK : G, shift = p->from_end ? G * p->size - j->C : 0;
    const float *x = (const float *)j->a->in[0].data + h * j->C;
    double *y = (double *)j->a->out[0].data + h * G;
    for (int64_t g = g0; g < g1; g++) {
        int64_t lo = g * p->size - shift, hi = lo + p->size;
        lo = lo < 0 ? 0 : lo;
        hi = hi < j->C ? hi : j->C;
        double s = 0;
        for (int64_t c = lo; c < hi; c++)
            s += x[c];
        y[g] = s;
    }
}

sl_status sl__cpu_reduce_segments64(const sl__kargs *a)
{
    red_job j = {.a = a, .H = a->in[0].shape[0], .C = a->in[0].shape[1], .nc = a->out[0].shape[1]};
    j.n_chunks = (j.nc + CHUNK - 1) / CHUNK;
    return sl__cpu_parallel(a->ctx, j.H * j.n_chunks, segments64_item, &j);
}

sl_status sl__cpu_reduce_kth(const sl__kargs *a)
{
    red_job j = job_of(a);
    return sl__cpu_parallel(a->ctx, j.H * j.R, kth_item, &j);
}

sl_status sl__cpu_reduce_far(const sl__kargs *a)
{
    const sl_reduce_far_params *p = a->params;
    red_job j = job_of(a);
    j.pos0 = p->row_pos0 < 0 ? j.C - j.R : p->row_pos0;
    return sl__cpu_parallel(a->ctx, j.H * j.R, far_item, &j);
}

size_t sl__cpu_reduce_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params;
    if (op != SL_OP_REDUCE_KTH)
        return 0;
    /* reduce.kth: one row of C floats per thread */
    return (size_t)(n_threads > 0 ? n_threads : 1) * (size_t)(in[0].shape[2] > 0 ? in[0].shape[2] : 1) * sizeof(float);
}
