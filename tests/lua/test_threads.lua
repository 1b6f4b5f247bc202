-- test_threads.lua — sl.threads(n) sets the context's cpu thread count
-- (issue 19, session 3: the binding used to ignore n): the count reads back,
-- n <= 0 restores the default, a non-integer is refused in one line, and an
-- op gives the same result on 1 and on 3 threads (the split is by rows).
-- Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_threads.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy, raises = H.test, H.eq, H.truthy, H.raises

local default = sl.threads()

test("sl.threads: sets and reads back the count; n <= 0 restores the default", function()
  truthy(default >= 1, "a default of at least one thread")
  eq(sl.threads(3), 3)
  eq(sl.threads(), 3)
  eq(sl.threads(1), 1)
  eq(sl.threads(), 1)
  eq(sl.threads(0), default)
  eq(sl.threads(-2), default)
  eq(sl.threads(100000), 4096)
  sl.threads(0)
end)

test("sl.threads: a non-integer count is refused", function()
  raises(function() sl.threads("two") end, "integer")
  raises(function() sl.threads(1.5) end, "integer")
  eq(sl.threads(), default)
end)

test("sl.threads: attn.dense on the cpu backend is the same on 1 and 3 threads", function()
  local q = sl.randn({2, 77, 24}, {seed = 11})
  local k = sl.randn({2, 77, 24}, {seed = 12})
  local v = sl.randn({2, 77, 24}, {seed = 13})
  sl.threads(1)
  local a = sl.attn.dense(q, k, v, {causal = true, backend = "cpu"}):totable()
  sl.threads(3)
  local b = sl.attn.dense(q, k, v, {causal = true, backend = "cpu"}):totable()
  sl.threads(0)
  local same = true
  for h = 1, 2 do for i = 1, 77 do for j = 1, 24 do
    if a[h][i][j] ~= b[h][i][j] then same = false end
  end end end
  truthy(same, "identical rows on 1 and 3 threads")
end)

H.done()
