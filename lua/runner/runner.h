/* runner.h — the sweep runner (runner.c, on libuv): runs points 1..n_points,
 * one at a time per worker, in n_workers worker processes over pipes; kills a
 * point past its timeout; turns a worker that dies mid-point (a signal, an
 * exit) into a failed point and starts a new worker; on SIGINT/SIGTERM stops
 * handing out points, kills the workers and returns; draws progress on stderr.
 * Layer: lua/runner/, below the bindings (lua/bind/l_runner.c includes this
 * header; nothing here includes lua/bind or lua/prog).
 * It knows nothing of Lua or the store: the caller encodes points, decodes
 * replies and writes results, so the calling process stays the single writer.
 *
 * Worker protocol (lines): a worker first writes SL_RUNNER_PREFIX
 * SL_RUNNER_HELLO; then, for each point line it reads on stdin, exactly one
 * SL_RUNNER_PREFIX reply line on stdout. Lines without the prefix (a method
 * that prints) are relayed to stderr. A worker exits when its stdin closes.
 * Workers lead a process group of their own (a terminal's Ctrl-C reaches only
 * the parent); a kill (timeout, stop) kills the whole group.
 */
#ifndef SL_RUNNER_H
#define SL_RUNNER_H

#include "sparselab.h"

#include <stddef.h>
#include <stdint.h>

#define SL_RUNNER_PREFIX "\001sl:"
#define SL_RUNNER_HELLO "hello 1"

typedef struct sl_runner_opts {
    char **argv;           /* the worker command: program, args..., NULL */
    int n_workers;         /* 1..1024 (more than n_points is fine) */
    double timeout_s;      /* per point; 0: none */
    int64_t n_points;      /* points are 1..n_points */
    int progress;          /* 0 off, 1 plain lines (each tenth, or every 30 s), 2 one updating
                              line; -1: 2 when stderr is a TTY, else 1 */
    const char *label;     /* progress prefix ("sweep"); NULL: "run" */
    void *ud;              /* passed to the callbacks */
    /* The text of point i, one line without its newline; it must stay valid
     * until point i's result has been reported. */
    const char *(*point)(void *ud, int64_t i, size_t *len);
    /* Point i's outcome, once per point that finishes: reply (len bytes, the
     * worker's line without the prefix; NULL on failure) or err ("killed by
     * signal 11 (SIGSEGV)", "timeout after 2 s (killed with SIGKILL)",
     * "worker exited with status 3") and sig (the signal, 0 for an exit).
     * Returns 1 when the point counts as failed, 0 when it succeeded, -1 to
     * stop the run (sl_runner_run then returns SL_EINTERRUPT). Points in
     * flight when the run stops are abandoned: never reported. */
    int (*result)(void *ud, int64_t i, const char *reply, size_t len, const char *err, int sig, double seconds);
    /* About once a second while points run (may be NULL); -1 stops the run. */
    int (*tick)(void *ud);
} sl_runner_opts;

typedef struct sl_runner_summary {
    int64_t done;          /* points reported */
    int64_t failed;        /* of which failed */
    int signal;            /* SIGINT/SIGTERM that stopped the run, else 0 */
    double seconds;
} sl_runner_summary;

/* Runs the points; returns when every point is reported, or after a signal
 * (SL_OK, sum->signal set), or after a callback stopped it (SL_EINTERRUPT).
 * Errors (err receives one line, "" on success; every process and handle is
 * gone before the call returns either way):
 *   SL_EARG     bad options;
 *   SL_ENOMEM   out of memory;
 *   SL_EIO      a worker cannot be started, or three in a row end before
 *               their hello (the program is not a worker);
 *   SL_EFORMAT  a worker breaks the protocol (another hello, a reply with no
 *               point in flight, a line over 16 MiB);
 *   SL_EINTERNAL the event loop fails.
 * The caller's dispositions of SIGINT, SIGTERM and SIGPIPE (ignored during
 * the run) are restored on return. sum may be NULL. */
sl_status sl_runner_run(const sl_runner_opts *opts, sl_runner_summary *sum, char *err, size_t err_n);

#endif
