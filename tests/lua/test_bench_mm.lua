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
    eq(seen["mm.act_sparse:" .. t], 5, "five activation densities"); eq(seen["mm.act_crossover:" .. t], 1, "rho* row")
  end
end)

test("act_sparse_matmul: crossover rho* on made-up points", function()
  local rs, kind = B.crossover{{rho = 0.5, ratio = 1.5}, {rho = 0.1, ratio = 0.5}}
  near(rs, 0.3, 1e-12, "midway between 0.1 (0.5) and 0.5 (1.5)"); eq(kind, 0, "a crossing")
  rs, kind = B.crossover{{rho = 0.1, ratio = 1.2}, {rho = 0.2, ratio = 1.1}}
  eq(rs, -1, "never below 1"); eq(kind, -1, "none")
  rs, kind = B.crossover{{rho = 0.1, ratio = 0.3}, {rho = 0.4, ratio = 0.9}}
  eq(rs, 0.4, "all below: the largest density, a lower bound"); eq(kind, 1, "lower bound")
end)

test("act_sparse_matmul: rho* stored in SQLite is consistent with the stored act rows", function()
  local rows = B.run{N = 48, K = 96, rows = {1, 9}, reps = 1, sparsities = {0.75}, densities = {0.05, 0.25, 0.5, 1}}
  local path = os.tmpname()
  local db = sl.store.open(path)
  local run_id = db:begin_run{script = "test_bench_mm", argv = {}}
  for _, r in ipairs(rows) do -- as `sparselab bench --db` records them
    db:record{run_id = run_id, method = r.name, params = r.params, workload = "bench", backend = r.backend,
      n_q = r.n, n_k = r.n, head_dim = r.d, heads = r.heads, kv_heads = r.heads, metrics = r.metrics}
  end
  db:finish_run(run_id, "ok")
  for _, T in ipairs{1, 9} do
    local pts = db:query([[SELECT d.value AS rho, q.value AS ratio FROM result r
      JOIN metric d ON d.result_id = r.id AND d.name = 'density'
      JOIN metric q ON q.result_id = r.id AND q.name = 'ratio_to_sgemm'
      WHERE r.method = 'mm.act_sparse' AND r.n_k = ? ORDER BY d.value]], T)
    eq(#pts, 4, "four act rows at T = " .. T)
    local c = db:query([[SELECT d.value AS rs, k.value AS kind FROM result r
      JOIN metric d ON d.result_id = r.id AND d.name = 'crossover_density'
      JOIN metric k ON k.result_id = r.id AND k.name = 'crossover_kind'
      WHERE r.method = 'mm.act_crossover' AND r.n_k = ?]], T)
    eq(#c, 1, "one crossover row at T = " .. T)
    local rs, kind = c[1].rs, c[1].kind
    -- the stored value against the stored rows, by the definition (not by B.crossover)
    if kind == -1 then
      truthy(pts[1].ratio > 1, "none: the sparsest measured point does not beat dense")
      eq(rs, -1, "none stored as -1")
    elseif kind == 1 then
      for _, p in ipairs(pts) do truthy(p.ratio <= 1, "lower bound: every point beats dense") end
      near(rs, pts[#pts].rho, 1e-12, "lower bound = the largest measured density")
    else
      eq(kind, 0, "kind is -1, 0 or 1")
      local found = false
      for i = 2, #pts do
        local a, b = pts[i - 1], pts[i]
        local below = true
        for j = 1, i - 1 do below = below and pts[j].ratio <= 1 end
        if below and b.ratio > 1 then
          truthy(rs >= a.rho and rs <= b.rho, "rho* between the straddling densities")
          -- the line through the two points is 1 at rho*
          near(a.ratio + (b.ratio - a.ratio) * (rs - a.rho) / (b.rho - a.rho), 1, 1e-9, "line through them is 1 at rho*")
          found = true
          break
        end
      end
      truthy(found, "a crossing exists in the stored rows")
    end
  end
  db:close()
  os.remove(path)
end)

test("bench mm moe rows: grouped, per-expert loop and dense FFN per T, ratios to dense (issue 17, session 4)", function()
  local rows = B.moe{D = 32, H = 72, E = 4, k = 2, rows = {1, 6}, reps = 1}
  eq(#rows, 6, "three rows per T")
  for i, T in ipairs{1, 6} do
    local d, g, l = rows[3 * i - 2], rows[3 * i - 1], rows[3 * i]
    eq(d.name .. "," .. g.name .. "," .. l.name, "mm.ffn_dense,mm.moe,mm.moe_loop", "row names")
    eq(d.n, T, "T")
    near(g.metrics.ratio_to_dense, g.metrics.time_ms / d.metrics.time_ms, 1e-9, "grouped ratio")
    near(l.metrics.ratio_to_dense, l.metrics.time_ms / d.metrics.time_ms, 1e-9, "loop ratio")
    near(g.metrics.ratio_to_loop, g.metrics.time_ms / l.metrics.time_ms, 1e-9, "grouped / loop")
    eq(g.metrics.flops_ratio, 0.5, "k / E")
    truthy(g.metrics.experts_used >= 2 and g.metrics.experts_used <= 4, "experts with tokens")
    truthy(l.metrics.rel_diff_to_grouped <= 1e-5, "the per-expert loop computes the grouped result")
  end
end)

H.done()
