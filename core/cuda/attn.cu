// cuda/attn.cu — the attention family on CUDA:
//   attn.dense, attn.block_sparse (with its pv_skip option), attn.vs_mixed:
//       flash-style f32 kernels with key tiles in shared memory and an online
//       softmax in registers (namespace flash);
//   attn.token_sparse, attn.rows: executors over gathered keys and chosen rows,
//       and the log-sum-exp merge that finishes them and serves attn.lse_merge
//       (namespace gathered);
//   attn.linear, attn.pooled_kv: one CTA per (head, row), keys in chunks through
//       shared memory (attn.linear in its quadratic form, attn.pooled_kv pooling
//       each group as it reads it) (namespace rowwise);
//   attn.bucket: one thread per query row (namespace bucket);
// and the host side of each. Compiled with `make CUDA=1`; run under the CUDA
// simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "warp.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <mma.h>
#include <type_traits>

namespace {

// ==== attn.dense, attn.block_sparse, attn.vs_mixed ====

// Device pointers and sizes of one attention call (validated and range-checked
// by the caller). Tensors are contiguous f32: q [hq, nq, d], k and v [hkv, nk, d],
// o [hq, nq, d], lse [hq, nq]. The mask fields are read by attn.block_sparse
// and attn.vs_mixed, the list and option fields by attn.vs_mixed only.
struct sl__cuda_attn {
    const float *q, *k, *v;
    float *o, *lse;
    int hq, hkv, nq, nk, d;
    int causal;          // attn.dense: key j visible to row r iff j <= nk - nq + r
    float scale_log2;    // score scale times log2(e): softmax runs in base 2
    const int32_t *row_ptr, *col_idx, *part;  // the block mask (see sl_mask)
    const uint8_t *bits;
    int hm, bq, bk, n_qb;
    float pv_skip_log2;  // attn.block_sparse's pv_skip times log2(e); 0 = off
    const int32_t *list_ptr, *list_col;  // attn.vs_mixed: index lists, one entry per mask query block
    int hl;                              // list heads
    const float *bias;                   // [bias_heads, nq, nk] or null
    int bias_heads;
    const float *state_o, *state_lse;    // [hq, nq, d], [hq, nq] or null
};

// Design. One CTA of kWarps warps owns one head and one tile of BQ = kWarps * R
// query rows; each warp owns R consecutive rows. The CTA walks the keys in tiles
// of BK, staging K and V in shared memory; nothing of size n_q x n_k exists.
//   scores  lane l computes the scores of key slots l, l + 32, ... against the
//           warp's R rows (Q rows are read as shared-memory broadcasts), so a dot
//           product needs no shuffles; only the row max and sum cross lanes.
//   softmax per row a running max m (base 2, scores pre-scaled by scale*log2 e),
//           a per-lane partial sum l and the accumulator o, rescaled by
//           exp2(m_old - m_new) whenever the max grows.
//   P·V     the warp writes its probabilities to shared memory ([key][row], so a
//           float4 load gives four rows), then lane l accumulates output dims
//           l, l + 32, ... of every row.
// A row that has not yet seen a visible key keeps m = -inf; the exponent base is
// then 0 instead of m so that exp2(-inf - -inf) = NaN never happens, and a row
// that never sees one ends with l = 0, written as O = 0 and lse = -inf.
// A head_dim d below the kernel's width D is zero-padded in shared memory.
// attn.vs_mixed is the block kernel with a second phase: after the kept blocks
// the same tiles are filled with the query block's listed columns, each slot
// marked with whether the block mask already keeps it (then it is dropped for
// that row, so a key counts once); its bias and starting state ride along.
// pv_skip (SpargeAttn) needs each kept block's own max before the block's
// P·V: tiles then hold whole blocks only, and a block longer than a tile gets
// a scores-only pass over its keys first (one more Q·K of that block).

namespace flash {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;

template <int D> struct Tile {
    static constexpr int R = 8;                   // query rows per warp
    static constexpr int BQ = kWarps * R;         // query rows per CTA
    static constexpr int BK = D <= 64 ? 64 : 32;  // keys per tile
    static constexpr int S = BK / 32;             // key slots per lane
    static constexpr int DL = D / 32;             // output dims per lane
    // Padded strides: the 8 lanes of a float4 shared-memory phase then hit 32
    // distinct banks (rows D + 4 or R + 4 floats apart, D a multiple of 32).
    static constexpr int KS = D + 4;
    static constexpr int PS = R + 4;
    static constexpr int floats = BQ * D + BK * KS + BK * D + kWarps * BK * PS;
    static constexpr size_t smem_bytes = sizeof(float) * floats + sizeof(int) * 4 * BK;
    static_assert(D % 32 == 0 && R % 4 == 0 && BK % 32 == 0, "tile shape");
};



// Copies n rows of src (d floats each) into dst as rows of D floats (row
// stride STRIDE), multiplied by mul and zero-padded past d; src_row(j) gives
// the source row of slot j, or -1 for a zero row. d == D takes float4 loads.
template <int D, int STRIDE, class RowOf>
__device__ __forceinline__ void load_rows(float *dst, const float *__restrict__ src, int d, int n, float mul,
                                          RowOf src_row)
{
    if (d == D) {
        for (int e = threadIdx.x * 4; e < n * D; e += kThreads * 4) {
            const int j = e / D, c = e % D;
            const int row = src_row(j);
            float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
            if (row >= 0) {
                x = *reinterpret_cast<const float4 *>(src + (size_t)row * D + c);
                x.x *= mul, x.y *= mul, x.z *= mul, x.w *= mul;
            }
            *reinterpret_cast<float4 *>(dst + j * STRIDE + c) = x;
        }
    } else {
        for (int e = threadIdx.x; e < n * D; e += kThreads) {
            const int j = e / D, c = e % D;
            const int row = src_row(j);
            dst[j * STRIDE + c] = row >= 0 && c < d ? src[(size_t)row * d + c] * mul : 0.f;
        }
    }
}

// Scores of the warp's R rows (qw, pre-scaled) against the BK keys in ks:
// lane l holds key slots l, l + 32, ...
template <int D>
__device__ __forceinline__ void tile_scores(const float *qw, const float *ks, float (&s)[Tile<D>::R][Tile<D>::S])
{
    using T = Tile<D>;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < T::R; i++)
#pragma unroll
        for (int t = 0; t < T::S; t++)
            s[i][t] = 0.f;
#pragma unroll 4
    for (int c = 0; c < D; c += 4) {
        float4 kv[T::S];
#pragma unroll
        for (int t = 0; t < T::S; t++)
            kv[t] = *reinterpret_cast<const float4 *>(ks + (t * 32 + lane) * T::KS + c);
#pragma unroll
        for (int i = 0; i < T::R; i++) {
            const float4 qv = *reinterpret_cast<const float4 *>(qw + i * D + c);
#pragma unroll
            for (int t = 0; t < T::S; t++)
                s[i][t] = fmaf(qv.w, kv[t].w, fmaf(qv.z, kv[t].z, fmaf(qv.y, kv[t].y, fmaf(qv.x, kv[t].x, s[i][t]))));
        }
    }
}

// What pv_skip needs to know about a tile: per slot the end of its key
// block's run of slots (the run starts at max(0, slot - offset in block)),
// the row maxima of a block longer than the tile (ext; -inf otherwise) and
// the threshold in base-2 score units. Null when pv_skip is off.
template <int D> struct SkipInfo {
    const int *slot_end, *slot_off;
    const float (&ext)[Tile<D>::R];
    float thresh;
};

// One key tile for one warp: scores of its R rows (qw) against the BK keys in
// ks, passed through adjust(i, slot, score) (-inf for a pair the mask drops,
// else the score plus any bias), folded into the running softmax state, then
// P·V over the first n_keys slots (all later slots have probability 0). With
// skip, a slot whose block fails SpargeAttn's test keeps its exp-sum in l but
// gets probability 0 in P·V.
template <int D, bool SKIP, class Adjust>
__device__ __forceinline__ void tile_update(const float *qw, const float *ks, const float *vs, float *pw, int n_keys,
                                            Adjust adjust, const SkipInfo<D> *skip_info, float (&m)[Tile<D>::R],
                                            float (&l)[Tile<D>::R], float (&o)[Tile<D>::R][Tile<D>::DL])
{
    using T = Tile<D>;
    const int lane = threadIdx.x % 32;
    float s[T::R][T::S];
    tile_scores<D>(qw, ks, s);
#pragma unroll
    for (int i = 0; i < T::R; i++)
#pragma unroll
        for (int t = 0; t < T::S; t++)
            s[i][t] = adjust(i, t * 32 + lane, s[i][t]);
    bool skip[T::R][T::S];
    if constexpr (SKIP) {
        // SpargeAttn's test per row and kept block, in key order: the block's
        // own max b against the running max after it (earlier tiles through
        // m, this tile's slots up to the block's end, a long block's ext).
        // The raw scores go through pw so every lane sees every slot.
#pragma unroll
        for (int t = 0; t < T::S; t++)
#pragma unroll
            for (int i = 0; i < T::R; i += 4)
                *reinterpret_cast<float4 *>(pw + (t * 32 + lane) * T::PS + i) =
                    make_float4(s[i][t], s[i + 1][t], s[i + 2][t], s[i + 3][t]);
        __syncwarp();
#pragma unroll
        for (int t = 0; t < T::S; t++) {
            const int j = t * 32 + lane;
            const int end = j < n_keys ? skip_info->slot_end[j] : 0;
            const int begin = j < n_keys ? max(0, j - skip_info->slot_off[j]) : 0;
            float b[T::R], run[T::R];
#pragma unroll
            for (int i = 0; i < T::R; i++)
                b[i] = skip_info->ext[i], run[i] = fmaxf(m[i], skip_info->ext[i]);
            for (int jj = 0; jj < end; jj++)
#pragma unroll
                for (int i = 0; i < T::R; i += 4) {
                    const float4 x = *reinterpret_cast<const float4 *>(pw + jj * T::PS + i);
                    run[i] = fmaxf(run[i], x.x), run[i + 1] = fmaxf(run[i + 1], x.y);
                    run[i + 2] = fmaxf(run[i + 2], x.z), run[i + 3] = fmaxf(run[i + 3], x.w);
                    if (jj >= begin) {
                        b[i] = fmaxf(b[i], x.x), b[i + 1] = fmaxf(b[i + 1], x.y);
                        b[i + 2] = fmaxf(b[i + 2], x.z), b[i + 3] = fmaxf(b[i + 3], x.w);
                    }
                }
#pragma unroll
            for (int i = 0; i < T::R; i++)
                skip[i][t] = b[i] != -INFINITY && b[i] < run[i] - skip_info->thresh;
        }
        __syncwarp();  // pw is rewritten with probabilities below
    }
#pragma unroll
    for (int i = 0; i < T::R; i++) {
        float mt = -INFINITY;
#pragma unroll
        for (int t = 0; t < T::S; t++)
            mt = fmaxf(mt, s[i][t]);
        const float mn = fmaxf(m[i], warp_max(mt));
        const float base = mn == -INFINITY ? 0.f : mn;  // see the design note: no -inf - -inf
        const float alpha = exp2f(m[i] - base);         // 0 while m[i] is -inf (o and l are 0 then)
        float psum = 0.f;
#pragma unroll
        for (int t = 0; t < T::S; t++) {
            s[i][t] = exp2f(s[i][t] - base);  // masked: exp2(-inf) = 0
            psum += s[i][t];
            if constexpr (SKIP)
                if (skip[i][t])
                    s[i][t] = 0.f;  // in the sum, not in P·V
        }
        l[i] = l[i] * alpha + psum;
        m[i] = mn;
#pragma unroll
        for (int u = 0; u < T::DL; u++)
            o[i][u] *= alpha;
    }
#pragma unroll
    for (int t = 0; t < T::S; t++)
#pragma unroll
        for (int i = 0; i < T::R; i += 4)
            *reinterpret_cast<float4 *>(pw + (t * 32 + lane) * T::PS + i) =
                make_float4(s[i][t], s[i + 1][t], s[i + 2][t], s[i + 3][t]);
    __syncwarp();
#pragma unroll 4
    for (int j = 0; j < n_keys; j++) {
        float vv[T::DL];
#pragma unroll
        for (int u = 0; u < T::DL; u++)
            vv[u] = vs[j * D + u * 32 + lane];
#pragma unroll
        for (int i = 0; i < T::R; i += 4) {
            const float4 p = *reinterpret_cast<const float4 *>(pw + j * T::PS + i);
#pragma unroll
            for (int u = 0; u < T::DL; u++) {
                o[i][u] = fmaf(p.x, vv[u], o[i][u]);
                o[i + 1][u] = fmaf(p.y, vv[u], o[i + 1][u]);
                o[i + 2][u] = fmaf(p.z, vv[u], o[i + 2][u]);
                o[i + 3][u] = fmaf(p.w, vv[u], o[i + 3][u]);
            }
        }
    }
    __syncwarp();  // pw is rewritten by the next tile
}

// Writes the warp's rows r0 .. r0 + R - 1 of head h that lie below row_end
// (the first a.d of the D accumulated dims).
template <int D>
__device__ __forceinline__ void store_rows(const sl__cuda_attn &a, int h, int r0, int row_end, const float (&m)[Tile<D>::R],
                                           const float (&l)[Tile<D>::R], const float (&o)[Tile<D>::R][Tile<D>::DL])
{
    using T = Tile<D>;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < T::R; i++) {
        const float lt = warp_sum(l[i]);
        const int r = r0 + i;
        if (r >= row_end)
            continue;
        float *orow = a.o + ((size_t)h * a.nq + r) * a.d;
#pragma unroll
        for (int u = 0; u < T::DL; u++)
            if (u * 32 + lane < a.d)
                orow[u * 32 + lane] = lt > 0.f || lt != lt ? o[i][u] / lt : 0.f;  // NaN reaches the output
        if (lane == 0)
            a.lse[(size_t)h * a.nq + r] = lt > 0.f || lt != lt ? m[i] * kLn2 + logf(lt) : -INFINITY;
    }
}

