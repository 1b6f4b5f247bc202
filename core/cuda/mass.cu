// cuda/mass.cu — mass.blocks on CUDA (contract in sparselab.h): one CTA per
// (head, query block); each row's exp(s - lse) folded into the key blocks in
// shared memory (atomics), written once per block. Compiled with `make
// CUDA=1`; run under the CUDA simulator by `make test-cudasim`.
#include "dialect.cuh"
#include "cuda.cuh"
#include "stage.cuh"

#include <math.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 128;

struct mass_args {
    const float *q, *k, *lse;
    float *out;
    int64_t nq, nk, d, group, offset, bq, bk, nqb, nkb;
    float scale;
    int causal;
};

__global__ void mass_kernel(mass_args a)
{
    SL_DYN_SMEM(float, sh);  // d floats of q, then nkb accumulators
    float *qs = sh, *acc = sh + a.d;
    int64_t item = blockIdx.x, h = item / a.nqb, rb = item % a.nqb;
    const float *kh = a.k + (h / a.group) * a.nk * a.d;
    for (int64_t c = threadIdx.x; c < a.nkb; c += kThreads)
        acc[c] = 0;
    for (int64_t i = rb * a.bq; i < min((rb + 1) * a.bq, a.nq); i++) {
        __syncthreads();
        for (int64_t c = threadIdx.x; c < a.d; c += kThreads)
            qs[c] = a.q[(h * a.nq + i) * a.d + c];
        __syncthreads();
        float l = a.lse[h * a.nq + i];
        if (isinf(l))
            continue;
        int64_t lim = a.causal ? min(a.offset + i + 1, a.nk) : a.nk;
        for (int64_t j = threadIdx.x; j < lim; j += kThreads) {
            float s = 0;
            for (int64_t c = 0; c < a.d; c++)
                s += qs[c] * kh[j * a.d + c];
            atomicAdd(&acc[j / a.bk], expf(a.scale * s - l));
        }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < a.nkb; c += kThreads)
        a.out[item * a.nkb + c] = acc[c];
}

}  // namespace

sl_status sl__cuda_mass_blocks(const sl__kargs *a)
{
    const sl_mass_blocks_params *p = static_cast<const sl_mass_blocks_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    int64_t nqb = (dm.nq + p->bq - 1) / p->bq, nkb = (dm.nk + p->bk - 1) / p->bk;
    size_t shm = (size_t)(dm.d + nkb) * sizeof(float);
    if (shm > 48 * 1024)
        return sl__cuda_unsupported(a, "head_dim + key blocks over 12288 (shared memory)");
    if (dm.hq * nqb > INT32_MAX)
        return sl__cuda_unsupported(a, "more than 2^31 - 1 blocks");
    if (dm.hq * nqb == 0)
        return SL_OK;
    sl__cuda_stage st(a);
    if (sl_status s = sl__cuda_stage_in(&st); s != SL_OK)
        return s;
    mass_args ma = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                    static_cast<const float *>(st.in[2]), static_cast<float *>(st.out[0]), dm.nq, dm.nk, dm.d,
                    dm.group, dm.offset, p->bq, p->bk, nqb, nkb, (float)dm.scale, (int)p->causal};
    SL_LAUNCH(mass_kernel, (int)(dm.hq * nqb), kThreads, shm, 0)(ma);
    return sl__cuda_stage_out(&st, cudaGetLastError());
}
