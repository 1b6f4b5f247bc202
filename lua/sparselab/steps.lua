-- sparselab.steps — denoising-step schedules as explicit state, and a driver
-- that replays a trajectory (issue 15).
--
-- A schedule says what each step of a trajectory does:
--   steps.schedule{steps = S, dense_first = 0, dense_steps = {...}, refresh = 1,
--                  budgets = {...}}
--   "dense"    steps s < dense_first, or listed in dense_steps (0-based): dense
--              attention (the method is not run; the step's output, LSE and
--              mask of everything are cached);
--   "estimate" the method runs (its estimator and executor) when nothing is
--              cached yet or refresh steps have passed since the last
--              estimate (refresh = 1: every step);
--   "reuse"    the cached mask of the last estimate is executed on this
--              step's Q/K/V (attn.block_sparse, under the estimate's token
--              permutation when its output carried one as out.perm); a
--              method may supply reuse(prob, p, cache) for another
--              executor; a method with neither a block mask nor reuse()
--              estimates again.
-- budgets (optional, one per step) is the method's knob for that step.
-- dense_layers = k (session 3): layer-level dense fallbacks — a problem
-- whose `layer` (0-based, default 0) is below k runs dense at every step
-- (the cards' "first layers dense", e.g. rectified_spaattn's Wan warm-up
-- of layers 0-1). A multi-layer trajectory gives each step as {layers =
-- {problem of layer 0, problem of layer 1, ...}}; replay keeps one state
-- per layer and records every (step, layer).
--
-- State (steps.state{schedule =, method =, prob =}) is a plain table
-- {method, shape = {H, n, d}, layout, step, cache = {mask, lse, o, step}}
-- carried from step to step; using it with another method or shape is a
-- one-line error. steps.replay{method =, schedule =, trajectory =} runs every
-- step of the schedule on the trajectory (a list of problems, or {steps =,
-- problem = fn(step) -> problem}) and returns per-step records with the
-- action, fidelity against dense on that step and the cost split
-- (estimate_ms / execute_ms / reuse_ms).
local sl = require "sparselab"

local S = {}

local function nonneg_int(v, what)
  local i = math.tointeger(v)
  if not i or i < 0 then sl.fail("steps.schedule: %s must be a non-negative integer, found %s", what, tostring(v)) end
  return i
end

local SCHEDULE_KEYS = {steps = true, dense_first = true, dense_steps = true, refresh = true, budgets = true,
  dense_layers = true}

