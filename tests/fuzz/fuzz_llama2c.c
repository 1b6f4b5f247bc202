/* fuzz_llama2c.c — sl_model_load_llama2c on any bytes (7 int32 header, f32
 * weights), then a short forward pass when the model is small. */
#include "model_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128];
    fuzz_path(path, sizeof path, "model.bin");
    fuzz_write(path, data, size);
    sl_ctx *ctx = fuzz_ctx();
    sl_model *m = NULL;
    if (sl_model_load_llama2c(ctx, path, &m) == SL_OK) {
        fuzz_forward(ctx, m);
        sl_model_free(ctx, m);
    } else if (!sl_ctx_error(ctx)[0]) {
        abort();
    }
    fuzz_ctx_done(ctx);
    return 0;
}
