/* l_util.c — small host facts for scripts: monotonic time, backends and
 * their status, threads, version, and the sgemm and memcpy ceilings the
 * benchmarks compare against. */
#include "l_util.h"
#include "l_tensor.h"
#include "store.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SL_BUILD_FLAGS
#define SL_BUILD_FLAGS "unknown"
#endif

static int l_time(lua_State *L)
{
    lua_pushnumber(L, sl_time_now());
    return 1;
}

static int l_backends(lua_State *L)
{
    lua_createtable(L, SL_BACKEND__COUNT, 0);
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, sl_backend_name((sl_backend_id)b));
        lua_setfield(L, -2, "name");
        lua_pushboolean(L, sl_backend_available((sl_backend_id)b));
        lua_setfield(L, -2, "available");
        lua_pushstring(L, sl_backend_status((sl_backend_id)b));
        lua_setfield(L, -2, "status");
        lua_rawseti(L, -2, b + 1);
    }
    return 1;
}

/* sl.threads([n]) -> the cpu backend's thread count; with n sets it first
 * (n >= 1 that many, n <= 0 the default: the CPUs this process may use). */
static int l_threads(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) {
        if (!lua_isinteger(L, 1))
            return sl__lua_error(L, "sl.threads: expected an integer thread count, found %s", luaL_typename(L, 1));
        lua_Integer n = lua_tointeger(L, 1);
        sl_ctx_set_threads(sl__lua_ctx(L)->ctx, n > 4096 ? 4096 : n < 0 ? 0 : (int)n);
    }
    lua_pushinteger(L, sl_ctx_threads(sl__lua_ctx(L)->ctx));
    return 1;
}

/* sl.input_scans() -> the input scans (NaN / inf, score range) the op
 * dispatcher has run under this state's context (issue 20, session 4). */
static int l_input_scans(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)sl_ctx_input_scans(sl__lua_ctx(L)->ctx));
    return 1;
}

/* sl.cpu_isa([name]) -> the instruction set the cpu kernels' row operations
 * run ("avx512", "avx2", "portable"); with a name ("auto", "avx512", "avx2",
 * "portable") sets it for this state's context first (an error naming the
 * cause when unknown or beyond this CPU). Returns the set now in effect and
 * the set "auto" runs (the CPU's best, under an SL_CPU_ISA cap). */
static int l_cpu_isa(lua_State *L)
{
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (!lua_isnoneornil(L, 1)) {
        const char *name = luaL_checkstring(L, 1);
        if (sl_ctx_set_cpu_isa(ctx, name) != SL_OK) {
            const char *msg = sl_ctx_error(ctx);
            return sl__lua_error(L, "%s", msg);
        }
    }
    lua_pushstring(L, sl_ctx_cpu_isa(ctx));
    sl_ctx *probe = sl_ctx_new(NULL);
    lua_pushstring(L, probe ? sl_ctx_cpu_isa(probe) : "?");
    sl_ctx_free(probe);
    return 2;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* sl.bench_sgemm(n [, reps]) -> median GFLOP/s of an n×n×n OpenBLAS sgemm on
 * all of the context's threads: the ceiling our kernels are measured against. */
static int l_bench_sgemm(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1), reps = luaL_optinteger(L, 2, 5);
    if (n < 16 || n > 16384 || reps < 1 || reps > 100)
        return sl__lua_error(L, "sl.bench_sgemm: n in [16, 16384] and reps in [1, 100], found %d and %d", (int)n,
                          (int)reps);
    size_t sz = (size_t)n * (size_t)n;
    float *a = malloc(sz * sizeof *a), *b = malloc(sz * sizeof *b), *c = malloc(sz * sizeof *c);
    double *t = malloc((size_t)reps * sizeof *t);
    if (!a || !b || !c || !t) {
        free(a), free(b), free(c), free(t);
        return sl__lua_error(L, "sl.bench_sgemm: out of memory");
    }
    sl_rng r;
    sl_rng_seed(&r, 42);
    for (size_t i = 0; i < sz; i++) {
        a[i] = (float)sl_rng_uniform(&r) - 0.5f;
        b[i] = (float)sl_rng_uniform(&r) - 0.5f;
    }
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(sl_ctx_threads(sl__lua_ctx(L)->ctx));
    int in = (int)n;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, in, in, in, 1.f, a, in, b, in, 0.f, c, in); /* warm-up */
    for (lua_Integer i = 0; i < reps; i++) {
        double t0 = sl_time_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, in, in, in, 1.f, a, in, b, in, 0.f, c, in);
        t[i] = sl_time_now() - t0;
    }
    openblas_set_num_threads(saved);
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double med = t[reps / 2];
    free(a), free(b), free(c), free(t);
    lua_pushnumber(L, 2.0 * (double)n * (double)n * (double)n / med / 1e9);
    return 1;
}

