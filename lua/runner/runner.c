/* runner.c — the sweep runner (DESIGN §9; contract in runner.h): worker
 * processes of a given program fed one point at a time over pipes, per-point
 * timeouts, crash isolation, SIGINT/SIGTERM, progress on stderr — on libuv,
 * which only this file includes.
 *
 * Handles: each run has a private loop. A worker slot owns four handles
 * (process, stdin pipe, stdout pipe, timer), all opened by worker_start and
 * all closed by worker_close once the process has exited AND its stdout has
 * reached EOF (the reply may still be in the pipe when the exit is reported);
 * the slot is free again when the fourth close callback has run, and only
 * then may a new worker start in it. The loop's own handles (two signals and
 * the tick timer) are closed when every slot is free and nothing is left to
 * run; the loop then ends, and is closed before sl_runner_run returns. */
#include "runner.h"

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#define RUNNER_PREFIX_LEN 4
#define RUNNER_MAX_LINE (16u << 20)
#define RUNNER_MAX_STARTUP_FAILURES 3
#define RUNNER_TICK_MS 200

typedef enum { WORKER_FREE, WORKER_STARTING, WORKER_IDLE, WORKER_BUSY, WORKER_CLOSING } sl_runner_worker_state;

typedef struct sl_runner sl_runner;

typedef struct sl_runner_worker {
    sl_runner *r;
    sl_runner_worker_state state;
    int open_handles;       /* of proc, in, out, timer: not yet closed */
    int exited, eof, in_closed, timed_out, killed_by_us;
    int64_t exit_status;
    int term_signal;
    int64_t point;          /* the point in flight (1-based), 0 when none */
    uint64_t started_ns;
    uv_process_t proc;
    uv_pipe_t in, out;      /* the worker's stdin and stdout */
    uv_timer_t timer;
    uv_write_t write_req;
    char *line;             /* the reply line being assembled */
    size_t len, cap;
    char rbuf[65536];
} sl_runner_worker;

struct sl_runner {
    const sl_runner_opts *o;
    uv_loop_t loop;
    uv_signal_t sig_int, sig_term;
    uv_timer_t tick;
    int main_closed;        /* signals and tick closed (the loop then ends) */
    int64_t next, n_done, n_failed;
    sl_runner_worker *w;
    int stopping, signal, startup_failures;
    sl_status status;       /* the first error, with its message in error */
    char error[512];
    int progress;           /* 0 off, 1 plain lines, 2 one updating line (TTY) */
    const char *label;
    uint64_t t0_ns, last_tick_ns, last_line_ns;
    int64_t last_decile, last_line_done;
};

static void runner_pump(sl_runner *r);
static void runner_stop(sl_runner *r);

static double since_s(uint64_t t0_ns) { return (double)(uv_hrtime() - t0_ns) / 1e9; }

static void runner_fail(sl_runner *r, sl_status st, const char *fmt, const char *a, const char *b)
{
    if (r->status == SL_OK) {
        r->status = st;
        snprintf(r->error, sizeof r->error, fmt, a, b);
    }
    runner_stop(r);
}

/* ---- progress ------------------------------------------------------------ */

static void format_eta(double s, char *out, size_t n)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(out, n, "%ld:%02ld", t / 60, t % 60);
}

static void progress_draw(sl_runner *r, int final)
{
    if (!r->progress)
        return;
    double el = since_s(r->t0_ns);
    double rate = el > 0 ? (double)r->n_done / el : 0;
    char eta[32] = "?";
    if (rate > 0)
        format_eta((double)(r->o->n_points - r->n_done) / rate, eta, sizeof eta);
    int pct = r->o->n_points ? (int)(100 * r->n_done / r->o->n_points) : 100;
    char failed[48] = "";
    if (r->n_failed)
        snprintf(failed, sizeof failed, ", %lld failed", (long long)r->n_failed);
    if (r->progress == 2) {
        char bar[25];
        int fill = (int)(24 * (r->o->n_points ? (double)r->n_done / (double)r->o->n_points : 1));
        for (int i = 0; i < 24; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[24] = '\0';
        fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %3d%%  %.1f/s  ETA %s%s%s", r->label, bar, (long long)r->n_done,
                (long long)r->o->n_points, pct, rate, eta, failed, final ? "\n" : "");
        fflush(stderr);
        return;
    }
    /* Plain lines: at each tenth of the way, and at least every 30 s. */
    int64_t decile = r->o->n_points ? 10 * r->n_done / r->o->n_points : 10;
    uint64_t now = uv_hrtime();
    if (final ? r->n_done == r->last_line_done
              : decile <= r->last_decile && now - r->last_line_ns < 30000000000ull)
        return;
    r->last_line_done = r->n_done;
    r->last_decile = decile;
    r->last_line_ns = now;
    fprintf(stderr, "%s: %lld/%lld (%d%%), %.1f points/s, ETA %s%s\n", r->label, (long long)r->n_done,
            (long long)r->o->n_points, pct, rate, eta, failed);
}

