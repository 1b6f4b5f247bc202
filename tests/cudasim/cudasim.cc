// cudasim.cc — the simulator's runtime: fibers (one per CUDA thread, a
// hand-written x86-64 context switch), the block scheduler with its barriers,
// warp collectives and deadlock reports, shared memory, launches and their
// limits, device memory (guard pages, or the allocator under ASan) and the
// runtime API. Process state here is the simulated device's: a test tool.
#include "cudasim.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SL_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SL_SIM_ASAN 1
#endif
#endif
#ifndef SL_SIM_ASAN
#define SL_SIM_ASAN 0
#endif

#if SL_SIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "cudasim: the fiber switch is written for x86-64"
#endif

// ---- context switch ---------------------------------------------------------
// sl_sim_switch(save, to): pushes the callee-saved registers, stores the stack
// pointer in *save, loads to and pops the registers saved there. A new fiber's
// stack is laid out so that its first switch "returns" into the trampoline
// with the fiber in r12.
extern "C" void sl_sim_switch(void **save, void *to) __attribute__((visibility("hidden")));
extern "C" void sl_sim_trampoline(void) __attribute__((visibility("hidden")));
extern "C" [[noreturn]] void sl_sim_fiber_main(void *fiber) __attribute__((visibility("hidden"), used));
asm(R"(
    .text
    .globl sl_sim_switch
    .hidden sl_sim_switch
    .type sl_sim_switch,@function
sl_sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sl_sim_switch, .-sl_sim_switch
    .globl sl_sim_trampoline
    .hidden sl_sim_trampoline
    .type sl_sim_trampoline,@function
sl_sim_trampoline:
    movq %r12, %rdi
    call sl_sim_fiber_main
    ud2
    .size sl_sim_trampoline, .-sl_sim_trampoline
)");

