// cuda/stage.cuh — the staging every CUDA kernel's host side shares (stage.cu).
// Until the dispatcher hands kernels device buffers, each call stages its
// tensors: every input and output gets a device copy, the kernels run on the
// legacy default stream, outputs are copied back, and every device buffer is
// freed when the stage goes out of scope, on success and on every failure path.
//
//     sl__cuda_stage st(a);
//     sl_status s = sl__cuda_stage_in(&st);
//     if (s != SL_OK)
//         return s;
//     SL_LAUNCH(kernel, grid, block, 0, 0)(st.input<float>(0), ..., st.output<float>(0));
//     return sl__cuda_stage_out(&st, cudaGetLastError());
#ifndef SL_CUDA_STAGE_CUH
#define SL_CUDA_STAGE_CUH

extern "C" {
#include "../internal.h"
}

#include <cuda_runtime.h>

// Device copies of one call's inputs and outputs (NULL for a tensor of 0
// bytes, an optional input left out or an input the call uploads itself),
// plus device scratch buffers the call asks for with sl__cuda_scratch.
struct sl__cuda_stage {
    static constexpr int kMaxScratch = 16;
    const sl__kargs *a = nullptr;
    void *in[SL_OP_MAX_INPUTS] = {};
    void *out[4] = {};
    void *scratch[kMaxScratch] = {};
    int n_scratch = 0;

    explicit sl__cuda_stage(const sl__kargs *args) : a(args) {}
    sl__cuda_stage(const sl__cuda_stage &) = delete;
    sl__cuda_stage &operator=(const sl__cuda_stage &) = delete;
    ~sl__cuda_stage();

    template <class T> const T *input(int i) const { return static_cast<const T *>(in[i]); }
    template <class T> T *output(int i) const { return static_cast<T *>(out[i]); }
};

// The op's name ("attn.dense").
const char *sl__cuda_op_name(const sl__kargs *a);
// "op[cuda]: what: CUDA's message" as SL_EDEVMEM (allocation) or SL_EDEVICE.
sl_status sl__cuda_fail(const sl__kargs *a, cudaError_t err, const char *what);
// "op[cuda]: " and the formatted reason, as SL_EUNSUPPORTED.
sl_status sl__cuda_unsupported(const sl__kargs *a, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
// Allocates and uploads every input (but those whose bit is set in skip: the
// call uploads its own form of them) and allocates every output.
sl_status sl__cuda_stage_in(sl__cuda_stage *st, unsigned skip = 0);
// A device buffer of bytes owned by the stage (*p = NULL for 0 bytes).
sl_status sl__cuda_scratch(sl__cuda_stage *st, size_t bytes, void **p);
// A scratch buffer holding a copy of bytes at host.
sl_status sl__cuda_upload(sl__cuda_stage *st, const void *host, size_t bytes, void **p);
// Sets output i to zero bytes (kernels that accumulate into it or write part of it).
sl_status sl__cuda_clear_out(sl__cuda_stage *st, int i);
// Checks the launch (pass cudaGetLastError(), or a launcher's result), waits
// for the kernels and downloads every output.
sl_status sl__cuda_stage_out(sl__cuda_stage *st, cudaError_t launched);

#endif
