/* act_quantile.h — the standard-normal quantile Phi^-1(p) that act.stat_topk
 * needs once per call (issue 17, session 3), shared by its ref, cpu and cuda
 * launchers (host code): bisection on Phi(z) = erfc(-z / sqrt 2) / 2 over
 * [-40, 40] until the interval stops shrinking (about 1 ulp), so every
 * backend uses the same threshold. */
#ifndef SL_ACT_QUANTILE_H
#define SL_ACT_QUANTILE_H

#include <math.h>

static inline double sl__normal_quantile(double p)
{
    double lo = -40, hi = 40;
    for (int i = 0; i < 200; i++) {
        double mid = 0.5 * (lo + hi);
        if (mid == lo || mid == hi)
            break;
        if (0.5 * erfc(-mid / sqrt(2.0)) < p)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* act.spark_score's predictor dims r' (issue 17, session 4): ceil(D / 2) for
 * r = 0, else min(r, D). */
static inline long long sl__act_spark_dims(long long r, long long D)
{
    return r == 0 ? (D + 1) / 2 : (r < D ? r : D);
}

#endif
