// cuda/attn.cu — attention executors on CUDA (attn.dense, attn.block_sparse with its pv_skip option, attn.vs_mixed): flash-style f32 kernels with key tiles in shared memory and an online softmax in registers.
#include "dialect.cuh"
#include "attn.cuh"
#include "warp.cuh"

#include <math.h>
#include <type_traits>

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

namespace {

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

// The one place where a runtime head dimension becomes a template parameter:
// d runs on the kernel of the smallest D in {32, 64, 128, 256} that holds it,
// zero-padded (exact D is the fast path). Returns false for d outside 1..256.
template <class F> bool with_head_dim(int64_t d, F &&f)
{
    if (d < 1 || d > 256)
        return false;
    if (d <= 32)
        f(std::integral_constant<int, 32>{});
    else if (d <= 64)
        f(std::integral_constant<int, 64>{});
    else if (d <= 128)
        f(std::integral_constant<int, 128>{});
    else
        f(std::integral_constant<int, 256>{});
    return true;
}


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

}  // namespace

const char *sl__cuda_attn_unsupported(int64_t hq, int64_t nq, int64_t nk, int64_t d, int64_t bq, int64_t n_qb)
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

cudaError_t sl__cuda_attn_dense(const sl__cuda_attn &a, cudaStream_t st)
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
cudaError_t sl__cuda_attn_block_sparse(const sl__cuda_attn &a, cudaStream_t st)
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