/* ---- results ---------------------------------------------------------- */

static void deliver(sl_runner_worker *w, const char *reply, size_t len, const char *err, int sig)
{
    sl_runner *r = w->r;
    int64_t i = w->point;
    w->point = 0;
    r->n_done++;
    int failed = err != NULL;
    if (r->status == SL_OK) {
        int rc = r->o->result(r->o->ud, i, reply, len, err, sig, since_s(w->started_ns));
        if (rc < 0)
            runner_fail(r, SL_EINTERRUPT, "stopped by the result callback%s%s", "", "");
        failed = failed || rc == 1;
    }
    if (failed)
        r->n_failed++;
    if (r->progress == 1)
        progress_draw(r, 0); /* the TTY line is redrawn by the tick */
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGPIPE: return "SIGPIPE";
    case SIGTRAP: return "SIGTRAP";
    case SIGSYS: return "SIGSYS";
    case SIGXCPU: return "SIGXCPU";
    default: return "signal";
    }
}

/* ---- one worker ---------------------------------------------------------- */

static void on_worker_close(uv_handle_t *h)
{
    sl_runner_worker *w = h->data;
    if (--w->open_handles == 0) {
        free(w->line);
        w->line = NULL;
        w->len = w->cap = 0;
        w->state = WORKER_FREE;
        runner_pump(w->r);
    }
}

static void worker_close_stdin(sl_runner_worker *w)
{
    if (!w->in_closed) {
        w->in_closed = 1;
        uv_close((uv_handle_t *)&w->in, on_worker_close);
    }
}

static void worker_close(sl_runner_worker *w)
{
    w->state = WORKER_CLOSING;
    worker_close_stdin(w);
    uv_close((uv_handle_t *)&w->out, on_worker_close);
    uv_close((uv_handle_t *)&w->timer, on_worker_close);
    uv_close((uv_handle_t *)&w->proc, on_worker_close);
}

/* Kills the worker's process group (it leads one: UV_PROCESS_DETACHED), so a
 * helper process a method started cannot keep the pipes open. libuv reaps a
 * worker and calls on_worker_exit in one go, so the group is still ours here. */
static void worker_kill(sl_runner_worker *w)
{
    if (!w->exited && kill(-w->proc.pid, SIGKILL) != 0)
        uv_process_kill(&w->proc, SIGKILL); /* ESRCH when it has just exited: nothing to do */
}

/* Called when the worker has both exited and closed its stdout. */
static void worker_finish(sl_runner_worker *w)
{
    sl_runner *r = w->r;
    if (!w->exited || !w->eof || w->state == WORKER_CLOSING)
        return;
    uv_timer_stop(&w->timer);
    if (w->state == WORKER_BUSY && !w->killed_by_us) {
        char err[160];
        int sig = w->term_signal;
        if (w->timed_out) {
            snprintf(err, sizeof err, "timeout after %g s (killed with SIGKILL)", r->o->timeout_s);
            sig = SIGKILL;
        } else if (sig) {
            snprintf(err, sizeof err, "killed by signal %d (%s)", sig, signal_name(sig));
        } else {
            snprintf(err, sizeof err, "worker exited with status %lld", (long long)w->exit_status);
        }
        deliver(w, NULL, 0, err, sig);
    } else if (w->state == WORKER_IDLE && !w->killed_by_us && !w->timed_out && (w->exit_status || w->term_signal)) {
        /* Its results stand, but something is wrong (a leak report, a crash at exit). */
        fprintf(stderr, "%s%s: warning: a worker ended with %s %d after its last point\n",
                r->progress == 2 ? "\r\033[K" : "", r->label, w->term_signal ? "signal" : "status",
                w->term_signal ? w->term_signal : (int)w->exit_status);
    } else if (w->state == WORKER_STARTING && !r->stopping) {
        if (++r->startup_failures >= RUNNER_MAX_STARTUP_FAILURES) {
            char why[64];
            if (w->term_signal)
                snprintf(why, sizeof why, "killed by signal %d", w->term_signal);
            else
                snprintf(why, sizeof why, "exit status %lld", (long long)w->exit_status);
            runner_fail(r, SL_EIO, "workers end before they start (%s); is '%s' a sparselab program?", why, r->o->argv[0]);
        }
    }
    worker_close(w);
}

