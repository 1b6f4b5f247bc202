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
    int n_threads;       /* <= 0: the number of online CPUs */
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
/* Long-running ops poll *flag and stop with SL_EINTERRUPT when it is non-zero.
 * The flag belongs to the caller (a signal handler usually sets it). */
void sl_ctx_set_interrupt(sl_ctx *ctx, volatile int *flag);
int sl_ctx_interrupted(const sl_ctx *ctx);
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
/* SL_EFORMAT naming `what` when a float tensor holds NaN (infinities allowed
 * when allow_inf). */
sl_status sl_tensor_check_finite(sl_ctx *ctx, const sl_tensor *t, const char *what, int allow_inf);
/* "f32[8, 1000, 64]" into buf. */
void sl_tensor_describe(const sl_tensor *t, char *buf, size_t n);

/* Seeded random numbers without global state (xoshiro256**). */
typedef struct sl_rng { uint64_t s[4]; } sl_rng;
void sl_rng_seed(sl_rng *r, uint64_t seed);
uint64_t sl_rng_next(sl_rng *r);
double sl_rng_uniform(sl_rng *r);            /* [0, 1) */
double sl_rng_normal(sl_rng *r);             /* N(0, 1) */
/* Fills a float tensor with N(0, std^2) draws. */
sl_status sl_tensor_fill_normal(sl_ctx *ctx, sl_tensor *t, sl_rng *r, double std);

/* ---- ops ---------------------------------------------------------------- */

typedef enum sl_op {
#define SL_OP(E, name, group, n_in, n_out, ins, outs, doc) SL_OP_##E,
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

/* Runs an op. params points to the op's parameter struct (NULL: defaults).
 * in holds info->n_in tensors; out receives info->n_out new tensors that the
 * caller releases. Validates shapes, dtypes and ranges first (SL_ESHAPE,
 * SL_EARG); inputs holding NaN give SL_EARG; then dispatches. On failure no
 * output is left allocated. */
sl_status sl_op_run(sl_ctx *ctx, sl_backend_id b, sl_op op, const void *params,
                    const sl_tensor *in, sl_tensor *out);
/* Floating-point operations the op executes on these inputs (multiply and
 * add count as two; exponentials are not counted). 0 for metrics. */
double sl_op_flops(sl_op op, const void *params, const sl_tensor *in);

/* ---- op wrappers (contracts) -------------------------------------------- */

/* attn.dense: O[h,r,:] = softmax(scale · Q[h,r,:]·K[g,j,:]) · V[g,j,:] over keys j
 * (j <= Nk - Nq + r when causal), g = h / (Hq / Hkv). L[h,r] = log Σ_j exp(scale·q·k).
 * Inputs f32/f16/bf16 [Hq,Nq,D], [Hkv,Nk,D], [Hkv,Nk,D]; outputs f32 O [Hq,Nq,D], L [Hq,Nq].
 * A row with no visible key gets O = 0, L = -inf. */
sl_status sl_attn_dense(sl_ctx *ctx, sl_backend_id b, const sl_attn_params *p,
                        const sl_tensor *q, const sl_tensor *k, const sl_tensor *v,
                        sl_tensor *o, sl_tensor *lse);

/* ---- masks ----------------------------------------------------------------
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
 * but the mask. nnz and n_part may be 0 (tensors of length 0 are then shape [0]). */
typedef struct sl_mask {
    int n_heads;
    int64_t n_q, n_k;
    int bq, bk;
    int64_t n_qb, n_kb;
    sl_tensor row_ptr, col_idx, part, bits;
} sl_mask;

/* Analytic patterns; a pattern is a union of terms materialised at a size. */
typedef enum sl_pattern_kind {
    SL_PAT_FULL = 0,   /* every pair */
    SL_PAT_CAUSAL,     /* j <= i */
    SL_PAT_WINDOW,     /* 0 <= i - j < a  (a = w, the visible keys including self) */
    SL_PAT_SINK,       /* j < a, and j <= i */
    SL_PAT__COUNT
} sl_pattern_kind;

typedef struct sl_pattern_term { sl_pattern_kind kind; int64_t a; } sl_pattern_term;

const char *sl_pattern_name(sl_pattern_kind k);
/* Materialises the union of terms at (n_q, n_k, bq, bk) with one mask head.
 * i is the query position n_k - n_q + row. */
sl_status sl_mask_from_pattern(sl_ctx *ctx, const sl_pattern_term *terms, int n_terms,
                               int64_t n_q, int64_t n_k, int bq, int bk, sl_mask *out);
/* Union of two masks of the same sizes (heads broadcast when one has 1). */
sl_status sl_mask_union(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, sl_mask *out);
/* 1 when (head, row, key) is kept. */
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
} sl_model;

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
 * lm_head.weight). RoPE is SL_ROPE_HALF. */
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

/* ---- timing --------------------------------------------------------------- */
double sl_time_now(void);   /* monotonic seconds */

#ifdef __cplusplus
}
#endif
#endif
