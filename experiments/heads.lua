-- heads.lua — Question: how does the shipped model's perplexity grow as heads
-- are removed, when the heads go in order of each importance measure (and in
-- a score-blind order)?
-- Cards: sixteen_heads (head masks ξ_h, importance, global pruning of the
-- least important heads; issue 16).
-- Inputs: the shipped TinyStories 260K model (experiments/data/tinystories260k:
-- 5 layers x 8 heads = 40 heads); importance from two calibration texts, the
-- perplexity on two other (held-out) texts.
-- Measures (sparselab.heads): "gradient" (the card's |∂L/∂ξ_h|, by central
-- differences in ξ_h, ε = 1e-2, with the paper's per-layer ℓ2
-- normalisation), "gradient_iter" (the same, iterative: re-scored after each
-- step of removals with the removed heads skipped), "ablation" |ΔNLL| when
-- the head alone is removed (normalised likewise), "kl" (KL to dense when removed alone),
-- "l2" (mean output norm of the head: forward only, no loss), and "random"
-- (a seeded score-blind order: the baseline every measure must beat), and
-- "predictor" (card head_neuron_predictor: per evaluation text, the scores a
-- ridge predictor gives from the text's layer-1 last-token queries, trained on
-- the l2 criterion of 48-token-step prefixes of the calibration texts; its
-- held-out Spearman ρ against the text's own l2 scores is printed), and
-- "predictor_mlp" (the same with the card's MLP predictor, hidden 256 here,
-- 300 full-batch AdamW steps; see experiments/head_predictor.lua).
-- A removed head is skipped ("skip" spec: no attention, output 0).
-- Every result goes to the database (first argument, default results.db); the
-- table is read back from it.
--   sparselab run experiments/heads.lua [DB] [--quick]
local sl = require "sparselab"
local Hd = require "sparselab.heads"

local db_path, quick = "results.db", false
for _, a in ipairs(arg or {}) do
  if a == "--quick" then quick = true
  elseif a:sub(1, 2) == "--" then sl.fail("heads: unknown option %s (expected --quick)", a)
  else db_path = a end
end

local data = "experiments/data/tinystories260k"
local calib = {"01_red_kite", "04_cake_for_mom"}
local evals = quick and {"06_little_seed"} or {"06_little_seed", "07_toy_shop"}
local measures = {"gradient", "gradient_iter", "ablation", "kl", "l2", "random", "predictor", "predictor_mlp"}
local model = sl.model.load(data .. "/model.bin")
local L, H = model.cfg.n_layers, model.cfg.n_heads
local total = L * H
local steps = {}
for c = 0, total - 1, quick and 8 or 4 do steps[#steps + 1] = c end

local function read(name)
  local f = assert(io.open(data .. "/texts/" .. name .. ".txt", "rb"))
  local t = f:read("a")
  f:close()
  return model:encode(t)
end
local calib_tokens, eval_tokens = {}, {}
for i, n in ipairs(calib) do calib_tokens[i] = read(n) end
for i, n in ipairs(evals) do eval_tokens[i] = read(n) end

local db, run_id = sl.experiment{db = db_path, seed = 1, config = {calib = calib, evals = evals, measures = measures,
  steps = steps}}

local function random_importance(seed)
  local st, imp = seed, {}
  for l = 0, L - 1 do
    imp[l] = {}
    for h = 0, H - 1 do st = (st * 1103515245 + 12345) % 2147483648; imp[l][h] = st / 2147483648 end
  end
  return imp
end

-- the predictors: trained once on calibration prefixes, applied per evaluation text
local P = {}
do
  local samples = {}
  for _, toks in ipairs(calib_tokens) do
    for len = 48, #toks, 48 do
      local pre = {}
      for i = 1, len do pre[i] = toks[i] end
      samples[#samples + 1] = Hd.sample(model, pre, "l2")
    end
  end
  P.predictor = Hd.train(samples, "ridge", {lambda = 100})
  P.predictor_mlp = Hd.train(samples, "mlp", {hidden = 256, steps = 300})
end
local function predicted(which, tokens)
  local flat, imp = Hd.predict_scores(P[which], Hd.features(model, tokens)), {}
  for l = 0, L - 1 do imp[l] = {}; for h = 0, H - 1 do imp[l][h] = flat[l * H + h + 1] end end
  local truth = Hd.sample(model, tokens, "l2").y
  return imp, Hd.spearman(flat, truth)
end

db:begin()
for _, measure in ipairs(measures) do
  io.stderr:write("heads: importance by " .. measure .. "\n")
  local imp, order
  if measure == "random" then
    imp = random_importance(7)
  elseif measure == "gradient_iter" then
    local _, ord = Hd.iterative(model, calib_tokens, "gradient", steps[#steps], steps[2] - steps[1], {normalize = true})
    order = ord
  elseif not P[measure] then
    imp = Hd.importance(model, calib_tokens, measure, {normalize = measure == "ablation" or measure == "gradient"})
  end
  local function removed_first(c)
    local out = {}
    for i = 1, c do local lh = order[i]; out[lh[1]] = out[lh[1]] or {}; out[lh[1]][lh[2]] = true end
    return out
  end
  local per_text = {}
  if P[measure] then
    for i, tokens in ipairs(eval_tokens) do
      local rho
      per_text[i], rho = predicted(measure, tokens)
      print(string.format("%s: Spearman rho vs the l2 criterion on %s: %.3f", measure, evals[i], rho))
    end
  end
  for _, c in ipairs(steps) do
    for i, tokens in ipairs(eval_tokens) do
      local use = per_text[i] or imp
      local sched = c > 0 and Hd.schedule(order and removed_first(c) or Hd.lowest(use, c)) or nil
      local r = model:evaluate{tokens = tokens, attention = sched}
      db:record{run_id = run_id, method = "sixteen_heads", params = {measure = measure, removed = c},
        workload = "model:" .. evals[i], phase = "prefill", n_q = #tokens, n_k = #tokens, heads = H,
        kv_heads = model.cfg.n_kv_heads, head_dim = model.cfg.head_dim, backend = "cpu", budget = total - c,
        metrics = {ppl = r.ppl, ppl_dense = r.ppl_dense, kl = r.kl, top1 = r.top1, heads_kept = total - c}}
    end
  end
end
db:commit()
db:finish_run(run_id, "ok")

local cols = {}
for _, m in ipairs(measures) do
  cols[#cols + 1] = string.format("round(avg(CASE WHEN json_extract(r.params_json, '$.measure') = '%s' THEN " ..
    "(SELECT value FROM metric WHERE result_id = r.id AND name = 'ppl') END), 3) AS ppl_%s", m, m)
end
local rows = db:query(string.format([[
  SELECT r.budget AS heads_kept, %s,
         round(avg((SELECT value FROM metric WHERE result_id = r.id AND name = 'ppl_dense')), 3) AS ppl_dense
    FROM result r WHERE r.run_id = ? GROUP BY r.budget ORDER BY r.budget DESC]], table.concat(cols, ", ")), run_id)
print(string.format("Perplexity of the held-out texts vs heads kept (of %d), heads removed least important first", total))
print(sl.report.table(rows, rows.columns))
print(string.format("run %d recorded in %s", run_id, db_path))
db:close()