typedef struct copy_slice { char *dst; const char *src; size_t n; } copy_slice;

static void *copy_run(void *p)
{
    copy_slice *c = p;
    memcpy(c->dst, c->src, c->n);
    return NULL;
}

#define BENCH_MAX_THREADS 64

/* sl.bench_memcpy(bytes [, reps]) -> median GB/s of memcpy of `bytes` bytes
 * (bytes copied per second) split over the context's threads: the memory
 * ceiling the memory-bound kernels (token-sparse decode) are measured against. */
static int l_bench_memcpy(lua_State *L)
{
    lua_Integer bytes = luaL_checkinteger(L, 1), reps = luaL_optinteger(L, 2, 5);
    if (bytes < 4096 || bytes > ((lua_Integer)1 << 36) || reps < 1 || reps > 100)
        return sl__lua_error(L, "sl.bench_memcpy: bytes in [4096, 2^36] and reps in [1, 100], found %lld and %d",
                             (long long)bytes, (int)reps);
    int n_threads = sl_ctx_threads(sl__lua_ctx(L)->ctx);
    if (n_threads > BENCH_MAX_THREADS)
        n_threads = BENCH_MAX_THREADS;
    char *src = malloc((size_t)bytes), *dst = malloc((size_t)bytes);
    double *t = malloc((size_t)reps * sizeof *t);
    if (!src || !dst || !t) {
        free(src), free(dst), free(t);
        return sl__lua_error(L, "sl.bench_memcpy: out of memory for 2 x %lld bytes", (long long)bytes);
    }
    memset(src, 1, (size_t)bytes); /* touch every page before timing */
    memset(dst, 2, (size_t)bytes);
    size_t per = (size_t)bytes / (size_t)n_threads / 64 * 64;
    copy_slice slices[BENCH_MAX_THREADS];
    for (int i = 0; i < n_threads; i++) {
        size_t off = (size_t)i * per;
        slices[i] = (copy_slice){dst + off, src + off, i == n_threads - 1 ? (size_t)bytes - off : per};
    }
    for (lua_Integer r = -1; r < reps; r++) { /* r = -1: warm-up */
        pthread_t tid[BENCH_MAX_THREADS];
        int started = 1;
        double t0 = sl_time_now();
        for (int i = 1; i < n_threads; i++) {
            if (pthread_create(&tid[i], NULL, copy_run, &slices[i]) != 0)
                break;
            started++;
        }
        for (int i = started; i < n_threads; i++) /* a thread that failed to start: its slice here */
            copy_run(&slices[i]);
        copy_run(&slices[0]);
        for (int i = 1; i < started; i++)
            pthread_join(tid[i], NULL);
        if (r >= 0)
            t[r] = sl_time_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double med = t[reps / 2];
    free(src), free(dst), free(t);
    lua_pushnumber(L, (double)bytes / med / 1e9);
    return 1;
}

static double opt_num_field(lua_State *L, const char *key, double def)
{
    lua_getfield(L, 1, key);
    double v = luaL_optnumber(L, -1, def);
    lua_pop(L, 1);
    return v;
}

/* sl.synthetic{heads=, kv_heads=, n=, d=, seed=, n_sink=, sink=, local=,
 * corr_len=, needles=, needle=} -> q, k, v (see sl_workload_synthetic). */
static int l_synthetic(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const keys[] = {"heads", "kv_heads", "n", "d", "seed", "n_sink", "sink",
                                       "local", "corr_len", "needles", "needle", NULL};
    sl__lua_check_keys(L, 1, "sl.synthetic", keys);
    sl_synth_params p;
    p.heads = sl__lua_opt_int_field(L, 1, "heads", 8);
    p.kv_heads = sl__lua_opt_int_field(L, 1, "kv_heads", p.heads);
    p.n = sl__lua_opt_int_field(L, 1, "n", 1024);
    p.d = sl__lua_opt_int_field(L, 1, "d", 64);
    p.seed = (uint64_t)sl__lua_opt_int_field(L, 1, "seed", 0);
    p.n_sink = sl__lua_opt_int_field(L, 1, "n_sink", 4);
    p.sink_strength = opt_num_field(L, "sink", 5.0);
    p.local_strength = opt_num_field(L, "local", 3.0);
    p.local_corr_len = opt_num_field(L, "corr_len", 32.0);
    p.n_needles = sl__lua_opt_int_field(L, 1, "needles", p.n / 128);
    p.needle_strength = opt_num_field(L, "needle", 6.0);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor q, k, v;
    if (sl_workload_synthetic(ctx, &p, &q, &k, &v))
        return sl__lua_fail(L, ctx);
    sl_tensor_cache_checks(&q); /* fresh buffers (issue 20, session 4) */
    sl_tensor_cache_checks(&k);
    sl_tensor_cache_checks(&v);
    sl__lua_push_tensor(L, q);
    sl__lua_push_tensor(L, k);
    sl__lua_push_tensor(L, v);
    return 3;
}

/* sl.synthetic_video{heads=, frames=, height=, width=, text=, d=, seed=, step=,
 * spatial_frac=, spatial=, spatial_len=, temporal=, temporal_len=, text_strength=,
 * drift=} -> q, k, v, kinds (see sl_workload_video; issue 15). */
static int l_synthetic_video(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const keys[] = {"heads", "frames", "height", "width", "text", "d", "seed", "step",
                                       "spatial_frac", "spatial", "spatial_len", "temporal", "temporal_len",
                                       "text_strength", "drift", NULL};
    sl__lua_check_keys(L, 1, "sl.synthetic_video", keys);
    sl_video_params p;
    p.heads = sl__lua_opt_int_field(L, 1, "heads", 4);
    p.frames = sl__lua_opt_int_field(L, 1, "frames", 4);
    p.height = sl__lua_opt_int_field(L, 1, "height", 8);
    p.width = sl__lua_opt_int_field(L, 1, "width", 8);
    p.text = sl__lua_opt_int_field(L, 1, "text", 0);
    p.d = sl__lua_opt_int_field(L, 1, "d", 64);
    p.seed = (uint64_t)sl__lua_opt_int_field(L, 1, "seed", 0);
    p.step = sl__lua_opt_int_field(L, 1, "step", 0);
    p.spatial_frac = opt_num_field(L, "spatial_frac", 0.5);
    p.spatial_strength = opt_num_field(L, "spatial", 6.0);
    p.spatial_len = opt_num_field(L, "spatial_len", 2.0);
    p.temporal_strength = opt_num_field(L, "temporal", 6.0);
    p.temporal_len = opt_num_field(L, "temporal_len", 0.5);
    p.text_strength = opt_num_field(L, "text_strength", 3.0);
    p.drift = opt_num_field(L, "drift", 0.3);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor q, k, v, kinds;
    if (sl_workload_video(ctx, &p, &q, &k, &v, &kinds))
        return sl__lua_fail(L, ctx);
    sl_tensor_cache_checks(&q);
    sl_tensor_cache_checks(&k);
    sl_tensor_cache_checks(&v);
    sl__lua_push_tensor(L, q);
    sl__lua_push_tensor(L, k);
    sl__lua_push_tensor(L, v);
    sl__lua_push_tensor(L, kinds);
    return 4;
}

/* sl.sha256(string) -> 64 hex digits */
static int l_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65];
    sl_sha256_hex(s, n, hex);
    lua_pushstring(L, hex);
    return 1;
}


