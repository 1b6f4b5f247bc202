/* test_store.c — Check suite for store/: opening and migrating a database,
 * run and result round trips with seeded random values, metrics in long form,
 * the wide views, reopening, refusing foreign, newer and non-SQLite files,
 * transactions, queries (parameters, the header call, stopping early), and
 * SHA-256 against the FIPS 180-2 vectors. Foreign databases and the reference
 * schema are built with SQLite directly, not through the code under test. */
#include "testutil.h"

#include "store.h"

#include <ctype.h>
#include <dirent.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* ---- fixture ------------------------------------------------------------------- */

typedef struct fx {
    char dir[64];
    char db[128];
} fx;

static void fx_open(fx *f)
{
    tu_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->db, sizeof f->db, "%s/results.db", f->dir);
}

static void fx_close(fx *f)
{
    DIR *d = opendir(f->dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(f->dir);
}

static sl_store *open_ok(const char *path)
{
    sl_store *st = NULL;
    char err[640];
    sl_store_status s = sl_store_open(path, &st, err, sizeof err);
    ck_assert_msg(s == SL_STORE_OK, "sl_store_open(%s): %s", path, err);
    ck_assert_ptr_nonnull(st);
    ck_assert_str_eq(err, "");
    return st;
}

/* A random string of printable ASCII (quotes and backslashes included) with
 * a UTF-8 letter now and then. */
static void rand_text(sl_rng *r, char *out, size_t n)
{
    size_t len = 1 + sl_rng_next(r) % (n < 40 ? n - 4 : 36);
    size_t j = 0;
    while (j < len) {
        if (sl_rng_next(r) % 10 == 0) {
            out[j++] = (char)0xc3;
            out[j++] = (char)0xa9; /* é */
        } else
            out[j++] = (char)(32 + sl_rng_next(r) % 95);
    }
    out[j] = '\0';
}

static int64_t rand_int(sl_rng *r, int64_t lo, int64_t hi) { return lo + (int64_t)(sl_rng_next(r) % (uint64_t)(hi - lo + 1)); }

/* ---- collecting query rows --------------------------------------------------------- */

#define MAXC 64

typedef struct rows {
    int headers;         /* header calls seen */
    int header_first;    /* the header came before any row */
    int n_rows;
    int stop_after;      /* 0: never stop */
    int n_cols;
    char names[MAXC][64];
    sl_store_type type[MAXC]; /* of the first row */
    int64_t i[MAXC];
    double r[MAXC];
    char s[MAXC][256];
} rows;

static int collect(void *ud, int n_cols, const char *const *names, const sl_store_cell *cells)
{
    rows *q = ud;
    ck_assert_int_le(n_cols, MAXC);
    if (!cells) {
        q->headers++;
        q->header_first = q->n_rows == 0;
        q->n_cols = n_cols;
        for (int c = 0; c < n_cols; c++)
            snprintf(q->names[c], sizeof q->names[c], "%s", names[c]);
        return 0;
    }
    if (q->n_rows == 0)
        for (int c = 0; c < n_cols; c++) {
            q->type[c] = cells[c].type;
            q->i[c] = cells[c].i;
            q->r[c] = cells[c].r;
            q->s[c][0] = '\0';
            if (cells[c].type == SL_STORE_TEXT) {
                ck_assert_uint_lt(cells[c].n, sizeof q->s[c]);
                memcpy(q->s[c], cells[c].s, cells[c].n);
                q->s[c][cells[c].n] = '\0';
                ck_assert_uint_eq(strlen(cells[c].s), cells[c].n);
            }
        }
    q->n_rows++;
    return q->stop_after && q->n_rows >= q->stop_after;
}

static rows *query(sl_store *st, const char *sql, const sl_store_cell *p, int n_p)
{
    rows *q = calloc(1, sizeof *q);
    ck_assert_ptr_nonnull(q);
    sl_store_status s = sl_store_query_params(st, sql, p, n_p, collect, q);
    ck_assert_msg(s == SL_STORE_OK, "query %s: %s", sql, sl_store_error(st));
    ck_assert_int_eq(q->headers, 1);
    ck_assert(q->header_first);
    return q;
}

static int col(const rows *q, const char *name)
{
    for (int c = 0; c < q->n_cols; c++)
        if (strcmp(q->names[c], name) == 0)
            return c;
    ck_abort_msg("no column %s", name);
    return -1;
}

static int64_t query_int(sl_store *st, const char *sql)
{
    rows *q = query(st, sql, NULL, 0);
    ck_assert_int_eq(q->n_rows, 1);
    ck_assert_int_eq(q->type[0], SL_STORE_INT);
    int64_t v = q->i[0];
    free(q);
    return v;
}

static sl_store_cell cell_int(int64_t v) { return (sl_store_cell){SL_STORE_INT, v, 0, NULL, 0}; }

static void expect_text(const rows *q, const char *name, const char *want)
{
    int c = col(q, name);
    if (!want) {
        ck_assert_msg(q->type[c] == SL_STORE_NULL, "%s: expected NULL, found type %d", name, q->type[c]);
        return;
    }
    ck_assert_msg(q->type[c] == SL_STORE_TEXT, "%s: expected text, found type %d", name, q->type[c]);
    ck_assert_str_eq(q->s[c], want);
}

static void expect_int(const rows *q, const char *name, int64_t want)
{
    int c = col(q, name);
    if (want == SL_STORE_NULL_INT) {
        ck_assert_msg(q->type[c] == SL_STORE_NULL, "%s: expected NULL", name);
        return;
    }
    ck_assert_msg(q->type[c] == SL_STORE_INT, "%s: expected an integer, found type %d", name, q->type[c]);
    ck_assert_int_eq(q->i[c], want);
}

static void expect_real(const rows *q, const char *name, double want)
{
    int c = col(q, name);
    if (isnan(want)) {
        ck_assert_msg(q->type[c] == SL_STORE_NULL, "%s: expected NULL, found type %d", name, q->type[c]);
        return;
    }
    ck_assert_msg(q->type[c] == SL_STORE_REAL, "%s: expected a real, found type %d", name, q->type[c]);
    ck_assert_msg(q->r[c] == want || (isinf(want) && q->r[c] == want), "%s: %.17g != %.17g", name, q->r[c], want);
}

/* ---- plain SQLite, independent of the store ---------------------------------------- */

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg ? msg : "");
    sqlite3_close(db);
}

/* Every table and index as "type name tbl_name sql" lines with comments
 * stripped and whitespace collapsed, sorted by name; views left out. */
