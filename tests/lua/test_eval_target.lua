-- test_eval_target.lua — matched targets from Lua (issue 18): sl.eval(m, prob, {density = D})
-- solves the knob, runs at it and records target_density / achieved_density; a target the knob
-- cannot reach gives a failed result with the reachable range, recorded as a failed row.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, eq, near, truthy, raises = H.test, H.eq, H.near, H.truthy, H.raises

local q, k, v = sl.synthetic{heads = 2, kv_heads = 1, n = 256, d = 16, seed = 7}
local prob = sl.problem{q = q, k = k, v = v, workload = "synthetic"}

test("density target: solved, run and recorded", function()
  local r = sl.eval("sliding_window", prob, {density = 0.3, params = {bq = 16, bk = 16}})
  eq(r.status, nil, "status")
  eq(r.metrics.target_density, 0.3, "target")
  eq(r.metrics.achieved_density, r.metrics.density, "achieved = executed density")
  -- the solved window is the smallest that keeps >= 0.3 of the causal pairs: one less keeps less
  truthy(r.metrics.density >= 0.3 * 0.99, "at least the target: " .. r.metrics.density)
  local smaller = sl.eval("sliding_window", prob, {budget = r.budget - 16, params = {bq = 16, bk = 16}})
  truthy(smaller.metrics.density < r.metrics.density, "a smaller window keeps less")
  -- the kept pairs of a w-window on n = 256 (block-aligned by the executor), counted independently
  local kept, causal = 0, 256 * 257 / 2
  local w = r.budget
  for i = 0, 255 do
    local lo_blk = math.max(0, (i - w + 1)) // 16 -- first key block touched by the window
    kept = kept + (i + 1 - lo_blk * 16)
  end
  truthy(math.abs(kept / causal - r.metrics.density) < 0.05, string.format("density %g near the block-aligned count %g",
    r.metrics.density, kept / causal))
end)

test("unreachable target: a failed result with the range, recorded", function()
  local r = sl.eval("xattention", prob, {density = 0.001})
  eq(r.status, "failed", "status")
  truthy(r.error:find("cannot go down to density 0.001", 1, true), "reason: " .. r.error)
  eq(r.metrics.target_density, 0.001, "target kept")
  truthy(r.metrics.reachable_density_min > 0.001 and r.metrics.reachable_density_max <= 1, "range")
  local path = os.tmpname()
  local db, run = sl.experiment{db = path}
  sl.record(db, run, r)
  sl.record(db, run, sl.eval("sliding_window", prob, {density = 0.3, params = {bq = 16, bk = 16}}))
  local rows = db:query("SELECT status, target_density, error FROM v_result ORDER BY result_id")
  db:finish_run(run, "ok")
  db:close()
  os.remove(path)
  eq(#rows, 2, "both rows")
  eq(rows[1].status, "failed", "failed row")
  eq(rows[1].target_density, 0.001, "failed row's target")
  eq(rows[2].status, "ok", "ok row")
  eq(rows[2].target_density, 0.3, "ok row's target")
end)

test("unreachable target: the error names block sizes that reach it, and they do", function()
  local q2, k2, v2 = sl.synthetic{heads = 2, kv_heads = 1, n = 512, d = 16, seed = 7}
  local p2 = sl.problem{q = q2, k = k2, v = v2}
  local r = sl.eval("xattention", p2, {density = 0.1})
  eq(r.status, "failed", "unreachable with the default blocks")
  local size = tonumber(r.error:match("smaller blocks reach it: with %-%-param block=(%d+)"))
  truthy(size, "hint in: " .. r.error)
  local r2 = sl.eval("xattention", p2, {density = 0.1, params = {block = size}})
  eq(r2.status, nil, "the hinted setting reaches the target")
  truthy(math.abs(r2.metrics.achieved_density - 0.1) < 0.05, "achieved " .. r2.metrics.achieved_density)
end)

test("target options: one at a time, not with a budget", function()
  raises(function() sl.eval("sliding_window", prob, {density = 0.3, budget = 64}) end, "not both", "budget + target")
  raises(function() sl.eval("sliding_window", prob, {density = 0.3, flops = 1e6}) end, "give one target", "two")
  raises(function() sl.eval("sliding_window", prob, {densty = 0.3}) end, "unknown option 'densty'", "typo")
end)

H.done()
