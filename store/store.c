/* store.c — the results store over SQLite: opening with migrations and views,
 * runs, results with their metrics, transactions, and row-callback queries. */
#include "store.h"

#include <sqlite3.h>

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define STORE_ERR_BYTES 640
#define MAX_MIGRATIONS 512
/* "SLAB": set by migration 001, so a database of another program that
 * happens to use user_version is told apart from ours. */
#define STORE_APPLICATION_ID 0x534C4142
#define NOW_SQL "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

struct sl_store {
    sqlite3 *db;
    char *path;
    /* Statements prepared once and reused (reset after every use, so none
     * holds a read transaction open between calls). */
    sqlite3_stmt *ins_run, *ins_result, *ins_metric;
    /* read-only open: the header read failed because the WAL index (-shm)
     * cannot be created (a directory the user cannot write) */
    int shm_blocked;
    char err[STORE_ERR_BYTES];
};

/* ---- messages --------------------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static sl_store_status fail(sl_store *st, sl_store_status s, const char *fmt, ...)
{
    /* Messages quote bytes of the file (SQLite's "malformed database schema
     * (name)", paths): whatever is not printable ASCII becomes \xNN, so a
     * corrupted file cannot put control sequences or newlines on a terminal. */
    char raw[STORE_ERR_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    size_t j = 0;
    for (const unsigned char *c = (const unsigned char *)raw; *c && j + 5 < sizeof st->err; c++) {
        if (*c >= 0x20 && *c < 0x7f)
            st->err[j++] = (char)*c;
        else
            j += (size_t)snprintf(st->err + j, sizeof st->err - j, "\\x%02x", *c);
    }
    st->err[j] = '\0';
    return s;
}

/* The start of a statement on one line (whitespace runs collapsed), for
 * messages: enough to recognise it, never the whole sweep of a long view. */
static void sql_excerpt(const char *sql, char *out, size_t n)
{
    const size_t limit = n < 100 ? n : 100;
    size_t j = 0;
    int space = 0;
    const char *p = sql ? sql : "";
    for (; *p && j + 6 < limit; p++) {
        if (isspace((unsigned char)*p)) {
            space = j > 0;
            continue;
        }
        if (space)
            out[j++] = ' ';
        space = 0;
        out[j++] = *p;
    }
    while (*p && isspace((unsigned char)*p))
        p++;
    if (*p) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = '\0';
}

/* SL_STORE_ESQLITE with SQLite's message and the statement that failed. */
static sl_store_status db_fail(sl_store *st, const char *fn, const char *sql)
{
    char ex[128];
    sql_excerpt(sql, ex, sizeof ex);
    return fail(st, SL_STORE_ESQLITE, "%s: %s (in: %s)", fn, sqlite3_errmsg(st->db), ex);
}

const char *sl_store_error(const sl_store *st) { return st ? st->err : "no store"; }

const char *sl_store_status_name(sl_store_status s)
{
    static const char *const names[] = {"SL_STORE_OK", "SL_STORE_EARG", "SL_STORE_EIO", "SL_STORE_ENOMEM",
                                        "SL_STORE_ESQLITE", "SL_STORE_EINTERNAL"};
    if ((unsigned)s >= sizeof names / sizeof names[0])
        return "SL_STORE_E?";
    return names[s];
}

const char *sl_store_path(const sl_store *st) { return st ? st->path : ""; }

/* ---- embedded migrations ------------------------------------------------------ */

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* 1 when path's directory is "migrations" (".../migrations/NNN_x.sql"). */
static int in_migrations_dir(const char *path)
{
    const char *b = base_name(path);
    if (b == path)
        return 0;
    const char *end = b - 1, *start = end;
    while (start > path && start[-1] != '/')
        start--;
    return end - start == 10 && memcmp(start, "migrations", 10) == 0;
}

/* Fills out[v - 1] with migration v for v = 1..N and returns N; -1 with a
 * reason in why when the embedded files are not numbered 1..N exactly. */
