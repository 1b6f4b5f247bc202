/* fuzz_safetensors.c — sl_safetensors_read on any bytes, then every tensor read
 * back whole (a size the header lies about would show under ASan). */
#include "fuzz.h"

static volatile unsigned sink; /* keeps the reads of every tensor byte */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128];
    fuzz_path(path, sizeof path, "x.safetensors");
    fuzz_write(path, data, size);
    sl_ctx *ctx = fuzz_ctx();
    sl_named_tensor *ts = NULL;
    int n = 0;
    if (sl_safetensors_read(ctx, path, &ts, &n) == SL_OK) {
        unsigned sum = 0;
        for (int i = 0; i < n; i++) {
            const uint8_t *p = ts[i].t.data;
            size_t bytes = (size_t)sl_tensor_numel(&ts[i].t) * sl_dtype_size(ts[i].t.dtype);
            for (size_t j = 0; j < bytes; j++)
                sum += p[j];
            sum += (unsigned)strlen(ts[i].name);
        }
        sink = sum;
        sl_named_tensors_free(ctx, ts, n);
    } else if (!sl_ctx_error(ctx)[0]) {
        abort();
    }
    fuzz_ctx_done(ctx);
    return 0;
}
