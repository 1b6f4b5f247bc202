/* cpu/deqops.c — int8 / int4 page codes to f32 (deqops.h): portable C and
 * x86 paths by function-level target attributes (no -m flag, no global
 * state), dispatched per call by sl__cpu_isa_of. Each path converts whole
 * vectors of codes (u8 -> i32 -> f32) and finishes a row's tail with the
 * scalar expression. */
#include "deqops.h"

/* Channel c of a code row as an unsigned integer. */
static inline int code_at(const uint8_t *row, int64_t c, int bits)
{
    return bits == 8 ? (int)row[c] : (int)(c % 2 == 0 ? (row[c / 2] & 0x0F) : (row[c / 2] >> 4));
}

/* Channels c0 .. d-1 of one row, scalar. */
static void tail_row(const uint8_t *row, int64_t c0, int64_t d, int bits, int off, const float *sc, const float *z,
                     float *o)
{
    for (int64_t c = c0; c < d; c++) {
        float x = (float)(code_at(row, c, bits) - off) * sc[c];
        o[c] = z ? x + z[c] : x;
    }
}

/* Portable: int8 rows by a plain loop; int4 rows a byte (two channels) at a
 * time, so no channel pays a parity test. */
static void rows_plain(const uint8_t *restrict codes, int64_t rb, int64_t n, int bits, const float *restrict sc,
                       const float *restrict z, float *restrict out, int64_t d)
{
    int off = z ? 0 : 1 << (bits - 1);
    for (int64_t t = 0; t < n; t++) {
        const uint8_t *row = codes + t * rb;
        float *o = out + t * d;
        int64_t c = 0;
        if (bits == 8) {
            for (; c < d; c++)
                o[c] = (float)((int)row[c] - off) * sc[c];
        } else {
            for (; c + 2 <= d; c += 2) {
                o[c] = (float)((int)(row[c / 2] & 0x0F) - off) * sc[c];
                o[c + 1] = (float)((int)(row[c / 2] >> 4) - off) * sc[c + 1];
            }
        }
        if (z)
            for (int64_t i = 0; i < c; i++)
                o[i] = o[i] + z[i];
        tail_row(row, c, d, bits, off, sc, z, o);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86_DEQ 1
#define DQ_AVX2 __attribute__((target("avx2")))
#define DQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2")))

/* Eight channels from eight u8 lanes: (u - off) . s (+ z). */
DQ_AVX2 static inline void put8(__m128i u8, __m256i voff, const float *s, const float *z, float *o)
{
    __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(u8), voff)), _mm256_loadu_ps(s));
    if (z)
        x = _mm256_add_ps(x, _mm256_loadu_ps(z));
    _mm256_storeu_ps(o, x);
}

DQ_AVX2 static void rows_avx2(const uint8_t *codes, int64_t rb, int64_t n, int bits, const float *sc, const float *z,
                              float *out, int64_t d)
{
    int off = z ? 0 : 1 << (bits - 1);
    __m256i voff = _mm256_set1_epi32(off);
    __m128i low = _mm_set1_epi8(0x0F);
    for (int64_t t = 0; t < n; t++) {
        const uint8_t *row = codes + t * rb;
        float *o = out + t * d;
        int64_t c = 0;
        if (bits == 8) {
            for (; c + 8 <= d; c += 8)
                put8(_mm_loadl_epi64((const __m128i *)(const void *)(row + c)), voff, sc + c, z ? z + c : NULL, o + c);
        } else {
            for (; c + 16 <= d; c += 16) {
                /* 8 bytes = 16 channels: low nibbles (even) and high (odd) interleaved back in order */
                __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(row + c / 2));
                __m128i in = _mm_unpacklo_epi8(_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16(b, 4), low));
                put8(in, voff, sc + c, z ? z + c : NULL, o + c);
                put8(_mm_srli_si128(in, 8), voff, sc + c + 8, z ? z + c + 8 : NULL, o + c + 8);
            }
        }
        tail_row(row, c, d, bits, off, sc, z, o);
    }
}

/* Sixteen channels from sixteen u8 lanes. */
DQ_AVX512 static inline void put16(__m128i u8, __m512i voff, const float *s, const float *z, float *o)
{
    __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(u8), voff)), _mm512_loadu_ps(s));
    if (z)
        x = _mm512_add_ps(x, _mm512_loadu_ps(z));
    _mm512_storeu_ps(o, x);
}

DQ_AVX512 static void rows_avx512(const uint8_t *codes, int64_t rb, int64_t n, int bits, const float *sc,
                                  const float *z, float *out, int64_t d)
{
    int off = z ? 0 : 1 << (bits - 1);
    __m512i voff = _mm512_set1_epi32(off);
    __m128i low = _mm_set1_epi8(0x0F);
    for (int64_t t = 0; t < n; t++) {
        const uint8_t *row = codes + t * rb;
        float *o = out + t * d;
        int64_t c = 0;
        if (bits == 8) {
            for (; c + 16 <= d; c += 16)
                put16(_mm_loadu_si128((const __m128i *)(const void *)(row + c)), voff, sc + c, z ? z + c : NULL, o + c);
        } else {
            for (; c + 32 <= d; c += 32) {
                __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(row + c / 2));
                __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
                put16(_mm_unpacklo_epi8(lo, hi), voff, sc + c, z ? z + c : NULL, o + c);
                put16(_mm_unpackhi_epi8(lo, hi), voff, sc + c + 16, z ? z + c + 16 : NULL, o + c + 16);
            }
        }
        tail_row(row, c, d, bits, off, sc, z, o);
    }
}
#endif

sl__cpu_deqops sl__cpu_deqops_for(const sl_ctx *ctx)
{
    int isa = sl__cpu_isa_of(ctx);
    (void)isa;
#ifdef HAVE_X86_DEQ
    if (isa == SL__ISA_AVX512)
        return (sl__cpu_deqops){rows_avx512, "avx512"};
    if (isa == SL__ISA_AVX2)
        return (sl__cpu_deqops){rows_avx2, "avx2"};
#endif
    return (sl__cpu_deqops){rows_plain, "portable"};
}
