-- schema.sql — the full current schema of a sparselab store (after migration 003), for reading.
-- The store builds databases from migrations/NNN_*.sql, never from this file; tests/test_store.c
-- checks that this file and the migrations give the same schema. Views live in views.sql.
-- When a migration is added, this file becomes the schema after it, with its number below.

PRAGMA application_id = 1397506370;  -- 0x534C4142, "SLAB": marks a sparselab store

-- One execution of a script (an experiment, a sweep, a benchmark).
CREATE TABLE run (
    id                INTEGER PRIMARY KEY,
    started           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),  -- UTC ISO-8601
    finished          TEXT,
    status            TEXT NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'ok', 'failed', 'interrupted')),
    script            TEXT,
    script_sha256     TEXT,
    argv              TEXT CHECK (argv IS NULL OR json_valid(argv)),          -- JSON array of strings
    git_rev           TEXT,
    git_dirty         INTEGER CHECK (git_dirty IS NULL OR git_dirty IN (0, 1)),
    host              TEXT,
    cpu               TEXT,
    gpu               TEXT,
    build_flags       TEXT,
    seed              INTEGER,
    config_json       TEXT CHECK (config_json IS NULL OR json_valid(config_json)),
    sparselab_version TEXT
) STRICT;

-- One point: a method with its parameters on one workload at one size (and layer/head).
-- point_key is a stable hash of everything that defines the point (see lua/l_store.c);
-- sweeps skip points whose key already has an 'ok' result.
CREATE TABLE result (
    id                   INTEGER PRIMARY KEY,
    run_id               INTEGER NOT NULL REFERENCES run(id) ON DELETE CASCADE,
    method               TEXT NOT NULL,
    params_json          TEXT CHECK (params_json IS NULL OR json_valid(params_json)),
    workload             TEXT,
    workload_params_json TEXT CHECK (workload_params_json IS NULL OR json_valid(workload_params_json)),
    phase                TEXT,
    layer                INTEGER,
    head                 INTEGER,
    n_q                  INTEGER,
    n_k                  INTEGER,
    head_dim             INTEGER,
    heads                INTEGER,
    kv_heads             INTEGER,
    backend              TEXT,
    budget               REAL,
    point_key            TEXT,
    status               TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'failed')),
    error                TEXT,
    created              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX result_run_id ON result(run_id);
CREATE INDEX result_method ON result(method);
CREATE INDEX result_point_key ON result(point_key);

-- Metrics in long form, so a new metric needs no migration. A NaN value is stored as NULL
-- (SQLite has no NaN); infinities are stored as they are.
CREATE TABLE metric (
    result_id INTEGER NOT NULL REFERENCES result(id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    value     REAL,
    PRIMARY KEY (result_id, name)
) STRICT, WITHOUT ROWID;

CREATE INDEX metric_name ON metric(name);

-- What the store itself keeps (e.g. the hash of the views it last created).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
) STRICT, WITHOUT ROWID;

-- Fitted scaling laws (migration 002).
CREATE TABLE fit (
    id                INTEGER PRIMARY KEY,
    created           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),  -- UTC ISO-8601
    run_id            INTEGER REFERENCES run(id) ON DELETE SET NULL,  -- the run that made it, if any
    law               TEXT NOT NULL,                                  -- sparse_frontier, power, loglinear
    link              TEXT NOT NULL,                                  -- identity or logit
    selection_json    TEXT NOT NULL CHECK (json_valid(selection_json)),  -- where, columns, heldout, ...
    selection_sql     TEXT,                                           -- the SELECT that read the points
    data_sha256       TEXT,                                           -- hash of the points as read
    n_points          INTEGER NOT NULL,                               -- points fitted (the training part)
    params_json       TEXT NOT NULL CHECK (json_valid(params_json)),  -- {"name": estimate}
    se_json           TEXT CHECK (se_json IS NULL OR json_valid(se_json)),        -- asymptotic standard errors
    ci_json           TEXT CHECK (ci_json IS NULL OR json_valid(ci_json)),        -- {"name": [lo, hi]}
    ci_level          REAL,
    n_bootstrap       INTEGER,                                        -- resamples that entered the CIs
    seed              INTEGER,
    r2                REAL,                                           -- in-sample, on the link scale
    rmse              REAL,
    heldout_json      TEXT CHECK (heldout_json IS NULL OR json_valid(heldout_json)),  -- axis, cutoff, n, rmse, r2 ...
    solver_json       TEXT CHECK (solver_json IS NULL OR json_valid(solver_json)),    -- name, status, iterations
    sparselab_version TEXT
) STRICT;

CREATE INDEX fit_law ON fit(law);

-- Points claimed by a running sweep (migration 003): a point is run and recorded by one sweep at a
-- time; the claim goes when its result is recorded, or when the sweep ends; a claim whose owner
-- process is gone is taken over.
CREATE TABLE claim (
    point_key TEXT PRIMARY KEY,
    owner     TEXT NOT NULL,            -- "HOST PID START" of the sweep process (sl.process_token)
    run_id    INTEGER,                  -- the claiming run, once it has one (informative)
    beat      REAL NOT NULL             -- unix seconds of the owner's last commit (a heartbeat)
) STRICT, WITHOUT ROWID;

CREATE INDEX claim_owner ON claim(owner);

PRAGMA user_version = 3;
