// cuda/sparse.cu — executors over gathered keys and chosen rows on CUDA (attn.token_sparse, attn.rows) and the log-sum-exp merge that finishes them and serves attn.lse_merge.

#include "dialect.cuh"
#include "sparse.cuh"
#include "warp.cuh"

#include <math.h>
#include <type_traits>

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

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 4;  // query rows per CTA


// The one place where the runtime head dimension becomes a template
// parameter: DL = dims per lane, the smallest of 1, 2, 4, 8 with 32·DL >= d.
template <class F> bool with_dims_per_lane(int64_t d, F &&f)
{
    if (d < 1 || d > 256)
        return false;
    if (d <= 32)
        f(std::integral_constant<int, 1>{});
    else if (d <= 64)
        f(std::integral_constant<int, 2>{});
    else if (d <= 128)
        f(std::integral_constant<int, 4>{});
    else
        f(std::integral_constant<int, 8>{});
    return true;
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

}  // namespace

const char *sl__cuda_gather_unsupported(int64_t hq, int64_t d, int64_t row_groups)
{
    if (d < 1 || d > 256)
        return "head_dim must be 1 to 256";
    if (hq > 65535)  // grid.y
        return "more than 65535 query heads";
    if (row_groups > INT32_MAX)
        return "more than 2^31 - 1 row groups";
    return nullptr;
}

int sl__cuda_gather_rows_per_cta(void) { return kRows; }

cudaError_t sl__cuda_token_sparse(const sl__cuda_gather &a, cudaStream_t st)
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

cudaError_t sl__cuda_rows(const sl__cuda_gather &a, cudaStream_t st)
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

cudaError_t sl__cuda_merge(const sl__cuda_merge_args &a, cudaStream_t st)
{
    if (a.rows == 0)
        return cudaSuccess;
    const unsigned blocks = (unsigned)((a.rows + kWarps - 1) / kWarps);
    SL_LAUNCH(merge_kernel, blocks, kThreads, 0, st)(a);
    return cudaGetLastError();
}