static int migrations_list(const sl_embedded_file **out, int max, char *why, size_t why_n)
{
    int n = 0;
    for (int i = 0; i < max; i++)
        out[i] = NULL;
    for (int i = 0; i < sl_store_sql_n_files; i++) {
        const sl_embedded_file *f = &sl_store_sql_files[i];
        const char *b = base_name(f->path);
        size_t len = strlen(b);
        if (!in_migrations_dir(f->path) || len < 5 || strcmp(b + len - 4, ".sql") != 0)
            continue;
        char *end;
        long v = strtol(b, &end, 10);
        if (!isdigit((unsigned char)b[0]) || *end != '_' || v < 1 || v > max) {
            snprintf(why, why_n, "migration file name '%s' is not NNN_name.sql with 1 <= NNN <= %d", b, max);
            return -1;
        }
        if (out[v - 1]) {
            snprintf(why, why_n, "two migrations are numbered %ld ('%s', '%s')", v, base_name(out[v - 1]->path), b);
            return -1;
        }
        out[v - 1] = f;
        if (v > n)
            n = (int)v;
    }
    for (int v = 1; v <= n; v++)
        if (!out[v - 1]) {
            snprintf(why, why_n, "migration %03d is missing (the newest is %03d)", v, n);
            return -1;
        }
    return n;
}

int sl_store_latest_version(void)
{
    const sl_embedded_file *m[MAX_MIGRATIONS];
    char why[256];
    return migrations_list(m, MAX_MIGRATIONS, why, sizeof why);
}

static const sl_embedded_file *embedded_views(void)
{
    for (int i = 0; i < sl_store_sql_n_files; i++)
        if (!in_migrations_dir(sl_store_sql_files[i].path) &&
            strcmp(base_name(sl_store_sql_files[i].path), "views.sql") == 0)
            return &sl_store_sql_files[i];
    return NULL;
}

/* ---- small statement helpers ---------------------------------------------------- */

/* Runs a statement that returns one integer (a PRAGMA, a count). */
static int query_int(sl_store *st, const char *sql, int64_t *v)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            *v = sqlite3_column_int64(s, 0);
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            *v = 0;
            rc = SQLITE_OK;
        }
    }
    /* Keep the step's error for sqlite3_errmsg: finalize returns it again. */
    sqlite3_finalize(s);
    return rc;
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

static void bind_int(sqlite3_stmt *s, int i, int64_t v)
{
    if (v == SL_STORE_NULL_INT)
        sqlite3_bind_null(s, i);
    else
        sqlite3_bind_int64(s, i, v);
}

/* NaN goes in as NULL: SQLite has no NaN and would do the same silently. */
static void bind_real(sqlite3_stmt *s, int i, double v)
{
    if (isnan(v))
        sqlite3_bind_null(s, i);
    else
        sqlite3_bind_double(s, i, v);
}

static sl_store_status prepare_cached(sl_store *st, sqlite3_stmt **slot, const char *sql, const char *fn)
{
    if (*slot)
        return SL_STORE_OK;
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL) != SQLITE_OK) {
        *slot = NULL;
        return db_fail(st, fn, sql);
    }
    return SL_STORE_OK;
}

/* Steps a cached insert once, then resets it and clears its bindings. */
static int step_reset(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc;
}

/* ---- open / close ---------------------------------------------------------------- */

static int is_readonly(int rc) { return (rc & 0xff) == SQLITE_READONLY; }

static sl_store_status apply_migrations(sl_store *st, const sl_embedded_file **mig, int n_mig)
{
    static const char fn[] = "sl_store_open";
    for (;;) {
        /* Reread the version under the write lock: another process may have
         * migrated between our first look and now. */
        if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            return fail(st, SL_STORE_ESQLITE, "%s: '%s': cannot take the write lock to migrate: %s", fn, st->path,
                        sqlite3_errmsg(st->db));
        int64_t v = 0;
        if (query_int(st, "PRAGMA user_version", &v) != SQLITE_OK) {
            sl_store_status s = db_fail(st, fn, "PRAGMA user_version");
            sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
            return s;
        }
        if (v >= n_mig) {
            sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL);
            return SL_STORE_OK;
        }
        const sl_embedded_file *m = mig[v];
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", (int)v + 1);
        if (sqlite3_exec(st->db, m->text, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(st->db, pragma, NULL, NULL, NULL) != SQLITE_OK) {
            fail(st, SL_STORE_ESQLITE, "%s: '%s': migration %s failed: %s", fn, st->path, base_name(m->path),
                 sqlite3_errmsg(st->db));
            sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
            return SL_STORE_ESQLITE;
        }
        if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            fail(st, SL_STORE_ESQLITE, "%s: '%s': committing migration %s failed: %s", fn, st->path,
                 base_name(m->path), sqlite3_errmsg(st->db));
            sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
            return SL_STORE_ESQLITE;
        }
    }
}

