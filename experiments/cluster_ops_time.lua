-- cluster_ops_time.lua — wall time of the clustering / routing loops of
-- token_merge_recycle and moe_split_route before (Lua) and after (the
-- cluster ops, cpu backend) at realistic sizes, in one run (issue 17,
-- session 3): DPC-kNN of n candidate tokens of width D (SparseVLM
-- recycles 30 % of the pruned visual tokens of a 4096-wide LLaVA), k-means
-- of T calibration tokens into E router centroids, and the MoE gating of T
-- tokens' FFN units. Same inputs, results checked equal.
--   LUA_CPATH='build/?.so' lua5.4 experiments/cluster_ops_time.lua [scale]
local sl = require "sparselab"
local T = require "sparselab.tokenprune"
local E = require "sparselab.moe"

local s = tonumber(arg[1]) or 1
local function time(f)
  local t0 = sl.time and sl.time() or os.clock()
  local r1, r2 = f()
  return (sl.time and sl.time() or os.clock()) - t0, r1, r2
end

print("| loop | size | Lua s | op (cpu) s | speed-up | same result |")
print("| --- | --- | ---: | ---: | ---: | --- |")
-- DPC
do
  local n, d = math.floor(200 * s), 1024
  local rows = sl.randn({n, d}, {seed = 1}):totable()
  local c = (math.floor(0.3 * n) + 1) // 10 + 1
  local tl, a1, c1 = time(function() return T.dpc(rows, c) end)
  local to, a2, c2 = time(function() return T.dpc_op(rows, c, "cpu") end)
  local same = #a1 == #a2
  for i = 1, #a1 do same = same and a1[i] == a2[i] end
  for i = 1, #c1 do same = same and c1[i] == c2[i] end
  print(string.format("| cluster.dpc | n %d, D %d, c %d | %.3f | %.4f | %.0f× | %s |", n, d, c, tl, to, tl / to, same))
end
-- k-means
do
  local n, d, k, it = math.floor(2000 * s), 256, 8, 20
  local rows = sl.randn({n, d}, {seed = 2}):totable()
  local tl, cl = time(function() return E.kmeans_lua(rows, k, it, 3) end)
  local to, co = time(function() return E.kmeans_op(rows, k, it, 3, "cpu") end)
  local a, b = sl.tensor(cl):totable(), co:totable()
  local same = true
  for i = 1, #a do for j = 1, #a[i] do same = same and a[i][j] == b[i][j] end end
  print(string.format("| cluster.kmeans | n %d, D %d, k %d, %d rounds | %.3f | %.4f | %.0f× | %s |", n, d, k, it,
    tl, to, tl / to, same))
end
-- gating (the Lua loop of E.hook's ffn_hidden site, as written there, vs cluster.route)
do
  local Tn, hid, nE, k = math.floor(256 * s), 2816, 8, 2 -- 256 x 2816 stays under the 1e6-entry totable limit
  local h = sl.randn({Tn, hid}, {seed = 4})
  local logits = sl.randn({Tn, nE}, {seed = 5})
  local of, experts = {}, {}
  for e = 1, nE do experts[e] = {} end
  for j = 1, hid do
    local e = (j - 1) * nE // hid + 1
    of[j] = e - 1
    experts[e][#experts[e] + 1] = j
  end
  local ex = sl.tensor(of, "i32")
  local tl, yl = time(function()
    local routes = E.route(logits:totable(), k)
    local rows = h:totable()
    for i, row in ipairs(rows) do
      local w = {}
      for _, e in ipairs(routes[i]) do for _, j in ipairs(experts[e]) do w[j] = 1 end end
      for j = 1, #row do if w[j] then row[j] = row[j] * w[j] else row[j] = 0 end end
    end
    return sl.tensor(rows)
  end)
  local to, yo = time(function() return sl.cluster.route(h, logits, ex, {k = k, backend = "cpu"}) end)
  local a, b = yl:totable(), yo:totable()
  local same = true
  for i = 1, #a do for j = 1, #a[i] do same = same and a[i][j] == b[i][j] end end
  print(string.format("| cluster.route | T %d, H %d, E %d, k %d | %.3f | %.4f | %.0f× | %s |", Tn, hid, nE, k, tl,
    to, tl / to, same))
end
