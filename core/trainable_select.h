/* trainable_select.h — helpers every backend of trainable.select shares
 * (issue 14, session 3; contract in sparselab.h): the visible keys of a row,
 * the padded list length of a row, and the standard normal inverse CDF
 * (Acklam's rational approximation, relative error < 1.2e-9), the same
 * formula as the Lua recipe spark_transformer's norm_inv; and trainable.cells'
 * budget and nearest resize (card sea). Host and device. */
#ifndef SL_TRAINABLE_SELECT_H
#define SL_TRAINABLE_SELECT_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SL_TS_HD __host__ __device__
#else
#define SL_TS_HD
#endif

/* Visible keys of row t. */
static inline SL_TS_HD int64_t sl__ts_vis(int64_t t, int64_t nq, int64_t nk, int causal)
{
    int64_t n = causal ? nk - nq + t + 1 : nk;
    return n > nk ? nk : n < 0 ? 0 : n;
}

/* The padded list length b_t of row t: mode 0 min(k, vis(last row of the
 * entry)), mode 1 min(cap, vis(t)) (vis(t) without a cap). */
static inline SL_TS_HD int64_t sl__ts_bound(int64_t mode, int64_t k, int64_t cap, int64_t group, int causal, int64_t t,
                                            int64_t nq, int64_t nk)
{
    if (mode == 0) {
        int64_t last = (t / group) * group + group - 1;
        int64_t m = sl__ts_vis(last < nq ? last : nq - 1, nq, nk, causal);
        return m < k ? m : k;
    }
    int64_t m = sl__ts_vis(t, nq, nk, causal);
    return cap > 0 && cap < m ? cap : m;
}

/* Standard normal inverse CDF, Acklam's approximation; -inf at p <= 0, +inf at p >= 1. */
static inline SL_TS_HD double sl__ts_norm_inv(double p)
{
    const double a[6] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                         1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
    const double b[5] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                         6.680131188771972e+01,  -1.328068155288572e+01};
    const double c[6] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                         -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
    const double d[4] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00};
    if (p <= 0)
        return -INFINITY;
    if (p >= 1)
        return INFINITY;
    if (p < 0.02425) {
        double q = sqrt(-2 * log(p));
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
               ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    if (p > 1 - 0.02425) {
        double q = sqrt(-2 * log(1 - p));
        return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
               ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    double q = p - 0.5, r = q * q;
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
           (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/* The feature width r of a call: the weights' rank, else split (0 or > D: D). */
static inline SL_TS_HD int64_t sl__ts_rank(int has_w, int64_t w_rank, int64_t split, int64_t d)
{
    return has_w ? w_rank : split > 0 && split < d ? split : d;
}

/* SEA's nearest resize: the cell of key j in a row of width w (T_M cells). */
static inline SL_TS_HD int64_t sl__ts_cell(int64_t j, int64_t w, int64_t tm)
{
    double x = floor(((double)j + 0.5) / (double)w * (double)tm - 1e-4);
    return x < 0 ? 0 : x > (double)(tm - 1) ? tm - 1 : (int64_t)x;
}

/* SEA's cell budget of a row of width w over H heads. */
static inline SL_TS_HD int64_t sl__ts_budget(int64_t H, double k, int64_t tm, int64_t w)
{
    double b = floor((double)H * k * (double)tm / (double)w + 0.5);
    int64_t bi = b < 1 ? 1 : b > (double)(H * tm) ? H * tm : (int64_t)b;
    return bi;
}

/* trainable.cells: the padded list length of row t (all heads together). */
static inline SL_TS_HD int64_t sl__ts_cell_bound(int64_t H, double k, int64_t tm, int64_t t)
{
    int64_t w = t + 1, b = sl__ts_budget(H, k, tm, w), per = b * ((w + tm - 1) / tm + 1);
    return per < H * w ? per : H * w;
}

/* The first key of cell c in a row of width w (w when none maps there or later). */
static inline SL_TS_HD int64_t sl__ts_cell_first(int64_t c, int64_t w, int64_t tm)
{
    int64_t lo = 0, hi = w; /* cell() is non-decreasing in j */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (sl__ts_cell(mid, w, tm) < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

#endif
