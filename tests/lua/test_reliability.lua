-- test_reliability.lua — issue 19's memory checks at the Lua level: masks
-- whose partial tiles repeat along a query-block row (global tokens every 72
-- positions, a prefix of dense columns not a multiple of the block) keep
-- their bits in O(n) memory (a row's equal tiles share one part), with every
-- pair still exact; the vertical_slash and loopserve executors keep only
-- the line lists (no block mask), and their density is the lines' pair count.
-- Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_reliability.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local D = require "sparselab.dynamic"
local test, eq, truthy = H.test, H.eq, H.truthy

local function ts_tokens(n, period, len)
  local t = {}
  for s = 0, n - 1, period do for x = s, math.min(s + len, n) - 1 do t[#t + 1] = x end end
  return t
end

test("global tokens every 72 positions: partial tiles shared per row, linear in n, pairs exact", function()
  local parts = {}
  for _, n in ipairs{1024, 2048, 4096} do
    local pat = sl.mask.window{w = 100} + sl.mask.global_tokens{tokens = ts_tokens(n, 72, 8)} +
      sl.mask.dense_cols{first = 20}
    local m = pat:materialize{n_q = n, n_k = n, bq = 64, bk = 64}
    local info = m:info()
    parts[#parts + 1] = info.n_part
    -- without sharing nearly every one of the n_qb (n_qb + 1) / 2 tiles is partial
    truthy(info.n_part <= 20 * info.n_qb, string.format("n = %d: %d parts for %d query blocks", n, info.n_part, info.n_qb))
    -- every pair against the rule, on a sample of rows
    local ts = {}
    for _, x in ipairs(ts_tokens(n, 72, 8)) do ts[x] = true end
    local bad = 0
    for i = 0, n - 1, 37 do
      for j = 0, n - 1 do
        -- every pattern is causal: a window of 100, the global rows and
        -- columns, the first 20 columns
        local want = j <= i and (i - j < 100 or ts[i] or ts[j] or j < 20)
        if m:get(1, i + 1, j + 1) ~= (want and true or false) then bad = bad + 1 end
      end
    end
    eq(bad, 0, "n = " .. n .. ": pairs differing from the rule")
    m:close()
  end
  -- parts per query block settle (a row holds a bounded set of distinct
  -- tiles); unshared they would grow with the row's length
  truthy(parts[3] / 64 <= 1.25 * parts[2] / 32, string.format("parts per query block: %d/16, %d/32, %d/64",
    parts[1], parts[2], parts[3]))
end)

test("vertical_slash and loopserve: the executed mask is the line lists, density = their pairs", function()
  local q, k, v = sl.randn({4, 300, 16}, {seed = 5}), sl.randn({2, 300, 16}, {seed = 6}), sl.randn({2, 300, 16}, {seed = 7})
  local prob = sl.problem{q = q, k = k, v = v}
  for _, id in ipairs{"vertical_slash", "loopserve"} do
    local m = sl.methods.get(id)
    local p = sl.registry.resolve(m, {bq = 32, bk = 32})
    local est = m.estimate(prob, p)
    truthy(D.is_lines(est.mask), id .. ": a lines mask")
    local u = est.mask:materialize()
    H.near(est.mask:density(), u:density(true), 1e-12, id .. ": density = the materialised union's")
    u:close()
    est.mask:close()
  end
end)

H.done()
