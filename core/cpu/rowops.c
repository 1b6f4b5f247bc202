/* cpu/rowops.c — the row operations of the online softmax (max, exp and sum,
 * scale) in AVX2+FMA with a portable fallback, chosen once per call from the
 * CPU's features. The exp is a degree-6 polynomial after range reduction
 * (relative error below 3e-7); arguments below float range give exactly 0. */
#include "cpu.h"

#include <math.h>
#include <string.h>

#define LOG2E 1.44269504088896341f

static const float EXP_C[7] = {1.0f, 6.9314718e-1f, 2.4022651e-1f, 5.5504109e-2f, 9.6181291e-3f, 1.3333558e-3f,
                               1.5403530e-4f};

static float exp_scalar(float x)
{
    float t = x * LOG2E;
    if (t < -125.f)
        return 0.f;
    if (t > 127.f)
        t = 127.f;
    float r = nearbyintf(t), f = t - r;
    float p = EXP_C[6];
    for (int i = 5; i >= 0; i--)
        p = p * f + EXP_C[i];
    int32_t bits = ((int32_t)r + 127) << 23;
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

static int use_avx2(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

sl__cpu_rowops sl__cpu_rowops_get(void)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx2())
        return (sl__cpu_rowops){exp_row_avx2, max_avx2, scale_avx2};
#endif
    return (sl__cpu_rowops){exp_row_plain, max_plain, scale_plain};
}
