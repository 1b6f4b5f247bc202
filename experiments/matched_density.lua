-- matched_density.lua — Question: at a matched executed density of 0.1 on real attention
-- inputs (the shipped TinyStories 260K model's post-RoPE Q/K/V, one text, one layer, ~500
-- tokens), which dynamic methods get there, and how close to dense are they? Every method of
-- the registry whose family ends in "-estimate" runs through sl.eval(m, prob, {density = D})
-- (issue 18: the knob solved by sl.budget.match, target_density and achieved_density
-- recorded); a method whose knob cannot reach D is recorded as a failed row with the reachable
-- range, not dropped. Block sizes are the recipes' defaults, which follow the input length for
-- the dynamic prefill families (sl.registry.block_relative: 16 at these ~500 tokens).
--   sparselab run experiments/matched_density.lua [DB (default results.db)] [DENSITY (0.1)] [TEXT] [LAYER]
local sl = require "sparselab"

local db_path = arg and arg[1] or "results.db"
local density = tonumber(arg and arg[2] or "0.1")
local text_name = arg and arg[3] or "01_red_kite"
local layer = math.tointeger(tonumber(arg and arg[4] or "2"))
if not density or density <= 0 or density > 1 then sl.fail("matched_density: DENSITY must be in (0, 1]") end

local data = "experiments/data/tinystories260k"
local model = sl.model.load(data .. "/model.bin")
local f = assert(io.open(data .. "/texts/" .. text_name .. ".txt", "rb"))
local text = f:read("a")
f:close()
local cap = model:capture{text = text}
if not layer or not cap[layer + 1] then sl.fail("matched_density: no layer %s (0..%d)", tostring(layer), #cap - 1) end
local t = cap[layer + 1]
local prob = sl.problem{q = t.q, k = t.k, v = t.v, workload = "tinystories:" .. text_name,
  workload_params = {model = "stories260K", text = text_name}, layer = layer}

local methods = {}
for _, id in ipairs(sl.methods.ids()) do
  local m = sl.methods.get(id)
  if tostring(m.family):find("%-estimate$") and m.knob and (m.phase == "prefill" or m.phase == "both") then
    methods[#methods + 1] = m
  end
end

local db, run = sl.experiment{db = db_path, seed = 1, config = {density = density, text = text_name, layer = layer}}
local progress = sl.progress{label = "matched_density", total = #methods}
local rows = {}
for _, m in ipairs(methods) do
  local ok, r = pcall(sl.eval, m, prob, {density = density})
  if not ok then
    -- a method that fails outright (not an unreachable target) is recorded as failed too
    local qs, ks = prob.q:shape(), prob.k:shape()
    r = {method = m.id, params = {["@target"] = {density = density}}, workload = prob.workload,
      workload_params = prob.workload_params, layer = layer, n_q = qs[2], n_k = ks[2], head_dim = qs[3],
      heads = qs[1], kv_heads = ks[1], backend = prob.backend, metrics = {target_density = density},
      status = "failed", error = tostring(r)}
  end
  sl.record(db, run, r)
  rows[#rows + 1] = {method = m.id, status = r.status or "ok", target = density,
    achieved = r.metrics.achieved_density, knob = m.knob, value = r.budget, rel_l2 = r.metrics.rel_l2,
    recall = r.metrics.recall_mean, reason = r.error and r.error:gsub("^budget%.match: ", "") or ""}
  progress:step(m.id)
end
progress:done()
db:finish_run(run, "ok")
print(string.format("matched density %g on %s layer %d (%d tokens); run %d in %s", density, prob.workload, layer,
  prob.q:shape()[2], run, db_path))
print(sl.report.table(rows, {"method", "status", "target", "achieved", "knob", "value", "rel_l2", "recall", "reason"}))
