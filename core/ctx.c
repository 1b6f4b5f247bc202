/* ctx.c — the context: allocator hook (huge-page advice for large buffers),
 * error message, thread count, interrupt flag. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "internal.h"

#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__) && defined(MADV_HUGEPAGE)
/* Large buffers (K/V caches) are read at random rows by the gather
 * executors; 2 MiB pages spare them a TLB miss per row (+15-35% on token-
 * sparse decode). Advice only: with transparent huge pages in madvise mode
 * the kernel backs the buffer's aligned interior with huge pages when it
 * can, and nothing changes where it cannot. */
static void advise_huge(void *p, size_t bytes)
{
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1), e = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (e > a)
        (void)madvise((void *)a, (size_t)(e - a), MADV_HUGEPAGE);
}
#define SL__HUGE_MIN_BYTES ((size_t)8 << 20)
#endif

static void *default_alloc(void *ud, void *ptr, size_t old_bytes, size_t new_bytes)
{
    (void)ud;
    (void)old_bytes;
    if (new_bytes == 0) {
        free(ptr);
        return NULL;
    }
    void *p = realloc(ptr, new_bytes);
#ifdef SL__HUGE_MIN_BYTES
    if (p && !ptr && new_bytes >= SL__HUGE_MIN_BYTES)
        advise_huge(p, new_bytes);
#endif
    return p;
}

/* The CPUs this process may run on: the online CPUs, fewer where the
 * affinity mask says so (taskset, a cgroup cpuset), and at most
 * SLURM_CPUS_PER_TASK inside a Slurm job step that sets it, so a sweep shard
 * uses what Slurm allocated to it, not every CPU of the node. */
static int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c >= 1 && c < n)
            n = c;
    }
#endif
    const char *slurm = getenv("SLURM_CPUS_PER_TASK");
    if (slurm && *slurm) {
        char *end;
        long c = strtol(slurm, &end, 10);
        if (*end == '\0' && c >= 1 && c < n)
            n = c;
    }
    return n > 4096 ? 4096 : (int)n;
}

sl_ctx *sl_ctx_new(const sl_ctx_options *opt)
{
    sl_alloc_fn alloc = opt && opt->alloc ? opt->alloc : default_alloc;
    void *ud = opt ? opt->alloc_ud : NULL;
    sl_ctx *ctx = alloc(ud, NULL, 0, sizeof *ctx);
    if (!ctx)
        return NULL;
    memset(ctx, 0, sizeof *ctx);
    ctx->alloc = alloc;
    ctx->alloc_ud = ud;
    ctx->n_threads = opt ? opt->n_threads : 0;
    if (ctx->n_threads <= 0)
        ctx->n_threads = default_threads();
    return ctx;
}

void sl_ctx_free(sl_ctx *ctx)
{
    if (!ctx)
        return;
    ctx->alloc(ctx->alloc_ud, ctx, sizeof *ctx, 0);
}

const char *sl_ctx_error(const sl_ctx *ctx) { return ctx ? ctx->err : "no context"; }

void sl_ctx_clear_error(sl_ctx *ctx)
{
    ctx->err[0] = '\0';
    ctx->last_status = SL_OK;
}

int sl_ctx_threads(const sl_ctx *ctx) { return ctx->n_threads; }

void sl_ctx_set_threads(sl_ctx *ctx, int n) { ctx->n_threads = n <= 0 ? default_threads() : n > 4096 ? 4096 : n; }

void sl_ctx_set_interrupt(sl_ctx *ctx, volatile int *flag) { ctx->interrupt = flag; }

int sl_ctx_interrupted(const sl_ctx *ctx) { return ctx->interrupt && *ctx->interrupt; }

size_t sl_ctx_live_allocs(const sl_ctx *ctx) { return ctx->live_allocs; }

size_t sl_ctx_live_bytes(const sl_ctx *ctx) { return ctx->live_bytes; }
int64_t sl_ctx_input_scans(const sl_ctx *ctx) { return ctx->input_scans; }

void *sl_ctx_alloc(sl_ctx *ctx, size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    void *p = ctx->alloc(ctx->alloc_ud, NULL, 0, bytes);
    if (!p) {
        sl_ctx_fail(ctx, SL_ENOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    ctx->live_allocs++;
    ctx->live_bytes += bytes;
    return p;
}

void sl_ctx_dealloc(sl_ctx *ctx, void *ptr, size_t bytes)
{
    if (!ptr)
        return;
    if (bytes == 0)
        bytes = 1;
    ctx->alloc(ctx->alloc_ud, ptr, bytes, 0);
    ctx->live_allocs--;
    ctx->live_bytes -= bytes;
}

static sl_status vfail(sl_ctx *ctx, sl_status s, const char *fmt, va_list ap)
{
    if (!ctx)
        return s;
    /* Formatted apart first: a message may quote the previous one
     * (sl_ctx_error(ctx) as an argument), which must not be overwritten while read. */
    char msg[SL__ERRMSG_BYTES];
    vsnprintf(msg, sizeof msg, fmt, ap);
    memcpy(ctx->err, msg, sizeof msg);
    /* Messages are one line: a newline from a file name or a nested message
     * would break the CLI's one-line contract. */
    for (char *c = ctx->err; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    ctx->last_status = s;
    return s;
}

sl_status sl_ctx_fail(sl_ctx *ctx, sl_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(ctx, s, fmt, ap);
    va_end(ap);
    return s;
}

double sl_time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