/* sl.listdir(path) -> sorted names in a directory (without . and ..) */
static int l_listdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (!d)
        return sl__lua_error(L, "%s: cannot list: %s", path, strerror(errno));
    lua_newtable(L);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            lua_pushstring(L, e->d_name);
            lua_rawseti(L, -2, ++n);
        }
    closedir(d);
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    return 1;
}

/* sl.mkdir(path): creates a directory (and its parents); fine when it exists. */
static int l_mkdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return sl__lua_error(L, "sl.mkdir: bad path length");
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++)
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return sl__lua_error(L, "%s: cannot create: %s", buf, strerror(errno));
            buf[i] = c;
        }
    return 0;
}

/* ---- sl.limited_call: a function run in a child process under a wall-clock
 * and a memory limit -------------------------------------------------------- */

struct mem_cap {
    lua_Alloc inner;
    void *inner_ud;
    size_t used, cap;
    int hit;
};

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct mem_cap *m = ud;
    size_t old = ptr ? osize : 0;
    if (nsize > old && m->used + (nsize - old) > m->cap) {
        m->hit = 1;
        return NULL; /* Lua raises "not enough memory" */
    }
    void *p = m->inner(m->inner_ud, ptr, osize, nsize);
    if (p || nsize == 0) m->used = m->used - old + nsize;
    return p;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* sl.limited_call(f, seconds, max_bytes) runs f() in a forked child of this
 * process, where the Lua allocator refuses to grow the heap by more than
 * max_bytes, and kills the child after `seconds` of wall-clock time (so a
 * single long C call such as a pathological string.match is stopped too).
 * f must return a string. Returns true, the string; or false and "timeout",
 * "memory", or the error message of f. */
