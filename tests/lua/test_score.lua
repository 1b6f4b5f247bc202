-- test_score.lua — the estimators, reductions and selectors of issue 4
-- through the generic op binding (sl.score.*, sl.reduce.*, sl.select.*),
-- opt.k / opt.p beside the numeric params k / p, and the masks made from
-- selections (sl.mask.from_blocks, index_from_columns, from_slashes), with
-- the expected values computed here in plain Lua. Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_score.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local q = sl.randn({2, 20, 8}, {seed = 11})
local k = sl.randn({1, 20, 8}, {seed = 12})
local v = sl.randn({1, 20, 8}, {seed = 13})

local function dot(h, i, j)
  local s = 0
  for t = 1, 8 do s = s + q:get(h, i, t) * k:get(1, j, t) end
  return s / math.sqrt(8)
end

test("score.pooled: block means by hand, -inf in the causal future; cpu equals ref", function()
  local s = sl.score.pooled(q, k, {bq = 8, bk = 8})
  eq(table.concat(s:shape(), "x"), "2x3x3", "shape")
  local r = sl.score.pooled(q, k, {bq = 8, bk = 8, backend = "ref"})
  for h = 1, 2 do for i = 1, 3 do for j = 1, 3 do
    local a, b = s:get(h, i, j), r:get(h, i, j)
    truthy(a == b or math.abs(a - b) < 1e-5, "cpu vs ref at " .. h .. "," .. i .. "," .. j)
  end end end
  -- block (2, 1) of head 2: mean over rows 9..16 and keys 1..8 of q.k
  local sum = 0
  for i = 9, 16 do for j = 1, 8 do sum = sum + dot(2, i, j) end end
  near(s:get(2, 2, 1), sum / 64, 1e-4, "mean-pooled score")
  eq(s:get(1, 1, 2), -math.huge, "future block")
  local p = sl.score.pooled(q, k, {bq = 8, bk = 8, softmax = true})
  near(p:get(1, 2, 1) + p:get(1, 2, 2), 1, 1e-5, "softmax row over visible blocks")
end)

test("score.last_q rows equal exp(s - lse) of attn.dense and sum to 1", function()
  local p = sl.score.last_q(q, k, {last = 4})
  local _, lse = sl.attn.dense(q, k, v, {causal = true})
  eq(table.concat(p:shape(), "x"), "2x4x20", "shape")
  local tot = 0
  for j = 1, 20 do
    local want = j <= 19 and math.exp(dot(1, 19, j) - lse:get(1, 19)) or 0
    near(p:get(1, 3, j), want, 1e-5, "p[" .. j .. "]")
    tot = tot + p:get(1, 3, j)
  end
  near(tot, 1, 1e-5, "row sum")
  local pr = sl.score.rows(q, k, sl.tensor({18}, "i32"))
  near(pr:get(1, 1, 5), p:get(1, 3, 5), 1e-6, "score.rows of the same row")
end)

test("score.exact: block sums of each row add to the block's rows", function()
  local e = sl.score.exact(q, k, {bq = 8, bk = 8})
  local s = e:get(2, 3, 1) + e:get(2, 3, 2) + e:get(2, 3, 3)
  near(s, 4, 1e-4, "last block has 4 rows")
  local n = sl.score.exact(q, k, {bq = 8, bk = 8, normalize = true})
  near(n:get(2, 3, 1) + n:get(2, 3, 2) + n:get(2, 3, 3), 1, 1e-5, "normalised")
end)

test("reduce.columns / diagonals / block / heads against plain Lua", function()
  local p = sl.score.last_q(q, k, {last = 4})
  local cols, diag = sl.reduce.columns(p), sl.reduce.diagonals(p)
  local c5, d2 = 0, 0
  for r = 1, 4 do
    c5 = c5 + p:get(1, r, 5)
    -- row r (1-based) is at 0-based position 15 + r; offset 2 is key 13 + r, 1-based 14 + r
    d2 = d2 + p:get(1, r, 14 + r)
  end
  near(cols:get(1, 5), c5, 1e-5, "column 5")
  near(diag:get(1, 3), d2, 1e-5, "offset 2")
  local b = sl.reduce.block(p, {br = 2, bc = 10, mode = 1})
  local m = -math.huge
  for r = 3, 4 do for j = 11, 20 do m = math.max(m, p:get(2, r, j)) end end
  near(b:get(2, 2, 2), m, 1e-6, "tile max")
  local hs = sl.reduce.heads(p, {mode = 2})
  near(hs:get(1, 2, 7), (p:get(1, 2, 7) + p:get(2, 2, 7)) / 2, 1e-6, "head mean")
end)

