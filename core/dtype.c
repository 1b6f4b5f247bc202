/* dtype.c — dtype sizes and names, status names, and the f16/bf16 <-> f32
 * conversions (round to nearest even, bit-exact, no type punning). */
#include "sparselab.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[SL_DTYPE__COUNT] = {
    [SL_F32] = {"f32", 4}, [SL_F16] = {"f16", 2}, [SL_BF16] = {"bf16", 2},
    [SL_F64] = {"f64", 8}, [SL_I32] = {"i32", 4}, [SL_U8] = {"u8", 1},
};

size_t sl_dtype_size(sl_dtype t)
{
    return (unsigned)t < SL_DTYPE__COUNT ? dtype_table[t].size : 0;
}

const char *sl_dtype_name(sl_dtype t)
{
    return (unsigned)t < SL_DTYPE__COUNT ? dtype_table[t].name : "unknown";
}

int sl_dtype_from_name(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < SL_DTYPE__COUNT; i++)
        if (strcmp(name, dtype_table[i].name) == 0)
            return i;
    return -1;
}

const char *sl_status_name(sl_status s)
{
    static const char *const names[] = {
        [SL_OK] = "SL_OK",
        [SL_ENOMEM] = "SL_ENOMEM",
        [SL_EDEVMEM] = "SL_EDEVMEM",
        [SL_EARG] = "SL_EARG",
        [SL_ESHAPE] = "SL_ESHAPE",
        [SL_EUNSUPPORTED] = "SL_EUNSUPPORTED",
        [SL_EDEVICE] = "SL_EDEVICE",
        [SL_EIO] = "SL_EIO",
        [SL_EFORMAT] = "SL_EFORMAT",
        [SL_ESTORE] = "SL_ESTORE",
        [SL_EINTERRUPT] = "SL_EINTERRUPT",
        [SL_EINTERNAL] = "SL_EINTERNAL",
    };
    _Static_assert(sizeof names / sizeof names[0] == SL_EINTERNAL + 1, "a status has no name");
    if ((unsigned)s < sizeof names / sizeof names[0])
        return names[s];
    return "SL_UNKNOWN";
}

/* ---- bit casts ----------------------------------------------------------- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- f16 ------------------------------------------------------------------ */

float sl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* Zero or subnormal: mant * 2^-24 is exact in f32. */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    return f32_from_bits(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

uint16_t sl_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;

    if (exp == 0xff) {
        if (mant == 0)
            return sign | 0x7c00u;
        /* NaN: keep the top payload bits and force the quiet bit so the
         * result can never turn into an infinity. */
        return (uint16_t)(sign | 0x7e00u | (mant >> 13));
    }
    int e = (int)exp - 127;
    if (e > 15)
        return sign | 0x7c00u;
    if (e >= -14) {
        /* Normal range. A carry out of the mantissa bumps the exponent,
         * which is the right answer, up to 65520 rounding to infinity. */
        uint32_t r = ((uint32_t)(e + 15) << 10) | (mant >> 13);
        uint32_t rem = mant & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    if (e < -25)
        return sign;
    /* Subnormal: the value is M * 2^(e-23) with the implicit bit, and the
     * result counts units of 2^-24, so shift M right by -(e+1) (14..24). */
    uint32_t m = mant | 0x800000u;
    int s = -(e + 1);
    uint32_t r = m >> s;
    uint32_t rem = m & ((1u << s) - 1u);
    uint32_t half = 1u << (s - 1);
    if (rem > half || (rem == half && (r & 1u)))
        r++;
    return (uint16_t)(sign | r);
}

/* ---- bf16 ----------------------------------------------------------------- */

float sl_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t sl_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu))
        return (uint16_t)((x >> 16) | 0x0040u);
    /* Round to nearest even on the low 16 bits; overflow reaches infinity. */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