static int l_limited_call(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    double seconds = luaL_checknumber(L, 2);
    lua_Integer max_bytes = luaL_checkinteger(L, 3);
    if (!(seconds > 0) || max_bytes < 1) return sl__lua_error(L, "sl.limited_call: seconds and max_bytes must be > 0");
    int fds[2];
    if (pipe(fds) != 0) return sl__lua_error(L, "sl.limited_call: pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return sl__lua_error(L, "sl.limited_call: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        close(fds[0]);
        signal(SIGPIPE, SIG_IGN);
        struct mem_cap m = {0};
        m.inner = lua_getallocf(L, &m.inner_ud);
        m.used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024u + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
        m.cap = m.used + (size_t)max_bytes;
        lua_setallocf(L, capped_alloc, &m);
        lua_pushvalue(L, 1);
        int st = lua_pcall(L, 0, 1, 0);
        size_t n = 0;
        const char *s = NULL;
        char tag = 'O';
        if (st == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
            s = lua_tolstring(L, -1, &n);
        } else if (st == LUA_OK) {
            tag = 'E';
            s = "sl.limited_call: the function did not return a string";
            n = strlen(s);
        } else if (st == LUA_ERRMEM || m.hit) {
            tag = 'M';
        } else {
            tag = 'E';
            s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : "(error object is not a string)";
            if (lua_type(L, -1) != LUA_TSTRING) n = strlen(s);
        }
        write_all(fds[1], &tag, 1);
        if (s) write_all(fds[1], s, n);
        close(fds[1]);
        _exit(0);
    }
    close(fds[1]);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    double deadline = mono_now() + seconds;
    int timed_out = 0;
    char buf[4096];
    for (;;) {
        double left = deadline - mono_now();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd pf = {fds[0], POLLIN, 0};
        int r = poll(&pf, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) continue;
        if (r < 0) break;
        ssize_t got = read(fds[0], buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        luaL_addlstring(&b, buf, (size_t)got);
    }
    close(fds[0]);
    if (timed_out) kill(pid, SIGKILL);
    int wst = 0;
    while (waitpid(pid, &wst, 0) < 0 && errno == EINTR) {
    }
    luaL_pushresult(&b);
    size_t n;
    const char *out = lua_tolstring(L, -1, &n);
    if (timed_out) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "timeout");
    } else if (n == 0) {
        lua_pushboolean(L, 0);
        if (WIFSIGNALED(wst))
            lua_pushfstring(L, "the evaluating process was killed by signal %d", WTERMSIG(wst));
        else
            lua_pushliteral(L, "memory"); /* died before it could answer: out of memory */
    } else if (out[0] == 'O') {
        lua_pushboolean(L, 1);
        lua_pushlstring(L, out + 1, n - 1);
    } else if (out[0] == 'M') {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "memory");
    } else {
        lua_pushboolean(L, 0);
        lua_pushlstring(L, out + 1, n - 1);
    }
    return 2;
}

