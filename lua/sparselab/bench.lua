-- sparselab.bench — performance as ratios measured in one run (DESIGN §10):
-- our dense attention FLOP rate against the OpenBLAS sgemm ceiling, the
-- block-sparse executor's speedup over our dense at set densities, and the
-- token-sparse decode's K/V read rate against memcpy. Medians of repeated
-- runs; the machine is shared, so only ratios carry meaning.
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
  B.decode(results, {quick = quick, backend = backend, reps = reps})
  return results
end

-- Index lists for decode: per list head, `sel` keys spread over the cache
-- (one random key in each of sel equal strides), one entry per head.
local function spread_lists(n_heads, n, sel, seed)
  math.randomseed(seed)
  local rp, col, stride = {}, {}, n // sel
  for h = 1, n_heads do
    rp[h] = {(h - 1) * sel, h * sel}
    for i = 0, sel - 1 do col[#col + 1] = i * stride + math.random(0, stride - 1) end
  end
  return sl.tensor(rp, "i32"), sl.tensor(col, "i32")
end

--- Token-sparse decode (DESIGN §10): K/V bytes the executor reads per second
-- over the memcpy bandwidth measured in the same run (bytes copied per second,
-- all threads). Nq = 1 .. 4 queries at the end of an n-key cache, Hq = 32,
-- Hkv = 8, d = 128, ~2048 listed keys per list head; lists per query head
-- (each head reads its own rows) and per kv head (a GQA group shares them, so
-- each row is read once for four query heads). Appends to results.
function B.decode(results, o)
  local backend, reps = o.backend or "cpu", o.reps or 5
  local hq, hkv, d, sel = 32, 8, 128, 2048
  local n = o.quick and 16384 or 65536
  local copy_bytes = (o.quick and 64 or 256) * 1024 * 1024
  local bw = sl.bench_memcpy(copy_bytes, reps)
  results[#results + 1] = {name = "memcpy", n = copy_bytes, d = 0, heads = 1, backend = "libc",
    params = {threads = sl.threads()}, metrics = {gbps = bw}}
  local k = sl.randn({hkv, n, d}, {seed = 11})
  local v = sl.randn({hkv, n, d}, {seed = 12})
  for _, hm in ipairs{hq, hkv} do
    local rp, col = spread_lists(hm, n, sel, 13)
    for nq = 1, 4 do
      local q = sl.randn({hq, nq, d}, {seed = 14})
      local args = {rows_per_entry = nq, backend = backend}
      local ms = median_ms(reps, function() return sl.attn.token_sparse(q, k, v, rp, col, args) end)
      local bytes = hm * sel * 2 * d * 4 -- each list's K and V rows, read once
      local gbps = bytes / (ms * 1e-3) / 1e9
      results[#results + 1] = {name = "attn.token_sparse", n = n, n_q = nq, d = d, heads = hq, kv_heads = hkv,
        backend = backend, params = {phase = "decode", n_q = nq, list_heads = hm, keys_per_list = sel},
        metrics = {kv_gbps = gbps, memcpy_gbps = bw, ratio_to_memcpy = gbps / bw, time_ms = ms, target = 0.5,
          n_q = nq, list_heads = hm}}
    end
  end
end

return B