static void schema_signature(sqlite3 *db, char *out, size_t n)
{
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master "
                                        "WHERE type IN ('table', 'index') ORDER BY name",
                                        -1, &s, NULL),
                     SQLITE_OK);
    size_t j = 0;
    out[0] = '\0';
    while (sqlite3_step(s) == SQLITE_ROW) {
        for (int c = 0; c < 4; c++) {
            const char *t = (const char *)sqlite3_column_text(s, c);
            int space = 0;
            for (const char *p = t; *p; p++) {
                if (p[0] == '-' && p[1] == '-') {
                    while (*p && *p != '\n')
                        p++;
                    space = 1;
                    if (!*p)
                        break;
                    continue;
                }
                if (isspace((unsigned char)*p)) {
                    space = 1;
                    continue;
                }
                ck_assert_uint_lt(j + 3, n);
                if (space && j > 0 && out[j - 1] != '|' && *p != ')' && *p != ',' && out[j - 1] != '(')
                    out[j++] = ' ';
                space = 0;
                out[j++] = *p;
            }
            ck_assert_uint_lt(j + 3, n);
            out[j++] = c < 3 ? '|' : '\n';
        }
    }
    out[j] = '\0';
    sqlite3_finalize(s);
}

static int64_t raw_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

static char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static const sl_embedded_file *embedded(const char *path)
{
    for (int i = 0; i < sl_store_sql_n_files; i++)
        if (strcmp(sl_store_sql_files[i].path, path) == 0)
            return &sl_store_sql_files[i];
    return NULL;
}

/* Migrations as the build embedded them: store/migrations/NNN_*.sql. */
static int count_embedded_migrations(void)
{
    int n = 0;
    for (int i = 0; i < sl_store_sql_n_files; i++)
        if (strncmp(sl_store_sql_files[i].path, "store/migrations/", 17) == 0)
            n++;
    return n;
}

/* ---- opening ------------------------------------------------------------------------ */

START_TEST(test_open_fresh)
{
    fx f;
    fx_open(&f);
    sl_store *st = open_ok(f.db);
    int n_mig = count_embedded_migrations();
    ck_assert_int_ge(n_mig, 1);
    /* When run from the repository root, the files on disk must be the ones embedded. */
    DIR *d = opendir("store/migrations");
    if (d) {
        int n_disk = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            size_t len = strlen(e->d_name);
            if (len > 4 && strcmp(e->d_name + len - 4, ".sql") == 0)
                n_disk++;
        }
        closedir(d);
        ck_assert_int_eq(n_disk, n_mig);
    }
    ck_assert_int_eq(sl_store_user_version(st), n_mig);
    ck_assert_int_eq(sl_store_latest_version(), n_mig);
    ck_assert_str_eq(sl_store_path(st), f.db);
    ck_assert_str_eq(sl_store_error(st), "");

    rows *q = query(st, "PRAGMA journal_mode", NULL, 0);
    ck_assert_str_eq(q->s[0], "wal");
    free(q);
    ck_assert_int_eq(query_int(st, "PRAGMA foreign_keys"), 1);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM sqlite_master WHERE type = 'view' AND name = 'v_result'"), 1);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM sqlite_master WHERE type = 'view' AND name = 'v_frontier'"), 1);
    for (const char *const *t = (const char *const[]){"run", "result", "metric", NULL}; *t; t++) {
        char sql[160];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '%s' "
                                  "AND sql LIKE '%%STRICT%%'", *t);
        ck_assert_int_eq(query_int(st, sql), 1);
    }
    for (const char *const *t = (const char *const[]){"run_id", "method", "point_key", NULL}; *t; t++) {
        char sql[200];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM pragma_index_list('result') AS l "
                                  "JOIN pragma_index_info(l.name) AS i WHERE i.name = '%s'", *t);
        ck_assert_int_eq(query_int(st, sql), 1);
    }
    sl_store_close(st);
    sl_store_close(NULL);
    fx_close(&f);
}
END_TEST

START_TEST(test_schema_file_matches_migrations)
{
    fx f;
    fx_open(&f);
    sl_store_close(open_ok(f.db));

    const sl_embedded_file *e = embedded("store/schema.sql");
    ck_assert_ptr_nonnull(e);
    char *disk = read_text_file("store/schema.sql");
    if (disk) {
        ck_assert_str_eq(disk, e->text);
        free(disk);
    }
    ck_assert_uint_eq(strlen(e->text), e->len);

    sqlite3 *migrated, *fresh;
    ck_assert_int_eq(sqlite3_open(f.db, &migrated), SQLITE_OK);
    ck_assert_int_eq(sqlite3_open(":memory:", &fresh), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(fresh, e->text, NULL, NULL, NULL), SQLITE_OK);
    static char a[65536], b[65536];
    schema_signature(migrated, a, sizeof a);
    schema_signature(fresh, b, sizeof b);
    ck_assert_str_eq(a, b);
    ck_assert_int_eq(raw_int(migrated, "PRAGMA user_version"), raw_int(fresh, "PRAGMA user_version"));
    ck_assert_int_eq(raw_int(migrated, "PRAGMA application_id"), raw_int(fresh, "PRAGMA application_id"));
    ck_assert_int_ne(raw_int(fresh, "PRAGMA application_id"), 0);
    sqlite3_close(migrated);
    sqlite3_close(fresh);
    fx_close(&f);
}
END_TEST

START_TEST(test_reopen_keeps_data)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 4242);
    sl_store *st = open_ok(f.db);
    /* Opening a fresh database writes (migrations, views). */
    ck_assert_int_gt(query_int(st, "SELECT total_changes()"), 0);
    sl_store_run run;
    sl_store_run_init(&run);
    int64_t run_id;
    ck_assert_int_eq(sl_store_run_begin(st, &run, &run_id), SL_STORE_OK);
    int n = (int)rand_int(&r, 3, 20);
    for (int i = 0; i < n; i++) {
        sl_store_result res;
        sl_store_result_init(&res);
        res.run_id = run_id;
        res.method = "m";
        sl_store_metric m = {"density", sl_rng_uniform(&r)};
        ck_assert_int_eq(sl_store_result_add(st, &res, &m, 1, NULL), SL_STORE_OK);
    }
    sl_store_close(st);

    for (int k = 0; k < 3; k++) {
        st = open_ok(f.db);
        /* An up-to-date store opens without writing anything. */
        ck_assert_int_eq(query_int(st, "SELECT total_changes()"), 0);
        ck_assert_int_eq(sl_store_user_version(st), count_embedded_migrations());
        ck_assert_int_eq(query_int(st, "SELECT count(*) FROM result"), n);
        ck_assert_int_eq(query_int(st, "SELECT count(*) FROM metric"), n);
        ck_assert_int_eq(query_int(st, "SELECT count(*) FROM run"), 1);
        sl_store_close(st);
    }

    /* A changed view is put back on the next open. */
    raw_exec(f.db, "DROP VIEW v_frontier; DROP VIEW v_result; CREATE VIEW v_result AS SELECT 1 AS x;"
                   "UPDATE meta SET value = 'stale' WHERE key = 'views_sha256'");
    st = open_ok(f.db);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM v_result"), n);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM sqlite_master WHERE name = 'v_frontier'"), 1);
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

