/* cpu/rowops.c — the row operations of the online softmax (max, exp and sum,
 * scale, mask bits) and of gathered keys (dot, axpy, their multi-row forms,
 * P·V) in AVX-512, AVX2+FMA and portable C, chosen per call from the CPU's features
 * and the context's cap (sl_ctx_set_cpu_isa, else SL_CPU_ISA): function-level
 * target attributes, so the build needs no -m flag and no global state. The exp is a
 * degree-6 polynomial after range reduction (relative error below 3e-7);
 * arguments below float range give exactly 0, and so does NaN (a caller
 * that can meet one checks for it: the dispatcher bounds attention scores);
 * above it the result saturates at 2^127·p. Defined for every input. */
#include "rowops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOG2E 1.44269504088896341f

static const float EXP_C[7] = {1.0f, 6.9314718e-1f, 2.4022651e-1f, 5.5504109e-2f, 9.6181291e-3f, 1.3333558e-3f,
                               1.5403530e-4f};

static float exp_scalar(float x)
{
    float t = x * LOG2E;
    if (!(t >= -125.f)) /* also NaN and -inf, as exp8 does: r stays in [-125, 127] */
        return 0.f;
    if (t > 127.f)
        t = 127.f;
    float r = nearbyintf(t), f = t - r;
    float p = EXP_C[6];
    for (int i = 5; i >= 0; i--)
        p = p * f + EXP_C[i];
    uint32_t bits = (uint32_t)((int32_t)r + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static float exp_row_plain(float *s, int64_t n, float m)
{
    float sum = 0.f;
    for (int64_t i = 0; i < n; i++) {
        s[i] = exp_scalar(s[i] - m);
        sum += s[i];
    }
    return sum;
}

static float max_plain(const float *s, int64_t n, float m)
{
    for (int64_t i = 0; i < n; i++)
        m = s[i] > m ? s[i] : m;
    return m;
}

static void scale_plain(float *x, int64_t n, float a)
{
    for (int64_t i = 0; i < n; i++)
        x[i] *= a;
}

static void mask_bits_plain(float *s, const uint8_t *bits, int64_t n)
{
    for (int64_t j = 0; j < n; j++)
        if (!bits[j])
            s[j] = -INFINITY;
}

static float dot_plain(const float *a, const float *b, int64_t n)
{
    float s = 0.f;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_plain(float *y, const float *x, int64_t n, float a)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void dots_plain(const float *q, int64_t rows, int64_t d, const float *k, float *s, int64_t ss)
{
    for (int64_t a = 0; a < rows; a++)
        s[a * ss] = dot_plain(q + a * d, k, d);
}

static void axpys_plain(float *acc, int64_t rows, int64_t d, const float *v, const float *p, int64_t ps)
{
    for (int64_t a = 0; a < rows; a++)
        if (p[a * ps] != 0.f)
            axpy_plain(acc + a * d, v, d, p[a * ps]);
}

static void pv_plain(float *acc, int64_t rows, int64_t d, const float *const *v, const float *p, int64_t ps, int64_t nc)
{
    for (int64_t j = 0; j < nc; j++)
        axpys_plain(acc, rows, d, v[j], p + j, ps);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static float hsum(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

AVX2 static float hmax(__m256 v)
{
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

AVX2 static __m256 exp8(__m256 x)
{
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(LOG2E));
    __m256 keep = _mm256_cmp_ps(t, _mm256_set1_ps(-125.f), _CMP_GE_OQ); /* also drops NaN and -inf */
    t = _mm256_max_ps(t, _mm256_set1_ps(-125.f));
    t = _mm256_min_ps(t, _mm256_set1_ps(127.f));
    __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, r);
    __m256 p = _mm256_set1_ps(EXP_C[6]);
    for (int i = 5; i >= 0; i--)
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP_C[i]));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), keep);
}

AVX2 static float exp_row_avx2(float *s, int64_t n, float m)
{
    __m256 vm = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
        _mm256_storeu_ps(s + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    return hsum(acc) + exp_row_plain(s + i, n - i, m);
}

AVX2 static float max_avx2(const float *s, int64_t n, float m)
{
    __m256 acc = _mm256_set1_ps(m);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_max_ps(acc, _mm256_loadu_ps(s + i));
    return max_plain(s + i, n - i, hmax(acc));
}

AVX2 static void scale_avx2(float *x, int64_t n, float a)
{
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), va));
    scale_plain(x + i, n - i, a);
}

