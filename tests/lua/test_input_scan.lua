-- test_input_scan.lua — the op-input scan (issue 20, session 3): one
-- vectorised pass (on the context's threads above 1M elements) decides that
-- an input is clean; every bad value must still be caught, at any position
-- (first, middle, a vector tail, last), on small and multi-chunk inputs, with
-- the same one-line messages as before: NaN anywhere; +inf where only -inf
-- may be (reduce.*: SL__IN_NEG_INF); any infinity in q / k (finite inputs);
-- -inf accepted where the policy allows it. Also select.topk's quickselect
-- against ref.
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


-- select.topk's cpu kernel keeps the first k of the order by quickselect
-- (issue 20, session 3): the kept set must equal ref's (a full sort) for
-- every k, with heavy ties (values from a few levels), -inf entries and
-- per-head budgets.
test("select.topk (quickselect) keeps exactly ref's set: ties, -inf, every k, per-head k", function()
  math.randomseed(31)
  for _, C in ipairs{1, 7, 64, 1000, 4099} do
    local rows = {}
    for h = 1, 3 do
      local r = {}
      for c = 1, C do
        local u = math.random()
        r[c] = u < 0.1 and -math.huge or (h == 1 and math.random(0, 3) or (h == 2 and math.random() or 0.5))
      end
      rows[h] = r
    end
    local x = sl.tensor(rows, "f32")
    for _, k in ipairs{0, 1, 2, C // 3, C // 2, C - 1, C, C + 5} do
      local a = sl.select.topk(x, {k = k}):totable()
      local b = sl.select.topk(x, {k = k, backend = "ref"}):totable()
      for h = 1, 3 do
        for c = 1, C do
          if a[h][c] ~= b[h][c] then error(string.format("C %d k %d head %d entry %d: cpu %d, ref %d", C, k, h, c - 1,
            a[h][c], b[h][c])) end
        end
      end
    end
    local ks = sl.tensor({1, C // 2, C}, "i32")
    local a = sl.select.topk(x, {k = ks}):totable()
    local b = sl.select.topk(x, {k = ks, backend = "ref"}):totable()
    for h = 1, 3 do for c = 1, C do eq(a[h][c], b[h][c], "per-head k") end end
  end
end)


-- The score-range check (max |q|, |k| before an attention kernel) runs on the
-- context's threads above 1M elements: a value that makes the scores
-- overflow float32 is found in every chunk (the call is refused before the
-- kernel runs, so the large shape costs only the scan).
test("attn.dense refuses overflowing scores found anywhere in a multi-chunk q or k", function()
  local n, d = 20011, 64  -- 1.28M elements: several chunks and a tail
  local q = sl.randn({1, n, d}, {seed = 6})
  local k = sl.randn({1, n, d}, {seed = 7})
  local v = sl.randn({1, 8, d}, {seed = 8})
  for _, which in ipairs{"q", "k"} do
    local t = which == "q" and q or k
    for _, flat in ipairs{0, (n * d) // 2 + 5, n * d - 1} do
      local r, c = flat // d + 1, flat % d + 1
      t:set(1, r, c, 3e38)
      H.raises(function() sl.attn.dense(q, k, sl.randn({1, n, d}, {seed = 9}), {causal = true}) end,
        "scores overflow float32")
      t:set(1, r, c, 0.5)
    end
  end
  -- small inputs take the one-thread path
  local qs, ks, vs = sl.randn({1, 8, 4}, {seed = 1}), sl.randn({1, 8, 4}, {seed = 2}), sl.randn({1, 8, 4}, {seed = 3})
  qs:set(1, 8, 4, 3e38)
  H.raises(function() sl.attn.dense(qs, ks, vs, {causal = true}) end, "scores overflow float32")
  v = nil
end)

H.done()