START_TEST(test_two_openers)
{
    fx f;
    fx_open(&f);
    sl_store *a = open_ok(f.db), *b = open_ok(f.db);
    ck_assert_int_eq(sl_store_user_version(b), count_embedded_migrations());
    sl_store_run run;
    sl_store_run_init(&run);
    int64_t id;
    /* WAL: a reader sees the last commit while a writer's transaction is open. */
    ck_assert_int_eq(sl_store_begin(a), SL_STORE_OK);
    ck_assert_int_eq(sl_store_in_transaction(a), 1);
    ck_assert_int_eq(sl_store_run_begin(a, &run, &id), SL_STORE_OK);
    ck_assert_int_eq(query_int(b, "SELECT count(*) FROM run"), 0);
    ck_assert_int_eq(sl_store_commit(a), SL_STORE_OK);
    ck_assert_int_eq(sl_store_in_transaction(a), 0);
    ck_assert_int_eq(query_int(b, "SELECT count(*) FROM run"), 1);
    sl_store_close(a);
    sl_store_close(b);
    fx_close(&f);
}
END_TEST

/* Processes racing to create and migrate one fresh file all succeed, and the
 * migrations run once. */
START_TEST(test_racing_openers)
{
    fx f;
    fx_open(&f);
    enum { N = 8 };
    pid_t pid[N];
    for (int i = 0; i < N; i++) {
        pid[i] = fork();
        ck_assert_int_ge(pid[i], 0);
        if (pid[i] == 0) {
            sl_store *st = NULL;
            char err[640];
            int ok = sl_store_open(f.db, &st, err, sizeof err) == SL_STORE_OK;
            sl_store_run run;
            sl_store_run_init(&run);
            run.seed = i;
            ok = ok && sl_store_run_begin(st, &run, NULL) == SL_STORE_OK;
            if (!ok)
                fprintf(stderr, "opener %d: %s\n", i, st ? sl_store_error(st) : err);
            sl_store_close(st);
            _exit(ok ? 0 : 1);
        }
    }
    for (int i = 0; i < N; i++) {
        int status;
        ck_assert_int_eq(waitpid(pid[i], &status, 0), pid[i]);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "opener %d failed", i);
    }
    sl_store *st = open_ok(f.db);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM run"), N);
    ck_assert_int_eq(query_int(st, "SELECT count(DISTINCT seed) FROM run"), N);
    ck_assert_int_eq(sl_store_user_version(st), count_embedded_migrations());
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

START_TEST(test_refuse_not_sqlite)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 31337);
    for (int trial = 0; trial < 4; trial++) {
        char path[160];
        snprintf(path, sizeof path, "%s/garbage%d.db", f.dir, trial);
        size_t n = (size_t)rand_int(&r, 100, 8192);
        unsigned char *bytes = malloc(n);
        ck_assert_ptr_nonnull(bytes);
        for (size_t i = 0; i < n; i++)
            bytes[i] = (unsigned char)sl_rng_next(&r);
        FILE *fp = fopen(path, "wb");
        ck_assert_ptr_nonnull(fp);
        ck_assert_uint_eq(fwrite(bytes, 1, n, fp), n);
        fclose(fp);
        free(bytes);

        sl_store *st = (sl_store *)&r; /* must be reset to NULL */
        char err[640];
        ck_assert_int_eq(sl_store_open(path, &st, err, sizeof err), SL_STORE_ESQLITE);
        ck_assert_ptr_null(st);
        ck_assert_msg(strstr(err, path) != NULL, "message does not name the path: %s", err);
        ck_assert_msg(strstr(err, "not a SQLite database") != NULL, "%s", err);
        ck_assert_ptr_null(strchr(err, '\n'));
    }
    fx_close(&f);
}
END_TEST

/* A corrupted schema: sqlite_master holds a name and statement with control
 * and non-UTF-8 bytes (an escape sequence, 0xff). The message quotes them as
 * \xNN escapes: printable ASCII only, one line. */
START_TEST(test_corrupt_schema_message_printable)
{
    fx f;
    fx_open(&f);
    sl_store_close(open_ok(f.db));
    raw_exec(f.db, "PRAGMA writable_schema = ON; "
                   "INSERT INTO sqlite_master VALUES ('table', 'x' || char(27) || '[31m' || char(10) || 'y', 'x', 99, "
                   "'CREATE TABLE ' || char(27) || '[2J' || cast(x'ff01' AS TEXT) || ' (a'); "
                   "PRAGMA writable_schema = OFF;");
    char err[640];
    sl_store *st;
    for (int ro = 0; ro < 2; ro++) {
        sl_store_status s = ro ? sl_store_open_readonly(f.db, &st, err, sizeof err) : sl_store_open(f.db, &st, err, sizeof err);
        ck_assert_int_eq(s, SL_STORE_ESQLITE);
        ck_assert_ptr_null(st);
        ck_assert_msg(strstr(err, f.db), "%s", err);
        for (const unsigned char *c = (const unsigned char *)err; *c; c++)
            ck_assert_msg(*c >= 0x20 && *c < 0x7f, "byte 0x%02x at %d in: %s", *c, (int)(c - (const unsigned char *)err), err);
        ck_assert_msg(strstr(err, "\\x1b"), "control bytes not escaped: %s", err);
    }
    fx_close(&f);
}
END_TEST

