-- est_paths.lua — process CPU time of a recipe's estimate on its old Lua path
-- (the option the recipe keeps as a test oracle) against its default path,
-- alternating, best of 3 each (issue 20, session 4b). Run on one core:
--   OPENBLAS_NUM_THREADS=1 taskset -c 1 env LUA_CPATH='build/?.so' \
--     lua5.4 tests/bench/est_paths.lua xattention 8192,16384,65536
-- Inputs as est_growth.lua (sl.synthetic, d = 64, seed 1, 1 head), defaults.
local sl = require "sparselab"
local id = arg[1] or "xattention"
local sizes = {}
for x in (arg[2] or "8192,16384,65536"):gmatch("[^,]+") do sizes[#sizes + 1] = tonumber(x) end
-- how each recipe is called on its old path and on the default one
local CALLS = {
  xattention = function(m, prob, p, old)
    local e = m.estimate(prob, p, old and {lua_rows = true} or nil)
    e.mask:close(); e.scores:close()
  end,
}
local call = assert(CALLS[id], "no call for " .. id)
print(string.format("%-24s %7s %10s %10s %8s", "method", "n", "old ms", "new ms", "speedup"))
for _, n in ipairs(sizes) do
  local q, k, v = sl.synthetic{n = n, heads = 1, kv_heads = 1, d = 64, seed = 1}
  local prob = sl.problem{q = q, k = k, v = v, backend = "cpu"}
  local m = sl.methods.get(id)
  local p = sl.registry.resolve(m, {})
  call(m, prob, p, true); call(m, prob, p, false)
  local best = {math.huge, math.huge}
  for _ = 1, 3 do
    for i, old in ipairs({true, false}) do
      local t0 = os.clock()
      call(m, prob, p, old)
      best[i] = math.min(best[i], (os.clock() - t0) * 1e3)
    end
    collectgarbage()
  end
  print(string.format("%-24s %7d %10.1f %10.1f %7.1fx", id, n, best[1], best[2], best[1] / best[2]))
  io.stdout:flush()
end