template <int D> struct Smem {
    float *qs, *ks, *vs, *pw;
    int *slot_key, *slot_part, *slot_off, *slot_end;
    __device__ explicit Smem(float *base)
    {
        using T = Tile<D>;
        qs = base;
        ks = qs + T::BQ * D;
        vs = ks + T::BK * T::KS;
        pw = vs + T::BK * D + (threadIdx.x / 32) * T::BK * T::PS;
        slot_key = reinterpret_cast<int *>(base + T::floats);
        slot_part = slot_key + T::BK;
        slot_off = slot_part + T::BK;
        slot_end = slot_off + T::BK;
    }
};

// attn.dense: grid (query tiles, hq). Causal tiles run last-first, so the CTAs
// with the most keys start earliest.
template <int D> __global__ void __launch_bounds__(kThreads) attn_dense_kernel(const sl__cuda_attn a)
{
    using T = Tile<D>;
    SL_DYN_SMEM(float4, smem_f4);
    const Smem<D> sm(reinterpret_cast<float *>(smem_f4));
    const int h = blockIdx.y, warp = threadIdx.x / 32;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * T::BQ, r0 = q0 + warp * T::R;
    const int g = h / (a.hq / a.hkv), offset = a.nk - a.nq;
    const float *kg = a.k + (size_t)g * a.nk * a.d, *vg = a.v + (size_t)g * a.nk * a.d;

    load_rows<D, D>(sm.qs, a.q + (size_t)h * a.nq * a.d, a.d, T::BQ, a.scale_log2,
                    [&](int j) { return q0 + j < a.nq ? q0 + j : -1; });
    // Row i sees keys [0, lim[i]); rows past nq see none.
    int lim[T::R], wlim = 0;
#pragma unroll
    for (int i = 0; i < T::R; i++) {
        const int r = r0 + i;
        lim[i] = r >= a.nq ? 0 : a.causal ? min(a.nk, offset + r + 1) : a.nk;
        wlim = max(wlim, lim[i]);
    }
    const int kend = a.causal ? min(a.nk, offset + min(q0 + T::BQ, a.nq)) : a.nk;

    float m[T::R], l[T::R], o[T::R][T::DL];
#pragma unroll
    for (int i = 0; i < T::R; i++) {
        m[i] = -INFINITY, l[i] = 0.f;
#pragma unroll
        for (int u = 0; u < T::DL; u++)
            o[i][u] = 0.f;
    }
    for (int k0 = 0; k0 < kend; k0 += T::BK) {
        __syncthreads();  // every warp is done with the previous tile
        const auto key_row = [&](int j) { return k0 + j < a.nk ? k0 + j : -1; };
        load_rows<D, T::KS>(sm.ks, kg, a.d, T::BK, 1.f, key_row);
        load_rows<D, D>(sm.vs, vg, a.d, T::BK, 1.f, key_row);
        __syncthreads();
        if (k0 < wlim)  // warp-uniform: a warp above the causal diagonal skips the tile
            tile_update<D, false>(sm.qs + warp * T::R * D, sm.ks, sm.vs, sm.pw, min(T::BK, wlim - k0),
                                  [&](int i, int j, float x) { return k0 + j < lim[i] ? x : -INFINITY; }, nullptr, m,
                                  l, o);
    }
    store_rows<D>(a, h, r0, a.nq, m, l, o);
}