START_TEST(test_refuse_newer_and_foreign)
{
    fx f;
    fx_open(&f);
    char err[640];
    sl_store *st;

    sl_store_close(open_ok(f.db));
    raw_exec(f.db, "PRAGMA user_version = 999");
    ck_assert_int_eq(sl_store_open(f.db, &st, err, sizeof err), SL_STORE_ESQLITE);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, "999") && strstr(err, "newer") && strstr(err, f.db), "%s", err);

    /* Another program's database: its own tables, user_version 0. */
    char other[160];
    snprintf(other, sizeof other, "%s/other.db", f.dir);
    raw_exec(other, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)");
    ck_assert_int_eq(sl_store_open(other, &st, err, sizeof err), SL_STORE_ESQLITE);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, "not a sparselab store") && strstr(err, other), "%s", err);
    /* ... and it was left untouched. */
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(other, &db), SQLITE_OK);
    ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM sqlite_master"), 1);
    sqlite3_close(db);

    /* Another program's database that sets application_id. */
    char app[160];
    snprintf(app, sizeof app, "%s/app.db", f.dir);
    raw_exec(app, "PRAGMA application_id = 1234567; PRAGMA user_version = 1; CREATE TABLE t (x)");
    ck_assert_int_eq(sl_store_open(app, &st, err, sizeof err), SL_STORE_ESQLITE);
    ck_assert_msg(strstr(err, "another program"), "%s", err);

    /* A path that cannot be opened is an I/O error; no path is an argument error. */
    char missing[200];
    snprintf(missing, sizeof missing, "%s/no/such/dir/x.db", f.dir);
    ck_assert_int_eq(sl_store_open(missing, &st, err, sizeof err), SL_STORE_EIO);
    ck_assert_msg(strstr(err, missing), "%s", err);
    ck_assert_int_eq(sl_store_open("", &st, err, sizeof err), SL_STORE_EARG);
    ck_assert_int_eq(sl_store_open(missing, &st, NULL, 0), SL_STORE_EIO);

    /* An empty file is an empty database: it becomes a store. */
    char empty[160];
    snprintf(empty, sizeof empty, "%s/empty.db", f.dir);
    FILE *fp = fopen(empty, "wb");
    fclose(fp);
    st = open_ok(empty);
    ck_assert_int_eq(sl_store_user_version(st), count_embedded_migrations());
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

/* ---- runs and results ------------------------------------------------------------------ */

START_TEST(test_run_roundtrip)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 777);
    sl_store *st = open_ok(f.db);
    for (int trial = 0; trial < 8; trial++) {
        char script[64], sha[65], git[64], host[64], cpu[64], gpu[64], flags[64], ver[64], started[40], argv[128],
            config[128], a0[32], a1[32];
        rand_text(&r, script, sizeof script);
        sl_sha256_hex(script, strlen(script), sha);
        rand_text(&r, git, sizeof git);
        rand_text(&r, host, sizeof host);
        rand_text(&r, cpu, sizeof cpu);
        rand_text(&r, gpu, sizeof gpu);
        rand_text(&r, flags, sizeof flags);
        rand_text(&r, ver, sizeof ver);
        snprintf(started, sizeof started, "20%02d-0%d-1%dT0%d:00:00.000Z", (int)rand_int(&r, 20, 40),
                 (int)rand_int(&r, 1, 9), (int)rand_int(&r, 0, 9), (int)rand_int(&r, 0, 9));
        snprintf(a0, sizeof a0, "--n=%d", (int)rand_int(&r, 1, 100000));
        snprintf(a1, sizeof a1, "%d", (int)rand_int(&r, 0, 9));
        snprintf(argv, sizeof argv, "[\"%s\",\"%s\"]", a0, a1);
        snprintf(config, sizeof config, "{\"workers\":%d}", (int)rand_int(&r, 1, 64));

        sl_store_run run;
        sl_store_run_init(&run);
        int full = trial % 2 == 0;
        if (full) {
            run.started = started;
            run.script = script;
            run.script_sha256 = sha;
            run.argv = argv;
            run.git_rev = git;
            run.git_dirty = rand_int(&r, 0, 1);
            run.host = host;
            run.cpu = cpu;
            run.gpu = gpu;
            run.build_flags = flags;
            run.seed = rand_int(&r, -1000000000000LL, 1000000000000LL);
            run.config_json = config;
            run.sparselab_version = ver;
        }
        int64_t id;
        ck_assert_int_eq(sl_store_run_begin(st, &run, &id), SL_STORE_OK);
        sl_store_cell p = cell_int(id);
        rows *q = query(st, "SELECT * FROM run WHERE id = ?", &p, 1);
        ck_assert_int_eq(q->n_rows, 1);
        expect_text(q, "status", "running");
        expect_text(q, "finished", NULL);
        expect_text(q, "script", run.script);
        expect_text(q, "script_sha256", run.script_sha256);
        expect_text(q, "argv", run.argv);
        expect_text(q, "git_rev", run.git_rev);
        expect_int(q, "git_dirty", run.git_dirty);
        expect_text(q, "host", run.host);
        expect_text(q, "cpu", run.cpu);
        expect_text(q, "gpu", run.gpu);
        expect_text(q, "build_flags", run.build_flags);
        expect_int(q, "seed", run.seed);
        expect_text(q, "config_json", run.config_json);
        expect_text(q, "sparselab_version", run.sparselab_version);
        if (full)
            expect_text(q, "started", started);
        else {
            /* Defaulted to now, UTC ISO-8601 with milliseconds. */
            int c = col(q, "started");
            ck_assert_int_eq(q->type[c], SL_STORE_TEXT);
            ck_assert_uint_eq(strlen(q->s[c]), 24);
            ck_assert_int_eq(q->s[c][10], 'T');
            ck_assert_int_eq(q->s[c][23], 'Z');
        }
        free(q);

        const char *status = (const char *[]){"ok", "failed", "interrupted"}[trial % 3];
        ck_assert_int_eq(sl_store_run_finish(st, id, status), SL_STORE_OK);
        q = query(st, "SELECT status, finished FROM run WHERE id = ?", &p, 1);
        expect_text(q, "status", status);
        ck_assert_int_eq(q->type[1], SL_STORE_TEXT);
        free(q);
    }

    ck_assert_int_eq(sl_store_run_finish(st, 1, "done"), SL_STORE_EARG);
    ck_assert_msg(strstr(sl_store_error(st), "sl_store_run_finish"), "%s", sl_store_error(st));
    ck_assert_int_eq(sl_store_run_finish(st, 1, NULL), SL_STORE_EARG);
    ck_assert_int_eq(sl_store_run_finish(st, 424242, "ok"), SL_STORE_EARG);
    ck_assert_msg(strstr(sl_store_error(st), "424242"), "%s", sl_store_error(st));

    /* Bad JSON is refused by the schema. */
    sl_store_run bad;
    sl_store_run_init(&bad);
    bad.argv = "[\"unterminated";
    ck_assert_int_eq(sl_store_run_begin(st, &bad, NULL), SL_STORE_ESQLITE);
    ck_assert_msg(strstr(sl_store_error(st), "sl_store_run_begin") && strstr(sl_store_error(st), "INSERT INTO run"),
                  "%s", sl_store_error(st));
    sl_store_run_init(&bad);
    bad.git_dirty = 2;
    ck_assert_int_eq(sl_store_run_begin(st, &bad, NULL), SL_STORE_EARG);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM run"), 8);
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

