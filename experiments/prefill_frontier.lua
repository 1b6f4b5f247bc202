-- prefill_frontier.lua — Question: at the same executed density (0.05, 0.1,
-- 0.2, 0.3 of the causal pairs), how much of dense attention does each
-- dynamic prefill method keep (recall mean and worst row, rel_l2, cosine), and
-- what do its estimate and its execution cost, on real attention inputs and on
-- long structured ones?
-- Cards: every method of the registry whose family ends in "-estimate" and
-- whose phase is prefill or both (issue 4: vertical_slash,
-- minference_block_sparse, flexprefill, xattention, sample_attention,
-- anchor_attention, sparge_attn, seer_attention_oracle, prism, proxy_attn, pbs_attn,
-- sale, unisparse, dhsa, loopserve, biformer, sparse_flash_attention,
-- hsr_attention, ...; issue 16: hip_attention, top_theta, pq_code_match,
-- token_sparse_attention: whichever are registered when it runs); dense is the
-- reference of every result. top_theta and pq_code_match calibrate on
-- held-out inputs (issue 16, session 3): the TinyStories problems on the
-- same layer of another text (02_lost_mitten, not among the evaluated
-- texts), the synthetic problem on the synthetic workload drawn with another
-- seed; their thresholds (per k) and codebooks come from m.calibrate on
-- those and reach the run as its config (calib_self = 0 in the records);
-- on the short TinyStories inputs hip_attention runs 16 x 4 blocks
-- with a 16-token window and token_sparse_attention m_min = 16, W = 16 (its
-- card defaults, m_min 1024 and W 128, leave n of a few hundred dense).
-- Inputs: (1) real Q/K/V captured from the shipped TinyStories 260K model
-- (experiments/data/tinystories260k: 5 layers, 8 query / 4 KV heads, head_dim
-- 8), every layer of three texts (quick: one text, layers 0 and 4); these are
-- short (a few hundred tokens), so methods with bq/bk parameters run 16-token
-- blocks there; (2) the structured synthetic workload (sl.synthetic: sinks,
-- locality, needles; 8 query / 2 KV heads, d = 64) at n = 16384 (--quick:
-- 4096; --n N sets it).
-- Matching: the method's knob is solved by sl.budget.match (density target,
-- nearest setting, relative tolerance 0.02, at most 20 bisection steps); the
-- target and the achieved density are both recorded. A method that cannot
-- reach a density (its knob's range does not get there) or that fails is
-- recorded as a failed result with the reason, and listed as skipped.
-- Every result goes to the database (first argument, default results.db); the
-- tables are read back from it.
--   sparselab run experiments/prefill_frontier.lua [DB] [--quick] [--n N] [--methods a,b]
-- (--methods replaces the registry's list, e.g. to run static methods as a check)
local sl = require "sparselab"

local DENSITIES = {0.05, 0.1, 0.2, 0.3}
local db_path, quick, n_syn, only = "results.db", false, nil, nil
do
  local i = 1
  while arg and i <= #arg do
    local a = arg[i]
    if a == "--quick" then quick = true
    elseif a == "--n" then i = i + 1; n_syn = math.tointeger(tonumber(arg[i] or ""))
      if not n_syn or n_syn < 64 then sl.fail("prefill_frontier: --n expects an integer >= 64") end
    elseif a == "--methods" then i = i + 1; only = {}
      for id in (arg[i] or ""):gmatch("[^,]+") do only[#only + 1] = id end
    elseif a:sub(1, 2) == "--" then sl.fail("prefill_frontier: unknown option %s (expected --quick, --n N, --methods a,b)", a)
    else db_path = a end
    i = i + 1
  end
end
n_syn = n_syn or (quick and 4096 or 16384)

local methods = only or require("sparselab.bench_estimators").ids()
for i, id in ipairs(methods) do methods[i] = sl.methods.get(id).id end
local data = "experiments/data/tinystories260k"
local texts = quick and {"06_little_seed"} or {"01_red_kite", "04_cake_for_mom", "06_little_seed"}
local layers = quick and {0, 4} or nil
local wl = {n = n_syn, heads = 8, kv_heads = 2, d = 64, seed = 1}

local db, run_id = sl.experiment{db = db_path, seed = 1, config = {densities = DENSITIES, methods = methods,
  texts = texts, layers = layers or "all", synthetic = wl, quick = quick}}

-- the problems: real Q/K/V per text and layer, then the synthetic one
local problems = {}
local model = sl.model.load(data .. "/model.bin")
for _, name in ipairs(texts) do
  local f = assert(io.open(data .. "/texts/" .. name .. ".txt", "rb"))
  local text = f:read("a")
  f:close()
  local want = {}
  for _, l in ipairs(layers or {}) do want[l] = true end
  for li, t in ipairs(model:capture{text = text}) do
    if not layers or want[li - 1] then
      problems[#problems + 1] = {small = true, prob = sl.problem{q = t.q, k = t.k, v = t.v,
        workload = "tinystories:" .. name, workload_params = {model = "stories260K", text = name}, layer = li - 1}}
    end
  end
end
do
  local q, k, v = sl.synthetic(wl)
  problems[#problems + 1] = {small = false, prob = sl.problem{q = q, k = k, v = v, workload = "synthetic",
    workload_params = wl}}
end

-- held-out calibration inputs of top_theta and pq_code_match (issue 16, session 3)
local HELDOUT_TEXT = "02_lost_mitten"
local heldout = {small = {}, syn = {}}
do
  local f = assert(io.open(data .. "/texts/" .. HELDOUT_TEXT .. ".txt", "rb"))
  local text = f:read("a")
  f:close()
  for li, t in ipairs(model:capture{text = text}) do
    heldout.small[#heldout.small + 1] = sl.problem{q = t.q, k = t.k, v = t.v, workload = "tinystories:" .. HELDOUT_TEXT,
      layer = li - 1}
  end
  local cw = {}
  for k, v in pairs(wl) do cw[k] = v end
  cw.seed = wl.seed + 1
  local q, k, v = sl.synthetic(cw)
  heldout.syn[1] = sl.problem{q = q, k = k, v = v, workload = "synthetic", workload_params = cw}
end
local CALIB_PARAMS = {top_theta = {"k", "sigma", "sample_frac", "max_rows"},
  pq_code_match = {"subspaces", "codewords", "iters", "fit_rows", "seed"}}
-- m with run() taking its config from m.calibrate over the held-out problems
-- of the same layer (cached per layer and calibration parameters)
local function with_heldout(m, small)
  local names = CALIB_PARAMS[m.id]
  if not names or not m.calibrate then return m end
  local w, cache = {}, {}
  for k, v in pairs(m) do w[k] = v end
  w.run = function(prob, p)
    local cp, key = {}, {tostring(prob.layer)}
    for _, n in ipairs(names) do cp[n] = p[n]; key[#key + 1] = tostring(p[n]) end
    key = table.concat(key, ":")
    if not cache[key] then
      local probs = {}
      for _, c in ipairs(small and heldout.small or heldout.syn) do
        if c.layer == prob.layer then probs[#probs + 1] = c end
      end
      if #probs == 0 then sl.fail("prefill_frontier: no held-out problem for layer %s", tostring(prob.layer)) end
      cache[key] = m.calibrate(probs, {params = cp})
    end
    local q = {}
    for k, v in pairs(p) do q[k] = v end
    q.config_table = cache[key]
    return m.run(prob, q)
  end
  return w
end

-- short-input settings of methods whose card defaults assume long contexts (issue 16)
local SMALL = {hip_attention = {bq = 16, bk = 4, window = 16}, token_sparse_attention = {m_min = 16, window = 16},
  elastic_attention = {block = 16, sink = 16, local_window = 64}}
local function base_params(m, small)
  if small and SMALL[m.id] then return SMALL[m.id] end
  if small and m.params.bq and m.params.bk then return {bq = 16, bk = 16} end
  return {}
end

local progress = sl.progress{label = "prefill_frontier", total = #problems * #methods * #DENSITIES}
for _, pr in ipairs(problems) do
  local prob = pr.prob
  local qs, ks = prob.q:shape(), prob.k:shape()
  local input = string.format("%s%s, n = %d", prob.workload, prob.layer and (" layer " .. prob.layer) or "", qs[2])
  for _, id in ipairs(methods) do
    local m = with_heldout(sl.methods.get(id), pr.small)
    local bp = base_params(m, pr.small)
    db:begin()
    for _, rho in ipairs(DENSITIES) do
      local ok, err = pcall(function()
        local match = sl.budget.match{method = m, prob = prob, target = "density", value = rho, params = bp,
          side = "nearest", tol = 0.02, max_steps = 20}
        local r = sl.eval(m, prob, {params = match.params})
        sl.budget.metrics(match, r.metrics)
        sl.record(db, run_id, r)
      end)
      if not ok then
        local p = {}
        for k, v in pairs(bp) do p[k] = v end
        p["@target"] = {density = rho}
        db:record{run_id = run_id, method = m.id, params = p, workload = prob.workload,
          workload_params = prob.workload_params or {}, phase = prob.phase, layer = prob.layer, n_q = qs[2],
          n_k = ks[2], head_dim = qs[3], heads = qs[1], kv_heads = ks[1], backend = prob.backend,
          status = "failed", error = tostring(err), metrics = {target_density = rho}}
      end
      collectgarbage()
      progress:step(string.format("%s: %s at density %g", input, m.id, rho))
    end
    db:commit()
  end
end
progress:done()
db:finish_run(run_id, "ok")

local function show(title, sql)
  local rows = db:query(sql, run_id)
  print(title)
  print(#rows > 0 and sl.report.table(rows, rows.columns) or "(none)")
  print()
end

-- the frontier: recall and rel_l2 per method (rows) and target density (columns)
local cols = {}
for _, rho in ipairs(DENSITIES) do
  local tag = string.format("%02d", math.floor(rho * 100 + 0.5))
  cols[#cols + 1] = string.format("round(avg(CASE WHEN target_density = %g THEN recall_mean END), 4) AS recall_%s", rho, tag)
  cols[#cols + 1] = string.format("round(avg(CASE WHEN target_density = %g THEN rel_l2 END), 4) AS rel_l2_%s", rho, tag)
end
local CLASS = "CASE WHEN workload LIKE 'tinystories:%' THEN 'tinystories' ELSE workload || ':' || n_k END"
show("Frontier at matched executed densities (mean over the texts and layers that reached the density: n in the detail)", string.format([[
  SELECT %s AS inputs, method, %s
    FROM v_result WHERE run_id = ? AND status = 'ok'
   GROUP BY inputs, method ORDER BY inputs, method]], CLASS, table.concat(cols, ",\n         ")))
show("Detail: achieved density, worst-row recall, cosine, time split and FLOPs", string.format([[
  SELECT %s AS inputs, method, target_density AS target, count(*) AS n, round(avg(density), 4) AS density,
         round(avg(recall_mean), 4) AS recall, round(min(recall_min), 4) AS recall_min,
         round(avg(rel_l2), 4) AS rel_l2, round(avg(cosine_mean), 4) AS cosine,
         round(avg(estimate_ms), 2) AS estimate_ms, round(avg(execute_ms), 2) AS execute_ms,
         avg(flops) AS flops, avg(estimator_flops) AS estimator_flops
    FROM v_result WHERE run_id = ? AND status = 'ok'
   GROUP BY inputs, method, target ORDER BY inputs, method, target]], CLASS))
show("Skipped (density out of the method's reach, or the method failed)", string.format([[
  SELECT %s AS inputs, method, target_density AS target, count(*) AS n, min(error) AS reason
    FROM v_result WHERE run_id = ? AND status = 'failed'
   GROUP BY inputs, method, target ORDER BY inputs, method, target]], CLASS))
print(string.format("run %d recorded in %s (sparselab query %s \"SELECT * FROM v_result WHERE run_id = %d\")",
  run_id, db_path, db_path, run_id))
db:close()
