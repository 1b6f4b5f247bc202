// selftest.cu — the simulator's own tests: its primitives with correct kernels
// (shuffles, votes, barriers, atomics, shared memory per block, launch limits,
// wmma against a plain loop, half/bfloat16 rounding) and planted bugs it must
// catch (a dropped __syncwarp, a read past a cudaMalloc buffer, a half-warp
// shuffle, a barrier in a divergent branch, a bad mask). Written in the
// project's CUDA dialect; built only against the simulator.
// Usage: selftest            runs everything, prints "N passed, N failed"
//        selftest oob        runs the out-of-bounds kernel alone (the parent checks its report)
#include "../../core/cuda/dialect.cuh"

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

static int g_pass, g_fail;

#define CHECK(cond, ...)                                               \
    do {                                                               \
        if (cond) {                                                    \
            g_pass++;                                                  \
        } else {                                                       \
            g_fail++;                                                  \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
            printf(__VA_ARGS__);                                       \
            printf("\n");                                              \
        }                                                              \
    } while (0)

template <class T> static T *dev_alloc(size_t n)
{
    T *p = nullptr;
    if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess)
        abort();
    return p;
}
template <class T> static std::vector<T> download(const T *d, size_t n)
{
    std::vector<T> h(n);
    cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
}

// ---- correct kernels ----------------------------------------------------------
__global__ void shfl_kernel(int *out)
{
    const int lane = threadIdx.x % 32;
    int *o = out + threadIdx.x * 6;
    o[0] = __shfl_xor_sync(0xffffffffu, lane * 10, 5);
    o[1] = __shfl_down_sync(0xffffffffu, lane * 10, 3);
    o[2] = __shfl_up_sync(0xffffffffu, lane * 10, 2, 16);
    o[3] = __shfl_sync(0xffffffffu, lane * 10, 7, 8);
    o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    o[5] = __any_sync(0xffffffffu, lane == 17) * 2 + __all_sync(0xffffffffu, lane < 31);
}

static void test_shuffles()
{
    int *d = dev_alloc<int>(64 * 6);
    SL_LAUNCH(shfl_kernel, 1, 64, 0, 0)(d);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", sl_cudasim_last_failure());
    std::vector<int> h = download(d, 64 * 6);
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++)
        ballot |= (l % 3 == 0 ? 1u : 0u) << l;
    int bad = 0;
    for (int t = 0; t < 64; t++) {
        const int l = t % 32, *o = &h[t * 6];
        const int up = l % 16 >= 2 ? l - 2 : l, idx = (l & ~7) + 7, down = l + 3 < 32 ? l + 3 : l;
        if (o[0] != (l ^ 5) * 10 || o[1] != down * 10 || o[2] != up * 10 || o[3] != idx * 10 || o[4] != (int)ballot ||
            o[5] != 2)
            bad++;
    }
    CHECK(bad == 0, "%d threads got a wrong shuffle or vote", bad);
    cudaFree(d);
}

// Each block writes its block index into static shared memory, every thread
// reads a neighbour's slot after the barrier; another array is left unwritten.
__global__ void barrier_kernel(float *out, unsigned *fresh)
{
    SL_SHARED(float, s, [256]);
    SL_SHARED(unsigned, untouched, [4]);
    s[threadIdx.x] = (float)(blockIdx.x * 1000 + threadIdx.x);
    __syncthreads();
    out[blockIdx.x * 256 + threadIdx.x] = s[(threadIdx.x + 1) % 256];
    if (threadIdx.x == 0)
        fresh[blockIdx.x] = untouched[blockIdx.x % 4];
}

static void test_barrier_and_shared()
{
    float *d = dev_alloc<float>(3 * 256);
    unsigned *f = dev_alloc<unsigned>(3);
    SL_LAUNCH(barrier_kernel, 3, 256, 0, 0)(d, f);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", sl_cudasim_last_failure());
    std::vector<float> h = download(d, 3 * 256);
    int bad = 0;
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < 256; t++)
            bad += h[b * 256 + t] != (float)(b * 1000 + (t + 1) % 256);
    CHECK(bad == 0, "%d wrong values: a block saw another block's shared memory or the barrier leaked", bad);
    std::vector<unsigned> fr = download(f, 3);
    CHECK(fr[0] == 0xffffffffu && fr[1] == 0xffffffffu && fr[2] == 0xffffffffu,
          "uninitialised shared memory reads 0x%08x, not the 0xff pattern", fr[0]);
    cudaFree(d);
    cudaFree(f);
}

