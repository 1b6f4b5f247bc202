-- views.sql — wide views over the long-form metric table; recreated by the store on open whenever
-- this file changes (its hash is kept in meta), so editing a view needs no migration.
--
-- v_result: one row per result with its run's provenance and the common metrics as columns.
--   Each metric column is a lookup on metric's primary key (result_id, name), so a WHERE on
--   result columns stays cheap. A metric that was not recorded, or was NaN, reads NULL.
--   speedup is the recorded 'speedup' metric, else dense_time_ms / time_ms when both exist.
--   estimate_ms + execute_ms split a dynamic method's time (estimate_ms = 0 for static ones);
--   kv_bytes and the budget targets (target_<name>, sl.budget) are defined in budget.lua.
-- v_frontier_bucket: the best (lowest) rel_l2 and the best recall of each method per
--   workload, size and density bucket of width 0.05 (bucket = the bucket's upper edge).
-- v_pareto: accuracy against cost across methods: the ok results of one point (workload,
--   sizes, phase, layer, head, backend) that no other result beats on both rel_l2 and FLOPs,
--   where FLOPs are the total paid: 'flops' (executor, plus correction FLOPs for a corrected
--   method) + 'estimator_flops' (the estimate of a dynamic method; 0 or absent for static ones).
-- v_break_even: per method, workload and sequence length, the largest density at which the
--   method's measured time still beats dense on this machine (speedup >= 1), and how many
--   results there were; a method never faster than dense at that length has NULL.
-- v_frontier: the ok results of v_result that no other result of the same method at the same
--   point (workload, sizes, phase, layer, head, backend) beats on both density and rel_l2 —
--   each method's error-versus-density Pareto front.

DROP VIEW IF EXISTS v_break_even;
DROP VIEW IF EXISTS v_pareto;
DROP VIEW IF EXISTS v_frontier_bucket;
DROP VIEW IF EXISTS v_frontier;
DROP VIEW IF EXISTS v_result;

CREATE VIEW v_result AS
SELECT
    r.id                   AS result_id,
    r.run_id               AS run_id,
    r.method               AS method,
    r.params_json          AS params_json,
    r.workload             AS workload,
    r.workload_params_json AS workload_params_json,
    r.phase                AS phase,
    r.layer                AS layer,
    r.head                 AS head,
    r.n_q                  AS n_q,
    r.n_k                  AS n_k,
    r.head_dim             AS head_dim,
    r.heads                AS heads,
    r.kv_heads             AS kv_heads,
    r.backend              AS backend,
    r.budget               AS budget,
    r.point_key            AS point_key,
    r.status               AS status,
    r.error                AS error,
    r.created              AS created,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'rel_l2')        AS rel_l2,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'cosine_mean')   AS cosine_mean,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'cosine_min')    AS cosine_min,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'max_abs')       AS max_abs,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'recall_mean')   AS recall_mean,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'recall_min')    AS recall_min,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'density')       AS density,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'flops')         AS flops,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'time_ms')       AS time_ms,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'dense_time_ms') AS dense_time_ms,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'flops_ratio')   AS flops_ratio,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'estimator_flops') AS estimator_flops,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'density_semantic') AS density_semantic,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'estimate_ms')   AS estimate_ms,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'execute_ms')    AS execute_ms,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'kv_bytes')      AS kv_bytes,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'target_density') AS target_density,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'target_flops')  AS target_flops,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'target_kv_bytes') AS target_kv_bytes,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'ppl')           AS ppl,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'kl')            AS kl,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'top1')          AS top1,
    (SELECT value FROM metric WHERE result_id = r.id AND name = 'score')         AS score,
    coalesce(
        (SELECT value FROM metric WHERE result_id = r.id AND name = 'speedup'),
        (SELECT d.value / t.value FROM metric AS d, metric AS t
          WHERE d.result_id = r.id AND d.name = 'dense_time_ms'
            AND t.result_id = r.id AND t.name = 'time_ms' AND t.value > 0)) AS speedup,
    run.started            AS run_started,
    run.status             AS run_status,
    run.script             AS script,
    run.seed               AS seed,
    run.git_rev            AS git_rev,
    run.git_dirty          AS git_dirty,
    run.host               AS host,
    run.cpu                AS cpu,
    run.gpu                AS gpu,
    run.build_flags        AS build_flags,
    run.sparselab_version  AS sparselab_version
FROM result AS r
JOIN run ON run.id = r.run_id;

CREATE VIEW v_frontier AS
SELECT a.*
FROM v_result AS a
WHERE a.status = 'ok' AND a.density IS NOT NULL AND a.rel_l2 IS NOT NULL
  AND NOT EXISTS (
    SELECT 1 FROM v_result AS b
    WHERE b.status = 'ok' AND b.result_id <> a.result_id
      AND b.method = a.method
      AND b.workload IS a.workload AND b.workload_params_json IS a.workload_params_json
      AND b.phase IS a.phase AND b.layer IS a.layer AND b.head IS a.head
      AND b.n_q IS a.n_q AND b.n_k IS a.n_k AND b.head_dim IS a.head_dim
      AND b.heads IS a.heads AND b.kv_heads IS a.kv_heads AND b.backend IS a.backend
      AND b.density <= a.density AND b.rel_l2 <= a.rel_l2
      AND (b.density < a.density OR b.rel_l2 < a.rel_l2));

CREATE VIEW v_frontier_bucket AS
SELECT method, workload, n_q, n_k, head_dim, heads, kv_heads, backend,
       min(1.0, (CAST(density / 0.05 AS INTEGER) + 1) * 0.05) AS density_bucket,
       count(*) AS n, min(rel_l2) AS best_rel_l2, max(recall_mean) AS best_recall,
       max(cosine_mean) AS best_cosine
FROM v_result
WHERE status = 'ok' AND density IS NOT NULL
GROUP BY method, workload, n_q, n_k, head_dim, heads, kv_heads, backend, density_bucket;

CREATE VIEW v_pareto AS
WITH c AS (
    SELECT *, coalesce(flops, 0) + coalesce(estimator_flops, 0) AS cost
    FROM v_result WHERE status = 'ok' AND rel_l2 IS NOT NULL AND (flops IS NOT NULL OR estimator_flops IS NOT NULL))
SELECT a.*
FROM c AS a
WHERE NOT EXISTS (
    SELECT 1 FROM c AS b
    WHERE b.result_id <> a.result_id
      AND b.workload IS a.workload AND b.workload_params_json IS a.workload_params_json
      AND b.phase IS a.phase AND b.layer IS a.layer AND b.head IS a.head
      AND b.n_q IS a.n_q AND b.n_k IS a.n_k AND b.head_dim IS a.head_dim
      AND b.heads IS a.heads AND b.kv_heads IS a.kv_heads AND b.backend IS a.backend
      AND b.cost <= a.cost AND b.rel_l2 <= a.rel_l2
      AND (b.cost < a.cost OR b.rel_l2 < a.rel_l2));

CREATE VIEW v_break_even AS
SELECT method, workload, n_k, head_dim, heads, backend,
       count(*) AS n,
       max(CASE WHEN speedup >= 1 THEN density END) AS break_even_density,
       max(speedup) AS best_speedup
FROM v_result
WHERE status = 'ok' AND speedup IS NOT NULL AND density IS NOT NULL AND method <> 'dense'
GROUP BY method, workload, n_k, head_dim, heads, backend;
