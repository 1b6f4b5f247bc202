// cudasim.h — the CUDA dialect for the host compiler, force-included
// (-include) into every .cu file of a simulator build: keywords, built-in
// variables, intrinsics, half/bfloat16, nvcuda::wmma and the runtime API.
// Each CUDA thread runs as a fiber; the runtime (cudasim.cc) schedules the
// fibers of a block and implements barriers, warp collectives and launches.
#ifndef SL_CUDASIM_H
#define SL_CUDASIM_H

#ifndef __cplusplus
#error "cudasim.h is C++: compile .cu files with -x c++"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- keywords --------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
// __shared__ stays undefined on purpose: sources use SL_SHARED / SL_DYN_SMEM.

// ---- vector types ----------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return {x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }

// ---- runtime types ---------------------------------------------------------
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorStubLibrary = 34,
    cudaErrorInsufficientDriver = 35,
    cudaErrorDevicesUnavailable = 46,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorOperatingSystem = 304,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchTimeout = 702,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotPermitted = 800,
    cudaErrorSystemNotReady = 802,
    cudaErrorSystemDriverMismatch = 803,
    cudaErrorCompatNotSupportedOnDevice = 804,
    cudaErrorUnknown = 999,
};
typedef enum cudaError cudaError_t;
typedef struct CUstream_st *cudaStream_t;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxBlockDimX = 2,
    cudaDevAttrMaxBlockDimY = 3,
    cudaDevAttrMaxBlockDimZ = 4,
    cudaDevAttrMaxGridDimX = 5,
    cudaDevAttrMaxGridDimY = 6,
    cudaDevAttrMaxGridDimZ = 7,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerMultiprocessor, sharedMemPerBlockOptin;
    int warpSize, maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3], multiProcessorCount, major, minor;
};

cudaError_t cudaMalloc(void **p, size_t bytes);
template <class T> static inline cudaError_t cudaMalloc(T **p, size_t bytes) { return cudaMalloc((void **)p, bytes); }
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st = 0);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t st = 0);
cudaError_t cudaStreamCreate(cudaStream_t *st);
cudaError_t cudaStreamDestroy(cudaStream_t st);
cudaError_t cudaStreamSynchronize(cudaStream_t st);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t err);
const char *cudaGetErrorName(cudaError_t err);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDevice(int *dev);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int dev);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int dev);
namespace sl_sim {
cudaError_t func_set_attribute(const void *fn, cudaFuncAttribute attr, int value);
}
template <class F> static inline cudaError_t cudaFuncSetAttribute(F *fn, cudaFuncAttribute attr, int value)
{
    return sl_sim::func_set_attribute((const void *)fn, attr, value);
}

// ---- the simulated thread --------------------------------------------------
namespace sl_sim {

struct Thread;

// One warp-collective call of one lane. complete (the same function for every
// lane of one collective) runs once, in the last lane to arrive, with all 32
// lanes' records (null outside the mask), before any lane goes on.
struct Coll {
    void (*complete)(Thread **lanes, unsigned mask);
    const char *what;
    unsigned mask;
    uint64_t in, out;
    int src;
    const void *arg[4];
    unsigned ld;
    int layout;
};

struct Block {
    uint3 block_idx;
    dim3 block_dim, grid_dim;
};

struct Thread {
    uint3 thread_idx;
    Block *block;
    int lane, warp, linear;
    Coll *coll;               // while waiting at a warp collective
    const char *file;         // the wait site
    int line;
};

extern thread_local Thread *t_cur;

void syncthreads(const char *file, int line);
void warp_collective(Coll *c, const char *file, int line);
[[noreturn]] void device_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *shared_static(const void *key, size_t bytes, size_t align, const char *file, int line);
void *shared_dynamic(void);

struct LaunchCfg {
    const char *name, *file;
    int line;
    const void *fn;
    dim3 grid, block;
    size_t smem;
};
cudaError_t launch(const LaunchCfg &cfg, void (*thunk)(void *), void *ctx);

template <class... P> struct Launcher {
    void (*kernel)(P...);
    LaunchCfg cfg;
    template <class... A> cudaError_t operator()(A &&...a) const
    {
        static_assert(sizeof...(A) == sizeof...(P), "SL_LAUNCH: wrong number of kernel arguments");
        struct Ctx {
            void (*kernel)(P...);
            std::tuple<std::decay_t<P>...> args;
        } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)};
        return launch(cfg, [](void *c) {
            Ctx *x = static_cast<Ctx *>(c);
            std::apply(x->kernel, x->args);
        }, &ctx);
    }
};
template <class... P>
Launcher<P...> make_launcher(void (*kernel)(P...), const char *name, dim3 grid, dim3 block, size_t smem, cudaStream_t,
                             const char *file, int line)
{
    return Launcher<P...>{kernel, LaunchCfg{name, file, line, (const void *)kernel, grid, block, smem}};
}

