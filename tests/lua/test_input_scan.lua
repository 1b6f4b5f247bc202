-- test_input_scan.lua — the op-input scan (issue 20, session 3): one
-- vectorised pass (on the context's threads above 1M elements) decides that
-- an input is clean; every bad value must still be caught, at any position
-- (first, middle, a vector tail, last), on small and multi-chunk inputs, with
-- the same one-line messages as before: NaN anywhere; +inf where only -inf
-- may be (reduce.*: SL__IN_NEG_INF); any infinity in q / k (finite inputs);
-- -inf accepted where the policy allows it.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test, eq = H.test, H.eq

-- [1, R, C] inputs: 3 x 37 (smaller than one vector lane block) and
-- 1 x 300 x 4099 (1.23M elements: several 256K chunks, odd tail)
local SHAPES = {{1, 3, 37}, {1, 300, 4099}}

local function positions(s)
  local n = s[2] * s[3]
  return {0, n // 2 + 1, n - 3, n - 1}
end

local function at(s, flat) return 1, flat // s[3] + 1, flat % s[3] + 1 end

test("reduce.columns rejects NaN and +inf at every position, accepts -inf (one pass decides clean inputs)", function()
  for _, s in ipairs(SHAPES) do
    local x = sl.rand(s, {seed = 3})
    eq(#sl.reduce.columns(x):totable()[1], s[3], "clean input runs")
    for _, flat in ipairs(positions(s)) do
      local h, r, c = at(s, flat)
      x:set(h, r, c, 0 / 0)
      H.raises(function() sl.reduce.columns(x) end, "NaN at flat index " .. flat .. ",")
      x:set(h, r, c, math.huge)
      H.raises(function() sl.reduce.columns(x) end, "+inf at flat index " .. flat .. ",")
      x:set(h, r, c, -math.huge)
      local y = sl.reduce.columns(x):totable()[1]
      eq(y[c], -math.huge, "-inf allowed and summed")
      x:set(h, r, c, 0.5)
    end
  end
end)

test("score.last_q rejects any infinity or NaN in q and k (finite inputs)", function()
  for _, s in ipairs(SHAPES) do
    local q = sl.randn(s, {seed = 4})
    local k = sl.randn(s, {seed = 5})
    for _, flat in ipairs(positions(s)) do
      local h, r, c = at(s, flat)
      for _, bad in ipairs{0 / 0, math.huge, -math.huge} do
        k:set(h, r, c, bad)
        H.raises(function() sl.score.last_q(q, k, {last = 2}) end, "at flat index " .. flat .. ", expected finite values")
        k:set(h, r, c, 0.25)
      end
    end
    eq(sl.score.last_q(q, k, {last = 2}):shape()[2], 2, "clean q, k run")
  end
end)

H.done()