static void on_worker_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
    sl_runner_worker *w = p->data;
    w->exited = 1;
    w->exit_status = exit_status;
    w->term_signal = term_signal;
    worker_finish(w);
}

static void on_timeout(uv_timer_t *t)
{
    sl_runner_worker *w = t->data;
    w->timed_out = 1;
    worker_kill(w);
}

static void on_write(uv_write_t *req, int status)
{
    (void)req;
    (void)status; /* a broken pipe shows up as the worker's exit */
}

static void worker_handle_line(sl_runner_worker *w, const char *s, size_t n)
{
    sl_runner *r = w->r;
    if (n < RUNNER_PREFIX_LEN || memcmp(s, SL_RUNNER_PREFIX, RUNNER_PREFIX_LEN) != 0) {
        /* Something the method printed: pass it on without breaking the bar. */
        fprintf(stderr, "%s%.*s\n", r->progress == 2 ? "\r\033[K" : "", (int)n, s);
        return;
    }
    s += RUNNER_PREFIX_LEN;
    n -= RUNNER_PREFIX_LEN;
    if (w->state == WORKER_STARTING) {
        if (n != strlen(SL_RUNNER_HELLO) || memcmp(s, SL_RUNNER_HELLO, n) != 0) {
            runner_fail(r, SL_EFORMAT, "worker '%s' speaks another protocol (expected '%s')", r->o->argv[0], SL_RUNNER_HELLO);
            return;
        }
        w->state = WORKER_IDLE;
        r->startup_failures = 0;
        runner_pump(r);
    } else if (w->state == WORKER_BUSY) {
        uv_timer_stop(&w->timer);
        w->state = WORKER_IDLE;
        /* A reply that beat the timeout's kill stands. */
        deliver(w, s, n, NULL, 0);
        runner_pump(r);
    } else if (w->state == WORKER_IDLE) {
        runner_fail(r, SL_EFORMAT, "worker '%s' replied with no point in flight%s", r->o->argv[0], "");
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    sl_runner_worker *w = h->data;
    *buf = uv_buf_init(w->rbuf, sizeof w->rbuf);
}

static int line_append(sl_runner_worker *w, const char *s, size_t n)
{
    if (w->len + n > RUNNER_MAX_LINE)
        return -1;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 4096;
        while (cap < w->len + n)
            cap *= 2;
        char *p = realloc(w->line, cap);
        if (!p)
            return -1;
        w->line = p;
        w->cap = cap;
    }
    memcpy(w->line + w->len, s, n);
    w->len += n;
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sl_runner_worker *w = s->data;
    if (nread < 0) {
        uv_read_stop(s);
        w->eof = 1;
        worker_finish(w);
        return;
    }
    const char *p = buf->base, *end = buf->base + nread;
    while (p < end && w->state != WORKER_CLOSING) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (line_append(w, p, (size_t)((nl ? nl : end) - p)) != 0) {
            runner_fail(w->r, SL_EFORMAT, "worker '%s' wrote a line longer than 16 MiB (or memory ran out)%s", w->r->o->argv[0], "");
            return;
        }
        if (!nl)
            break;
        w->len = w->len > 0 && w->line[w->len - 1] == '\r' ? w->len - 1 : w->len;
        size_t n = w->len;
        w->len = 0;
        worker_handle_line(w, w->line, n);
        p = nl + 1;
    }
}

