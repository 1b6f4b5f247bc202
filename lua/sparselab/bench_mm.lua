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
-- MoE (card moe_split_route, issue 17 session 4; M.moe, `--mm-parts moe`):
-- a 7B-like FFN (dim D = 4096, H = 11008 units) split sequentially into E
-- experts, k distinct experts per token drawn uniformly (seeded), softmax-like
-- weights; per T three ways, interleaved: "mm.moe" (the grouped executor, one
-- call), "mm.moe_loop" (Mixtral's per-expert loop as op calls: per expert
-- with tokens gather.rows -> mm.moe on that expert's rows alone ->
-- token.scatter add), "mm.ffn_dense" (every unit: the three sgemms of the
-- dense FFN, mm.dense x3, without the silu . up product, a lower bound of
-- the dense FFN). Ratios to the dense row of the same T.
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

-- Times the calls interleaved (one warm-up each, then reps rounds of every
-- call in turn): times[i] = call i's milliseconds per round.
local function interleaved_ms(calls, reps)
  local times = {}
  for i, c in ipairs(calls) do c(); times[i] = {} end -- warm-up
  for r = 1, reps do
    for i, c in ipairs(calls) do
      local t0 = sl.time()
      c()
      times[i][r] = (sl.time() - t0) * 1e3
    end
  end
  return times
end

local function median(t) table.sort(t); return t[(#t + 1) // 2] end

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
    local times = interleaved_ms(calls, reps)
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

--- o = {quick =, backend = "cpu", D = 4096, H = 11008, E = 8, k = 2, rows = {1, 8, 64, 512}
--- (quick: D 512, H 1376, {1, 64}), reps = 3, emit =} -> rows (see the header)
function M.moe(o)
  o = o or {}
  local backend = o.backend or "cpu"
  local D, H = o.D or (o.quick and 512 or 4096), o.H or (o.quick and 1376 or 11008)
  local E, k = o.E or 8, o.k or 2
  if k < 1 or k > E then sl.fail("bench mm moe: k must be in [1, E = %d], found %s", E, tostring(k)) end
  local rows = o.rows or (o.quick and {1, 64} or {1, 8, 64, 512})
  local reps = o.reps or (o.quick and 1 or 3)
  local out = {}
  local function emit(r)
    out[#out + 1] = r
    if o.emit then o.emit(r) end
  end
  local w1, w3 = sl.randn({H, D}, {seed = 180, std = 0.02}), sl.randn({H, D}, {seed = 181, std = 0.02})
  local w2t, w2 = sl.randn({H, D}, {seed = 182, std = 0.02}), sl.randn({D, H}, {seed = 183, std = 0.02})
  local offs = {}
  for e = 0, E do offs[e + 1] = e * H // E end
  local offs_t = sl.tensor(offs, "i32")
  local s = 0x5EED
  local function rnd(n) s = (s * 1103515245 + 12345) % 2147483648; return s % n end
  for _, T in ipairs(rows) do
    local x3 = sl.randn({1, T, D}, {seed = 184 + T})
    local x = sl.squeeze(x3, 1)
    local route, rw, members = {}, {}, {}
    for e = 0, E - 1 do members[e] = {} end
    for t = 1, T do
      local pick, used, z = {}, {}, 0
      while #pick < k do
        local e = rnd(E)
        if not used[e] then used[e] = true; pick[#pick + 1] = e end
      end
      local w = {}
      for j = 1, k do w[j] = math.exp(-(j - 1) * 0.5); z = z + w[j] end
      for j = 1, k do w[j] = w[j] / z; members[pick[j]][#members[pick[j]] + 1] = {t - 1, w[j]} end
      route[t], rw[t] = pick, w
    end
    local route_t, rw_t = sl.tensor(route, "i32"), sl.tensor(rw, "f32")
    -- the per-expert loop's inputs: token lists, one-expert routes and weights
    local loop = {}
    for e = 0, E - 1 do
      local n = #members[e]
      if n > 0 then
        local idx, r1, w1e = {}, {}, {}
        for i, mt in ipairs(members[e]) do idx[i], r1[i], w1e[i] = mt[1], {e}, {mt[2]} end
        loop[#loop + 1] = {idx2 = sl.tensor({idx}, "i32"), idx = sl.tensor(idx, "i32"), route = sl.tensor(r1, "i32"),
          rw = sl.tensor(w1e, "f32")}
      end
    end
    local p = {backend = backend}
    local calls = {
      function() -- dense FFN: three sgemms
        local g = sl.mm.dense(x, w1, p)
        local u = sl.mm.dense(x, w3, p)
        local y = sl.mm.dense(g, w2, p)
        u:close(); g:close(); y:close()
      end,
      function() sl.mm.moe(x, w1, w3, w2t, offs_t, route_t, rw_t, p):close() end,
      function(keep)
        local y = sl.zeros({T, D})
        for _, l in ipairs(loop) do
          local xe = sl.squeeze(sl.gather.rows(x3, l.idx2, p), 1)
          local ye = sl.mm.moe(xe, w1, w3, w2t, offs_t, l.route, l.rw, p)
          local y2 = sl.token.scatter(y, ye, l.idx, {add = true, backend = backend})
          y:close(); ye:close(); xe:close()
          y = y2
        end
        if keep then return y end
        y:close()
      end,
    }
    -- the loop computes what the grouped call does (max |diff| reported on the loop row)
    local yg, yl = sl.mm.moe(x, w1, w3, w2t, offs_t, route_t, rw_t, p), calls[3](true)
    local diff, scale = sl.metric.max_abs(yg, yl), sl.metric.max_abs(yg, sl.zeros({T, D}))
    yg:close(); yl:close()
    local times = interleaved_ms(calls, reps)
    local dense_ms, grouped_ms, loop_ms = median(times[1]), median(times[2]), median(times[3])
    local params = {D = D, H = H, E = E, k = k}
    local dense_flops = 6 * T * H * D
    emit{name = "mm.ffn_dense", n = T, d = D, heads = 1, backend = backend, params = params,
      metrics = {time_ms = dense_ms, gflops = dense_flops / (dense_ms * 1e-3) / 1e9, ratio_to_dense = 1}}
    emit{name = "mm.moe", n = T, d = D, heads = 1, backend = backend, params = params,
      metrics = {time_ms = grouped_ms, ratio_to_dense = grouped_ms / dense_ms, ratio_to_loop = grouped_ms / loop_ms,
        flops_ratio = k / E, experts_used = #loop}}
    emit{name = "mm.moe_loop", n = T, d = D, heads = 1, backend = backend, params = params,
      metrics = {time_ms = loop_ms, ratio_to_dense = loop_ms / dense_ms, calls = 3 * #loop,
        rel_diff_to_grouped = diff / math.max(scale, 1e-30)}}
    for _, l in ipairs(loop) do l.idx2:close(); l.idx:close(); l.route:close(); l.rw:close() end
    route_t:close(); rw_t:close(); x3:close()
  end
  return out
end

return M