--- A schedule (see the header).
function S.schedule(t)
  if type(t) ~= "table" then sl.fail("steps.schedule: expected a table {steps =, dense_first =, refresh =}") end
  for key in pairs(t) do
    if not SCHEDULE_KEYS[key] then
      sl.fail("steps.schedule: unknown key '%s' (expected steps, dense_first, dense_steps, refresh, budgets, dense_layers)",
        tostring(key))
    end
  end
  local s = {kind = "schedule", steps = nonneg_int(t.steps, "steps"), dense_first = nonneg_int(t.dense_first or 0,
    "dense_first"), refresh = nonneg_int(t.refresh or 1, "refresh"), dense = {}, budgets = t.budgets,
    dense_layers = nonneg_int(t.dense_layers or 0, "dense_layers")}
  if s.steps < 1 then sl.fail("steps.schedule: steps must be at least 1, found 0") end
  if s.refresh < 1 then sl.fail("steps.schedule: refresh must be at least 1 (steps between estimates), found 0") end
  if s.dense_first > s.steps then
    sl.fail("steps.schedule: dense_first = %d is more than the %d steps", s.dense_first, s.steps)
  end
  for _, d in ipairs(t.dense_steps or {}) do
    local i = nonneg_int(d, "a dense step")
    if i >= s.steps then sl.fail("steps.schedule: dense step %d is outside the %d steps [0, %d)", i, s.steps, s.steps) end
    s.dense[i] = true
  end
  if s.budgets ~= nil and (type(s.budgets) ~= "table" or #s.budgets ~= s.steps) then
    sl.fail("steps.schedule: budgets must list one value per step (%d), found %s", s.steps,
      type(s.budgets) == "table" and tostring(#s.budgets) or type(s.budgets))
  end
  return s
end

--- The action of 0-based step `step` of 0-based layer `layer` (default 0)
--- given the state's cache.
function S.action(schedule, step, state, layer)
  if (layer or 0) < (schedule.dense_layers or 0) then return "dense" end
  if step < schedule.dense_first or schedule.dense[step] then return "dense" end
  local c = state and state.cache
  if not (c and c.estimated) or step - c.estimated >= schedule.refresh then return "estimate" end
  return "reuse"
end

local function shape_of(prob)
  local s = prob.q:shape()
  return {s[1], s[2], s[3], prob.k:shape()[2]}
end

--- A fresh step state for method on problems shaped like prob.
function S.state(t)
  local m = sl.methods.get(t.method)
  return {kind = "step_state", method = m.id, shape = shape_of(t.prob), layout = t.prob.layout, step = 0, cache = {}}
end

--- One-line errors unless state was made for this method and shape.
function S.check_state(state, method_id, prob)
  if type(state) ~= "table" or state.kind ~= "step_state" then
    sl.fail("steps: expected a step state (steps.state{...}), found %s", type(state))
  end
  if state.method ~= method_id then
    sl.fail("steps: the step state belongs to method %s, not %s", state.method, method_id)
  end
  local s = shape_of(prob)
  for i = 1, 4 do
    if s[i] ~= state.shape[i] then
      sl.fail("steps: the step state was made for q [%d, %d, %d] and %d keys; this step has q [%d, %d, %d] and %d keys",
        state.shape[1], state.shape[2], state.shape[3], state.shape[4], s[1], s[2], s[3], s[4])
    end
  end
end

local function dense_out(prob)
  local o, lse = sl.attn.dense(prob.q, prob.k, prob.v, {causal = prob.causal, backend = prob.backend})
  return {o = o, lse = lse, stats = {density = 1, flops = sl.op_flops("attn.dense", prob.q, prob.k, prob.v,
    {causal = prob.causal})}}
end

--- Runs 0-based step `step` of schedule on prob with method m (id or
--- table), resolved params p, updating state. Returns the method-style
--- output {o, lse, mask, stats} with stats.action and the cost split.
function S.run_step(schedule, state, m, prob, p, step)
  m = sl.methods.get(m)
  S.check_state(state, m.id, prob)
  if step >= schedule.steps then
    sl.fail("steps: step %d is past the schedule's %d steps", step, schedule.steps)
  end
  prob.state = prob.state or state
  local action = S.action(schedule, step, state, prob.layer)
  -- nothing to reuse (a method without reuse() whose estimate left no block
  -- mask, e.g. graded pooled levels): estimate again
  if action == "reuse" and not m.reuse and not sl.mask.is_mask(state.cache.mask) then action = "estimate" end
  local t0 = sl.time()
  local out
  if action == "dense" then
    out = dense_out(prob)
    out.stats.density = 1
    state.cache.dense_lse, state.cache.dense_o, state.cache.dense_step = out.lse, out.o, step
    out.stats.execute_ms, out.stats.estimate_ms, out.stats.reuse_ms = (sl.time() - t0) * 1e3, 0, 0
  elseif action == "estimate" then
    out = m.run(prob, p)
    state.cache.estimated, state.cache.mask, state.cache.last = step, out.mask, out
    state.cache.lse, state.cache.o = out.lse, out.o
    local ms = (sl.time() - t0) * 1e3
    out.stats = out.stats or {}
    out.stats.estimate_ms = out.stats.estimate_ms or 0
    out.stats.execute_ms = out.stats.execute_ms or (ms - out.stats.estimate_ms)
    out.stats.reuse_ms = 0
  else
    local c = state.cache
    if m.reuse then
      out = m.reuse(prob, p, c)
    else
      -- the cached mask on this step's Q/K/V, in the token order it was made
      -- in when the estimate ran under a permutation (out.perm)
      local perm = c.last and c.last.perm
      local be = prob.backend
      local q, k, v = prob.q, prob.k, prob.v
      if perm then q, k, v = sl.perm.apply(q, perm, {backend = be}), sl.perm.apply(k, perm, {backend = be}),
        sl.perm.apply(v, perm, {backend = be}) end
      local o, lse = sl.attn.block_sparse(q, k, v, c.mask, {backend = be})
      if perm then
        o, lse = sl.perm.apply(o, perm, {inverse = true, backend = be}), sl.perm.apply(lse, perm, {inverse = true,
          backend = be})
      end
      out = {o = o, lse = lse, mask = c.mask, perm = perm, stats = {density = c.mask:density(prob.causal),
        flops = sl.op_flops("attn.block_sparse", q, k, v, c.mask, {})}}
    end
    local ms = (sl.time() - t0) * 1e3
    out.stats = out.stats or {}
    out.stats.estimate_ms, out.stats.execute_ms, out.stats.reuse_ms = 0, ms, ms
  end
  out.stats.action = action
  state.step = step + 1
  return out
end

local function trajectory_problem(traj, step)
  if traj.problem then return traj.problem(step) end
  return traj[step + 1]
end

--- Replays a trajectory: {method =, schedule =, trajectory =, params =,
--- budget =}. Returns {steps = {record per step (per step and layer for a
--- multi-layer trajectory)}, mean = {...}, state, states (per layer)}; each record
--- {step, layer, action, rel_l2, recall_mean, density, time_ms, estimate_ms,
--- execute_ms, reuse_ms, budget}.
function S.replay(t)
  local m = sl.methods.get(t.method)
  local sch = t.schedule
  if type(sch) ~= "table" or sch.kind ~= "schedule" then sch = S.schedule(sch) end
  local traj = t.trajectory
  if type(traj) ~= "table" then sl.fail("steps.replay: trajectory must be a list of problems or {steps =, problem =}") end
  local length = traj.problem and traj.steps or #traj
  if not math.tointeger(length) or length < 1 then
    sl.fail("steps.replay: the trajectory has no steps (give a list of problems or {steps = N, problem = fn})")
  end
  if sch.steps > length then
    sl.fail("steps.replay: the schedule has %d steps, the trajectory only %d", sch.steps, length)
  end
  local states, n_layers = {}, nil
  local records, sums = {}, {}
  for step = 0, sch.steps - 1 do
    local item = trajectory_problem(traj, step)
    local list = type(item) == "table" and item.layers or {item}
    if type(list) ~= "table" or #list < 1 then
      sl.fail("steps.replay: step %d's {layers = ...} lists no problems", step)
    end
    n_layers = n_layers or #list
    if #list ~= n_layers then
      sl.fail("steps.replay: step %d has %d layers, step 0 had %d", step, #list, n_layers)
    end
    for l0, raw in ipairs(list) do
      local prob = sl.problem(raw)
      prob._checked = true
      if item.layers then prob.layer = prob.layer or (l0 - 1) end
      local layer = prob.layer or 0
      states[layer] = states[layer] or S.state{method = m, prob = prob}
      local budget = sch.budgets and sch.budgets[step + 1] or t.budget
      local p = sl.registry.resolve(m, t.params, budget)
      local t0 = sl.time()
      local out = S.run_step(sch, states[layer], m, prob, p, step)
      local ms = (sl.time() - t0) * 1e3
      local ref = require("sparselab.eval").dense(prob)
      local rec = {step = step, layer = layer, action = out.stats.action, time_ms = ms, budget = budget,
        rel_l2 = sl.metric.rel_l2(out.o, ref.o), density = out.stats.density or 1,
        estimate_ms = out.stats.estimate_ms, execute_ms = out.stats.execute_ms, reuse_ms = out.stats.reuse_ms,
        dense_time_ms = ref.time_ms}
      rec.recall_mean = sl.metric.recall(out.lse, ref.lse)
      records[#records + 1] = rec
      for _, key in ipairs{"rel_l2", "recall_mean", "density", "time_ms", "estimate_ms", "execute_ms", "reuse_ms"} do
        sums[key] = (sums[key] or 0) + rec[key]
      end
    end
  end
  local mean = {}
  for key, v in pairs(sums) do mean[key] = v / #records end
  return {method = m.id, steps = records, mean = mean, state = states[0] or states[next(states)], states = states,
    layers = n_layers}
end

return S
