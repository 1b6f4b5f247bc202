-- nonsoftmax.lua — Question: how far are the non-softmax attention functions
-- (issue 16) from softmax attention on the same Q/K/V, how sparse are their
-- weights, and what do they cost? Kernel-level behaviour only: every one of
-- these methods needs a model trained with it (the shipped model is
-- softmax-trained), so the output error against softmax is a property of the
-- function on these inputs, not the method's quality. Recall through L does
-- not apply to non-softmax outputs: rel_l2 and cosine against softmax dense
-- and the density (support, kept weights) are reported instead.
-- Cards: entmax (α 1.5 and 2, sort-based), asr_sparse_monotonic (per-head α;
-- monotonic mode), rela, hsr_attention (ReLU^α), fast_fastmax, tra,
-- gated_attention.
-- Inputs: real Q/K/V of the shipped TinyStories 260K model (every layer of
-- two texts), and the structured synthetic workload at n = 1024 (8/2 heads,
-- d 64).
--   sparselab run experiments/nonsoftmax.lua [DB]
local sl = require "sparselab"

local db_path = arg and arg[1] or "results.db"
local data = "experiments/data/tinystories260k"
local texts = {"01_red_kite", "06_little_seed"}
local runs = {
  {"entmax", {alpha = 1.5}}, {"entmax", {alpha = 2}}, {"entmax", {alpha = 1.25, algo = "bisect"}},
  {"asr_sparse_monotonic", {}}, {"asr_sparse_monotonic", {mode = "monotonic", chunk = 16}},
  {"rela", {stabilise = "none"}}, {"hsr_attention", {activation = "relu", alpha = 2, relu_norm = 1, tau = 0}},
  {"fast_fastmax", {}}, {"tra", {}}, {"gated_attention", {}}, {"gated_attention", {eps = 0.5}},
}
local wl = {n = 1024, heads = 8, kv_heads = 2, d = 64, seed = 3}
local db, run_id = sl.experiment{db = db_path, seed = 1, config = {texts = texts, synthetic = wl}}
local model = sl.model.load(data .. "/model.bin")
local problems = {}
for _, name in ipairs(texts) do
  local f = assert(io.open(data .. "/texts/" .. name .. ".txt", "rb"))
  local text = f:read("a")
  f:close()
  for li, t in ipairs(model:capture{text = text}) do
    problems[#problems + 1] = sl.problem{q = t.q, k = t.k, v = t.v, workload = "tinystories:" .. name,
      workload_params = {model = "stories260K", text = name}, layer = li - 1}
  end
end
do
  local q, k, v = sl.synthetic(wl)
  problems[#problems + 1] = sl.problem{q = q, k = k, v = v, workload = "synthetic", workload_params = wl}
end
db:begin()
for _, prob in ipairs(problems) do
  for _, rp in ipairs(runs) do
    local r = sl.eval(rp[1], prob, {params = rp[2]})
    sl.record(db, run_id, r)
  end
end
db:commit()
db:finish_run(run_id, "ok")
local rows = db:query([[
  SELECT CASE WHEN workload LIKE 'tinystories:%' THEN 'tinystories' ELSE 'synthetic' END AS inputs, method,
         params_json AS params, count(*) AS n, round(avg(density), 4) AS density, round(avg(rel_l2), 4) AS rel_l2,
         round(avg(cosine_mean), 4) AS cosine, round(avg(recall_mean), 4) AS recall,
         round(avg(time_ms), 3) AS ms, round(avg(dense_time_ms), 3) AS dense_ms, avg(flops) AS flops
    FROM v_result WHERE run_id = ? GROUP BY inputs, method, params_json ORDER BY inputs, method, params_json]], run_id)
print("Non-softmax attention vs softmax dense (kernel level; recall only where the output is a softmax over a subset)")
print(sl.report.table(rows, rows.columns))
print(string.format("run %d recorded in %s", run_id, db_path))
db:close()