AVX2 static void mask_bits_avx2(float *s, const uint8_t *bits, int64_t n)
{
    __m256i zero = _mm256_setzero_si256();
    __m256 ninf = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(bits + j)));
        __m256 off = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, zero));
        _mm256_storeu_ps(s + j, _mm256_blendv_ps(_mm256_loadu_ps(s + j), ninf, off));
    }
    mask_bits_plain(s + j, bits + j, n - j);
}

AVX2 static float dot_avx2(const float *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    return hsum(_mm256_add_ps(s0, s1)) + dot_plain(a + i, b + i, n - i);
}

AVX2 static void axpy_avx2(float *y, const float *x, int64_t n, float a)
{
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    axpy_plain(y + i, x + i, n - i, a);
}

/* Four rows against one key row: the key is loaded once per 8 dims. */
AVX2 static void dots_avx2(const float *q, int64_t rows, int64_t d, const float *k, float *s, int64_t ss)
{
    int64_t a = 0;
    for (; a + 4 <= rows && d % 8 == 0; a += 4) {
        const float *q0 = q + a * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        for (int64_t c = 0; c < d; c += 8) {
            __m256 kv = _mm256_loadu_ps(k + c);
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + c), kv, s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + c), kv, s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + c), kv, s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + c), kv, s3);
        }
        /* transpose-reduce: lane sums of s0..s3 in one vector */
        __m256 h01 = _mm256_hadd_ps(s0, s1), h23 = _mm256_hadd_ps(s2, s3), h = _mm256_hadd_ps(h01, h23);
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        float t[4];
        _mm_storeu_ps(t, r);
        s[a * ss] = t[0], s[(a + 1) * ss] = t[1], s[(a + 2) * ss] = t[2], s[(a + 3) * ss] = t[3];
    }
    for (; a < rows; a++)
        s[a * ss] = dot_avx2(q + a * d, k, d);
}

AVX2 static void axpys_avx2(float *acc, int64_t rows, int64_t d, const float *v, const float *p, int64_t ps)
{
    int64_t a = 0;
    for (; a + 4 <= rows && d % 8 == 0; a += 4) {
        float *y0 = acc + a * d, *y1 = y0 + d, *y2 = y1 + d, *y3 = y2 + d;
        __m256 p0 = _mm256_set1_ps(p[a * ps]), p1 = _mm256_set1_ps(p[(a + 1) * ps]);
        __m256 p2 = _mm256_set1_ps(p[(a + 2) * ps]), p3 = _mm256_set1_ps(p[(a + 3) * ps]);
        for (int64_t c = 0; c < d; c += 8) {
            __m256 vv = _mm256_loadu_ps(v + c);
            _mm256_storeu_ps(y0 + c, _mm256_fmadd_ps(p0, vv, _mm256_loadu_ps(y0 + c)));
            _mm256_storeu_ps(y1 + c, _mm256_fmadd_ps(p1, vv, _mm256_loadu_ps(y1 + c)));
            _mm256_storeu_ps(y2 + c, _mm256_fmadd_ps(p2, vv, _mm256_loadu_ps(y2 + c)));
            _mm256_storeu_ps(y3 + c, _mm256_fmadd_ps(p3, vv, _mm256_loadu_ps(y3 + c)));
        }
    }
    for (; a < rows; a++)
        if (p[a * ps] != 0.f)
            axpy_avx2(acc + a * d, v, d, p[a * ps]);
}

/* P·V over nc gathered value rows, register-blocked: two rows × 32 dims of
 * the accumulator stay in registers while the keys stream by, so acc is
 * loaded and stored once per chunk instead of once per key. */
