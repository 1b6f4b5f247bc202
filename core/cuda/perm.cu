// cuda/perm.cu — perm.apply on CUDA (contract in sparselab.h): one CTA per
// (position, head) copying one row, gathered or scattered. Compiled with
// `make CUDA=1`; run under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

namespace {

__global__ void perm_kernel(const float *x, const int32_t *perm, float *out, int n, int d, int ratio, int inverse)
{
    int t = blockIdx.x, h = blockIdx.y;
    int p = perm[(size_t)(h / ratio) * n + t];
    int from = inverse ? t : p, to = inverse ? p : t;
    const float *src = x + ((size_t)h * n + from) * d;
    float *dst = out + ((size_t)h * n + to) * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        dst[c] = src[c];
}

}  // namespace

sl_status sl__cuda_perm_apply(const sl__kargs *a)
{
    const sl_perm_params *p = (const sl_perm_params *)a->params;
    const sl_tensor *x = &a->in[0], *perm = &a->in[1];
    int64_t H = x->shape[0], n = x->shape[1], d = x->ndim == 3 ? x->shape[2] : 1, P = perm->shape[0];
    if (n * d > (1 << 30) || H > 65535 || n > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^30 elements per head or 65535 heads");
    if (H == 0 || n == 0 || d == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(perm_kernel, dim3((unsigned)n, (unsigned)H), 64, 0, 0)(st.input<float>(0), st.input<int32_t>(1),
                                                       st.output<float>(0), (int)n, (int)d, (int)(H / P),
                                                       (int)p->inverse);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
