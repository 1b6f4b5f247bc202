-- sparselab.bench — performance as ratios measured in one run (DESIGN §10):
-- our dense attention FLOP rate against the OpenBLAS sgemm ceiling, and the
-- block-sparse executor's speedup over our dense at set densities. Medians of
-- repeated runs; the machine is shared, so only ratios carry meaning.
local sl = require "sparselab"

local B = {}

local function median_ms(reps, f)
  local t = {}
  f() -- warm-up
  for i = 1, reps do
    local t0 = sl.time()
    f()
    t[i] = (sl.time() - t0) * 1e3
  end
  table.sort(t)
  return t[(reps + 1) // 2]
end

--- o = {quick = bool, backend = "cpu"} -> array of {name, n, d, heads, backend, params, metrics}
function B.run(o)
  local quick = o.quick
  local backend = o.backend or "cpu"
  local reps = quick and 3 or 5
  local results = {}
  local sgemm_n = quick and 2048 or 4096
  local ceiling = sl.bench_sgemm(sgemm_n, reps)
  results[#results + 1] = {name = "sgemm", n = sgemm_n, d = sgemm_n, heads = 1, backend = "openblas",
    params = {threads = sl.threads()}, metrics = {gflops = ceiling}}
  local sizes = quick and {4096} or {4096, 8192, 16384}
  local dims = {64, 128}
  local heads = sl.threads()
  for _, n in ipairs(sizes) do
    for _, d in ipairs(dims) do
      local q = sl.randn({heads, n, d}, {seed = 1})
      local k = sl.randn({heads, n, d}, {seed = 2})
      local v = sl.randn({heads, n, d}, {seed = 3})
      local args = {causal = true, backend = backend}
      local ms = median_ms(reps, function() return sl.attn.dense(q, k, v, args) end)
      local gflops = sl.op_flops("attn.dense", q, k, v, args) / (ms * 1e-3) / 1e9
      results[#results + 1] = {name = "attn.dense", n = n, d = d, heads = heads, backend = backend,
        params = {causal = true}, metrics = {gflops = gflops, sgemm_gflops = ceiling,
          ratio_to_sgemm = gflops / ceiling, time_ms = ms, target = 0.6}}
      if d == 64 then
        -- block-sparse speedup over our dense at densities rho (a causal
        -- window sized to keep that fraction of the causal pairs)
        for _, rho in ipairs{0.05, 0.1, 0.25, 0.5} do
          local w = math.max(1, math.floor(n * (1 - math.sqrt(1 - rho)) + 0.5))
          local m = sl.mask.window(w):materialize{n_q = n, n_k = n, bq = 64, bk = 64}
          local sms = median_ms(reps, function() return sl.attn.block_sparse(q, k, v, m, {backend = backend}) end)
          local density = m:density(true)
          -- the executor computes whole 64x64 blocks: the fraction of dense
          -- work it really does is its FLOPs over dense FLOPs
          local exec = sl.op_flops("attn.block_sparse", q, k, v, m) / sl.op_flops("attn.dense", q, k, v, args)
          results[#results + 1] = {name = "attn.block_sparse", n = n, d = d, heads = heads, backend = backend,
            params = {pattern = "window", w = w, bq = 64, bk = 64},
            metrics = {density = density, exec_density = exec, time_ms = sms, dense_time_ms = ms,
              speedup = ms / sms, target_speedup = 0.8 / density, exec_efficiency = ms / sms * exec}}
        end
      end
    end
  end
  return results
end

return B
