-- est_growth.lua — process CPU time of estimators against their FLOPs as n
-- grows (issue 20, part 3), steadier than `sparselab bench`'s wall time on a
-- time-sliced machine: run on one core, e.g.
--   OPENBLAS_NUM_THREADS=1 taskset -c 1 env LUA_CPATH='build/?.so' \
--     lua5.4 tests/bench/est_growth.lua vertical_slash,flexprefill,xattention 8192,16384,65536 [heads=1]
-- The method list "all" (or nothing) is every prefill estimator of
-- `sparselab bench --only-estimators` (sparselab.bench_estimators' ids).
-- Inputs as the bench (sl.synthetic, d = 64, seed 1). What is timed (best of
-- 3 after a warm-up, os.clock), as the bench does (session 5 widened it from
-- the mask + estimate recipes to all of them):
--   m.mask(prob, p) when the recipe has one;
--   token_sparse_attention: m.select(prob, p, false) (steps 0-4);
--   top_theta: m.thresholds(prob, p) (calibration + per-row lookup);
--   otherwise the estimate_ms its run reports ("wall": a wall-clock time
--   inside run, so on a loaded core it is not CPU time).
-- FLOPs: the recipe's own count (estimate(prob, p).flops, or the
-- estimator_flops of estimate's second value / select's / thresholds' /
-- run's stats). Prints per n: ms, FLOPs, ns/FLOP and the growth of ns/FLOP
-- over the first n (<= 1: time grows no faster than FLOPs).
local sl = require "sparselab"
sl.threads(1)
local ids, sizes = {}, {}
local list = arg[1] or "all"
if list == "all" then
  ids = require("sparselab.bench_estimators").ids()
else
  for x in list:gmatch("[^,]+") do ids[#ids + 1] = x end
end
for x in (arg[2] or "8192,16384,65536"):gmatch("[^,]+") do sizes[#sizes + 1] = tonumber(x) end
local heads = tonumber(arg[3] or 1)

local function close(x)
  if x == nil or type(x) == "number" then return end
  local ok, f = pcall(function() return x.close end)
  if ok and type(f) == "function" then x:close() end
end

-- the timed call of a method -> a function returning the FLOPs of one call (or nil), and the timing source
local function caller(m)
  if m.mask then
    return function(prob, p) close(m.mask(prob, p)) end, "cpu"
  elseif m.id == "token_sparse_attention" then
    return function(prob, p) local _, f = m.select(prob, p, false); return f end, "cpu"
  elseif m.id == "top_theta" then
    return function(prob, p) local th, f = m.thresholds(prob, p); close(th); return f end, "cpu"
  end
  return nil, "wall"
end

local function flops_of(m, prob, p, call)
  if m.estimate then
    local a, b = m.estimate(prob, p)
    local ok, f = pcall(function() return a.flops end)
    f = ok and f or nil
    if not f and type(b) == "table" then f = b.estimator_flops end
    if type(a) == "table" then close(a.mask); close(a.scores) else close(a) end
    if f then return f end
  end
  if call then
    local f = call(prob, p)
    if f then return f end
  end
  return (m.run(prob, p).stats or {}).estimator_flops
end

print(string.format("%-24s %7s %10s %12s %9s %8s %s", "method", "n", "ms", "flops", "ns/flop", "growth", "time"))
local base = {}
for _, n in ipairs(sizes) do
  local wl = {n = n, heads = heads, kv_heads = heads, d = 64, seed = 1}
  local q, k, v = sl.synthetic(wl)
  local prob = sl.problem{q = q, k = k, v = v, backend = "cpu"}
  for _, id in ipairs(ids) do
    local m = sl.methods.get(id)
    local p = sl.registry.resolve(m, {})
    local call, source = caller(m)
    local ok, err = pcall(function()
      local flops = flops_of(m, prob, p, call)  -- also the warm-up
      local best = math.huge
      for _ = 1, 3 do
        if call then
          local t0 = os.clock()
          call(prob, p)
          best = math.min(best, (os.clock() - t0) * 1e3)
        else
          local st = m.run(prob, p).stats or {}
          best = math.min(best, st.estimate_ms or math.huge)
        end
        collectgarbage()
      end
      local per = flops and flops > 0 and best > 0 and best * 1e6 / flops or nil  -- 0 ms: estimate fused with the run
      base[id] = base[id] or per
      print(string.format("%-24s %7d %10.1f %12.4g %9s %8s %s", id, n, best, flops or 0,
        per and string.format("%.3f", per) or "-", per and base[id] and string.format("%.2f", per / base[id]) or "-",
        source))
    end)
    if not ok then print(string.format("%-24s %7d failed: %s", id, n, tostring(err))) end
    io.stdout:flush()
    collectgarbage()
  end
end
