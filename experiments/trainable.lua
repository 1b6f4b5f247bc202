-- trainable.lua — Question: at the same executed density, how much of dense
-- attention do the trainable-architecture methods keep with their
-- training-free stand-in, with parameters fitted here on other texts, and how
-- do they compare with the best training-free prefill method at that
-- density? (How much of the gain does the learned part carry?)
-- Cards: nsa, fsa (same numbers as nsa by construction; left out), sparsek,
-- routing_transformer (fittable: gates by Adam, scores by ridge, centroids by
-- spherical k-means), moba (parameter-free), dma
-- (stand-in only: not fitted here); issue 14's second half: mosa (router by
-- ridge) and dsv (closed-form low-rank predictor) fitted; sea, sparsifiner
-- (its fit needs one N for all texts and does not beat its stand-in),
-- spark_transformer, hysparse (its stand-in is an oracle),
-- nsa_latent_alternating (a global layer, no latent) and localist_llm with
-- their stand-ins; the training-free prefill methods of the
-- registry (family "*-estimate", prefill or both; --quick: a shortlist) as the
-- comparison, the best one per input and density reported.
-- Inputs: Q/K/V captured from the shipped TinyStories 260K model (8 query / 4
-- KV heads, head_dim 8, a few hundred tokens): parameters are fitted per
-- layer on the fitting texts and evaluated on held-out texts only. The
-- synthetic workload is not used for fitting: its heads are redrawn with
-- every seed, so parameters fitted on one seed have nothing to transfer to
-- another (stand-ins and parameter-free methods only there).
-- Matching: sl.budget.match on density (nearest, tol 0.05, at most 20 steps);
-- target and achieved density are recorded. Every result carries its
-- params_source (stand-in name or the SHA-256 of the fitted file) in its
-- params; the tables are read back from the database. The fitted files are
-- written beside the database as DB.<method>_layer<L>.safetensors (their
-- SHA-256 is the params_source of the fitted results).
--   sparselab run experiments/trainable.lua [DB] [--quick]
local sl = require "sparselab"

local db_path, quick = "results.db", false
for _, a in ipairs(arg or {}) do
  if a == "--quick" then quick = true
  elseif a:sub(1, 2) == "--" then sl.fail("trainable: unknown option %s (expected --quick)", a)
  else db_path = a end
end

local DENSITIES = quick and {0.3} or {0.2, 0.35}
local data = "experiments/data/tinystories260k"
local fit_texts = quick and {"01_red_kite", "02_lost_mitten"} or {"01_red_kite", "02_lost_mitten", "03_brave_turtle", "04_cake_for_mom"}
local held_texts = quick and {"07_toy_shop"} or {"06_little_seed", "07_toy_shop", "08_rainy_day"}
local layers = quick and {2} or {1, 3}
local SMALL = {
  nsa = {bs = 16, l = 8, s = 4, window = 16, n = 4}, -- n: the fitting point; matching sets it per density
  sparsek = {window = 16},
  moba = {block = 16},
  dma = {},
  routing_transformer = {w = 64},
  -- issue 14, second half
  mosa = {},
  dsv = {rank = 2},
  sea = {t_m = 32},
  sparsifiner = {},
  spark_transformer = {cap = 0},
  hysparse = {block = 16, window = 16},
  nsa_latent_alternating = {bs = 16, l = 8, s = 4, window = 16, layer = 0},
  localist_llm = {block = 16},
}
local FITTED = {"nsa", "sparsek", "routing_transformer", "mosa", "dsv"}
local STANDIN_ONLY = {"moba", "dma", "sea", "sparsifiner", "spark_transformer", "hysparse", "nsa_latent_alternating",
  "localist_llm"}
local free = quick and {"xattention", "flexprefill", "minference_block_sparse"} or require("sparselab.bench_estimators").ids()

local db, run_id = sl.experiment{db = db_path, seed = 1, config = {densities = DENSITIES, fit_texts = fit_texts,
  held_texts = held_texts, layers = layers, params = SMALL, free = free, quick = quick}}

local model = sl.model.load(data .. "/model.bin")
local function capture(name)
  local f = assert(io.open(data .. "/texts/" .. name .. ".txt", "rb"))
  local text = f:read("a")
  f:close()
  return model:capture{text = text}
end
local fit_caps, held_caps = {}, {}
for i, name in ipairs(fit_texts) do fit_caps[i] = capture(name) end
for i, name in ipairs(held_texts) do held_caps[i] = {name = name, layers = capture(name)} end

