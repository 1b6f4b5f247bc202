/* cpu/rowops.h — the vectorised row operations of the cpu kernels (rowops.c). */
#ifndef SL_CPU_ROWOPS_H
#define SL_CPU_ROWOPS_H

#include "../internal.h"

/* Instruction sets of the row operations, in order (issue 20). */
enum { SL__ISA_AUTO = 0, SL__ISA_PORTABLE = 1, SL__ISA_AVX2 = 2, SL__ISA_AVX512 = 3 };

/* -1 for an unknown name; "auto" is SL__ISA_AUTO. */
int sl__cpu_isa_parse(const char *name);
const char *sl__cpu_isa_name(int isa);
/* The best set this CPU and build run. */
int sl__cpu_isa_best(void);
/* The set a kernel runs under ctx (NULL: no context cap): the context's
 * choice, else the environment's SL_CPU_ISA (auto|portable|avx2|avx512; an
 * unknown value means auto), capped at the best this CPU runs. */
int sl__cpu_isa_of(const sl_ctx *ctx);

/* Row operations of the online softmax, in the variant chosen by
 * sl__cpu_isa_of (AVX-512, AVX2+FMA or portable C): exp_sum replaces s[i] by exp(s[i] - m) and
 * returns the sum; max returns max(m, s[...]); scale multiplies in place. */
typedef struct sl__cpu_rowops {
    float (*exp_sum)(float *s, int64_t n, float m);
    float (*max)(const float *s, int64_t n, float m);
    void (*scale)(float *x, int64_t n, float a);
    /* s[j] = -inf where bits[j] == 0, j < n (a block's row of mask bits) */
    void (*mask_bits)(float *s, const uint8_t *bits, int64_t n);
    const char *isa; /* "avx512", "avx2" or "portable": the set these run */
} sl__cpu_rowops;

sl__cpu_rowops sl__cpu_rowops_for(const sl_ctx *ctx);
sl__cpu_rowops sl__cpu_rowops_get(void); /* sl__cpu_rowops_for(NULL) */

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
    const char *isa; /* "avx512", "avx2" or "portable" */
} sl__cpu_vecops;

sl__cpu_vecops sl__cpu_vecops_for(const sl_ctx *ctx);
sl__cpu_vecops sl__cpu_vecops_get(void); /* sl__cpu_vecops_for(NULL) */

#endif
