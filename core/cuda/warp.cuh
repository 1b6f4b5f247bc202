// warp.cuh — device helpers the CUDA kernels share: warp-wide max and sum by
// shuffles, block-wide max and sum, the log constants of the base-2 online
// softmax, and the dispatch of a runtime head dimension to a template one.
#ifndef SL_CUDA_WARP_CUH
#define SL_CUDA_WARP_CUH

#include <stdint.h>
#include <type_traits>

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

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.693147180559945309f;

static __device__ __forceinline__ float warp_max(float x)
{
#pragma unroll
    for (int w = 16; w > 0; w /= 2)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, w));
    return x;
}

static __device__ __forceinline__ float warp_sum(float x)
{
#pragma unroll
    for (int w = 16; w > 0; w /= 2)
        x += __shfl_xor_sync(0xffffffffu, x, w);
    return x;
}

// Block-wide max and sum of one value per thread over NW warps (blockDim.x =
// 32 NW); every thread gets the result. sh holds NW values of shared memory.
template <int NW, typename T> __device__ T block_max(T x, T *sh)
{
    for (int w = 16; w > 0; w /= 2) {
        T y = __shfl_xor_sync(0xffffffffu, x, w);
        x = y > x ? y : x;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        sh[threadIdx.x / 32] = x;
    __syncthreads();
    T m = sh[0];
    for (int i = 1; i < NW; i++)
        m = sh[i] > m ? sh[i] : m;
    return m;
}

template <int NW, typename T> __device__ T block_sum(T x, T *sh)
{
    for (int w = 16; w > 0; w /= 2)
        x += __shfl_xor_sync(0xffffffffu, x, w);
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        sh[threadIdx.x / 32] = x;
    __syncthreads();
    T s = 0;
    for (int i = 0; i < NW; i++)
        s += sh[i];
    return s;
}

#endif