local function with(t, extra)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- one matched evaluation, recorded; failures recorded with their reason
local function point(m, prob, params, rho, label)
  local qs, ks = prob.q:shape(), prob.k:shape()
  local ok, err = pcall(function()
    local match = sl.budget.match{method = m, prob = prob, target = "density", value = rho, params = params,
      side = "nearest", tol = 0.05, max_steps = 20}
    local r = sl.eval(m, prob, {params = match.params})
    sl.budget.metrics(match, r.metrics)
    r.workload_params = with(prob.workload_params, {params = label})
    sl.record(db, run_id, r)
  end)
  if not ok then
    local p = {}
    for k, v in pairs(params) do p[k] = v end
    p["@target"] = {density = rho}
    db:record{run_id = run_id, method = m.id, params = p, workload = prob.workload,
      workload_params = with(prob.workload_params, {params = label}), phase = "prefill",
      layer = prob.layer, n_q = qs[2], n_k = ks[2], head_dim = qs[3], heads = qs[1], kv_heads = ks[1],
      backend = prob.backend, status = "failed", error = tostring(err), metrics = {target_density = rho}}
  end
  collectgarbage()
end

for _, layer in ipairs(layers) do
  io.stderr:write(string.format("trainable: layer %d\n", layer))
  -- fit each fittable method on the fitting texts of this layer
  local files = {}
  for _, id in ipairs(FITTED) do
    local m = sl.methods.get(id)
    local train = {}
    for i, cap in ipairs(fit_caps) do
      local t = cap[layer + 1]
      train[i] = sl.problem{q = t.q, k = t.k, v = t.v}
    end
    local ws, rep = m.fit(train, {params = sl.registry.resolve(m, SMALL[id]), steps = quick and 40 or 120})
    files[id] = string.format("%s.%s_layer%d.safetensors", db_path, id, layer)
    sl.save(files[id], ws)
    io.stderr:write(string.format("  fitted %s: %s, loss %.5g -> %.5g\n", id, rep.optimiser, rep.loss_before, rep.loss_after))
  end
  db:begin()
  for _, held in ipairs(held_caps) do
    local t = held.layers[layer + 1]
    local prob = sl.problem{q = t.q, k = t.k, v = t.v, workload = "tinystories:" .. held.name, layer = layer,
      workload_params = {model = "stories260K", text = held.name}}
    for _, rho in ipairs(DENSITIES) do
      for _, id in ipairs(FITTED) do
        local m = sl.methods.get(id)
        point(m, prob, SMALL[id], rho, "standin")
        point(m, prob, with(SMALL[id], {weights = files[id]}), rho, "fitted")
      end
      for _, id in ipairs(STANDIN_ONLY) do point(sl.methods.get(id), prob, SMALL[id], rho, "standin") end
      for _, id in ipairs(free) do
        local m = sl.methods.get(id)
        point(m, prob, (m.params.bq and m.params.bk) and {bq = 16, bk = 16} or {}, rho, "training-free")
      end
    end
  end
  db:commit()
end
db:finish_run(run_id, "ok")

local function show(title, sql)
  local rows = db:query(sql, run_id)
  print(title)
  print(#rows > 0 and sl.report.table(rows, rows.columns) or "(none)")
  print()
end

local LABEL = "json_extract(workload_params_json, '$.params')"
local SOURCE = "CASE WHEN json_extract(params_json, '$.params_source') LIKE 'sha256:%' THEN 'sha256 (fitted file)' " ..
  "ELSE coalesce(json_extract(params_json, '$.params_source'), 'training-free') END"
show("Trainable methods on held-out TinyStories texts at matched density (mean over held-out texts and layers)",
  string.format([[
  SELECT target_density AS target, method, %s AS params, %s AS params_source, count(*) AS n,
         round(avg(density), 4) AS density, round(avg(recall_mean), 4) AS recall, round(avg(rel_l2), 4) AS rel_l2,
         round(avg(cosine_mean), 4) AS cosine
    FROM v_result WHERE run_id = ? AND status = 'ok' AND %s != 'training-free'
   GROUP BY target, method, params ORDER BY target, method, params]], LABEL, SOURCE, LABEL))
show("Best training-free prefill method per density (by mean rel_l2 over the same inputs)", string.format([[
  WITH per AS (SELECT target_density AS target, method, count(*) AS n, avg(density) AS density,
                      avg(recall_mean) AS recall, avg(rel_l2) AS rel_l2
                 FROM v_result WHERE run_id = ? AND status = 'ok' AND %s = 'training-free'
                GROUP BY target, method)
  SELECT target, method, n, round(density, 4) AS density, round(recall, 4) AS recall, round(rel_l2, 4) AS rel_l2
    FROM per p WHERE rel_l2 = (SELECT min(rel_l2) FROM per q WHERE q.target = p.target) ORDER BY target]], LABEL))
show("Skipped (density out of reach, or failed)", [[
  SELECT target_density AS target, method, count(*) AS n, min(error) AS reason
    FROM v_result WHERE run_id = ? AND status = 'failed' GROUP BY target, method ORDER BY target, method]])
print(string.format("run %d recorded in %s", run_id, db_path))
db:close()