/* Recreates the views when views.sql differs from the one that made them
 * (its hash is kept in meta), so opening an up-to-date store writes nothing
 * and read-only databases stay readable. */
static sl_store_status refresh_views(sl_store *st)
{
    static const char fn[] = "sl_store_open";
    const sl_embedded_file *views = embedded_views();
    if (!views)
        return fail(st, SL_STORE_EINTERNAL, "%s: views.sql is not among the embedded SQL files", fn);
    char want[65];
    sl_sha256_hex(views->text, views->len, want);

    static const char get_sql[] = "SELECT value FROM meta WHERE key = 'views_sha256'";
    sqlite3_stmt *s = NULL;
    int same = 0;
    if (sqlite3_prepare_v2(st->db, get_sql, -1, &s, NULL) != SQLITE_OK)
        return db_fail(st, fn, get_sql);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *have = sqlite3_column_text(s, 0);
        same = have && strcmp((const char *)have, want) == 0;
    } else if (rc != SQLITE_DONE) {
        sl_store_status e = db_fail(st, fn, get_sql);
        sqlite3_finalize(s);
        return e;
    }
    sqlite3_finalize(s);
    if (same)
        return SL_STORE_OK;

    rc = sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (is_readonly(rc))
        return SL_STORE_OK; /* stale views in a read-only file still answer queries */
    if (rc != SQLITE_OK)
        return fail(st, SL_STORE_ESQLITE, "%s: '%s': cannot take the write lock to refresh views: %s", fn, st->path,
                    sqlite3_errmsg(st->db));
    char put_sql[160];
    snprintf(put_sql, sizeof put_sql, "INSERT OR REPLACE INTO meta(key, value) VALUES ('views_sha256', '%s')", want);
    if (sqlite3_exec(st->db, views->text, NULL, NULL, NULL) != SQLITE_OK) {
        fail(st, SL_STORE_ESQLITE, "%s: '%s': views.sql failed: %s", fn, st->path, sqlite3_errmsg(st->db));
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
        return SL_STORE_ESQLITE;
    }
    if (sqlite3_exec(st->db, put_sql, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        sl_store_status e = db_fail(st, fn, put_sql);
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
        return e;
    }
    return SL_STORE_OK;
}

/* Everything sl_store_open does after the file is open; messages go to st->err.
 * read_only: checks only (no WAL switch, migration or view refresh). */
