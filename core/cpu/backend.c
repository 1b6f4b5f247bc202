/* cpu/backend.c — the cpu backend's kernel table, generated from ops.def.
 * Kernels call nothing here (their parallel-for is cpu/parallel.c). */
#include "cpu.h"

static int cpu_available(void) { return 1; }
static const char *cpu_status(void) { return ""; }

static const sl__kernel_fn cpu_kernels[SL_OP__COUNT] = {
#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc) [SL_OP_##E] = sl__cpu_##fn,
#include "../ops.def"
#undef SL_OP
};

typedef size_t (*scratch_fn)(sl_op op, const void *params, const sl_tensor *in, int n_threads);
static const scratch_fn cpu_scratch_of[SL_OP__COUNT] = {
#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc) [SL_OP_##E] = sl__cpu_##family##_scratch,
#include "../ops.def"
#undef SL_OP
};

static size_t cpu_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    return cpu_scratch_of[op](op, params, in, n_threads);
}

const sl__backend sl__backend_cpu = {"cpu", cpu_available, cpu_status, cpu_kernels, cpu_scratch, NULL};
