/* ref/backend.c — the reference backend's kernel table, generated from
 * ops.def: naive, float64 accumulation, every op. */
#include "ref.h"

static int ref_available(void) { return 1; }
static const char *ref_status(void) { return ""; }

static const sl__kernel_fn ref_kernels[SL_OP__COUNT] = {
#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc) [SL_OP_##E] = sl__ref_##fn,
#include "../ops.def"
#undef SL_OP
};

typedef size_t (*scratch_fn)(sl_op op, const void *params, const sl_tensor *in, int n_threads);
static const scratch_fn ref_scratch_of[SL_OP__COUNT] = {
#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc) [SL_OP_##E] = sl__ref_##family##_scratch,
#include "../ops.def"
#undef SL_OP
};

static size_t ref_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    return ref_scratch_of[op](op, params, in, n_threads);
}

const sl__backend sl__backend_ref = {"ref", ref_available, ref_status, ref_kernels, ref_scratch, NULL};
