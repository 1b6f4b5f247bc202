// cuda/quant.cu — quant.fake on CUDA (contract in sparselab.h): one CTA per
// (head, group of rows): a block-wide max of |x|, then the rounding pass, in
// f32 as the contract says. Compiled with `make CUDA=1`; run under the CUDA
// simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"
#include "warp.cuh"

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

__global__ void quant_kernel(const float *x, float *out, int64_t n, int64_t d, int64_t group, int64_t groups,
                             float qmax)
{
    SL_SHARED(float, sh, [kWarps]);
    int64_t h = blockIdx.x / groups, r0 = (blockIdx.x % groups) * group;
    int64_t r1 = r0 + group < n ? r0 + group : n;
    const float *src = x + (h * n + r0) * d;
    float *dst = out + (h * n + r0) * d;
    int64_t len = (r1 - r0) * d;
    float m = 0;
    for (int64_t i = threadIdx.x; i < len; i += kThreads)
        m = fmaxf(m, fabsf(src[i]));
    m = block_max<kWarps>(m, sh);
    float step = m / qmax;
    if (!(step > 0))
        step = 1;
    for (int64_t i = threadIdx.x; i < len; i += kThreads)
        dst[i] = fminf(fmaxf(roundf(src[i] / step), -qmax), qmax) * step;
}

}  // namespace

sl_status sl__cuda_quant_fake(const sl__kargs *a)
{
    const sl_quant_fake_params *p = static_cast<const sl_quant_fake_params *>(a->params);
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2], groups = (n + p->group - 1) / p->group;
    if (H * groups > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 - 1 row groups");
    if (H * groups == 0 || d == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(quant_kernel, (int)(H * groups), kThreads, 0, 0)(static_cast<const float *>(st.in[0]),
                                                               static_cast<float *>(st.out[0]), n, d, p->group,
                                                               groups, (float)((1 << (p->bits - 1)) - 1));
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