namespace sl_sim {

thread_local Thread *t_cur;

namespace {

enum State { READY, WAIT_BLOCK, WAIT_WARP, EXITED };

constexpr size_t kStackBytes = SL_SIM_ASAN ? 512 * 1024 : 256 * 1024;
constexpr size_t kStaticSmemMax = 48 * 1024;
constexpr size_t kDynSmemDefault = 48 * 1024;
constexpr size_t kSmemOptinMax = 227 * 1024;
constexpr int kSMs = 132;

struct Fiber : Thread {
    void *sp = nullptr;
    char *stack = nullptr;  // lowest usable byte (a guard page lies below)
    State state = EXITED;
    void *asan_fake = nullptr;
};

struct SharedVar {
    const void *key;
    void *p;
    size_t bytes;
};

// One OS thread's scheduler: the block it runs and its fibers.
struct Worker {
    void *main_sp = nullptr;
    void *main_fake = nullptr;
    const void *main_bottom = nullptr;
    size_t main_size = 0;
    std::vector<Fiber> fibers;
    std::vector<char *> stacks;
    Block block{};
    int n_threads = 0, n_barrier = 0, n_exited = 0;
    std::vector<unsigned> warp_waiting, warp_exited;  // per warp, a bit per lane
    bool failed = false;
    std::string error;
    const LaunchCfg *cfg = nullptr;
    void (*thunk)(void *) = nullptr;
    void *ctx = nullptr;
    std::vector<SharedVar> shared;
    size_t static_bytes = 0;
    void *dyn = nullptr;
    size_t dyn_bytes = 0;
    bool reverse = false;
};

thread_local Worker *t_worker;

std::mutex g_mutex;  // guards what follows
cudaError_t g_last_error = cudaSuccess;
cudaError_t g_exec_error = cudaSuccess;
std::string g_last_failure;
std::map<const void *, int> g_max_dyn_smem;
unsigned long long g_launches, g_blocks, g_threads;  // SL_CUDASIM_STATS=1 prints them at exit

void print_stats()
{
    fprintf(stderr, "cudasim: %llu launches, %llu blocks, %llu threads\n", g_launches, g_blocks, g_threads);
}
int g_device = 0;

void set_error(cudaError_t e)
{
    std::lock_guard<std::mutex> lk(g_mutex);
    g_last_error = e;
}

Worker *worker()
{
    if (!t_worker)
        t_worker = new Worker();  // lives as long as its OS thread; a test tool's process state
    return t_worker;
}

char *stack_alloc()
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *m = static_cast<char *>(mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (m == MAP_FAILED) {
        fprintf(stderr, "cudasim: cannot map a fiber stack: %s\n", strerror(errno));
        abort();
    }
    mprotect(m, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
    return m + page;
}

void asan_start(void **fake, const void *bottom, size_t size)
{
#if SL_SIM_ASAN
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}
void asan_finish(void *fake, const void **bottom, size_t *size)
{
#if SL_SIM_ASAN
    __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

// From a fiber back to its worker's scheduler; dying fibers are never resumed.
void to_scheduler(Fiber *f, bool dying)
{
    Worker *w = t_worker;
    asan_start(dying ? nullptr : &f->asan_fake, w->main_bottom, w->main_size);
    sl_sim_switch(&f->sp, w->main_sp);
    asan_finish(f->asan_fake, &w->main_bottom, &w->main_size);
}

void resume(Worker *w, Fiber *f)
{
    t_cur = f;
    asan_start(&w->main_fake, f->stack, kStackBytes);
    sl_sim_switch(&w->main_sp, f->sp);
    asan_finish(w->main_fake, nullptr, nullptr);
    t_cur = nullptr;
}

void fiber_init(Fiber *f)
{
#if SL_SIM_ASAN
    // Frames of a fiber abandoned after a failure may have left poison behind.
    ASAN_UNPOISON_MEMORY_REGION(f->stack, kStackBytes);
#endif
    // Stacks are equally aligned; staggering their tops keeps the hot frames of
    // a block's fibers from all landing in the same cache sets.
    const size_t stagger = (size_t)(f->linear % 64) * 1024 + (size_t)(f->linear / 64 % 16) * 64;
    uintptr_t top = ((uintptr_t)f->stack + kStackBytes - stagger) & ~(uintptr_t)15;
    void **sp = reinterpret_cast<void **>(top - 72);
    sp[0] = sp[1] = sp[2] = nullptr;                        // r15 r14 r13
    sp[3] = f;                                              // r12: the trampoline's argument
    sp[4] = sp[5] = nullptr;                                // rbx rbp
    sp[6] = reinterpret_cast<void *>(&sl_sim_trampoline);  // the return address
    sp[7] = nullptr;
    f->sp = sp;
    f->state = READY;
    f->coll = nullptr;
    f->file = nullptr;
    f->line = 0;
}

const char *base_name(const char *path)
{
    return path ? path : "?";
}

std::string block_name(const Worker *w)
{
    char buf[256];
    snprintf(buf, sizeof buf, "kernel %s (launched at %s:%d), block (%u,%u,%u)", w->cfg->name, base_name(w->cfg->file),
             w->cfg->line, w->block.block_idx.x, w->block.block_idx.y, w->block.block_idx.z);
    return buf;
}

// Names every distinct wait point and how many threads wait there.
std::string deadlock_report(Worker *w)
{
    std::map<std::string, int> sites;
    for (int i = 0; i < w->n_threads; i++) {
        Fiber &f = w->fibers[i];
        if (f.state == EXITED)
            continue;
        char buf[512];
        if (f.state == WAIT_BLOCK) {
            snprintf(buf, sizeof buf, "__syncthreads at %s:%d", base_name(f.file), f.line);
        } else {
            unsigned gone = 0;
            for (int j = 0; j < 32; j++)
                if ((f.coll->mask >> j & 1u) && (f.warp * 32 + j >= w->n_threads ||
                                                  w->fibers[f.warp * 32 + j].state == EXITED))
                    gone |= 1u << j;
            snprintf(buf, sizeof buf, "%s (mask 0x%08x%s) at %s:%d", f.coll->what, f.coll->mask,
                     gone ? ", some lanes of the mask have exited" : "", base_name(f.file), f.line);
        }
        sites[buf]++;
    }
    std::string s = block_name(w) + ": deadlock, no thread can go on:";
    for (auto &kv : sites)
        s += "\n    " + std::to_string(kv.second) + " thread(s) wait at " + kv.first;
    if (w->n_exited)
        s += "\n    " + std::to_string(w->n_exited) + " thread(s) have exited";
    return s;
}

bool run_block(Worker *w)
{
    for (int i = 0; i < w->n_threads; i++)
        fiber_init(&w->fibers[i]);
    w->n_barrier = w->n_exited = 0;
    std::fill(w->warp_waiting.begin(), w->warp_waiting.end(), 0u);
    std::fill(w->warp_exited.begin(), w->warp_exited.end(), 0u);
    for (SharedVar &v : w->shared)
        memset(v.p, 0xff, v.bytes);  // uninitialised shared memory reads as NaN / -1
    if (w->dyn_bytes)
        memset(w->dyn, 0xff, w->dyn_bytes);
    while (w->n_exited < w->n_threads) {
        bool ran = false;
        for (int k = 0; k < w->n_threads; k++) {
            Fiber *f = &w->fibers[w->reverse ? w->n_threads - 1 - k : k];
            if (f->state != READY)
                continue;
            resume(w, f);
            ran = true;
            if (w->failed)
                return false;
        }
        if (!ran && w->n_exited < w->n_threads) {
            w->failed = true;
            w->error = deadlock_report(w);
            return false;
        }
    }
    return true;
}

[[noreturn]] void fail_here(const char *msg);

}  // namespace

extern "C" void sl_sim_fiber_main(void *p)
{
    Fiber *f = static_cast<Fiber *>(p);
    Worker *w = t_worker;
    asan_finish(nullptr, &w->main_bottom, &w->main_size);
    w->thunk(w->ctx);
    f->state = EXITED;
    w->n_exited++;
    w->warp_exited[f->warp] |= 1u << f->lane;
    to_scheduler(f, true);
    __builtin_unreachable();
}

namespace {
// No object owning memory may live in this frame: the fiber is abandoned here.
[[noreturn]] void fail_here(const char *msg)
{
    Worker *w = t_worker;
    Fiber *f = static_cast<Fiber *>(t_cur);
    if (!w || !f) {
        fprintf(stderr, "cudasim: %s (outside a kernel)\n", msg);
        abort();
    }
    w->failed = true;
    w->error = block_name(w) + ", thread (" + std::to_string(f->thread_idx.x) + "," + std::to_string(f->thread_idx.y) +
               "," + std::to_string(f->thread_idx.z) + "): " + msg;
    f->state = EXITED;
    w->warp_exited[f->warp] |= 1u << f->lane;
    to_scheduler(f, true);
    __builtin_unreachable();
}
}  // namespace

void device_fail(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fail_here(buf);
}

void syncthreads(const char *file, int line)
{
    Worker *w = t_worker;
    Fiber *f = static_cast<Fiber *>(t_cur);
    f->file = file;
    f->line = line;
    if (++w->n_barrier == w->n_threads) {
        w->n_barrier = 0;
        for (int i = 0; i < w->n_threads; i++)
            if (w->fibers[i].state == WAIT_BLOCK)
                w->fibers[i].state = READY;
        return;
    }
    f->state = WAIT_BLOCK;
    to_scheduler(f, false);
}

void warp_collective(Coll *c, const char *file, int line)
{
    Worker *w = t_worker;
    Fiber *f = static_cast<Fiber *>(t_cur);
    const unsigned mask = c->mask;
    f->coll = c;
    f->file = file;
    f->line = line;
    if (!(mask >> f->lane & 1u))
        device_fail("%s at %s:%d: mask 0x%08x leaves out the calling lane %d", c->what, file, line, mask, f->lane);
    const int base = f->warp * 32, n_lanes = std::min(32, w->n_threads - base);
    if (n_lanes < 32 && (mask >> n_lanes) != 0)
        device_fail("%s at %s:%d: mask 0x%08x names lanes past the block's last thread (this warp has %d)", c->what,
                    file, line, mask, n_lanes);
    const unsigned me = 1u << f->lane;
    if (mask & w->warp_exited[f->warp]) {
        const int j = __builtin_ctz(mask & w->warp_exited[f->warp]);
        device_fail("%s at %s:%d: lane %d of mask 0x%08x has exited and never arrives", c->what, file, line, j, mask);
    }
    // Cheap test first: every other lane of the mask waits at some collective.
    if (((w->warp_waiting[f->warp] | me) & mask) == mask) {
        Thread *lanes[32] = {};
        bool all = true;
        for (int j = 0; j < 32 && all; j++) {
            if (!(mask >> j & 1u))
                continue;
            Fiber *g = &w->fibers[base + j];
            lanes[j] = g;
            if (j != f->lane && (g->coll->complete != c->complete || g->coll->mask != mask))
                all = false;
        }
        if (all) {
            c->complete(lanes, mask);
            for (int j = 0; j < 32; j++)
                if ((mask >> j & 1u) && j != f->lane)
                    static_cast<Fiber *>(lanes[j])->state = READY;
            w->warp_waiting[f->warp] &= ~mask;
            f->coll = nullptr;
            return;
        }
    }
    w->warp_waiting[f->warp] |= me;
    f->state = WAIT_WARP;
    to_scheduler(f, false);
    f->coll = nullptr;
}

void shfl_complete(Thread **lanes, unsigned mask)
{
    for (int j = 0; j < 32; j++) {
        if (!(mask >> j & 1u))
            continue;
        const int s = lanes[j]->coll->src;
        if (s < 0 || s > 31 || !(mask >> s & 1u))
            device_fail("%s at %s:%d: lane %d reads lane %d, outside mask 0x%08x", lanes[j]->coll->what,
                        lanes[j]->file, lanes[j]->line, j, s, mask);
        lanes[j]->coll->out = lanes[s]->coll->in;
    }
}

void vote_complete(Thread **lanes, unsigned mask)
{
    unsigned ballot = 0;
    for (int j = 0; j < 32; j++)
        if ((mask >> j & 1u) && lanes[j]->coll->in)
            ballot |= 1u << j;
    for (int j = 0; j < 32; j++)
        if (mask >> j & 1u)
            lanes[j]->coll->out = ballot;
}

void syncwarp_complete(Thread **, unsigned) {}

// ---- shared memory -----------------------------------------------------------
void *shared_static(const void *key, size_t bytes, size_t align, const char *file, int line)
{
    Worker *w = t_worker;
    for (SharedVar &v : w->shared)
        if (v.key == key)
            return v.p;
    // First use in this launch: storage lives until the launch ends and is
    // refilled for every block, so each block sees its own fresh copy.
    size_t total = w->static_bytes + bytes;
    if (total > kStaticSmemMax)
        device_fail("static shared memory of %zu bytes at %s:%d exceeds 48 KiB", total, file, line);
    if (total + w->dyn_bytes > kSmemOptinMax)
        device_fail("static (%zu) plus dynamic (%zu) shared memory exceeds 227 KiB (at %s:%d)", total, w->dyn_bytes,
                    file, line);
    void *p = nullptr;
    if (posix_memalign(&p, std::max<size_t>(align, 16), bytes ? bytes : 1) != 0)
        device_fail("out of host memory for shared memory");
    memset(p, 0xff, bytes);
    w->shared.push_back({key, p, bytes});
    w->static_bytes = total;
    return p;
}

void *shared_dynamic(void)
{
    return t_worker->dyn;
}

// ---- launches ------------------------------------------------------------------
namespace {
bool env_reverse()
{
    const char *e = getenv("SL_CUDASIM_ORDER");
    return e && strcmp(e, "reverse") == 0;
}

cudaError_t launch_error(const LaunchCfg &cfg, cudaError_t e, const char *why)
{
    fprintf(stderr, "cudasim: launch of %s at %s:%d refused: %s\n", cfg.name, cfg.file, cfg.line, why);
    std::lock_guard<std::mutex> lk(g_mutex);
    g_last_error = e;
    g_last_failure = why;
    return e;
}
}  // namespace

cudaError_t launch(const LaunchCfg &cfg, void (*thunk)(void *), void *ctx)
{
    const dim3 g = cfg.grid, b = cfg.block;
    const unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
    if (threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
        return launch_error(cfg, cudaErrorInvalidConfiguration, "block dimensions out of range");
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
        return launch_error(cfg, cudaErrorInvalidConfiguration, "grid dimensions out of range");
    size_t dyn_max = kDynSmemDefault;
    {
        std::lock_guard<std::mutex> lk(g_mutex);
        auto it = g_max_dyn_smem.find(cfg.fn);
        if (it != g_max_dyn_smem.end())
            dyn_max = (size_t)it->second;
    }
    if (cfg.smem > dyn_max) {
        char why[160];
        snprintf(why, sizeof why, "%zu bytes of dynamic shared memory, more than the kernel's limit of %zu", cfg.smem,
                 dyn_max);
        return launch_error(cfg, cudaErrorInvalidValue, why);
    }

    Worker *w = worker();
    w->cfg = &cfg;
    w->thunk = thunk;
    w->ctx = ctx;
    w->reverse = env_reverse();
    w->n_threads = (int)threads;
    w->failed = false;
    w->error.clear();
    w->shared.clear();
    w->static_bytes = 0;
    w->dyn_bytes = cfg.smem;
    w->dyn = nullptr;
    if (cfg.smem && posix_memalign(&w->dyn, 128, cfg.smem) != 0)
        return launch_error(cfg, cudaErrorMemoryAllocation, "out of host memory for dynamic shared memory");
    if (w->fibers.size() < threads)
        w->fibers.resize(threads);
    w->warp_waiting.assign((threads + 31) / 32, 0u);
    w->warp_exited.assign((threads + 31) / 32, 0u);
    while (w->stacks.size() < threads)
        w->stacks.push_back(stack_alloc());
    for (int i = 0; i < (int)threads; i++) {
        Fiber &f = w->fibers[i];
        f.stack = w->stacks[i];
        f.block = &w->block;
        f.linear = i;
        f.lane = i % 32;
        f.warp = i / 32;
        f.thread_idx = uint3{(unsigned)i % b.x, (unsigned)(i / b.x) % b.y, (unsigned)(i / (b.x * b.y))};
    }
    w->block.block_dim = b;
    w->block.grid_dim = g;
    const unsigned long long n_blocks = (unsigned long long)g.x * g.y * g.z;
    {
        std::lock_guard<std::mutex> lk(g_mutex);
        static bool stats = getenv("SL_CUDASIM_STATS") && atexit(print_stats) == 0;
        (void)stats;
        g_launches++;
        g_blocks += n_blocks;
        g_threads += n_blocks * threads;
    }
    bool ok = true;
    for (unsigned long long k = 0; k < n_blocks && ok; k++) {
        const unsigned long long i = w->reverse ? n_blocks - 1 - k : k;
        w->block.block_idx = uint3{(unsigned)(i % g.x), (unsigned)(i / g.x % g.y), (unsigned)(i / ((unsigned long long)g.x * g.y))};
        ok = run_block(w);
    }
    for (SharedVar &v : w->shared)
        free(v.p);
    w->shared.clear();
    free(w->dyn);
    w->dyn = nullptr;
    w->dyn_bytes = 0;
    if (ok)
        return cudaSuccess;
    fprintf(stderr, "cudasim: %s\n", w->error.c_str());
    std::lock_guard<std::mutex> lk(g_mutex);
    g_last_failure = w->error;
    g_last_error = cudaErrorLaunchFailure;
    g_exec_error = cudaErrorLaunchFailure;
    return cudaSuccess;  // like CUDA: the launch went out; the failure shows at the next sync / cudaGetLastError
}

cudaError_t func_set_attribute(const void *fn, cudaFuncAttribute attr, int value)
{
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > kSmemOptinMax) {
            set_error(cudaErrorInvalidValue);
            return cudaErrorInvalidValue;
        }
        std::lock_guard<std::mutex> lk(g_mutex);
        g_max_dyn_smem[fn] = value;
        return cudaSuccess;
    }
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout)
        return cudaSuccess;
    set_error(cudaErrorInvalidValue);
    return cudaErrorInvalidValue;
}

// ---- wmma --------------------------------------------------------------------
namespace {
float load_elem(const void *p, size_t i, int code)
{
    switch (code) {
    case 0: return static_cast<const float *>(p)[i];
    case 1: return half_bits_to_float(static_cast<const uint16_t *>(p)[i]);
    default: return bf16_bits_to_float(static_cast<const uint16_t *>(p)[i]);
    }
}
void store_elem(void *p, size_t i, int code, float v)
{
    switch (code) {
    case 0: static_cast<float *>(p)[i] = v; break;
    case 1: static_cast<uint16_t *>(p)[i] = float_to_half_bits(v); break;
    default: static_cast<uint16_t *>(p)[i] = float_to_bf16_bits(v); break;
    }
}
// Memory offset of tile element (r, c).
size_t tile_off(int r, int c, unsigned ld, int layout) { return layout == 1 ? (size_t)c * ld + r : (size_t)r * ld + c; }

void check_uniform(Thread **lanes, unsigned mask)
{
    Coll *c0 = nullptr;
    for (int j = 0; j < 32; j++) {
        if (!(mask >> j & 1u))
            continue;
        Coll *c = lanes[j]->coll;
        if (!c0)
            c0 = c;
        else if (c->arg[1] != c0->arg[1] || c->ld != c0->ld || c->layout != c0->layout)
            device_fail("%s at %s:%d: lanes pass different pointers, ldm or layouts", c->what, lanes[j]->file,
                        lanes[j]->line);
    }
}
}  // namespace

void wmma_collective(void (*complete)(Thread **, unsigned), const char *what, void *frag, const void *mem,
                     unsigned ldm, int layout, int frag_code, int mem_code, const char *file, int line)
{
    Coll c{};
    c.complete = complete;
    c.what = what;
    c.mask = 0xffffffffu;
    c.arg[0] = frag;
    c.arg[1] = mem;
    c.ld = ldm;
    c.layout = layout;
    c.src = frag_code | mem_code << 4;
    warp_collective(&c, file, line);
}

void wmma_load_complete(Thread **lanes, unsigned mask)
{
    check_uniform(lanes, mask);
    for (int j = 0; j < 32; j++) {
        Coll *c = lanes[j]->coll;
        for (int i = 0; i < 8; i++) {
            const int e = j * 8 + i;
            const float v = load_elem(c->arg[1], tile_off(e / 16, e % 16, c->ld, c->layout), c->src >> 4);
            store_elem(const_cast<void *>(c->arg[0]), i, c->src & 15, v);
        }
    }
}

void wmma_store_complete(Thread **lanes, unsigned mask)
{
    check_uniform(lanes, mask);
    for (int j = 0; j < 32; j++) {
        Coll *c = lanes[j]->coll;
        for (int i = 0; i < 8; i++) {
            const int e = j * 8 + i;
            const float v = load_elem(c->arg[0], i, c->src & 15);
            store_elem(const_cast<void *>(c->arg[1]), tile_off(e / 16, e % 16, c->ld, c->layout), c->src >> 4, v);
        }
    }
}

void wmma_mma_complete(Thread **lanes, unsigned)
{
    float A[16][16], B[16][16], C[16][16];
    const int ab = lanes[0]->coll->src & 15, cd = lanes[0]->coll->src >> 4;
    for (int j = 0; j < 32; j++) {
        Coll *c = lanes[j]->coll;
        for (int i = 0; i < 8; i++) {
            const int e = j * 8 + i;
            A[e / 16][e % 16] = load_elem(c->arg[1], i, ab);
            B[e / 16][e % 16] = load_elem(c->arg[2], i, ab);
            C[e / 16][e % 16] = load_elem(c->arg[3], i, cd);
        }
    }
    for (int j = 0; j < 32; j++) {
        Coll *c = lanes[j]->coll;
        for (int i = 0; i < 8; i++) {
            const int e = j * 8 + i, r = e / 16, col = e % 16;
            float acc = C[r][col];
            for (int k = 0; k < 16; k++)
                acc += A[r][k] * B[k][col];
            store_elem(const_cast<void *>(c->arg[0]), i, cd, acc);
        }
    }
}

void wmma_mma(void *d, const void *a, const void *b, const void *c, int codes, const char *file, int line)
{
    Coll k{};
    k.complete = wmma_mma_complete;
    k.what = "wmma::mma_sync";
    k.mask = 0xffffffffu;
    k.arg[0] = d;
    k.arg[1] = a;
    k.arg[2] = b;
    k.arg[3] = c;
    k.src = codes;
    warp_collective(&k, file, line);
}

// ---- half ------------------------------------------------------------------------
uint16_t float_to_half_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u)
        return (uint16_t)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (x >= 0x477ff000u)  // 65520 and up round to infinity
        return (uint16_t)(sign | 0x7c00u);
    if (x < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
        const int e = (int)(x >> 23), shift = 126 - e;
        if (shift > 24)
            return (uint16_t)sign;
        const uint32_t m = (x & 0x7fffffu) | 0x800000u;
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    const uint32_t t = x - 0x38000000u;
    uint32_t h = t >> 13;
    const uint32_t rem = t & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

float half_bits_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0x1f) {
        x = sign | 0x7f800000u | (m << 13);
    } else if (e == 0) {
        if (m == 0) {
            x = sign;
        } else {
            int k = -1;
            do {
                m <<= 1;
                k++;
            } while (!(m & 0x400u));
            x = sign | (uint32_t)(112 - k) << 23 | (m & 0x3ffu) << 13;
        }
    } else {
        x = sign | (e + 112) << 23 | m << 13;
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

}  // namespace sl_sim

