// cuda/correct.cu — the corrections (correct.*) on CUDA: element-wise kernels over the sparse output (unverified on a device: written and compiled without a GPU).

#include "kernels.cuh"

namespace {

// correct.delta: one thread per output element (h, i, c); lse by the c == 0 thread.
__global__ void delta_kernel(const sl__cuda_delta a)
{
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t total = (int64_t)a.h * a.n * a.d;
    if (idx >= total)
        return;
    const int64_t c = idx % a.d, i = (idx / a.d) % a.n, h = idx / ((int64_t)a.d * a.n);
    const float *rows = a.o_rows + h * a.r_n * a.d;
    int64_t dense_row = i >= a.s_p ? a.g_n + (i - a.s_p) : (i % a.gamma == 0 ? i / a.gamma : -1);
    float out;
    float l;
    if (dense_row >= 0) {
        out = rows[dense_row * a.d + c];
        l = a.lse_rows[h * a.r_n + dense_row];
    } else {
        const float si = a.o_sparse[idx];
        l = a.lse_sparse[h * a.n + i];
        if (a.mode == 1) {
            out = si;
        } else {
            const int64_t g = i / a.gamma, g2 = (a.smooth && g + 1 < a.g_n) ? g + 1 : g;
            const float d1 = rows[g * a.d + c] - a.o_sparse[(h * a.n + g * a.gamma) * a.d + c];
            if (a.smooth) {
                const float d2 = rows[g2 * a.d + c] - a.o_sparse[(h * a.n + g2 * a.gamma) * a.d + c];
                const float r = (float)(i % a.gamma) / (float)a.gamma;
                out = si + (1.0f - r) * d1 + r * d2;
            } else {
                out = si + d1;
            }
        }
    }
    a.o[idx] = out;
    if (c == 0)
        a.lse[h * a.n + i] = l;
}

}  // namespace

cudaError_t sl__cuda_correct_delta(const sl__cuda_delta &a, cudaStream_t st)
{
    const int64_t total = (int64_t)a.h * a.n * a.d;
    const int threads = 256;
    const int64_t blocks = (total + threads - 1) / threads;
    delta_kernel<<<(unsigned)blocks, threads, 0, st>>>(a);
    return cudaGetLastError();
}