static void worker_start(sl_runner *r, sl_runner_worker *w)
{
    memset(w, 0, offsetof(sl_runner_worker, rbuf));
    w->r = r;
    w->state = WORKER_STARTING;
    uv_pipe_init(&r->loop, &w->in, 0);
    uv_pipe_init(&r->loop, &w->out, 0);
    uv_timer_init(&r->loop, &w->timer);
    w->in.data = w->out.data = w->timer.data = w->proc.data = w;
    w->open_handles = 4;
    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&w->in;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&w->out;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    uv_process_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.exit_cb = on_worker_exit;
    opt.file = r->o->argv[0];
    opt.args = r->o->argv;
    opt.stdio = stdio;
    opt.stdio_count = 3;
    /* A session of its own: Ctrl-C at the terminal reaches only the parent,
     * which decides what happens to the points in flight. */
    opt.flags = UV_PROCESS_DETACHED;
    int rc = uv_spawn(&r->loop, &w->proc, &opt);
    if (rc != 0) {
        w->exited = w->eof = 1;
        worker_close(w);
        runner_fail(r, SL_EIO, "cannot start a worker '%s': %s", r->o->argv[0], uv_strerror(rc));
        return;
    }
    rc = uv_read_start((uv_stream_t *)&w->out, on_alloc, on_read);
    if (rc != 0) {
        w->eof = 1;
        worker_kill(w);
        runner_fail(r, SL_EIO, "cannot read from a worker '%s': %s", r->o->argv[0], uv_strerror(rc));
    }
}

static int worker_dispatch(sl_runner *r, sl_runner_worker *w)
{
    if (r->next > r->o->n_points)
        return 0;
    int64_t i = r->next++;
    size_t n = 0;
    const char *s = r->o->point(r->o->ud, i, &n);
    if (!s || memchr(s, '\n', n)) {
        char num[32];
        snprintf(num, sizeof num, "%lld", (long long)i);
        runner_fail(r, SL_EARG, "the text of point %s is %s", num, s ? "more than one line" : "missing");
        return 0;
    }
    uv_buf_t bufs[2] = {uv_buf_init((char *)s, (unsigned)n), uv_buf_init((char *)"\n", 1)};
    w->point = i;
    w->state = WORKER_BUSY;
    w->started_ns = uv_hrtime();
    if (uv_write(&w->write_req, (uv_stream_t *)&w->in, bufs, 2, on_write) != 0)
        worker_kill(w); /* recorded as the worker's death mid-point */
    else if (r->o->timeout_s > 0)
        uv_timer_start(&w->timer, on_timeout, (uint64_t)(r->o->timeout_s * 1000 + 0.5), 0);
    return 1;
}

/* ---- the runner ---------------------------------------------------------- */

static void on_main_close(uv_handle_t *h) { (void)h; }

/* Starts, feeds and retires workers after any change of state. */
static void runner_pump(sl_runner *r)
{
    int starting = 0, live = 0;
    for (int k = 0; k < r->o->n_workers; k++) {
        sl_runner_worker *w = &r->w[k];
        /* A worker killed for a timeout gets nothing more, even if its reply beat the kill. */
        if (w->state == WORKER_IDLE && (r->stopping || w->timed_out || !worker_dispatch(r, w)))
            worker_close_stdin(w); /* nothing more: the worker exits */
        if (w->state == WORKER_STARTING)
            starting++;
    }
    int64_t unassigned = r->o->n_points - r->next + 1;
    for (int k = 0; k < r->o->n_workers; k++) {
        sl_runner_worker *w = &r->w[k];
        if (w->state == WORKER_FREE && !r->stopping && unassigned > starting) {
            worker_start(r, w);
            starting++;
        }
        if (w->state != WORKER_FREE)
            live++;
    }
    if (live == 0 && !r->main_closed) {
        r->main_closed = 1;
        uv_close((uv_handle_t *)&r->sig_int, on_main_close);
        uv_close((uv_handle_t *)&r->sig_term, on_main_close);
        uv_close((uv_handle_t *)&r->tick, on_main_close);
    }
}