AVX2 static void pv_avx2(float *acc, int64_t rows, int64_t d, const float *const *v, const float *p, int64_t ps,
                         int64_t nc)
{
    if (d % 32 != 0) {
        for (int64_t j = 0; j < nc; j++)
            axpys_avx2(acc, rows, d, v[j], p + j, ps);
        return;
    }
    int64_t a = 0;
    for (; a + 2 <= rows; a += 2) {
        const float *p0 = p + a * ps, *p1 = p0 + ps;
        for (int64_t c = 0; c < d; c += 32) {
            float *y0 = acc + a * d + c, *y1 = y0 + d;
            __m256 x0 = _mm256_loadu_ps(y0), x1 = _mm256_loadu_ps(y0 + 8), x2 = _mm256_loadu_ps(y0 + 16),
                   x3 = _mm256_loadu_ps(y0 + 24);
            __m256 z0 = _mm256_loadu_ps(y1), z1 = _mm256_loadu_ps(y1 + 8), z2 = _mm256_loadu_ps(y1 + 16),
                   z3 = _mm256_loadu_ps(y1 + 24);
            for (int64_t j = 0; j < nc; j++) {
                const float *vr = v[j] + c;
                __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8), v2 = _mm256_loadu_ps(vr + 16),
                       v3 = _mm256_loadu_ps(vr + 24);
                __m256 b0 = _mm256_broadcast_ss(p0 + j), b1 = _mm256_broadcast_ss(p1 + j);
                x0 = _mm256_fmadd_ps(b0, v0, x0), x1 = _mm256_fmadd_ps(b0, v1, x1);
                x2 = _mm256_fmadd_ps(b0, v2, x2), x3 = _mm256_fmadd_ps(b0, v3, x3);
                z0 = _mm256_fmadd_ps(b1, v0, z0), z1 = _mm256_fmadd_ps(b1, v1, z1);
                z2 = _mm256_fmadd_ps(b1, v2, z2), z3 = _mm256_fmadd_ps(b1, v3, z3);
            }
            _mm256_storeu_ps(y0, x0), _mm256_storeu_ps(y0 + 8, x1), _mm256_storeu_ps(y0 + 16, x2);
            _mm256_storeu_ps(y0 + 24, x3);
            _mm256_storeu_ps(y1, z0), _mm256_storeu_ps(y1 + 8, z1), _mm256_storeu_ps(y1 + 16, z2);
            _mm256_storeu_ps(y1 + 24, z3);
        }
    }
    for (; a < rows; a++)
        for (int64_t c = 0; c < d; c += 32) {
            float *y0 = acc + a * d + c;
            __m256 x0 = _mm256_loadu_ps(y0), x1 = _mm256_loadu_ps(y0 + 8), x2 = _mm256_loadu_ps(y0 + 16),
                   x3 = _mm256_loadu_ps(y0 + 24);
            for (int64_t j = 0; j < nc; j++) {
                const float *vr = v[j] + c;
                __m256 b0 = _mm256_broadcast_ss(p + a * ps + j);
                x0 = _mm256_fmadd_ps(b0, _mm256_loadu_ps(vr), x0);
                x1 = _mm256_fmadd_ps(b0, _mm256_loadu_ps(vr + 8), x1);
                x2 = _mm256_fmadd_ps(b0, _mm256_loadu_ps(vr + 16), x2);
                x3 = _mm256_fmadd_ps(b0, _mm256_loadu_ps(vr + 24), x3);
            }
            _mm256_storeu_ps(y0, x0), _mm256_storeu_ps(y0 + 8, x1), _mm256_storeu_ps(y0 + 16, x2);
            _mm256_storeu_ps(y0 + 24, x3);
        }
}

/* ---- AVX-512 (F, with DQ for the conversions) ----
 * Sixteen lanes; tails by lane masks instead of a scalar loop. exp16 is
 * exp8's computation lane for lane (same polynomial, clamps and zeroing;
 * 2^r by scalef instead of building the exponent bits), so the paths agree
 * to rounding. */
#define AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))

AVX512 static __m512 exp16(__m512 x)
{
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(LOG2E));
    __mmask16 keep = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-125.f), _CMP_GE_OQ); /* also drops NaN and -inf */
    t = _mm512_max_ps(t, _mm512_set1_ps(-125.f));
    t = _mm512_min_ps(t, _mm512_set1_ps(127.f));
    __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, r);
    __m512 p = _mm512_set1_ps(EXP_C[6]);
    for (int i = 5; i >= 0; i--)
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP_C[i]));
    return _mm512_maskz_scalef_ps(keep, p, r);
}

