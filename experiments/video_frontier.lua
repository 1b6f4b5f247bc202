-- video_frontier.lua — Question: on a video diffusion workload replayed over
-- several denoising steps, how much of dense attention does each video /
-- DiT method keep (recall, rel_l2 per step and averaged) at about the same
-- executed density, and what do its estimate, its execution and its reuse of
-- cached state cost? Also: what do the permutations (Q, K, V in, O and L
-- out) cost next to dense attention at this size?
-- Cards: sparse_videogen, sparse_vdit, rainfusion, draft_attention,
-- paroattention, adaspa, sparsed, light_forcing, sparse_guidance,
-- rectified_spaattn (the method) and psa_pyramid (with Gilbert token order).
-- Inputs: the synthetic video workload (sl.synthetic_video; sparselab.layout
-- documents the knobs): frames x height x width video tokens (default 16 x 32
-- x 32 = 16384) and `text` text tokens, `heads` heads of d = 64, spatial and
-- temporal heads with logit boosts spatial = temporal = 10 and text 4 (see
-- cfg below), replayed over `steps` denoising steps (the workload's step
-- knob: Q/K/V drift slowly). light_forcing is an autoregressive method: its
-- problem is the last two frames' queries over every frame's keys.
-- Schedule (sparselab.steps): step 0 dense, then an estimate every
-- `refresh` = 2 steps and reuse of the cached estimate in between (methods
-- with their own step logic: sparsed's estimate step outputs dense and its
-- mask is reused; adaspa's first search outputs dense, the next reuses its
-- LSE). Offline plans (sparse_vdit, paroattention) are calibrated once on
-- step 0 and replayed.
-- Matching: one target, density ~ 0.25 of all pairs, set through each
-- method's knob analytically (no bisection at this size); the achieved
-- density is reported next to every number. sparse_guidance's density counts
-- both of its branches.
-- Every per-step result goes to the database (first argument, default
-- results.db); the tables are read back from it.
--   sparselab run experiments/video_frontier.lua [DB] [--quick] [--frames F --height H --width W
--     --text T --heads N --steps S --spatial X --temporal X --text_strength X] [--methods a,b]
local sl = require "sparselab"

local db_path, quick, only = "results.db", false, nil
-- structure strengths (logit boosts) well above the log of the key count, so that at n = 16K the
-- planted spatial / temporal / text structure holds most of the attention mass (at the workload's
-- defaults, 6 and 3, a 16K-token softmax is mostly its N(0, 1) background)
local cfg = {frames = 16, height = 32, width = 32, text = 64, heads = 2, steps = 4, seed = 1, spatial = 10,
  temporal = 10, text_strength = 4}
