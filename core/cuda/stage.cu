// cuda/stage.cu — staging a call's tensors through device memory (stage.cuh).
#include "dialect.cuh"
#include "stage.cuh"

#include <stdarg.h>
#include <stdio.h>

sl__cuda_stage::~sl__cuda_stage()
{
    for (void *p : in)
        cudaFree(p);
    for (void *p : out)
        cudaFree(p);
    for (int i = 0; i < n_scratch; i++)
        cudaFree(scratch[i]);
}

const char *sl__cuda_op_name(const sl__kargs *a) { return sl_op_info_get(a->op)->name; }

sl_status sl__cuda_fail(const sl__kargs *a, cudaError_t err, const char *what)
{
    (void)cudaGetLastError();  // a failed call's error is reported here, not blamed on the next one
    return sl_ctx_fail(a->ctx, err == cudaErrorMemoryAllocation ? SL_EDEVMEM : SL_EDEVICE, "%s[cuda]: %s: %s",
                       sl__cuda_op_name(a), what, cudaGetErrorString(err));
}

sl_status sl__cuda_unsupported(const sl__kargs *a, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: %s", sl__cuda_op_name(a), why);
}

static sl_status alloc(const sl__kargs *a, size_t bytes, const char *kind, int i, void **p)
{
    *p = nullptr;
    if (bytes == 0)
        return SL_OK;
    cudaError_t err = cudaMalloc(p, bytes);
    if (err == cudaSuccess)
        return SL_OK;
    *p = nullptr;
    (void)cudaGetLastError();  // an allocation failure is not sticky; clear it
    return sl_ctx_fail(a->ctx, err == cudaErrorMemoryAllocation ? SL_EDEVMEM : SL_EDEVICE,
                       "%s[cuda]: cudaMalloc of %zu bytes for %s %d failed: %s", sl__cuda_op_name(a), bytes, kind, i,
                       cudaGetErrorString(err));
}

sl_status sl__cuda_stage_in(sl__cuda_stage *st, unsigned skip)
{
    const sl__kargs *a = st->a;
    const sl_op_info *info = sl_op_info_get(a->op);
    (void)cudaGetLastError();  // a stale error from earlier work must not be blamed on this call
    for (int i = 0; i < info->n_in; i++) {
        if (skip & (1u << i))
            continue;
        size_t bytes = a->in[i].buf ? sl_tensor_nbytes(&a->in[i]) : 0;  // an optional input left out has none
        sl_status s = alloc(a, bytes, "input", i, &st->in[i]);
        if (s != SL_OK)
            return s;
        cudaError_t err = bytes ? cudaMemcpy(st->in[i], a->in[i].data, bytes, cudaMemcpyHostToDevice) : cudaSuccess;
        if (err != cudaSuccess)
            return sl__cuda_fail(a, err, "copying an input to the device");
    }
    for (int i = 0; i < info->n_out; i++) {
        sl_status s = alloc(a, sl_tensor_nbytes(&a->out[i]), "output", i, &st->out[i]);
        if (s != SL_OK)
            return s;
    }
    return SL_OK;
}

sl_status sl__cuda_scratch(sl__cuda_stage *st, size_t bytes, void **p)
{
    if (st->n_scratch == sl__cuda_stage::kMaxScratch)
        return sl_ctx_fail(st->a->ctx, SL_EINTERNAL, "%s[cuda]: more than %d scratch buffers", sl__cuda_op_name(st->a),
                           sl__cuda_stage::kMaxScratch);
    sl_status s = alloc(st->a, bytes, "scratch", st->n_scratch, p);
    if (s == SL_OK && *p)
        st->scratch[st->n_scratch++] = *p;
    return s;
}

sl_status sl__cuda_upload(sl__cuda_stage *st, const void *host, size_t bytes, void **p)
{
    sl_status s = sl__cuda_scratch(st, bytes, p);
    if (s != SL_OK || !*p)
        return s;
    cudaError_t err = cudaMemcpy(*p, host, bytes, cudaMemcpyHostToDevice);
    return err == cudaSuccess ? SL_OK : sl__cuda_fail(st->a, err, "copying an input to the device");
}

sl_status sl__cuda_clear_out(sl__cuda_stage *st, int i)
{
    size_t bytes = sl_tensor_nbytes(&st->a->out[i]);
    cudaError_t err = bytes ? cudaMemset(st->out[i], 0, bytes) : cudaSuccess;
    return err == cudaSuccess ? SL_OK : sl__cuda_fail(st->a, err, "clearing an output");
}

sl_status sl__cuda_stage_out(sl__cuda_stage *st, cudaError_t launched)
{
    const sl__kargs *a = st->a;
    if (launched != cudaSuccess)
        return sl__cuda_fail(a, launched, "kernel launch failed");
    cudaError_t err = cudaStreamSynchronize(0);
    if (err != cudaSuccess)
        return sl__cuda_fail(a, err, "kernel failed");
    const sl_op_info *info = sl_op_info_get(a->op);
    for (int i = 0; i < info->n_out; i++) {
        size_t bytes = sl_tensor_nbytes(&a->out[i]);
        err = bytes ? cudaMemcpy(a->out[i].data, st->out[i], bytes, cudaMemcpyDeviceToHost) : cudaSuccess;
        if (err != cudaSuccess)
            return sl__cuda_fail(a, err, "copying an output to the host");
    }
    return SL_OK;
}