test("select.topk with a number k and with a per-head opt.k tensor; topp; threshold", function()
  local x = sl.tensor({{{1, 3, 3, 2, 3}}, {{5, 4, 3, 2, 1}}}, "f32")
  local keep = sl.select.topk(x, {k = 2})
  eq(keep:get(1, 1, 2) + keep:get(1, 1, 3), 2, "ties to the lower index")
  eq(keep:get(1, 1, 5), 0, "third 3 left out")
  local kh = sl.select.topk(x, {k = sl.tensor({1, 3}, "i32")})
  eq(kh:get(1, 1, 2) + kh:get(1, 1, 3) + kh:get(1, 1, 5), 1, "head 1 keeps 1")
  eq(kh:get(2, 1, 1) + kh:get(2, 1, 2) + kh:get(2, 1, 3), 3, "head 2 keeps 3")
  local tp = sl.select.topp(x, {p = 0.5})
  eq(tp:get(2, 1, 1) + tp:get(2, 1, 2) + tp:get(2, 1, 3), 2, "5 + 4 >= 7.5 of 15")
  local th = sl.select.threshold(x, {t = 0.6, relative = true})
  eq(th:get(2, 1, 3), 1, "3 >= 0.6 x 5")
  eq(th:get(2, 1, 4), 0, "2 < 3")
  raises(function() sl.select.topp(x, {p = 1.5}) end, "select.topp: parameter 'p'")
end)

test("sl.mask.from_blocks with every block kept is the causal mask", function()
  local keep = sl.select.topk(sl.score.pooled(q, k, {bq = 8, bk = 8}), {k = 3})
  local m = sl.mask.from_blocks(keep, {n_q = 20, n_k = 20, bq = 8, bk = 8})
  near(m:density(true), 1, 1e-12, "density")
  local o, l = sl.attn.block_sparse(q, k, v, m)
  local od, ld = sl.attn.dense(q, k, v, {causal = true})
  near(sl.metric.max_abs(o, od), 0, 1e-5, "O")
  near(sl.metric.max_abs(l, ld), 0, 1e-5, "L")
end)

test("sl.mask.index_from_columns with every column equals attn.dense", function()
  local all = {}
  for j = 0, 19 do all[#all + 1] = j end
  local idx = sl.mask.index_from_columns(sl.tensor({all}, "i32"), {n_q = 20, n_k = 20, rows_per_entry = 1})
  local o = sl.attn.token_sparse(q, k, v, idx.row_ptr, idx.col)
  local od = sl.attn.dense(q, k, v, {causal = true})
  near(sl.metric.max_abs(o, od), 0, 1e-5, "O")
  eq(idx.n_entries, 20, "one entry per row")
end)

test("a selector's u8 keep feeds index_from_columns and from_slashes directly", function()
  local p = sl.score.last_q(q, k, {last = 4})
  local keep = sl.select.topk(sl.reduce.columns(p), {k = 3})
  local idx = sl.mask.index_from_columns(keep, {n_q = 20, n_k = 20, rows_per_entry = 20})
  eq(idx.col:shape()[1], 2 * 3, "three columns per head, one entry each")
  local dk = sl.select.topk(sl.reduce.diagonals(p), {k = 2})
  local m = sl.mask.from_slashes(dk, {n_q = 20, n_k = 20, bq = 4, bk = 4, widen = false})
  truthy(m:kept(1) > 0, "slashes kept")
end)

test("sl.mask.from_slashes: exact diagonals, widened superset", function()
  local offs = sl.tensor({{0, 5}}, "i32")
  local ex = sl.mask.from_slashes(offs, {n_q = 20, n_k = 20, bq = 4, bk = 4, widen = false})
  local wd = sl.mask.from_slashes(offs, {n_q = 20, n_k = 20, bq = 4, bk = 4})
  eq(ex:kept(1), 20 + 15, "exact pairs")
  truthy(wd:kept(1) > ex:kept(1), "widened keeps more")
  local both = ex * wd
  eq(both:kept(1), ex:kept(1), "widened contains the exact mask")
  raises(function() sl.mask.from_slashes(offs, {n_q = 20}) end, "n_q and n_k are required")
end)

H.done()
