-- test_cluster_lua.lua — the cluster ops (issue 17, session 3) give the same
-- results as the Lua loops they replace, on small inputs: DPC-kNN of
-- token_merge_recycle (T.dpc vs T.dpc_op, and the recycling run's logits),
-- the k-means router and the gating of moe_split_route (E.build / E.hook
-- with impl "lua" vs "op": routers, experts and logits, unit and softmax
-- weights), on backends ref and cpu. Exact equality: the ops sum in the Lua
-- loops' order in float64.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local T = require "sparselab.tokenprune"
local E = require "sparselab.moe"
local test, eq = H.test, H.eq

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local function ids_of(name, n)
  local f = assert(io.open(DATA .. "/texts/" .. name .. ".txt", "rb"))
  local ids = m:encode(f:read("a"))
  f:close()
  local out = {}
  for i = 1, math.min(n, #ids) do out[i] = ids[i] end
  return out
end

local function rows_f32(n, d, seed)
  return sl.randn({n, d}, {seed = seed}):totable()
end

local function same_list(a, b, what)
  eq(#a, #b, what .. " length")
  for i = 1, #a do eq(a[i], b[i], what .. " [" .. i .. "]") end
end

local function same_rows(a, b, what)
  eq(#a, #b, what .. " rows")
  for i = 1, #a do same_list(a[i], b[i], what .. " row " .. i) end
end

test("token_merge_recycle: cluster.dpc equals the Lua DPC-kNN (assign and centres), ref and cpu", function()
  for _, case in ipairs{{1, 4, 1}, {9, 8, 2}, {40, 16, 5}, {73, 64, 8}, {30, 6, 30}} do
    local rows = rows_f32(case[1], case[2], 100 + case[1])
    local a1, c1 = T.dpc(rows, case[3])
    for _, be in ipairs{"ref", "cpu"} do
      local a2, c2 = T.dpc_op(rows, case[3], be)
      same_list(a2, a1, "assign " .. be)
      same_list(c2, c1, "centres " .. be)
    end
  end
end)

test("token_merge_recycle: the recycling run gives the same logits with DPC as op or Lua", function()
  local ids = ids_of("05_moon_friend", 160)
  local out = {}
  for _, impl in ipairs{"lua", "op"} do
    local attn, site = T.hook(m, {ratio = 0.3, layers = {0}, probe = 16, recycle = true, dpc = impl})
    local st <close> = m.c:state(#ids)
    out[impl] = m.c:forward(ids, st, attn, site):totable()
  end
  same_rows(out.op, out.lua, "logits")
end)

test("moe_split_route: cluster.kmeans equals the Lua k-means (centroids after f32 rounding)", function()
  for _, case in ipairs{{20, 4, 2, 0}, {150, 16, 4, 10}, {300, 64, 6, 20}} do
    local rows = rows_f32(case[1], case[2], 200 + case[1])
    local lua = sl.tensor(E.kmeans_lua(rows, case[3], case[4], 7)):totable()
    for _, be in ipairs{"ref", "cpu"} do
      same_rows(E.kmeans_op(rows, case[3], case[4], 7, be):totable(), lua, "centroids " .. be)
    end
  end
end)

test("moe_split_route: routers, experts and logits equal with impl op and lua (unit and softmax weights)", function()
  local calib = {ids_of("03_brave_turtle", 120)}
  local ids = ids_of("06_little_seed", 100)
  for _, w in ipairs{"unit", "softmax"} do
    local built, out = {}, {}
    for _, impl in ipairs{"lua", "op"} do
      built[impl] = E.build(m, calib, {experts = 4, k = 2, iters = 5, impl = impl, weights = w, scale = 1.25})
      local st <close> = m.c:state(#ids)
      local stats = {}
      out[impl] = m.c:forward(ids, st, nil, E.hook(m, built[impl], stats)):totable()
      out[impl .. "_kept"] = stats.kept
    end
    for l = 0, m.cfg.n_layers - 1 do
      same_rows(built.op.router[l]:totable(), built.lua.router[l]:totable(), "router " .. l)
      for e = 1, 4 do same_list(built.op.experts[l][e], built.lua.experts[l][e], "expert " .. e) end
    end
    same_rows(out.op, out.lua, "logits (" .. w .. ")")
    eq(out.op_kept, out.lua_kept, "kept units")
  end
end)

H.done()