// Slot codes of attn.vs_mixed's listed columns (slot_part; block slots use
// -1 = full block, p >= 0 = partial block p): kFree, the row keeps it; kDup,
// its block is kept whole, so the block part has it already; kPartial - p,
// kept by the block part exactly where partial block p's bit is set.
constexpr int kFree = -2, kDup = -3, kPartial = -4;

// Row maxima (base 2, masked) of the warp's rows over kept block e (key block
// c, len keys, longer than a tile), for pv_skip: a scores-only pass over its
// keys, through shared memory like the main loop. Uniform over the CTA.
template <int D>
__device__ void block_row_max(const sl__cuda_attn &a, const Smem<D> &sm, const float *kg, int e, int r0, int rb0, int qend,
                              bool warp_live, float (&bmax)[Tile<D>::R])
{
    using T = Tile<D>;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int c = a.col_idx[e], p = a.part[e];
    const int len = min(a.bk, a.nk - c * a.bk);
#pragma unroll
    for (int i = 0; i < T::R; i++)
        bmax[i] = -INFINITY;
    for (int off = 0; off < len; off += T::BK) {
        const int nn = min(T::BK, len - off);
        __syncthreads();  // the previous users of ks are done
        load_rows<D, T::KS>(sm.ks, kg, a.d, T::BK, 1.f, [&](int j) { return j < nn ? c * a.bk + off + j : -1; });
        __syncthreads();
        if (!warp_live)
            continue;
        float s[T::R][T::S];
        tile_scores<D>(sm.qs + warp * T::R * D, sm.ks, s);
#pragma unroll
        for (int i = 0; i < T::R; i++) {
            float mt = -INFINITY;
#pragma unroll
            for (int t = 0; t < T::S; t++) {
                const int j = t * 32 + lane, r = r0 + i;
                const bool vis = j < nn && r < qend &&
                                 (p < 0 || a.bits[((size_t)p * a.bq + (r - rb0)) * a.bk + off + j] != 0);
                mt = fmaxf(mt, vis ? s[i][t] : -INFINITY);
            }
            bmax[i] = fmaxf(bmax[i], warp_max(mt));
        }
    }
}

// attn.block_sparse (MIXED false) and attn.vs_mixed (MIXED true): grid (mask
// query blocks x sub-tiles of BQ rows, hq). Each tile gathers up to BK keys
// from the kept key blocks of the CTA's mask row, in order, into slots:
// slot_key (key index), slot_part (part of its block entry) and slot_off
// (offset inside its key block, for the partial-block bits); with MIXED the
// listed columns follow. SKIP: pv_skip (block_sparse only).
template <int D, bool SKIP, bool MIXED>
__global__ void __launch_bounds__(kThreads) attn_block_kernel(const sl__cuda_attn a)
{
    static_assert(!(SKIP && MIXED), "attn.vs_mixed has no pv_skip");
    using T = Tile<D>;
    SL_DYN_SMEM(float4, smem_f4);
    const Smem<D> sm(reinterpret_cast<float *>(smem_f4));
    const int h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n_sub = (a.bq + T::BQ - 1) / T::BQ, qb = blockIdx.x / n_sub;
    const int rb0 = qb * a.bq, q0 = rb0 + (blockIdx.x % n_sub) * T::BQ, r0 = q0 + warp * T::R;
    const int qend = min(rb0 + a.bq, a.nq);  // rows of this CTA: [q0, min(q0 + BQ, qend))
    if (q0 >= qend)
        return;  // the whole CTA: a sub-tile past a short last block
    const int g = h / (a.hq / a.hkv), hmask = h / (a.hq / a.hm);
    const float *kg = a.k + (size_t)g * a.nk * a.d, *vg = a.v + (size_t)g * a.nk * a.d;
    const int32_t *row_ptr = a.row_ptr + (size_t)hmask * (a.n_qb + 1);

    load_rows<D, D>(sm.qs, a.q + (size_t)h * a.nq * a.d, a.d, T::BQ, a.scale_log2,
                    [&](int j) { return q0 + j < qend ? q0 + j : -1; });
    const bool warp_live = r0 < qend;

    float m[T::R], l[T::R], o[T::R][T::DL];
#pragma unroll
    for (int i = 0; i < T::R; i++) {
        m[i] = -INFINITY, l[i] = 0.f;
#pragma unroll
        for (int u = 0; u < T::DL; u++)
            o[i][u] = 0.f;
    }
    const float *bias = nullptr;
    int li = 0, li_end = 0;  // the listed columns of this query block (MIXED)
    if constexpr (MIXED) {
        if (a.state_o) {
            // A finished pass (O, L) is the state (m = L, l = 1, acc = O); l
            // is a per-lane partial sum, so lane 0 holds the 1.
#pragma unroll
            for (int i = 0; i < T::R; i++) {
                const int r = r0 + i;
                const float L = r < qend ? a.state_lse[(size_t)h * a.nq + r] : -INFINITY;
                if (L == -INFINITY)
                    continue;
                m[i] = L * kLog2e;
                l[i] = lane == 0 ? 1.f : 0.f;
#pragma unroll
                for (int u = 0; u < T::DL; u++)
                    o[i][u] = u * 32 + lane < a.d ? a.state_o[((size_t)h * a.nq + r) * a.d + u * 32 + lane] : 0.f;
            }
        }
        if (a.bias)
            bias = a.bias + (size_t)(a.bias_heads == 1 ? 0 : h) * a.nq * a.nk;
        const int32_t *lrp = a.list_ptr + (size_t)(h / (a.hq / a.hl)) * (a.n_qb + 1);
        li = lrp[qb], li_end = lrp[qb + 1];
    }
    float ext[T::R];  // pv_skip: row maxima of a block longer than a tile
#pragma unroll
    for (int i = 0; i < T::R; i++)
        ext[i] = -INFINITY;
    const SkipInfo<D> skip_info = {sm.slot_end, sm.slot_off, ext, a.pv_skip_log2};

    // Every thread advances the same cursors (entry e, key offset off inside
    // its block; then list position li), so the loop and its barriers are uniform.
    int e = row_ptr[qb], off = 0;
    const int e_begin = e, e_end = row_ptr[qb + 1];
    while (e < e_end || li < li_end) {
        __syncthreads();  // every warp is done with the previous tile and its slots
        int n = 0;
        // Puts take keys of block entry e from offset off into slots n ...
        const auto put_block = [&](int c, int take) {
            const int t = (int)threadIdx.x - n;
            if (t >= 0 && t < take) {
                sm.slot_key[threadIdx.x] = c * a.bk + off + t;
                sm.slot_part[threadIdx.x] = a.part[e];
                sm.slot_off[threadIdx.x] = off + t;
                sm.slot_end[threadIdx.x] = n + take;
            }
        };
        if constexpr (SKIP) {
            const int c = a.col_idx[e], len = min(a.bk, a.nk - c * a.bk);
            if (len > T::BK) {  // a long block: alone in its tiles, its maxima first
                if (off == 0)
                    block_row_max<D>(a, sm, kg, e, r0, rb0, qend, warp_live, ext);
                const int take = min(len - off, T::BK);
                put_block(c, take);
                n = take, off += take;
                if (off == len)
                    e++, off = 0;
            } else {  // whole blocks only, so each block's max is in the tile
#pragma unroll
                for (int i = 0; i < T::R; i++)
                    ext[i] = -INFINITY;
                while (e < e_end) {
                    const int ce = a.col_idx[e], le = min(a.bk, a.nk - ce * a.bk);
                    if (le > T::BK - n)
                        break;
                    put_block(ce, le);
                    n += le, e++;
                }
            }
        } else {
            while (n < T::BK && e < e_end) {
                const int c = a.col_idx[e];
                const int len = min(a.bk, a.nk - c * a.bk);  // the key block, clipped to nk
                const int take = min(len - off, T::BK - n);
                put_block(c, take);
                n += take, off += take;
                if (off == len)
                    e++, off = 0;
            }
        }
        if constexpr (MIXED) {
            if (e == e_end && n < T::BK && li < li_end) {
                const int take = min(li_end - li, T::BK - n);
                const int t = (int)threadIdx.x - n;
                if (t >= 0 && t < take) {
                    const int key = a.list_col[li + t], kb = key / a.bk;
                    int lo = e_begin, hi = e_end;  // the kept entry of key block kb, if any
                    while (lo < hi) {
                        const int mid = (lo + hi) / 2;
                        if (a.col_idx[mid] < kb)
                            lo = mid + 1;
                        else
                            hi = mid;
                    }
                    const bool kept = lo < e_end && a.col_idx[lo] == kb;
                    sm.slot_key[threadIdx.x] = key;
                    sm.slot_part[threadIdx.x] = !kept ? kFree : a.part[lo] < 0 ? kDup : kPartial - a.part[lo];
                    sm.slot_off[threadIdx.x] = key - kb * a.bk;
                }
                n += take, li += take;
            }
        }
        __syncthreads();
        const auto key_row = [&](int j) { return j < n ? sm.slot_key[j] : -1; };
        load_rows<D, T::KS>(sm.ks, kg, a.d, T::BK, 1.f, key_row);
        load_rows<D, D>(sm.vs, vg, a.d, T::BK, 1.f, key_row);
        __syncthreads();
        if (!warp_live)
            continue;
        const auto adjust = [&](int i, int j, float x) {
            const int r = r0 + i;
            if (j >= n || r >= qend)
                return -INFINITY;
            const int p = sm.slot_part[j];
            const size_t row_bits = (size_t)(r - rb0) * a.bk + sm.slot_off[j];
            bool vis;
            if (p >= -1)
                vis = p < 0 || a.bits[(size_t)p * a.bq * a.bk + row_bits] != 0;
            else if (p == kFree)
                vis = true;
            else if (p == kDup)
                vis = false;
            else  // a listed column in a partial block: the block part has it where the bit is set
                vis = a.bits[(size_t)(kPartial - p) * a.bq * a.bk + row_bits] == 0;
            if (!vis)
                return -INFINITY;
            return MIXED && bias ? x + bias[(size_t)r * a.nk + sm.slot_key[j]] * kLog2e : x;
        };
        tile_update<D, SKIP>(sm.qs + warp * T::R * D, sm.ks, sm.vs, sm.pw, n, adjust, SKIP ? &skip_info : nullptr, m,
                             l, o);
    }
    if (warp_live)
        store_rows<D>(a, h, r0, qend, m, l, o);  // rows from qend on belong to the next mask block
}

