/* exp_rate.c — one thread's throughput of sparselab's vectorised exp_sum
 * (core/cpu/rowops.c, the online softmax's exp) in ns per exp, process CPU
 * time, best of 5: the exp rate of the floors in tests/bench/ref_compare.lua.
 * Built by ref_compare.lua: cc -O2 -Icore tests/bench/exp_rate.c build/libsparselab.a <libs>. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cpu/rowops.h"

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(void)
{
    enum { N = 1 << 14, REPS = 4000 };
    sl__cpu_rowops ro = sl__cpu_rowops_get();
    float *s = malloc(sizeof(float) * N), *w = malloc(sizeof(float) * N);
    if (!s || !w) return 1;
    for (int i = 0; i < N; i++) s[i] = (float)((i * 7919) % 1000) * -0.01f;
    double best = 1e30, sink = 0;
    for (int t = 0; t < 5; t++) {
        double t0 = cpu_s();
        for (int r = 0; r < REPS; r++) {
            for (int i = 0; i < N; i++) w[i] = s[i];
            sink += ro.exp_sum(w, N, 0.f);
        }
        double dt = cpu_s() - t0;
        if (dt < best) best = dt;
    }
    /* the copy is included (a softmax writes its row anyway); it is ~1/10 of the time */
    printf("{\"exp_ns\": %.4f, \"isa\": \"%s\", \"sink\": %g}\n", best * 1e9 / ((double)N * REPS), ro.isa, sink);
    free(s);
    free(w);
    return 0;
}