AVX512 static float exp_row_avx512(float *s, int64_t n, float m)
{
    __m512 vm = _mm512_set1_ps(m), acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm));
        __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i + 16), vm));
        _mm512_storeu_ps(s + i, e0);
        _mm512_storeu_ps(s + i + 16, e1);
        acc0 = _mm512_add_ps(acc0, e0);
        acc1 = _mm512_add_ps(acc1, e1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + i), vm));
        _mm512_mask_storeu_ps(s + i, k, e);
        acc0 = _mm512_mask_add_ps(acc0, k, acc0, e);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

AVX512 static float max_avx512(const float *s, int64_t n, float m)
{
    __m512 acc0 = _mm512_set1_ps(m), acc1 = acc0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_max_ps(acc0, _mm512_loadu_ps(s + i));
        acc1 = _mm512_max_ps(acc1, _mm512_loadu_ps(s + i + 16));
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        acc0 = _mm512_mask_max_ps(acc0, k, acc0, _mm512_maskz_loadu_ps(k, s + i));
    }
    return _mm512_reduce_max_ps(_mm512_max_ps(acc0, acc1));
}

AVX512 static void scale_avx512(float *x, int64_t n, float a)
{
    __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), va));
    }
}

AVX512 static void mask_bits_avx512(float *s, const uint8_t *bits, int64_t n)
{
    __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
        __m128i b = _mm_maskz_loadu_epi8(k, bits + j);
        __mmask16 off = _mm_mask_cmpeq_epi8_mask(k, b, _mm_setzero_si128());
        _mm512_mask_storeu_ps(s + j, off, ninf);
    }
}

AVX512 static __mmask16 tail16(int64_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }

AVX512 static float dot_avx512(const float *a, const float *b, int64_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = tail16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512 static void axpy_avx512(float *y, const float *x, int64_t n, float a)
{
    __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, k,
                              _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i)));
    }
}

/* Four rows against one key row: the key is loaded once per 16 dims. */
AVX512 static void dots_avx512(const float *q, int64_t rows, int64_t d, const float *k, float *s, int64_t ss)
{
    int64_t a = 0;
    for (; a + 4 <= rows; a += 4) {
        const float *q0 = q + a * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
        for (int64_t c = 0; c < d; c += 16) {
            __mmask16 m = tail16(d - c);
            __m512 kv = _mm512_maskz_loadu_ps(m, k + c);
            s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + c), kv, s0);
            s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q1 + c), kv, s1);
            s2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q2 + c), kv, s2);
            s3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q3 + c), kv, s3);
        }
        s[a * ss] = _mm512_reduce_add_ps(s0), s[(a + 1) * ss] = _mm512_reduce_add_ps(s1);
        s[(a + 2) * ss] = _mm512_reduce_add_ps(s2), s[(a + 3) * ss] = _mm512_reduce_add_ps(s3);
    }
    for (; a < rows; a++)
        s[a * ss] = dot_avx512(q + a * d, k, d);
}

AVX512 static void axpys_avx512(float *acc, int64_t rows, int64_t d, const float *v, const float *p, int64_t ps)
{
    int64_t a = 0;
    for (; a + 4 <= rows; a += 4) {
        float *y0 = acc + a * d, *y1 = y0 + d, *y2 = y1 + d, *y3 = y2 + d;
        __m512 p0 = _mm512_set1_ps(p[a * ps]), p1 = _mm512_set1_ps(p[(a + 1) * ps]);
        __m512 p2 = _mm512_set1_ps(p[(a + 2) * ps]), p3 = _mm512_set1_ps(p[(a + 3) * ps]);
        for (int64_t c = 0; c < d; c += 16) {
            __mmask16 m = tail16(d - c);
            __m512 vv = _mm512_maskz_loadu_ps(m, v + c);
            _mm512_mask_storeu_ps(y0 + c, m, _mm512_fmadd_ps(p0, vv, _mm512_maskz_loadu_ps(m, y0 + c)));
            _mm512_mask_storeu_ps(y1 + c, m, _mm512_fmadd_ps(p1, vv, _mm512_maskz_loadu_ps(m, y1 + c)));
            _mm512_mask_storeu_ps(y2 + c, m, _mm512_fmadd_ps(p2, vv, _mm512_maskz_loadu_ps(m, y2 + c)));
            _mm512_mask_storeu_ps(y3 + c, m, _mm512_fmadd_ps(p3, vv, _mm512_maskz_loadu_ps(m, y3 + c)));
        }
    }
    for (; a < rows; a++)
        if (p[a * ps] != 0.f)
            axpy_avx512(acc + a * d, v, d, p[a * ps]);
}