START_TEST(test_result_roundtrip)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 9001);
    sl_store *st = open_ok(f.db);
    sl_store_run run;
    sl_store_run_init(&run);
    int64_t run_id;
    ck_assert_int_eq(sl_store_run_begin(st, &run, &run_id), SL_STORE_OK);

    int64_t total_metrics = 0;
    for (int trial = 0; trial < 12; trial++) {
        char method[64], workload[64], phase[64], backend[64], key[65], err[64], params[96], wparams[96];
        rand_text(&r, method, sizeof method);
        rand_text(&r, workload, sizeof workload);
        rand_text(&r, phase, sizeof phase);
        rand_text(&r, backend, sizeof backend);
        rand_text(&r, err, sizeof err);
        sl_sha256_hex(method, strlen(method), key);
        snprintf(params, sizeof params, "{\"k\":%d,\"p\":%.17g}", (int)rand_int(&r, 1, 512), sl_rng_uniform(&r));
        snprintf(wparams, sizeof wparams, "{\"seed\":%d}", (int)rand_int(&r, 0, 1 << 30));

        sl_store_result res;
        sl_store_result_init(&res);
        res.run_id = run_id;
        res.method = method;
        int full = trial % 3 != 2;
        if (full) {
            res.params_json = params;
            res.workload = workload;
            res.workload_params_json = wparams;
            res.phase = phase;
            res.layer = rand_int(&r, 0, 80);
            res.head = rand_int(&r, 0, 64);
            res.n_q = rand_int(&r, 1, 1 << 20);
            res.n_k = rand_int(&r, 1, 1 << 20);
            res.head_dim = rand_int(&r, 1, 256);
            res.heads = rand_int(&r, 1, 128);
            res.kv_heads = rand_int(&r, 1, 128);
            res.backend = backend;
            res.budget = sl_rng_uniform(&r) * 100;
            res.point_key = key;
            if (trial % 4 == 1) {
                res.status = "failed";
                res.error = err;
            }
        }
        sl_store_metric m[40];
        char names[40][24];
        int n_m = (int)rand_int(&r, 0, 39);
        for (int i = 0; i < n_m; i++) {
            snprintf(names[i], sizeof names[i], "m%d_%u", i, (unsigned)(sl_rng_next(&r) % 1000));
            m[i].name = names[i];
            m[i].value = sl_rng_normal(&r) * 1e3;
        }
        if (n_m > 2) {
            m[0].value = NAN;
            m[1].value = INFINITY;
            m[2].value = -INFINITY;
        }
        int64_t id = -1;
        ck_assert_int_eq(sl_store_result_add(st, &res, m, n_m, &id), SL_STORE_OK);
        ck_assert_int_gt(id, 0);
        total_metrics += n_m;

        sl_store_cell p = cell_int(id);
        rows *q = query(st, "SELECT * FROM result WHERE id = ?", &p, 1);
        ck_assert_int_eq(q->n_rows, 1);
        expect_int(q, "run_id", run_id);
        expect_text(q, "method", method);
        expect_text(q, "params_json", res.params_json);
        expect_text(q, "workload", res.workload);
        expect_text(q, "workload_params_json", res.workload_params_json);
        expect_text(q, "phase", res.phase);
        expect_int(q, "layer", res.layer);
        expect_int(q, "head", res.head);
        expect_int(q, "n_q", res.n_q);
        expect_int(q, "n_k", res.n_k);
        expect_int(q, "head_dim", res.head_dim);
        expect_int(q, "heads", res.heads);
        expect_int(q, "kv_heads", res.kv_heads);
        expect_text(q, "backend", res.backend);
        expect_real(q, "budget", res.budget);
        expect_text(q, "point_key", res.point_key);
        expect_text(q, "status", res.status ? res.status : "ok");
        expect_text(q, "error", res.error);
        ck_assert_int_eq(q->type[col(q, "created")], SL_STORE_TEXT);
        free(q);

        /* Long form: one row per metric, values as given (NaN as NULL). */
        ck_assert_int_eq(
            query_int(st, "SELECT count(*) FROM metric") - (total_metrics - n_m), n_m);
        for (int i = 0; i < n_m; i++) {
            sl_store_cell mp[2] = {cell_int(id), {SL_STORE_TEXT, 0, 0, m[i].name, strlen(m[i].name)}};
            q = query(st, "SELECT value FROM metric WHERE result_id = ?1 AND name = ?2", mp, 2);
            ck_assert_int_eq(q->n_rows, 1);
            expect_real(q, "value", m[i].value);
            free(q);
        }
    }

    /* Refusals leave nothing behind. */
    int64_t n_before = query_int(st, "SELECT count(*) FROM result");
    sl_store_result res;
    sl_store_result_init(&res);
    res.run_id = run_id;
    ck_assert_int_eq(sl_store_result_add(st, &res, NULL, 0, NULL), SL_STORE_EARG); /* no method */
    res.method = "x";
    res.status = "maybe";
    ck_assert_int_eq(sl_store_result_add(st, &res, NULL, 0, NULL), SL_STORE_EARG);
    res.status = NULL;
    sl_store_metric dup[3] = {{"a", 1}, {"b", 2}, {"a", 3}};
    ck_assert_int_eq(sl_store_result_add(st, &res, dup, 3, NULL), SL_STORE_EARG);
    ck_assert_msg(strstr(sl_store_error(st), "'a'"), "%s", sl_store_error(st));
    sl_store_metric noname[1] = {{"", 1}};
    ck_assert_int_eq(sl_store_result_add(st, &res, noname, 1, NULL), SL_STORE_EARG);
    ck_assert_int_eq(sl_store_result_add(st, &res, NULL, 2, NULL), SL_STORE_EARG);
    res.params_json = "{not json";
    ck_assert_int_eq(sl_store_result_add(st, &res, dup, 2, NULL), SL_STORE_ESQLITE);
    ck_assert_msg(strstr(sl_store_error(st), "INSERT INTO result"), "%s", sl_store_error(st));
    res.params_json = NULL;
    res.run_id = run_id + 1000;
    ck_assert_int_eq(sl_store_result_add(st, &res, dup, 2, NULL), SL_STORE_ESQLITE);
    ck_assert_msg(strstr(sl_store_error(st), "no run"), "%s", sl_store_error(st));
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM result"), n_before);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM metric"), total_metrics);
    ck_assert_int_eq(sl_store_in_transaction(st), 0);

    /* Deleting a run removes its results and their metrics. */
    ck_assert_int_eq(sl_store_exec(st, "DELETE FROM run"), SL_STORE_OK);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM result"), 0);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM metric"), 0);
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