__global__ void atomic_kernel(int *sum, float *fsum, int *mx, int *mn, unsigned *cas, int *exch)
{
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(sum, t);
    atomicAdd(fsum, 0.5f);
    atomicMax(mx, (t * 37) % 1001);
    atomicMin(mn, 500 - t);
    unsigned old = *cas, assumed;
    do {
        assumed = old;
        old = atomicCAS(cas, assumed, assumed + 2u);
    } while (old != assumed);
    atomicExch(exch, 7);
}

static void test_atomics()
{
    int *s = dev_alloc<int>(4);
    float *fs = dev_alloc<float>(1);
    unsigned *c = dev_alloc<unsigned>(1);
    cudaMemset(s, 0, 4 * sizeof(int));
    cudaMemset(fs, 0, sizeof(float));
    cudaMemset(c, 0, sizeof(unsigned));
    const int big = 1 << 30;
    cudaMemcpy(s + 2, &big, sizeof big, cudaMemcpyHostToDevice);
    SL_LAUNCH(atomic_kernel, 4, 96, 0, 0)(s, fs, s + 1, s + 2, c, s + 3);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", sl_cudasim_last_failure());
    std::vector<int> h = download(s, 4);
    const float f = download(fs, 1)[0];
    const unsigned cv = download(c, 1)[0];
    int mx = 0;
    for (int t = 0; t < 384; t++)
        mx = (t * 37) % 1001 > mx ? (t * 37) % 1001 : mx;
    CHECK(h[0] == 383 * 384 / 2, "atomicAdd(int) gave %d", h[0]);
    CHECK(f == 192.f, "atomicAdd(float) gave %g", f);
    CHECK(h[1] == mx, "atomicMax gave %d, want %d", h[1], mx);
    CHECK(h[2] == 500 - 383, "atomicMin gave %d", h[2]);
    CHECK(cv == 768u, "atomicCAS loop gave %u", cv);
    CHECK(h[3] == 7, "atomicExch gave %d", h[3]);
    cudaFree(s);
    cudaFree(fs);
    cudaFree(c);
}

__global__ void dyn_kernel(float *out, int n)
{
    SL_DYN_SMEM(float4, sm);
    float *f = reinterpret_cast<float *>(sm);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        f[i] = (float)i;
    __syncthreads();
    if (threadIdx.x == 0)
        out[blockIdx.x] = f[n - 1] + (((uintptr_t)sm % 16) ? 1000.f : 0.f);
}

static void test_launch_limits()
{
    float *d = dev_alloc<float>(2);
    const int n64 = 64 * 1024 / 4;
    (void)cudaGetLastError();
    cudaError_t e = SL_LAUNCH(dyn_kernel, 2, 128, 1024 * 4, 0)(d, 1024);
    CHECK(e == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess && download(d, 2)[1] == 1023.f,
          "a 4 KiB dynamic smem launch failed or misread: %s", sl_cudasim_last_failure());
    SL_LAUNCH(dyn_kernel, 2, 128, 64 * 1024, 0)(d, n64);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "64 KiB of dynamic smem without the opt-in was accepted");
    CHECK(cudaFuncSetAttribute(dyn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) == cudaSuccess,
          "the opt-in to 64 KiB was refused");
    SL_LAUNCH(dyn_kernel, 2, 128, 64 * 1024, 0)(d, n64);
    CHECK(cudaGetLastError() == cudaSuccess && download(d, 2)[0] == (float)(n64 - 1), "the opted-in launch failed");
    CHECK(cudaFuncSetAttribute(dyn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024) ==
              cudaErrorInvalidValue,
          "an opt-in past 227 KiB was accepted");
    (void)cudaGetLastError();
    SL_LAUNCH(dyn_kernel, 1, 1025, 0, 0)(d, 1);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "1025 threads per block were accepted");
    SL_LAUNCH(dyn_kernel, dim3(1, 65536), 32, 0, 0)(d, 1);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "grid.y 65536 was accepted");
    SL_LAUNCH(dyn_kernel, 0, 32, 0, 0)(d, 1);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "an empty grid was accepted");
    int sms = 0, smem = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
    CHECK(sms == 132 && smem == 227 * 1024, "device attributes %d SMs, %d opt-in smem", sms, smem);
    cudaFree(d);
}

