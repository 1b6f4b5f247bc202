// warp.cuh — device helpers the CUDA kernels share: warp-wide max and sum by
// shuffles, and the log constants of the base-2 online softmax.
#ifndef SL_CUDA_WARP_CUH
#define SL_CUDA_WARP_CUH

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

#endif