/* P·V over nc gathered value rows, register-blocked as pv_avx2: two rows ×
 * 64 dims of the accumulator in registers while the keys stream by. */
AVX512 static void pv_avx512(float *acc, int64_t rows, int64_t d, const float *const *v, const float *p, int64_t ps,
                             int64_t nc)
{
    if (d % 64 != 0) {
        for (int64_t j = 0; j < nc; j++)
            axpys_avx512(acc, rows, d, v[j], p + j, ps);
        return;
    }
    int64_t a = 0;
    for (; a + 2 <= rows; a += 2) {
        const float *p0 = p + a * ps, *p1 = p0 + ps;
        for (int64_t c = 0; c < d; c += 64) {
            float *y0 = acc + a * d + c, *y1 = y0 + d;
            __m512 x0 = _mm512_loadu_ps(y0), x1 = _mm512_loadu_ps(y0 + 16), x2 = _mm512_loadu_ps(y0 + 32),
                   x3 = _mm512_loadu_ps(y0 + 48);
            __m512 z0 = _mm512_loadu_ps(y1), z1 = _mm512_loadu_ps(y1 + 16), z2 = _mm512_loadu_ps(y1 + 32),
                   z3 = _mm512_loadu_ps(y1 + 48);
            for (int64_t j = 0; j < nc; j++) {
                const float *vr = v[j] + c;
                __m512 v0 = _mm512_loadu_ps(vr), v1 = _mm512_loadu_ps(vr + 16), v2 = _mm512_loadu_ps(vr + 32),
                       v3 = _mm512_loadu_ps(vr + 48);
                __m512 b0 = _mm512_set1_ps(p0[j]), b1 = _mm512_set1_ps(p1[j]);
                x0 = _mm512_fmadd_ps(b0, v0, x0), x1 = _mm512_fmadd_ps(b0, v1, x1);
                x2 = _mm512_fmadd_ps(b0, v2, x2), x3 = _mm512_fmadd_ps(b0, v3, x3);
                z0 = _mm512_fmadd_ps(b1, v0, z0), z1 = _mm512_fmadd_ps(b1, v1, z1);
                z2 = _mm512_fmadd_ps(b1, v2, z2), z3 = _mm512_fmadd_ps(b1, v3, z3);
            }
            _mm512_storeu_ps(y0, x0), _mm512_storeu_ps(y0 + 16, x1), _mm512_storeu_ps(y0 + 32, x2);
            _mm512_storeu_ps(y0 + 48, x3);
            _mm512_storeu_ps(y1, z0), _mm512_storeu_ps(y1 + 16, z1), _mm512_storeu_ps(y1 + 32, z2);
            _mm512_storeu_ps(y1 + 48, z3);
        }
    }
    for (; a < rows; a++)
        for (int64_t c = 0; c < d; c += 64) {
            float *y0 = acc + a * d + c;
            __m512 x0 = _mm512_loadu_ps(y0), x1 = _mm512_loadu_ps(y0 + 16), x2 = _mm512_loadu_ps(y0 + 32),
                   x3 = _mm512_loadu_ps(y0 + 48);
            for (int64_t j = 0; j < nc; j++) {
                const float *vr = v[j] + c;
                __m512 b0 = _mm512_set1_ps(p[a * ps + j]);
                x0 = _mm512_fmadd_ps(b0, _mm512_loadu_ps(vr), x0);
                x1 = _mm512_fmadd_ps(b0, _mm512_loadu_ps(vr + 16), x1);
                x2 = _mm512_fmadd_ps(b0, _mm512_loadu_ps(vr + 32), x2);
                x3 = _mm512_fmadd_ps(b0, _mm512_loadu_ps(vr + 48), x3);
            }
            _mm512_storeu_ps(y0, x0), _mm512_storeu_ps(y0 + 16, x1), _mm512_storeu_ps(y0 + 32, x2);
            _mm512_storeu_ps(y0 + 48, x3);
        }
}

