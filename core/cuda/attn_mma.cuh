// cuda/attn_mma.cuh — tensor-core (WMMA) attention for bf16 and f16 inputs:
// attn.dense, attn.block_sparse and attn.token_sparse with q, k, v in bf16 or
// f16, f32 accumulation and f32 O and LSE (the f32 kernels' contract: natural
// log, O = 0 and LSE = -inf for a row that sees no key). Device code and host
// launchers in one header, included by the .cu that hosts the attention
// executors (backend.cu); everything here is static or a template.
//
// What each kernel takes ("supports"):
//   op                  dtypes      head_dim                        options
//   attn.dense          bf16, f16   1..256 (padded to 32/64/128/256) causal
//   attn.block_sparse   bf16, f16   1..256 (padded)                 partial blocks; pv_skip runs as f32
//                                                                   (q, k, v converted on the host)
//   attn.token_sparse   bf16, f16   1..256 (padded)                 opt.bias, state.o / state.lse
// head_dim above 256 is SL_EUNSUPPORTED (as for the f32 kernels; the message
// is sl__cuda_attn_unsupported's / sl__cuda_gather_unsupported's).
//
// Design. One CTA of 4 warps owns one head and BQ = 64 query rows; warp w owns
// rows 16w .. 16w + 15 (one WMMA m16 row tile). The CTA walks key tiles of BK
// keys (64 for D <= 128, 32 for D = 256) staged in shared memory as T (rows of
// D + 8 elements, zero-padded past head_dim and past the last key).
//   S = Q·Kᵀ   per warp, wmma m16n16k16: A = Q rows (row_major), B = K rows read
//              col_major (= Kᵀ), f32 accumulator stored to the warp's score
//              tile in shared memory. Scores are exact products summed in f32;
//              the scale (times log2 e) is applied in f32 afterwards.
//   softmax    two lanes per row, in f32: mask (-inf), running max m and sum
//              l (of the unrounded probabilities) per row in shared memory,
//              base-2 exponent; P rounded to T into the warp's P tile.
//   P·V        the warp's O rows live in shared memory as f32 (rows of D + 4):
//              rescaled by exp2(m_old - m_new) element-wise, then per 16-column
//              chunk loaded as the accumulator, P·V added by mma_sync
//              (A = P row_major, B = V row_major) and stored back.
//   finish     O / l and LSE = m·ln 2 + log l; l = 0 gives O = 0, LSE = -inf.
// Shared memory (T 2 bytes): D=32: 51.5 KiB, D=64: 71.5 KiB, D=128: 111.5 KiB,
// D=256 (BK 32): 146 KiB (opt-in above 48 KiB, set per launch).
// A row that has not seen a visible key keeps m = -inf; the exponent base is
// then 0 (no -inf - -inf). Masks: causal (dense: key j visible to row r iff
// j <= nk - nq + r), the block mask with partial blocks' token bits (slots
// gathered as in attn.cu's block kernel), index lists (token_sparse: the
// listed keys gathered into the tiles; bias added per (row, key); a state
// starts the softmax at m = L, l = 1, O = state O, which is attn.lse_merge of
// the state with the result). token_sparse runs one CTA per (entry, 64 rows,
// head) with no split of the keys (decode with long lists uses few CTAs).
#ifndef SL_CUDA_ATTN_MMA_CUH
#define SL_CUDA_ATTN_MMA_CUH

#include "dialect.cuh"
#include "warp.cuh"

extern "C" {
#include "../internal.h"
}

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>
#include <type_traits>

