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

test("block lists: from_blocks over i32 lists equals from_blocks over the u8 keep; block_lists reads a keep; bad lists refused", function()
  -- a seeded keep (about a third of the blocks), heads 3, ragged geometry
  local hq, n_q, n_k, bq, bk = 3, 150, 170, 16, 8
  local R, C = (n_q + bq - 1) // bq, (n_k + bk - 1) // bk
  local u = sl.rand({hq, R, C}, {seed = 19}):totable()
  local keep, lists, L = {}, {}, 0
  for h = 1, hq do
    keep[h], lists[h] = {}, {}
    for r = 1, R do
      keep[h][r], lists[h][r] = {}, {}
      for c = 1, C do
        keep[h][r][c] = u[h][r][c] < 0.35 and 1 or 0
        if keep[h][r][c] == 1 then lists[h][r][#lists[h][r] + 1] = c - 1 end
      end
      L = math.max(L, #lists[h][r])
    end
  end
  L = L + 2 -- padding on every row
  for h = 1, hq do for r = 1, R do for e = #lists[h][r] + 1, L do lists[h][r][e] = -1 end end end
  local kt, lt = sl.tensor(keep, "u8"), sl.tensor(lists, "i32")
  -- block_lists written here from the keep's definition, not from the code
  local got = sl.mask.block_lists(kt, L):totable()
  for h = 1, hq do for r = 1, R do for e = 1, L do eq(got[h][r][e], lists[h][r][e], "block_lists entry") end end end
  -- into rows 3.. of a larger tensor, the rest untouched
  local into = sl.zeros({hq, R + 4, L}, "i32")
  sl.mask.block_lists(kt, L, into, 3)
  local it = into:totable()
  eq(it[1][1][1], 0, "row before untouched"); eq(it[hq][R + 3][1], 0, "row after untouched")
  for h = 1, hq do for r = 1, R do for e = 1, L do eq(it[h][r + 2][e], lists[h][r][e], "into entry") end end end
  for _, causal in ipairs{true, false} do
    local o = {n_q = n_q, n_k = n_k, bq = bq, bk = bk, causal = causal}
    local a, b = sl.mask.from_blocks(kt, o), sl.mask.from_blocks(lt, o)
    local x, y = a:to_bits():totable(), b:to_bits():totable()
    local bad = 0
    for h = 1, hq do for i = 1, n_q do for j = 1, n_k do if x[h][i][j] ~= y[h][i][j] then bad = bad + 1 end end end end
    eq(bad, 0, "pairs differing (causal " .. tostring(causal) .. ")")
    H.near(a:density(causal), b:density(causal), 0, "density")
  end
  local o = {n_q = n_q, n_k = n_k, bq = bq, bk = bk}
  H.raises(function() sl.mask.from_blocks(sl.tensor({{{2, 1, -1}}}, "i32"), {n_q = 16, n_k = 32, bq = 16, bk = 8}) end,
    "ascending", "unsorted list")
  H.raises(function() sl.mask.from_blocks(sl.tensor({{{0, -1, 1}}}, "i32"), {n_q = 16, n_k = 32, bq = 16, bk = 8}) end,
    "after -1 padding", "entry after padding")
  H.raises(function() sl.mask.from_blocks(sl.tensor({{{0, 4}}}, "i32"), {n_q = 16, n_k = 32, bq = 16, bk = 8}) end,
    "ascending key blocks in", "block past n_kb")
  H.raises(function() sl.mask.from_blocks(sl.zeros({hq, R - 1, L}, "i32"), o) end, "query blocks", "wrong row count")
  H.raises(function() sl.mask.block_lists(kt, 1) end, "keeps more than L", "L too small")
end)

H.done()
