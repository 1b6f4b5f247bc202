/* sparselab.h — the public C API of the sparselab core library.
 *
 * Conventions (written once, here):
 *   - Dimensions are listed outermost first. Attention tensors are
 *     [heads, tokens, head_dim]: Q [Hq, Nq, D], K and V [Hkv, Nk, D] with
 *     Hq % Hkv == 0 (grouped-query attention: query head h reads kv head
 *     h / (Hq / Hkv)). A batch is a loop in the caller.
 *   - Decode is Nq < Nk: query row r sits at position Nk - Nq + r.
 *   - Strides are in elements. Kernels see contiguous row-major data; sl_op_run
 *     makes contiguous f32 copies of inputs that are not.
 *   - Every fallible call returns sl_status and leaves a one-line message in
 *     the context that starts with the function or op name and says what was
 *     expected and what was found (sl_ctx_error()). Nothing a caller can do
 *     aborts the process.
 *   - The caller owns outputs. Tensors are small values over refcounted
 *     buffers: sl_tensor_release() drops one reference; releasing a zeroed
 *     tensor is a no-op. A context must outlive every buffer made through it.
 *   - The core never includes lua.h, uv.h or sqlite3.h.
 */
#ifndef SPARSELAB_H
#define SPARSELAB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SL_VERSION "0.1.0"
#define SL_MAX_DIMS 4

/* ---- status codes ---------------------------------------------------- */

typedef enum sl_status {
    SL_OK = 0,
    SL_ENOMEM,        /* host allocation failed */
    SL_EDEVMEM,       /* device allocation failed */
    SL_EARG,          /* a parameter is out of range or unknown */
    SL_ESHAPE,        /* shapes or dtypes do not fit together */
    SL_EUNSUPPORTED,  /* the backend does not implement this op/case */
    SL_EDEVICE,       /* the device failed or is absent */
    SL_EIO,           /* a file could not be opened, read or written */
    SL_EFORMAT,       /* a file is not what it claims (truncated, bad header, NaN) */
    SL_ESTORE,        /* the results database failed */
    SL_EINTERRUPT,    /* the run was interrupted (Ctrl-C) */
    SL_EINTERNAL      /* a bug in sparselab */
} sl_status;

/* Name of a status ("SL_ESHAPE"); never NULL. */
const char *sl_status_name(sl_status s);

/* ---- dtypes ------------------------------------------------------------ */

typedef enum sl_dtype { SL_F32 = 0, SL_F16, SL_BF16, SL_F64, SL_I32, SL_U8, SL_DTYPE__COUNT } sl_dtype;

size_t sl_dtype_size(sl_dtype t);
const char *sl_dtype_name(sl_dtype t);        /* "f32", "f16", ... */
int sl_dtype_from_name(const char *name);     /* -1 when unknown */
float sl_f16_to_f32(uint16_t h);
uint16_t sl_f32_to_f16(float f);              /* round to nearest even */
float sl_bf16_to_f32(uint16_t h);
uint16_t sl_f32_to_bf16(float f);             /* round to nearest even */

/* ---- context ----------------------------------------------------------- */

/* Allocator hook, the lua_Alloc contract: new_bytes == 0 frees ptr and returns
 * NULL; otherwise (re)allocates and returns NULL on failure. */
typedef void *(*sl_alloc_fn)(void *ud, void *ptr, size_t old_bytes, size_t new_bytes);

typedef struct sl_ctx_options {
    sl_alloc_fn alloc;   /* NULL: malloc/realloc/free */
    void *alloc_ud;
    int n_threads;       /* <= 0: the CPUs this process may use (online CPUs, the affinity mask,
                          * at most SLURM_CPUS_PER_TASK where that is set) */
} sl_ctx_options;

typedef struct sl_ctx sl_ctx;

/* Makes a context; opt may be NULL. Returns NULL only when the allocator fails. */
sl_ctx *sl_ctx_new(const sl_ctx_options *opt);
/* Frees the context; NULL is a no-op. All its buffers must be released first. */
void sl_ctx_free(sl_ctx *ctx);
/* The message of the last failure ("" when none). Valid until the next call. */
const char *sl_ctx_error(const sl_ctx *ctx);
void sl_ctx_clear_error(sl_ctx *ctx);
int sl_ctx_threads(const sl_ctx *ctx);
/* Sets the cpu backend's thread count for the ops run after it: n >= 1 that many
 * (at most 4096), n <= 0 the default of sl_ctx_new (the CPUs this process may use). */
void sl_ctx_set_threads(sl_ctx *ctx, int n);
/* Long-running ops poll *flag and stop with SL_EINTERRUPT when it is non-zero.
 * The flag belongs to the caller (a signal handler usually sets it). */
void sl_ctx_set_interrupt(sl_ctx *ctx, volatile int *flag);
int sl_ctx_interrupted(const sl_ctx *ctx);
/* The instruction set of the cpu backend's row operations (issue 20): "auto"
 * (the default: the best this CPU runs, capped by the environment variable
 * SL_CPU_ISA when set), or "avx512", "avx2", "portable" to force one. Fails
 * (SL_EARG) on an unknown name, (SL_EUNSUPPORTED) on a set this CPU or build does not run. */
