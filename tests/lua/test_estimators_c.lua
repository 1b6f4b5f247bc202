-- test_estimators_c.lua — estimator loops moved from Lua to C (issue 20,
-- session 4) against the Lua paths they replaced, which stay in the
-- recipes as options for this comparison only: the selections must be the
-- same (the executed mask arrays, or the index lists) on fresh seeded
-- shapes (GQA, ragged n, several budgets). The recipes' own tests (named
-- "<id>: ...", in the mutation harness's files) check the selections against
-- independent computations and fail under the score-blind mutation; these
-- tests only pin the C path to the old one.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy = H.test, H.eq, H.truthy

local function arrays(mask)
  local out = {}
  for i, t in ipairs({mask:arrays()}) do
    out[i] = t:numel() > 0 and t:totable() or {}
    t:close()
  end
  return out
end

local function same(a, b, what)
  if type(a) ~= "table" then eq(a, b, what); return end
  eq(#a, #b, what .. ": length")
  for i = 1, #a do same(a[i], b[i], what) end
end

local function same_mask(x, y, what)
  local a, b = arrays(x), arrays(y)
  for i, name in ipairs({"row_ptr", "col_idx", "part", "bits"}) do same(a[i], b[i], what .. ": " .. name) end
end

local function problem(c)
  local q, k, v = sl.synthetic{heads = c.hq, kv_heads = c.hkv, n = c.n, d = c.d or 16, seed = c.seed}
  return sl.problem{q = q, k = k, v = v}
end

test("estimators in C: elastic_attention's router (reduce.far) and keep rows equal the Lua loops", function()
  local m = sl.methods.get("elastic_attention")
  local cases = {
    {n = 1024, hq = 8, hkv = 4, seed = 3, p = {block = 64, sink = 64, local_window = 128}},
    {n = 1100, hq = 4, hkv = 4, seed = 5, p = {block = 32, sink = 40, local_window = 100, sa_ratio = 0.75}},
    {n = 777, hq = 6, hkv = 3, seed = 7, p = {block = 16, sink = 0, local_window = 16, window_q = 50, sa_ratio = 0.34}},
    {n = 900, hq = 4, hkv = 2, seed = 9, p = {block = 64, sink = 130, local_window = 200, window_q = 100}},
  }
  local sa_seen = 0
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    local mc, ic = m.estimate(prob, p)
    local ml, il = m.estimate(prob, p, false, {lua_router = true, lua_keep = true})
    eq(ic.stats.sa_heads, il.stats.sa_heads, "case " .. ci .. ": SA heads")
    for g = 1, prob.k:shape()[1] do
      truthy(math.abs(ic.loss[g] - il.loss[g]) <= 1e-12 * math.max(1, il.loss[g]),
        string.format("case %d: lost mass of KV head %d: %.17g, Lua %.17g", ci, g, ic.loss[g], il.loss[g]))
    end
    same(ic.keep, il.keep, "case " .. ci .. ": keep")
    same_mask(mc, ml, "case " .. ci)
    sa_seen = sa_seen + ic.stats.sa_heads
    mc:close(); ml:close()
  end
  truthy(sa_seen > 0, "some heads are routed to streaming")
end)

H.done()
