/* internal.h — the types the core's files share and the public API does not
 * show: the context and buffer structs, the backend interface, kernel
 * arguments and attention geometry. Types and inline helpers only: every
 * function it would declare lives in the header of the file that defines it
 * (parallel.h, op_check.h, family.h, ...), so that includes show who depends
 * on whom (tests/tools/deps_check.lua). */
#ifndef SL_INTERNAL_H
#define SL_INTERNAL_H

#include "sparselab.h"

#include <math.h>

#define SL__ERRMSG_BYTES 512

struct sl_ctx {
    sl_alloc_fn alloc;
    void *alloc_ud;
    int n_threads;
    volatile int *interrupt;
    size_t live_allocs, live_bytes;
    sl_status last_status;
    int cpu_isa; /* the cpu kernels' instruction-set cap (cpu/rowops.h SL__ISA_*; 0 = auto) */
    int64_t input_scans; /* full input scans run by the op dispatcher (sl_ctx_input_scans) */
    char err[SL__ERRMSG_BYTES];
};

/* A remembered input scan of one contiguous view of a buffer (issue 20,
 * session 4): the op dispatcher's non-finite kinds and the score-range max
 * |x|, valid while the buffer's write version is the one recorded. */
typedef struct sl__scan_entry {
    const void *data;
    int64_t numel;
    uint64_t version;
    double max_abs;
    unsigned nf_kinds;
    int dtype;
    unsigned char have_nf, have_ma;
} sl__scan_entry;

enum { SL__SCAN_ENTRIES = 4 };

struct sl_buffer {
    sl_ctx *ctx;
    int refcount;
    size_t bytes;
    void *data;
    /* write version: bumped by every write into an existing buffer made
     * through the library (sl_tensor_wrote); scans are remembered only on
     * buffers marked by sl_tensor_cache_checks, whose writers all bump it */
    uint64_t version;
    int cache_scans;
    unsigned scan_next;
    sl__scan_entry scan[SL__SCAN_ENTRIES];
};

/* What a kernel gets. Inputs are contiguous; float inputs are f32 (q, k and
 * v may be f16 or bf16 where the backend's native_dtypes says so), index
 * inputs i32, bit inputs u8. Outputs are allocated (contiguous, f32 unless
 * the op says otherwise) and the kernel fills every element. scratch holds
 * scratch_bytes bytes from the backend's scratch_bytes() for this call. */
typedef struct sl__kargs {
    sl_ctx *ctx;
    sl_op op;
    const void *params;
    const sl_tensor *in;
    sl_tensor *out;
    void *scratch;
    size_t scratch_bytes;
} sl__kargs;

typedef sl_status (*sl__kernel_fn)(const sl__kargs *a);

typedef struct sl__backend {
    const char *name;
    int (*available)(void);
    const char *(*status)(void);
    /* SL_OP__COUNT entries; NULL where the backend has no kernel. */
    const sl__kernel_fn *kernels;
    /* Scratch a call needs (0 when none); NULL means none for every op. */
    size_t (*scratch_bytes)(sl_op op, const void *params, const sl_tensor *in, int n_threads);
    /* SL_OP__COUNT entries or NULL: per op, the float dtypes (bits 1 << SL_F16,
     * 1 << SL_BF16) its kernel reads natively for the inputs named q, k and v;
     * the dispatcher hands such inputs over as they are (contiguous), and
     * converts every other float input to f32. 0 or NULL: f32 only. */
    const unsigned *native_dtypes;
} sl__backend;

extern const sl__backend sl__backend_ref;
extern const sl__backend sl__backend_cpu;
extern const sl__backend sl__backend_cuda;

/* Attention geometry shared by validation and kernels. */
typedef struct sl__attn_dims {
    int64_t hq, hkv, nq, nk, d;
    int64_t group;        /* hq / hkv */
    int64_t offset;       /* nk - nq: query row r is at position offset + r */
    double scale;
} sl__attn_dims;

/* The geometry of q [Hq, Nq, D] and k [Hkv, Nk, D]; scale <= 0 means 1/sqrt(D). */
static inline sl__attn_dims sl__attn_dims_of(const sl_tensor *q, const sl_tensor *k, double scale)
{
    sl__attn_dims d;
    d.hq = q->shape[0];
    d.nq = q->shape[1];
    d.d = q->shape[2];
    d.hkv = k->shape[0];
    d.nk = k->shape[1];
    d.group = d.hkv > 0 ? d.hq / d.hkv : 1;
    d.offset = d.nk - d.nq;
    d.scale = scale > 0 ? scale : 1.0 / sqrt((double)(d.d > 0 ? d.d : 1));
    return d;
}

/* ---- issue 20, session 3 ----
 * The kinds of non-finite values among n f32 (bits SL__NF_*), vectorised,
 * one thread (tensor.c; op.c splits large inputs over the context's threads). */
enum { SL__NF_NAN = 1u, SL__NF_PINF = 2u, SL__NF_NINF = 4u };
unsigned sl__f32_nonfinite_run(const float *x, int64_t n);

/* ---- issue 20, session 4: remembered input scans (tensor.c) ----
 * what: SL__SCAN_NF (non-finite kinds, in *kinds) or SL__SCAN_MA (max |x|,
 * in *m). get returns 1 with the value when t is a contiguous view of a
 * buffer marked by sl_tensor_cache_checks whose version has not moved since
 * put recorded it for the same view (data, numel, dtype); put records one. */
enum { SL__SCAN_NF = 1, SL__SCAN_MA = 2 };
int sl__scan_get(const sl_tensor *t, int what, unsigned *kinds, double *m);
void sl__scan_put(const sl_tensor *t, int what, unsigned kinds, double m);

#endif