// Tiles past 48 KiB of shared memory need the opt-in attribute (set per launch: no cached state).
template <int D> cudaError_t launch(void (*kernel)(sl__cuda_attn), dim3 grid, const sl__cuda_attn &a, cudaStream_t st)
{
    constexpr size_t smem = Tile<D>::smem_bytes;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess)
        return err;
    SL_LAUNCH(kernel, grid, kThreads, smem, st)(a);
    return cudaGetLastError();
}

// NULL when the kernels handle these sizes, else why not (one phrase). bq and
// n_qb are the block mask's (0 for attn.dense).
const char *attn_unsupported(int64_t hq, int64_t nq, int64_t nk, int64_t d, int64_t bq, int64_t n_qb)
{
    int64_t n_tiles = 0;  // grid.x of attn.block_sparse
    if (!with_head_dim(d, [&](auto dc) {
            constexpr int D = decltype(dc)::value;
            n_tiles = bq > 0 ? n_qb * ((bq + Tile<D>::BQ - 1) / Tile<D>::BQ) : 0;
        }))
        return "head_dim must be 1 to 256 (fastest at 32, 64, 128 or 256)";
    if (hq > 65535)  // grid.y
        return "more than 65535 query heads";
    if (nq > (1 << 30) || nk > (1 << 30))  // int positions, with room for a tile past the end
        return "more than 2^30 tokens";
    if (n_tiles > INT32_MAX)
        return "more than 2^31 - 1 query tiles";
    return nullptr;
}

cudaError_t launch_dense(const sl__cuda_attn &a, cudaStream_t st)
{
    cudaError_t err = cudaErrorInvalidValue;
    with_head_dim(a.d, [&](auto dc) {
        constexpr int D = decltype(dc)::value;
        const dim3 grid((a.nq + Tile<D>::BQ - 1) / Tile<D>::BQ, a.hq);
        err = launch<D>(attn_dense_kernel<D>, grid, a, st);
    });
    return err;
}

// attn.block_sparse (pv_skip when a.pv_skip_log2 > 0) and attn.vs_mixed (a.list_ptr set).
cudaError_t launch_block_sparse(const sl__cuda_attn &a, cudaStream_t st)
{
    cudaError_t err = cudaErrorInvalidValue;
    with_head_dim(a.d, [&](auto dc) {
        constexpr int D = decltype(dc)::value;
        const int n_sub = (a.bq + Tile<D>::BQ - 1) / Tile<D>::BQ;
        const dim3 grid((unsigned)a.n_qb * (unsigned)n_sub, a.hq);
        if (a.list_ptr)
            err = launch<D>(attn_block_kernel<D, false, true>, grid, a, st);
        else if (a.pv_skip_log2 > 0.f)
            err = launch<D>(attn_block_kernel<D, true, false>, grid, a, st);
        else
            err = launch<D>(attn_block_kernel<D, false, false>, grid, a, st);
    });
    return err;
}

}  // namespace flash

// ==== attn.token_sparse, attn.rows, attn.lse_merge ====

// attn.token_sparse and attn.rows: device pointers and
// sizes; each split of the keys writes a partial (O, L) that sl__cuda_merge
// combines. part_o [n_split, hq, n_out, d], part_lse [n_split, hq, n_out].
struct sl__cuda_gather {
    const float *q, *k, *v;
    const float *bias;   // [bias_heads, nq, nk] or null
    float *part_o, *part_lse;
    int hq, hkv, nq, nk, d, n_out, bias_heads, n_split;
    float scale_log2;
    const int32_t *row_ptr, *col;  // token_sparse: index lists (see sparselab.h)
    int hm, n_e, b, n_rg;          // list heads, entries, rows per entry, row groups per entry
    const int32_t *rows, *limits;  // attn.rows: [hr, n_out] each
    int hr;
};

// O, L of rows rows from n_part partials (o1 [n_part, rows, d], lse1 [n_part,
// rows]) and an optional pair (o2, lse2; null when absent), by log-sum-exp.
struct sl__cuda_merge_args {
    const float *o1, *lse1, *o2, *lse2;
    float *o, *lse;
    int64_t rows;
    int d, n_part;
};

// Design (decode first: a few query rows against a long list of keys).
// One CTA of kWarps warps owns one query head, kRows query rows (the rows of
// one list entry, or kRows chosen rows) and one split of the keys. A warp takes
// chunks of 32 keys (warp-strided over the split): lane l holds key j0 + l;
// for each key of the chunk the warp reads the K row coalesced (lane l owns
// dims l, l + 32, ...), reduces the dot products with shuffles and keeps the
// score in the key's lane; one max and one sum per chunk and row update the
// warp's online softmax (base 2, scores pre-scaled by scale·log2 e); the V
// rows are read the same way and accumulated into the lanes' dims. The warps'
// states are merged through shared memory and written as a partial (O, L) per
// split; merge_kernel then combines the splits (and a starting state) by
// log-sum-exp, exactly as attn.lse_merge does. A row that sees no key has
// m = -inf throughout; the exponent base is then 0, so no -inf - -inf, and it
// ends with l = 0: O = 0, L = -inf. A NaN in a K or V row reaches O and L, which
// the dispatcher checks (K and V are not scanned beforehand for this op).

