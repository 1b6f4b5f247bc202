/* fuzz_tokenizer.c — sl_tokenizer_load on any bytes (the first two give
 * vocab_size, 1..4096), then encoding a fixed text and decoding every id. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int64_t vocab = 1 + (((int64_t)data[0] | (int64_t)data[1] << 8) % 4096);
    char path[128];
    fuzz_path(path, sizeof path, "tokenizer.bin");
    fuzz_write(path, data + 2, size - 2);
    sl_ctx *ctx = fuzz_ctx();
    sl_tokenizer *t = NULL;
    if (sl_tokenizer_load(ctx, path, vocab, &t) == SL_OK) {
        sl_tensor ids;
        if (sl_tokenizer_encode(ctx, t, "Hello, w\xc3\xb6rld \xf0\x9f\x98\x80 <0x41>\n", 1, 1, &ids) == SL_OK) {
            const int32_t *p = ids.data;
            for (int64_t i = 0; i < sl_tensor_numel(&ids); i++)
                if (p[i] < 0 || p[i] >= sl_tokenizer_vocab(t))
                    abort();
            sl_tensor_release(&ids);
        }
        char buf[64];
        for (int32_t id = 0; id < sl_tokenizer_vocab(t); id++)
            if (sl_tokenizer_decode(t, id ? id - 1 : 1, id, buf, sizeof buf) > 0 && memchr(buf, 0, sizeof buf) == NULL)
                abort();
        sl_tokenizer_free(ctx, t);
    } else if (!sl_ctx_error(ctx)[0]) {
        abort();
    }
    fuzz_ctx_done(ctx);
    return 0;
}
