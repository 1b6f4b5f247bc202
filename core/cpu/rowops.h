/* cpu/rowops.h — the vectorised row operations of the cpu kernels (rowops.c). */
#ifndef SL_CPU_ROWOPS_H
#define SL_CPU_ROWOPS_H

#include "../internal.h"

/* Row operations of the online softmax, in the best variant this CPU runs
 * (AVX2+FMA or portable C): exp_sum replaces s[i] by exp(s[i] - m) and
 * returns the sum; max returns max(m, s[...]); scale multiplies in place. */
typedef struct sl__cpu_rowops {
    float (*exp_sum)(float *s, int64_t n, float m);
    float (*max)(const float *s, int64_t n, float m);
    void (*scale)(float *x, int64_t n, float a);
} sl__cpu_rowops;

sl__cpu_rowops sl__cpu_rowops_get(void);

/* Row operations for gathered keys: dot returns a·b; axpy does y += a·x;
 * dots writes s[r·ss] = q[r]·k for rows r of q ([rows, d]); axpys adds
 * p[r·ps]·v to acc[r] ([rows, d]) — one key or value row read once for all
 * rows; pv is axpys over a chunk of value rows with acc kept in registers. */
typedef struct sl__cpu_vecops {
    float (*dot)(const float *a, const float *b, int64_t n);
    void (*axpy)(float *y, const float *x, int64_t n, float a);
    void (*dots)(const float *q, int64_t rows, int64_t d, const float *k, float *s, int64_t ss);
    void (*axpys)(float *acc, int64_t rows, int64_t d, const float *v, const float *p, int64_t ps);
    /* acc[r] += Σ_j p[r·ps + j]·v[j] over nc value rows v[j] (pointers). */
    void (*pv)(float *acc, int64_t rows, int64_t d, const float *const *v, const float *p, int64_t ps, int64_t nc);
} sl__cpu_vecops;

sl__cpu_vecops sl__cpu_vecops_get(void);

#endif