static void test_malloc_pattern()
{
    unsigned char *d = dev_alloc<unsigned char>(100);
    std::vector<unsigned char> h = download(d, 100);
    int bad = 0;
    for (unsigned char c : h)
        bad += c != 0xff;
    CHECK(bad == 0, "cudaMalloc memory is not filled with 0xff (%d bytes differ)", bad);
    float x;
    memcpy(&x, h.data(), 4);
    CHECK(x != x, "fresh device floats are not NaN");
    cudaFree(d);
}

// D = A B + C over 16x16 tiles, A row- or column-major in memory.
template <class T, class LA>
__global__ void wmma_kernel(const T *a, const T *b, const float *c, float *d, int ldc_col_major)
{
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::load_matrix_sync(fc, c, 16, ldc_col_major ? wmma::mem_col_major : wmma::mem_row_major);
    for (int i = 0; i < fc.num_elements; i++)
        fc.x[i] *= 2.f;  // element-wise on the accumulator: ownership is consistent
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(d, fc, 16, wmma::mem_row_major);
}

template <class T, class LA> static void wmma_case(const char *name, bool a_col, bool c_col)
{
    std::vector<T> ha(256), hb(256);
    std::vector<float> fa(256), fb(256), hc(256), want(256);
    for (int i = 0; i < 256; i++) {
        ha[i] = T((float)((i * 7) % 13 - 6) / 4.f);
        hb[i] = T((float)((i * 5) % 11 - 5) / 8.f);
        fa[i] = (float)ha[i];
        fb[i] = (float)hb[i];
        hc[i] = (float)(i % 9) - 4.f;
    }
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 16; col++) {
            float acc = 2.f * (c_col ? hc[col * 16 + r] : hc[r * 16 + col]);
            for (int k = 0; k < 16; k++)
                acc += (a_col ? fa[k * 16 + r] : fa[r * 16 + k]) * fb[k * 16 + col];
            want[r * 16 + col] = acc;
        }
    T *da = dev_alloc<T>(256), *db = dev_alloc<T>(256);
    float *dc = dev_alloc<float>(256), *dd = dev_alloc<float>(256);
    cudaMemcpy(da, ha.data(), 256 * sizeof(T), cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb.data(), 256 * sizeof(T), cudaMemcpyHostToDevice);
    cudaMemcpy(dc, hc.data(), 256 * sizeof(float), cudaMemcpyHostToDevice);
    void (*k)(const T *, const T *, const float *, float *, int) = wmma_kernel<T, LA>;
    SL_LAUNCH(k, 1, 32, 0, 0)(da, db, dc, dd, c_col ? 1 : 0);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s: %s", name, sl_cudasim_last_failure());
    std::vector<float> got = download(dd, 256);
    double worst = 0;
    for (int i = 0; i < 256; i++)
        worst = fmax(worst, fabs(got[i] - want[i]));
    CHECK(worst < 1e-4, "%s: wmma differs from the plain loop by %g", name, worst);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    cudaFree(dd);
}

