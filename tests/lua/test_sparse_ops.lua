-- test_sparse_ops.lua — the generic op binding for the executors over index
-- lists and chosen rows: optional inputs as params (bias, state_o,
-- state_lse), masks beside index lists (vs_mixed), lse_merge, op_flops, and
-- the errors a caller sees. Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_sparse_ops.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local q = sl.randn({2, 3, 8}, {seed = 1})
local k = sl.randn({1, 10, 8}, {seed = 2})
local v = sl.randn({1, 10, 8}, {seed = 3})
-- one list per row, shared by both heads: rows see keys {0,2,4}, {1,3,5}, {6..9}
local rp = sl.tensor({{0, 3, 6, 10}}, "i32")
local col = sl.tensor({0, 2, 4, 1, 3, 5, 6, 7, 8, 9}, "i32")

test("token_sparse returns O [Hq, Nq, D] and L [Hq, Nq] on ref and cpu alike", function()
  local o, l = sl.attn.token_sparse(q, k, v, rp, col)
  local ro, rl = sl.attn.token_sparse(q, k, v, rp, col, {backend = "ref"})
  eq(table.concat(o:shape(), "x"), "2x3x8", "O shape")
  eq(table.concat(l:shape(), "x"), "2x3", "L shape")
  near(sl.metric.max_abs(o, ro), 0, 1e-5, "O cpu vs ref")
  near(sl.metric.max_abs(l, rl), 0, 1e-5, "L cpu vs ref")
end)

test("bias is a params key: a constant bias c leaves O and adds c to L", function()
  local o, l = sl.attn.token_sparse(q, k, v, rp, col)
  local bias = sl.zeros({1, 3, 10})
  for i = 1, 3 do for j = 1, 10 do bias:set(1, i, j, 0.75) end end
  local ob, lb = sl.attn.token_sparse(q, k, v, rp, col, {bias = bias})
  near(sl.metric.max_abs(o, ob), 0, 1e-5, "O")
  near(lb:get(2, 3) - l:get(2, 3), 0.75, 1e-5, "L shift")
end)

test("state_o/state_lse continue a pass: the same keys twice add log 2 to L", function()
  local o, l = sl.attn.token_sparse(q, k, v, rp, col)
  local o2, l2 = sl.attn.token_sparse(q, k, v, rp, col, {state_o = o, state_lse = l})
  near(l2:get(1, 2) - l:get(1, 2), math.log(2), 1e-5, "L")
  near(sl.metric.max_abs(o, o2), 0, 1e-5, "O")
  local mo, ml = sl.attn.lse_merge(o, l, o, l)
  near(sl.metric.max_abs(ml, l2), 0, 1e-5, "lse_merge agrees")
  near(sl.metric.max_abs(mo, o2), 0, 1e-5, "lse_merge O agrees")
end)

test("rows with all rows and causal limits equals attn.dense", function()
  local qd = sl.randn({2, 10, 8}, {seed = 4})
  local rows, lim = {}, {}
  for r = 0, 9 do rows[#rows + 1] = r; lim[#lim + 1] = r + 1 end
  local o, l = sl.attn.rows(qd, k, v, sl.tensor({rows}, "i32"), sl.tensor({lim}, "i32"))
  local od, ld = sl.attn.dense(qd, k, v, {causal = true})
  near(sl.metric.max_abs(o, od), 0, 1e-5, "O")
  near(sl.metric.max_abs(l, ld), 0, 1e-5, "L")
end)

test("vs_mixed takes a mask object beside index lists; empty lists give block_sparse", function()
  local m = sl.mask.window(3):materialize{n_q = 3, n_k = 10, bq = 2, bk = 4}
  local none_rp, none_col = sl.tensor({{0, 0, 0}}, "i32"), sl.zeros({0}, "i32")
  local o, l = sl.attn.vs_mixed(q, k, v, m, none_rp, none_col)
  local ob, lb = sl.attn.block_sparse(q, k, v, m)
  near(sl.metric.max_abs(o, ob), 0, 1e-5, "O")
  near(sl.metric.max_abs(l, lb), 0, 1e-5, "L")
end)

test("op_flops counts what the executors compute", function()
  eq(sl.op_flops("attn.token_sparse", q, k, v, rp, col), 2 * 10 * 4 * 8, "token_sparse")
  local rows, lim = sl.tensor({{2, 0}}, "i32"), sl.tensor({{10, 8}}, "i32")
  eq(sl.op_flops("attn.rows", q, k, v, rows, lim), 2 * 18 * 4 * 8, "rows")
end)

test("errors name the op and what was wrong", function()
  raises(function() sl.attn.token_sparse(q, k, v, rp) end, "expected inputs q,k,v,idx.row_ptr,idx.col", "too few")
  raises(function() sl.attn.token_sparse(q, k, v, rp, col, {biass = q}) end, "'biass' is not an optional input",
    "typo")
  raises(function() sl.attn.token_sparse(q, k, v, rp, col, {bias = 3}) end, "must be an open tensor", "bias type")
  raises(function() sl.attn.token_sparse(q, k, v, rp, col, {state_o = q}) end, "state.o and state.lse come together",
    "half a state")
  local bad = sl.tensor({0, 4, 2, 1, 3, 5, 6, 7, 8, 9}, "i32")
  raises(function() sl.attn.token_sparse(q, k, v, rp, bad) end, "attn.token_sparse: idx.col", "unsorted")
  raises(function() sl.attn.rows(q, k, v, sl.tensor({{3}}, "i32"), sl.tensor({{1}}, "i32")) end,
    "attn.rows: rows[0] = 3", "row out of range")
end)

H.done()
