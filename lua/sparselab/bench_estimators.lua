-- sparselab.bench_estimators — estimator overhead of the dynamic prefill
-- methods (issue 4 "must show"): for every registered method whose family
-- ends in "-estimate", the time of its estimate and selection alone against
-- our dense attention on the same inputs, as a fraction (overhead). Inputs:
-- the structured synthetic workload (sl.synthetic: sinks, locality, needles)
-- at n = 16384 (4096 with quick), d = 64, 8 query / 2 KV heads, causal.
-- What is timed: m.mask(prob, p) when the method has one (estimate +
-- selection, no attention); otherwise the estimate_ms its run reports
-- (source = "stats"). The method runs at its default parameters (the
-- estimate's cost does not depend on the budget for most methods).
-- Target: pooled estimators (methods running score.pooled) <= 10% of dense.
-- Medians of repeated runs after one untimed warm-up; only ratios carry
-- meaning on a shared machine.
local sl = require "sparselab"

local E = {}

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local function median_ms(reps, f)
  f() -- warm-up
  local t = {}
  for i = 1, reps do
    local t0 = sl.time()
    f()
    t[i] = (sl.time() - t0) * 1e3
  end
  return median(t)
end

local function has_op(m, name)
  for _, o in ipairs(m.ops or {}) do if o == name then return true end end
  return false
end

--- Ids of the dynamic prefill methods (family "*-estimate", phase prefill or both).
function E.ids()
  local ids = {}
  for _, id in ipairs(sl.methods.ids()) do
    local ok, m = pcall(sl.methods.get, id)
    -- a method with a required input (m.requires, e.g. seer_attention's gate file) cannot run on defaults;
    -- video methods need a layout and a bidirectional problem: not this causal bench
    if ok and tostring(m.family):find("%-estimate$") and m.phase ~= "decode" and not m.requires
      and not m.needs_layout and not m.noncausal_only and m.workload ~= "video" then
      ids[#ids + 1] = id
    end
  end
  return ids
end

--- o = {quick =, backend =, reps =, methods = {ids} (default E.ids()), n =, max_s = 120}
--- -> array of bench results {name = "estimate:<id>", n, d, heads, kv_heads,
--- backend, params, metrics = {estimate_ms, dense_time_ms, overhead, target?}}
--- (a method that fails gets metrics = {} and error = message).
function E.run(o)
  o = o or {}
  local backend = o.backend or "cpu"
  local reps = o.reps or (o.quick and 3 or 5)
  local n = o.n or (o.quick and 4096 or 16384)
  local wl = {n = n, heads = 8, kv_heads = 2, d = 64, seed = 1}
  local q, k, v = sl.synthetic(wl)
  local prob = sl.problem{q = q, k = k, v = v, backend = backend, workload = "synthetic", workload_params = wl}
  local dense_ms = median_ms(reps, function() return sl.attn.dense(q, k, v, {causal = true, backend = backend}) end)
  -- a probe at n/4 first: a method whose estimate would take longer than
  -- max_s at n (extrapolated quadratically) is reported, not run
  local max_s = o.max_s or 120
  local pw = {n = math.max(256, n // 4), heads = 8, kv_heads = 2, d = 64, seed = 1}
  local pq, pk, pv = sl.synthetic(pw)
  local probe = sl.problem{q = pq, k = pk, v = pv, backend = backend, workload = "synthetic", workload_params = pw}
  local results = {}
  for _, id in ipairs(o.methods or E.ids()) do
    local m = sl.methods.get(id)
    local r = {name = "estimate:" .. m.id, method = m.id, n = n, d = 64, heads = 8, kv_heads = 2, backend = backend,
      params = {method = m.id, family = m.family}, metrics = {}}
    local ok, err = pcall(function()
      local p = sl.registry.resolve(m, {}, nil)
      local ms
      local t0 = sl.time()
      if m.mask then
        local mk <close> = m.mask(probe, p)
      else
        m.run(probe, p)
      end
      local guess = (sl.time() - t0) * (n / pw.n) ^ 2
      if guess > max_s then
        error(string.format("skipped: its estimate took %.1f s at n = %d, about %.0f s expected at n = %d (limit %g s)",
          guess / (n / pw.n) ^ 2, pw.n, guess, n, max_s), 0)
      end
      if m.mask then
        ms = median_ms(reps, function()
          local mk <close> = m.mask(prob, p)
          return mk
        end)
        r.params.source = "mask"
      else
        local t = {}
        m.run(prob, p) -- warm-up
        for i = 1, math.min(reps, 3) do
          local st = m.run(prob, p).stats or {}
          if type(st.estimate_ms) ~= "number" then error(m.id .. " has no mask function and reports no estimate_ms", 0) end
          t[i] = st.estimate_ms
        end
        ms = median(t)
        r.params.source = "stats"
        if ms == 0 then r.params.note = "estimate fused with the attention pass (the method reports estimate_ms = 0)" end
      end
      r.metrics = {estimate_ms = ms, dense_time_ms = dense_ms, overhead = ms / dense_ms}
      if has_op(m, "score.pooled") then r.metrics.target = 0.1 end
    end)
    if not ok then r.error = tostring(err) end
    results[#results + 1] = r
    collectgarbage()
  end
  return results
end

return E
