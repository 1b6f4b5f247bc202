-- 002_fit.sql — fitted scaling laws (`sparselab fit`, lua/sparselab/fit.lua and fit_db.lua):
-- one row per fit with the data selection it was fitted on, its estimates, standard errors,
-- bootstrap confidence intervals, in-sample fit and held-out extrapolation error.

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