template <class T> static inline uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <class T> static inline T from_bits(uint64_t b)
{
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}

void shfl_complete(Thread **lanes, unsigned mask);
void vote_complete(Thread **lanes, unsigned mask);
void syncwarp_complete(Thread **lanes, unsigned mask);

// mode: 0 idx, 1 up, 2 down, 3 xor
template <class T> T shfl(unsigned mask, T v, int arg, int width, int mode, const char *what, const char *file, int line)
{
    const int lane = t_cur->lane;
    if (width <= 0 || width > 32 || (width & (width - 1)))
        device_fail("%s at %s:%d: width %d is not a power of 2 from 1 to 32", what, file, line, width);
    const int base = lane & ~(width - 1);
    int src = lane;
    switch (mode) {
    case 0: src = base + (arg & (width - 1)); break;
    case 1: src = lane - arg >= base ? lane - arg : lane; break;
    case 2: src = lane + arg < base + width ? lane + arg : lane; break;
    default: src = (lane ^ arg) < base + width ? (lane ^ arg) : lane; break;
    }
    Coll c{};
    c.complete = shfl_complete;
    c.what = what;
    c.mask = mask;
    c.in = to_bits(v);
    c.src = src;
    warp_collective(&c, file, line);
    return from_bits<T>(c.out);
}

static inline unsigned vote(unsigned mask, int pred, int kind, const char *what, const char *file, int line)
{
    Coll c{};
    c.complete = vote_complete;
    c.what = what;
    c.mask = mask;
    c.in = pred != 0;
    warp_collective(&c, file, line);
    const unsigned ballot = (unsigned)c.out;
    return kind == 0 ? ballot : kind == 1 ? ballot != 0 : (ballot & mask) == mask;
}

static inline void syncwarp(unsigned mask, const char *file, int line)
{
    Coll c{};
    c.complete = syncwarp_complete;
    c.what = "__syncwarp";
    c.mask = mask;
    warp_collective(&c, file, line);
}

template <class T> T &shared_ref(const void *key, const char *file, int line)
{
    return *static_cast<T *>(shared_static(key, sizeof(T), alignof(T), file, line));
}

}  // namespace sl_sim

#define threadIdx (::sl_sim::t_cur->thread_idx)
#define blockIdx (::sl_sim::t_cur->block->block_idx)
#define blockDim (::sl_sim::t_cur->block->block_dim)
#define gridDim (::sl_sim::t_cur->block->grid_dim)
constexpr int warpSize = 32;