static int have_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

static int have_avx512(void)
{
    return have_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
#endif

/* ---- dispatch ---- */

static const char *const ISA_NAMES[] = {"auto", "portable", "avx2", "avx512"};

int sl__cpu_isa_parse(const char *name)
{
    for (int i = 0; i < (int)(sizeof ISA_NAMES / sizeof *ISA_NAMES); i++)
        if (name && strcmp(name, ISA_NAMES[i]) == 0)
            return i;
    return -1;
}

const char *sl__cpu_isa_name(int isa) { return isa >= 0 && isa <= SL__ISA_AVX512 ? ISA_NAMES[isa] : "?"; }

int sl__cpu_isa_best(void)
{
#ifdef HAVE_AVX2_PATH
    if (have_avx512())
        return SL__ISA_AVX512;
    if (have_avx2())
        return SL__ISA_AVX2;
#endif
    return SL__ISA_PORTABLE;
}

int sl__cpu_isa_of(const sl_ctx *ctx)
{
    int best = sl__cpu_isa_best(), want = ctx ? ctx->cpu_isa : SL__ISA_AUTO;
    if (want == SL__ISA_AUTO) {
        const char *env = getenv("SL_CPU_ISA");
        want = env && *env ? sl__cpu_isa_parse(env) : SL__ISA_AUTO;
        if (want < 0)
            want = SL__ISA_AUTO;
    }
    return want == SL__ISA_AUTO || want > best ? best : want;
}

sl_status sl_ctx_set_cpu_isa(sl_ctx *ctx, const char *name)
{
    int isa = sl__cpu_isa_parse(name);
    if (isa < 0)
        return sl_ctx_fail(ctx, SL_EARG, "cpu isa: expected auto, portable, avx2 or avx512, found '%s'",
                           name ? name : "(null)");
    if (isa != SL__ISA_AUTO && isa > sl__cpu_isa_best())
        return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "cpu isa: this CPU (or build) runs at most %s, found '%s'",
                           sl__cpu_isa_name(sl__cpu_isa_best()), name);
    ctx->cpu_isa = isa;
    return SL_OK;
}

const char *sl_ctx_cpu_isa(const sl_ctx *ctx) { return sl__cpu_isa_name(sl__cpu_isa_of(ctx)); }

sl__cpu_rowops sl__cpu_rowops_for(const sl_ctx *ctx)
{
    int isa = sl__cpu_isa_of(ctx);
    (void)isa;
#ifdef HAVE_AVX2_PATH
    if (isa == SL__ISA_AVX512)
        return (sl__cpu_rowops){exp_row_avx512, max_avx512, scale_avx512, mask_bits_avx512, "avx512"};
    if (isa == SL__ISA_AVX2)
        return (sl__cpu_rowops){exp_row_avx2, max_avx2, scale_avx2, mask_bits_avx2, "avx2"};
#endif
    return (sl__cpu_rowops){exp_row_plain, max_plain, scale_plain, mask_bits_plain, "portable"};
}

sl__cpu_rowops sl__cpu_rowops_get(void) { return sl__cpu_rowops_for(NULL); }

sl__cpu_vecops sl__cpu_vecops_for(const sl_ctx *ctx)
{
    int isa = sl__cpu_isa_of(ctx);
    (void)isa;
#ifdef HAVE_AVX2_PATH
    if (isa == SL__ISA_AVX512)
        return (sl__cpu_vecops){dot_avx512, axpy_avx512, dots_avx512, axpys_avx512, pv_avx512, "avx512"};
    if (isa == SL__ISA_AVX2)
        return (sl__cpu_vecops){dot_avx2, axpy_avx2, dots_avx2, axpys_avx2, pv_avx2, "avx2"};
#endif
    return (sl__cpu_vecops){dot_plain, axpy_plain, dots_plain, axpys_plain, pv_plain, "portable"};
}

sl__cpu_vecops sl__cpu_vecops_get(void) { return sl__cpu_vecops_for(NULL); }
