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
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

static int l_threads(lua_State *L)
{
    lua_pushinteger(L, sl_ctx_threads(sl__lua_ctx(L)->ctx));
    return 1;
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
    sl__lua_push_tensor(L, q);
    sl__lua_push_tensor(L, k);
    sl__lua_push_tensor(L, v);
    return 3;
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

void sl__lua_open_util(lua_State *L)
{
    static const luaL_Reg fns[] = {{"time", l_time},
                                   {"backends", l_backends},
                                   {"threads", l_threads},
                                   {"bench_sgemm", l_bench_sgemm},
                                   {"bench_memcpy", l_bench_memcpy},
                                   {"synthetic", l_synthetic},
                                   {"sha256", l_sha256},
                                   {"listdir", l_listdir},
                                   {"mkdir", l_mkdir},
                                   {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
    lua_pushstring(L, SL_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, SL_BUILD_FLAGS);
    lua_setfield(L, -2, "build_flags");
}
