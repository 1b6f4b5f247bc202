/* provenance.c — what a run records about where and how it ran: UTC start
 * time, git revision and dirtiness, host, CPU model, build flags (the library version is the caller's to set). */
#include "store.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef SL_BUILD_FLAGS
#define SL_BUILD_FLAGS ""
#endif

/* Copies src into dst (n bytes), cutting it short when it does not fit. */
static void copy_str(char *dst, size_t n, const char *src)
{
    size_t len = strlen(src);
    if (len >= n)
        len = n - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* Runs a shell command and keeps the first line of its stdout (trailing
 * whitespace removed) in out; *any_output tells whether it printed anything
 * at all. Returns 1 when the command ran and exited with status 0. */
static int run_command(const char *cmd, char *out, size_t n, int *any_output)
{
    out[0] = '\0';
    if (any_output)
        *any_output = 0;
    FILE *f = popen(cmd, "r");
    if (!f)
        return 0;
    char line[512];
    int first = 1;
    while (fgets(line, sizeof line, f)) {
        if (any_output)
            *any_output = 1;
        if (first) {
            copy_str(out, n, line);
            first = 0;
        }
    }
    int rc = pclose(f);
    size_t len = strlen(out);
    while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == '\r' || out[len - 1] == ' '))
        out[--len] = '\0';
    if (rc != 0)
        out[0] = '\0';
    return rc == 0;
}

/* Quotes s for sh inside single quotes ('it'\''s'); returns 0 when it does not fit. */
static int shell_quote(const char *s, char *out, size_t n)
{
    size_t j = 0;
    if (n < 3)
        return 0;
    out[j++] = '\'';
    for (; *s; s++) {
        if (*s == '\'') {
            if (j + 4 >= n)
                return 0;
            memcpy(out + j, "'\\''", 4);
            j += 4;
        } else {
            if (j + 1 >= n)
                return 0;
            out[j++] = *s;
        }
    }
    if (j + 2 > n)
        return 0;
    out[j++] = '\'';
    out[j] = '\0';
    return 1;
}

static void collect_git(sl_provenance *p, const char *dir)
{
    char cd[4200] = "";
    if (dir) {
        char q[4096];
        if (!shell_quote(dir, q, sizeof q))
            return;
        snprintf(cd, sizeof cd, "-C %s ", q);
    }
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "git %srev-parse HEAD 2>/dev/null </dev/null", cd);
    if (!run_command(cmd, p->git_rev, sizeof p->git_rev, NULL))
        return;
    char line[256];
    int any = 0;
    snprintf(cmd, sizeof cmd, "git %sstatus --porcelain 2>/dev/null </dev/null", cd);
    if (run_command(cmd, line, sizeof line, &any))
        p->git_dirty = any;
}

static void collect_cpu(sl_provenance *p)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        const char *v = strchr(line, ':');
        if (!v)
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        copy_str(p->cpu, sizeof p->cpu, v);
        size_t len = strlen(p->cpu);
        while (len > 0 && (p->cpu[len - 1] == '\n' || p->cpu[len - 1] == ' '))
            p->cpu[--len] = '\0';
        break;
    }
    fclose(f);
}

void sl_provenance_collect(sl_provenance *p, const char *dir)
{
    memset(p, 0, sizeof *p);
    p->git_dirty = -1;
    p->build_flags = SL_BUILD_FLAGS;

    struct timespec ts;
    struct tm tm;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0 && gmtime_r(&ts.tv_sec, &tm)) {
        char day[24];
        strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(p->started, sizeof p->started, "%s.%03dZ", day, (int)(ts.tv_nsec / 1000000));
    }
    if (gethostname(p->host, sizeof p->host - 1) != 0)
        p->host[0] = '\0';
    p->host[sizeof p->host - 1] = '\0';
    collect_cpu(p);
    collect_git(p, dir);
}

static const char *or_null(const char *s) { return s && s[0] ? s : NULL; }

void sl_provenance_fill_run(const sl_provenance *p, sl_store_run *run)
{
    if (!run->started)
        run->started = or_null(p->started);
    if (!run->git_rev)
        run->git_rev = or_null(p->git_rev);
    if (run->git_dirty == SL_STORE_NULL_INT && p->git_dirty >= 0)
        run->git_dirty = p->git_dirty;
    if (!run->host)
        run->host = or_null(p->host);
    if (!run->cpu)
        run->cpu = or_null(p->cpu);
    if (!run->gpu)
        run->gpu = or_null(p->gpu);
    if (!run->build_flags)
        run->build_flags = or_null(p->build_flags);
    if (!run->sparselab_version)
        run->sparselab_version = or_null(p->sparselab_version);
}
