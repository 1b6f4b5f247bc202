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
-- Growth (issue 20, part 3): each row carries the estimator's FLOPs (the
-- recipe's own count: estimate(prob, p).flops, else the stats.estimator_flops
-- of one untimed run) and ns_per_flop; given o.base (a table shared by the
-- calls of one bench run, one per n), a row also carries
-- time_per_flop_growth = (ms / flops) over that of the method's first n in
-- the run (<= 1: the time grows no faster than the FLOPs). o.heads /
-- o.kv_heads (default 8 / 2) shrink the problem for large n (64K).
local sl = require "sparselab"

local E = {}

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local function median_ms(reps, f, warm)
  if not warm then f() end -- warm-up (unless the caller ran one)
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

--- o = {quick =, backend =, reps =, methods = {ids} (default E.ids()), n =, max_s = 120, heads = 8,
---      kv_heads = 2, base = {} (per-method first-n time per FLOP, filled and read across calls)}
--- -> array of bench results {name = "estimate:<id>", n, d, heads, kv_heads,
--- backend, params, metrics = {estimate_ms, dense_time_ms, overhead, target?}}
--- (a method that fails gets metrics = {} and error = message).
function E.run(o)
  o = o or {}
  local backend = o.backend or "cpu"
  local reps = o.reps or (o.quick and 3 or 5)
  local n = o.n or (o.quick and 4096 or 16384)
  local heads, kvh = o.heads or 8, o.kv_heads or 2
  local wl = {n = n, heads = heads, kv_heads = kvh, d = 64, seed = 1}
  local q, k, v = sl.synthetic(wl)
  local prob = sl.problem{q = q, k = k, v = v, backend = backend, workload = "synthetic", workload_params = wl}
  local dense_ms = median_ms(reps, function() return sl.attn.dense(q, k, v, {causal = true, backend = backend}) end)
  -- a probe at n/4 first: a method whose estimate would take longer than
  -- max_s at n (extrapolated quadratically) is reported, not run
  local max_s = o.max_s or 120
  local pw = {n = math.max(256, n // 4), heads = heads, kv_heads = kvh, d = 64, seed = 1}
  local pq, pk, pv = sl.synthetic(pw)
  local probe = sl.problem{q = pq, k = pk, v = pv, backend = backend, workload = "synthetic", workload_params = pw}
  local results = {}
  for _, id in ipairs(o.methods or E.ids()) do
    local m = sl.methods.get(id)
    local r = {name = "estimate:" .. m.id, method = m.id, n = n, d = 64, heads = heads, kv_heads = kvh, backend = backend,
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
      local flops
      if m.mask then
        if m.estimate then  -- the warm-up: the recipe's estimate, for its FLOP count
          local e = m.estimate(prob, p)
          flops = e.flops
          if e.mask and e.mask.close then e.mask:close() end
        end
        ms = median_ms(reps, function()
          local mk <close> = m.mask(prob, p)
          return mk
        end, m.estimate ~= nil)
        r.params.source = "mask"
        if not flops then  -- a recipe without estimate(): its run reports the FLOPs (one untimed run)
          flops = (m.run(prob, p).stats or {}).estimator_flops
        end
      else
        local t = {}
        flops = (m.run(prob, p).stats or {}).estimator_flops -- warm-up
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
      if type(flops) == "number" and flops > 0 and ms > 0 then  -- (a fused estimate reports 0 ms)
        r.metrics.estimator_flops = flops
        r.metrics.ns_per_flop = ms * 1e6 / flops
        if o.base then
          local b = o.base[m.id]
          if b then
            r.metrics.time_per_flop_growth = (ms / flops) / b.per_flop
            r.metrics.growth_from_n = b.n
          else
            o.base[m.id] = {per_flop = ms / flops, n = n}
          end
        end
      end
      if has_op(m, "score.pooled") then r.metrics.target = 0.1 end
    end)
    if not ok then r.error = tostring(err) end
    results[#results + 1] = r
    collectgarbage()
  end
  return results
end

return E
