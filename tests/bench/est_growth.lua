-- est_growth.lua — process CPU time of estimators against their FLOPs as n
-- grows (issue 20, part 3), steadier than `sparselab bench`'s wall time on a
-- time-sliced machine: run on one core, e.g.
--   OPENBLAS_NUM_THREADS=1 taskset -c 1 env LUA_CPATH='build/?.so' \
--     lua5.4 tests/bench/est_growth.lua vertical_slash,flexprefill,xattention 8192,16384,65536 [heads=1]
-- Inputs as the bench (sl.synthetic, d = 64, seed 1); times m.mask(prob, p)
-- at the defaults (best of 3 after a warm-up, os.clock); FLOPs from
-- m.estimate(prob, p).flops. Prints per n: CPU ms, FLOPs, ns/FLOP, and the
-- growth of ns/FLOP over the first n (<= 1: time grows no faster than FLOPs).
local sl = require "sparselab"
local ids, sizes = {}, {}
for x in (arg[1] or "vertical_slash,flexprefill,xattention"):gmatch("[^,]+") do ids[#ids + 1] = x end
for x in (arg[2] or "8192,16384,65536"):gmatch("[^,]+") do sizes[#sizes + 1] = tonumber(x) end
local heads = tonumber(arg[3] or 1)
print(string.format("%-16s %7s %10s %12s %9s %8s", "method", "n", "cpu ms", "flops", "ns/flop", "growth"))
local base = {}
for _, n in ipairs(sizes) do
  local wl = {n = n, heads = heads, kv_heads = heads, d = 64, seed = 1}
  local q, k, v = sl.synthetic(wl)
  local prob = sl.problem{q = q, k = k, v = v, backend = "cpu"}
  for _, id in ipairs(ids) do
    local m = sl.methods.get(id)
    local p = sl.registry.resolve(m, {})
    local e = m.estimate(prob, p)
    local flops = e.flops
    e.mask:close()
    local best = math.huge
    for _ = 1, 3 do
      local t0 = os.clock()
      local mk <close> = m.mask(prob, p)
      best = math.min(best, (os.clock() - t0) * 1e3)
    end
    local per = best * 1e6 / flops
    base[id] = base[id] or per
    print(string.format("%-16s %7d %10.1f %12.4g %9.3f %8.2f", id, n, best, flops, per, per / base[id]))
    io.stdout:flush()
    collectgarbage()
  end
end