START_TEST(test_transactions)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 55);
    sl_store *st = open_ok(f.db);
    sl_store_run run;
    sl_store_run_init(&run);
    int64_t run_id;
    ck_assert_int_eq(sl_store_run_begin(st, &run, &run_id), SL_STORE_OK);
    sl_store_result res;
    sl_store_result_init(&res);
    res.run_id = run_id;
    res.method = "batch";

    int n1 = (int)rand_int(&r, 2, 50), n2 = (int)rand_int(&r, 2, 50);
    ck_assert_int_eq(sl_store_begin(st), SL_STORE_OK);
    for (int i = 0; i < n1; i++) {
        sl_store_metric m = {"x", sl_rng_uniform(&r)};
        ck_assert_int_eq(sl_store_result_add(st, &res, &m, 1, NULL), SL_STORE_OK);
    }
    /* A refused result inside a batch undoes only itself. */
    sl_store_metric dup[2] = {{"a", 1}, {"a", 2}};
    ck_assert_int_eq(sl_store_result_add(st, &res, dup, 2, NULL), SL_STORE_EARG);
    ck_assert_int_eq(sl_store_in_transaction(st), 1);
    ck_assert_int_eq(sl_store_begin(st), SL_STORE_ESQLITE); /* nested */
    ck_assert_int_eq(sl_store_commit(st), SL_STORE_OK);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM result"), n1);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM metric"), n1);

    ck_assert_int_eq(sl_store_begin(st), SL_STORE_OK);
    for (int i = 0; i < n2; i++)
        ck_assert_int_eq(sl_store_result_add(st, &res, NULL, 0, NULL), SL_STORE_OK);
    ck_assert_int_eq(sl_store_rollback(st), SL_STORE_OK);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM result"), n1);
    ck_assert_int_eq(sl_store_commit(st), SL_STORE_ESQLITE); /* none open */
    ck_assert_msg(strstr(sl_store_error(st), "sl_store_commit"), "%s", sl_store_error(st));
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

/* ---- views ------------------------------------------------------------------------------ */

static const char *const pivoted[] = {"rel_l2", "cosine_mean", "cosine_min", "max_abs", "recall_mean", "recall_min",
                                      "density", "flops", "time_ms", "dense_time_ms", "speedup"};
#define N_PIVOTED ((int)(sizeof pivoted / sizeof pivoted[0]))

START_TEST(test_views_pivot)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 123);
    sl_store *st = open_ok(f.db);
    sl_store_run run;
    sl_store_run_init(&run);
    run.git_rev = "0123abc";
    run.host = "h";
    int64_t run_id;
    ck_assert_int_eq(sl_store_run_begin(st, &run, &run_id), SL_STORE_OK);

    for (int trial = 0; trial < 20; trial++) {
        sl_store_result res;
        sl_store_result_init(&res);
        res.run_id = run_id;
        res.method = trial % 2 ? "quest" : "window";
        res.workload = "w";
        res.budget = sl_rng_uniform(&r);
        res.n_q = rand_int(&r, 1, 4096);
        res.n_k = rand_int(&r, 1, 4096);
        res.backend = "cpu";
        sl_store_metric m[N_PIVOTED + 1];
        double want[N_PIVOTED];
        int n_m = 0;
        for (int i = 0; i < N_PIVOTED; i++) {
            want[i] = NAN;
            if (sl_rng_next(&r) % 4 == 0)
                continue; /* not recorded: NULL in the view */
            want[i] = sl_rng_uniform(&r) * 10 + 0.5;
            m[n_m++] = (sl_store_metric){pivoted[i], want[i]};
        }
        m[n_m++] = (sl_store_metric){"something_else", 1.0};
        /* speedup falls back to dense_time_ms / time_ms. */
        if (isnan(want[10]) && !isnan(want[8]) && !isnan(want[9]))
            want[10] = want[9] / want[8];
        int64_t id;
        ck_assert_int_eq(sl_store_result_add(st, &res, m, n_m, &id), SL_STORE_OK);

        sl_store_cell p = cell_int(id);
        rows *q = query(st, "SELECT * FROM v_result WHERE result_id = ?", &p, 1);
        ck_assert_int_eq(q->n_rows, 1);
        for (int i = 0; i < N_PIVOTED; i++) {
            int c = col(q, pivoted[i]);
            if (isnan(want[i]))
                ck_assert_msg(q->type[c] == SL_STORE_NULL, "%s should be NULL", pivoted[i]);
            else
                ck_assert_msg(q->type[c] == SL_STORE_REAL && fabs(q->r[c] - want[i]) <= 1e-12 * fabs(want[i]),
                              "%s: %g != %g", pivoted[i], q->r[c], want[i]);
        }
        expect_text(q, "method", res.method);
        expect_real(q, "budget", res.budget);
        expect_int(q, "n_q", res.n_q);
        expect_int(q, "n_k", res.n_k);
        expect_text(q, "backend", "cpu");
        expect_text(q, "git_rev", "0123abc");
        expect_text(q, "host", "h");
        expect_int(q, "run_id", run_id);
        free(q);
    }
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM v_result"), 20);
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

START_TEST(test_views_frontier)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 6060);
    sl_store *st = open_ok(f.db);
    sl_store_run run;
    sl_store_run_init(&run);
    int64_t run_id;
    ck_assert_int_eq(sl_store_run_begin(st, &run, &run_id), SL_STORE_OK);
    enum { N = 40 };
    double dens[N], err[N];
    int method[N];
    for (int i = 0; i < N; i++) {
        dens[i] = (double)rand_int(&r, 1, 10) / 10;
        err[i] = (double)rand_int(&r, 1, 10) / 10;
        method[i] = (int)rand_int(&r, 0, 1);
        sl_store_result res;
        sl_store_result_init(&res);
        res.run_id = run_id;
        res.method = method[i] ? "a" : "b";
        res.workload = "w";
        res.n_k = 128;
        sl_store_metric m[2] = {{"density", dens[i]}, {"rel_l2", err[i]}};
        ck_assert_int_eq(sl_store_result_add(st, &res, m, 2, NULL), SL_STORE_OK);
    }
    /* A failed result never makes the front. */
    sl_store_result bad;
    sl_store_result_init(&bad);
    bad.run_id = run_id;
    bad.method = "a";
    bad.workload = "w";
    bad.n_k = 128;
    bad.status = "failed";
    sl_store_metric m0[2] = {{"density", 0.0}, {"rel_l2", 0.0}};
    ck_assert_int_eq(sl_store_result_add(st, &bad, m0, 2, NULL), SL_STORE_OK);

    int want = 0;
    for (int i = 0; i < N; i++) {
        int dominated = 0;
        for (int j = 0; j < N && !dominated; j++)
            dominated = j != i && method[j] == method[i] && dens[j] <= dens[i] && err[j] <= err[i] &&
                        (dens[j] < dens[i] || err[j] < err[i]);
        want += !dominated;
    }
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM v_frontier"), want);
    ck_assert_int_eq(query_int(st, "SELECT count(*) FROM v_frontier WHERE status <> 'ok'"), 0);
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