namespace gathered {

using flash::kWarps;
using flash::kThreads;
constexpr int kRows = 4;  // query rows per CTA


// The runtime head dimension as a template parameter: DL = dims per lane, the
// smallest of 1, 2, 4, 8 with 32·DL >= d (with_head_dim's D / 32).
template <class F> bool with_dims_per_lane(int64_t d, F &&f)
{
    return with_head_dim(d, [&](auto dc) { f(std::integral_constant<int, decltype(dc)::value / 32>{}); });
}

// LIST: attn.token_sparse (keys from the CTA's list entry); else attn.rows
// (keys 0 .. limit - 1 of each row). grid (row groups, hq, n_split).
template <int DL, bool LIST> __global__ void __launch_bounds__(kThreads) gather_kernel(const sl__cuda_gather a)
{
    SL_SHARED(float, sm_m, [kWarps][kRows]);
    SL_SHARED(float, sm_l, [kWarps][kRows]);
    SL_SHARED(float, sm_acc, [kWarps][kRows][32 * DL]);
    const int h = blockIdx.y, split = blockIdx.z, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = h / (a.hq / a.hkv);
    int out_row[kRows], q_row[kRows], lim[kRows], n_rows = 0, n_keys = 0;
    const int32_t *keys = nullptr;
    if (LIST) {
        const int e = blockIdx.x / a.n_rg, rg = blockIdx.x % a.n_rg;
        const int e_end = min(a.nq, (e + 1) * a.b), r0 = e * a.b + rg * kRows;
        n_rows = min(kRows, e_end - r0);
        const int32_t *rp = a.row_ptr + (size_t)(h / (a.hq / a.hm)) * (a.n_e + 1);
        keys = a.col + rp[e];
        n_keys = rp[e + 1] - rp[e];
#pragma unroll
        for (int i = 0; i < kRows; i++)
            out_row[i] = q_row[i] = r0 + i, lim[i] = a.nk;
    } else {
        const int r0 = blockIdx.x * kRows, rh = a.hr == 1 ? 0 : h;
        n_rows = min(kRows, a.n_out - r0);
#pragma unroll
        for (int i = 0; i < kRows; i++) {
            const bool ok = i < n_rows;
            out_row[i] = r0 + i;
            q_row[i] = ok ? a.rows[(size_t)rh * a.n_out + r0 + i] : 0;
            lim[i] = ok ? a.limits[(size_t)rh * a.n_out + r0 + i] : 0;
            n_keys = max(n_keys, lim[i]);
        }
    }
    if (n_rows <= 0)
        return;  // a row group past a short last entry (uniform over the CTA)

    float qv[kRows][DL];
#pragma unroll
    for (int i = 0; i < kRows; i++)
#pragma unroll
        for (int u = 0; u < DL; u++) {
            const int c = lane + 32 * u;
            qv[i][u] = i < n_rows && c < a.d ? a.q[((size_t)h * a.nq + q_row[i]) * a.d + c] * a.scale_log2 : 0.f;
        }
    float m[kRows], l[kRows], acc[kRows][DL];
#pragma unroll
    for (int i = 0; i < kRows; i++) {
        m[i] = -INFINITY, l[i] = 0.f;
#pragma unroll
        for (int u = 0; u < DL; u++)
            acc[i][u] = 0.f;
    }
    const float *kg = a.k + (size_t)g * a.nk * a.d, *vg = a.v + (size_t)g * a.nk * a.d;
    const float *bias = a.bias ? a.bias + (size_t)(a.bias_heads == 1 ? 0 : h) * a.nq * a.nk : nullptr;
    const int n_chunks = (n_keys + 31) / 32;
    const int c_begin = (int)((int64_t)n_chunks * split / a.n_split);
    const int c_end = (int)((int64_t)n_chunks * (split + 1) / a.n_split);
    for (int ch = c_begin + warp; ch < c_end; ch += kWarps) {
        const int j0 = ch * 32, n_here = min(32, n_keys - j0);
        const int my = lane < n_here ? (LIST ? keys[j0 + lane] : j0 + lane) : -1;
        float s[kRows];
#pragma unroll
        for (int i = 0; i < kRows; i++)
            s[i] = -INFINITY;
        for (int jj = 0; jj < n_here; jj++) {
            const int key = __shfl_sync(0xffffffffu, my, jj);
            const float *kr = kg + (size_t)key * a.d;
            float kv[DL];
#pragma unroll
            for (int u = 0; u < DL; u++)
                kv[u] = lane + 32 * u < a.d ? kr[lane + 32 * u] : 0.f;
#pragma unroll
            for (int i = 0; i < kRows; i++) {
                float part = 0.f;
#pragma unroll
                for (int u = 0; u < DL; u++)
                    part = fmaf(qv[i][u], kv[u], part);
                const float tot = warp_sum(part);
                if (lane == jj)
                    s[i] = tot;
            }
        }
#pragma unroll
        for (int i = 0; i < kRows; i++) {
            const bool vis = my >= 0 && i < n_rows && my < lim[i];
            s[i] = vis ? s[i] + (bias ? bias[(size_t)q_row[i] * a.nk + my] * kLog2e : 0.f) : -INFINITY;
            const float mn = fmaxf(m[i], warp_max(s[i]));
            const float base = mn == -INFINITY ? 0.f : mn;
            const float alpha = exp2f(m[i] - base);
            s[i] = exp2f(s[i] - base);  // from here on: the probability of the lane's key
            l[i] = l[i] * alpha + warp_sum(s[i]);
            m[i] = mn;
#pragma unroll
            for (int u = 0; u < DL; u++)
                acc[i][u] *= alpha;
        }
        for (int jj = 0; jj < n_here; jj++) {
            const int key = __shfl_sync(0xffffffffu, my, jj);
            const float *vr = vg + (size_t)key * a.d;
            float vv[DL];
#pragma unroll
            for (int u = 0; u < DL; u++)
                vv[u] = lane + 32 * u < a.d ? vr[lane + 32 * u] : 0.f;
#pragma unroll
            for (int i = 0; i < kRows; i++) {
                const float p = __shfl_sync(0xffffffffu, s[i], jj);
#pragma unroll
                for (int u = 0; u < DL; u++)
                    acc[i][u] = fmaf(p, vv[u], acc[i][u]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < kRows; i++) {
        if (lane == 0)
            sm_m[warp][i] = m[i], sm_l[warp][i] = l[i];
#pragma unroll
        for (int u = 0; u < DL; u++)
            sm_acc[warp][i][lane + 32 * u] = acc[i][u];
    }
    __syncthreads();
    const size_t part0 = ((size_t)split * a.hq + h) * a.n_out;
    for (int i = 0; i < n_rows; i++) {
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; w++)
            mx = fmaxf(mx, sm_m[w][i]);
        const float base = mx == -INFINITY ? 0.f : mx;
        float tot = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; w++)
            tot += sm_l[w][i] * exp2f(sm_m[w][i] - base);
        for (int c = threadIdx.x; c < a.d; c += kThreads) {
            float o = 0.f;
#pragma unroll
            for (int w = 0; w < kWarps; w++)
                o += sm_acc[w][i][c] * exp2f(sm_m[w][i] - base);
            a.part_o[(part0 + out_row[i]) * a.d + c] = tot > 0.f || tot != tot ? o / tot : 0.f;
        }
        if (threadIdx.x == 0)
            a.part_lse[part0 + out_row[i]] = tot > 0.f || tot != tot ? base * kLn2 + logf(tot) : -INFINITY;
    }
}

// One warp per row: L = log Σ_s e^(L_s), O = Σ_s e^(L_s - L) O_s over the
// n_part partials and the optional extra pair (o2, lse2). An empty part has
// weight 0; all empty gives O = 0, L = -inf.
__global__ void __launch_bounds__(kThreads) merge_kernel(const sl__cuda_merge_args a)
{
    const int64_t row = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= a.rows)
        return;
    float mx = a.lse2 ? a.lse2[row] : -INFINITY;
    for (int s = 0; s < a.n_part; s++)
        mx = fmaxf(mx, a.lse1[(size_t)s * a.rows + row]);
    // fmaxf drops a NaN: a NaN partial must still poison the row
    bool nan = a.lse2 && a.lse2[row] != a.lse2[row];
    for (int s = 0; s < a.n_part; s++)
        nan |= a.lse1[(size_t)s * a.rows + row] != a.lse1[(size_t)s * a.rows + row];
    if (nan)
        mx = NAN;
    if (mx == -INFINITY) {
        for (int c = lane; c < a.d; c += 32)
            a.o[row * a.d + c] = 0.f;
        if (lane == 0)
            a.lse[row] = -INFINITY;
        return;
    }
    float tot = a.lse2 ? expf(a.lse2[row] - mx) : 0.f;
    for (int s = 0; s < a.n_part; s++)
        tot += expf(a.lse1[(size_t)s * a.rows + row] - mx);
    for (int c = lane; c < a.d; c += 32) {
        float o = a.lse2 ? expf(a.lse2[row] - mx) * a.o2[row * a.d + c] : 0.f;
        for (int s = 0; s < a.n_part; s++)
            o += expf(a.lse1[(size_t)s * a.rows + row] - mx) * a.o1[((size_t)s * a.rows + row) * a.d + c];
        a.o[row * a.d + c] = o / tot;
    }
    if (lane == 0)
        a.lse[row] = mx + logf(tot);
}

// NULL when the gather kernels handle these sizes, else why not.
const char *gather_unsupported(int64_t hq, int64_t d, int64_t row_groups)
{
    if (d < 1 || d > 256)
        return "head_dim must be 1 to 256";
    if (hq > 65535)  // grid.y
        return "more than 65535 query heads";
    if (row_groups > INT32_MAX)
        return "more than 2^31 - 1 row groups";
    return nullptr;
}

cudaError_t launch_token_sparse(const sl__cuda_gather &a, cudaStream_t st)
{
    cudaError_t err = cudaErrorInvalidValue;
    with_dims_per_lane(a.d, [&](auto dl) {
        constexpr int DL = decltype(dl)::value;
        const dim3 grid((unsigned)a.n_e * (unsigned)a.n_rg, a.hq, a.n_split);
        void (*kernel)(sl__cuda_gather) = gather_kernel<DL, true>;
        SL_LAUNCH(kernel, grid, kThreads, 0, st)(a);
        err = cudaGetLastError();
    });
    return err;
}

cudaError_t launch_rows(const sl__cuda_gather &a, cudaStream_t st)
{
    cudaError_t err = cudaErrorInvalidValue;
    with_dims_per_lane(a.d, [&](auto dl) {
        constexpr int DL = decltype(dl)::value;
        const dim3 grid((unsigned)((a.n_out + kRows - 1) / kRows), a.hq, a.n_split);
        void (*kernel)(sl__cuda_gather) = gather_kernel<DL, false>;
        SL_LAUNCH(kernel, grid, kThreads, 0, st)(a);
        err = cudaGetLastError();
    });
    return err;
}

cudaError_t launch_merge(const sl__cuda_merge_args &a, cudaStream_t st)
{
    if (a.rows == 0)
        return cudaSuccess;
    const unsigned blocks = (unsigned)((a.rows + kWarps - 1) / kWarps);
    SL_LAUNCH(merge_kernel, blocks, kThreads, 0, st)(a);
    return cudaGetLastError();
}

}  // namespace gathered

