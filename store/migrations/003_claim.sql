-- 003_claim.sql — points claimed by a running sweep (lua/sparselab/sweep.lua), so that two sweeps,
-- shards or resumes of one config on one database never run (and record) a point twice. A sweep
-- claims the points it will run, in the same write transaction in which it reads what is recorded,
-- deletes a point's claim in the transaction that records its result, and its remaining claims
-- when it ends. A claim whose owner process is gone (killed with SIGKILL) is taken over.

CREATE TABLE claim (
    point_key TEXT PRIMARY KEY,
    owner     TEXT NOT NULL,            -- "HOST PID START" of the sweep process (sl.process_token)
    run_id    INTEGER,                  -- the claiming run, once it has one (informative)
    beat      REAL NOT NULL             -- unix seconds of the owner's last commit (a heartbeat)
) STRICT, WITHOUT ROWID;

CREATE INDEX claim_owner ON claim(owner);
