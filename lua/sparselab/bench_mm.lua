-- sparselab.bench_mm — sparse matmul against OpenBLAS sgemm in one run
-- (issue 17, `sparselab bench` rows "mm.*"): a weight W [N, K] (default a 7B
-- model's FFN, N = 11008 outputs, K = 4096 inputs, y = x W^T) pruned by
-- magnitude to 50 / 75 / 90% unstructured (mm.bitmap) and to 2:4 (mm.nm),
-- times 1 .. 512 activation rows; each row reports the median time of the
-- sparse call over the median time of mm.dense (one sgemm on the dense W)
-- at the same T, and a row "mm.break_even" per T gives the sparsity at which
-- the unstructured ratio crosses 1 (linear in sparsity between measured
-- points). Both sides go through the op dispatcher (output scan included).
-- Activation sparsity (card act_sparse_matmul step 5): per T, rows
-- "mm.act_sparse" at activation densities rho (x's rows top-k'd by |x| to
-- k = rho K, act.topk) with W^T [K, N], each against the same T's mm.dense,
-- and a row "mm.act_crossover" whose metric crossover_density is rho*: the
-- density where the ratio crosses 1 upwards (linear between the two
-- measured densities around it; crossover_kind 0), the largest measured
-- density when every ratio is <= 1 (a lower bound; kind 1), or -1 when no
-- measured density beats dense (kind -1). Stored with the rest under --db.
-- The act side multiplies a separately drawn normal W^T of the same shape
-- (timing only: the values do not change the work).
local sl = require "sparselab"

local M = {}

--- The sparsity where ratio(s) = 1 from points {s, ratio} sorted by s:
--- linear between the two measured points around the crossing; nil when
--- no measured point is at or below 1, pts[1].s when all are.
function M.break_even(pts)
  table.sort(pts, function(a, b) return a.s < b.s end)
  if #pts == 0 or pts[#pts].ratio > 1 then return nil end
  if pts[1].ratio <= 1 then return pts[1].s end
  for i = 2, #pts do
    local a, b = pts[i - 1], pts[i]
    if b.ratio <= 1 then return a.s + (b.s - a.s) * (a.ratio - 1) / (a.ratio - b.ratio) end
  end
end

--- rho* from points {rho, ratio} (any order): the density where the ratio
--- crosses 1 upwards; returns rho*, kind (0 crossing, 1 all <= 1: the
--- largest density, -1 none <= 1: -1).
function M.crossover(pts)
  table.sort(pts, function(a, b) return a.rho < b.rho end)
  if #pts == 0 or pts[1].ratio > 1 then return -1, -1 end
  for i = 2, #pts do
    local a, b = pts[i - 1], pts[i]
    if b.ratio > 1 then return a.rho + (b.rho - a.rho) * (1 - a.ratio) / (b.ratio - a.ratio), 0 end
  end
  return pts[#pts].rho, 1
end

-- vals slots for a magnitude-pruned random row: mean + 6 sd + 16 (the encoder refuses too few)
local function cap_for(K, density)
  return math.min(K, math.ceil(density * K + 6 * math.sqrt(density * (1 - density) * K) + 16))
end

--- o = {quick =, backend = "cpu", N = 11008, K = 4096, rows = {1, 8, 64, 512} (quick: 2752 x 1024, {1, 64}),
--- sparsities = {0.5, 0.75, 0.9}, densities = {0.02, 0.05, 0.1, 0.25, 0.5} (activation), reps = 3,
--- emit = fn(row)} -> rows
function M.run(o)
  o = o or {}
  -- quick: a quarter of each side (2752 x 1024), so that the CLI tests stay fast
  local backend = o.backend or "cpu"
  local N, K = o.N or (o.quick and 2752 or 11008), o.K or (o.quick and 1024 or 4096)
  local rows = o.rows or (o.quick and {1, 64} or {1, 8, 64, 512})
  local sps = o.sparsities or {0.5, 0.75, 0.9}
  local reps = o.reps or (o.quick and 1 or 3)
  local out = {}
  local function emit(r)
    out[#out + 1] = r
    if o.emit then o.emit(r) end
  end
  local w = sl.randn({N, K}, {seed = 170})
  local formats = {}
  for _, s in ipairs(sps) do
    local ws = sl.prune.magnitude(w, {sparsity = s, backend = backend})
    local ok, bits, vals = pcall(sl.mm.bitmap_encode, ws, {cap = cap_for(K, 1 - s), backend = backend})
    if not ok then bits, vals = sl.mm.bitmap_encode(ws, {backend = backend}) end
    ws:close()
    formats[#formats + 1] = {name = "mm.bitmap", s = s, params = {sparsity = s},
      call = function(x) return sl.mm.bitmap(x, bits, vals, {backend = backend}) end,
      bytes = bits:numel() * 4 + vals:numel() * 4}
  end
  local rhos = o.densities or {0.02, 0.05, 0.1, 0.25, 0.5}
  local wt = sl.randn({K, N}, {seed = 172})
  local nv, np = sl.mm.nm_encode(w, {n = 2, m = 4, backend = backend})
  formats[#formats + 1] = {name = "mm.nm", s = 0.5, params = {n = 2, m = 4},
    call = function(x) return sl.mm.nm(x, nv, np, {n = 2, m = 4, backend = backend}) end,
    bytes = nv:numel() * 4 + np:numel()}
  for _, T in ipairs(rows) do
    local x = sl.randn({T, K}, {seed = 171 + T})
    -- interleaved: each rep times dense then every format, so that load
    -- drifting on a shared machine hits both sides of a ratio alike
    local calls = {function() return sl.mm.dense(x, w, {backend = backend}) end}
    for _, f in ipairs(formats) do calls[#calls + 1] = function() return f.call(x) end end
    local xa = {}
    for i, rho in ipairs(rhos) do
      xa[i] = sl.act.topk(x, {k = math.max(1, math.floor(rho * K + 0.5)), backend = backend})
      calls[#calls + 1] = function() return sl.mm.act_sparse(xa[i], wt, {backend = backend}) end
    end
    local times = {}
    for i, c in ipairs(calls) do c(); times[i] = {} end -- warm-up
    for r = 1, reps do
      for i, c in ipairs(calls) do
        local t0 = sl.time()
        c()
        times[i][r] = (sl.time() - t0) * 1e3
      end
    end
    local function median(t) table.sort(t); return t[(#t + 1) // 2] end
    local dense_ms = median(times[1])
    local gflops = 2 * T * N * K / (dense_ms * 1e-3) / 1e9
    emit{name = "mm.dense", n = T, d = K, heads = 1, backend = backend, params = {N = N, K = K},
      metrics = {time_ms = dense_ms, sgemm_gflops = gflops, ratio_to_sgemm = 1}}
    local pts = {}
    for i, f in ipairs(formats) do
      local ms = median(times[i + 1])
      local params = {N = N, K = K}
      for key, v in pairs(f.params) do params[key] = v end
      emit{name = f.name, n = T, d = K, heads = 1, backend = backend, params = params,
        metrics = {time_ms = ms, sgemm_time_ms = dense_ms, ratio_to_sgemm = ms / dense_ms, sparsity = f.s,
          weight_bytes_ratio = f.bytes / (N * K * 4)}}
      if f.name == "mm.bitmap" then pts[#pts + 1] = {s = f.s, ratio = ms / dense_ms} end
    end
    local be = M.break_even(pts)
    emit{name = "mm.break_even", n = T, d = K, heads = 1, backend = backend, params = {N = N, K = K},
      metrics = {break_even_sparsity = be or -1, sgemm_gflops = gflops}}
    local apts = {}
    for i, rho in ipairs(rhos) do
      local ms = median(times[1 + #formats + i])
      local kk = math.max(1, math.floor(rho * K + 0.5))
      emit{name = "mm.act_sparse", n = T, d = K, heads = 1, backend = backend, params = {N = N, K = K, k = kk},
        metrics = {time_ms = ms, sgemm_time_ms = dense_ms, ratio_to_sgemm = ms / dense_ms, density = kk / K}}
      apts[#apts + 1] = {rho = kk / K, ratio = ms / dense_ms}
      xa[i]:close()
    end
    local rs, kind = M.crossover(apts)
    emit{name = "mm.act_crossover", n = T, d = K, heads = 1, backend = backend, params = {N = N, K = K},
      metrics = {crossover_density = rs, crossover_kind = kind, sgemm_gflops = gflops}}
  end
  return out
end

return M
