/* fuzz.h — what the libFuzzer targets of tests/fuzz share (issue 19): the
 * input written to a file (the loaders take paths) under one private
 * directory per process, a one-thread context whose allocations must all be
 * released by the end of each input (a leak aborts), and the Lua state of
 * the Lua-level targets (the sparselab module preloaded, as the program
 * does). Each target defines LLVMFuzzerTestOneInput; `make fuzz` builds them
 * with clang -fsanitize=fuzzer,address,undefined (tests/fuzz/run.sh). */
#ifndef SL_FUZZ_H
#define SL_FUZZ_H

#include "sparselab.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* This process's directory (made once; libFuzzer runs inputs one at a time). */
static inline const char *fuzz_dir(void)
{
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/slfuzz.XXXXXX");
        if (!mkdtemp(dir))
            abort();
    }
    return dir;
}

/* Writes the bytes to path (a file under fuzz_dir()). */
static inline void fuzz_write(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
}

static inline void fuzz_path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", fuzz_dir(), name); }

static inline sl_ctx *fuzz_ctx(void)
{
    sl_ctx_options o = {NULL, NULL, 1};
    sl_ctx *ctx = sl_ctx_new(&o);
    if (!ctx)
        abort();
    return ctx;
}

/* Every buffer released: else a leak, reported as a crash. */
static inline void fuzz_ctx_done(sl_ctx *ctx)
{
    if (sl_ctx_live_allocs(ctx) != 0) {
        fprintf(stderr, "fuzz: %zu allocations (%zu bytes) left after the input\n", sl_ctx_live_allocs(ctx),
                sl_ctx_live_bytes(ctx));
        abort();
    }
    sl_ctx_free(ctx);
}

#endif
