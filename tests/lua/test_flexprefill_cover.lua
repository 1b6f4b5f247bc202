-- test_flexprefill_cover.lua — flexprefill's query-aware cover in C
-- (select.cover, issue 20 session 3c) against the Lua path it replaced
-- (estimate(prob, p, {lua_cover = true})): the executed masks must be the
-- same arrays (row_ptr, col_idx, part, bits) for the default and reference
-- rules, several γ, τ = 1 (every head query-aware), block sizes, GQA and
-- ragged lengths. Fresh seeded inputs, never zeros.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy = H.test, H.eq, H.truthy

local arrays, same = H.mask_arrays, H.same

test("flexprefill cover in C: the executed mask equals the Lua cover path's", function()
  local m = sl.methods.get("flexprefill")
  local cases = {
    {n = 1024, hq = 4, hkv = 2, seed = 3, p = {}},
    {n = 1024, hq = 4, hkv = 2, seed = 3, p = {reference = true}},
    {n = 1100, hq = 2, hkv = 1, seed = 5, p = {tau = 1, block = 64, min_budget = 64}},
    {n = 1100, hq = 2, hkv = 1, seed = 5, p = {tau = 1, block = 64, min_budget = 64, reference = true}},
    {n = 768, hq = 3, hkv = 3, seed = 7, p = {tau = 1, gamma = 1, block = 32, min_budget = 32}},
    {n = 768, hq = 3, hkv = 3, seed = 7, p = {tau = 1, gamma = 0.5, block = 32, min_budget = 32}},
    {n = 600, hq = 2, hkv = 2, seed = 9, p = {tau = 1, gamma = 0.3, block = 16, min_budget = 16, reference = true}},
  }
  local qa_seen = 0
  for ci, c in ipairs(cases) do
    local q, k, v = sl.synthetic{heads = c.hq, kv_heads = c.hkv, n = c.n, d = 16, seed = c.seed}
    local prob = sl.problem{q = q, k = k, v = v}
    local p = sl.registry.resolve(m, c.p)
    local e_c = m.estimate(prob, p)
    local e_l = m.estimate(prob, p, {lua_cover = true})
    eq(e_c.extra.query_aware_heads, e_l.extra.query_aware_heads, "case " .. ci .. ": query-aware heads")
    qa_seen = qa_seen + e_c.extra.query_aware_heads
    local a, b = arrays(e_c.mask), arrays(e_l.mask)
    for i, name in ipairs({"row_ptr", "col_idx", "part", "bits"}) do same(a[i], b[i], "case " .. ci .. ": " .. name) end
    e_c.mask:close(); e_l.mask:close()
  end
  truthy(qa_seen > 0, "some heads are query-aware")
end)

H.done()