do
  local i = 1
  while arg and i <= #arg do
    local a = arg[i]
    if a == "--quick" then quick = true
    elseif a == "--methods" then i = i + 1; only = {}
      for id in (arg[i] or ""):gmatch("[^,]+") do only[#only + 1] = id end
    elseif a:sub(1, 2) == "--" and cfg[a:sub(3)] ~= nil then
      i = i + 1
      cfg[a:sub(3)] = tonumber(arg[i] or "")
      if not cfg[a:sub(3)] then sl.fail("video_frontier: %s expects a number", a) end
    elseif a:sub(1, 2) == "--" then
      sl.fail("video_frontier: unknown option %s (expected --quick, --frames, --height, --width, --text, --heads, " ..
        "--steps, --seed, --methods)", a)
    else db_path = a end
    i = i + 1
  end
end
if quick then cfg.frames, cfg.height, cfg.width, cfg.text, cfg.steps = 4, 16, 16, 16, 3 end

local B = quick and 32 or 64
local REGION = quick and 4 or 8
-- knobs at density ~0.25 of all pairs
local METHODS = {
  {id = "sparse_videogen", params = {density = 0.25, block = B, rows = 64}},
  {id = "sparse_vdit", params = {threshold = 0.35, block = B}, calibrate = true},
  {id = "rainfusion", params = {bandwidth = 0.25, block = B, rows = 32}},
  {id = "draft_attention", params = {sparsity = 0.75, ph = REGION, pw = REGION}},
  {id = "paroattention", params = {density = 0.25, block = B, bits = 8}, calibrate = true},
  {id = "adaspa", params = {sparsity = 0.75, block = B}},
  {id = "sparsed", params = {select = 0.24, block = B}},
  {id = "light_forcing", params = {sparsity = 0.75, block = B, bq = B}, ar = true},
  {id = "sparse_guidance", params = {gamma_weak = 0.75, omega = 1.5, block = B}},
  {id = "rectified_spaattn", params = {drop_rate = 0.85, block = B}},
  {id = "psa_pyramid", params = {bq = B, bk = B, order = "gilbert"}},
}
if only then
  local keep = {}
  for _, id in ipairs(only) do keep[id] = true end
  local list = {}
  for _, m in ipairs(METHODS) do if keep[m.id] then list[#list + 1] = m end end
  METHODS = list
end

local db, run_id = sl.experiment{db = db_path, seed = cfg.seed, config = {cfg = cfg, quick = quick, methods = METHODS}}

-- the trajectory: one problem per step (dense references are kept on them across methods)
local traj, ar_traj = {}, {}
local layout
for s = 0, cfg.steps - 1 do
  local knobs = {frames = cfg.frames, height = cfg.height, width = cfg.width, text = cfg.text, heads = cfg.heads,
    seed = cfg.seed, step = s, spatial = cfg.spatial, temporal = cfg.temporal, text_strength = cfg.text_strength}
  local q, k, v, wp, lay = sl.layout.video_workload(knobs)
  layout = lay
  traj[s + 1] = sl.problem{q = q, k = k, v = v, causal = false, layout = lay, workload = "video", workload_params = wp}
  -- the autoregressive chunk: the last two frames' queries over every frame (no text)
  local kq, kk, kv, kwp, klay = sl.layout.video_workload{frames = cfg.frames, height = cfg.height, width = cfg.width,
    heads = cfg.heads, seed = cfg.seed, step = s, spatial = cfg.spatial, temporal = cfg.temporal}
  local S = cfg.height * cfg.width
  ar_traj[s + 1] = sl.problem{q = kq:narrow(2, (cfg.frames - 2) * S + 1, 2 * S), k = kk, v = kv, causal = false,
    layout = klay, workload = "video-ar", workload_params = kwp}
end
io.stderr:write(string.format("video_frontier: %s, %d steps, %d heads\n", layout:describe(), cfg.steps, cfg.heads))

local ACTION = {dense = 0, estimate = 1, reuse = 2}
local schedule = sl.steps.schedule{steps = cfg.steps, dense_first = 1, refresh = 2}

for _, spec in ipairs(METHODS) do
  local m = sl.methods.get(spec.id)
  local t = spec.ar and ar_traj or traj
  local params = {}
  for k, v in pairs(spec.params) do params[k] = v end
  io.stderr:write("video_frontier: " .. spec.id .. "\n")
  local ok, err = pcall(function()
    local cal_ms = 0
    if spec.calibrate then
      local t0 = sl.time()
      params.config = sl.calibrate(m, {problems = {t[1]}, params = spec.params})
      cal_ms = (sl.time() - t0) * 1e3
    end
    local r = sl.steps.replay{method = m, schedule = schedule, trajectory = t, params = params}
    db:begin()
    for _, rec in ipairs(r.steps) do
      local prob = t[rec.step + 1]
      local qs, ks = prob.q:shape(), prob.k:shape()
      local rp = {}
      for k, v in pairs(spec.params) do rp[k] = v end
      db:record{run_id = run_id, method = m.id, params = rp, workload = prob.workload,
        workload_params = prob.workload_params, phase = prob.phase, n_q = qs[2], n_k = ks[2], head_dim = qs[3],
        heads = qs[1], kv_heads = ks[1], backend = prob.backend,
        metrics = {rel_l2 = rec.rel_l2, recall_mean = rec.recall_mean, density = rec.density, time_ms = rec.time_ms,
          estimate_ms = rec.estimate_ms, execute_ms = rec.execute_ms, reuse_ms = rec.reuse_ms,
          dense_time_ms = rec.dense_time_ms, step = rec.step, action = ACTION[rec.action],
          calibrate_ms = rec.step == 0 and cal_ms or 0}}
    end
    db:commit()
  end)
  if not ok then
    io.stderr:write("video_frontier: " .. spec.id .. " failed: " .. tostring(err) .. "\n")
    local prob = traj[1]
    db:record{run_id = run_id, method = spec.id, params = spec.params, workload = "video",
      workload_params = prob.workload_params, phase = prob.phase, n_q = prob.q:shape()[2], n_k = prob.k:shape()[2],
      head_dim = prob.q:shape()[3], heads = prob.q:shape()[1], kv_heads = prob.k:shape()[1], backend = prob.backend,
      status = "failed", error = tostring(err), metrics = {}}
  end
  collectgarbage()
end

-- permutation + inverse next to dense attention at this size (Gilbert order, all heads)
do
  local prob = traj[1]
  local perm = layout:perm_tensor("gilbert")
  local function best(reps, f)
    local b = math.huge
    for _ = 1, reps do local t0 = sl.time(); f(); b = math.min(b, (sl.time() - t0) * 1e3) end
    return b
  end
  local _, l = sl.attn.dense(prob.q, prob.k, prob.v, {causal = false})
  local perm_ms = best(5, function()
    local q = sl.layout.permute(prob.q, perm)
    local k = sl.layout.permute(prob.k, perm)
    local v = sl.layout.permute(prob.v, perm)
    local o = sl.layout.unpermute(q, perm)
    local l2 = sl.layout.unpermute(l, perm)
    return k, v, o, l2
  end)
  local dense_ms = best(2, function() return sl.attn.dense(prob.q, prob.k, prob.v, {causal = false}) end)
  db:record{run_id = run_id, method = "perm.apply", params = {order = "gilbert"}, workload = "video",
    workload_params = prob.workload_params, phase = prob.phase, n_q = prob.q:shape()[2], n_k = prob.k:shape()[2],
    head_dim = prob.q:shape()[3], heads = prob.q:shape()[1], kv_heads = prob.k:shape()[1], backend = prob.backend,
    metrics = {time_ms = perm_ms, dense_time_ms = dense_ms}}
end
db:finish_run(run_id, "ok")

local function show(title, sql)
  local rows = db:query(sql, run_id)
  print(title)
  print(#rows > 0 and sl.report.table(rows, rows.columns) or "(none)")
  print()
end

local M = function(name) return string.format("(SELECT value FROM metric WHERE result_id = v.result_id AND name = '%s')", name) end
show(string.format("Video frontier (%s, %d heads, %d steps; step 0 dense, estimate every 2 steps, reuse between): " ..
  "means over the sparse steps", layout:describe(), cfg.heads, cfg.steps), string.format([[
  SELECT method, count(*) AS steps, round(avg(density), 3) AS density, round(avg(recall_mean), 4) AS recall,
         round(avg(rel_l2), 4) AS rel_l2, round(max(rel_l2), 4) AS worst_rel_l2,
         round(avg(estimate_ms), 1) AS estimate_ms, round(avg(execute_ms), 1) AS execute_ms,
         round(avg(%s), 1) AS reuse_ms, round(avg(time_ms), 1) AS time_ms, round(avg(dense_time_ms), 1) AS dense_ms,
         round(max(%s), 1) AS calibrate_ms
    FROM v_result AS v WHERE run_id = ? AND status = 'ok' AND method <> 'perm.apply' AND %s > 0
   GROUP BY method ORDER BY method]], M("reuse_ms"), M("calibrate_ms"), M("action")))
local cols = {}
for s = 0, cfg.steps - 1 do
  cols[#cols + 1] = string.format("round(max(CASE WHEN %s = %d THEN rel_l2 END), 4) AS rel_l2_s%d", M("step"), s, s)
end
show("rel_l2 per step (step 0 is dense; actions: 1 estimate, 2 reuse)", string.format([[
  SELECT method, %s, group_concat(CAST(%s AS INTEGER), '') AS actions
    FROM v_result AS v WHERE run_id = ? AND status = 'ok' AND method <> 'perm.apply'
   GROUP BY method ORDER BY method]], table.concat(cols, ", "), M("action")))
show("Permutation (Q, K, V in; O, L out; Gilbert order) next to dense attention", [[
  SELECT n_k AS n, heads, round(time_ms, 2) AS permute_ms, round(dense_time_ms, 1) AS dense_ms,
         round(100.0 * time_ms / dense_time_ms, 3) AS percent_of_dense
    FROM v_result WHERE run_id = ? AND method = 'perm.apply']])
show("Failed", [[SELECT method, error FROM v_result WHERE run_id = ? AND status = 'failed']])
print(string.format("run %d recorded in %s", run_id, db_path))