// ---- device memory ------------------------------------------------------------------
namespace {
// Without ASan each buffer ends at a PROT_NONE page, so reading past the end
// faults and the handler below names the buffer. With ASan the allocator's
// redzones do the same job, byte-exact.
struct Alloc {
    char *map;
    size_t map_bytes, bytes;
};
std::map<uintptr_t, Alloc> g_allocs;  // by user pointer; under g_mutex

#if !SL_SIM_ASAN
struct sigaction g_old_segv;
bool g_handler_set = false;

void segv_handler(int sig, siginfo_t *si, void *uc)
{
    const uintptr_t a = (uintptr_t)si->si_addr;
    for (auto &kv : g_allocs) {
        const Alloc &al = kv.second;
        const uintptr_t end = kv.first + al.bytes, guard_end = (uintptr_t)al.map + al.map_bytes;
        if (a >= end && a < guard_end) {
            char buf[256];
            int n = snprintf(buf, sizeof buf,
                             "cudasim: out-of-bounds device memory access at %p: %zu bytes past the end of a "
                             "%zu-byte cudaMalloc buffer at %p\n",
                             (void *)a, (size_t)(a - end), al.bytes, (void *)kv.first);
            if (write(2, buf, (size_t)n) < 0) {
            }
            break;
        }
    }
    sigaction(SIGSEGV, &g_old_segv, nullptr);  // returning re-runs the access under the old handler
    (void)sig, (void)uc;
}
#endif
}  // namespace

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    using namespace sl_sim;
    *p = nullptr;
    if (bytes == 0)
        return cudaSuccess;