// bf16 / f16 q, k, v on tensor cores (WMMA): attn.dense, attn.block_sparse and
// attn.token_sparse; the host functions below branch on the inputs' dtype.
#include "attn_mma.cuh"

// ==== attn.linear, attn.pooled_kv ====

namespace rowwise {

constexpr int kThreads = 128;  // threads per CTA of the per-row kernels
constexpr int kChunk = 128;    // keys (or pooled keys) per shared-memory chunk
constexpr int kMaxD = 256;     // largest head_dim the per-row kernels hold in shared memory

// ---- attn.linear: one CTA per (head, row), quadratic form ----

__device__ float phi(float x, int feature) { return feature == 0 ? (x > 0.f ? x + 1.f : expf(x)) : fmaxf(x, 0.f); }

__global__ void linear_kernel(const float *q, const float *k, const float *v, float *o, int hq, int group, int nq,
                              int nk, int d, int causal, int feature)
{
    SL_SHARED(float, fq, [kMaxD]);
    SL_SHARED(float, w, [kChunk]);
    int h = blockIdx.x / nq, r = blockIdx.x % nq, g = h / group;
    const float *qr = q + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        fq[c] = phi(qr[c], feature);
    __syncthreads();
    int lim = causal ? nk - nq + r + 1 : nk;
    const float *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
    float acc[kMaxD / kThreads] = {};
    float den = 0.f;
    for (int j0 = 0; j0 < lim; j0 += kChunk) {
        int nc = lim - j0 < kChunk ? lim - j0 : kChunk;
        for (int t = threadIdx.x; t < nc; t += blockDim.x) {
            const float *kj = kg + (int64_t)(j0 + t) * d;
            float s = 0.f;
            for (int c = 0; c < d; c++)
                s += fq[c] * phi(kj[c], feature);
            w[t] = s;
        }
        __syncthreads();
        for (int t = 0; t < nc; t++) {
            den += w[t];
            for (int c = threadIdx.x, u = 0; c < d; c += blockDim.x, u++)
                acc[u] += w[t] * vg[(int64_t)(j0 + t) * d + c];
        }
        __syncthreads();
    }
    float *orow = o + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x, u = 0; c < d; c += blockDim.x, u++)
        orow[c] = den > 0.f ? acc[u] / den : 0.f;
}

// ---- attn.pooled_kv: one CTA per (head, row), online softmax over pooled chunks ----

__global__ void pooled_kernel(const float *q, const float *k, const float *v, const uint8_t *levels, float *o,
                              float *lse, int hq, int group, int hm, int nq, int nk, int d, int bq, int bk, int nqb,
                              int nkb, int causal, float scale)
{
    SL_SHARED(float, qs, [kMaxD]);
    SL_SHARED(float, sc, [kChunk]);
    SL_SHARED(float, red, [kThreads]);
    int h = blockIdx.x / nq, r = blockIdx.x % nq, g = h / group, mh = h / (hq / hm);
    const float *qr = q + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        qs[c] = qr[c];
    __syncthreads();
    const float *kg = k + (int64_t)g * nk * d, *vg = v + (int64_t)g * nk * d;
    const uint8_t *lv = levels + ((int64_t)mh * nqb + r / bq) * nkb;
    int pos = nk - nq + r;
    float m = -INFINITY, l = 0.f, acc[kMaxD / kThreads] = {};
    for (int c = 0; c < nkb; c++) {
        int s = lv[c];
        if (!s)
            continue;
        int k0 = c * bk, len = nk - k0 < bk ? nk - k0 : bk, ng = (len + s - 1) / s;
        for (int t0 = 0; t0 < ng; t0 += kChunk) {
            int nc = ng - t0 < kChunk ? ng - t0 : kChunk;
            for (int t = threadIdx.x; t < nc; t += blockDim.x) {
                int j0 = k0 + (t0 + t) * s, j1 = j0 + s < k0 + len ? j0 + s : k0 + len;
                float x = -INFINITY;
                if (!causal || j1 - 1 <= pos) {
                    float dot = 0.f;
                    for (int j = j0; j < j1; j++)
                        for (int e = 0; e < d; e++)
                            dot += qs[e] * kg[(int64_t)j * d + e];
                    x = scale * dot / (float)(j1 - j0) + logf((float)(j1 - j0));
                }
                sc[t] = x;
            }
            __syncthreads();
            // chunk max, by a shared-memory reduction
            float cm = -INFINITY;
            for (int t = threadIdx.x; t < nc; t += blockDim.x)
                cm = fmaxf(cm, sc[t]);
            red[threadIdx.x] = cm;
            __syncthreads();
            for (int stp = blockDim.x / 2; stp > 0; stp /= 2) {
                if ((int)threadIdx.x < stp)
                    red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + stp]);
                __syncthreads();
            }
            float mnew = fmaxf(m, red[0]);
            __syncthreads();
            if (mnew != -INFINITY) {
                float alpha = m == -INFINITY ? 0.f : expf(m - mnew);
                l *= alpha;
                for (int u = 0; u < kMaxD / kThreads; u++)
                    acc[u] *= alpha;
                for (int t = 0; t < nc; t++) {
                    if (sc[t] == -INFINITY)
                        continue;
                    float p = expf(sc[t] - mnew);
                    int j0 = k0 + (t0 + t) * s, j1 = j0 + s < k0 + len ? j0 + s : k0 + len;
                    l += p;
                    for (int cc = threadIdx.x, u = 0; cc < d; cc += blockDim.x, u++) {
                        float vb = 0.f;
                        for (int j = j0; j < j1; j++)
                            vb += vg[(int64_t)j * d + cc];
                        acc[u] += p * vb / (float)(j1 - j0);
                    }
                }
                m = mnew;
            }
            __syncthreads();
        }
    }
    float *orow = o + ((int64_t)h * nq + r) * d;
    for (int c = threadIdx.x, u = 0; c < d; c += blockDim.x, u++)
        orow[c] = l > 0.f ? acc[u] / l : 0.f;
    if (threadIdx.x == 0)
        lse[(int64_t)h * nq + r] = l > 0.f ? m + logf(l) : -INFINITY;
}

