-- demo.lua — Question: on an input with attention sinks, local structure and
-- a few long-range "needles", how much accuracy do sliding_window and
-- streaming_llm keep at equal window budgets, and what do they cost?
-- Cards: sliding_window, streaming_llm (dense is the reference).
-- Input: a seeded synthetic workload (sl.synthetic: sinks + locality +
-- needles; 8 query heads, 2 KV heads, 2048 tokens, head_dim 64). The real
-- TinyStories Q/K/V come with the model runner (experiments/data/ holds the model).
-- Writes every result to results.db (or the path given as the first
-- argument) and prints the comparison table queried back from the database.
local sl = require "sparselab"

local db_path = arg and arg[1] or "results.db"
local workload = {heads = 8, kv_heads = 2, n = 2048, d = 64, seed = 1}
local budgets = {64, 128, 256, 512, 1024}

local db, run_id = sl.experiment{db = db_path, seed = workload.seed,
  config = {workload = workload, budgets = budgets, methods = {"dense", "sliding_window", "streaming_llm"}}}

local q, k, v = sl.synthetic(workload)
local prob = sl.problem{q = q, k = k, v = v, causal = true, workload = "synthetic", workload_params = workload}

db:begin()
sl.record(db, run_id, sl.eval("dense", prob, {reps = 3}))
for _, w in ipairs(budgets) do
  sl.record(db, run_id, sl.eval("sliding_window", prob, {budget = w, reps = 3}))
  sl.record(db, run_id, sl.eval("streaming_llm", prob, {budget = w, params = {n_init = 4}, reps = 3}))
end
db:commit()
db:finish_run(run_id, "ok")

local rows = db:query([[
  SELECT method, budget AS window, density, rel_l2, cosine_min, recall_mean, recall_min,
         time_ms, speedup
    FROM v_result WHERE run_id = ? ORDER BY method = 'dense' DESC, budget, method]], run_id)
print(string.format("run %d: %s, %d x %d tokens x %d (GQA %d:%d); recorded in %s", run_id, "synthetic sink/local/needle",
  workload.heads, workload.n, workload.d, workload.heads, workload.kv_heads, db_path))
print(sl.report.table(rows, rows.columns))
db:close()