#if SL_SIM_ASAN
    void *m = nullptr;
    if (posix_memalign(&m, 256, bytes) != 0) {
        set_error(cudaErrorMemoryAllocation);
        return cudaErrorMemoryAllocation;
    }
    memset(m, 0xff, bytes);
    *p = m;
    std::lock_guard<std::mutex> lk(g_mutex);
    g_allocs[(uintptr_t)m] = Alloc{static_cast<char *>(m), bytes, bytes};
    return cudaSuccess;
#else
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t body = (bytes + 15) / 16 * 16, map_bytes = (body + page - 1) / page * page + page;
    char *m = static_cast<char *>(mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (m == MAP_FAILED) {
        set_error(cudaErrorMemoryAllocation);
        return cudaErrorMemoryAllocation;
    }
    mprotect(m + map_bytes - page, page, PROT_NONE);
    char *u = m + map_bytes - page - body;
    memset(u, 0xff, bytes);
    *p = u;
    std::lock_guard<std::mutex> lk(g_mutex);
    g_allocs[(uintptr_t)u] = Alloc{m, map_bytes, bytes};
    if (!g_handler_set) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = segv_handler;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSEGV, &sa, &g_old_segv);
        g_handler_set = true;
    }
    return cudaSuccess;
#endif
}

cudaError_t cudaFree(void *p)
{
    using namespace sl_sim;
    if (!p)
        return cudaSuccess;
    Alloc al;
    {
        std::lock_guard<std::mutex> lk(g_mutex);
        auto it = g_allocs.find((uintptr_t)p);
        if (it == g_allocs.end()) {
            g_last_error = cudaErrorInvalidValue;
            return cudaErrorInvalidValue;
        }
        al = it->second;
        g_allocs.erase(it);
    }
#if SL_SIM_ASAN
    free(al.map);
#else
    munmap(al.map, al.map_bytes);
#endif
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    if ((unsigned)kind > cudaMemcpyDefault) {
        sl_sim::set_error(cudaErrorInvalidMemcpyDirection);
        return cudaErrorInvalidMemcpyDirection;
    }
    if (bytes)
        memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t)
{
    return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void *p, int value, size_t bytes)
{
    if (bytes)
        memset(p, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t) { return cudaMemset(p, value, bytes); }

// Streams: the simulator runs every launch to completion at once.
cudaError_t cudaStreamCreate(cudaStream_t *st)
{
    *st = nullptr;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void)
{
    std::lock_guard<std::mutex> lk(sl_sim::g_mutex);
    cudaError_t e = sl_sim::g_exec_error;
    sl_sim::g_exec_error = cudaSuccess;
    return e;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaDeviceSynchronize(); }
cudaError_t cudaGetLastError(void)
{
    std::lock_guard<std::mutex> lk(sl_sim::g_mutex);
    cudaError_t e = sl_sim::g_last_error;
    sl_sim::g_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void)
{
    std::lock_guard<std::mutex> lk(sl_sim::g_mutex);
    return sl_sim::g_last_error;
}

const char *cudaGetErrorName(cudaError_t err)
{
    switch (err) {
#define SL_SIM_NAME(e) \
    case e: return #e;
        SL_SIM_NAME(cudaSuccess)
        SL_SIM_NAME(cudaErrorInvalidValue)
        SL_SIM_NAME(cudaErrorMemoryAllocation)
        SL_SIM_NAME(cudaErrorInitializationError)
        SL_SIM_NAME(cudaErrorInvalidConfiguration)
        SL_SIM_NAME(cudaErrorInvalidMemcpyDirection)
        SL_SIM_NAME(cudaErrorStubLibrary)
        SL_SIM_NAME(cudaErrorInsufficientDriver)
        SL_SIM_NAME(cudaErrorDevicesUnavailable)
        SL_SIM_NAME(cudaErrorInvalidDeviceFunction)
        SL_SIM_NAME(cudaErrorNoDevice)
        SL_SIM_NAME(cudaErrorInvalidDevice)
        SL_SIM_NAME(cudaErrorOperatingSystem)
        SL_SIM_NAME(cudaErrorIllegalAddress)
        SL_SIM_NAME(cudaErrorLaunchOutOfResources)
        SL_SIM_NAME(cudaErrorLaunchTimeout)
        SL_SIM_NAME(cudaErrorLaunchFailure)
        SL_SIM_NAME(cudaErrorNotPermitted)
        SL_SIM_NAME(cudaErrorSystemNotReady)
        SL_SIM_NAME(cudaErrorSystemDriverMismatch)
        SL_SIM_NAME(cudaErrorCompatNotSupportedOnDevice)
        SL_SIM_NAME(cudaErrorUnknown)
#undef SL_SIM_NAME
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t err)
{
    switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (cudasim: see the message on stderr)";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return cudaGetErrorName(err);
    }
}

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *dev)
{
    *dev = sl_sim::g_device;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int dev)
{
    if (dev != 0) {
        sl_sim::set_error(cudaErrorInvalidDevice);
        return cudaErrorInvalidDevice;
    }
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int dev)
{
    if (dev != 0)
        return cudaErrorInvalidDevice;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = sl_sim::kSMs; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 228 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    default: sl_sim::set_error(cudaErrorInvalidValue); return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev)
{
    if (dev != 0)
        return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cudasim (H100-like)");
    p->totalGlobalMem = (size_t)80 << 30;
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->multiProcessorCount = sl_sim::kSMs;
    p->major = 9;
    p->minor = 0;
    return cudaSuccess;
}

extern "C" const char *sl_cudasim_last_failure(void)
{
    std::lock_guard<std::mutex> lk(sl_sim::g_mutex);
    return sl_sim::g_last_failure.c_str();
}
