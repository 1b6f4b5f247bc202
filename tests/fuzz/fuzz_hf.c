/* fuzz_hf.c — sl_model_load_hf on a directory made from the input: the first
 * two bytes give the length of config.json (little-endian, clipped), the
 * rest is model.safetensors; then a short forward pass when the model is
 * small. */
#include "model_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t len = (size_t)data[0] | (size_t)data[1] << 8;
    if (len > size - 2)
        len = size - 2;
    char cfg[160], st[160];
    fuzz_path(cfg, sizeof cfg, "config.json");
    fuzz_path(st, sizeof st, "model.safetensors");
    fuzz_write(cfg, data + 2, len);
    fuzz_write(st, data + 2 + len, size - 2 - len);
    sl_ctx *ctx = fuzz_ctx();
    sl_model *m = NULL;
    if (sl_model_load_hf(ctx, fuzz_dir(), &m) == SL_OK) {
        fuzz_forward(ctx, m);
        sl_model_free(ctx, m);
    } else if (!sl_ctx_error(ctx)[0]) {
        abort();
    }
    fuzz_ctx_done(ctx);
    return 0;
}