/* Hands out nothing more; points in flight are abandoned (not reported). */
static void runner_stop(sl_runner *r)
{
    if (r->stopping)
        return;
    r->stopping = 1;
    for (int k = 0; k < r->o->n_workers; k++) {
        sl_runner_worker *w = &r->w[k];
        if (w->state == WORKER_BUSY || w->state == WORKER_STARTING) {
            w->killed_by_us = 1;
            worker_kill(w);
        } else if (w->state == WORKER_IDLE) {
            worker_close_stdin(w);
        }
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    sl_runner *r = h->data;
    if (!r->signal)
        r->signal = signum;
    runner_stop(r);
}

static void on_tick(uv_timer_t *t)
{
    sl_runner *r = t->data;
    progress_draw(r, 0); /* plain lines limit themselves to each tenth and every 30 s */
    if (r->o->tick && !r->stopping && uv_hrtime() - r->last_tick_ns >= 1000000000ull) {
        r->last_tick_ns = uv_hrtime();
        if (r->o->tick(r->o->ud) < 0)
            runner_fail(r, SL_EINTERRUPT, "stopped by the tick callback%s%s", "", "");
    }
}

static void save_signal(int sig, struct sigaction *old) { sigaction(sig, NULL, old); }
static void restore_signal(int sig, const struct sigaction *old) { sigaction(sig, old, NULL); }

static sl_status runner_check(const sl_runner_opts *o, char *err, size_t err_n)
{
    const char *why = NULL;
    if (!o || !o->argv || !o->argv[0])
        why = "no worker command";
    else if (o->n_workers < 1 || o->n_workers > 1024)
        why = "n_workers must be in [1, 1024]";
    else if (!(o->timeout_s >= 0 && o->timeout_s < 1e9))
        why = "timeout_s must be seconds >= 0";
    else if (o->n_points < 0)
        why = "n_points must be >= 0";
    else if (!o->point || !o->result)
        why = "the point and result callbacks are required";
    else if (o->progress < -1 || o->progress > 2)
        why = "progress must be -1, 0, 1 or 2";
    if (why && err && err_n)
        snprintf(err, err_n, "sl_runner_run: %s", why);
    return why ? SL_EARG : SL_OK;
}

sl_status sl_runner_run(const sl_runner_opts *opts, sl_runner_summary *sum, char *err, size_t err_n)
{
    if (err && err_n)
        err[0] = '\0';
    if (sum)
        memset(sum, 0, sizeof *sum);
    sl_status st = runner_check(opts, err, err_n);
    if (st != SL_OK)
        return st;
    sl_runner *r = calloc(1, sizeof *r);
    sl_runner_worker *w = calloc((size_t)opts->n_workers, sizeof *w);
    if (!r || !w || uv_loop_init(&r->loop) != 0) {
        free(r);
        free(w);
        if (err && err_n)
            snprintf(err, err_n, "sl_runner_run: out of memory");
        return SL_ENOMEM;
    }
    r->o = opts;
    r->w = w;
    r->label = opts->label ? opts->label : "run";
    r->progress = opts->progress >= 0 ? opts->progress : isatty(STDERR_FILENO) ? 2 : 1;
    r->next = 1;
    /* Writing to a worker that just died must be an error, not our death. */
    struct sigaction old_int, old_term, old_pipe, ign;
    save_signal(SIGINT, &old_int);
    save_signal(SIGTERM, &old_term);
    save_signal(SIGPIPE, &old_pipe);
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, NULL);

    uv_signal_init(&r->loop, &r->sig_int);
    uv_signal_init(&r->loop, &r->sig_term);
    uv_timer_init(&r->loop, &r->tick);
    r->sig_int.data = r->sig_term.data = r->tick.data = r;
    uv_signal_start(&r->sig_int, on_signal, SIGINT);
    uv_signal_start(&r->sig_term, on_signal, SIGTERM);
    uv_timer_start(&r->tick, on_tick, RUNNER_TICK_MS, RUNNER_TICK_MS);
    r->t0_ns = r->last_tick_ns = r->last_line_ns = uv_hrtime();

    runner_pump(r);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&r->loop);

    /* libuv leaves SIGINT/SIGTERM at SIG_DFL when their last handle closes. */
    restore_signal(SIGINT, &old_int);
    restore_signal(SIGTERM, &old_term);
    restore_signal(SIGPIPE, &old_pipe);
    if (r->status == SL_OK && rc != 0) {
        r->status = SL_EINTERNAL;
        snprintf(r->error, sizeof r->error, "the event loop still holds handles (%s)", uv_strerror(rc));
    }
    if (opts->n_points > 0 && r->status == SL_OK)
        progress_draw(r, 1);
    else if (r->progress == 2)
        fprintf(stderr, "\r\033[K");
    if (sum) {
        sum->done = r->n_done;
        sum->failed = r->n_failed;
        sum->signal = r->signal;
        sum->seconds = since_s(r->t0_ns);
    }
    st = r->status;
    if (st != SL_OK && err && err_n)
        snprintf(err, err_n, "%s", r->error);
    free(w);
    free(r);
    return st;
}
