/* family.h — the hooks of an op family. Every op belongs to the family named
 * by its name's prefix (ops.def); core/op_<family>.c defines
 * sl__family_<family> with the checks, shape rules and costs of its ops, and
 * op.c's dispatcher calls them without knowing any op. */
#ifndef SL_FAMILY_H
#define SL_FAMILY_H

#include "internal.h"

/* How the dispatcher checks a float input after converting it to f32. */
typedef enum sl__input_policy {
    SL__IN_FINITE = 0,  /* NaN and infinities are an error */
    SL__IN_NEG_INF,     /* -inf allowed (a fully masked row's log-sum-exp), NaN and +inf are errors */
    SL__IN_ANY_INF,     /* infinities allowed, NaN is an error */
    SL__IN_UNCHECKED,   /* not scanned: the op checks what it reads (check_outputs) */
} sl__input_policy;

typedef struct sl__family {
    const char *name;
    /* Parameters beyond their ranges, input dtypes and shapes; writes the
     * output shapes (out_dtype comes preset to f32). Inputs as the caller gave
     * them (any float dtype, maybe strided). */
    sl_status (*infer)(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                       int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[]);
    /* Contents of the normalised inputs (contiguous f32 / i32 / u8): index
     * ranges, list order, value ranges. NULL: nothing to check. */
    sl_status (*check_contents)(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in);
    /* The outputs a kernel wrote, for inputs left unchecked. NULL: none. */
    sl_status (*check_outputs)(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *out);
    /* Floating-point operations of a call with these (validated) inputs. */
    double (*flops)(const sl_op_info *info, const void *params, const sl_tensor *in);
    /* The policy of float input i; NULL: SL__IN_NEG_INF for inputs whose name
     * holds "lse", SL__IN_FINITE for the rest. */
    sl__input_policy (*input_policy)(const sl_op_info *info, int i);
} sl__family;

/* sl__family_attn, sl__family_score, ... one per family of ops.def. */
#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc) extern const sl__family sl__family_##family;
#include "ops.def"
#undef SL_OP

#endif
