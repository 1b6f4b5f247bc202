-- demo.lua — Question: at equal window budgets, how much of dense attention
-- do sliding_window and streaming_llm keep, on real attention inputs and at
-- the model level, and what do they cost?
-- Cards: sliding_window, streaming_llm (dense is the reference).
-- Inputs: (1) real Q/K/V captured from the shipped TinyStories 260K model
-- (experiments/data/tinystories260k: 5 layers, 8 query / 4 KV heads,
-- head_dim 8) on two shipped texts; (2) the same model's perplexity and KL
-- to dense with every layer sparse; (3) a seeded synthetic workload at 2048
-- tokens (sinks + locality + needles, 8/2 heads, head_dim 64) for cost.
-- Every result goes to results.db (or the path given as the first argument);
-- the tables are queried back from the database.
local sl = require "sparselab"

local db_path = arg and arg[1] or "results.db"
local data = "experiments/data/tinystories260k"
local texts = {"01_red_kite", "06_little_seed"}
local windows = {16, 32, 64, 128}
local methods = {"sliding_window", "streaming_llm"}
local function params_of(id) return id == "streaming_llm" and {n_init = 4, bq = 16, bk = 16} or {bq = 16, bk = 16} end

local db, run_id = sl.experiment{db = db_path, seed = 1,
  config = {texts = texts, windows = windows, methods = methods, synthetic = {n = 2048, heads = 8, kv_heads = 2}}}
local model = sl.model.load(data .. "/model.bin")

db:begin()
-- (1) kernel level on real Q/K/V, every layer of every text
for _, name in ipairs(texts) do
  local f = assert(io.open(data .. "/texts/" .. name .. ".txt", "rb"))
  local text = f:read("a")
  f:close()
  for layer, t in ipairs(model:capture{text = text}) do
    local prob = sl.problem{q = t.q, k = t.k, v = t.v, workload = "tinystories:" .. name,
      workload_params = {model = "stories260K", text = name}, layer = layer - 1}
    for _, id in ipairs(methods) do
      for _, w in ipairs(windows) do
        sl.record(db, run_id, sl.eval(id, prob, {budget = w, params = params_of(id)}))
      end
    end
  end
  -- (2) model level: every layer sparse, perplexity and KL against dense
  for _, id in ipairs(methods) do
    for _, w in ipairs(windows) do
      local r, tokens = model:evaluate{text = text, attention = {method = id, budget = w, params = params_of(id)}}
      local p = sl.registry.resolve(sl.methods.get(id), params_of(id), w)
      db:record{run_id = run_id, method = id, params = p, workload = "model:" .. name, phase = "prefill",
        n_q = #tokens, n_k = #tokens, heads = model.cfg.n_heads, kv_heads = model.cfg.n_kv_heads,
        head_dim = model.cfg.head_dim, backend = "cpu", budget = w,
        metrics = {ppl = r.ppl, ppl_dense = r.ppl_dense, kl = r.kl, top1 = r.top1}}
    end
  end
end
-- (3) cost at 2048 tokens on the synthetic workload
local wl = {heads = 8, kv_heads = 2, n = 2048, d = 64, seed = 1}
local q, k, v = sl.synthetic(wl)
local prob = sl.problem{q = q, k = k, v = v, workload = "synthetic", workload_params = wl}
for _, id in ipairs(methods) do
  for _, w in ipairs{128, 512} do
    sl.record(db, run_id, sl.eval(id, prob, {budget = w, params = {n_init = id == "streaming_llm" and 4 or nil},
      reps = 3}))
  end
end
db:commit()
db:finish_run(run_id, "ok")

local function show(title, sql)
  local rows = db:query(sql, run_id)
  print(title)
  print(sl.report.table(rows, rows.columns))
  print()
end
show("Real Q/K/V (TinyStories 260K, 2 texts x 5 layers, mean over layers): fidelity vs dense", [[
  SELECT method, budget AS window, round(avg(density), 4) AS density, avg(rel_l2) AS rel_l2,
         avg(cosine_mean) AS cosine, avg(recall_mean) AS recall, min(recall_min) AS recall_min
    FROM v_result WHERE run_id = ? AND workload LIKE 'tinystories:%'
   GROUP BY method, budget ORDER BY budget, method]])
show("Model level (every layer sparse): perplexity and KL(dense || sparse), mean over the texts", [[
  SELECT r.method, r.budget AS window,
         avg((SELECT value FROM metric WHERE result_id = r.id AND name = 'ppl')) AS ppl,
         avg((SELECT value FROM metric WHERE result_id = r.id AND name = 'ppl_dense')) AS ppl_dense,
         avg((SELECT value FROM metric WHERE result_id = r.id AND name = 'kl')) AS kl,
         avg((SELECT value FROM metric WHERE result_id = r.id AND name = 'top1')) AS top1_agree
    FROM result r WHERE r.run_id = ? AND r.workload LIKE 'model:%'
   GROUP BY r.method, r.budget ORDER BY r.budget, r.method]])
show("Cost at 2048 tokens (synthetic sinks/locality/needles, 8x2048x64, GQA 8:2), medians of 3", [[
  SELECT method, budget AS window, density, rel_l2, recall_mean, time_ms, dense_time_ms, speedup
    FROM v_result WHERE run_id = ? AND workload = 'synthetic' ORDER BY budget, method]])
print(string.format("run %d recorded in %s (sparselab query %s \"SELECT * FROM v_result\")", run_id, db_path, db_path))
db:close()
