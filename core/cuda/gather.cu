// cuda/gather.cu — gather.rows on CUDA (contract in sparselab.h): one CTA
// per (output row, head) copying the row. Compiled with `make CUDA=1`; run
// under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

namespace {

__global__ void gather_kernel(const float *x, const int32_t *idx, float *out, int n, int d, int m, int ratio)
{
    int t = blockIdx.x, h = blockIdx.y;
    const float *src = x + ((size_t)(h / ratio) * n + idx[(size_t)h * m + t]) * d;
    float *dst = out + ((size_t)h * m + t) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        dst[c] = src[c];
}

}  // namespace

sl_status sl__cuda_gather_rows(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0], *idx = &a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hi = idx->shape[0], m = idx->shape[1];
    if (n * d > (1 << 30) || hi > 65535 || m > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^30 elements per head or 65535 heads");
    if (hi == 0 || m == 0 || d == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(gather_kernel, dim3((unsigned)m, (unsigned)hi), 64, 0, 0)(st.input<float>(0), st.input<int32_t>(1),
                                                          st.output<float>(0), (int)n, (int)d, (int)m,
                                                          (int)(hi / hx));
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