#define __syncthreads() ::sl_sim::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::sl_sim::syncwarp((0xffffffffu __VA_OPT__(&0u | (unsigned)(__VA_ARGS__))), __FILE__, __LINE__)
#define __shfl_sync(mask, v, src, ...) \
    ::sl_sim::shfl((unsigned)(mask), (v), (int)(src), (32 __VA_OPT__(* 0 + (__VA_ARGS__))), 0, "__shfl_sync", __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) \
    ::sl_sim::shfl((unsigned)(mask), (v), (int)(delta), (32 __VA_OPT__(* 0 + (__VA_ARGS__))), 1, "__shfl_up_sync", __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, delta, ...) \
    ::sl_sim::shfl((unsigned)(mask), (v), (int)(delta), (32 __VA_OPT__(* 0 + (__VA_ARGS__))), 2, "__shfl_down_sync", __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lm, ...) \
    ::sl_sim::shfl((unsigned)(mask), (v), (int)(lm), (32 __VA_OPT__(* 0 + (__VA_ARGS__))), 3, "__shfl_xor_sync", __FILE__, __LINE__)
#define __ballot_sync(mask, pred) ::sl_sim::vote((unsigned)(mask), (pred), 0, "__ballot_sync", __FILE__, __LINE__)
#define __any_sync(mask, pred) (int)::sl_sim::vote((unsigned)(mask), (pred), 1, "__any_sync", __FILE__, __LINE__)
#define __all_sync(mask, pred) (int)::sl_sim::vote((unsigned)(mask), (pred), 2, "__all_sync", __FILE__, __LINE__)

