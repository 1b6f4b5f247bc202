/* ref/reduce.c — reference reductions of issue 4 (reduce.columns,
 * reduce.diagonals, reduce.block, reduce.heads): plain loops, float64
 * accumulation. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>

sl_status sl__ref_reduce_columns(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], R = x->shape[1], C = x->shape[2];
    const float *xd = x->data;
    float *y = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t j = 0; j < C; j++) {
            double s = 0;
            for (int64_t r = 0; r < R; r++)
                s += xd[(h * R + r) * C + j];
            y[h * C + j] = (float)s;
        }
    return SL_OK;
}

sl_status sl__ref_reduce_diagonals(const sl__kargs *a)
{
    const sl_reduce_diag_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], R = x->shape[1], C = x->shape[2], pos0 = p->row_pos0 < 0 ? C - R : p->row_pos0;
    const float *xd = x->data;
    float *y = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t o = 0; o < C; o++) {
            double s = 0;
            for (int64_t r = 0; r < R; r++) {
                int64_t j = pos0 + r - o;
                if (j >= 0 && j < C)
                    s += xd[(h * R + r) * C + j];
            }
            y[h * C + o] = (float)s;
        }
    return SL_OK;
}

sl_status sl__ref_reduce_block(const sl__kargs *a)
{
    const sl_reduce_block_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], R = x->shape[1], C = x->shape[2];
    int64_t nr = (R + p->br - 1) / p->br, nc = (C + p->bc - 1) / p->bc;
    const float *xd = x->data;
    float *y = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t br = 0; br < nr; br++)
            for (int64_t bc = 0; bc < nc; bc++) {
                double s = p->mode == 1 ? -INFINITY : 0;
                int64_t n = 0;
                for (int64_t r = br * p->br; r < R && r < (br + 1) * p->br; r++)
                    for (int64_t j = bc * p->bc; j < C && j < (bc + 1) * p->bc; j++) {
                        double v = xd[(h * R + r) * C + j];
                        if (p->mode == 1)
                            s = v > s ? v : s;
                        else
                            s += v;
                        n++;
                    }
                y[(h * nr + br) * nc + bc] = (float)(p->mode == 2 ? s / (double)n : s);
            }
    return SL_OK;
}

sl_status sl__ref_reduce_heads(const sl__kargs *a)
{
    const sl_reduce_heads_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], RC = x->shape[1] * x->shape[2], g = p->group ? p->group : H;
    const float *xd = x->data;
    float *y = a->out[0].data;
    for (int64_t o = 0; o < H / g; o++)
        for (int64_t i = 0; i < RC; i++) {
            double s = p->mode == 1 ? -INFINITY : 0;
            for (int64_t h = o * g; h < (o + 1) * g; h++) {
                double v = xd[h * RC + i];
                if (p->mode == 1)
                    s = v > s ? v : s;
                else
                    s += v;
            }
            y[o * RC + i] = (float)(p->mode == 2 ? s / (double)g : s);
        }
    return SL_OK;
}

sl_status sl__ref_reduce_columns64(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], R = x->shape[1], C = x->shape[2];
    const float *xd = x->data;
    double *y = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t j = 0; j < C; j++) {
            double s = 0;
            for (int64_t r = 0; r < R; r++)
                s += xd[(h * R + r) * C + j];
            y[h * C + j] = s;
        }
    return SL_OK;
}

/* reduce.far: per row a plain float64 sum over [lo, hi). */
sl_status sl__ref_reduce_far(const sl__kargs *a)
{
    const sl_reduce_far_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], R = x->shape[1], C = x->shape[2], pos0 = p->row_pos0 < 0 ? C - R : p->row_pos0;
    const float *xd = x->data;
    double *y = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t r = 0; r < R; r++) {
            int64_t pos = pos0 + r;
            double s = 0;
            for (int64_t j = p->lo; j < C && j <= pos; j++)
                if (j / p->block < pos / p->block - p->back)
                    s += xd[(h * R + r) * C + j];
            y[h * R + r] = s;
        }
    return SL_OK;
}

/* reduce.kth: the row's first limit entries copied to float64 and sorted
 * (qsort); the entry at position rank - 1. */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

sl_status sl__ref_reduce_kth(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], R = x->shape[1], C = x->shape[2];
    const float *xd = x->data;
    const int32_t *rk = a->in[1].data, *lim = a->in[2].data;
    float *y = a->out[0].data;
    double *tmp = malloc((size_t)(C > 0 ? C : 1) * sizeof *tmp);
    if (!tmp)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "reduce.kth: out of memory for a row of %lld entries", (long long)C);
    for (int64_t h = 0; h < H; h++)
        for (int64_t r = 0; r < R; r++) {
            const float *row = xd + (h * R + r) * C;
            for (int64_t j = 0; j < lim[r]; j++)
                tmp[j] = row[j];
            qsort(tmp, (size_t)lim[r], sizeof *tmp, cmp_double);
            y[h * R + r] = (float)tmp[rk[r] - 1];
        }
    free(tmp);
    return SL_OK;
}

/* reduce.segments64: per segment a plain float64 sum in column order; the
 * segment of column c found from c (not from the segment's ends). */
sl_status sl__ref_reduce_segments64(const sl__kargs *a)
{
    const sl_reduce_segments_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], C = x->shape[1], G = a->out[0].shape[1];
    /* from_end: column c lies (C - 1 - c) / size segments before the last */
    int64_t shift = p->from_end ? G * p->size - C : 0;
    const float *xd = x->data;
    double *y = a->out[0].data;
    for (int64_t i = 0; i < H * G; i++)
        y[i] = 0;
    for (int64_t h = 0; h < H; h++)
        for (int64_t c = 0; c < C; c++)
            y[h * G + (c + shift) / p->size] += xd[h * C + c];
    return SL_OK;
}

size_t sl__ref_reduce_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