sl_status unsupported_dims(const sl__kargs *a, int64_t d, int64_t ctas)
{
    if (d > kMaxD || ctas > INT32_MAX)
        return sl__cuda_unsupported(a, "head_dim up to %d and fewer than 2^31 rows; found head_dim %lld, %lld rows", kMaxD,
                                    (long long)d, (long long)ctas);
    return SL_OK;
}

}  // namespace rowwise

// ==== attn.bucket ====

namespace bucket {

constexpr int kBucketMaxD = 256;

__global__ void bucket_kernel(const float *q, const float *k, const float *v, const int32_t *qb, const int32_t *kb,
                              float *o, float *lse, int32_t *count, int hq, int group, int nq, int nk, int d,
                              int causal, float scale, int use_tau, double tau)
{
    int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (int64_t)hq * nq)
        return;
    int h = (int)(item / nq), i = (int)(item % nq);
    const float *qi = q + item * d, *K = k + (size_t)(h / group) * nk * d, *V = v + (size_t)(h / group) * nk * d;
    float acc[kBucketMaxD];
    for (int t = 0; t < d; t++)
        acc[t] = 0.f;
    float m = -INFINITY, l = 0.f;
    int n = 0, jmax = causal ? nk - nq + i + 1 : nk;
    for (int j = 0; j < jmax; j++) {
        if (qb && qb[item] != kb[(size_t)h * nk + j])
            continue;
        float s = 0.f;
        for (int t = 0; t < d; t++)
            s += qi[t] * K[(size_t)j * d + t];
        s *= scale;
        if (use_tau && (double)s < tau)
            continue;
        n++;
        float mn = fmaxf(m, s), a = expf(m - mn), w = expf(s - mn);
        l = l * a + w;
        for (int t = 0; t < d; t++)
            acc[t] = acc[t] * a + w * V[(size_t)j * d + t];
        m = mn;
    }
    for (int t = 0; t < d; t++)
        o[item * d + t] = n ? acc[t] / l : 0.f;
    lse[item] = n ? m + logf(l) : -INFINITY;
    count[item] = n;
}

}  // namespace bucket

// ==== host side ====

// Shared by both executors: checks sizes, stages, fills the pointer part of
// the arguments, launches through launch and copies the results back.
sl_status run_attention(const sl__kargs *a, double scale, int64_t bq, int64_t n_qb, sl__cuda_attn *args,
                        cudaError_t (*launch)(const sl__cuda_attn &, cudaStream_t))
{
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale);
    const char *why = flash::attn_unsupported(dm.hq, dm.nq, dm.nk, dm.d, bq, n_qb);
    if (why)
        return sl__cuda_unsupported(a, "%s; found head_dim %lld, %lld query heads, n_q %lld, n_k %lld",
                           why, (long long)dm.d, (long long)dm.hq, (long long)dm.nq, (long long)dm.nk);
    if (sl_ctx_interrupted(a->ctx))
        return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[cuda]: interrupted", sl__cuda_op_name(a));
    if (dm.hq == 0 || dm.nq == 0)
        return SL_OK;  // no output element: nothing to launch (an empty grid is an error)

    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    args->q = static_cast<const float *>(st.in[0]);
    args->k = static_cast<const float *>(st.in[1]);
    args->v = static_cast<const float *>(st.in[2]);
    args->o = static_cast<float *>(st.out[0]);
    args->lse = static_cast<float *>(st.out[1]);
    args->hq = (int)dm.hq, args->hkv = (int)dm.hkv, args->nq = (int)dm.nq, args->nk = (int)dm.nk, args->d = (int)dm.d;
    args->scale_log2 = (float)(dm.scale * 1.4426950408889634);  // log2(e)
    if (a->op == SL_OP_ATTN_BLOCK_SPARSE || a->op == SL_OP_ATTN_VS_MIXED) {
        args->row_ptr = static_cast<const int32_t *>(st.in[3]);
        args->col_idx = static_cast<const int32_t *>(st.in[4]);
        args->part = static_cast<const int32_t *>(st.in[5]);
        args->bits = static_cast<const uint8_t *>(st.in[6]);
    }
    if (a->op == SL_OP_ATTN_VS_MIXED) {
        args->list_ptr = static_cast<const int32_t *>(st.in[7]);
        args->list_col = static_cast<const int32_t *>(st.in[8]);
        args->hl = (int)a->in[7].shape[0];
        args->bias = static_cast<const float *>(st.in[9]);
        args->bias_heads = a->in[9].buf ? (int)a->in[9].shape[0] : 0;
        args->state_o = static_cast<const float *>(st.in[10]);
        args->state_lse = static_cast<const float *>(st.in[11]);
    }
    return sl__cuda_stage_out(&st, launch(*args, 0));
}

// Splits of the keys, so that a decode call (a few CTAs) still fills the
// device: about two CTAs per SM, at least one 32-key chunk per warp of a split.
int choose_splits(int64_t ctas, int64_t max_keys)
{
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        sms = 1;
    int64_t want = ctas > 0 ? (2 * (int64_t)sms + ctas - 1) / ctas : 1;
    int64_t cap = (max_keys + 127) / 128;
    int64_t n = want < cap ? want : cap;
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

// attn.token_sparse (list) and attn.rows: the gather kernel writes a partial
// per split of the keys, the merge kernel combines them with the state.
sl_status run_gather(const sl__kargs *a, bool list)
{
    // bf16 / f16 q, k, v of attn.token_sparse on tensor cores (attn_mma.cuh); a mix runs as f32
    const int mma = list ? sl__mma_dtype(a) : 0;
    if (mma < 0)
        return sl__mma_as_f32(a, sl__cuda_attn_token_sparse);
    const double scale = list ? static_cast<const sl_attn_token_params *>(a->params)->scale
                              : static_cast<const sl_attn_rows_params *>(a->params)->scale;
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale);
    const int64_t n_out = list ? dm.nq : a->in[3].shape[1], kr = gathered::kRows;
    int64_t b = 1, n_e = 0, n_rg = 0, groups, max_keys = 0;
    if (list) {
        b = static_cast<const sl_attn_token_params *>(a->params)->rows_per_entry;
        n_e = a->in[3].shape[1] - 1;
        n_rg = ((b < dm.nq ? b : dm.nq) + kr - 1) / kr;
        groups = n_e * n_rg;
        const int32_t *rp = static_cast<const int32_t *>(a->in[3].data);
        for (int64_t h = 0; h < a->in[3].shape[0]; h++)
            for (int64_t e = 0; e < n_e; e++) {
                int64_t n = rp[h * (n_e + 1) + e + 1] - rp[h * (n_e + 1) + e];
                max_keys = n > max_keys ? n : max_keys;
            }
    } else {
        groups = (n_out + kr - 1) / kr;
        const int32_t *lim = static_cast<const int32_t *>(a->in[4].data);
        for (int64_t i = 0; i < sl_tensor_numel(&a->in[4]); i++)
            max_keys = lim[i] > max_keys ? lim[i] : max_keys;
    }
    const char *why = gathered::gather_unsupported(dm.hq, dm.d, groups);
    if (!why && (dm.nq > (1 << 30) || dm.nk > (1 << 30) || n_out > (1 << 30)))
        why = "more than 2^30 tokens or rows";
    if (why)
        return sl__cuda_unsupported(a, "%s; found head_dim %lld, %lld query heads",
                           why, (long long)dm.d, (long long)dm.hq);
    if (sl_ctx_interrupted(a->ctx))
        return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[cuda]: interrupted", sl__cuda_op_name(a));
    if (dm.hq == 0 || n_out == 0)
        return SL_OK;

    const int n_split = choose_splits(groups * dm.hq, max_keys);
    sl__cuda_stage st(a);
    sl_status s = sl__cuda_stage_in(&st);
    if (s != SL_OK)
        return s;
    sl__cuda_gather g = {};
    g.q = static_cast<const float *>(st.in[0]);
    g.k = static_cast<const float *>(st.in[1]);
    g.v = static_cast<const float *>(st.in[2]);
    g.bias = static_cast<const float *>(st.in[5]);
    g.bias_heads = a->in[5].buf ? (int)a->in[5].shape[0] : 0;
    g.hq = (int)dm.hq, g.hkv = (int)dm.hkv, g.nq = (int)dm.nq, g.nk = (int)dm.nk, g.d = (int)dm.d;
    g.n_out = (int)n_out, g.n_split = n_split;
    g.scale_log2 = (float)(dm.scale * 1.4426950408889634);
    if (list) {
        g.row_ptr = static_cast<const int32_t *>(st.in[3]);
        g.col = static_cast<const int32_t *>(st.in[4]);
        g.hm = (int)a->in[3].shape[0], g.n_e = (int)n_e, g.b = (int)(b < dm.nq ? b : dm.nq), g.n_rg = (int)n_rg;
    } else {
        g.rows = static_cast<const int32_t *>(st.in[3]);
        g.limits = static_cast<const int32_t *>(st.in[4]);
        g.hr = (int)a->in[3].shape[0];
    }
    const float *state_o = static_cast<const float *>(st.in[6]), *state_lse = static_cast<const float *>(st.in[7]);
    float *o = static_cast<float *>(st.out[0]), *lse = static_cast<float *>(st.out[1]);
    if (mma > 0)  // O and LSE straight from the kernel, starting from the state (no split partials)
        return sl__cuda_stage_out(&st, sl__cuda_token_sparse_mma(g, state_o, state_lse, o, lse, mma == 1, 0));
    // the f32 kernels: a partial (O, L) per split of the keys, merged with the state
    void *ws = nullptr;
    const size_t part_floats = (size_t)n_split * (size_t)dm.hq * (size_t)n_out;
    s = sl__cuda_scratch(&st, part_floats * (size_t)(dm.d + 1) * sizeof(float), &ws);
    if (s != SL_OK)
        return s;
    g.part_o = static_cast<float *>(ws);
    g.part_lse = g.part_o + part_floats * (size_t)dm.d;
    sl__cuda_merge_args mg = {g.part_o, g.part_lse, state_o, state_lse, o, lse, dm.hq * n_out, (int)dm.d, n_split};
    cudaError_t err = list ? gathered::launch_token_sparse(g, 0) : gathered::launch_rows(g, 0);
    if (err == cudaSuccess)
        err = gathered::launch_merge(mg, 0);
    return sl__cuda_stage_out(&st, err);
}

}  // namespace