/* The start time of process pid in clock ticks since boot (field 22 of
 * /proc/PID/stat) and its state letter; 0 when it cannot be read. */
static unsigned long long proc_start(long pid, char *state)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    unsigned long long start = 0;
    char st = '?';
    /* after ") ": state (field 3) ... starttime (field 22) */
    if (sscanf(p + 1, " %c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %llu", &st,
               &start) != 2)
        return 0;
    if (state) *state = st;
    return start;
}

/* sl.process_token(): "HOST PID START", naming this process uniquely on this
 * host (the start time tells a reused pid apart). */
static int l_process_token(lua_State *L)
{
    char host[256] = "?";
    if (gethostname(host, sizeof host - 1) != 0) strcpy(host, "?");
    host[sizeof host - 1] = '\0';
    for (char *c = host; *c; c++)
        if (*c == ' ') *c = '_';
    long pid = (long)getpid();
    char buf[320];
    snprintf(buf, sizeof buf, "%s %ld %llu", host, pid, proc_start(pid, NULL));
    lua_pushstring(L, buf);
    return 1;
}

/* sl.process_alive(token): true when token (from sl.process_token) names a
 * live process on this host; false when it names a process of this host that
 * is gone (or a zombie); nil when the token is of another host. */
static int l_process_alive(lua_State *L)
{
    const char *tok = luaL_checkstring(L, 1);
    char host[256] = "?", th[256];
    long pid;
    unsigned long long start;
    if (gethostname(host, sizeof host - 1) != 0) strcpy(host, "?");
    host[sizeof host - 1] = '\0';
    for (char *c = host; *c; c++)
        if (*c == ' ') *c = '_';
    if (sscanf(tok, "%255s %ld %llu", th, &pid, &start) != 3 || pid <= 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (strcmp(th, host) != 0) {
        lua_pushnil(L);
        return 1;
    }
    char st = '?';
    unsigned long long now_start = proc_start(pid, &st);
    int alive = (kill((pid_t)pid, 0) == 0 || errno == EPERM) && now_start != 0 && now_start == start && st != 'Z' &&
                st != 'X';
    lua_pushboolean(L, alive);
    return 1;
}

void sl__lua_open_util(lua_State *L)
{
    static const luaL_Reg fns[] = {{"time", l_time},
                                   {"backends", l_backends},
                                   {"threads", l_threads},
                                   {"cpu_isa", l_cpu_isa},
                                   {"input_scans", l_input_scans},
                                   {"bench_sgemm", l_bench_sgemm},
                                   {"bench_memcpy", l_bench_memcpy},
                                   {"synthetic", l_synthetic}, {"synthetic_video", l_synthetic_video},
                                   {"sha256", l_sha256},
                                   {"listdir", l_listdir},
                                   {"mkdir", l_mkdir},
                                   {"limited_call", l_limited_call},
                                   {"process_token", l_process_token},
                                   {"process_alive", l_process_alive},
                                   {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
    lua_pushstring(L, SL_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, SL_BUILD_FLAGS);
    lua_setfield(L, -2, "build_flags");
}