static sl_store_status open_checks(sl_store *st, int read_only)
{
    static const char fn[] = "sl_store_open";
    const sl_embedded_file *mig[MAX_MIGRATIONS];
    char why[256];
    int n_mig = migrations_list(mig, MAX_MIGRATIONS, why, sizeof why);
    if (n_mig < 0)
        return fail(st, SL_STORE_EINTERNAL, "%s: embedded migrations: %s", fn, why);

    sqlite3_busy_timeout(st->db, 5000);
    /* The first statement reads the header: this is where a file that is
     * not a database shows itself. */
    int64_t app_id = 0, version = 0, n_objects = 0;
    /* One read transaction, so the three answers come from one snapshot
     * even while another process is migrating the same file. */
    int rc = sqlite3_exec(st->db, "BEGIN", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = query_int(st, "PRAGMA application_id", &app_id);
    if (rc == SQLITE_OK)
        rc = query_int(st, "PRAGMA user_version", &version);
    if (rc == SQLITE_OK)
        rc = query_int(st, "SELECT count(*) FROM sqlite_master", &n_objects);
    if (rc != SQLITE_OK) {
        sl_store_status e;
        st->shm_blocked = read_only && ((rc & 0xff) == SQLITE_READONLY || (rc & 0xff) == SQLITE_CANTOPEN);
        if ((rc & 0xff) == SQLITE_NOTADB)
            e = fail(st, SL_STORE_ESQLITE, "%s: '%s' is not a SQLite database (%s)", fn, st->path, sqlite3_errmsg(st->db));
        else
            e = fail(st, SL_STORE_ESQLITE, "%s: cannot read '%s': %s", fn, st->path, sqlite3_errmsg(st->db));
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
        return e;
    }
    sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL);

    if (app_id != 0 && app_id != STORE_APPLICATION_ID)
        return fail(st, SL_STORE_ESQLITE, "%s: '%s' is a SQLite database of another program (application_id 0x%08llx), "
                    "not a sparselab store", fn, st->path, (unsigned long long)(uint32_t)app_id);
    if (version > n_mig)
        return fail(st, SL_STORE_ESQLITE, "%s: '%s' has schema version %lld, newer than this build knows (%d); "
                    "open it with a newer sparselab", fn, st->path, (long long)version, n_mig);
    if ((version == 0 && n_objects > 0) || (version > 0 && app_id == 0))
        return fail(st, SL_STORE_ESQLITE, "%s: '%s' is a SQLite database but not a sparselab store "
                    "(user_version %lld, %lld schema objects, no sparselab application_id)",
                    fn, st->path, (long long)version, (long long)n_objects);

    if (read_only) {
        if (version < n_mig)
            return fail(st, SL_STORE_ESQLITE, "%s: '%s' has schema version %lld, older than this build's %d, and is "
                        "opened read-only: open it writable once to migrate it", fn, st->path, (long long)version, n_mig);
        return SL_STORE_OK; /* views as the file has them */
    }
    /* WAL lets readers work while the sweep writes. It is a property of the
     * file, so a read-only file keeps whatever mode it has. */
    rc = sqlite3_exec(st->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL);
    /* Changing the journal mode of a new file takes a lock that the busy
     * timeout does not wait for: two processes opening one new database at
     * once (two sweeps) retry for up to 5 s, as other statements wait. */
    for (int tries = 0; (rc & 0xff) == SQLITE_BUSY && tries < 250; tries++) {
        sqlite3_sleep(20);
        rc = sqlite3_exec(st->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL);
    }
    if (rc != SQLITE_OK && !is_readonly(rc))
        return db_fail(st, fn, "PRAGMA journal_mode = WAL");
    if (sqlite3_exec(st->db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(st, fn, "PRAGMA foreign_keys = ON");

    if (version < n_mig) {
        sl_store_status s = apply_migrations(st, mig, n_mig);
        if (s != SL_STORE_OK)
            return s;
    }
    return refresh_views(st);
}

static sl_store_status store_open(const char *path, int read_only, sl_store **out, char *err, size_t err_n)
{
    static const char fn[] = "sl_store_open";
    *out = NULL;
    if (err && err_n)
        err[0] = '\0';
    if (!path || !path[0]) {
        if (err && err_n)
            snprintf(err, err_n, "%s: no path given", fn);
        return SL_STORE_EARG;
    }
    sl_store *st = calloc(1, sizeof *st);
    char *copy = malloc(strlen(path) + 1);
    if (!st || !copy) {
        free(st);
        free(copy);
        if (err && err_n)
            snprintf(err, err_n, "%s: out of memory", fn);
        return SL_STORE_ENOMEM;
    }
    strcpy(copy, path);
    st->path = copy;

    sl_store_status s = SL_STORE_OK;
    int rc = sqlite3_open_v2(path, &st->db, read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                             NULL);
    if (rc != SQLITE_OK) {
        s = (rc & 0xff) == SQLITE_CANTOPEN ? SL_STORE_EIO : rc == SQLITE_NOMEM ? SL_STORE_ENOMEM : SL_STORE_ESQLITE;
        fail(st, s, "%s: cannot open '%s': %s", fn, path, st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
    } else {
        s = open_checks(st, read_only);
    }
    if (s != SL_STORE_OK && st->shm_blocked) {
        /* A WAL store in a directory the user cannot write: SQLite can read it
         * only as immutable. Safe when no -wal file exists (every commit is in
         * the main file, and a writer would have had to create one). */
        char *wal = malloc(strlen(path) + 5), *uri = malloc(3 * strlen(path) + 32);
        struct stat sb;
        if (wal && uri) {
            sprintf(wal, "%s-wal", path);
            if (stat(wal, &sb) != 0) {
                char *u = uri + sprintf(uri, "file:");
                for (const unsigned char *c = (const unsigned char *)path; *c; c++)
                    u += isalnum(*c) || strchr("/._-~", *c) ? sprintf(u, "%c", *c) : sprintf(u, "%%%02X", *c);
                strcpy(u, "?immutable=1");
                sqlite3_close(st->db);
                st->db = NULL;
                st->shm_blocked = 0;
                rc = sqlite3_open_v2(uri, &st->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
                s = rc == SQLITE_OK ? open_checks(st, 1) : SL_STORE_ESQLITE;
                if (rc != SQLITE_OK)
                    fail(st, s, "%s: cannot open '%s': %s", fn, path, st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
            }
        }
        free(wal);
        free(uri);
    }
    if (s != SL_STORE_OK) {
        if (err && err_n)
            snprintf(err, err_n, "%s", st->err);
        sl_store_close(st);
        return s;
    }
    st->err[0] = '\0';
    *out = st;
    return SL_STORE_OK;
}

sl_store_status sl_store_open(const char *path, sl_store **out, char *err, size_t err_n)
{
    return store_open(path, 0, out, err, err_n);
}

sl_store_status sl_store_open_readonly(const char *path, sl_store **out, char *err, size_t err_n)
{
    return store_open(path, 1, out, err, err_n);
}

void sl_store_close(sl_store *st)
{
    if (!st)
        return;
    sqlite3_finalize(st->ins_run);
    sqlite3_finalize(st->ins_result);
    sqlite3_finalize(st->ins_metric);
    if (st->db) {
        /* A statement left open (a caller's bug) would keep the database
         * busy; finalise what remains so the close always succeeds. */
        sqlite3_stmt *s;
        while ((s = sqlite3_next_stmt(st->db, NULL)) != NULL)
            sqlite3_finalize(s);
        sqlite3_close(st->db);
    }
    free(st->path);
    free(st);
}

int sl_store_user_version(sl_store *st)
{
    int64_t v = 0;
    if (query_int(st, "PRAGMA user_version", &v) != SQLITE_OK) {
        db_fail(st, "sl_store_user_version", "PRAGMA user_version");
        return -1;
    }
    return (int)v;
}

/* ---- runs ----------------------------------------------------------------------- */

void sl_store_run_init(sl_store_run *run)
{
    memset(run, 0, sizeof *run);
    run->git_dirty = SL_STORE_NULL_INT;
    run->seed = SL_STORE_NULL_INT;
}

sl_store_status sl_store_run_begin(sl_store *st, const sl_store_run *run, int64_t *run_id)
{
    static const char fn[] = "sl_store_run_begin";
    static const char sql[] =
        "INSERT INTO run (started, status, script, script_sha256, argv, git_rev, git_dirty, host, cpu, gpu, "
        "build_flags, seed, config_json, sparselab_version) "
        "VALUES (coalesce(?1, " NOW_SQL "), 'running', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
    if (run->git_dirty != SL_STORE_NULL_INT && run->git_dirty != 0 && run->git_dirty != 1)
        return fail(st, SL_STORE_EARG, "%s: git_dirty must be 0, 1 or SL_STORE_NULL_INT, got %lld", fn,
                    (long long)run->git_dirty);
    sl_store_status s = prepare_cached(st, &st->ins_run, sql, fn);
    if (s != SL_STORE_OK)
        return s;
    sqlite3_stmt *q = st->ins_run;
    bind_text(q, 1, run->started);
    bind_text(q, 2, run->script);
    bind_text(q, 3, run->script_sha256);
    bind_text(q, 4, run->argv);
    bind_text(q, 5, run->git_rev);
    bind_int(q, 6, run->git_dirty);
    bind_text(q, 7, run->host);
    bind_text(q, 8, run->cpu);
    bind_text(q, 9, run->gpu);
    bind_text(q, 10, run->build_flags);
    bind_int(q, 11, run->seed);
    bind_text(q, 12, run->config_json);
    bind_text(q, 13, run->sparselab_version);
    if (step_reset(q) != SQLITE_DONE)
        return db_fail(st, fn, sql);
    if (run_id)
        *run_id = sqlite3_last_insert_rowid(st->db);
    return SL_STORE_OK;
}

sl_store_status sl_store_run_finish(sl_store *st, int64_t run_id, const char *status)
{
    static const char fn[] = "sl_store_run_finish";
    static const char sql[] = "UPDATE run SET status = ?1, finished = " NOW_SQL " WHERE id = ?2";
    if (!status || (strcmp(status, "ok") != 0 && strcmp(status, "failed") != 0 && strcmp(status, "interrupted") != 0))
        return fail(st, SL_STORE_EARG, "%s: status must be 'ok', 'failed' or 'interrupted', got '%s'", fn,
                    status ? status : "(null)");
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(st->db, sql, -1, &q, NULL) != SQLITE_OK)
        return db_fail(st, fn, sql);
    sqlite3_bind_text(q, 1, status, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(q, 2, run_id);
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE)
        return db_fail(st, fn, sql);
    if (sqlite3_changes(st->db) == 0)
        return fail(st, SL_STORE_EARG, "%s: there is no run %lld", fn, (long long)run_id);
    return SL_STORE_OK;
}

/* ---- results --------------------------------------------------------------------- */

void sl_store_result_init(sl_store_result *r)
{
    memset(r, 0, sizeof *r);
    r->layer = r->head = SL_STORE_NULL_INT;
    r->n_q = r->n_k = r->head_dim = r->heads = r->kv_heads = SL_STORE_NULL_INT;
    r->budget = NAN;
}

static void savepoint_undo(sl_store *st)
{
    sqlite3_exec(st->db, "ROLLBACK TO sl_result; RELEASE sl_result", NULL, NULL, NULL);
}

sl_store_status sl_store_result_add(sl_store *st, const sl_store_result *r, const sl_store_metric *m, int n_metrics,
                              int64_t *result_id)
{
    static const char fn[] = "sl_store_result_add";
    static const char res_sql[] =
        "INSERT INTO result (run_id, method, params_json, workload, workload_params_json, phase, layer, head, "
        "n_q, n_k, head_dim, heads, kv_heads, backend, budget, point_key, status, error) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, coalesce(?17, 'ok'), ?18)";
    static const char met_sql[] = "INSERT INTO metric (result_id, name, value) VALUES (?1, ?2, ?3)";

    if (!r->method || !r->method[0])
        return fail(st, SL_STORE_EARG, "%s: method is missing", fn);
    if (n_metrics < 0 || (n_metrics > 0 && !m))
        return fail(st, SL_STORE_EARG, "%s: n_metrics is %d with metrics %s", fn, n_metrics, m ? "given" : "NULL");
    if (r->status && strcmp(r->status, "ok") != 0 && strcmp(r->status, "failed") != 0)
        return fail(st, SL_STORE_EARG, "%s: status must be 'ok' or 'failed', got '%s'", fn, r->status);
    for (int i = 0; i < n_metrics; i++)
        if (!m[i].name || !m[i].name[0])
            return fail(st, SL_STORE_EARG, "%s: metric %d has no name", fn, i);

    sl_store_status s = prepare_cached(st, &st->ins_result, res_sql, fn);
    if (s == SL_STORE_OK)
        s = prepare_cached(st, &st->ins_metric, met_sql, fn);
    if (s != SL_STORE_OK)
        return s;
    if (sqlite3_exec(st->db, "SAVEPOINT sl_result", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(st, fn, "SAVEPOINT sl_result");

    sqlite3_stmt *q = st->ins_result;
    sqlite3_bind_int64(q, 1, r->run_id);
    bind_text(q, 2, r->method);
    bind_text(q, 3, r->params_json);
    bind_text(q, 4, r->workload);
    bind_text(q, 5, r->workload_params_json);
    bind_text(q, 6, r->phase);
    bind_int(q, 7, r->layer);
    bind_int(q, 8, r->head);
    bind_int(q, 9, r->n_q);
    bind_int(q, 10, r->n_k);
    bind_int(q, 11, r->head_dim);
    bind_int(q, 12, r->heads);
    bind_int(q, 13, r->kv_heads);
    bind_text(q, 14, r->backend);
    bind_real(q, 15, r->budget);
    bind_text(q, 16, r->point_key);
    bind_text(q, 17, r->status);
    bind_text(q, 18, r->error);
    int rc = step_reset(q);
    if (rc != SQLITE_DONE) {
        if (sqlite3_extended_errcode(st->db) == SQLITE_CONSTRAINT_FOREIGNKEY)
            fail(st, SL_STORE_ESQLITE, "%s: there is no run %lld", fn, (long long)r->run_id);
        else
            db_fail(st, fn, res_sql);
        savepoint_undo(st);
        return SL_STORE_ESQLITE;
    }
    int64_t id = sqlite3_last_insert_rowid(st->db);

    q = st->ins_metric;
    for (int i = 0; i < n_metrics; i++) {
        sqlite3_bind_int64(q, 1, id);
        bind_text(q, 2, m[i].name);
        bind_real(q, 3, m[i].value);
        if (step_reset(q) != SQLITE_DONE) {
            sl_store_status e;
            if (sqlite3_extended_errcode(st->db) == SQLITE_CONSTRAINT_PRIMARYKEY)
                e = fail(st, SL_STORE_EARG, "%s: metric '%s' is given twice", fn, m[i].name);
            else
                e = db_fail(st, fn, met_sql);
            savepoint_undo(st);
            return e;
        }
    }
    if (sqlite3_exec(st->db, "RELEASE sl_result", NULL, NULL, NULL) != SQLITE_OK) {
        sl_store_status e = db_fail(st, fn, "RELEASE sl_result");
        savepoint_undo(st);
        return e;
    }
    if (result_id)
        *result_id = id;
    return SL_STORE_OK;
}

/* ---- transactions and SQL --------------------------------------------------------- */

static sl_store_status exec_named(sl_store *st, const char *fn, const char *sql)
{
    if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(st, fn, sql);
    return SL_STORE_OK;
}

sl_store_status sl_store_begin(sl_store *st) { return exec_named(st, "sl_store_begin", "BEGIN IMMEDIATE"); }
sl_store_status sl_store_commit(sl_store *st) { return exec_named(st, "sl_store_commit", "COMMIT"); }
sl_store_status sl_store_rollback(sl_store *st) { return exec_named(st, "sl_store_rollback", "ROLLBACK"); }
int sl_store_in_transaction(sl_store *st) { return !sqlite3_get_autocommit(st->db); }

sl_store_status sl_store_exec(sl_store *st, const char *sql)
{
    if (!sql)
        return fail(st, SL_STORE_EARG, "sl_store_exec: no SQL given");
    return exec_named(st, "sl_store_exec", sql);
}

sl_store_status sl_store_query(sl_store *st, const char *sql, sl_store_row_fn fn, void *ud)
{
    return sl_store_query_params(st, sql, NULL, 0, fn, ud);
}

static sl_store_status bind_params(sl_store *st, sqlite3_stmt *q, const char *sql, const sl_store_cell *params,
                             int n_params)
{
    static const char fn[] = "sl_store_query";
    int want = sqlite3_bind_parameter_count(q);
    if (n_params != want)
        return fail(st, SL_STORE_EARG, "%s: the statement has %d parameter%s, %d given", fn, want, want == 1 ? "" : "s",
                    n_params);
    for (int i = 0; i < n_params; i++) {
        const sl_store_cell *c = &params[i];
        int rc;
        switch (c->type) {
        case SL_STORE_NULL: rc = sqlite3_bind_null(q, i + 1); break;
        case SL_STORE_INT: rc = sqlite3_bind_int64(q, i + 1, c->i); break;
        case SL_STORE_REAL: rc = isnan(c->r) ? sqlite3_bind_null(q, i + 1) : sqlite3_bind_double(q, i + 1, c->r); break;
        case SL_STORE_TEXT:
            rc = sqlite3_bind_text64(q, i + 1, c->s ? c->s : "", c->s ? c->n : 0, SQLITE_TRANSIENT, SQLITE_UTF8);
            break;
        case SL_STORE_BLOB:
            rc = sqlite3_bind_blob64(q, i + 1, c->s ? c->s : "", c->s ? c->n : 0, SQLITE_TRANSIENT);
            break;
        default: return fail(st, SL_STORE_EARG, "%s: parameter %d has unknown type %d", fn, i + 1, (int)c->type);
        }
        if (rc != SQLITE_OK)
            return db_fail(st, fn, sql);
    }
    return SL_STORE_OK;
}

/* Prepares the one statement of sql; SL_STORE_EARG when there is none or more. */
static sl_store_status prepare_one(sl_store *st, const char *sql, sqlite3_stmt **out)
{
    static const char fn[] = "sl_store_query";
    const char *tail = NULL;
    *out = NULL;
    if (sqlite3_prepare_v2(st->db, sql, -1, out, &tail) != SQLITE_OK)
        return db_fail(st, fn, sql);
    if (!*out)
        return fail(st, SL_STORE_EARG, "%s: no SQL statement given", fn);
    /* What follows may only be empty statements, whitespace and comments. */
    while (tail && *tail) {
        sqlite3_stmt *more = NULL;
        const char *next = NULL;
        int rc = sqlite3_prepare_v2(st->db, tail, -1, &more, &next);
        sqlite3_finalize(more);
        if (rc != SQLITE_OK || more) {
            sqlite3_finalize(*out);
            *out = NULL;
            char ex[128];
            sql_excerpt(tail, ex, sizeof ex);
            return fail(st, SL_STORE_EARG, "%s: one statement at a time (use sl_store_exec for scripts); "
                        "found more: %s", fn, ex);
        }
        if (next == tail)
            break;
        tail = next;
    }
    return SL_STORE_OK;
}

sl_store_status sl_store_query_params(sl_store *st, const char *sql, const sl_store_cell *params, int n_params,
                                sl_store_row_fn fn, void *ud)
{
    static const char name[] = "sl_store_query";
    if (!sql || !fn)
        return fail(st, SL_STORE_EARG, "%s: %s is NULL", name, sql ? "the row function" : "sql");
    if (n_params < 0 || (n_params > 0 && !params))
        return fail(st, SL_STORE_EARG, "%s: n_params is %d with params %s", name, n_params, params ? "given" : "NULL");
    sqlite3_stmt *q;
    sl_store_status s = prepare_one(st, sql, &q);
    if (s != SL_STORE_OK)
        return s;
    s = bind_params(st, q, sql, params, n_params);
    if (s != SL_STORE_OK) {
        sqlite3_finalize(q);
        return s;
    }
    int n_cols = sqlite3_column_count(q);
    const char **names = calloc((size_t)n_cols + 1, sizeof *names);
    sl_store_cell *cells = calloc((size_t)n_cols + 1, sizeof *cells);
    if (!names || !cells) {
        free(names);
        free(cells);
        sqlite3_finalize(q);
        return fail(st, SL_STORE_ENOMEM, "%s: out of memory for %d columns", name, n_cols);
    }
    for (int c = 0; c < n_cols; c++) {
        names[c] = sqlite3_column_name(q, c);
        if (!names[c])
            names[c] = "";
    }
    if (fn(ud, n_cols, names, NULL) == 0) {
        int rc;
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            for (int c = 0; c < n_cols; c++) {
                sl_store_cell *x = &cells[c];
                memset(x, 0, sizeof *x);
                switch (sqlite3_column_type(q, c)) {
                case SQLITE_INTEGER:
                    x->type = SL_STORE_INT;
                    x->i = sqlite3_column_int64(q, c);
                    x->r = (double)x->i;
                    break;
                case SQLITE_FLOAT:
                    x->type = SL_STORE_REAL;
                    x->r = sqlite3_column_double(q, c);
                    break;
                case SQLITE_TEXT:
                    x->type = SL_STORE_TEXT;
                    x->s = (const char *)sqlite3_column_text(q, c);
                    x->n = (size_t)sqlite3_column_bytes(q, c);
                    break;
                case SQLITE_BLOB:
                    x->type = SL_STORE_BLOB;
                    x->s = sqlite3_column_blob(q, c);
                    x->n = (size_t)sqlite3_column_bytes(q, c);
                    break;
                default: x->type = SL_STORE_NULL; break;
                }
            }
            if (fn(ud, n_cols, names, cells) != 0) {
                rc = SQLITE_DONE;
                break;
            }
        }
        if (rc != SQLITE_DONE)
            s = db_fail(st, name, sql);
    }
    free(names);
    free(cells);
    sqlite3_finalize(q);
    return s;
}
