// cuda/pool.cu — pool.tokens on CUDA (contract in sparselab.h): one CTA per
// (segment, head), threads over channels, float64 accumulation. Compiled with
// `make CUDA=1`; run under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

#include <math.h>

namespace {

__global__ void pool_kernel(const float *x, const int32_t *bounds, float *out, int n, int d, int S, int block,
                            int mode, int normalize, int len_norm)
{
    SL_SHARED(float, red, [128]);
    SL_SHARED(float, inv_s, );
    int seg = blockIdx.x, h = blockIdx.y;
    int t0 = bounds ? bounds[seg] : seg * block;
    int t1 = bounds ? (seg + 1 < S ? bounds[seg + 1] : n) : min(t0 + block, n);
    const float *X = x + (size_t)h * n * d;
    for (int c0 = 0; c0 < d; c0 += blockDim.x) {
        int c = c0 + threadIdx.x;
        double acc = mode == 1 ? -INFINITY : mode == 2 ? INFINITY : 0.0;
        for (int t = t0; t < t1; t++) {
            float inv = 1.f;
            if (normalize) {
                float ss = 0.f;
                for (int e = threadIdx.x; e < d; e += blockDim.x)
                    ss += X[(size_t)t * d + e] * X[(size_t)t * d + e];
                red[threadIdx.x] = ss;
                __syncthreads();
                for (int w = blockDim.x / 2; w > 0; w /= 2) {
                    if ((int)threadIdx.x < w)
                        red[threadIdx.x] += red[threadIdx.x + w];
                    __syncthreads();
                }
                if (threadIdx.x == 0)
                    inv_s = red[0] > 0.f ? rsqrtf(red[0]) : 0.f;
                __syncthreads();
                inv = inv_s;
                __syncthreads();
            }
            if (c < d) {
                double v = (double)X[(size_t)t * d + c] * inv;
                acc = mode == 1 ? fmax(acc, v) : mode == 2 ? fmin(acc, v) : acc + v;
            }
        }
        double len = (double)(t1 - t0);
        if (c < d)
            out[((size_t)h * S + seg) * d + c] = (float)((mode == 0 ? acc / len : acc) * (len_norm ? sqrt(len) : 1.0));
    }
}

}  // namespace

sl_status sl__cuda_pool_tokens(const sl__kargs *a)
{
    const sl_pool_params *p = static_cast<const sl_pool_params *>(a->params);
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], n = x->shape[1], d = x->shape[2], S = a->out[0].shape[1];
    if (n > (1 << 30) || d > (1 << 30) || H > 65535 || S > (int64_t)INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^30 tokens or channels, or 65535 heads");
    if (H == 0 || S == 0 || d == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    SL_LAUNCH(pool_kernel, dim3((unsigned)S, (unsigned)H), 128, 0, 0)(st.input<float>(0), st.input<int32_t>(1),
                                                        st.output<float>(0), (int)n, (int)d, (int)S,
                                                        (int)(p->block < n ? p->block : n > 0 ? n : 1), (int)p->mode,
                                                        (int)p->normalize, (int)p->len_norm);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
