/* fuzz_tokenizer_json.c — sl_tokenizer_load of a tokenizer.json (byte-level
 * BPE: cJSON, the pre-tokenizer regexes compiled by libpcre2, the post-
 * processor template) on any bytes, then encoding a fixed text with and
 * without specials, and decoding the ids it gave plus every id once. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128];
    fuzz_path(path, sizeof path, "tokenizer.json");
    fuzz_write(path, data, size);
    sl_ctx *ctx = fuzz_ctx();
    sl_tokenizer *t = NULL;
    if (sl_tokenizer_load(ctx, path, 0, &t) == SL_OK) {
        int32_t vocab = sl_tokenizer_vocab(t);
        for (int specials = 0; specials < 2; specials++) {
            sl_tensor ids;
            if (sl_tokenizer_encode(ctx, t, "Hello, w\xc3\xb6rld  the\tthing's 1234 \xf0\x9f\x98\x80\r\n<|bos|>", specials,
                                    specials, &ids) != SL_OK)
                continue;
            const int32_t *p = ids.data;
            for (int64_t i = 0; i < sl_tensor_numel(&ids); i++)
                if (p[i] < 0 || p[i] >= vocab)
                    abort();
            sl_tensor_release(&ids);
        }
        char buf[64];
        for (int32_t id = 0; id < vocab && id < 4096; id++)
            if (sl_tokenizer_decode(t, id ? id - 1 : 1, id, buf, sizeof buf) > 0 && memchr(buf, 0, sizeof buf) == NULL)
                abort();
        sl_tokenizer_free(ctx, t);
    } else if (!sl_ctx_error(ctx)[0]) {
        abort();
    }
    fuzz_ctx_done(ctx);
    return 0;
}