static void test_wmma()
{
    wmma_case<__half, nvcuda::wmma::row_major>("half row-major", false, false);
    wmma_case<__half, nvcuda::wmma::col_major>("half col-major A, col-major C", true, true);
    wmma_case<__nv_bfloat16, nvcuda::wmma::row_major>("bf16 row-major", false, false);
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_rounding()
{
    // bfloat16 keeps 8 significant bits: ties go to the even neighbour.
    CHECK(__bfloat16_as_ushort(__float2bfloat16(from_bits(0x3f808000u))) == 0x3f80, "1 + 2^-8 (a tie) must round down to 1");
    CHECK(__bfloat16_as_ushort(__float2bfloat16(from_bits(0x3f818000u))) == 0x3f82, "1 + 3*2^-8 (a tie) must round up");
    CHECK(__bfloat16_as_ushort(__float2bfloat16(from_bits(0x3f808001u))) == 0x3f81, "above the tie must round up");
    CHECK(__bfloat162float(__float2bfloat16(-2.5f)) == -2.5f, "-2.5 is exact in bf16");
    CHECK(isinf(__bfloat162float(__float2bfloat16(from_bits(0x7f7fffffu)))), "FLT_MAX rounds to inf in bf16");
    CHECK(isnan(__bfloat162float(__float2bfloat16(NAN))), "NaN stays NaN in bf16");
    CHECK(__half_as_ushort(__float2half(1.f + 1.f / 2048)) == 0x3c00, "1 + 2^-11 (a tie) rounds to 1 in half");
    CHECK(__half_as_ushort(__float2half(1.f + 3.f / 2048)) == 0x3c02, "1 + 3*2^-11 (a tie) rounds up in half");
    CHECK(isinf(__half2float(__float2half(65520.f))) && __half2float(__float2half(65519.f)) == 65504.f,
          "half overflow threshold");
    CHECK(__half_as_ushort(__float2half(ldexpf(1.f, -24))) == 0x0001, "2^-24 is the smallest half subnormal");
    CHECK(__half_as_ushort(__float2half(ldexpf(1.f, -25))) == 0x0000, "2^-25 (a tie) rounds to 0");
    CHECK(__half_as_ushort(__float2half(ldexpf(3.f, -25))) == 0x0002, "3*2^-25 (a tie) rounds to 2*2^-24");
    CHECK(__half2float(__ushort_as_half(0x0001)) == ldexpf(1.f, -24) && __half2float(__ushort_as_half(0xfbff)) == -65504.f,
          "half to float");
}

// ---- planted bugs ---------------------------------------------------------------
// Lanes exchange through shared memory; `sync` 0 drops the __syncwarp between
// the write and the read of another lane's slot.
__global__ void exchange_kernel(float *out, int sync)
{
    SL_SHARED(float, s, [32]);
    const int lane = threadIdx.x;
    s[lane] = (float)(lane * 3);
    if (sync)
        __syncwarp();
    out[lane] = s[lane ^ 1];
}

static void test_planted_missing_syncwarp()
{
    float *d = dev_alloc<float>(32);
    for (int sync = 1; sync >= 0; sync--) {
        SL_LAUNCH(exchange_kernel, 1, 32, 0, 0)(d, sync);
        cudaDeviceSynchronize();
        std::vector<float> h = download(d, 32);
        int wrong = 0;
        for (int l = 0; l < 32; l++)
            wrong += h[l] != (float)((l ^ 1) * 3);
        if (sync)
            CHECK(wrong == 0, "with __syncwarp %d lanes read a wrong value", wrong);
        else
            CHECK(wrong > 0, "the dropped __syncwarp went unnoticed: every lane read the right value");
    }
    cudaFree(d);
}

__global__ void half_warp_shfl_kernel(float *out)
{
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16)
        v += __shfl_xor_sync(0xffffffffu, v, 1);  // lanes 16-31 never get here
    out[threadIdx.x] = v;
}
static const int kHalfWarpLine = __LINE__ - 3;

__global__ void divergent_barrier_kernel(float *out)
{
    if (threadIdx.x < 32) {
        out[threadIdx.x] = 1.f;
        __syncthreads();  // the second warp never arrives
    }
}
static const int kBarrierLine = __LINE__ - 3;

__global__ void bad_mask_kernel(float *out)
{
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.f, 0);  // lanes 16-31 are not in their own mask
}