namespace sl_mma {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int BQ = 16 * kWarps;  // query rows per CTA
enum Mode { kDense, kBlock, kToken };

// Everything one launch reads (device pointers; q, k, v of element type T).
struct Args {
    const void *q, *k, *v;
    float *o, *lse;
    int hq, hkv, nq, nk, d;
    float scale_log2;
    int causal;                                // kDense
    const int32_t *row_ptr, *col_idx, *part;  // kBlock: the block mask; kToken: row_ptr, col_idx = the lists
    const uint8_t *bits;
    int hm, bq, bk, n_qb;                      // kBlock; kToken: hm = list heads, bq = rows per entry, n_qb = entries
    const float *bias;                         // kToken: [bias_heads, nq, nk] or null
    int bias_heads;
    const float *state_o, *state_lse;          // kToken: or null
};

template <int D> struct Tile {
    static constexpr int BK = D <= 128 ? 64 : 32;  // keys per tile
    static constexpr int DS = D + 8;               // T row stride of Q, K, V tiles
    static constexpr int OS = D + 4;               // f32 row stride of the O tile
    static constexpr int SS = BK + 4;              // f32 row stride of a warp's score tile
    static constexpr int PS = BK + 8;              // T row stride of a warp's P tile
    static constexpr size_t q_bytes = 2 * BQ * DS, kv_bytes = 2 * BK * DS;
    static constexpr size_t s_bytes = 4 * 16 * SS, p_bytes = 2 * 16 * PS, o_bytes = 4 * BQ * OS;
    static constexpr size_t smem_bytes =
        q_bytes + 2 * kv_bytes + kWarps * (s_bytes + p_bytes) + o_bytes + 4 * 3 * BQ + 4 * 3 * BK;
    static_assert(D % 16 == 0 && BK % 16 == 0, "tile shape");
    static_assert(q_bytes % 32 == 0 && kv_bytes % 32 == 0 && s_bytes % 32 == 0 && p_bytes % 32 == 0 &&
                      o_bytes % 32 == 0,
                  "wmma pointers are 32-byte aligned");
};


static __device__ __forceinline__ void to_t(__half &x, float f) { x = __float2half_rn(f); }
static __device__ __forceinline__ void to_t(__nv_bfloat16 &x, float f) { x = __float2bfloat16_rn(f); }

// Copies n rows of src (d elements each; src_row(j) = source row of slot j, or
// -1 for a zero row) into dst (rows of Tile<D>::DS), zero-padded past d.
// 16-byte loads when d is a multiple of 8.
template <class T, int D, class RowOf>
__device__ __forceinline__ void load_rows(T *dst, const T *__restrict__ src, int d, int n, RowOf src_row)
{
    constexpr int DS = Tile<D>::DS;
    if (d % 8 == 0) {
        for (int e = threadIdx.x; e < n * (D / 8); e += kThreads) {
            const int j = e / (D / 8), c = e % (D / 8) * 8;
            const int row = src_row(j);
            int4 x = make_int4(0, 0, 0, 0);
            if (row >= 0 && c < d)
                x = *reinterpret_cast<const int4 *>(src + (size_t)row * d + c);
            *reinterpret_cast<int4 *>(dst + j * DS + c) = x;
        }
    } else {
        for (int e = threadIdx.x; e < n * D; e += kThreads) {
            const int j = e / D, c = e % D;
            const int row = src_row(j);
            if (row >= 0 && c < d)
                dst[j * DS + c] = src[(size_t)row * d + c];
            else
                to_t(dst[j * DS + c], 0.f);
        }
    }
}

template <class T, int D> struct Smem {
    T *qs, *ks, *vs, *ps;
    float *ss, *os, *m, *l, *alpha;
    int *slot_key, *slot_part, *slot_off;
    __device__ explicit Smem(unsigned char *base)
    {
        using TL = Tile<D>;
        const int warp = threadIdx.x / 32;
        qs = reinterpret_cast<T *>(base);
        ks = reinterpret_cast<T *>(base + TL::q_bytes);
        vs = reinterpret_cast<T *>(base + TL::q_bytes + TL::kv_bytes);
        unsigned char *p = base + TL::q_bytes + 2 * TL::kv_bytes;
        ss = reinterpret_cast<float *>(p + warp * TL::s_bytes);
        p += kWarps * TL::s_bytes;
        ps = reinterpret_cast<T *>(p + warp * TL::p_bytes);
        p += kWarps * TL::p_bytes;
        os = reinterpret_cast<float *>(p);
        p += TL::o_bytes;
        m = reinterpret_cast<float *>(p);
        l = m + BQ;
        alpha = l + BQ;
        slot_key = reinterpret_cast<int *>(alpha + BQ);
        slot_part = slot_key + TL::BK;
        slot_off = slot_part + TL::BK;
    }
};

struct alignas(128) SmemChunk {
    unsigned char b[128];
};

// One key tile for one warp (rows 16·warp ..): n slots filled (keys past n are
// zero rows), vis(i, j) says whether row i of the warp sees slot j, add(i, j)
// is added to its base-2 score (bias).
template <class T, int D, class Vis, class Add>
__device__ __forceinline__ void warp_tile(const Smem<T, D> &sm, float scale_log2, int n, Vis vis, Add add)
{
    using namespace nvcuda;
    using TL = Tile<D>;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int nc = (n + 15) / 16;  // 16-key chunks holding a filled slot
    const T *qw = sm.qs + warp * 16 * TL::DS;
    for (int nb = 0; nb < nc; nb++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll 4
        for (int kk = 0; kk < D / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
            wmma::load_matrix_sync(fa, qw + kk * 16, TL::DS);
            wmma::load_matrix_sync(fb, sm.ks + nb * 16 * TL::DS + kk * 16, TL::DS);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(sm.ss + nb * 16, acc, TL::SS, wmma::mem_row_major);
    }
    __syncwarp();
    // Softmax: lanes 2i and 2i + 1 own row i (slots of their parity).
    const int i = lane / 2, half = lane % 2, row = warp * 16 + i;
    float *srow = sm.ss + i * TL::SS;
    T *prow = sm.ps + i * TL::PS;
    float mt = -INFINITY;
    for (int j = half; j < nc * 16; j += 2) {
        const float x = j < n && vis(i, j) ? srow[j] * scale_log2 + add(i, j) : -INFINITY;
        srow[j] = x;
        mt = fmaxf(mt, x);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    const float m_old = sm.m[row];
    const float mn = fmaxf(m_old, mt);
    const float base = mn == -INFINITY ? 0.f : mn;
    const float alpha = exp2f(m_old - base);  // 0 while m_old is -inf (O and l are 0 then)
    float psum = 0.f;
    for (int j = half; j < nc * 16; j += 2) {
        const float p = exp2f(srow[j] - base);  // masked: exp2(-inf) = 0
        psum += p;
        to_t(prow[j], p);
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    __syncwarp();  // every lane has read m_old
    if (half == 0) {
        sm.l[row] = sm.l[row] * alpha + psum;
        sm.m[row] = mn;
        sm.alpha[row] = alpha;
    }
    __syncwarp();
    float *ow = sm.os + warp * 16 * TL::OS;
    for (int e = lane; e < 16 * D; e += 32) {
        const int r = e / D, c = e % D;
        ow[r * TL::OS + c] *= sm.alpha[warp * 16 + r];
    }
    __syncwarp();
    for (int nb = 0; nb < D / 16; nb++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, ow + nb * 16, TL::OS, wmma::mem_row_major);
        for (int kk = 0; kk < nc; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fp;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fv;
            wmma::load_matrix_sync(fp, sm.ps + kk * 16, TL::PS);
            wmma::load_matrix_sync(fv, sm.vs + kk * 16 * TL::DS + nb * 16, TL::DS);
            wmma::mma_sync(acc, fp, fv, acc);
        }
        wmma::store_matrix_sync(ow + nb * 16, acc, TL::OS, wmma::mem_row_major);
    }
    __syncwarp();  // the score and P tiles are rewritten by the next tile
}

// grid: kDense (query tiles, hq), run last-first; kBlock (mask query blocks x
// 64-row sub-tiles, hq); kToken (list entries x 64-row sub-tiles, hq).
template <class T, int D, int MODE> __global__ void __launch_bounds__(kThreads) mma_kernel(const Args a)
{
    using TL = Tile<D>;
    SL_DYN_SMEM(SmemChunk, smem_raw);
    const Smem<T, D> sm(reinterpret_cast<unsigned char *>(smem_raw));
    const int h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = h / (a.hq / a.hkv), offset = a.nk - a.nq;
    int q0, rend, rb0 = 0, unit = 0;  // rows [q0, min(q0 + BQ, rend)); unit = mask block / list entry
    if (MODE == kDense) {
        q0 = (gridDim.x - 1 - blockIdx.x) * BQ, rend = a.nq;
    } else {
        const int n_sub = (a.bq + BQ - 1) / BQ;
        unit = blockIdx.x / n_sub, rb0 = unit * a.bq;
        q0 = rb0 + (blockIdx.x % n_sub) * BQ, rend = min(rb0 + a.bq, a.nq);
        if (q0 >= rend)
            return;  // the whole CTA: a sub-tile past a short last block
    }
    const int r0 = q0 + warp * 16;  // the warp's first row
    const T *qh = static_cast<const T *>(a.q) + (size_t)h * a.nq * a.d;
    const T *kg = static_cast<const T *>(a.k) + (size_t)g * a.nk * a.d;
    const T *vg = static_cast<const T *>(a.v) + (size_t)g * a.nk * a.d;
    load_rows<T, D>(sm.qs, qh, a.d, BQ, [&](int j) { return q0 + j < rend ? q0 + j : -1; });
    // The warp's O rows, m and l (from the state when given).
    float *ow = sm.os + warp * 16 * TL::OS;
    for (int e = lane; e < 16 * D; e += 32)
        ow[e / D * TL::OS + e % D] = 0.f;
    if (lane < 16) {
        sm.m[warp * 16 + lane] = -INFINITY;
        sm.l[warp * 16 + lane] = 0.f;
    }
    if (MODE == kToken && a.state_o) {
        __syncwarp();
        for (int i = 0; i < 16; i++) {
            const int r = r0 + i;
            const float L = r < rend ? a.state_lse[(size_t)h * a.nq + r] : -INFINITY;
            if (L == -INFINITY)
                continue;
            for (int c = lane; c < a.d; c += 32)
                ow[i * TL::OS + c] = a.state_o[((size_t)h * a.nq + r) * a.d + c];
            if (lane == 0)
                sm.m[warp * 16 + i] = L * kLog2e, sm.l[warp * 16 + i] = 1.f;
        }
    }
    __syncwarp();
    const int wrows = max(0, min(16, rend - r0));  // live rows of the warp
    const auto no_add = [](int, int) { return 0.f; };

    if (MODE == kDense) {
        const int kend = a.causal ? min(a.nk, offset + min(q0 + BQ, a.nq)) : a.nk;
        const int wlim = wrows == 0 ? 0 : a.causal ? min(a.nk, offset + r0 + wrows) : a.nk;  // keys the warp sees
        for (int k0 = 0; k0 < kend; k0 += TL::BK) {
            __syncthreads();  // every warp is done with the previous tile
            const int n = min(TL::BK, a.nk - k0);
            const auto key_row = [&](int j) { return j < n ? k0 + j : -1; };
            load_rows<T, D>(sm.ks, kg, a.d, TL::BK, key_row);
            load_rows<T, D>(sm.vs, vg, a.d, TL::BK, key_row);
            __syncthreads();
            if (k0 < wlim)  // warp-uniform: a warp above the causal diagonal skips the tile
                warp_tile<T, D>(
                    sm, a.scale_log2, min(n, wlim - k0),
                    [&](int i, int j) { return i < wrows && (!a.causal || k0 + j <= offset + r0 + i); }, no_add);
        }
    } else if (MODE == kBlock) {
        const int hmask = h / (a.hq / a.hm);
        const int32_t *row_ptr = a.row_ptr + (size_t)hmask * (a.n_qb + 1);
        int e = row_ptr[unit], off = 0;
        const int e_end = row_ptr[unit + 1];
        while (e < e_end) {  // uniform: every thread advances the same cursors
            __syncthreads();
            int n = 0;
            while (n < TL::BK && e < e_end) {
                const int c = a.col_idx[e];
                const int len = min(a.bk, a.nk - c * a.bk);  // the key block, clipped to nk
                const int take = min(len - off, TL::BK - n);
                const int t = (int)threadIdx.x - n;
                if (t >= 0 && t < take) {
                    sm.slot_key[threadIdx.x] = c * a.bk + off + t;
                    sm.slot_part[threadIdx.x] = a.part[e];
                    sm.slot_off[threadIdx.x] = off + t;
                }
                n += take, off += take;
                if (off == len)
                    e++, off = 0;
            }
            __syncthreads();
            const auto key_row = [&](int j) { return j < n ? sm.slot_key[j] : -1; };
            load_rows<T, D>(sm.ks, kg, a.d, TL::BK, key_row);
            load_rows<T, D>(sm.vs, vg, a.d, TL::BK, key_row);
            __syncthreads();
            if (wrows > 0)
                warp_tile<T, D>(
                    sm, a.scale_log2, n,
                    [&](int i, int j) {
                        const int p = sm.slot_part[j];
                        return i < wrows &&
                               (p < 0 || a.bits[((size_t)p * a.bq + (r0 + i - rb0)) * a.bk + sm.slot_off[j]] != 0);
                    },
                    no_add);
        }
    } else {
        const int32_t *lrp = a.row_ptr + (size_t)(h / (a.hq / a.hm)) * (a.n_qb + 1);
        const int32_t *keys = a.col_idx + lrp[unit];
        const int n_keys = lrp[unit + 1] - lrp[unit];
        const float *bias = a.bias ? a.bias + (size_t)(a.bias_heads == 1 ? 0 : h) * a.nq * a.nk : nullptr;
        for (int k0 = 0; k0 < n_keys; k0 += TL::BK) {
            __syncthreads();
            const int n = min(TL::BK, n_keys - k0);
            if ((int)threadIdx.x < n)
                sm.slot_key[threadIdx.x] = keys[k0 + threadIdx.x];
            __syncthreads();
            const auto key_row = [&](int j) { return j < n ? sm.slot_key[j] : -1; };
            load_rows<T, D>(sm.ks, kg, a.d, TL::BK, key_row);
            load_rows<T, D>(sm.vs, vg, a.d, TL::BK, key_row);
            __syncthreads();
            if (wrows > 0)
                warp_tile<T, D>(
                    sm, a.scale_log2, n, [&](int i, int) { return i < wrows; },
                    [&](int i, int j) {
                        return bias && i < wrows ? bias[(size_t)(r0 + i) * a.nk + sm.slot_key[j]] * kLog2e : 0.f;
                    });
        }
    }
    // O / l and LSE of the warp's live rows.
    for (int i = 0; i < wrows; i++) {
        const int r = r0 + i;
        const float lt = sm.l[warp * 16 + i], mt = sm.m[warp * 16 + i];
        const bool some = lt > 0.f || lt != lt;  // NaN reaches the output
        float *orow = a.o + ((size_t)h * a.nq + r) * a.d;
        for (int c = lane; c < a.d; c += 32)
            orow[c] = some ? ow[i * TL::OS + c] / lt : 0.f;
        if (lane == 0)
            a.lse[(size_t)h * a.nq + r] = some ? mt * kLn2 + logf(lt) : -INFINITY;
    }
}

// Shared memory past 48 KiB needs the opt-in attribute (set per launch: no cached state).
template <class T, int D, int MODE> cudaError_t launch(const Args &a, dim3 grid, cudaStream_t st)
{
    void (*kernel)(Args) = mma_kernel<T, D, MODE>;
    constexpr size_t smem = Tile<D>::smem_bytes;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess)
        return err;
    SL_LAUNCH(kernel, grid, kThreads, smem, st)(a);
    return cudaGetLastError();
}

template <class T, int MODE> cudaError_t run(const Args &a, int units, cudaStream_t st)
{
    cudaError_t err = cudaErrorInvalidValue;  // head_dim outside 1..256 (rejected before by the callers)
    with_head_dim(a.d, [&](auto dc) {
        constexpr int D = decltype(dc)::value;
        const unsigned gx = MODE == kDense ? (unsigned)((a.nq + BQ - 1) / BQ)
                                           : (unsigned)units * (unsigned)((a.bq + BQ - 1) / BQ);
        err = launch<T, D, MODE>(a, dim3(gx, a.hq), st);
    });
    return err;
}

template <int MODE> cudaError_t run_dtype(const Args &a, bool bf16, int units, cudaStream_t st)
{
    return bf16 ? run<__nv_bfloat16, MODE>(a, units, st) : run<__half, MODE>(a, units, st);
}

static Args from_attn(const sl__cuda_attn &f)
{
    Args a = {};
    a.q = f.q, a.k = f.k, a.v = f.v, a.o = f.o, a.lse = f.lse;
    a.hq = f.hq, a.hkv = f.hkv, a.nq = f.nq, a.nk = f.nk, a.d = f.d;
    a.scale_log2 = f.scale_log2, a.causal = f.causal;
    a.row_ptr = f.row_ptr, a.col_idx = f.col_idx, a.part = f.part, a.bits = f.bits;
    a.hm = f.hm, a.bq = f.bq, a.bk = f.bk, a.n_qb = f.n_qb;
    return a;
}

}  // namespace sl_mma

// The launchers (same contract as attn.cu's flash and gathered launchers: the
// caller has checked the sizes with their *_unsupported functions;
// q, k, v point at device bf16 (bf16 true) or f16 data behind the float pointers).
static inline cudaError_t sl__cuda_attn_mma_dense(const sl__cuda_attn &f, bool bf16, cudaStream_t st)
{
    return sl_mma::run_dtype<sl_mma::kDense>(sl_mma::from_attn(f), bf16, 0, st);
}

static inline cudaError_t sl__cuda_attn_mma_dense_bf16(const sl__cuda_attn &f, cudaStream_t st)
{
    return sl__cuda_attn_mma_dense(f, true, st);
}
static inline cudaError_t sl__cuda_attn_mma_dense_f16(const sl__cuda_attn &f, cudaStream_t st)
{
    return sl__cuda_attn_mma_dense(f, false, st);
}

// attn.block_sparse without pv_skip (the host side runs pv_skip as f32: sl__mma_as_f32).
static inline cudaError_t sl__cuda_attn_mma_block_sparse(const sl__cuda_attn &f, bool bf16, cudaStream_t st)
{
    return sl_mma::run_dtype<sl_mma::kBlock>(sl_mma::from_attn(f), bf16, f.n_qb, st);
}

static inline cudaError_t sl__cuda_attn_mma_block_sparse_bf16(const sl__cuda_attn &f, cudaStream_t st)
{
    return sl__cuda_attn_mma_block_sparse(f, true, st);
}
static inline cudaError_t sl__cuda_attn_mma_block_sparse_f16(const sl__cuda_attn &f, cudaStream_t st)
{
    return sl__cuda_attn_mma_block_sparse(f, false, st);
}

// attn.token_sparse: writes O and LSE directly (no split of the keys, no
// partials), starting from the state when state_o is set.
static inline cudaError_t sl__cuda_token_sparse_mma(const sl__cuda_gather &g, const float *state_o,
                                                    const float *state_lse, float *o, float *lse, bool bf16,
                                                    cudaStream_t st)
{
    sl_mma::Args a = {};
    a.q = g.q, a.k = g.k, a.v = g.v, a.o = o, a.lse = lse;
    a.hq = g.hq, a.hkv = g.hkv, a.nq = g.nq, a.nk = g.nk, a.d = g.d, a.scale_log2 = g.scale_log2;
    a.row_ptr = g.row_ptr, a.col_idx = g.col, a.hm = g.hm, a.bq = g.b, a.n_qb = g.n_e;
    a.bias = g.bias, a.bias_heads = g.bias_heads, a.state_o = state_o, a.state_lse = state_lse;
    return sl_mma::run_dtype<sl_mma::kToken>(a, bf16, g.n_e, st);
}

// Host side, for the executors' glue: which kernel family a call's q, k, v
// take. 1: all bf16, 2: all f16 (the WMMA kernels), 0: all f32, -1: another
// mix (q, k, v converted to f32 by sl__mma_as_f32, then the f32 kernels).
static inline int sl__mma_dtype(const sl__kargs *a)
{
    const sl_dtype t = a->in[0].dtype;
    if (a->in[1].dtype != t || a->in[2].dtype != t)
        return -1;
    return t == SL_BF16 ? 1 : t == SL_F16 ? 2 : t == SL_F32 ? 0 : -1;
}

// Runs fn (an f32 executor) on a copy of the call whose q, k, v are f32.
static inline sl_status sl__mma_as_f32(const sl__kargs *a, sl_status (*fn)(const sl__kargs *))
{
    const sl_op_info *info = sl_op_info_get(a->op);
    sl_tensor in[SL_OP_MAX_INPUTS] = {};
    for (int i = 0; i < info->n_in; i++)
        in[i] = a->in[i];
    sl_status s = SL_OK;
    bool conv[3] = {};
    for (int i = 0; i < 3 && s == SL_OK; i++)
        if (a->in[i].dtype != SL_F32 && (s = sl_tensor_convert(a->ctx, &a->in[i], SL_F32, &in[i])) == SL_OK)
            conv[i] = true;
    if (s == SL_OK) {
        sl__kargs b = *a;
        b.in = in;
        s = fn(&b);
    }
    for (int i = 0; i < 3; i++)
        if (conv[i])
            sl_tensor_release(&in[i]);
    return s;
}

#endif
