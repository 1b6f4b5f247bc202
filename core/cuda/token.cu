// cuda/token.cu — token.scatter on CUDA (contract in sparselab.h): one
// grid-stride copy of x, then one CTA per indexed row writing (or adding)
// y's row (distinct indices: no two CTAs touch the same row). Compiled with
// `make CUDA=1`; run under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

namespace {

__global__ void token_copy_kernel(const float *x, float *out, long long total)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = x[i];
}

__global__ void token_scatter_kernel(const float *y, const int32_t *idx, float *out, int d, int add)
{
    int t = blockIdx.x;
    const float *src = y + (size_t)t * d;
    float *dst = out + (size_t)idx[t] * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        dst[c] = add ? dst[c] + src[c] : src[c];
}

}  // namespace

sl_status sl__cuda_token_scatter(const sl__kargs *a)
{
    const sl_token_scatter_params *p = (const sl_token_scatter_params *)a->params;
    int64_t n = a->in[0].shape[0], d = a->in[0].shape[1], m = a->in[1].shape[0];
    if (d > INT32_MAX || m > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 rows or columns");
    if (n == 0 || d == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    long long total = (long long)(n * d);
    unsigned blocks = (unsigned)((total + 255) / 256 < 4096 ? (total + 255) / 256 : 4096);
    SL_LAUNCH(token_copy_kernel, blocks, 256, 0, 0)(st.input<float>(0), st.output<float>(0), total);
    if (m > 0)
        SL_LAUNCH(token_scatter_kernel, (unsigned)m, 64, 0, 0)(st.input<float>(1), st.input<int32_t>(2),
                                                              st.output<float>(0), (int)d, (int)p->add);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