__global__ void two_sites_kernel(float *out)
{
    if (threadIdx.x % 2)
        __syncthreads();
    else
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

static bool contains(const char *s, const std::string &what) { return strstr(s, what.c_str()) != nullptr; }

static void test_planted_hangs()
{
    float *d = dev_alloc<float>(64);
    (void)cudaGetLastError();
    SL_LAUNCH(half_warp_shfl_kernel, 1, 32, 0, 0)(d);
    cudaError_t e = cudaDeviceSynchronize();
    std::string site = "selftest.cu:" + std::to_string(kHalfWarpLine);
    CHECK(e == cudaErrorLaunchFailure && contains(sl_cudasim_last_failure(), site) &&
              contains(sl_cudasim_last_failure(), "__shfl_xor_sync"),
          "half-warp shuffle: error %d, message \"%s\" (want %s)", (int)e, sl_cudasim_last_failure(), site.c_str());
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure, "cudaGetLastError does not report the failed kernel");

    SL_LAUNCH(divergent_barrier_kernel, 1, 64, 0, 0)(d);
    e = cudaDeviceSynchronize();
    site = "__syncthreads at " + std::string(__FILE__) + ":" + std::to_string(kBarrierLine);
    CHECK(e == cudaErrorLaunchFailure && contains(sl_cudasim_last_failure(), "deadlock") &&
              contains(sl_cudasim_last_failure(), "32 thread(s) wait at " + site) &&
              contains(sl_cudasim_last_failure(), "32 thread(s) have exited"),
          "divergent barrier: message \"%s\"", sl_cudasim_last_failure());

    SL_LAUNCH(bad_mask_kernel, 1, 32, 0, 0)(d);
    e = cudaDeviceSynchronize();
    CHECK(e == cudaErrorLaunchFailure && contains(sl_cudasim_last_failure(), "leaves out the calling lane"),
          "bad mask: message \"%s\"", sl_cudasim_last_failure());

    SL_LAUNCH(two_sites_kernel, 1, 64, 0, 0)(d);
    e = cudaDeviceSynchronize();
    CHECK(e == cudaErrorLaunchFailure && contains(sl_cudasim_last_failure(), "32 thread(s) wait at __syncthreads") &&
              contains(sl_cudasim_last_failure(), "32 thread(s) wait at __shfl_xor_sync"),
          "two wait sites: message \"%s\"", sl_cudasim_last_failure());

    // The simulator goes on working after a failed launch.
    float *o = dev_alloc<float>(32);
    SL_LAUNCH(exchange_kernel, 1, 32, 0, 0)(o, 1);
    CHECK(cudaDeviceSynchronize() == cudaSuccess && download(o, 32)[3] == 6.f, "a launch after a failure misbehaves");
    (void)cudaGetLastError();
    cudaFree(o);
    cudaFree(d);
}

// Reads one float past the end of its buffer (n floats, 64 bytes).
__global__ void oob_kernel(const float *x, float *out, int n)
{
    out[threadIdx.x] = x[threadIdx.x + 1];  // thread n - 1 reads x[n]
    (void)n;
}

static int run_oob(void)
{
    const int n = 16;
    float *x = dev_alloc<float>(n), *out = dev_alloc<float>(n);
    cudaMemset(x, 0, n * sizeof(float));
    SL_LAUNCH(oob_kernel, 1, n, 0, 0)(x, out, n);
    cudaDeviceSynchronize();
    printf("oob: no report\n");
    return 0;
}

static void test_planted_oob(const char *self)
{
    std::string cmd = std::string(self) + " oob 2>&1";
    FILE *p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[512];
    while (p && fgets(buf, sizeof buf, p))
        out += buf;
    const int rc = p ? pclose(p) : -1;
    const bool asan = out.find("AddressSanitizer") != std::string::npos &&
                      out.find("heap-buffer-overflow") != std::string::npos;
    const bool guard = out.find("cudasim: out-of-bounds device memory access") != std::string::npos &&
                       out.find("0 bytes past the end of a 64-byte cudaMalloc buffer") != std::string::npos;
    CHECK(rc != 0 && (asan || guard), "the read past the buffer was not reported (exit %d):\n%s", rc, out.c_str());
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "oob") == 0)
        return run_oob();
    test_shuffles();
    test_barrier_and_shared();
    test_atomics();
    test_launch_limits();
    test_malloc_pattern();
    test_wmma();
    test_rounding();
    test_planted_missing_syncwarp();
    test_planted_hangs();
    test_planted_oob(argv[0]);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