/* ---- queries ------------------------------------------------------------------------------ */

START_TEST(test_query)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 2718);
    sl_store *st = open_ok(f.db);
    int n = (int)rand_int(&r, 10, 60);
    ck_assert_int_eq(sl_store_exec(st, "CREATE TEMP TABLE t (i INTEGER, x REAL, s TEXT, b BLOB, z)"), SL_STORE_OK);
    for (int i = 0; i < n; i++) {
        sl_store_cell p[5] = {cell_int(i), {SL_STORE_REAL, 0, sl_rng_normal(&r), NULL, 0},
                              {SL_STORE_TEXT, 0, 0, "a'b\"c", 5}, {SL_STORE_BLOB, 0, 0, "\0\1\2", 3},
                              {SL_STORE_NULL, 0, 0, NULL, 0}};
        rows *q = query(st, "INSERT INTO t VALUES (?, ?, ?, ?, ?)", p, 5);
        ck_assert_int_eq(q->n_rows, 0);
        ck_assert_int_eq(q->n_cols, 0);
        free(q);
    }
    /* Column names in the header, types of the first row. */
    rows *q = query(st, "SELECT i, x, s, b, z FROM t ORDER BY i;  -- trailing comment\n ; ", NULL, 0);
    ck_assert_int_eq(q->n_rows, n);
    ck_assert_int_eq(q->n_cols, 5);
    ck_assert_str_eq(q->names[0], "i");
    ck_assert_str_eq(q->names[4], "z");
    ck_assert_int_eq(q->type[0], SL_STORE_INT);
    ck_assert_int_eq(q->type[1], SL_STORE_REAL);
    ck_assert_int_eq(q->type[2], SL_STORE_TEXT);
    ck_assert_str_eq(q->s[2], "a'b\"c");
    ck_assert_int_eq(q->type[3], SL_STORE_BLOB);
    ck_assert_int_eq(q->type[4], SL_STORE_NULL);
    free(q);

    /* Stopping early is not an error. */
    int stop = (int)rand_int(&r, 1, n - 1);
    rows *s = calloc(1, sizeof *s);
    s->stop_after = stop;
    ck_assert_int_eq(sl_store_query(st, "SELECT * FROM t", collect, s), SL_STORE_OK);
    ck_assert_int_eq(s->n_rows, stop);
    /* ... and leaves no statement open: a write lock can be taken at once. */
    ck_assert_int_eq(sl_store_begin(st), SL_STORE_OK);
    ck_assert_int_eq(sl_store_rollback(st), SL_STORE_OK);
    /* A query whose header call stops sees no rows. */
    memset(s, 0, sizeof *s);
    s->stop_after = -1;
    ck_assert_int_eq(sl_store_query(st, "SELECT * FROM t", collect, s), SL_STORE_OK);
    free(s);

    /* Header even when no row comes. */
    q = query(st, "SELECT i AS first, s AS second FROM t WHERE i < 0", NULL, 0);
    ck_assert_int_eq(q->n_rows, 0);
    ck_assert_int_eq(q->n_cols, 2);
    ck_assert_str_eq(q->names[1], "second");
    free(q);

    int64_t lim = rand_int(&r, 0, n);
    sl_store_cell p = cell_int(lim);
    q = query(st, "SELECT count(*) FROM t WHERE i < ?", &p, 1);
    ck_assert_int_eq(q->i[0], lim);
    free(q);

    rows dummy;
    memset(&dummy, 0, sizeof dummy);
    ck_assert_int_eq(sl_store_query_params(st, "SELECT ?1, ?2", &p, 1, collect, &dummy), SL_STORE_EARG);
    ck_assert_msg(strstr(sl_store_error(st), "2 parameters, 1 given"), "%s", sl_store_error(st));
    ck_assert_int_eq(sl_store_query(st, "SELECT 1; SELECT 2", collect, &dummy), SL_STORE_EARG);
    ck_assert_int_eq(sl_store_query(st, "  -- nothing\n", collect, &dummy), SL_STORE_EARG);
    ck_assert_int_eq(sl_store_query(st, "SELECT nosuchcolumn FROM t", collect, &dummy), SL_STORE_ESQLITE);
    ck_assert_msg(strstr(sl_store_error(st), "nosuchcolumn") && strstr(sl_store_error(st), "SELECT"), "%s",
                  sl_store_error(st));
    ck_assert_int_eq(sl_store_exec(st, "CREATE TABLE"), SL_STORE_ESQLITE);
    ck_assert_msg(strstr(sl_store_error(st), "sl_store_exec"), "%s", sl_store_error(st));
    /* Long statements are cut short in messages, which stay on one line. */
    char longsql[2048];
    snprintf(longsql, sizeof longsql, "SELECT\n\n%*s nosuch", 1000, "1,");
    ck_assert_int_eq(sl_store_query(st, longsql, collect, &dummy), SL_STORE_ESQLITE);
    ck_assert_ptr_null(strchr(sl_store_error(st), '\n'));
    ck_assert_uint_lt(strlen(sl_store_error(st)), 400);
    sl_store_close(st);
    fx_close(&f);
}
END_TEST

/* ---- status names ------------------------------------------------------------------------ */

START_TEST(test_status_names)
{
    ck_assert_str_eq(sl_store_status_name(SL_STORE_OK), "SL_STORE_OK");
    ck_assert_str_eq(sl_store_status_name(SL_STORE_ESQLITE), "SL_STORE_ESQLITE");
    ck_assert_str_eq(sl_store_status_name(SL_STORE_EINTERNAL), "SL_STORE_EINTERNAL");
    ck_assert_str_eq(sl_store_status_name((sl_store_status)99), "SL_STORE_E?");
}
END_TEST

/* ---- provenance --------------------------------------------------------------------------- */

