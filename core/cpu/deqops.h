/* cpu/deqops.h — dequantisation of low-bit page codes (issue 13, session 4):
 * int8 / int4 rows to f32 in AVX-512, AVX2 or portable C, chosen per call
 * like the row operations (sl__cpu_isa_of: the context's cap, SL_CPU_ISA,
 * the CPU's features). */
#ifndef SL_CPU_DEQOPS_H
#define SL_CPU_DEQOPS_H

#include "rowops.h"

/* rows: for t < n, channel c < d of code row t (codes + t . rb; int8: byte c;
 * int4: byte c/2, low nibble for even c) written to out[t . d + c] as
 * (code - 2^(bits-1)) . sc[c] (z NULL: symmetric codes) or code . sc[c] +
 * z[c] (zero points), each product and sum rounded to f32 in that order (no
 * fused multiply-add), so every path gives the same floats as the scalar
 * expression. */
typedef struct sl__cpu_deqops {
    void (*rows)(const uint8_t *codes, int64_t rb, int64_t n, int bits, const float *sc, const float *z, float *out,
                 int64_t d);
    const char *isa; /* "avx512", "avx2" or "portable" */
} sl__cpu_deqops;

sl__cpu_deqops sl__cpu_deqops_for(const sl_ctx *ctx);

#endif