// The dialect macros of core/cuda/dialect.cuh, the simulator's way.
#define SL_LAUNCH(kernel, grid, block, smem, stream) \
    ::sl_sim::make_launcher(kernel, #kernel, (grid), (block), (smem), (stream), __FILE__, __LINE__)
#define SL_SHARED(T, name, dims)                     \
    static const char sl_sim_key_##name = 0;         \
    typedef T sl_sim_type_##name dims;               \
    sl_sim_type_##name &name = ::sl_sim::shared_ref<sl_sim_type_##name>(&sl_sim_key_##name, __FILE__, __LINE__)
#define SL_DYN_SMEM(T, name) T *const name = static_cast<T *>(::sl_sim::shared_dynamic())

// ---- atomics (real ones: blocks may run on several OS threads) --------------
template <class T> static inline T sl_sim_atomic_rmw(T *p, T v, int op)
{
    T old = __atomic_load_n(p, __ATOMIC_RELAXED), nv;
    do {
        switch (op) {
        case 0: nv = (T)(old + v); break;
        case 1: nv = old < v ? v : old; break;
        case 2: nv = v < old ? v : old; break;
        default: nv = v; break;
        }
    } while (!__atomic_compare_exchange_n(p, &old, nv, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return old;
}
static inline float sl_sim_atomic_addf(float *p, float v)
{
    uint32_t *u = reinterpret_cast<uint32_t *>(p), old = __atomic_load_n(u, __ATOMIC_RELAXED), nv;
    float f;
    do {
        memcpy(&f, &old, 4);
        f += v;
        memcpy(&nv, &f, 4);
    } while (!__atomic_compare_exchange_n(u, &old, nv, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    memcpy(&f, &old, 4);
    return f;
}
static inline double sl_sim_atomic_addd(double *p, double v)
{
    uint64_t *u = reinterpret_cast<uint64_t *>(p), old = __atomic_load_n(u, __ATOMIC_RELAXED), nv;
    double f;
    do {
        memcpy(&f, &old, 8);
        f += v;
        memcpy(&nv, &f, 8);
    } while (!__atomic_compare_exchange_n(u, &old, nv, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    memcpy(&f, &old, 8);
    return f;
}
static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline float atomicAdd(float *p, float v) { return sl_sim_atomic_addf(p, v); }
static inline double atomicAdd(double *p, double v) { return sl_sim_atomic_addd(p, v); }
static inline int atomicSub(int *p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicSub(unsigned *p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
#define SL_SIM_ATOMIC_INT(name, op)                                                                        \
    static inline int name(int *p, int v) { return sl_sim_atomic_rmw(p, v, op); }                          \
    static inline unsigned name(unsigned *p, unsigned v) { return sl_sim_atomic_rmw(p, v, op); }           \
    static inline long long name(long long *p, long long v) { return sl_sim_atomic_rmw(p, v, op); }        \
    static inline unsigned long long name(unsigned long long *p, unsigned long long v)                     \
    {                                                                                                      \
        return sl_sim_atomic_rmw(p, v, op);                                                                \
    }
SL_SIM_ATOMIC_INT(atomicMax, 1)
SL_SIM_ATOMIC_INT(atomicMin, 2)
SL_SIM_ATOMIC_INT(atomicExch, 3)
#undef SL_SIM_ATOMIC_INT
static inline float atomicExch(float *p, float v)
{
    uint32_t u, o;
    memcpy(&u, &v, 4);
    o = __atomic_exchange_n(reinterpret_cast<uint32_t *>(p), u, __ATOMIC_SEQ_CST);
    memcpy(&v, &o, 4);
    return v;
}
template <class T> static inline T atomicCAS(T *p, T cmp, T v)
{
    static_assert(std::is_integral<T>::value, "atomicCAS on an integer type");
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;  // the old value (written back on failure, equal to cmp on success)
}
static inline void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- math intrinsics -------------------------------------------------------
static inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
static inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
static inline float __uint_as_float(unsigned i) { float x; memcpy(&x, &i, 4); return x; }
static inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
static inline double __longlong_as_double(long long i) { double x; memcpy(&x, &i, 8); return x; }
// __expf, __exp2f, __logf, __log2f, __sinf, __cosf, __powf: glibc declares them (as expf ...).
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __saturatef(float x) { return x != x ? 0.f : x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline unsigned __brev(unsigned x)
{
    unsigned r = 0;
    for (int i = 0; i < 32; i++)
        r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
// CUDA's min/max: overloads for every arithmetic pair, in the common type.
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
static inline std::common_type_t<A, B> min(A a, B b)
{
    using C = std::common_type_t<A, B>;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
static inline std::common_type_t<A, B> max(A a, B b)
{
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)b : (C)a;
}

// ---- half and bfloat16 (as cuda_fp16.h / cuda_bf16.h give them) ------------
namespace sl_sim {
uint16_t float_to_half_bits(float f);
float half_bits_to_float(uint16_t h);
static inline uint16_t float_to_bf16_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);  // NaN stays NaN (quiet)
    x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest, ties to even
    return (uint16_t)(x >> 16);
}
static inline float bf16_bits_to_float(uint16_t b)
{
    uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
}  // namespace sl_sim

struct __half {
    uint16_t __x;
    __half() = default;
    __half(float f) : __x(sl_sim::float_to_half_bits(f)) {}
    __half(double f) : __x(sl_sim::float_to_half_bits((float)f)) {}
    __half(int i) : __x(sl_sim::float_to_half_bits((float)i)) {}
    operator float() const { return sl_sim::half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(sl_sim::float_to_bf16_bits(f)) {}
    __nv_bfloat16(double f) : __x(sl_sim::float_to_bf16_bits((float)f)) {}
    __nv_bfloat16(int i) : __x(sl_sim::float_to_bf16_bits((float)i)) {}
    operator float() const { return sl_sim::bf16_bits_to_float(__x); }
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;
struct __half2 { __half x, y; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
static inline __half __float2half(float f) { return __half(f); }
static inline __half __float2half_rn(float f) { return __half(f); }
static inline float __half2float(__half h) { return (float)h; }
static inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
static inline float __bfloat162float(__nv_bfloat16 b) { return (float)b; }
static inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.__x = u; return h; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }

// ---- nvcuda::wmma (m16n16k16), functional at warp level ---------------------
// Element ownership: lane L holds elements L*8 .. L*8+7 of the 16x16 tile in
// row-major order (row = e / 16, col = e % 16), the same map for every use.
namespace sl_sim {
void wmma_load_complete(Thread **lanes, unsigned mask);
void wmma_store_complete(Thread **lanes, unsigned mask);
void wmma_mma_complete(Thread **lanes, unsigned mask);
// Element type codes: 0 float, 1 half, 2 bfloat16.
template <class T> constexpr int elem_code() { return std::is_same<T, float>::value ? 0 : std::is_same<T, __half>::value ? 1 : 2; }
void wmma_collective(void (*complete)(Thread **, unsigned), const char *what, void *frag, const void *mem,
                     unsigned ldm, int layout, int frag_code, int mem_code, const char *file, int line);
void wmma_mma(void *d, const void *a, const void *b, const void *c, int codes, const char *file, int line);
}  // namespace sl_sim

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void> class fragment {
    static_assert(M == 16 && N == 16 && K == 16, "cudasim: only m16n16k16 fragments");
    static_assert(std::is_same<T, float>::value || std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                  "cudasim: fragments of float, __half or __nv_bfloat16");
public:
    using element_type = T;
    enum { num_elements = 8 };
    T x[8];
};

template <class Use, class T, class L> static inline void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, const T &v)
{
    for (int i = 0; i < 8; i++)
        f.x[i] = v;
}
template <class Use, class T, class L> constexpr int layout_code()
{
    return std::is_same<L, col_major>::value ? 1 : 0;
}
template <class Use, class T, class L>
static inline void sl_sim_load(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm, int layout, const char *file,
                               int line)
{
    sl_sim::wmma_collective(sl_sim::wmma_load_complete, "wmma::load_matrix_sync", &f, p, ldm, layout,
                            sl_sim::elem_code<T>(), sl_sim::elem_code<T>(), file, line);
}
template <class Use, class T, class L>
static inline void sl_sim_load_ab(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm, const char *file, int line)
{
    static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load needs a layout_t");
    sl_sim_load(f, p, ldm, layout_code<Use, T, L>(), file, line);
}
template <class T>
static inline void sl_sim_load_acc(fragment<accumulator, 16, 16, 16, T, void> &f, const T *p, unsigned ldm, layout_t l,
                                   const char *file, int line)
{
    sl_sim_load(f, p, ldm, (int)l, file, line);
}
template <class T>
static inline void sl_sim_store(T *p, const fragment<accumulator, 16, 16, 16, T, void> &f, unsigned ldm, layout_t l,
                                const char *file, int line)
{
    sl_sim::wmma_collective(sl_sim::wmma_store_complete, "wmma::store_matrix_sync", const_cast<void *>(static_cast<const void *>(&f)), p, ldm, (int)l,
                            sl_sim::elem_code<T>(), sl_sim::elem_code<T>(), file, line);
}
template <class TA, class LA, class LB, class TC>
static inline void sl_sim_mma(fragment<accumulator, 16, 16, 16, TC, void> &d, const fragment<matrix_a, 16, 16, 16, TA, LA> &a,
                              const fragment<matrix_b, 16, 16, 16, TA, LB> &b,
                              const fragment<accumulator, 16, 16, 16, TC, void> &c, const char *file, int line)
{
    sl_sim::wmma_mma(&d, &a, &b, &c, sl_sim::elem_code<TA>() | sl_sim::elem_code<TC>() << 4, file, line);
}
}  // namespace wmma
}  // namespace nvcuda

// The wmma calls take the call site along; the overload sets are the ones above.
#define SL_SIM_LOAD_SEL(_1, _2, _3, _4, NAME, ...) NAME
#define load_matrix_sync(...) SL_SIM_LOAD_SEL(__VA_ARGS__, sl_sim_load_acc, sl_sim_load_ab, )(__VA_ARGS__, __FILE__, __LINE__)
#define store_matrix_sync(...) sl_sim_store(__VA_ARGS__, __FILE__, __LINE__)
#define mma_sync(...) sl_sim_mma(__VA_ARGS__, __FILE__, __LINE__)

// For tests: the message of the last failed launch ("" when none).
extern "C" const char *sl_cudasim_last_failure(void);

#endif