START_TEST(test_provenance)
{
    fx f;
    fx_open(&f);
    sl_provenance p;
    /* Outside any git checkout: no revision, dirtiness unknown. */
    sl_provenance_collect(&p, f.dir);
    ck_assert_str_eq(p.git_rev, "");
    ck_assert_int_eq(p.git_dirty, -1);
    ck_assert_uint_eq(strlen(p.started), 24);
    ck_assert_int_eq(p.started[23], 'Z');
    ck_assert_ptr_null(p.sparselab_version); /* the store knows no library version */
    char host[256];
    ck_assert_int_eq(gethostname(host, sizeof host), 0);
    ck_assert_str_eq(p.host, host);

    sl_store_run run;
    sl_store_run_init(&run);
    run.host = "given";
    sl_provenance_fill_run(&p, &run);
    ck_assert_str_eq(run.host, "given"); /* callers override */
    ck_assert_ptr_null(run.git_rev);
    ck_assert_int_eq(run.git_dirty, SL_STORE_NULL_INT);
    ck_assert_ptr_eq(run.started, p.started);

    /* A quote in the directory name is passed to git safely. */
    char odd[160];
    snprintf(odd, sizeof odd, "%s/it's here", f.dir);
    ck_assert_int_eq(mkdir(odd, 0700), 0);
    sl_provenance_collect(&p, odd);
    ck_assert_str_eq(p.git_rev, "");
    rmdir(odd);

    /* In a git checkout (when git exists): a 40-digit revision. */
    char repo[96], cmd[600];
    snprintf(repo, sizeof repo, "%s/repo", f.dir);
    snprintf(cmd, sizeof cmd,
             "git init -q '%s' && cd '%s' && echo x > f && git add f && "
             "git -c user.name=t -c user.email=t@t commit -qm m >/dev/null 2>&1",
             repo, repo);
    if (system(cmd) == 0) {
        sl_provenance_collect(&p, repo);
        ck_assert_uint_eq(strlen(p.git_rev), 40);
        ck_assert_int_eq(p.git_dirty, 0);
        snprintf(cmd, sizeof cmd, "echo y >> '%s/f'", repo);
        ck_assert_int_eq(system(cmd), 0);
        sl_provenance_collect(&p, repo);
        ck_assert_int_eq(p.git_dirty, 1);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", repo);
    ck_assert_int_eq(system(cmd), 0);
    fx_close(&f);
}
END_TEST

/* ---- SHA-256 ------------------------------------------------------------------------------- */

START_TEST(test_sha256_vectors)
{
    char hex[65];
    sl_sha256_hex("abc", 3, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sl_sha256_hex(m448, strlen(m448), hex);
    ck_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    sl_sha256_hex("", 0, hex);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    /* One million 'a', fed in uneven pieces. */
    char *a = malloc(1000000);
    ck_assert_ptr_nonnull(a);
    memset(a, 'a', 1000000);
    sl_sha256 c;
    unsigned char d[32];
    sl_sha256_init(&c);
    size_t off = 0, step = 1;
    while (off < 1000000) {
        size_t take = step < 1000000 - off ? step : 1000000 - off;
        sl_sha256_update(&c, a + off, take);
        off += take;
        step = step * 7 % 1009 + 1;
    }
    sl_sha256_final(&c, d);
    static const unsigned char million[32] = {0xcd, 0xc7, 0x6e, 0x5c, 0x99, 0x14, 0xfb, 0x92, 0x81, 0xa1, 0xc7,
                                              0xe2, 0x84, 0xd7, 0x3e, 0x67, 0xf1, 0x80, 0x9a, 0x48, 0xa4, 0x97,
                                              0x20, 0x0e, 0x04, 0x6d, 0x39, 0xcc, 0xc7, 0x11, 0x2c, 0xd0};
    ck_assert_mem_eq(d, million, 32);
    sl_sha256_hex(a, 1000000, hex);
    ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}
END_TEST

START_TEST(test_sha256_streaming_and_files)
{
    fx f;
    fx_open(&f);
    sl_rng r;
    sl_rng_seed(&r, 8080);
    for (int trial = 0; trial < 20; trial++) {
        /* Lengths around the 55/56/64-byte padding edges and beyond. */
        size_t n = trial < 10 ? (size_t)(50 + trial * 2) : (size_t)rand_int(&r, 0, 70000);
        unsigned char *buf = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            buf[i] = (unsigned char)sl_rng_next(&r);
        char one[65], two[65], file[65];
        sl_sha256_hex(buf, n, one);
        sl_sha256 c;
        unsigned char d[32];
        sl_sha256_init(&c);
        size_t off = 0;
        while (off < n) {
            size_t take = (size_t)rand_int(&r, 0, 200);
            if (take > n - off)
                take = n - off;
            sl_sha256_update(&c, buf + off, take);
            off += take;
        }
        sl_sha256_final(&c, d);
        for (int i = 0; i < 32; i++)
            snprintf(two + 2 * i, 3, "%02x", d[i]);
        ck_assert_str_eq(one, two);

        char path[160];
        snprintf(path, sizeof path, "%s/blob", f.dir);
        FILE *fp = fopen(path, "wb");
        if (n)
            ck_assert_uint_eq(fwrite(buf, 1, n, fp), n);
        fclose(fp);
        char err[256];
        ck_assert_int_eq(sl_sha256_file_hex(path, file, err, sizeof err), SL_STORE_OK);
        ck_assert_str_eq(file, one);
        free(buf);
    }
    char path[160], err[256], hex[65];
    snprintf(path, sizeof path, "%s/missing", f.dir);
    ck_assert_int_eq(sl_sha256_file_hex(path, hex, err, sizeof err), SL_STORE_EIO);
    ck_assert_msg(strstr(err, path), "%s", err);
    fx_close(&f);
}
END_TEST

static Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("open");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_open_fresh);
    tcase_add_test(tc, test_corrupt_schema_message_printable);
    tcase_add_test(tc, test_schema_file_matches_migrations);
    tcase_add_test(tc, test_reopen_keeps_data);
    tcase_add_test(tc, test_two_openers);
    tcase_add_test(tc, test_racing_openers);
    tcase_add_test(tc, test_refuse_not_sqlite);
    tcase_add_test(tc, test_refuse_newer_and_foreign);
    suite_add_tcase(s, tc);

    tc = tcase_create("records");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_run_roundtrip);
    tcase_add_test(tc, test_result_roundtrip);
    tcase_add_test(tc, test_transactions);
    tcase_add_test(tc, test_views_pivot);
    tcase_add_test(tc, test_views_frontier);
    tcase_add_test(tc, test_query);
    tcase_add_test(tc, test_status_names);
    tcase_add_test(tc, test_provenance);
    suite_add_tcase(s, tc);

    tc = tcase_create("sha256");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sha256_vectors);
    tcase_add_test(tc, test_sha256_streaming_and_files);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(store_suite()); }