sl_status sl_ctx_set_cpu_isa(sl_ctx *ctx, const char *name);
/* The set the cpu kernels run under ctx now: "avx512", "avx2" or "portable". */
const char *sl_ctx_cpu_isa(const sl_ctx *ctx);
/* Live allocations and bytes made through this context (leak checks). */
size_t sl_ctx_live_allocs(const sl_ctx *ctx);
size_t sl_ctx_live_bytes(const sl_ctx *ctx);
/* Allocates through the context's hook; on failure sets SL_ENOMEM and returns NULL. */
void *sl_ctx_alloc(sl_ctx *ctx, size_t bytes);
void sl_ctx_dealloc(sl_ctx *ctx, void *ptr, size_t bytes);
/* Records a failure: formats the message, stores it and returns s. */
sl_status sl_ctx_fail(sl_ctx *ctx, sl_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- buffers and tensors ----------------------------------------------- */

typedef struct sl_buffer sl_buffer;   /* refcounted host memory */

typedef struct sl_tensor {
    sl_buffer *buf;                   /* NULL for an empty (released) tensor */
    void *data;                       /* first element */
    sl_dtype dtype;
    int ndim;                         /* 0..SL_MAX_DIMS; 0 means a scalar */
    int64_t shape[SL_MAX_DIMS];
    int64_t stride[SL_MAX_DIMS];      /* in elements */
} sl_tensor;

/* New contiguous tensor, contents uninitialised (sl_tensor_zeros: zeroed). */
sl_status sl_tensor_new(sl_ctx *ctx, sl_dtype dtype, int ndim, const int64_t *shape, sl_tensor *out);
sl_status sl_tensor_zeros(sl_ctx *ctx, sl_dtype dtype, int ndim, const int64_t *shape, sl_tensor *out);
/* Another reference to the same buffer (a value copy with refcount + 1). */
sl_tensor sl_tensor_retain(const sl_tensor *t);
/* Drops one reference and zeroes *t; frees the buffer at zero. NULL or empty: no-op. */
void sl_tensor_release(sl_tensor *t);
int64_t sl_tensor_numel(const sl_tensor *t);
size_t sl_tensor_nbytes(const sl_tensor *t);
int sl_tensor_is_contiguous(const sl_tensor *t);
/* A view of [start, start+len) along dim (shares the buffer). */
sl_status sl_tensor_narrow(sl_ctx *ctx, const sl_tensor *t, int dim, int64_t start, int64_t len, sl_tensor *out);
/* A contiguous copy converted to dtype (float dtypes convert among themselves,
 * integer dtypes among themselves). */
sl_status sl_tensor_convert(sl_ctx *ctx, const sl_tensor *t, sl_dtype dtype, sl_tensor *out);
/* Element access as double through strides (slow; tests and printing). */
double sl_tensor_get(const sl_tensor *t, const int64_t *idx);
void sl_tensor_set(sl_tensor *t, const int64_t *idx, double v);
/* SL_EARG naming `what` when a float tensor holds NaN, or an infinity unless
 * allow_inf. (File readers report bad contents as SL_EFORMAT themselves.) */
sl_status sl_tensor_check_finite(sl_ctx *ctx, const sl_tensor *t, const char *what, int allow_inf);
/* "f32[8, 1000, 64]" into buf. */
void sl_tensor_describe(const sl_tensor *t, char *buf, size_t n);

/* ---- write versions and remembered input checks (issue 20, session 4) ----
 * Every op call scans its float inputs for NaN / infinities, and attention's
 * q and k for the score range. sl_tensor_cache_checks marks t's buffer so
 * that these scans are remembered per contiguous view and skipped while the
 * buffer is unchanged. From then on every write into the buffer's memory must
 * be followed by sl_tensor_wrote (sl_tensor_set and sl_tensor_fill_normal do
 * it; the Lua bindings mark the tensors they create, whose only writer is
 * t:set). Unmarked buffers (the default) are scanned on every call.
 * sl_tensor_version: the buffer's write version (0 for an empty tensor).
 * sl_ctx_input_scans: the scans the op dispatcher has run under ctx (tests). */
void sl_tensor_cache_checks(sl_tensor *t);
void sl_tensor_wrote(sl_tensor *t);
uint64_t sl_tensor_version(const sl_tensor *t);
int64_t sl_ctx_input_scans(const sl_ctx *ctx);

/* Seeded random numbers without global state (xoshiro256**). */
typedef struct sl_rng { uint64_t s[4]; } sl_rng;
void sl_rng_seed(sl_rng *r, uint64_t seed);
uint64_t sl_rng_next(sl_rng *r);
double sl_rng_uniform(sl_rng *r);            /* [0, 1) */
double sl_rng_normal(sl_rng *r);             /* N(0, 1) */
/* Fills a float tensor with N(0, std^2) draws. */
sl_status sl_tensor_fill_normal(sl_ctx *ctx, sl_tensor *t, sl_rng *r, double std);

/* ---- ops ---------------------------------------------------------------- */

/* The most inputs any op takes (ops.def). */
#define SL_OP_MAX_INPUTS 16

typedef enum sl_op {
#define SL_OP(E, name, family, fn, group, n_in, n_out, ins, outs, doc) SL_OP_##E,
#include "ops.def"
#undef SL_OP
    SL_OP__COUNT
} sl_op;

/* Parameter structs, one per group of params.def: sl_attn_params, ... */
#define SL__PFIELD_INT int64_t
#define SL__PFIELD_BOOL int64_t
#define SL__PFIELD_F64 double
#define SL__PFIELD(group, field, kind, def, lo, hi, doc) SL__PFIELD_##kind field;
#define SL__PSTRUCT(group) typedef struct sl_##group##_params { SL_PARAMS_##group(SL__PFIELD) } sl_##group##_params;
#include "params.def"
SL_PARAM_GROUPS(SL__PSTRUCT)
#undef SL__PSTRUCT

typedef enum sl_param_kind { SL_PK_INT, SL_PK_BOOL, SL_PK_F64 } sl_param_kind;

typedef struct sl_param_field {
    const char *name;
    sl_param_kind kind;
    size_t offset;       /* in the op's parameter struct */
    double def, lo, hi;  /* default and inclusive range */
    const char *doc;
} sl_param_field;

typedef struct sl_op_info {
    sl_op op;
    const char *name;       /* "attn.dense" */
    const char *family;     /* "attn": the prefix of name (core/op_<family>.c) */
    const char *group;      /* parameter group ("attn") */
    int n_in, n_out;
    const char *inputs;     /* "q,k,v" */
    const char *outputs;    /* "o,lse" */
    const char *doc;
    const sl_param_field *fields;
    int n_fields;
    size_t params_bytes;
} sl_op_info;

/* Info of an op; NULL when op is out of range. */
const sl_op_info *sl_op_info_get(sl_op op);
/* The op called name, or SL_OP__COUNT when there is none. */
sl_op sl_op_find(const char *name);
/* Writes every field's default into params (params_bytes bytes). */
void sl_op_params_default(sl_op op, void *params);
/* Sets one field by name; SL_EARG when unknown or out of range. */
sl_status sl_op_params_set(sl_ctx *ctx, sl_op op, void *params, const char *field, double value);
double sl_op_params_get(sl_op op, const void *params, const sl_param_field *f);

/* ---- backends ------------------------------------------------------------ */

typedef enum sl_backend_id { SL_BACKEND_REF = 0, SL_BACKEND_CPU, SL_BACKEND_CUDA, SL_BACKEND__COUNT } sl_backend_id;

const char *sl_backend_name(sl_backend_id b);         /* "ref", "cpu", "cuda" */
int sl_backend_from_name(const char *name);           /* -1 when unknown */
/* 1 when the backend was built in and its device answers (cuda without a GPU: 0). */
int sl_backend_available(sl_backend_id b);
/* Why a backend is unavailable ("built without CUDA=1", "no CUDA device"), or "". */
const char *sl_backend_status(sl_backend_id b);
/* 1 when the backend has a kernel for op. */
int sl_backend_supports(sl_backend_id b, sl_op op);
/* The float dtypes the backend's kernel for op reads natively for q, k, v,
 * as bits 1 << dtype (f32 always; others are converted to f32 first). */
unsigned sl_backend_native_dtypes(sl_backend_id b, sl_op op);

/* Runs an op. params points to the op's parameter struct (NULL: defaults).
 * in holds info->n_in tensors (at most SL_OP_MAX_INPUTS); an optional input
 * (named opt.* or state.* in info->inputs) may be an empty, zeroed tensor.
 * out receives info->n_out new tensors that the
 * caller releases. Validates shapes, dtypes and ranges first (SL_ESHAPE,
 * SL_EARG); inputs holding NaN give SL_EARG; then dispatches. On failure no
 * output is left allocated. */
sl_status sl_op_run(sl_ctx *ctx, sl_backend_id b, sl_op op, const void *params,
                    const sl_tensor *in, sl_tensor *out);
/* The checks sl_op_run makes before dispatching (parameters, shapes, dtypes,
 * index ranges, NaN), without running anything. */
sl_status sl_op_check(sl_ctx *ctx, sl_op op, const void *params, const sl_tensor *in);
/* Floating-point operations the op executes on these inputs (params NULL:
 * defaults); the inputs must pass sl_op_check (multiply and
 * add count as two; exponentials are not counted). 0 for metrics. */
double sl_op_flops(sl_op op, const void *params, const sl_tensor *in);

/* ---- op wrappers (contracts) -------------------------------------------- */

/* attn.dense: O[h,r,:] = softmax(scale · Q[h,r,:]·K[g,j,:]) · V[g,j,:] over keys j
 * (j <= Nk - Nq + r when causal), g = h / (Hq / Hkv). L[h,r] = log Σ_j exp(scale·q·k).
 * Inputs f32/f16/bf16 [Hq,Nq,D], [Hkv,Nk,D], [Hkv,Nk,D]; outputs f32 O [Hq,Nq,D], L [Hq,Nq].
 * A row with no visible key gets O = 0, L = -inf. Scores must stay within
 * float32: every attn op with a softmax (all but attn.token_sparse, whose
 * outputs are checked instead, attn.linear and attn.lse_merge) fails with
 * SL_EARG "<op>: scores overflow float32 (|q| up to ..., |k| up to ...)" when
 * scale·D·max|q|·max|k| (+ max|opt.bias|) exceeds FLT_MAX / 2, on every backend. */
sl_status sl_attn_dense(sl_ctx *ctx, sl_backend_id b, const sl_attn_params *p,
                        const sl_tensor *q, const sl_tensor *k, const sl_tensor *v,
                        sl_tensor *o, sl_tensor *lse);

/* attn.block_sparse: attn.dense restricted to the kept pairs of a block mask
 * (inputs q, k, v and the four arrays of an sl_mask, see below; params bq, bk
 * from the mask). No implicit causal mask: the mask is the whole rule.
 * pv_skip (SpargeAttn's PV skipping, 0 = off): for each row the kept key
 * blocks are visited in ascending order with a running max m (of the scaled
 * scores seen so far, this block included); a block whose own max score b
 * satisfies b < m - pv_skip (every probability in it below exp(-pv_skip)
 * times the running max's) keeps its exp-sum in L but its P·V is left out of
 * O. SpargeAttn takes the same test per warp of rows; we take it per row,
 * the finest grain. O is then no longer exactly normalised; L is exact. */

/* Index lists (the index form of a mask) as two tensors:
 *   idx.row_ptr  i32 [Hm, R + 1]  CSR offsets, global like the block mask's
 *                                 (head h's entries are row_ptr[h, r] .. row_ptr[h, r+1])
 *   idx.col      i32 [nnz]        key indices of each entry, sorted ascending, unique,
 *                                 each in [0, Nk) (positions in K)
 * An entry covers rows_per_entry = b query rows: entry r is rows [r·b, (r+1)·b)
 * clipped to Nq, so R = ceil(Nq / b) (b = 1: one list per row; b >= Nq: one
 * list per head). Hm is 1 or divides Hq: query head h reads list head
 * h / (Hq / Hm). The lists are the whole rule (no implicit causal mask).
 *
 * Optional inputs (an empty, zeroed sl_tensor leaves one out):
 *   opt.bias   float [Hb, Nq, Nk], Hb = 1 or Hq: added to the scaled score
 *              of (head, query row, key) before the softmax; finite values.
 *   state.o, state.lse  float [Hq, Nq, D] and [Hq, Nq] (rows of the output):
 *              continue from an earlier pass over other keys. The online
 *              softmax state (max m, sum l, accumulator acc) of a finished
 *              pass is, up to the choice of m, (m = L, l = 1, acc = O): so a
 *              pass started from (O1, L1) returns what lse_merge of (O1, L1)
 *              with this pass alone would, in one pass, and its own outputs
 *              (O, L) are the state for the next one. Both or neither;
 *              state.lse may hold -inf (nothing seen yet), never +inf.
 * attn.dense and attn.block_sparse keep their 3 and 7 inputs (callers hold
 * fixed arrays, sl_mask_inputs fills seven); the same math with the options
 * is attn.rows (all rows, causal limits) and attn.vs_mixed (empty index
 * lists).
 *
 * attn.token_sparse: inputs q, k, v, idx.row_ptr, idx.col, opt.bias,
 * state.o, state.lse; params rows_per_entry, scale. Row r of head h attends
 * the keys of its list entry. Outputs O [Hq, Nq, D], L [Hq, Nq]; an empty
 * list gives O = 0, L = -inf (or the state unchanged). K and V are checked
 * for NaN and infinities only in the rows the lists read (scanning a whole
 * decode cache would cost more than the gather): such a value gives SL_EARG
 * after the run, with no outputs. Query heads that share both their kv head
 * and their list head read each listed K/V row once between them.
 *
 * attn.vs_mixed (MInference's vertical-slash executor): inputs q, k, v, a
 * block mask (mask.row_ptr, mask.col_idx, mask.part, mask.bits as for
 * attn.block_sparse), index lists with one entry per mask query block
 * (rows_per_entry = bq), then opt.bias, state.o, state.lse; params bq, bk,
 * scale. Row i attends the union of the keys the block mask keeps for it and
 * the keys of its query block's list, in one online softmax; a listed key the
 * block mask already keeps for row i counts once (the gathered copy is
 * skipped). Empty lists give attn.block_sparse. Outputs as attn.dense.
 *
 * attn.rows: inputs q, k, v, rows i32 [Hr, R] (indices into q's rows, any
 * order, repeats allowed), limits i32 [Hr, R] (each in [0, Nk]), opt.bias
 * [Hb, Nq, Nk] (indexed by q's row), state.o [Hq, R, D], state.lse [Hq, R];
 * param scale. Hr is 1 or Hq. Output row r of head h is dense attention of
 * q[h, rows[h', r]] over keys [0, limits[h', r]), h' = h or 0: limit =
 * position + 1 is causal (position = Nk - Nq + row in decode). Outputs
 * O [Hq, R, D], L [Hq, R]; a limit of 0 gives O = 0, L = -inf.
 *
 * attn.lse_merge: inputs o1, lse1, o2, lse2 with o [..., D] and lse [...]
 * (the same leading shape; both pairs the same shapes; lse may hold -inf,
 * never +inf). L = log(e^L1 + e^L2), O = e^(L1-L)·O1 + e^(L2-L)·O2: two
 * attentions over disjoint key sets become the attention over their union.
 * -inf on both sides gives O = 0, L = -inf; -inf on one side gives the other
 * side exactly. No parameters.
 *
 * ---- corrections and executors of issue 5 (cards re_ttention, flashblock,
 * salad, psa_pyramid) ----
 * correct.reshape (Re-ttention): inputs o [H, N, D] and lse [H, N] of a
 * sparse pass, opt.ref_o [H, N, D] and opt.ref_lse [H, N] (dense, a refresh
 * step), opt.ratio [H, N] (finite, >= 0) and opt.residual [H, N, D] (the
 * state of the last refresh); params drift, use_ratio. Outputs O, ratio,
 * residual (the next state). Refresh (ref_o and ref_lse given): r = exp(lse -
 * ref_lse) (1 where ref_lse = -inf; 1 everywhere when use_ratio = 0),
 * residual = ref_o - r·o, O = ref_o, ratio = r. Sparse step (ratio given, no
 * ref): O = r·o + residual (r = 1 when use_ratio = 0; residual 0 when left
 * out), ratio = r + drift, residual passed on. One of the two is required.
 *
 * correct.cache_reuse (FlashBlock): inputs o, lse (a fresh partial
 * attention), cache_o, cache_lse (a cached partial over other keys, the same
 * shapes), opt.q and opt.cache_q [H, N, Dq] (this step's and the cached
 * step's queries); param tau. Row i reuses the cache when q and cache_q are
 * left out, or when ||q_i - cache_q_i|| <= tau·||cache_q_i||: its (O, L) is
 * the lse_merge of both parts; other rows keep (o, lse). Outputs O, L,
 * reused [H, N] (1 or 0).
 *
 * correct.linear_branch (SALAD): inputs o [H, N, D] (sparse branch), o_lin
 * [H, N, D] (linear branch), gate [1] or [H] (each in [0, 1]; one scalar per
 * head or shared), opt.proj [1 or H, D, D] (y = P·x; identity when left
 * out); param convex. O = o + g·P·o_lin, or with convex = 1
 * O = (1 - g)·o + g·P·o_lin.
 *
 * attn.linear: inputs q [Hq, Nq, D], k, v [Hkv, Nk, D] (GQA as attn.dense);
 * params causal, feature (0: phi(x) = elu(x) + 1, 1: relu(x)). Row r:
 * O = Σ_j phi(q)·phi(k_j) v_j / Σ_j phi(q)·phi(k_j) over j <= Nk - Nq + r
 * (all j when not causal); a zero denominator gives O = 0. No scale and no
 * log-sum-exp: the weights are not a softmax.
 *
 * attn.pooled_kv (PSA): inputs q, k, v and levels u8 [Hm, ceil(Nq/bq),
 * ceil(Nk/bk)] (Hm = 1 or a divisor of Hq), each 0 or a power of two <= bk;
 * params bq, bk, causal, scale. For query row r of head h in query block I
 * and key block J at level s > 0, the keys of J are split into groups of s
 * consecutive keys from the block's start (the last group may hold c < s);
 * a group contributes one key, the mean of its keys and values, with logit
 * scale·q·k_mean + log(c) (it stands for c keys). With causal, a group is
 * visible when its last key is <= Nk - Nq + r (level 1 is then exact
 * causal attention; a diagonal block at level > 1 loses its partial
 * groups). One online softmax over every visible group; outputs as
 * attn.dense (a row with none: O = 0, L = -inf). Level 0 skips the block. */

/* ---- corrections (correct.*) --------------------------------------------
 * Stages applied to a sparse method's output to bring it closer to dense
 * (DESIGN §4; Lua: sl.correct, lua/sparselab/corrections/).
 *
 * correct.delta (Delta Attention, card delta_attention): inputs o_sparse
 * [H, N, D] and lse_sparse [H, N] (the sparse output A* and its L), o_rows
 * [H, R, D] and lse_rows [H, R] (dense attention of the sampled rows, e.g.
 * from attn.rows with causal limits); params gamma, tail, smooth, mode.
 * Layout (sl_correct_delta_layout): n_tail = (N mod gamma) + max(tail,
 * gamma), clamped to N; s_p = N - n_tail; groups g = 0 .. G-1 with
 * G = ceil(s_p / gamma), group g = rows [g·gamma, min((g+1)·gamma, s_p)),
 * sampled at its first row. o_rows holds, in this order, rows 0, gamma, ...,
 * (G-1)·gamma, then the tail rows s_p .. N-1, so R = G + n_tail.
 * mode 0 (delta): Δ_g = A[g·gamma] - A*[g·gamma]; O[i] = A*[i] + Δ_{i/gamma}
 * for i < s_p (smooth: Δ = (1-r)·Δ_g + r·Δ_{g+1}, r = (i mod gamma)/gamma, the
 * last group using Δ_{G-1} for both); O[i] = A[i] on sampled rows (written
 * directly, so they equal the dense rows bit for bit) and on the tail.
 * mode 1 (recompute): O[i] = A[i] on sampled and tail rows, A*[i] elsewhere.
 * L: lse_rows on sampled and tail rows (their exact dense L), lse_sparse on
 * every other row (the delta corrects O, not the normaliser; recall computed
 * from L therefore mixes dense rows with the base's rows).
 * Outputs O [H, N, D], L [H, N]. */
void sl_correct_delta_layout(int64_t n, int64_t gamma, int64_t tail, int64_t *s_p, int64_t *n_groups,
                             int64_t *n_tail);

/* Estimators, reductions and selectors (issue 4). Scores are f32
 * [H, rows, cols]. Causal rules use the decode offset: query row r sits at
 * position Nk - Nq + r and sees keys j <= that position. Query head h reads
 * kv head h / (Hq / Hkv) (GQA). Query block r covers rows [r·bq, (r+1)·bq)
 * clipped to Nq, key block c keys [c·bk, (c+1)·bk) clipped to Nk;
 * nqb = ceil(Nq / bq), nkb = ceil(Nk / bk). A block is visible to query block
 * r when its first key is <= the position of r's last row.
 *
 * score.pooled: inputs q [Hq, Nq, D], k [Hkv, Nk, D]; params bq, bk, causal,
 * scale, pool, softmax, pad. Pools each query block and key block over its
 * rows, channel by channel, and scores every pair of pooled blocks:
 *   pool 0 (mean):   scale · q̄_r · k̄_c, means over the valid rows (pad = 1:
 *                    sums over bq or bk, i.e. zero padding as MInference);
 *   pool 1 (max):    scale · q̂_r · k̂_c with q̂, k̂ the channel-wise maxima;
 *   pool 2 (minmax): scale · Σ_t max(qmax_t·kmax_t, qmax_t·kmin_t,
 *                    qmin_t·kmax_t, qmin_t·kmin_t): an upper bound on every
 *                    scaled q_i·k_j of the block pair (Quest's bound).
 * Output [Hq, nqb, nkb]: invisible blocks (causal) are -inf; with
 * softmax = 1 each row is softmax over its visible blocks and invisible ones
 * are 0.
 *
 * score.rows: inputs q, k, rows (i32 [R], each in [0, Nq)); params
 * causal, scale. Output [Hq, R, Nk]: row t is the exact softmax of
 * scale · q[h, rows[t]] · k over the keys it sees (fp32; unseen keys 0).
 * score.last_q: the same for the last L = min(last, Nq) rows (param last):
 * output [Hq, L, Nk], row t is query row Nq - L + t.
 *
 * score.exact: inputs q, k; params bq, bk, reduce, causal, scale,
 * normalize. The oracle block map: for each query block r and key block c,
 * the sum (reduce 0) or max (reduce 1) of the exact softmax probabilities
 * p[i, j] over the block's rows i and keys j. Output [Hq, nqb, nkb]; a sum
 * row of block r adds to the number of rows of r; normalize = 1 divides
 * each block row by its sum (SeerAttention's row-renormalised ground
 * truth). Never materialises Nq × Nk: the cpu kernel holds bq × Nk scores
 * per thread.
 *
 * reduce.columns: x [H, R, C] -> [H, C], sums over rows (no params).
 * reduce.diagonals: x [H, R, C], param row_pos0 (-1: C - R) -> [H, C]:
 *   y[h, o] = Σ x[h, r, j] over r, j with (row_pos0 + r) - j = o, o in
 *   [0, C); pairs with other offsets (future keys) are left out.
 * reduce.block: x [H, R, C], params br, bc, mode (0 sum, 1 max, 2 mean over
 *   the tile's valid entries) -> [H, ceil(R/br), ceil(C/bc)].
 * reduce.heads: x [H, R, C], params group g (0: H), mode -> [H/g, R, C],
 *   output head h reduces heads [h·g, (h+1)·g); H % g must be 0.
 * Reductions accept -inf entries (future blocks); a sum or mean with one is
 * -inf.
 *
 * Selectors take x [H, C] or [H, R, C] (rows are the last dim) with finite
 * or -inf entries (NaN and +inf are SL_EARG) and return a u8 keep of x's
 * shape. Order inside a row: larger first, ties broken by lower index
 * first. -inf is never kept.
 * select.topk: inputs x, opt.k (i32 [H], each >= 0: head h keeps opt.k[h]);
 *   params k, ratio (> 0: ceil(ratio × finite entries of the row)). The
 *   first min(budget, finite entries) entries of the order are kept.
 * select.topp: inputs x, opt.p (f32 [H] in [0, 1]); params p, normalize.
 *   Masses w: x itself (normalize 0; entries must be >= 0) or softmax of the
 *   row (normalize 1; -inf has mass 0). Keeps the shortest prefix of the
 *   order whose mass reaches p × (the row's mass, summed in that order):
 *   p = 0 keeps nothing, p = 1 every entry up to the last non-zero mass.
 * select.threshold: x; params t, relative: keeps x >= t (relative: x >=
 *   t × row max, for non-negative scores). */
/* correct.rectify (Rectified SpaAttn, card rectified_spaattn, steps 1-3 and
 * 5-8 for self-attention without text tokens): inputs q, k, v, a block mask M
 * (the four arrays, as attn.block_sparse; params bq, bk from it) and o_sparse
 * [Hq, Nq, D] (attn.block_sparse over M); params scale, causal, ipar, gapr,
 * causal_means.
 * The pooling blocks are the mask's: query block I (bq rows), key block J
 * (bk keys, the last ragged). For head h (kv head g, mask head h / (Hq/Hm)):
 *   q̄_I: the mean over the rows of query block I; k̄_J, v̄_J (and e^k_J
 *   below): means over the keys of J that row i sees when causal and
 *   causal_means (the default: a causally partial block is pooled over its
 *   visible keys only, so no future key enters a row), else over all of
 *   J's keys (causal_means = 0: the earlier reading, future keys of a
 *   partial block included);
 *   s_IJ = scale·q̄_I·k̄_J;
 *   w_iJ = number of keys of J that row i sees (causal: j <= Nk - Nq + i;
 *          else |J|) — IPAR's block-size weight, per row so that causal
 *          diagonal blocks count what the row sees; with ipar = 0, w_iJ = 1
 *          where row i sees a key of J, else 0;
 *   P'_iJ = w_iJ·e^{s_IJ} / Σ_J' w_iJ'·e^{s_IJ'}  (one row sums to 1);
 *   GAPR (raw dot products, no scale; the card's Bq·Bk factor is on both
 *   sides and left out): e^q_I = mean_i |q_i - q̄_I|, e^k_J likewise;
 *   NG_IJ = NOT(|q̄·k̄| > |e^q·k̄| + |q̄·e^k|) (gapr = 0: NG empty);
 *   C = M ∪ NG (J ∈ M when the mask keeps any pair of block (I, J));
 *   R_i = Σ_{J∈C} P'_iJ, restored_i = Σ_{J∉C} P'_iJ, N_i = Σ_{J∉C} P'_iJ·v̄_J;
 *   O_i = R_i·o_sparse_i + N_i.
 * A row that sees no key keeps o_sparse (R = 1, restored = 0). A restored
 * partial block (causal diagonal outside M) uses the mean of the values the
 * row sees (causal_means = 0: of all its values). trusted counts GAPR at
 * the block's last row.
 * Outputs O [Hq, Nq, D], r and restored [Hq, Nq] (R_i + restored_i = 1),
 * trusted [Hq, ceil(Nq/bq)]: the dropped blocks (outside M, some key visible
 * to the block's last row) that GAPR trusts and restores. No L: the caller
 * keeps the base's (the correction is an estimate of the dropped mass).
 * With bq = bk = 1, or Q and K constant within blocks (non-causal, or causal
 * with the diagonal blocks in M), P' is the exact softmax mass of each block,
 * every error is 0 and O equals dense attention.
 *
 * correct.compensate (Top-θ SDC + VMC, card top_theta_compensation): inputs
 * o [Hq, Nq, D] and lse [Hq, Nq] of attention over the kept keys, lse_ref
 * [Hq, Nq], v [Hkv, Nk, D]; params sdc_scale c, estimate, vmc, causal,
 * min_len. ρ = Z_miss/Z_kept: estimate 0: lse_ref is the full L, ρ =
 * max(0, e^{lse_ref - lse} - 1) (exact SDC); estimate 1: lse_ref = log Z_miss
 * (any estimate, -inf: none), ρ = e^{lse_ref - lse}. f = 1/(1 + c·ρ), λ = 1 - f;
 * O = f·o + λ·v̄_i (v̄_i = mean of v[g, 0..pos_i], pos_i = Nk - Nq + i; all keys
 * when causal = 0; vmc = 0: no λ term), L = lse + log(1 + c·ρ). A row with
 * no kept key (lse = -inf) gets f = 0, λ = 1 when c·Z_miss > 0. Rows that see
 * at most min_len keys are copied unchanged (λ = 0). Outputs O, L, lost = λ.
 *
 * correct.smooth_k (SpargeAttn / SALE): inputs q [Hq, Nq, D], k [Hkv, Nk, D],
 * opt.lse [Hq, Nq]; param scale. K' = K - k̄_g (k̄ the mean of head g's keys
 * over all Nk tokens); softmax is unchanged by it, L is shifted: L_out[h, i]
 * = opt.lse[h, i] + scale·q_i·k̄_g (0 + ... when opt.lse is left out), the L
 * over the original keys of a pass run on K'. Outputs K', L_out.
 *
 * correct.lepe (BiFormer LePE, 1-D): inputs o [Hq, Nq, D], v [Hkv, Nk, D],
 * opt.w [1 or Hq, kernel, D] (depthwise weights; left out: 1/kernel each, the
 * local mean); params kernel, causal, alpha. Row i at position p = Nk - Nq + i:
 * O_i = o_i + alpha·Σ_t w[t] ⊙ v[g, p_t] over taps t = 0..kernel-1 at p_t =
 * p - kernel + 1 + t (causal) or p - kernel/2 + t, positions outside [0, Nk)
 * contributing 0 (zero padding). */

/* Estimators of XAttention, ProxyAttn and AnchorAttention, and the row
 * gather of PBS-Attn (issue 4; op_stripe.c). Causal rules use the decode
 * offset off = Nk - Nq; query head h reads kv head h / (Hq / Hkv).
 *
 * score.antidiag: inputs q, k; params block B, stride S (B % S == 0),
 * causal, scale (0: 1/(sqrt(D)·S)). Super-tokens of S rows (the last may be
 * partial: missing rows count as zero vectors), Mq = ceil(Nq/S), Mk =
 * ceil(Nk/S); s(i, j) = scale · Σ_{t<S} q[iS + S-1-t] · k[jS + t] (the
 * antidiagonal sum of the S × S tile). Row i of W is the softmax of s(i, ·)
 * over the visible j (causal: j·S <= off + i·S). Output [Hq, ceil(Nq/B),
 * ceil(Nk/B)]: tile (r, c) sums W[i, j] over i·S in query block r and j·S
 * in key block c (0 where nothing is visible); a row sums to its B/S
 * super-rows.
 *
 * score.strided: inputs q, k; params stride S, bq, bk, causal, scale. Query
 * rows i = 0, S, 2S, ... (< Nq) and keys j = 0, S, 2S, ... (< Nk); row i of
 * W is the softmax of scale · q_i · k_j over its visible sampled keys (j <=
 * off + i when causal). Output [Hq, ceil(Nq/bq), ceil(Nk/bk)]: the max of W
 * over the sampled pairs of tile (r, c), 0 where there are none.
 *
 * score.anchor: inputs q, k with Nq == Nk = N; params block B, step,
 * init_cnt, local_cnt (>= 1), theta, scale, overlap. Big blocks of G = B ·
 * step rows; big block b has rows [bG, min((b+1)G, N)). For row i of big
 * block b the anchor is x[i] = max of scale · q_i · k_j over the structured
 * keys j <= i with j < init_cnt·G (initial) or j >= (b - local_cnt + 1)·G
 * (local). Per B-row sub-block t (clipped) of big block b: the mean query
 * q̄_t and the mean anchor x̄_t. The middle region of b is [init_cnt·G,
 * (b - local_cnt + 1)·G) (overlap = 1: the reference's scan [B,
 * (b - local_cnt + 1)·G - B)), clipped to [0, bG). Output u8 [Hq,
 * ceil(N/G), N]: keep[h, b, j] = 1 for j in the middle region when some t
 * has scale · q̄_t · k_j + theta >= x̄_t, else 0.
 *
 * gather.rows: inputs x [Hx, N, D] (float), idx i32 [Hi, M] with Hi % Hx
 * == 0 and entries in [0, N). Output [Hi, M, D]: y[h, t] = x[h / (Hi/Hx),
 * idx[h, t]]. No parameters; no FLOPs (copies). */

/* ---- estimators and executors of issue 4, group b (cards sparge_attn,
 * seer_attention, prism, sale, dhsa, sparse_flash_attention, hsr_attention) ----
 * pool.tokens: input x [H, N, D], opt.bounds i32 [S] (segment starts:
 * bounds[0] = 0, strictly increasing, each < N; segment s is [bounds[s],
 * bounds[s+1]) with bounds[S] = N). Without bounds the segments are blocks of
 * `block` tokens (the last one ragged). params block, mode (0 mean, 1 max,
 * 2 min, per channel), normalize (each token divided by its L2 norm first; a
 * zero token stays zero), len_norm (the pooled vector times sqrt(segment
 * length)). Output [H, S or ceil(N / block), D]. With normalize and mean,
 * |pooled|^2 is the mean cosine similarity over all ordered token pairs of
 * the segment (SpargeAttn's self-similarity), diagonal included.
 *
 * score.lowbit (SALE's estimate): inputs q [Hq, Nq, D], k [Hkv, Nk, D],
 * opt.lse [Hq, Nq] (finite or -inf); params bq, bk, bits, q_group, k_group,
 * smooth_k, causal, scale. With smooth_k, K' = K - mean_t K (per kv head) and
 * c_i = q_i . mean_t K (exact, f32 inputs, float64 sum), else K' = K, c = 0.
 * Q is quantised per group of q_group rows of a head, K' per group of k_group
 * keys: step = max|x| / (2^(bits-1) - 1) over the group (f32; 1 when that
 * is 0: an all-zero group, or one so small that the step underflows),
 * x~ = step . clamp(roundf(x / step), -qmax, qmax)
 * (computed in f32); bits = 16 leaves Q and K' as they are. The estimate is
 * s_ij = (q~_i . k~'_j + c_i) . scale, and the output [Hq, ceil(Nq/bq),
 * ceil(Nk/bk)] holds, per (query block, key block), the max over its pairs
 * (i, j) (causal: j <= i + Nk - Nq) of s_ij - lse_i (lse left out: of s_ij);
 * rows whose lse is -inf are skipped; -inf where no pair is left. SALE keeps
 * a block iff that max > log(theta): the "relative attention score" exp(s -
 * m) / l > theta with lse = m + log l of the always-kept region. Params qb0,
 * qbn (issue 19) compute query blocks [qb0, qb0 + qbn) only (qbn = 0: to the
 * last): output [Hq, qbn, nkb], equal to those rows of the whole output (the
 * mean key, the quantisation groups and the causal rule stay those of the
 * whole q and k), so an estimate can run in row blocks; qb0 and qb0 + qbn
 * outside the ceil(Nq/bq) blocks is SL_EARG.
 *
 * attn.bucket (SCFA hash-sparse and HSR threshold attention): inputs q, k, v
 * as attn.dense, opt.qb i32 [Hq, Nq] and opt.kb i32 [Hq, Nk] (bucket ids >= 0
 * per query head: the keys hashed under the query head's rotation; both or
 * neither); params causal, scale, use_tau, tau. Row i of head h attends key j
 * iff (causal: j <= i + Nk - Nq) and (buckets given: qb[h,i] == kb[h,j]) and
 * (use_tau: scale . q_i . k_j >= tau). Outputs O [Hq, Nq, D], L [Hq, Nq] as
 * attn.dense (an empty row: O = 0, L = -inf) and count i32 [Hq, Nq], the
 * number of keys each row attended.
 *
 * score.hash: inputs x [Hx, N, D], rot [Hr, D, M] (Hr a multiple of Hx:
 * rotation h hashes x head h / (Hr / Hx), so keys of a GQA kv head get one
 * bucket list per query head). Output i32 [Hr, N]: the index of the first
 * maximum of the 2M values [x.R_0 .. x.R_{M-1}, -x.R_0 .. -x.R_{M-1}]
 * (float64 dot products), a bucket in [0, 2M). No parameters. */

/* ---- non-softmax attention (issue 16) ----
 * attn.entmax (card entmax; family nsattn, kernels in {ref,cpu,cuda}/nsattn): inputs
 * q, k, v as attn.dense; params causal, scale, alpha in [1, 2], algo,
 * n_iter. Per row i of head h, over the visible keys j (causal: j <= i + Nk
 * - Nq; n of them), z_j = scale . q_i . k_j and X_j = (alpha - 1) z_j; the
 * weights are alpha-entmax p_j = [X_j - tau]_+^(1/(alpha-1)) with tau such
 * that sum p = 1 (alpha = 2: sparsemax, the Euclidean projection of z onto
 * the simplex; alpha = 1: softmax, taken exactly). algo 0 (exact): tau from
 * the sorted row (sparsemax and 1.5-entmax closed forms; alpha must be 1,
 * 1.5 or 2). algo 1 (bisection, deep-spin entmax_bisect): tau_lo = max X -
 * 1, tau_hi = max X - (1/n)^(alpha-1); n_iter times halve the step, tau_m =
 * tau_lo + step, tau_lo = tau_m when sum p(tau_m) >= 1; p = p(tau_m) / sum
 * p(tau_m). Outputs O [Hq, Nq, D] = sum_j p_j v_j (masked keys and keys with
 * p_j = 0 contribute exactly nothing) and support i32 [Hq, Nq], the number of
 * keys with p_j > 0 (alpha = 1: every visible key). There is no log-sum-exp:
 * recall through L does not apply; compare outputs (metric.rel_l2) and
 * supports. A row with no visible key gets O = 0, support 0.
 *
 * attn.relu (cards rela, hsr_attention's ReLU^alpha case): inputs q, k, v as
 * attn.dense; params causal, scale, power p >= 1, bias b, norm. Per row i
 * over the visible keys j (causal: j <= i + Nk - Nq; masked keys are left
 * out, weight exactly 0 — ReLA's multiplicative 0/1 mask gives the same for
 * b >= 0), a_ij = max(scale . q_i . k_j - b, 0)^p. norm 0: O_i = sum_j a_ij
 * v_j (ReLA: no normalisation, a row may be all zero); norm 1: O_i = sum_j
 * a_ij v_j / sum_j a_ij (0 when the sum is 0). Outputs O [Hq, Nq, D] and
 * count i32 [Hq, Nq], the keys with a_ij > 0. No log-sum-exp (see
 * attn.entmax).
 *
 * norm.rms_gated (ReLA's gated RMSNorm, reference bzhangGo/zero
 * modules/rela.py gated_rms_norm): input x [H, N, D] (per-head outputs),
 * opt.g and opt.w float [H . D] (absent: all 1); params eps, gate. For each
 * token n, u = (x[0, n, :], ..., x[H-1, n, :]) (the concatenated heads) and
 * y[h, n, c] = g_e . u_e / sqrt(mean(u^2) + eps) . (gate ? sigmoid(w_e . u_e)
 * : 1) with e = h . D + c. Output y [H, N, D].
 *
 * attn.sigmoid_gate (card gated_attention, the G1 gate after SDPA): inputs
 * o [H, N, D] (an attention output) and g [H, N, G] with G = 1 (headwise:
 * one logit per token and head, broadcast over D) or G = D (elementwise);
 * param eps. y[h, n, c] = o[h, n, c] . sigmoid(g[h, n, G == 1 ? 0 : c]), and
 * exactly 0 where that sigmoid is below eps (the output skipped). Outputs y
 * [H, N, D] and kept i32 [H, N], the channels whose gate is >= eps.
 *
 * attn.fastmax (card fast_fastmax): inputs q, k, v as attn.dense; params
 * causal, p, a0, a1, a2, normalize, lim. With normalize, q of each query head
 * is multiplied by lim / max_i |q_i| (the largest row norm of that head in
 * this call) and k of each kv head by lim / max_j |k_j| (an all-zero head is
 * left as is). Per row i over the visible keys, x_ij = q_i . k_j (no other
 * scale), f = a0 + a1 x + (p = 2: a2 x^2), O_i = sum_j f_ij v_j / sum_j f_ij
 * (0 when that sum is 0). Output O [Hq, Nq, D]; no log-sum-exp.
 *
 * attn.tra (card tra, Threshold Relative Attention): inputs q, k, v as
 * attn.dense and delta float [Hq, Nq] (the query gate log sigma(.) <= 0,
 * any finite value accepted); params causal, scale, qk_norm, eps. With
 * qk_norm every q and k row r becomes r / sqrt(mean(r^2) + eps). Per row i
 * over the visible keys, S_ij = scale . q_i . k_j; the kept set K_i = {j :
 * S_ij > 0}; c_ij = #{l in K_i : l >= j} (kept keys from j to the query);
 * A_ij = S_ij + delta_i . c_ij on K_i; O_i = softmax(A_i over K_i) . V (0
 * when K_i is empty). Outputs O [Hq, Nq, D] and count i32 [Hq, Nq] = |K_i|.
 *
 * attn.monotonic (card asr_sparse_monotonic, hard monotonic chunkwise
 * attention at inference, MoChA style): inputs q, k, v as attn.dense;
 * params chunk w, r, causal, scale. Per query head a pointer t starts at 0;
 * rows in order: row i scans keys j = t, t+1, ... among its visible ones
 * and stops at the first with scale . q_i . k_j + r >= 0; then t = j and O_i,
 * L_i are softmax attention over keys [max(0, j - w + 1), j] with logits
 * scale . q_i . k_j (as attn.dense's O and L over that set); stop[i] = j. A
 * row that finds no such key attends nothing: O = 0, L = -inf, stop -1, and
 * t stays. Outputs O [Hq, Nq, D], L [Hq, Nq], stop i32 [Hq, Nq]; the stops
 * of a head never decrease (ignoring -1). */

/* ---- prefill token selection (issue 16) ----
 * attn.threshold (card top_theta; family tsel, kernels in
 * {ref,cpu,cuda}/tsel): inputs q, k, v as attn.dense and theta float [Hq,
 * Nq]; params causal, scale, dense_upto, keep_max. Row i of head h sees n_i
 * visible keys (causal: j <= i + Nk - Nq); when n_i <= dense_upto it keeps
 * them all, else it keeps j with scale . q_i . k_j > theta[h, i] (and, with
 * keep_max, its first largest score). Outputs O [Hq, Nq, D] and L [Hq, Nq]
 * as attn.dense over the kept keys (none: O = 0, L = -inf) and count i32
 * [Hq, Nq], the kept keys per row.
 *
 * select.pq_match (card pq_code_match, SPT's lookup): inputs q [Hq, Nq, D], k
 * [Hkv, Nk, D], codebook float [Hc, S, C, dc] with S . dc = D and Hkv a
 * multiple of Hc (query head h and its kv head h / (Hq/Hkv) use codebook
 * (h / (Hq/Hkv)) / (Hkv/Hc)); params nnz, causal, slots. Every q and k row's
 * code in subspace s (channels s.dc .. s.dc + dc - 1) is the codeword with
 * the least L1 distance (ties: the lower index). For row i of head h the
 * match count m_ij = #{s : code_q[s] = code_k[s]} over its visible keys;
 * slot = min(floor(slots . m_ij / S), slots - 1); keys are taken from the
 * highest slot down, in ascending j within a slot, until nnz (or all the
 * visible keys) are taken. Outputs the index lists (see above) of one entry
 * per row: row_ptr i32 [Hq, Nq + 1] (global offsets) and col i32 [total],
 * each row's keys sorted ascending; total = sum over rows of min(n_i, nnz). */
/* ---- trainable sparse attention (issue 14; cards nsa, moba, sparsek) ----
 * trainable.compress (NSA's phi): input x [H, N, D], opt.w [H, l·D, D]
 * (mode 1 only), opt.pe [H, l, D] (optional intra-window position
 * embedding); params l, s (<= l), mode. Output y [H, ceil(N/s), D]: window
 * i covers tokens t = i·s + r, r in [0, l); a token t >= N contributes
 * nothing (zero padding, pe included). mode 0: y_i = (1/l) Σ_r (x_t + pe_r)
 * (FLA's mean pooling when l = s); mode 1: y_i[c] = Σ_r Σ_e (x_t[e] +
 * pe_r[e]) · w[r·D + e, c] (FSA's compress_key, a linear map of the
 * flattened window). Windows that run past N are never visible to a query
 * of trainable.nsa (i·s + l - 1 >= N).
 *
 * trainable.nsa: inputs q [Hq, Nq, D], k, v [Hkv, Nk, D], kc, vc [Hkv, Nc,
 * D] (compressed keys and values), g_cmp, g_slc, g_swa [Hq, Nq] (gates,
 * used as given); params l, s, bs, n (>= init + local), init, local,
 * window, scale. Query row t sits at position p = Nk - Nq + t. Per query
 * head h (kv head h / (Hq/Hkv)):
 *   compressed token i < Nc is visible iff i·s + l - 1 <= p; P_cmp = softmax
 *   of scale · q·kc_i over the visible ones; o_cmp = Σ P_cmp vc_i (0 when
 *   none is visible, no NaN);
 *   importance of selection block j (keys [j·bs, (j+1)·bs)): imp[kv, t, j] =
 *   Σ_{h in the group} Σ_i P_cmp[h, i] · |[i s, i s + l) ∩ [j bs, (j+1) bs)| / s
 *   (the overlap-weighted mapping: paper eq. 9, FSA's transform_score; for
 *   l = s = bs it is the group sum of P_cmp itself, FLA);
 *   selection per (kv head, t) over the causal blocks j <= p / bs: blocks j
 *   < init and j > p/bs - local are forced, the rest of the n taken by
 *   largest imp (ties: lower j); blocks i32 [Hkv, Nq, n] lists them
 *   ascending, -1 after the last one;
 *   o_slc = softmax attention over keys j <= p in the selected blocks;
 *   o_swa = softmax attention over keys p - window < j <= p (0 when window
 *   is 0);
 *   o = g_cmp · o_cmp + g_slc · o_slc + g_swa · o_swa.
 * Outputs o [Hq, Nq, D], lse [Hq, Nq] (the log-sum-exp of scale · q·k_j
 * over the union of the keys the selection and window branches read: the
 * recall of the token set), blocks, imp f32 [Hkv, Nq, ceil(Nk/bs)].
 *
 * trainable.sparsek: inputs q [Hq, Nq, D], k, v [Hkv, Nk, D], u [Hkv, Nk]
 * (one score per key, shared by the query heads of a kv head); params k,
 * window, weight, scale. Query row t at position p = Nk - Nq + t, prefix
 * keys 0..p, m = p + 1, kk = min(k, m). The selected set S = the kk prefix
 * keys of largest u (ties: lower index). The SPARSEK projection over the
 * prefix: w_j = clip(u_j - tau, 0, 1) with tau such that Σ_j w_j = kk (w = 1
 * when kk = m, 0 when kk = 0); tau by 200 bisection steps in float64 over
 * [min u - 1, max u]. Row t attends the keys of S ∪ {p - window < j <= p}:
 * weight = 0, plain softmax attention; weight = 1, keys and values of S
 * scaled by w_j first (window keys outside S unscaled); bias = 1 adds u_j
 * to the (scaled) logit of every attended key (DMA). Outputs o [Hq, Nq,
 * D], lse [Hq, Nq] (over the attended keys with the logits used), count i32
 * [Hkv, Nq] (keys attended).
 *
 * trainable.fsa (Flash Sparse Attention's executor of NSA's selection
 * branch): inputs q [Hq, Nq, D], k, v [Hkv, Nk, D], blocks i32 [Hkv, Nq, n]
 * (selected block ids per kv head and query row, -1 = none, each id in
 * [-1, ceil(Nk/bs)) and at most once per row; e.g. trainable.nsa's blocks),
 * opt.gate [Hq, Nq], opt.base [Hq, Nq, D]; params bs, scale. Row t (position
 * p = Nk - Nq + t) of query head h attends the keys j <= p of the blocks of
 * its kv head's row: O_sel, L (softmax; O_sel = 0, L = -inf when none).
 * Outputs o = base + gate · O_sel (gate 1 and base 0 when left out) and lse
 * = L. The result equals the query-outer computation; the cpu and cuda
 * kernels run FSA's order: per (kv head, key block) the queries that
 * selected it (the inverse index), partial (max, sum, O) per (query, slot),
 * merged per query through their log-sum-exps.
 *
 * trainable.routing (Routing Transformer's cluster attention): inputs q [Hq,
 * Nq, D], k, v [Hkv, Nk, D], qsel i32 [Hq, C, W] (the query rows of each
 * cluster, -1 = none), ksel i32 [Hq, C, W] (the keys of each cluster of
 * query head h, from its kv head; -1 = none); entries at most once per
 * cluster. Row t (position p = Nk - Nq + t) of head h: for every cluster c
 * holding t, the softmax attention O_c over the keys of c with j <= p; o =
 * the mean of O_c over those clusters with at least one such key (0 when
 * none); lse = the log-sum-exp over the union of those keys (-inf when
 * none); count i32 [Hq, Nq] = the clusters holding t. */
/* ---- sparse matmul, weight and activation sparsity (issue 17) ----
 * Every mm.* product is y = x . W^T with x [T, K] (T activation rows, K the
 * reduction dim), W [N, K] (a linear layer's weight, N outputs) and y
 * [T, N] f32; float64 in ref, f32 accumulation elsewhere. The executors do
 * not scan their float inputs for NaN: they check that y is finite instead
 * (a NaN or infinity in what they read reaches y) and fail naming the op.
 * mm.nm forms the product of every slot (padding slots included), mm.bitmap
 * of every set bit, mm.act_sparse of every nonzero x; x entries no product
 * needs are not read.
 *
 * mm.dense: inputs x [T, K], w [N, K]. The sgemm baseline.
 *
 * mm.nm_encode: input w [N, K]; params n <= m. Column groups g = 0 .. G-1,
 * G = ceil(K / m), group g = columns [g.m, min(K, (g+1).m)). Per row and
 * group, the n entries of largest |w| (ties: lower column first) go to
 * vals [N, G.n] f32 and their positions inside the group to pos u8 [N, G.n],
 * in increasing position. A ragged last group of r < n columns keeps all r
 * and fills the other slots with value 0 at position 0. Decoding is a sum:
 * W~[row, g.m + pos[row, g.n + s]] += vals[row, g.n + s]; W~ is w with every
 * entry outside the kept sets zeroed (n == m: W~ = w).
 *
 * mm.nm: inputs x [T, K], vals [N, G.n] f32, pos u8 [N, G.n] (each position
 * < the width of its group); params n, m as encoded. y = x . W~^T.
 *
 * mm.bitmap_encode: input w [N, K]; param cap (0: K), at least the largest
 * count of nonzeros of a row. Outputs bits i32 [N, ceil(K / 32)] (bit b of
 * word c of row r is set iff w[r, 32c + b] != 0; bits past K are 0) and vals
 * f32 [N, cap]: row r's nonzeros in column order, then zeros.
 *
 * mm.bitmap: inputs x [T, K], bits i32 [N, ceil(K / 32)] (no bit past K; at
 * most cap bits per row), vals [N, cap]. y = x . W^T with W decoded as above.
 * Param csr_below (cuda only; issue 17, session 3): in an nvcc build, when
 * the weight's density (set bits / N.K) is below it (and the nonzeros fit
 * int32), the backend converts the bitmap to CSR on the host and runs
 * cuSPARSE's SpMM (y^T = W . x^T, column-major views); otherwise, and
 * always under the CUDA simulator (no cuSPARSE there), the CUDA-core kernel.
 * Both paths match ref to the executors' tolerance (tests/gpu/run.sh checks
 * the cuSPARSE one when a GPU is lent: tests/gpu/cusparse_check.lua).
 *
 * mm.act_sparse: inputs x [T, K], wt [K, N] (W^T, so that a column of W is
 * a contiguous row). y[t] = sum over k with x[t, k] != 0 of x[t, k] . wt[k]:
 * zero activations, zero rows and zero columns of x cost nothing. FLOPs
 * count the products done (2 N per nonzero of x). */

/* ---- weight pruning (issue 17) ----
 * prune.magnitude: input w (float, any shape with at least one dim); params
 * sparsity, n, m. Output w' of w's shape. n = 0: the floor(sparsity .
 * numel) entries smallest in (|w|, flat index) order are zeroed, the rest
 * copied. n > 0 (n <= m): per group of m consecutive entries of the last dim
 * (ragged last group of width r: min(n, r) kept), the n largest |w| are kept
 * (ties: lower index), the rest zeroed: mm.nm_encode's selection.
 *
 * prune.sparsegpt (SparseGPT, Frantar & Alistarh 2023; reference
 * IST-DASLab/sparsegpt sparsegpt.py fasterprune): inputs w [N, K], x [S, K]
 * (calibration inputs of the layer, S >= 1 rows); params sparsity, n, m,
 * blocksize B, percdamp. H = (2/S) x^T x (float64). A column j with H_jj = 0
 * is dead: H_jj = 1, w[:, j] = 0. H += percdamp . mean(diag H) . I. U is the
 * upper Cholesky factor of H^-1 (H^-1 = U^T U). Columns are processed in
 * blocks [i1, i2) of B (N:M: B rounded down to a multiple of m, at least m):
 * unstructured, the block's mask prunes exactly floor(sparsity . N . (i2 -
 * i1)) entries of smallest score w^2 / U_jj^2 (ties: lower row-major index
 * within the block) from the block as updated so far; N:M, at each column j
 * with j % m == 0 every row keeps the n largest scores of columns [j,
 * min(j + m, K)) (ties: lower column). Then per column i of the block: q =
 * w[:, i] with pruned rows zeroed, e = (w[:, i] - q) / U_ii, w[:, i..i2) -=
 * e U[i, i..i2); after the block w[:, i2..K) -= E U[i1..i2, i2..K) (E the
 * block's e columns). Output w' [N, K] (the q columns): pruned entries are
 * exactly 0, the kept ones carry the compensation. sparsity = 0 (n = 0)
 * returns w up to round-off; float64 throughout. Differs from the reference
 * in the count: it prunes the scores <= the floor(sparsity . numel)-th
 * sorted one (one more, and every tie).
 *
 * prune.lowrank (CASP's whitened factorisation; reference vbdi/casp
 * SVD/svd_llava.py profle_svd / whitening): inputs w [N, K], x [S, K]; params
 * rank, rho, whiten. r = rank or max(1, floor(rho.N.K/(N+K))), at most
 * min(N, K). With whiten, G = x^T x (float64) and L = chol(G + delta.I)
 * (lower, G = L L^T), delta = 0, else mean(diag G).1e-12.10^i for i = 1..13
 * until it factors (the reference shifts by the smallest eigenvalue
 * instead); without, L = I. The SVD W L = U S V^T gives a = U_r S_r^1/2
 * [N, r] and b = S_r^1/2 V_r^T L^-1 [r, K] (singular values descending; the
 * sign of each pair makes the largest |entry| of u positive), so a.b is the
 * rank-r matrix minimising |(w - a.b) L|_F = |(w - a.b) x^T|_F. */

/* ---- activation sparsity (issue 17) ----
 * act.topk: input x [T, m] (float); params k, abs. Output y [T, m]: per row
 * the min(k, m) entries largest by score (|x| when abs, else x; ties: lower
 * index) keep their value, the rest are 0. k = m: y = x.
 *
 * act.threshold: inputs x [T, m], theta [m] (float, >= 0). y[t, j] = x[t, j]
 * when |x[t, j]| >= theta[j], else 0 (CHESS zeroes |x| < theta; a per-layer
 * CATS threshold is a constant theta). theta = 0: y = x.
 *
 * act.delta (delta networks): inputs x [T, m] (row t = step t of a stream),
 * theta [m] (>= 0). Per channel j, a reference r (the last transmitted
 * value): step 0 transmits everything, delta[0] = x[0], r = x[0]; step t > 0:
 * d = x[t, j] - r, delta[t, j] = d when |d| > theta[j] else 0, r += delta[t,
 * j]. Outputs delta [T, m] (the sparse input of an act-sparse product:
 * W r_t = W r_{t-1} + W delta_t) and xhat [T, m] (r after step t; |xhat -
 * x| <= theta up to one rounding). Float32 arithmetic, in step order. */
/* ---- video / diffusion-transformer layouts (issue 15) ----
 * perm.apply: inputs x [H, N, D] or [H, N] (float; a log-sum-exp may hold
 * -inf), perm i32 [P, N] with H % P == 0;
 * head h uses row g = h / (H / P) (P = 1: one order for every head; P = H:
 * one per head, e.g. spatial and temporal heads). Every row must be a
 * bijection of [0, N): an entry outside it or a repeated entry is SL_EARG
 * naming the row and position. param inverse: 0 gives y[h, t] = x[h,
 * perm[g, t]] (position t of the new order holds token perm[g, t]); 1 gives
 * y[h, perm[g, t]] = x[h, t], so inverse(forward(x)) == x exactly. Output
 * of x's shape. No FLOPs (copies). The orders themselves (axis orders of a
 * frames x height x width layout, region tiles, the 3-D Gilbert curve, text
 * tokens kept in place) are built by sparselab.layout.
 *
 * mass.blocks (AdaSpa's exact block mass with a cached LSE): inputs q
 * [Hq, Nq, D], k [Hkv, Nk, D], lse [Hq, Nq] (finite or -inf); params bq, bk,
 * causal, scale. Output [Hq, ceil(Nq/bq), ceil(Nk/bk)]: W[h, I, J] = the sum
 * over rows i of block I and seen keys j of block J of exp(scale·q_i·k_j -
 * lse[h, i]) (float64 in ref). With the rows' own log-sum-exp every row adds
 * 1 over its keys (W's block row sums to the rows of I); with an LSE cached
 * from another step the sums drift (AdaSpa's diagnostic). A row whose lse is
 * -inf adds nothing. Never materialises Nq x Nk.
 *
 * quant.fake (the emulated INT-b inputs of a quantised executor, e.g.
 * PAROAttention's INT8 Q and K): input x [H, N, D]; params bits, group.
 * Per head and group of `group` rows (the last one ragged): step = max|x| /
 * (2^(bits-1) - 1) in f32 (1 when that is 0), y = step · clamp(roundf(x /
 * step), -qmax, qmax), computed in f32 (the rule of score.lowbit), so y holds
 * exactly the values an integer kernel would multiply (times its scale).
 * Output [H, N, D]. FLOPs: 3 per element. */
/* ---- decode: paged KV cache (issue 13) ----
 * Decode reads a cache of keys and values in pages of P tokens: page p of a
 * cache of n tokens covers tokens [p.P, min((p+1).P, n)); n_p = ceil(n/P).
 *
 * page.meta: input k [H, n, D] (n >= 1), param page P. Outputs min, max and
 * mean, each [H, n_p, D]: per page and channel the minimum, maximum and mean
 * of the page's keys (a partial last page over the tokens it has). The
 * rebuild oracle of sl_kvcache's incremental metadata.
 *
 * page.bounds (Quest): inputs q [Hq, R, D], min and max [Hkv, n_p, D] with
 * Hq a multiple of Hkv (query head h reads kv head h / (Hq/Hkv)). Output
 * scores [Hq, R, n_p]: U = sum_c max(q[c].min[p,c], q[c].max[p,c]) (float64
 * sums), an upper bound of q.k for every key k of page p, reached when one
 * key holds every channel's extreme. No scale. No parameters.
 *
 * page.select: input scores [H, R, n_p] (-inf allowed: never preferred over
 * a finite score but still taken when k asks for more). Params k, group g (H
 * a multiple of g), sink, last. Output pages i32 [H/g, R, min(k, n_p)]: for
 * list l and row r, the aggregated score s_p = sum over heads l.g .. l.g+g-1
 * of scores[h, r, p] (float64 sum rounded to float); pages are ranked by
 * (forced first: the last page when last = 1, then the first `sink` pages in
 * index order), then by s_p descending, ties to the lower index; the first
 * min(k, n_p) of that ranking are written in ascending page order.
 *
 * page.attend: inputs q [Hq, R, D], k and v [Hkv, N, D], pages i32 [Hs, R, m]
 * with Hq a multiple of Hs and Hs a multiple of Hkv (query head h uses list
 * h / (Hq/Hs); lists shared by a GQA group have Hs = Hkv). Params page P, n
 * (keys 0..n-1 exist; 0: n = N; R <= n <= N), causal, split, scale. Entries
 * are page ids in [0, ceil(n/P)) strictly increasing, or -1 (padding, at the
 * end of a list). Row r of query head h attends every key j of its listed
 * pages with j < n and (causal: j <= n - R + r): O [Hq, R, D] and L [Hq, R]
 * (natural log of the sum of exp(scale.q.k)); a row with no key: O = 0,
 * L = -inf. cpu and cuda split each list into partials of `split` entries
 * (0: their own choice) merged through their log-sum-exps. k and v are read
 * only at the listed pages: a NaN or infinity there makes the call fail.
 *
 * page.select with p > 0 (top-p, Twilight): the same ranking; with the
 * softmax weights w = exp(s - max s) of the row's aggregated scores (float64,
 * total summed in ranking order), entries are taken in ranking order while
 * fewer than min(k, n_p) are taken: forced ones always; others stop at the
 * first -inf score or once the mass taken reaches p.total (p = 1: every
 * finite entry). Taken pages are written ascending, the rest of the row -1.
 *
 * page.token_scores: inputs q [Hq, R, D], k [Hkv, N, D], opt.channels i32
 * [Hc, r] (Hc = Hq or Hkv; distinct channels in [0, D); absent: all D),
 * opt.pages i32 [Hs, R, m] (as page.attend's lists; absent: every key).
 * Params page, n (0: N), causal, bits, scale (0: 1/sqrt(r)). Output scores
 * [Hq, R, n]: for query head h, row i and key j: -inf when j is outside the
 * row's listed pages or (causal) j > n - R + i; else scale . sum over c in C
 * of q[h, i, c] . k'[j, c], where k' = k when bits = 0 and otherwise each
 * key's values on C quantised per token: lo, hi its min and max over C, step
 * (hi - lo) / (2^bits - 1), k' = lo + round((k - lo) / step) . step (k' = k
 * when step = 0); with qbits > 0 (issue 13 session 3: Double Sparsity's
 * label pseudo-quantisation) q[h, i, C] is quantised the same way per row
 * (its own lo, hi over C, 2^qbits levels) before the products. Query head h
 * reads kv head h / (Hq/Hkv), channel row h / (Hq/Hc), list h / (Hq/Hs).
 *
 * page.qscores: inputs q [Hq, R, D], kq u8 [Hkv, N, D] (codes), kscale float
 * [Hkv, N, 2] (per key lo and step: sl_kvcache_set_bits), opt.pages as
 * page.token_scores. Params page, n, causal, scale (0: 1/sqrt(D)). Output
 * [Hq, R, n]: -inf outside the listed pages or past the causal limit, else
 * scale . sum_c q[c] . (lo + kq[c] . step) (float64 sums). */

/* ---- the paged KV cache object (core/kvcache.c, issue 13) ----
 * Keys and values of H kv heads, head dim D, in pages of P tokens, with the
 * page metadata of page.meta kept up to date incrementally: an append folds
 * the new keys into the min, max and running sum of the pages they land in,
 * an eviction compacts each head's tokens and rebuilds the pages from the
 * first one it touched. Every head holds the same number of tokens. Host
 * memory: the K and V storage (capacity grows by half) and 3 metadata rows of
 * D floats per page, and one i32 token position per slot: 1 + 3/(2P) + 1/(2D)
 * of the raw f32 K/V (1.098 at P = 16, D = 128). */
typedef struct sl_kvcache sl_kvcache;

/* A cache of heads x head_dim with pages of `page` tokens (every count >= 1). */
sl_status sl_kvcache_new(sl_ctx *ctx, int64_t heads, int64_t head_dim, int64_t page, sl_kvcache **out);
void sl_kvcache_free(sl_kvcache *c);
/* Appends k and v, float [H, t, D] each (t >= 1, finite). */
sl_status sl_kvcache_append(sl_ctx *ctx, sl_kvcache *c, const sl_tensor *k, const sl_tensor *v);
/* Removes, in every head h, the tokens idx[h, 0..m-1] (i32 [H, m], strictly
 * increasing per head, each < length); later tokens move down. */
sl_status sl_kvcache_evict(sl_ctx *ctx, sl_kvcache *c, const sl_tensor *idx);
int64_t sl_kvcache_len(const sl_kvcache *c);
int64_t sl_kvcache_pages(const sl_kvcache *c);
int64_t sl_kvcache_page_size(const sl_kvcache *c);
int64_t sl_kvcache_heads(const sl_kvcache *c);
int64_t sl_kvcache_head_dim(const sl_kvcache *c);
/* Bytes held (storage and metadata at current capacity). */
size_t sl_kvcache_bytes(const sl_kvcache *c);
/* New tensors (caller owns): which = "k" or "v": the storage [H, capacity,
 * D] sharing the cache's buffer (rows past sl_kvcache_len are zero; valid
 * until the next append or evict: pass n = len to page.attend); "min",
 * "max", "mean": copies [H, n_p, D]. Fails on an empty cache. */
sl_status sl_kvcache_tensor(sl_ctx *ctx, const sl_kvcache *c, const char *which, sl_tensor *out);
/* Keeps a low-bit copy of K beside it (bits 2..8; 0: none), set before the
 * first append: per token asymmetric min/max over the D channels, codes
 * round((k - lo) / step) with step = (hi - lo) / (2^bits - 1) (the
 * quantisation of page.token_scores' `bits`), read as "kq" (u8 [H, capacity,
 * D], sharing the buffer) and "kscale" (f32 [H, capacity, 2]: lo, step) by
 * page.qscores. Costs D + 8 bytes per token and head. */
sl_status sl_kvcache_set_bits(sl_ctx *ctx, sl_kvcache *c, int bits);
int sl_kvcache_bits(const sl_kvcache *c);
/* Quantised pages that REPLACE the f32 K (kbits 4 or 8) and optionally V
 * (vbits 4 or 8; 0: f32 V), set before the first append (issue 13, session
 * 3). Each page of P tokens holds codes and one scale per channel (the
 * format of page.attend_q, which reads them directly): "kcodes" / "vcodes"
 * (u8 [H, capacity, D or ceil(D/2)], sharing the buffer) and "kscales" /
 * "vscales" (f32 [H, capacity/P, D]). The open (last) page also keeps its
 * f32 rows (one page per head) and is re-quantised on each append; an
 * eviction re-quantises each head from its first touched page (the moved
 * tokens' values go through their codes once more). The metadata (min, max,
 * mean) is that of the dequantised keys, so Quest's bound holds for what
 * page.attend_q reads. "k" / "v" of a quantised side are copies [H, len, D]
 * of the dequantised codes (exactly what page.attend_q reads, the open page
 * included). Not combinable with sl_kvcache_set_bits. */
sl_status sl_kvcache_set_quant(sl_ctx *ctx, sl_kvcache *c, int kbits, int vbits);
/* kbits of the pages (0: f32 K); *vbits (if not NULL) gets vbits. */
int sl_kvcache_quant(const sl_kvcache *c, int *vbits);
/* Asymmetric quantised pages (issue 13, session 4), set after
 * sl_kvcache_set_quant and before the first append: per page and channel
 * zero = min, scale = (max - min) / (2^b - 1), unsigned codes; parts
 * "kzeros" / "vzeros" (f32 [H, capacity/P, D]) go to page.attend_q as
 * opt.kzero / opt.vzero. asym 0 returns to symmetric codes. */
sl_status sl_kvcache_set_quant_zero(sl_ctx *ctx, sl_kvcache *c, int asym);
/* sl_kvcache_set_quant and sl_kvcache_set_quant_zero as one step, all or
 * nothing (issue 13 review): every check of both (asym against the new
 * kbits) before anything changes; on any error (SL_EARG, SL_ENOMEM) the
 * cache keeps its widths, zero points and buffers. Lua's c:set_quant. */
sl_status sl_kvcache_set_quant_all(sl_ctx *ctx, sl_kvcache *c, int kbits, int vbits, int asym);
int sl_kvcache_quant_zero(const sl_kvcache *c);
/* Frees the capacity past the last page in use (after an eviction: the
 * resident bytes drop with the tokens); contents unchanged. */
sl_status sl_kvcache_shrink(sl_ctx *ctx, sl_kvcache *c);
/* Token positions (issue 13, session 4b): every slot keeps the position of
 * the token it holds, per head (4 bytes per token and head, counted in
 * sl_kvcache_bytes), moved with its slot by sl_kvcache_evict. An append
 * gives its tokens the next positions (tokens ever appended: 0, 1, ...);
 * sl_kvcache_append_at takes them from pos (i32 [H, t], each >= 0; NULL:
 * the next positions) and the next position becomes max(next, pos + 1).
 * Read as sl_kvcache_tensor "pos": a copy i32 [H, len]. */
sl_status sl_kvcache_append_at(sl_ctx *ctx, sl_kvcache *c, const sl_tensor *k, const sl_tensor *v, const sl_tensor *pos);

/* ---- token-level sparsity (issue 17, part 2) ----
 * token.scatter (card sparse_token_update, the scatter of gather -> compute
 * -> scatter; gather.rows is the gather): inputs x [N, D] (float), y [M, D]
 * (float), idx i32 [M], each in [0, N) and all distinct (SL_EARG naming the
 * first repeat); param add. Output out [N, D]: out = x except out[idx[t]] =
 * y[t] (add = 0, "replace": rows not in idx are bit-identical to x) or
 * x[idx[t]] + y[t] (add = 1). FLOPs: M.D with add, 0 without. */
/* ---- reliability: the line executor (issue 19) ----
 * attn.lines (the exact vertical-slash executor, O(n * lines) memory): inputs
 * q [Hq, Nq, D], k and v [Hkv, Nk, D], cols i32 [Hl, C] and offs i32 [Hl, S]
 * (Hl is 1 or divides Hq: query head h reads list head h / (Hq / Hl)); each
 * list row holds distinct values in [0, Nk) in ascending order, then -1
 * entries (padding, skipped); C or S may be 0. Param scale. Row i (position
 * p = Nk - Nq + i) attends the keys {j in cols : j <= p} ∪ {p - o : o in
 * offs, o <= p}, a key on both a column and a diagonal once, in one softmax.
 * Outputs O [Hq, Nq, D], L [Hq, Nq]; a row with no key gets O = 0, L = -inf.
 * Nothing of size Nq x Nk exists: each row's keys are found from the lists
 * (time proportional to the pairs kept). */
/* ---- trainable sparse attention, C selections (issue 14, session 3) ----
 * trainable.select (cards dsv, sparsifiner, spark_transformer): inputs q [Hq,
 * Nq, D], k [Hkv, Nk, D] (Hkv divides Hq), opt.wq and opt.wk [Hq, D, r]
 * (both or neither); params k, mode, cap, split, group, causal. Features of
 * query head h (kv head h / (Hq/Hkv)): with weights qf_t = q_t . Wq[h], kf_j =
 * k_j . Wk[h]; without, the first r = split channels (split 0 or > D: all D).
 * z[t, j] = qf_t . kf_j in float64, unscaled. Row t sees keys j < vis(t) =
 * min(Nk, t + Nk - Nq + 1) (causal) or Nk.
 *   mode 0: entries of `group` consecutive rows g0..g1; s_j = sum over the
 *   entry's rows of z[t, j] for j < vis(g1); the entry keeps the top
 *   min(k, vis(g1)) keys by s (ties: the lower j); row t keeps those j <
 *   vis(t).
 *   mode 1 (group must be 1; Spark's statistical top-k): m = vis(t); k >= m
 *   keeps every visible key; else theta = mean + std . inv_Phi(1 - k/m) over
 *   the m scores (population std, inv_Phi by Acklam's approximation) and the
 *   row keeps z > theta; with cap > 0 and more than cap kept, the cap largest
 *   (ties: the lower j).
 * Outputs the index lists of attn.token_sparse (rows_per_entry 1): row_ptr
 * i32 [Hq, Nq + 1] (global offsets, compact, heads in order) and col i32
 * [bound], bound = Hq . sum_t b_t with b_t = min(k, vis(last row of t's
 * entry)) (mode 0) or min(cap, vis(t)) (mode 1, cap > 0; vis(t) without a
 * cap); each row's keys ascending; col past row_ptr[Hq - 1, Nq] is -1 (the
 * caller narrows). Memory: the lists and O(Nk) scratch per thread. */
/* trainable.cells (card sea, steps 3-4): input a [H, N, T_M] (the estimated
 * compressed map of causal self-attention; row t has width w = t + 1);
 * param k. Row t's budget b = min(H . T_M, max(1, floor(H . k . T_M / w +
 * 0.5))) cells, the b largest a[h, t, c] over all heads and cells (ties: the
 * lower h . T_M + c). Nearest resize: key j < w lies in cell c(j) =
 * clamp(floor((j + 0.5) / w . T_M - 1e-4), 0, T_M - 1) (float64); row t of
 * head h keeps the keys whose cell is kept for head h. Outputs the index
 * lists of attn.token_sparse: row_ptr i32 [H, N + 1], col i32 [bound], bound
 * = sum_t min(H . w, b . (ceil(w / T_M) + 1)), rows ascending, col past
 * row_ptr[H - 1, N] is -1. Time: O(H . T_M) per row plus the kept keys. */

/* ---- video / DiT, session 3 (issue 15) ----
 * ipar.rectify (card rectified_spaattn, steps 1-3 and 5-8 with IPAR's
 * isolated text pooling, the Hunyuan path): inputs q [Hq, N, D], k, v [Hkv,
 * N, D] (self-attention, non-causal), a block mask M (the four arrays; bq =
 * bk = b set from it) and o_sparse [Hq, N, D] (attn.block_sparse over M);
 * params scale, gapr, video0, n_video. The video tokens are [video0, video0
 * + n_video) (video0 and n_video multiples of b, n_video >= b), in nbv =
 * n_video / b whole blocks; every other token is text. For head h (kv head
 * g, mask head h / (Hq/Hm)) and video query block I (global block I0 + I,
 * I0 = video0 / b):
 *   q̄_I, e^q_I = mean and mean |q - q̄_I| per channel over I's rows;
 *   k̄_J, e^k_J, v̄_J likewise over video key block J (kv head g);
 *   logits: s_J = scale·q̄_I·k̄_J + log b (video block J: IPAR, it stands
 *   for b keys), s_t = scale·q̄_I·k_t (text key t: not pooled, its own
 *   logit); P over [s_J ; s_t] (one softmax); the text entries merge into
 *   one always-kept entry P_text = Σ_t P_t;
 *   GAPR (raw dot products): trusted_J = |q̄·k̄_J| > |e^q·k̄_J| + |q̄·e^k_J|
 *   (gapr = 0: every J trusted);
 *   J restored when M keeps no pair of (I0 + I, I0 + J) and trusted_J;
 *   r_I = P_text + Σ_{J not restored} P_J, restored_I = Σ_{J restored} P_J,
 *   N_I = Σ_{J restored} P_J·v̄_J; O_i = r_I·o_sparse_i + N_I for i in I.
 * Text query rows keep o_sparse (the method keeps them dense). Outputs O
 * [Hq, N, D], r and restored [Hq, nbv] (r + restored = 1). With no text
 * tokens this is correct.rectify (non-causal, bq = bk). Memory O(N·D).
 *
 * quant.attn_block (PAROAttention's quantised P·V, emulated): inputs q
 * [Hq, Nq, D], k, v [Hkv, Nk, D] and a block mask (as attn.block_sparse;
 * partial blocks use their token bits); params bq, bk (from the mask),
 * scale, bits. qmax = 2^(bits-1) - 1. For row i, s_ij = scale·q_i·k_j over
 * its kept keys; m_i = max_j s_ij, l_i = Σ_j exp(s_ij - m_i) (the f32 P
 * before quantisation, as a FlashAttention kernel sums it).
 *   P codes per (row i, kept key block J): μ_iJ = max over the block's kept
 *   keys of s_ij, p_ij = round(qmax·exp(s_ij - μ_iJ)) in 0 .. qmax, scale
 *   σ_iJ = exp(μ_iJ - m_i) / qmax (the codes do not depend on the running
 *   max, so a one-pass kernel gets the same integers);
 *   V codes per (kv head, key block J, channel c), once for all rows:
 *   t_Jc = max_{j in J} |v_jc| / qmax in f32 (1 when 0), w_jc =
 *   clamp(roundf(v_jc / t_Jc), -qmax, qmax) (quant.fake's f32 rule);
 *   a_iJc = Σ_{kept j in J} p_ij·w_jc, exact integers (int32);
 *   O_ic = Σ_J σ_iJ·t_Jc·a_iJc / l_i; lse_i = m_i + log l_i.
 * Emulated precision: the integer products and their sums are exact (as an
 * INT8/INT4 MMA with int32 accumulators); the scores, softmax statistics
 * and the scale products are f32 (float64 in ref). bits = 16: no
 * quantisation, O = Σ_j exp(s_ij - m_i)·v_j / l_i (attn.block_sparse). Q and
 * K are quantised by the caller (quant.fake). A row with no kept key gives
 * O = 0, lse = -inf. Outputs O [Hq, Nq, D], lse [Hq, Nq]. */
/* ---- hip tree search (issue 16, session 3) ----
 * select.hip_tree (card hip_attention, v1.1 binary tree; family tsel):
 * inputs q [Hq, Nq, D], k [Hkv, Nk, D]; params bq, bk, kb, window, causal,
 * qstride, scale. R = ceil(Nq/bq) query blocks, C = ceil(Nk/bk) key blocks;
 * query block r holds rows i0 = r.bq .. i1 = min((r+1).bq, Nq) - 1, key
 * block c the keys c.bk .. min((c+1).bk, Nk) - 1. Causal: vis = min(C,
 * floor((i1 + Nk - Nq)/bk) + 1), the window blocks are w0 = max(0,
 * floor((i0 + Nk - Nq - window)/bk)) .. vis - 1, the tree spans [0, T) with
 * T = min(w0, vis). Not causal: no window, T = C. Tree: T <= kb keeps all T
 * blocks; else kb groups [g.T/kb, (g+1).T/kb) (integer division), then while
 * some group spans more than one block, every such group [a, b] splits into
 * [a, m] and [m+1, b] with m = a + floor((b - a + 1)/2) - 1 (the left half
 * holds floor(size/2) blocks, as the v1.1 draft), one-block groups carry over, and
 * the kb halves of largest score are kept (ties: smaller a). A half's score
 * is scale . max over rows f, f + qstride, ... <= i1 (f = min(i0 + qstride -
 * 1, i1): qstride 2 reads the draft's q[1::2]) and keys of block a
 * of q_i . k_j (query head h reads kv head h / (Hq/Hkv)), computed when the
 * half is made (and for one-block initial groups when they are made).
 * Outputs keep u8 [Hq, R, C] (1: a kept tree block or window block) and
 * evals i32 [Hq, R] (nodes scored: 2 per split plus the one-block initial
 * groups). Only the
 * representatives of visited nodes are scored: about 2.kb.log2(T/kb) block
 * scores per query block, not Nq x Nk. */
/* ---- clustering and routing for the model-level cards (issue 17, session 3) ----
 * The inner loops of sparselab.tokenprune's DPC-kNN and sparselab.moe's
 * k-means router and gating, as ops. float64 arithmetic in every backend
 * (the results are index sets: the kernels sum in the same order so that
 * ref, cpu and cuda agree exactly on non-degenerate inputs).
 *
 * cluster.dpc (DPC-kNN, card token_merge_recycle; SparseVLM's
 * cluster_and_merge): input x [n, D] (n >= 1); param c, c' = min(c, n).
 * D_ij = sqrt(sum_t (x_it - x_jt)^2 / D) (sum in t order); rho_i = exp(-(sum
 * of the c' smallest D_ij^2 over j, self included, added in ascending
 * order) / c'); j is denser than i iff rho_j > rho_i or (rho_j == rho_i and
 * j < i); delta_i = min D_ij over denser j, or max_ij D_ij when none;
 * gamma_i = rho_i . delta_i; centres = the c' rows of largest gamma (ties:
 * lower index), ascending. Outputs assign i32 [n] (row i's cluster: the
 * index into centres of its nearest centre, ties to the lower one; a centre
 * is in its own cluster) and centres i32 [c']. ref and cpu hold the n x n
 * distances (8 n^2 bytes: n is the number of candidate tokens, a share of
 * the pruned ones), cuda recomputes them (O(n) device memory, O(n^2 D c')
 * time).
 *
 * cluster.kmeans (Lloyd; the router of card moe_split_route): inputs x [n,
 * D], init [k, D] (k >= 1); param iters. Centroids C start at init (float64);
 * each round assigns every row to argmin_e |x - C_e|^2 (sum in dim order;
 * ties: lower e), then C_e = the mean of its rows (summed in row order) —
 * a cluster without rows keeps its centroid. Outputs centroids f32 [k, D]
 * (C after iters rounds) and assign i32 [n] (the nearest centroid of C).
 *
 * cluster.route (MoE gating of FFN units): inputs h [T, H], logits [T, E],
 * expert i32 [H] (each unit's expert, in [0, E)); params k, softmax, scale.
 * Per row the min(k, E) experts of largest logit (ties: lower id) are kept;
 * weight w_e = scale (softmax = 0) or scale . exp(l_e - max kept l) / (sum
 * over kept e', in id order, of exp(l_e' - max)). y[t, j] = (float)(h[t, j] .
 * w_expert[j]) when expert[j] is kept and its weight is > 0, else 0 (scale = 0
 * zeroes everything). Output y [T, H].
 *
 * act.stat_topk (statistical top-k, card topk_activation step 2; Spark, HF
 * Gemma3nTextMLP._gaussian_topk): input x [T, m]; param sparsity s in (0,
 * 1). Per row mu = mean, sigma = population std (float64, two passes), theta
 * = mu + sigma . Phi^-1(s) (the standard-normal quantile, by bisection on
 * erfc, the same value in every backend); y = max(x - theta, 0) in float64
 * rounded to f32: a shifted soft threshold (kept values are reduced by
 * theta). About (1 - s) . m entries stay nonzero when a row is roughly
 * Gaussian.
 *
 * mm.out_sparse (output-sparse mode of card act_sparse_matmul, CATS/CHESS
 * "vmmsp"): inputs x [T, K], w [N, K] (row-major: row i of W contiguous),
 * sel i32 [T, S] (per activation row the outputs to compute, each in [0, N)
 * or -1 = skipped; a repeat computes the same value again), opt.gate [T, N]
 * (absent: 1). y [T, N]: y[t, i] = (x[t] . w[i]) . gate[t, i] for i in
 * sel[t] (the dot in float64 in ref, f32 elsewhere; the gate product in
 * f32), 0 elsewhere. Only the selected rows of w are read. FLOPs: 2 K per
 * listed entry (+1 with a gate). Inputs are not scanned; y is checked. */
/* ---- decode: quantised pages (issue 13, session 3) ----
 * page.attend_q (page.attend over low-bit pages that replace the f32 K, and
 * optionally V): inputs q [Hq, R, D] float; kq u8 codes [Hkv, N, Dk] with
 * Dk = D (kbits 8) or ceil(D/2) (kbits 4: channel c in byte c/2, low nibble
 * for even c, high nibble for odd c); kscale float [Hkv, ceil(N/P), D] (per
 * page and channel); v either float [Hkv, N, D] or u8 codes laid out as kq
 * with vbits; pages i32 [Hs, R, m] (as page.attend); opt.vscale [Hkv,
 * ceil(N/P), D], required exactly when v is u8. Params page P, n, causal,
 * split, scale (as page.attend), kbits, vbits (4 or 8). A code c of b bits
 * stands for the symmetric value (c - 2^(b-1)) . scale[page, channel]
 * (8 bits: c - 128; 4 bits: nibble - 8), so key j of kv head g is
 * k'[j, ch] = (kq[g, j, ch] - 2^(kbits-1)) . kscale[g, j / P, ch]. Outputs
 * exactly those of page.attend over the dequantised k' (and v'). Codes are
 * not range-checked (every byte dequantises to a finite value); a
 * non-finite scale in a listed page makes the call fail.
 * Asymmetric codes (issue 13, session 4): opt.kzero [Hkv, ceil(N/P), D]
 * float (zero points, per page and channel) makes the key codes unsigned:
 * k'[j, ch] = kq[g, j, ch] . kscale[g, j / P, ch] + kzero[g, j / P, ch]
 * (min/max quantisation: zero = the page-channel minimum, scale = range /
 * (2^b - 1)); opt.vzero does the same for u8 values (given only with u8 v).
 * A non-finite zero point in a listed page fails the call as a scale does. */

/* ---- trainable sparse attention, Performer estimate (issue 14, session 3b) ----
 * trainable.performer (card sea, the Performer stand-in of steps 1-2): inputs
 * q [Hq, N, D], k [Hkv, N, D] (Hkv divides Hq; causal self-attention), proj
 * [m, D] (random features w_f); param t_m. With s = D^(-1/4) and x' = s . x:
 * e_f(x) = w_f . x' - |x'|^2 / 2; phi(q_t) = exp(e(q_t) - max_f e_f(q_t)) /
 * sqrt(m), phi(k_j) = exp(e(k_j) - E_g) / sqrt(m), E_g the largest e_f(k_j)
 * of kv head g (common factors, removed by the normalisation); p_j =
 * phi(q_t) . phi(k_j) for j <= t. Output a float [Hq, N, T_M]: a[h, t, c] =
 * sum of p_j over the keys j <= t with sl__ts_cell(j, t + 1, T_M) = c,
 * divided by sum_{j <= t} p_j (a zero row when that sum is 0). Computed by
 * float64 prefix sums of phi(k) over keys: O((Hq + Hkv) . N . m . D) for
 * the features plus O(Hq . N . T_M . m); memory O(Hkv . N . m) doubles. */

/* ---- issue 20, session 3c: flexprefill's query-aware cover in C ----
 * select.cover: x [H, C] or [H, R, C] (R = 1 for [H, C]), masses >= 0 or
 * -inf, opt.heads (u8 [H]: a head with 0 selects nothing), opt.base (u8
 * of x's shape: its non-zero entries are kept too, so a caller joins its
 * own keep without a pass of its own); params limit, extra (0 or 1),
 * causal. Unlike the row selectors it
 * selects per head over all R·C entries of the head together (flat index
 * r·C + c). Taking part: finite entries, and with causal only those with
 * c <= r + (C - R) (the causal block triangle; the others are never kept
 * and add nothing). Order: larger first, ties by lower flat index first.
 * cnt = the number of leading entries of the order whose running sum,
 * added in float64 in that order, stays <= limit; the first min(cnt +
 * extra, entries taking part) entries of the order are kept -> u8 keep of
 * x's shape. FlexPrefill's query-aware rule with limit = γ · n_blocks
 * (extra 1: the paper's covering set, extra 0: score_cover_idx). The
 * cuda kernel sums block-wide: a running sum within rounding of limit may
 * cut one entry apart from ref/cpu. */

/* ---- Spark's FFN predictor (issue 17, session 4) ----
 * act.spark_score (card topk_activation step 4): inputs x [T, D], w1 [N, D]
 * and opt.w3 [N, D] (the FFN's gate and up weights); param r: the predictor
 * reads only the first r' input dims, r' = ceil(D / 2) for r = 0, min(r, D)
 * otherwise. g = sum_{i < r'} x[t, i] . w1[j, i], and z[t, j] = g without
 * w3, |silu(g) . u| with it (u the same partial dot with w3, silu in
 * float64): the cost is 2 . T . N . r' flops per weight instead of the FFN's
 * 2 . T . N . D. Output z f32 [T, N]. The top-k of z per row (act.topk, by
 * value) are the units then computed exactly on the full row (mm.out_sparse
 * for w1, w3; mm.act_sparse for w2): "select on a partial-dimension score,
 * compute on the full row". ref sums in float64; cpu runs OpenBLAS sgemm with
 * K = r' (f32 sums, then silu . u in float64); cuda one thread per entry with
 * a float64 sum. Memory: z and, with w3, one f32 chunk of u per thread. */
/* ---- issue 20, session 4: estimator loops in C (branch s4-est) ----
 * reduce.far: x [H, R, C] (probabilities or other masses; -inf entries are
 * read as they are), params lo, block, back, row_pos0 (-1: C - R) -> f64
 * [H, R]: y[h, r] = sum over keys j in [lo, hi_r) of x[h, r, j], with
 * pos = row_pos0 + r and hi_r = min(pos + 1, C, (floor(pos / block) - back)
 * . block) (an empty range sums to 0), added in float64 in key order (every
 * backend the same order: the results agree exactly). The mass of row r
 * outside a streaming pattern of lo sink keys and the back + 1 blocks of
 * the local window ending at the row's block (Elastic Attention's oracle
 * router, back = ceil(local_window / block) - 1).
 * reduce.columns64: x [H, R, C] -> f64 [H, C], y[h, c] = sum over rows r
 * (added in float64 from 0 in row order on every backend: exact agreement)
 * of x[h, r, c]; no params. reduce.columns without its rounding to f32:
 * a caller that ranks the sums (Token Sparse Attention's importance) keeps
 * their order.
 * reduce.kth: x [H, R, C] (finite or -inf), rank and limit i32 [R] with
 * 1 <= rank[r] <= limit[r] <= C -> [H, R]: y[h, r] = the rank[r]-th
 * smallest (1-based, equal values counted one by one) of x[h, r, 0 ..
 * limit[r]) — exactly one of the row's entries. Top-θ's calibration
 * quantile (torch.quantile with interpolation "lower").
 * select.chunks: qp [Hq, R, d] (pooled query blocks), kp [Hk, C, d] (pooled
 * chunk keys), starts i32 [C] (0 first, strictly increasing, < n); params
 * n, block b, local_tokens L, topk, ctx, globals, splice -> row_ptr i32
 * [R + 1], col i32 [cap] (cap = sum of the rows' capacities below; the
 * entries past row_ptr[R] are -1). Query block r: A = min((r+1).b, n),
 * lo = max(0, A - L); nothing listed when r.b >= ctx or lo = 0; budget =
 * lo when A <= topk, else topk - L (nothing when <= 0); capacity min(budget,
 * lo). Scores of the chunks with start < lo: s_c = sum_e q_e . k_ce, q_e =
 * (sum_h qp[h, r, e]) / Hq, k_ce = (sum_h kp[h, c, e]) / Hk, heads and
 * channels added in order in float64 (cuda may contract the products into
 * fused multiply-adds: its scores can differ in the last bit). Chunks by
 * score descending, ties: the later chunk first; each gives its last
 * tokens before min(its end, lo) until the budget is spent. The tokens
 * sorted ascending; splice = 1 drops the first globals of them; then the
 * tokens < globals are left out. DHSA's per-block top-k over upsampled
 * chunk scores (card dhsa, step 4). */
/* ---- grouped-GEMM MoE executor (issue 17, session 4) ----
 * mm.moe (card moe_split_route, executor steps 1-4): x [T, D]; w1, w3, w2t
 * f32 [H, D] (gate, up, and the transposed down projection, W2^T, with the
 * H units ordered so that expert e owns rows offs[e] .. offs[e+1]); offs i32
 * [E + 1], 0 = offs[0] <= ... <= offs[E] = H (empty experts allowed); route
 * i32 [T, k]: the experts of token t (-1: an unused slot; an expert listed
 * twice counts twice); opt.rw f32 [T, k]: the routing weights (absent: 1).
 * y [T, D]: y[t] = sum_j rw[t, j] . sum_{i in expert route[t, j]}
 * silu(x[t] . w1[i]) . (x[t] . w3[i]) . w2t[i]. The executors sort the
 * (token, slot) pairs by expert (stable), gather each expert's x rows,
 * run its products as GEMMs (cpu: OpenBLAS sgemm per (expert, 64 rows,
 * 256 units / 512 outputs) task; cuda: one launch per stage over a table of
 * (expert, 8-pair) tiles) and add rw . y_pair back per token in slot order.
 * ref is the per-token loop in float64. FLOPs: per routed pair 6 |e| D
 * + 4 |e| + 2 D. */
/* ---- issue 20, session 4b: xattention's per-row selection in C (branch s4-est2) ----
 * select.row_cover: x [H, R, C] (or [H, C], R = 1) finite block scores,
 * params tau, mode -> u8 keep of x's shape. Per row r, lim = r + (C - R)
 * clipped to C - 1 (no visible block when lim < 0: nothing kept); sums and
 * comparisons in float64, orders by value descending, ties lower index
 * first. mode 0 (the XAttention card): tau >= 1 keeps blocks 0 .. lim;
 * otherwise total = sum of x[0 .. lim] added in index order, blocks 0 and
 * lim kept, cum = x[0] (+ x[lim] when lim > 0), then the blocks 1 .. lim - 1
 * in the order: while cum < tau . total the block is kept and cum += its
 * score (the crossing block included). mode 1 (mit-han-lab/x-attention,
 * xattn/src/utils.py find_blocks_chunked in the single-chunk prefill, then
 * Xattention_prefill's tril and diagonal; needs R = C): y[c] = x[c] for c
 * <= r, 0 beyond; req = tau . (sum of y in index order); the positions t =
 * 0 .. C - 1 hold r, then the other blocks in the order; cum_t = the sum,
 * added in order, of [0, y[r], y[o_0], y[o_1], ...] before position t;
 * position t keeps its block when cum_t < req, else block 0; then the
 * blocks > r are cleared and block r set. One row per work item (cpu
 * qsort; cuda one thread per row, repeated selection of the next block). */
/* ---- issue 20, session 5: flexprefill's slash pooling in C (branch s5-est) ----
 * reduce.segments64: x [H, C] (finite or -inf; reduce.diagonals' output)
 * -> f64 [H, G], G = ceil(C / size); params size, from_end. Segment g
 * covers columns [g . size, min(C, (g + 1) . size)), or with from_end
 * [max(0, C - (G - g) . size), C - (G - 1 - g) . size) (the short segment
 * first); y[h, g] = the sum of its entries added in float64 from 0 in
 * column order (every backend the same order: exact agreement).
 * FlexPrefill's slash profile pooled per offset block (from_end: the
 * reference's torch_bhn_sumpool of the diagonals counted from the far
 * end). */
/* ---- issue 20, session 5: token_sparse_attention's importance and budget in C (branch s5-est) ----
 * select.token_budget: x [H, W, C] finite (the last W queries' softmax
 * probabilities over all C keys, score.last_q), W < C; params ks, coverage,
 * m_min -> idx i32 [H, C], info i32 [2]. With P = C - W prefix keys,
 * half = floor(ks / 2), every sum added in float64 from 0 in the order
 * named: raw[h, j] = (sum over rows r of x[h, r, j]) / W for j < P;
 * sm[h, j] = (sum over i = max(0, j - half) .. min(P - 1, j + half) of
 * raw[h, i]) / ks; tot_h = sum over j of sm[h, j]; imp[h, j] = sm[h, j] /
 * tot_h (0 when tot_h <= 0); g[j] = sum over heads h of imp[h, j] / H;
 * gt = sum over j of g[j]; gs = g / gt (0 when gt <= 0) sorted ascending;
 * count = the number of leading gs whose running sum stays < coverage.
 * B = P when count = 0, else max(m_min, P - count - 1), and P when that is
 * >= P (the identity). info = {count, B}. Row h of idx: when B < P the B
 * prefix keys with the largest imp[h, j] (ties: the lower j), then P ..
 * C - 1, ascending, then -1; when B = P, 0 .. C - 1. Token Sparse
 * Attention's steps 1-4 (the recipe's float64 arithmetic, operation for
 * operation: the same lists). cpu: a quickselect for the budget and each
 * head's cut (linear), cuda: one thread for the count and one per head for
 * the cut (heapsort in scratch). */
/* ---- issue 20, session 5: top_theta's per-row threshold lookup in C (branch s5-est) ----
 * select.theta_rows: keys i32 [H, L] (per head the calibrated row lengths,
 * strictly ascending, then -1 padding only), vals [H, L] finite; params
 * rows, r0, step, k -> theta f32 [H, rows]. Row i has length r = r0 +
 * step . i; theta[h, i] = -1e30 when r <= k or head h has no key, else the
 * value of the head's key nearest r (equally near: the shorter key). Top-θ's
 * lookup of θ[head, row length] (kostyanoob/top-theta-attention
 * get_threshold): one ascending walk per head (O(rows + L)). */

/* ---- masks ----------------------------------------------------------------
 * A mask says which (query row, key) pairs attention keeps, per mask head.
 * Three materialised forms (block, index, dense bits) and one lazy form
 * (pattern terms); the block form is the one executors run.
 *
 * Block form: block sizes (bq, bk); query block r covers rows [r·bq, (r+1)·bq)
 * clipped to Nq, key block c covers keys [c·bk, (c+1)·bk) clipped to Nk.
 *   row_ptr  i32 [Hm, n_qb + 1]  CSR offsets per head (into col_idx of that head:
 *                                head h's entries are row_ptr[h, r] .. row_ptr[h, r+1])
 *   col_idx  i32 [nnz]           sorted key blocks of each (head, query block)
 *   part     i32 [nnz]           -1: every pair of the (clipped) block is kept;
 *                                else an index into bits (a partial block)
 *   bits     u8  [n_part, bq, bk] 1 = pair kept (row-major inside the block)
 * Hm is 1 (shared by all heads) or divides Hq (query head h uses mask head
 * h / (Hq / Hm)). Masks carry causality themselves: executors apply nothing
 * but the mask. nnz and n_part may be 0 (tensors of length 0 are then shape [0]).
 * Every mask made by the functions below is canonical: a listed block keeps
 * at least one pair, part is -1 exactly when the clipped block is all kept,
 * and a partial block's bits are 0 outside the clipped area (entries of one
 * query-block row with equal bits may share one part). Partial blocks
 * carry exact token bits, so any token-level rule executes exactly.
 * Row r sits at query position i = Nk - Nq + r; key j at position j. */
typedef struct sl_mask {
    int n_heads;
    int64_t n_q, n_k;
    int bq, bk;
    int64_t n_qb, n_kb;
    sl_tensor row_ptr, col_idx, part, bits;
} sl_mask;

/* Analytic patterns. A pattern is a union of terms materialised at a size.
 * Notation: i query position, j key position, u = max(1, unit) (a
 * block-level rule's block size; tokens when 0 or 1), I = floor(i/u),
 * J = floor(j/u), h the mask head. A term keeps its rule ∩ {j <= i} when it
 * is causal (causal = 1, or causal = 0 and the kind is causal by default:
 * every kind except FULL and NEIGHBORHOOD) and its rule alone when causal = -1.
 *   FULL          every pair.
 *   CAUSAL        every pair (so j <= i).
 *   WINDOW        a = w >= 1, b = dilation r (0 means 1), unit: d = I - J,
 *                 0 <= d < w·r and d % r == 0 (unit 1, r 1: 0 <= i - j < w,
 *                 w counting the query itself; card sliding_window).
 *   SINK          a = s >= 0, unit: J < s.
 *   STRIDED       a = stride >= 1, b = 0 absolute / 1 relative, unit:
 *                 (J + o_h) % a == 0, or (I - J + o_h) % a == 0 when
 *                 relative; o_h = idx[h] when idx is given (n_idx == n_heads),
 *                 else offset + h·head_step (S2-Attention's per-head shards:
 *                 unit = block, head_step = max(1, stride / heads)).
 *   BLOCK_DIAG    a = size >= 1: floor(i/a) == floor(j/a).
 *   POWER         unit: d = I - J is 0 or a power of two (PowerAttention).
 *   TRIANGLE      a = n_init, b = n_local, c = n_last (all >= 0; TriangleMix):
 *                 j < a, or 0 <= i - j < b, or i >= Nk - min(c, Nk - 1).
 *   NEIGHBORHOOD  Generalized Neighborhood Attention (NATTEN) on a token grid:
 *                 n_dims in 1..3, grid[d] >= 1 (row-major, last dim fastest;
 *                 frames × height × width; in 1-D grid[0] = 0 means Nk),
 *                 prod(grid) <= Nk; per dim kernel k >= 1, stride s in [1, k]
 *                 (0 means 1), dilation δ >= 1 (0 means 1), dim_causal.
 *                 Both positions must lie in the grid; then per dim, with
 *                 coordinates x (query) and y (key): x % δ == y % δ, and with
 *                 x' = x/δ, y' = y/δ, X' = ceil((X - x % δ) / δ):
 *                   causal dim: L = min(floor(x'/s)·s + s - 1, X' - 1);
 *                               y' <= x' and L - y' < k;
 *                   otherwise:  L = min(floor(x'/s)·s + floor(s/2), X' - 1),
 *                               lf = floor(k/2), rt = k - 1 - lf,
 *                               c = min(max(L, lf), X' - 1 - rt);
 *                               c - lf <= y' <= c + rt.
 *   DOCUMENT      idx = segment starts (strictly increasing, in [0, Nk));
 *                 seg(p) = number of starts <= p (positions before the first
 *                 start are segment 0); b = earlier segments also seen (>= 0):
 *                 0 <= seg(i) - seg(j) <= b.
 *   SEGMENT_SINK  idx = segment starts as for DOCUMENT, a = k >= 0:
 *                 j - start(seg(j)) < k (the first k tokens of every segment,
 *                 segment 0 starting at 0; BlindSight).
 *   GLOBAL_TOKENS idx = positions G: i ∈ G or j ∈ G (rows and columns on).
 *   DENSE_ROWS    R = idx ∪ [0, b) ∪ [Nk - a, Nk) (a, b >= 0): i ∈ R.
 *   DENSE_COLS    C = idx ∪ [0, b) ∪ [Nk - a, Nk): j ∈ C.
 *   VERTICAL      idx = key positions (usually per head): j ∈ idx.
 *   SLASH         idx = diagonal offsets, a = width (0 means 1):
 *                 o <= i - j < o + a for some offset o.
 *   DROP          rate, q_rate in [0, 1] (probability a key, a query is
 *                 dropped), seed; a = 1: one draw for every head. Keeps (i, j)
 *                 iff sl_mask_drop_draw(seed, h', 1, i) >= q_rate and
 *                 sl_mask_drop_draw(seed, h', 0, j) >= rate, h' = a == 1 ? 0 : h.
 * Lists: idx[0..n_idx) serves every head; with idx_ptr (n_lists + 1 offsets
 * from 0 to n_idx, n_lists == n_heads) head h's list is
 * idx[idx_ptr[h] .. idx_ptr[h+1]). Positions lie in [0, Nk); the caller keeps
 * the arrays alive during the call only. */
typedef enum sl_pattern_kind {
    SL_PAT_FULL = 0,
    SL_PAT_CAUSAL,
    SL_PAT_WINDOW,
    SL_PAT_SINK,
    SL_PAT_STRIDED,
    SL_PAT_BLOCK_DIAG,
    SL_PAT_POWER,
    SL_PAT_TRIANGLE,
    SL_PAT_NEIGHBORHOOD,
    SL_PAT_DOCUMENT,
    SL_PAT_SEGMENT_SINK,
    SL_PAT_GLOBAL_TOKENS,
    SL_PAT_DENSE_ROWS,
    SL_PAT_DENSE_COLS,
    SL_PAT_VERTICAL,
    SL_PAT_SLASH,
    SL_PAT_DROP,
    SL_PAT__COUNT
} sl_pattern_kind;

#define SL_PATTERN_MAX_DIMS 3

/* One term; fields a kind does not use stay zero (designated initialisers:
 * {.kind = SL_PAT_WINDOW, .a = 64}). */
typedef struct sl_pattern_term {
    sl_pattern_kind kind;
    int64_t a;                     /* first size (table above) */
    int64_t b, c;                  /* second and third sizes */
    int causal;                    /* 0: the kind's default; 1: ∩ {j <= i}; -1: the rule alone */
    int64_t unit;                  /* tokens per unit of block-level rules (0 means 1) */
    int64_t offset, head_step;     /* strided residues */
    const int64_t *idx;            /* list: positions, offsets, segment starts or per-head residues */
    int64_t n_idx;
    const int64_t *idx_ptr;        /* NULL, or n_lists + 1 offsets into idx: one list per head */
    int n_lists;
    double rate, q_rate;           /* drop */
    uint64_t seed;                 /* drop */
    int n_dims;                    /* neighborhood */
    int64_t grid[SL_PATTERN_MAX_DIMS], kernel[SL_PATTERN_MAX_DIMS];
    int64_t stride[SL_PATTERN_MAX_DIMS], dilation[SL_PATTERN_MAX_DIMS];
    int dim_causal[SL_PATTERN_MAX_DIMS];
} sl_pattern_term;

/* "window", "segment_sink", ...; "unknown" out of range. */
const char *sl_pattern_name(sl_pattern_kind k);
/* The kind called name, or -1. */
int sl_pattern_from_name(const char *name);
/* 1 when the term's rule differs between heads (strided with idx or
 * head_step, lists with idx_ptr and n_lists > 1, drop without a = 1). */
int sl_pattern_head_dependent(const sl_pattern_term *t);
/* Materialises the union of terms at (n_q, n_k, bq, bk) for n_heads heads.
 * The mask has n_heads heads when some term depends on the head, else one
 * head shared by all. n_terms = 0 gives the empty mask. Blocks are classified
 * empty / full / partial from their corners where a kind has a closed form
 * and evaluated pair by pair otherwise. SL_EARG names the term and field out
 * of range; SL_ESHAPE for sizes; SL_EINTERRUPT when interrupted. */
sl_status sl_mask_from_pattern_heads(sl_ctx *ctx, const sl_pattern_term *terms, int n_terms, int n_heads,
                                     int64_t n_q, int64_t n_k, int bq, int bk, sl_mask *out);
/* The same with n_heads = 1: head 0 of a head-dependent rule (per-head lists
 * must then hold one list). */
sl_status sl_mask_from_pattern(sl_ctx *ctx, const sl_pattern_term *terms, int n_terms,
                               int64_t n_q, int64_t n_k, int bq, int bk, sl_mask *out);
/* DROP's draw for (seed, head, which, position): a uniform number in [0, 1),
 * x = mix(seed), then x = mix(x + v) for v = head, which, position, where mix
 * is one splitmix64 step (add 0x9E3779B97F4A7C15, then its finaliser); the
 * draw is the top 53 bits of x over 2^53. Pure: no state. */
double sl_mask_drop_draw(uint64_t seed, int64_t head, int which, int64_t position);

/* 1 when (head, row, key) is kept (0 outside the sizes). */
int sl_mask_get(const sl_mask *m, int head, int64_t row, int64_t key);
/* Kept pairs of mask head h. */
int64_t sl_mask_kept(const sl_mask *m, int head);
/* Kept pairs / causal pairs (all pairs when causal = 0), averaged over heads. */
double sl_mask_density(const sl_mask *m, int causal);
/* SL_EFORMAT/SL_ESHAPE when the arrays are not a well-formed block mask. */
sl_status sl_mask_validate(sl_ctx *ctx, const sl_mask *m);
void sl_mask_release(sl_mask *m);
/* The seven inputs of attn.block_sparse for this mask (no new references). */
void sl_mask_inputs(const sl_mask *m, const sl_tensor *q, const sl_tensor *k, const sl_tensor *v, sl_tensor in[7]);

/* Algebra on materialised block masks. Operands have the same n_q, n_k, bq
 * and bk (SL_ESHAPE otherwise: resize first) and equal head counts or one
 * head (broadcast). Results are new canonical masks the caller releases.
 * union: a ∪ b; intersect: a ∩ b; difference: a ∖ b (kept by a, not by b). */
sl_status sl_mask_union(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, sl_mask *out);
sl_status sl_mask_intersect(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, sl_mask *out);
sl_status sl_mask_difference(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, sl_mask *out);
/* Per-head assignment: out's heads are the heads of masks[0], then of
 * masks[1], ... (a one-head mask gives one head); all the same sizes. */
sl_status sl_mask_assign(sl_ctx *ctx, const sl_mask *masks, int n, sl_mask *out);
/* Permutation of token positions (token permutation before a tiled
 * executor). perm_q is a permutation of [0, n_q) and perm_k of [0, n_k);
 * perm_k NULL means perm_q (then n_q == n_k). out keeps (h, r, c) iff m keeps
 * (h, perm_q[r], perm_k[c]): row r of the permuted problem is original row
 * perm_q[r]. Causality is whatever m kept, i.e. tested on original positions.
 * permute_inverse undoes it: permute_inverse(permute(m, p), p) == m. Blocks
 * stay (bq, bk). SL_EARG when a perm is not a permutation. */
sl_status sl_mask_permute(sl_ctx *ctx, const sl_mask *m, const int64_t *perm_q, const int64_t *perm_k, sl_mask *out);
sl_status sl_mask_permute_inverse(sl_ctx *ctx, const sl_mask *m, const int64_t *perm_q, const int64_t *perm_k,
                                  sl_mask *out);
/* Kept pairs, over all heads, whose ORIGINAL key position is after the
 * original query position: perm_k[c] > (n_k - n_q) + perm_q[r] (NULL perms:
 * the identity, perm_k NULL: perm_q). 0 means causal in original order.
 * Perms must be valid (see sl_mask_permute). */
int64_t sl_mask_causal_violations(const sl_mask *m, const int64_t *perm_q, const int64_t *perm_k);
/* The same pairs in blocks of (bq, bk) (exact). */
sl_status sl_mask_resize(sl_ctx *ctx, const sl_mask *m, int bq, int bk, sl_mask *out);
/* Token → block coarsening: every (bq, bk) block holding at least one kept
 * pair becomes a full block (what a block-sparse kernel without token bits
 * executes); out ⊇ m. */
sl_status sl_mask_coarsen(sl_ctx *ctx, const sl_mask *m, int bq, int bk, sl_mask *out);

/* A method's semantic mask beside the mask its kernel executes. Densities are
 * kept pairs / causal pairs (all pairs when causal = 0), averaged over heads
 * (a one-head mask counts for every head of the other). */
typedef struct sl_mask_alignment {
    double density_semantic, density_executed;
    double recall;       /* semantic pairs the executed mask keeps / semantic pairs (1 when none) */
    double extra;        /* density of executed ∖ semantic (work not asked for) */
    int64_t kept_semantic, kept_executed, kept_both;   /* summed over heads */
} sl_mask_alignment;
/* Block sizes may differ (compared pair by pair); n_q and n_k may not. */
sl_status sl_mask_align(sl_ctx *ctx, const sl_mask *semantic, const sl_mask *executed, int causal,
                        sl_mask_alignment *out);

/* Index form: per mask head and per entry of rows_per_entry = b query rows
 * (entry r covers rows [r·b, (r+1)·b) clipped to n_q; b = 1: per row), a
 * sorted list of key indices — the inputs idx.row_ptr, idx.col of
 * attn.token_sparse (param rows_per_entry):
 *   row_ptr  i32 [Hm, R + 1], R = ceil(n_q / b), global offsets into col
 *   col      i32 [nnz] sorted, unique within an entry, each in [0, n_k). */
typedef struct sl_mask_index {
    int n_heads;
    int64_t n_q, n_k;
    int64_t rows_per_entry, n_entries;
    sl_tensor row_ptr, col;
} sl_mask_index;

/* Block → index. With b > 1 an entry lists the union of its rows' keys: what
 * a per-block gather executes, a superset of m unless the rows agree
 * (compare with sl_mask_align after sl_mask_from_index). SL_EARG when b < 1
 * or nnz passes the i32 index. */
sl_status sl_mask_to_index(sl_ctx *ctx, const sl_mask *m, int64_t rows_per_entry, sl_mask_index *out);
/* Index → block (with token bits): every row of an entry keeps its list. */
sl_status sl_mask_from_index(sl_ctx *ctx, const sl_mask_index *idx, int bq, int bk, sl_mask *out);
/* SL_ESHAPE/SL_EFORMAT when the index arrays are malformed. */
sl_status sl_mask_index_validate(sl_ctx *ctx, const sl_mask_index *idx);
void sl_mask_index_release(sl_mask_index *idx);
/* Masks from selections (select.* outputs). Lists are i32 [H, n] (one per
 * head) or [n] (one for all heads); -1 entries are padding and skipped
 * (heads may keep different counts), other entries outside their range are
 * SL_EARG; repeats count once. In place of a list, a u8 keep [H, n_k] or
 * [n_k] (select.* over reduce.columns or reduce.diagonals) lists the
 * positions it keeps.
 * from_blocks: keep u8 [H, n_qb, n_kb] or [n_qb, n_kb] (non-zero = kept) of
 *   the block geometry (n_q, n_k, bq, bk) -> an H-head block mask of the
 *   kept blocks, ∩ the causal rule when causal (blocks crossing the
 *   diagonal become partial with token bits). In place of keep, i32 lists
 *   [H, n_qb, L] or [n_qb, L]: per query block its kept key blocks
 *   ascending in [0, n_kb), then -1 padding (issue 19: memory n_qb·L, not
 *   n_qb·n_kb); anything else is SL_EARG.
 * block_lists: keep u8 [H, R, C] -> i32 [H, R, L], each row's non-zero
 *   columns ascending then -1 (the list form above); a row with more than
 *   L is SL_EARG. With into (i32 [H, >= row0 + R, L]) the lists are written
 *   to its rows row0 .. row0 + R - 1 (out unused, may be NULL); else a new
 *   tensor in *out.
 * index_from_columns: cols (key positions in [0, n_k)) -> index lists per
 *   entry of rows_per_entry query rows (attn.token_sparse / vs_mixed with
 *   rows_per_entry = bq): entry e lists the columns, sorted, up to the
 *   position of its last row when causal = 1 (all of them when 0); causal
 *   = 2 (strict) keeps those up to its FIRST row's position, so that every
 *   row of the entry may see every listed key (attn.vs_mixed and
 *   attn.token_sparse apply no causal rule to lists).
 * from_slashes: offsets o = i - j in [0, n_k). widen = 0: the exact token
 *   mask {(i, j): i - j = o for a listed o} (causal by construction).
 *   widen = 1: what MInference's convert_vertical_slash_indexes executes:
 *   per query block r with end E = (n_k - n_q) + (r + 1)·bq (positions, not
 *   clipped), offsets o < E taken in descending order give key ranges ending
 *   at e = max(E - o, bq), bq wide; a range ending more than bq past the
 *   current one starts a new range, otherwise the current range grows by bq;
 *   each range runs as key blocks of bk from its start; the block's rows keep
 *   those keys ∩ causal (token level). A superset of the exact mask. */
sl_status sl_mask_from_blocks(sl_ctx *ctx, const sl_tensor *keep, int64_t n_q, int64_t n_k, int bq, int bk, int causal,
                              sl_mask *out);
sl_status sl_mask_block_lists(sl_ctx *ctx, const sl_tensor *keep, int64_t len, sl_tensor *into, int64_t row0,
                              sl_tensor *out);
sl_status sl_mask_index_from_columns(sl_ctx *ctx, const sl_tensor *cols, int64_t n_q, int64_t n_k,
                                     int64_t rows_per_entry, int causal, sl_mask_index *out);
sl_status sl_mask_from_slashes(sl_ctx *ctx, const sl_tensor *offsets, int64_t n_q, int64_t n_k, int bq, int bk,
                               int widen, sl_mask *out);
/* ---- vertical-slash mask pieces (issue 20, session 3; core/mask_vs.c) ----
 * columns_in_block: cols (i32 [H, w] -1 padded, or [w], or a u8 keep
 *   [H, n]) of an n × n causal problem -> an H-head mask (token bits) of the
 *   pairs (i, j) with j listed and floor(j / bq) == floor(i / bq), j <= i:
 *   the in-block part that strict gathered lists (index_from_columns with
 *   strict) leave out.
 * index_overlap: *pairs = Σ over the lists' entries e (rows_per_entry = m's
 *   bq, same n_q, n_k) and listed keys j of the rows of e that m keeps at j
 *   (a full block: every row of e; a partial one: its bits), list head h
 *   read against mask head h (or 0 when m has one head). */
sl_status sl_mask_columns_in_block(sl_ctx *ctx, const sl_tensor *cols, int64_t n, int bq, int bk, sl_mask *out);
sl_status sl_mask_index_overlap(sl_ctx *ctx, const sl_mask *m, const sl_mask_index *idx, int64_t *pairs);
/* Dense bits (small sizes: at most 2^28 bytes): u8 [Hm, n_q, n_k], 1 = kept. */
sl_status sl_mask_to_bits(sl_ctx *ctx, const sl_mask *m, sl_tensor *out);
/* Bits u8 [H, n_q, n_k] or [n_q, n_k] (one head; any non-zero = kept) →
 * block mask (n_q <= n_k: row r is position n_k - n_q + r). */
sl_status sl_mask_from_bits(sl_ctx *ctx, const sl_tensor *bits, int bq, int bk, sl_mask *out);

/* ---- I/O: .npy and safetensors -------------------------------------------
 * Readers check everything a file claims against its size; a file that is
 * truncated, has a bad header, lies about shape or dtype, or holds NaN gives
 * SL_EFORMAT with "<path>: tensor '<name>': <what was wrong>". */
typedef struct sl_named_tensor { char *name; sl_tensor t; } sl_named_tensor;

/* Reads a .npy file (f32, f16, f64, i32, u8; C order) into a new tensor. */
sl_status sl_npy_read(sl_ctx *ctx, const char *path, sl_tensor *out);
/* Writes t as .npy (its own dtype; f32/f16/f64/i32/u8). */
sl_status sl_npy_write(sl_ctx *ctx, const char *path, const sl_tensor *t);
/* Reads every tensor of a safetensors file (f32, f16, bf16, f64, i32, u8).
 * *out is an array of *n entries allocated through ctx; free it with
 * sl_named_tensors_free. */
sl_status sl_safetensors_read(sl_ctx *ctx, const char *path, sl_named_tensor **out, int *n);
/* Writes the tensors in order (names must be unique). */
sl_status sl_safetensors_write(sl_ctx *ctx, const char *path, const sl_named_tensor *ts, int n);
void sl_named_tensors_free(sl_ctx *ctx, sl_named_tensor *ts, int n);

/* ---- synthetic workloads ---------------------------------------------------
 * Seeded Q, K, V ([heads, n, d], [kv_heads, n, d] twice) with three kinds of
 * structure, each strength being the logit boost it adds (scores scaled by
 * 1/sqrt(d)): sinks (the first n_sink keys share a direction all queries lean
 * to), locality (queries and keys at nearby positions share an AR(1) walk with
 * correlation length local_corr_len) and n_needles far query→key pairs. */
typedef struct sl_synth_params {
    int64_t heads, kv_heads, n, d;
    uint64_t seed;
    int64_t n_sink;
    double sink_strength;
    double local_strength, local_corr_len;
    int64_t n_needles;
    double needle_strength;
} sl_synth_params;

sl_status sl_workload_synthetic(sl_ctx *ctx, const sl_synth_params *p, sl_tensor *q, sl_tensor *k, sl_tensor *v);

/* ---- synthetic video workload (issue 15) ----
 * Seeded Q, K, V [heads, n, d] of a video DiT layer, n = frames·height·width
 * + text (video tokens frame-major, t = (f·height + y)·width + x, then the
 * text tokens), and kinds i32 [heads] (0 spatial, 1 temporal). Every entry
 * starts as N(0, 1) noise plus drift·(cos(step·pi/40)·z_a + sin(step·pi/40)·z_b)
 * (z_a, z_b fixed N(0, 1) fields: consecutive denoising steps differ by about
 * drift·pi/40 per entry). On top, per head (strengths are logit boosts at
 * distance 0, scores scaled by 1/sqrt(d)), from random Fourier features:
 * spatial heads (probability spatial_frac) add spatial_strength·exp(-|Δyx|^2 /
 * (2 spatial_len^2)) for two tokens of the same frame, about 0 across frames;
 * temporal heads add temporal_strength·exp(-|Δyx|^2 / (2 temporal_len^2)) for
 * any two video tokens, whatever their frames; every video query gains
 * text_strength towards every text key. The structure depends on seed only,
 * the noise on seed and step. */
typedef struct sl_video_params {
    int64_t heads, frames, height, width, text, d;
    uint64_t seed;
    int64_t step;
    double spatial_frac, spatial_strength, spatial_len;
    double temporal_strength, temporal_len;
    double text_strength, drift;
} sl_video_params;

sl_status sl_workload_video(sl_ctx *ctx, const sl_video_params *p, sl_tensor *q, sl_tensor *k, sl_tensor *v,
                            sl_tensor *kinds);

/* ---- transformer runner (core/model/) -----------------------------------------
 * A LLaMA-architecture forward pass on the CPU (OpenBLAS) whose attention is a
 * hook, so any method can run inside a trained model. Weights are f32,
 * matrices row-major (out, in): y = W·x. */
typedef enum sl_rope_style {
    SL_ROPE_PAIRS = 0,  /* rotate adjacent pairs (2j, 2j+1) of each head (llama2.c) */
    SL_ROPE_HALF = 1    /* rotate (j, j + head_dim/2) (Hugging Face rotate_half) */
} sl_rope_style;

typedef struct sl_model_config {
    int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, vocab_size, seq_len;
    double rope_theta, norm_eps;
    sl_rope_style rope_style;
    /* Llama 3's scaled RoPE (config.json rope_scaling {"rope_type": "llama3"}; issue 18);
     * rope_factor 0 means plain RoPE. A frequency f = theta^(-2j/hd) of wavelength
     * w = 2*pi/f is kept when w < rope_orig_max_pos / rope_high_freq_factor, divided
     * by rope_factor when w > rope_orig_max_pos / rope_low_freq_factor, and in between
     * mixed: (1 - s) f / rope_factor + s f with
     * s = (rope_orig_max_pos / w - rope_low_freq_factor) / (rope_high_freq_factor - rope_low_freq_factor). */
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int64_t rope_orig_max_pos;
} sl_model_config;

typedef struct sl_model_layer {
    sl_tensor rms_att, wq, wk, wv, wo;  /* [dim], [Hq·hd, dim], [Hkv·hd, dim] ×2, [dim, Hq·hd] */
    sl_tensor rms_ffn, w1, w2, w3;      /* [dim], [hidden, dim] (gate), [dim, hidden] (down), [hidden, dim] (up) */
} sl_model_layer;

typedef struct sl_model {
    sl_model_config cfg;
    sl_tensor tok_emb;      /* [vocab, dim] */
    sl_tensor rms_final;    /* [dim] */
    sl_tensor wcls;         /* [vocab, dim]; shares tok_emb's buffer when the checkpoint ties them */
    sl_model_layer *layers; /* n_layers entries */
    const struct sl_model_hooks *hooks; /* NULL: none (issue 17) */
} sl_model;

/* Hooks of the forward pass outside attention (issue 17). At each site of
 * layer `layer` the hook sees the activations x [n, width] (row-major f32,
 * the forward pass's own buffer) and may rewrite them in place before they
 * are used: "attn_in" (the normed input of wq, wk, wv), "attn_out" (the
 * input of wo), "ffn_in" (the normed input of w1, w3), "ffn_hidden"
 * (silu(x.w1^T) * (x.w3^T), the input of w2), "layer_out" (the residual
 * stream after the layer, the input of layer + 1; token merging rewrites
 * rows there). A status other than SL_OK stops the pass (its message in ctx). */
typedef struct sl_model_hooks {
    void *ud;
    sl_status (*site)(void *ud, sl_ctx *ctx, int layer, const char *site, float *x, int64_t n, int64_t width);
    /* The linear products (issue 17, session 3): y [n, w.shape[0]] = x [n,
     * w.shape[1]] . w^T of weight `name` ("wq", "wk", "wv", "wo", "w1", "w3",
     * "w2") of layer `layer`. NULL, or *done left 0: the dense sgemm runs.
     * sl_model_exec_linear is one (with linear_ud an sl_model_exec). */
    void *linear_ud;
    sl_status (*linear)(void *ud, sl_ctx *ctx, int layer, const char *name, const float *x, int64_t n,
                        const sl_tensor *w, float *y, int *done);
} sl_model_hooks;

/* ---- sparse executors inside the model runner (issue 17, session 3) ----
 * An sl_model_exec runs a model's linear products through the sparse
 * executor ops and times every product (wall seconds per weight kind). Per
 * weight (layer, name) a format: SL_EXEC_DENSE (the runner's sgemm, timed),
 * SL_EXEC_NM (mm.nm; the weight must already have at most n nonzeros in every
 * group of m along its rows, else SL_EARG naming the weight and group),
 * SL_EXEC_BITMAP (mm.bitmap, cap = the largest row count), SL_EXEC_ACT
 * (mm.act_sparse on the product's input activations with w^T kept beside:
 * zero activations cost nothing; meant for w2 behind an ffn_hidden hook that
 * zeroes units) or SL_EXEC_AUTO (bitmap when the weight's density is below
 * the exec's threshold, else dense). The compressed forms are built from the
 * weight at set time: re-set after replacing a weight. Products run on the
 * exec's backend through sl_op_run. */
typedef struct sl_model_exec sl_model_exec;
typedef enum sl_exec_format {
    SL_EXEC_DENSE = 0, SL_EXEC_NM, SL_EXEC_BITMAP, SL_EXEC_ACT, SL_EXEC_AUTO, SL_EXEC_GATED,
    SL_EXEC_SPARK /* issue 17, session 4: sl_model_exec_set_spark */
} sl_exec_format;
enum { SL_EXEC_KINDS = 7 }; /* wq wk wv wo w1 w3 w2, in this order */
typedef struct sl_exec_stat {
    double seconds;     /* wall time of the products */
    int64_t calls, rows; /* products run, activation rows multiplied */
    double flops;       /* flops the executors ran (2 per product done) */
    int64_t small;      /* of calls: non-dense formats run as the dense sgemm (below min_macs) */
    int64_t over_rho;   /* of calls: act products run as the dense sgemm, density above the stored rho* (session 4) */
} sl_exec_stat;
sl_status sl_model_exec_new(sl_ctx *ctx, const sl_model *m, sl_backend_id b, sl_model_exec **out);
void sl_model_exec_free(sl_ctx *ctx, sl_model_exec *e);
/* density threshold of SL_EXEC_AUTO (default 0.4) */
void sl_model_exec_set_threshold(sl_model_exec *e, double density);
/* Products of a non-dense format with n * N * K below macs multiply-adds
 * run as the runner's dense sgemm on the same zeroed weight / activations
 * (gated w3: then zeroed outside its support), and count in stat.small: at
 * such sizes one sl_op_run costs more than the product (issue 17, session
 * 3c). Default SL_EXEC_MIN_MACS_DEFAULT; 0: always the sparse executors. */
#define SL_EXEC_MIN_MACS_DEFAULT 262144.0
void sl_model_exec_set_min_macs(sl_model_exec *e, double macs);
/* The measured crossover density rho* of mm.act_sparse (card
 * act_sparse_matmul step 5, issue 17 session 4): n points (rows[i], rho[i]),
 * rows ascending and distinct (>= 1), rho in [-1, 1] (-1: no density beats
 * dense). An SL_EXEC_ACT product of n_x rows (at or above min_macs) takes the
 * point with the largest rows <= n_x (else the first) and runs as the dense
 * sgemm on the same zeroed activations when the share of nonzero activations
 * exceeds its rho (counted in stat.over_rho). n = 0 clears: then only
 * min_macs decides (the earlier rule). At most SL_EXEC_MAX_CROSSOVER points. */
#define SL_EXEC_MAX_CROSSOVER 32
sl_status sl_model_exec_set_crossover(sl_ctx *ctx, sl_model_exec *e, int n, const int64_t *rows, const double *rho);
/* Spark's FFN predictor in the runner (card topk_activation step 4, issue 17
 * session 4): w1 and w3 of layer (-1: every layer) take format SL_EXEC_SPARK.
 * w1's product first scores the units with act.spark_score on the first r
 * input dims (gate_up: with the layer's w3, else the gate alone), keeps the k
 * largest per row (act.topk by value; a unit whose kept score is 0 counts as
 * not selected), and runs mm.out_sparse over them; w3's product of the same
 * pass runs mm.out_sparse over the same units. Every other unit has gate and
 * up 0, so h = silu(gate) . up is 0 there (w2 may then run SL_EXEC_ACT). The
 * predictor's flops count in w1's stat. Not subject to min_macs. Fails in one
 * line when w3 runs without its w1 in the pass, or when either was replaced
 * (set again). */
sl_status sl_model_exec_set_spark(sl_ctx *ctx, sl_model_exec *e, int layer, int k, int r, int gate_up);
/* Sets the format of weight (layer, name); n, m only for SL_EXEC_NM. layer
 * -1: every layer. */
sl_status sl_model_exec_set(sl_ctx *ctx, sl_model_exec *e, const sl_model *m, int layer, const char *name,
                            sl_exec_format f, int n, int mm);
/* CATS / CHESS up projection on the gate support (card act_sparse_matmul,
 * output-sparse mode): w3 of layer (-1: every layer) runs as mm.out_sparse
 * over S = {j : |silu(g_j)| >= theta[j]} per row, g the same forward's w1
 * output (silu in float64); theta f32 [hidden_dim] (layer -1: [n_layers,
 * hidden_dim]). Units outside S get up = 0, so h = silu(g) . up is 0 there,
 * which is what the channel_threshold hook computes before w2. Format
 * SL_EXEC_GATED. */
sl_status sl_model_exec_set_gate(sl_ctx *ctx, sl_model_exec *e, const sl_model *m, int layer, const sl_tensor *theta);
/* The format a weight runs in (AUTO resolved), or -1 for an unknown name. */
int sl_model_exec_format(const sl_model_exec *e, int layer, const char *name);
/* Stats of kind k (0..SL_EXEC_KINDS-1) summed over layers; reset zeroes them. */
sl_exec_stat sl_model_exec_stat(const sl_model_exec *e, int kind);
void sl_model_exec_reset(sl_model_exec *e);
/* The hook: ud is the sl_model_exec. */
sl_status sl_model_exec_linear(void *ud, sl_ctx *ctx, int layer, const char *name, const float *x, int64_t n,
                               const sl_tensor *w, float *y, int *done);

/* ---- routed MoE FFN inside the model runner (issue 17, session 4; card
 * moe_split_route) ----
 * An sl_model_moe replaces the FFN of chosen layers by E neuron experts: per
 * layer a router [E, dim] and a map unit -> expert (i32 [hidden_dim]). Per
 * token the top-k experts of x . router^T (ties: the lower id) with weight
 * scale (unit) or softmax over the top-k logits . scale, and the layer's FFN
 * output is one mm.moe call (grouped GEMM over the routed experts' unit
 * blocks) on the object's backend. As the model's linear hook: at a set
 * layer's w1 it runs the router and mm.moe and writes zeros (w3 too, so the
 * runner's h = silu(0) . 0 = 0), and its w2 returns the MoE output; other
 * products are left to the dense sgemm (*done = 0). The permuted copies of
 * w1, w3 and w2 are taken at set time: set again after replacing a weight
 * (the Lua model:set_weight unsets the layer: it runs dense until set). */
#define SL_MOE_MAX_EXPERTS 1024
typedef struct sl_model_moe sl_model_moe;
typedef struct sl_moe_stat {
    double seconds;             /* wall time of the router and mm.moe calls */
    int64_t calls, rows, pairs; /* FFNs run, tokens, routed (token, expert) pairs */
    int64_t units;              /* hidden units computed, summed over pairs */
    double flops, dense_flops;  /* executed (router + mm.moe), and the dense FFN's 6 n hidden dim */
    int64_t load[SL_MOE_MAX_EXPERTS]; /* routed pairs per expert id, over layers */
} sl_moe_stat;
sl_status sl_model_moe_new(sl_ctx *ctx, const sl_model *m, sl_backend_id b, int experts, int k, int softmax,
                           double scale, sl_model_moe **out);
void sl_model_moe_free(sl_ctx *ctx, sl_model_moe *mo);
sl_status sl_model_moe_set(sl_ctx *ctx, sl_model_moe *mo, const sl_model *m, int layer, const sl_tensor *router,
                           const sl_tensor *expert);
int sl_model_moe_on(const sl_model_moe *mo, int layer);
/* The layer's FFN runs densely again (its copies freed). */
void sl_model_moe_unset(sl_model_moe *mo, int layer);
sl_moe_stat sl_model_moe_stat(const sl_model_moe *mo);
void sl_model_moe_reset(sl_model_moe *mo);
/* The hook: ud is the sl_model_moe. */
sl_status sl_model_moe_linear(void *ud, sl_ctx *ctx, int layer, const char *name, const float *x, int64_t n,
                              const sl_tensor *w, float *y, int *done);

/* The weight tensor called name ("tok_emb", "rms_final", "wcls",
 * "layers.L.{rms_att,wq,wk,wv,wo,rms_ffn,w1,w2,w3}"), or NULL. The caller may
 * replace it (release, then a new f32 contiguous tensor of the same shape):
 * the next forward pass uses it. wcls may share tok_emb's buffer. */
sl_tensor *sl_model_weight(sl_model *m, const char *name);

/* Loads a llama2.c checkpoint (7 × int32 header, then f32 weights; a negative
 * vocab_size means a separate classifier follows). Checks every size against
 * the file: a truncated or inconsistent file gives SL_EFORMAT naming the file
 * and the tensor. */
sl_status sl_model_load_llama2c(sl_ctx *ctx, const char *path, sl_model **out);
/* Loads a LLaMA model from a directory holding config.json (Hugging Face
 * names: hidden_size, intermediate_size, num_hidden_layers,
 * num_attention_heads, num_key_value_heads, vocab_size, rms_norm_eps,
 * rope_theta, max_position_embeddings, tie_word_embeddings) and
 * model.safetensors (model.embed_tokens.weight, model.layers.N.self_attn.
 * {q,k,v,o}_proj.weight, model.layers.N.mlp.{gate,up,down}_proj.weight,
 * model.layers.N.{input,post_attention}_layernorm.weight, model.norm.weight,
 * lm_head.weight). RoPE is SL_ROPE_HALF; f16/bf16 weights are converted to f32.
 * Refused with SL_EUNSUPPORTED: rope_scaling other than null, model_type other
 * than llama/mistral, hidden_act other than silu, and any bias tensor. Mistral's
 * sliding_window caps seq_len (inside the window dense attention is exact). */
sl_status sl_model_load_hf(sl_ctx *ctx, const char *dir, sl_model **out);
void sl_model_free(sl_ctx *ctx, sl_model *m);

/* The KV cache: per layer K and V [n_kv_heads, capacity, head_dim] (post-RoPE);
 * n positions are filled. */
typedef struct sl_model_state {
    int64_t n, capacity, n_layers;
    sl_tensor *k, *v;
} sl_model_state;

sl_status sl_model_state_new(sl_ctx *ctx, const sl_model *m, int64_t capacity, sl_model_state **out);
void sl_model_state_free(sl_ctx *ctx, sl_model_state *st);

/* Attention of one layer: q [Hq, n_new, hd] holds the new positions
 * n_past .. n_past+n_new-1; k, v [Hkv, n_past+n_new, hd] are the cache up to
 * them (views; may be strided). The hook writes o [Hq, n_new, hd] (allocated,
 * contiguous f32) and returns a status (its message in ctx). Causality is the
 * hook's business: attn.dense with causal = 1 is the exact model. */
typedef sl_status (*sl_model_attn_fn)(void *ud, sl_ctx *ctx, int layer, const sl_tensor *q, const sl_tensor *k,
                                      const sl_tensor *v, sl_tensor *o);

/* Runs n tokens through the model after the st->n already cached (prefill
 * when st->n == 0, decode when n == 1), appends their K/V to the cache and
 * writes logits [n, vocab] (new tensor). attn NULL means exact dense
 * attention (cpu backend). Token ids outside [0, vocab) and running past the
 * cache capacity are SL_EARG. */
sl_status sl_model_forward(sl_ctx *ctx, const sl_model *m, sl_model_state *st, const int32_t *tokens, int64_t n,
                           sl_model_attn_fn attn, void *ud, sl_tensor *logits);

/* ---- tokenizer (llama2.c tokenizer.bin layout) ----------------------------- */
typedef struct sl_tokenizer sl_tokenizer;

/* Loads a llama2.c tokenizer file with vocab_size entries (int32 max_token_length,
 * then per id: f32 score, int32 len, len bytes). */
sl_status sl_tokenizer_load(sl_ctx *ctx, const char *path, int64_t vocab_size, sl_tokenizer **out);
void sl_tokenizer_free(sl_ctx *ctx, sl_tokenizer *t);
int64_t sl_tokenizer_vocab(const sl_tokenizer *t);
/* Encodes UTF-8 text as llama2.c does (optional BOS id 1, a dummy-prefix space
 * when the text is non-empty, code points then byte fallback <0xHH> = byte + 3,
 * then greedy merges by highest score; optional EOS id 2) into a new i32 tensor [n]. */
sl_status sl_tokenizer_encode(sl_ctx *ctx, const sl_tokenizer *t, const char *text, int bos, int eos, sl_tensor *ids);
/* The text of token id following token prev (after BOS one leading space is
 * dropped; <0xHH> pieces are that byte). Writes up to n-1 bytes and a NUL into
 * buf and returns the piece's length in bytes (it may hold a NUL byte). */
size_t sl_tokenizer_decode(const sl_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t n);

/* ---- tokenizers as models ship them (issue 18) ---- */
/* sl_tokenizer_load also reads, by the file name's ending:
 *   *.model  a SentencePiece model (tokenizer.model of Llama 2, Mistral, ...)
 *            through Debian's libsentencepiece: encode/decode are the library's
 *            (normaliser, dummy prefix, byte fallback); BOS/EOS its ids;
 *   *.json   a Hugging Face tokenizer.json with a byte-level BPE model (GPT-2,
 *            Llama 3): added tokens split out first, the pre-tokenizer's Split
 *            regexes and ByteLevel (GPT-2 regex when use_regex) through libpcre2,
 *            merges by rank; BOS/EOS from a TemplateProcessing post-processor
 *            (none: bos adds nothing, eos is an error). Other settings are
 *            refused naming the key.
 * For these vocab_size is the model's: 0 skips the check, otherwise the
 * tokenizer's ids must all be below it. sl_tokenizer_vocab is the tokenizer's
 * own id count; sl_tokenizer_decode gives one id's bytes (SentencePiece: U+2581
 * as a space, one leading space dropped after BOS). */
/* The text of ids[0, n) following token prev (-1: none) as the tokenizer's
 * own decoder gives it (SentencePiece: the library's Decode, which drops the
 * dummy prefix at the start; after a prev other than BOS that prefix is kept).
 * *text is allocated with sl_ctx_alloc(ctx, *len + 1) and NUL-terminated;
 * release it with sl_ctx_dealloc(ctx, *text, *len + 1). Ids outside
 * 0 .. vocab-1 are SL_EARG. */
sl_status sl_tokenizer_decode_ids(sl_ctx *ctx, const sl_tokenizer *t, const int32_t *ids, int64_t n, int32_t prev,
                                  char **text, size_t *len);

/* ---- timing --------------------------------------------------------------- */
double sl_time_now(void);   /* monotonic seconds */

#ifdef __cplusplus
}
#endif
#endif
