-- test_bench_mm.lua — the sparse matmul rows of `sparselab bench`
-- (bench_mm.lua): the break-even interpolation on made-up points, and a tiny
-- run whose rows carry every format, a ratio against the dense call of the
-- same T and the weight bytes of each format (not the timings themselves).
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local B = require "sparselab.bench_mm"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy
assert(sl)

test("break-even: linear between the measured points around ratio 1", function()
  near(B.break_even{{s = 0.5, ratio = 1.5}, {s = 0.75, ratio = 0.5}}, 0.625, 1e-12, "midway")
  eq(B.break_even{{s = 0.5, ratio = 1.2}, {s = 0.9, ratio = 1.1}}, nil, "never below 1")
  eq(B.break_even{{s = 0.75, ratio = 0.8}, {s = 0.5, ratio = 0.9}}, 0.5, "already below at the lowest")
end)

test("a tiny run: every format per T, ratios against mm.dense of the same T", function()
  local rows = B.run{N = 40, K = 70, rows = {1, 9}, reps = 1}
  local seen = {}
  for _, r in ipairs(rows) do
    seen[r.name .. ":" .. r.n] = (seen[r.name .. ":" .. r.n] or 0) + 1
    if r.name == "mm.bitmap" or r.name == "mm.nm" then
      near(r.metrics.ratio_to_sgemm, r.metrics.time_ms / r.metrics.sgemm_time_ms, 1e-12, "ratio")
      truthy(r.metrics.weight_bytes_ratio > 0 and r.metrics.weight_bytes_ratio < 1.2, "bytes")
    end
  end
  for _, t in ipairs{1, 9} do
    eq(seen["mm.dense:" .. t], 1, "dense"); eq(seen["mm.bitmap:" .. t], 3, "three sparsities")
    eq(seen["mm.nm:" .. t], 1, "2:4"); eq(seen["mm.break_even:" .. t], 1, "break-even row")
  end
end)

H.done()
