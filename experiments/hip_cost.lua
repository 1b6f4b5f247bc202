-- experiments/hip_cost.lua — issue 16, session 3: what hip_attention's
-- estimator costs next to dense attention. Times select.hip_tree (the C
-- tree: only the visited nodes' representatives are scored) plus the block
-- mask it feeds, the old emulation's score.lowbit tile-max map (dense cost),
-- and attn.dense, causal, on seeded random Q/K/V [H, n, d] at each n.
-- Usage: LUA_CPATH='build/?.so' lua5.4 experiments/hip_cost.lua [n,...] [backend]
-- Prints one line per n; times are the best of `reps` runs (ms).
local sl = require "sparselab"
local ns = {}
for x in (arg[1] or "4096,8192,16384"):gmatch("%d+") do ns[#ns + 1] = tonumber(x) end
local backend = arg[2] or "cpu"
local H, d, reps = 4, 64, 2
local budget, bq, bk, window = 512, 32, 8, 128

local function best(f)
  local b = math.huge
  for _ = 1, reps do
    local t0 = sl.time()
    f()
    b = math.min(b, sl.time() - t0)
  end
  return b * 1e3
end

print(string.format("hip_attention estimator vs dense, backend %s, H %d, d %d, budget %d, bq %d, bk %d, window %d",
  backend, H, d, budget, bq, bk, window))
print("n\ttree_ms(qstride1)\ttree_ms(qstride2)\tlowbit_map_ms\tdense_ms\ttree/dense\tevals")
for _, n in ipairs(ns) do
  local q = sl.randn({H, n, d}, {seed = n + 1})
  local k = sl.randn({H, n, d}, {seed = n + 2})
  local v = sl.randn({H, n, d}, {seed = n + 3})
  local ev
  local function tree(qs)
    return function()
      local keep, evals = sl.select.hip_tree(q, k, {bq = bq, bk = bk, kb = budget // bk, window = window, causal = 1,
        qstride = qs, backend = backend})
      sl.mask.from_blocks(keep, {n_q = n, n_k = n, bq = bq, bk = bk, causal = true})
      ev = math.floor(evals:stats())
    end
  end
  local t1, t2 = best(tree(1)), best(tree(2))
  local tl = best(function()
    sl.score.lowbit(q, k, {bq = bq, bk = bk, bits = 16, smooth_k = 0, causal = 1, backend = backend})
  end)
  local td = best(function() sl.attn.dense(q, k, v, {causal = 1, backend = backend}) end)
  print(string.format("%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.3f\t%d", n, t1, t2, tl, td, t1 / td, ev))
end
