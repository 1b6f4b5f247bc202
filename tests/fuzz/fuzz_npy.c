/* fuzz_npy.c — sl_npy_read on any bytes: SL_OK or a clean error, nothing leaked. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128];
    fuzz_path(path, sizeof path, "x.npy");
    fuzz_write(path, data, size);
    sl_ctx *ctx = fuzz_ctx();
    sl_tensor t;
    if (sl_npy_read(ctx, path, &t) == SL_OK) {
        if (sl_tensor_numel(&t) < 0)
            abort();
        sl_tensor_release(&t);
    } else if (!sl_ctx_error(ctx)[0]) {
        abort(); /* a failure always says why */
    }
    fuzz_ctx_done(ctx);
    return 0;
}
