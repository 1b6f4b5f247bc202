-- viz_db.lua — a small results database for the viz tests (test_viz.lua, test_viz.sh):
-- sliding_window and streaming_llm at matched densities 0.1, 0.2, 0.4 on two synthetic
-- lengths, dense at each length, a target no static method reaches recorded as failed, and a
-- stored power-law fit of rel_l2 against compression per method.
--   sparselab run tests/cli/viz_db.lua DB
local sl = require "sparselab"
local path = assert(arg and arg[1], "usage: viz_db.lua DB")
local db, run = sl.experiment{db = path, seed = 1}
for _, n in ipairs{256, 512} do
  local q, k, v = sl.synthetic{heads = 2, kv_heads = 1, n = n, d = 16, seed = 3}
  local prob = sl.problem{q = q, k = k, v = v, workload = "synthetic", workload_params = {n = n}}
  sl.record(db, run, sl.eval("dense", prob, {}))
  for _, id in ipairs{"sliding_window", "streaming_llm"} do
    local params = {bq = 16, bk = 16}
    for _, d in ipairs{0.1, 0.2, 0.4} do
      local b = sl.budget.match{method = id, prob = prob, target = "density", value = d, params = params}
      local r = sl.eval(id, prob, {budget = b.value, params = params})
      sl.budget.metrics(b, r.metrics)
      sl.record(db, run, r)
    end
  end
  -- a density below every setting of streaming_llm's knob: a failed row with the reason
  db:record{run_id = run, method = "streaming_llm", params = {}, workload = "synthetic",
    workload_params = {n = n}, n_q = n, n_k = n, heads = 2, kv_heads = 1, head_dim = 16, backend = "cpu",
    status = "failed", error = "budget.match: streaming_llm cannot go down to density 0.001",
    metrics = {target_density = 0.001}}
end
db:finish_run(run, "ok")
db:close()
local cli = require "sparselab.cli"
for _, id in ipairs{"sliding_window", "streaming_llm"} do
  cli.main{"fit", path, "--law", "power", "--no-offset", "--y", "rel_l2", "--where",
    string.format("method = '%s'", id), "--bootstrap", "40", "--seed", "1"}
end
