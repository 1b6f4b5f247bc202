// cuda/backend.cu — the CUDA backend: the device probe and the kernel table,
// generated from ops.def (the kernels are in cuda/<family>.cu).
#include "cuda.cuh"

#include <cuda_runtime.h>

namespace {

int cuda_available(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// The status must outlive the call without a global buffer, so each likely
// cause is spelled out as one literal (the text is cudaGetErrorString's).
#define SL__NO_DEVICE(code, text) \
    case code: return "no CUDA device: " text;

const char *cuda_status(void)
{
    int n = 0;
    switch (cudaGetDeviceCount(&n)) {
    case cudaSuccess: return n > 0 ? "" : "no CUDA device: the runtime reports 0 devices";
    SL__NO_DEVICE(cudaErrorNoDevice, "no CUDA-capable device is detected")
    SL__NO_DEVICE(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version")
    SL__NO_DEVICE(cudaErrorInitializationError, "initialization error")
    SL__NO_DEVICE(cudaErrorSystemDriverMismatch, "system has unsupported display driver / cuda driver combination")
    SL__NO_DEVICE(cudaErrorCompatNotSupportedOnDevice, "forward compatibility was attempted on non supported HW")
    SL__NO_DEVICE(cudaErrorDevicesUnavailable, "CUDA-capable device(s) is/are busy or unavailable")
    SL__NO_DEVICE(cudaErrorStubLibrary, "CUDA driver is a stub library")
    SL__NO_DEVICE(cudaErrorNotPermitted, "operation not permitted")
    SL__NO_DEVICE(cudaErrorOperatingSystem, "OS call failed or operation not supported on this OS")
    SL__NO_DEVICE(cudaErrorSystemNotReady, "system not yet initialized")
    default: return "no CUDA device: cudaGetDeviceCount failed";
    }
}

#undef SL__NO_DEVICE

// The kernel table, indexed by op: C++17 has no array designators, so a
// constexpr function fills it by name and SL_OP__COUNT fixes its length.
struct kernel_table {
    sl__kernel_fn fn[SL_OP__COUNT];
};

constexpr kernel_table make_kernel_table()
{
    kernel_table t = {};
#define SL_OP(E, name, family, kernel, group, n_in, n_out, ins, outs, doc) t.fn[SL_OP_##E] = sl__cuda_##kernel;
#include "../ops.def"
#undef SL_OP
    return t;
}

constexpr kernel_table cuda_kernels = make_kernel_table();

// The dtypes the kernels read natively for q, k, v (cuda/attn_mma.cuh: bf16
// and f16 on tensor cores).
struct dtype_table {
    unsigned bits[SL_OP__COUNT];
};

constexpr dtype_table make_native_table()
{
    dtype_table t = {};
    t.bits[SL_OP_ATTN_DENSE] = 1u << SL_F16 | 1u << SL_BF16;
    t.bits[SL_OP_ATTN_BLOCK_SPARSE] = 1u << SL_F16 | 1u << SL_BF16;
    t.bits[SL_OP_ATTN_TOKEN_SPARSE] = 1u << SL_F16 | 1u << SL_BF16;
    return t;
}

constexpr dtype_table cuda_native = make_native_table();

}  // namespace

extern "C" const sl__backend sl__backend_cuda = {"cuda", cuda_available, cuda_status, cuda_kernels.fn, nullptr, cuda_native.bits};