sl_status sl__cuda_attn_dense(const sl__kargs *a)
{
    const sl_attn_params *p = static_cast<const sl_attn_params *>(a->params);
    sl__cuda_attn args = {};
    args.causal = p->causal != 0;
    // bf16 / f16 q, k, v on tensor cores (attn_mma.cuh); a mix of dtypes runs as f32
    const int mma = sl__mma_dtype(a);
    if (mma < 0)
        return sl__mma_as_f32(a, sl__cuda_attn_dense);
    return run_attention(a, p->scale, 0, 0, &args,
                         mma == 1 ? sl__cuda_attn_mma_dense_bf16 : mma == 2 ? sl__cuda_attn_mma_dense_f16 : flash::launch_dense);
}

sl_status sl__cuda_attn_block_sparse(const sl__kargs *a)
{
    const sl_attn_block_params *p = static_cast<const sl_attn_block_params *>(a->params);
    const sl_tensor *row_ptr = &a->in[3];
    sl__cuda_attn args = {};
    args.hm = (int)row_ptr->shape[0];
    args.n_qb = (int)(row_ptr->shape[1] - 1);
    args.bq = (int)p->bq;
    args.bk = (int)p->bk;
    args.pv_skip_log2 = (float)(p->pv_skip * 1.4426950408889634);  // log2(e): scores run in base 2
    // bf16 / f16 q, k, v on tensor cores (attn_mma.cuh); pv_skip or a mix of dtypes runs as f32
    const int mma = sl__mma_dtype(a);
    if (mma < 0 || (mma > 0 && args.pv_skip_log2 > 0.f))
        return sl__mma_as_f32(a, sl__cuda_attn_block_sparse);
    return run_attention(a, p->scale, p->bq, args.n_qb, &args,
                         mma == 1   ? sl__cuda_attn_mma_block_sparse_bf16
                         : mma == 2 ? sl__cuda_attn_mma_block_sparse_f16
                                    : flash::launch_block_sparse);
}

// attn.vs_mixed: the block kernel with the lists' columns after the blocks.
sl_status sl__cuda_attn_vs_mixed(const sl__kargs *a)
{
    const sl_attn_vs_params *p = static_cast<const sl_attn_vs_params *>(a->params);
    const sl_tensor *row_ptr = &a->in[3];
    sl__cuda_attn args = {};
    args.hm = (int)row_ptr->shape[0];
    args.n_qb = (int)(row_ptr->shape[1] - 1);
    args.bq = (int)p->bq;
    args.bk = (int)p->bk;
    return run_attention(a, p->scale, p->bq, args.n_qb, &args, flash::launch_block_sparse);
}

sl_status sl__cuda_attn_token_sparse(const sl__kargs *a) { return run_gather(a, true); }
sl_status sl__cuda_attn_rows(const sl__kargs *a) { return run_gather(a, false); }

sl_status sl__cuda_attn_lse_merge(const sl__kargs *a)
{
    const sl_tensor *o1 = &a->in[0];
    const int64_t rows = sl_tensor_numel(&a->in[1]), d = o1->shape[o1->ndim - 1];
    if (d > INT32_MAX)
        return sl__cuda_unsupported(a, "last dim over 2^31 - 1");
    if (rows == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    sl__cuda_merge_args mg = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                         static_cast<const float *>(st.in[2]), static_cast<const float *>(st.in[3]),
                         static_cast<float *>(st.out[0]), static_cast<float *>(st.out[1]), rows, (int)d, 1};
    return sl__cuda_stage_out(&st, gathered::launch_merge(mg, 0));
}

sl_status sl__cuda_attn_linear(const sl__kargs *a)
{
    const sl_attn_linear_params *p = static_cast<const sl_attn_linear_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    sl_status s = rowwise::unsupported_dims(a, dm.d, dm.hq * dm.nq);
    if (s != SL_OK || dm.hq * dm.nq == 0)
        return s;
    sl__cuda_stage st(a);
    if ((s = sl__cuda_stage_in(&st)) != SL_OK)
        return s;
    SL_LAUNCH(rowwise::linear_kernel, (int)(dm.hq * dm.nq), rowwise::kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.output<float>(0), (int)dm.hq, (int)dm.group,
        (int)dm.nq, (int)dm.nk, (int)dm.d, (int)p->causal, (int)p->feature);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_attn_pooled_kv(const sl__kargs *a)
{
    const sl_attn_pooled_params *p = static_cast<const sl_attn_pooled_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    sl_status s = rowwise::unsupported_dims(a, dm.d, dm.hq * dm.nq);
    if (s != SL_OK || dm.hq * dm.nq == 0)
        return s;
    sl__cuda_stage st(a);
    if ((s = sl__cuda_stage_in(&st)) != SL_OK)
        return s;
    SL_LAUNCH(rowwise::pooled_kernel, (int)(dm.hq * dm.nq), rowwise::kThreads, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.input<uint8_t>(3), st.output<float>(0),
        st.output<float>(1), (int)dm.hq, (int)dm.group, (int)a->in[3].shape[0], (int)dm.nq, (int)dm.nk, (int)dm.d, (int)p->bq, (int)p->bk,
        (int)a->in[3].shape[1], (int)a->in[3].shape[2], (int)p->causal, (float)dm.scale);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

sl_status sl__cuda_attn_bucket(const sl__kargs *a)
{
    const sl_attn_bucket_params *p = static_cast<const sl_attn_bucket_params *>(a->params);
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    if (dm.d > bucket::kBucketMaxD || dm.nq > (1 << 30) || dm.nk > (1 << 30))
        return sl__cuda_unsupported(a, "head_dim above %d or more than 2^30 tokens; found %lld", bucket::kBucketMaxD,
                                    (long long)dm.d);
    if (dm.hq == 0 || dm.nq == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    int64_t items = dm.hq * dm.nq;
    SL_LAUNCH(bucket::bucket_kernel, (unsigned)((items + 127) / 128), 128, 0, 0)(
        st.input<float>(0), st.input<float>(1), st.input<float>(2), st.input<int32_t>(3), st.input<int32_t>(4),
        st.output<float>(0), st.output<float>(1), st.output<int32_t>(2), (int)dm.hq, (int)dm.group, (int)dm.nq,
        (int)dm.nk, (int)dm.d, (int)p->causal, (float)dm.scale, (int)p->use_tau, p->tau);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}

