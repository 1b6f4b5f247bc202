-- sparselab.prune — weight pruning of a loaded model (issue 17; cards
-- magnitude_prune, nm_sparse_matmul (masks), sparsegpt_prune), on top of the
-- ops prune.magnitude and prune.sparsegpt and the runner's activation sites.
--
--   P.linears(m)                 names of the prunable weights ("layers.L.wq" ...)
--   P.magnitude(m, {sparsity =, scope = "layer" | "global", n =, m =})
--   P.erk(m, {sparsity =, seed =, uniform =})  random ERK (or uniform random) masks (card step 4)
--   P.capture(m, seqs, layer)    {site = x [rows, width]} inputs of layer's linears
--   P.sparsegpt(m, seqs, {sparsity =, n =, m =, blocksize =, percdamp =})
--   P.lowrank_qk(m, seqs, {rank =, rho =, whiten =})   W_q, W_k -> rank-r a.b (card qk_lowrank (a))
--   P.save(m, path) / P.load(m, path)   the prunable weights as safetensors
--   P.nll(m, seqs)               mean negative log-likelihood over the sequences
--   P.kv_prune(t, s, o), P.kv_hook(o, stats)   magnitude pruning of the K / V cache (card step 7)
--   P.elbow(xs, ys), P.essential(xs, ys, tol)  the sweep's knee and essential sparsity
--   P.soft_beta(decay, c, t)     PGF soft-mask factor (card nm_sparse_matmul step 2)
--   P.pgf_schedule(n, m)         PGF structure decay: the N':M patterns (M-1):M, M/2:M, ... N:M
--   P.nm_soft(m, {n =, m =, beta = | decay =, c =, t =, frame =})   soft N:M in place
--
-- Soft masks (session 4, card nm_sparse_matmul step 2, forward effect only):
-- W_eff = W . (mask + (1 - mask) . beta) with mask the hard N:M magnitude mask
-- (prune.magnitude), beta = max(0, 1 - c t) ("linear"), exp(-c t) ("exp") or
-- 0 ("step"). Reading chosen for the card's training schedule in a
-- workbench that does not train: t is a point of the schedule applied once
-- (an ablation of the forward effect at that point), and frame f >= 1 of
-- the structure decay replaces N:M by the schedule's f-th pattern (the
-- last frame is N:M itself). The SR-STE gradient term is training-only and
-- not offered (as the card says).
--
-- The prunable set is the card's L: Q, K, V, O, gate (w1), up (w3), down
-- (w2) of every block; embeddings, the LM head and the norms are left dense.
-- m is a sparselab.model (m.c the C model).
local sl = require "sparselab"

local P = {}

local KINDS = {"wq", "wk", "wv", "wo", "w1", "w3", "w2"}
-- the runner's site whose activations feed each linear
P.SITE = {wq = "attn_in", wk = "attn_in", wv = "attn_in", wo = "attn_out", w1 = "ffn_in", w3 = "ffn_in",
  w2 = "ffn_hidden"}

function P.linears(m)
  local out = {}
  for l = 0, m.cfg.n_layers - 1 do
    for _, k in ipairs(KINDS) do out[#out + 1] = string.format("layers.%d.%s", l, k) end
  end
  return out
end

local function flat(t)
  local out = {}
  local function walk(x)
    if type(x) == "table" then for _, y in ipairs(x) do walk(y) end else out[#out + 1] = x end
  end
  walk(t:totable())
  return out
end

local function reshape2(values, rows, cols, first)
  local out = {}
  for r = 1, rows do
    local row = {}
    for c = 1, cols do row[c] = values[first + (r - 1) * cols + c - 1] end
    out[r] = row
  end
  return out
end

--- Magnitude pruning in place. scope "layer": every tensor to exactly
--- floor(s . numel); "global": one ranking over all of them (exactly
--- floor(s . total) zeroed, ties by position in P.linears order then flat
--- index); n > 0: N:M along the input dim (scope ignored).
function P.magnitude(m, o)
  o = o or {}
  local s, scope = o.sparsity or 0.5, o.scope or "layer"
  local params = {sparsity = s, n = o.n or 0, m = o.m or 4}
  if params.n > 0 or scope == "layer" then
    for _, name in ipairs(P.linears(m)) do
      m.c:set_weight(name, sl.prune.magnitude(m.c:weight(name), params))
    end
    return
  end
  if scope ~= "global" then sl.fail("prune.magnitude: scope must be 'layer' or 'global', found '%s'", tostring(scope)) end
  local all, spans = {}, {}
  for _, name in ipairs(P.linears(m)) do
    local w = m.c:weight(name)
    local sh = w:shape()
    spans[#spans + 1] = {name = name, first = #all + 1, rows = sh[1], cols = sh[2]}
    for _, v in ipairs(flat(w)) do all[#all + 1] = v end
  end
  local pruned = flat(sl.prune.magnitude(sl.tensor(all), params))
  for _, sp in ipairs(spans) do
    m.c:set_weight(sp.name, sl.tensor(reshape2(pruned, sp.rows, sp.cols, sp.first)))
  end
end

--- The inputs of layer's linears over the sequences (each a list of ids),
--- rows of all sequences stacked: {attn_in =, attn_out =, ffn_in =, ffn_hidden =}.
function P.capture(m, seqs, layer)
  local parts = {}
  for _, ids in ipairs(seqs) do
    local st <close> = m.c:state(#ids)
    m.c:forward(ids, st, nil, function(l, site, x)
      if l == layer then
        parts[site] = parts[site] or {}
        table.insert(parts[site], x)
      end
    end)
  end
  local out = {}
  for site, xs in pairs(parts) do out[site] = #xs == 1 and xs[1] or sl.cat(xs, 1) end
  return out
end

--- SparseGPT, sequentially: layer l's inputs are captured with layers
--- 0..l-1 already pruned (opt.py / llama.py's order), then each of its
--- linears is pruned from its own inputs.
function P.sparsegpt(m, seqs, o)
  o = o or {}
  local params = {sparsity = o.sparsity or 0.5, n = o.n or 0, m = o.m or 4, blocksize = o.blocksize or 128,
    percdamp = o.percdamp or 0.01}
  for l = 0, m.cfg.n_layers - 1 do
    local x = P.capture(m, seqs, l)
    for _, k in ipairs(KINDS) do
      local name = string.format("layers.%d.%s", l, k)
      m.c:set_weight(name, sl.prune.sparsegpt(m.c:weight(name), x[P.SITE[k]], params))
    end
  end
end

--- qk_lowrank (CASP) as a compression row: W_q and W_k of every layer
--- replaced by their rank-r factors a.b (prune.lowrank; whitened by the
--- layers' captured inputs unless whiten = false), inputs captured once on
--- the model as it is (CASP's profiling pass, not sequential).
function P.lowrank_qk(m, seqs, o)
  o = o or {}
  local params = {rank = o.rank or 0, rho = o.rho or 0.5, whiten = o.whiten ~= false}
  local xs = {}
  for l = 0, m.cfg.n_layers - 1 do xs[l] = P.capture(m, seqs, l).attn_in end
  for l = 0, m.cfg.n_layers - 1 do
    for _, k in ipairs{"wq", "wk"} do
      local name = string.format("layers.%d.%s", l, k)
      local a, b = sl.prune.lowrank(m.c:weight(name), xs[l], params)
      m.c:set_weight(name, sl.mm.act_sparse(a, b))
    end
  end
end

--- Copies of the prunable weights (to restore a model after a trial).
--- PGF decay factor beta(t): "linear" max(0, 1 - c t), "exp" exp(-c t), "step" 0.
function P.soft_beta(decay, c, t)
  c, t = c or 0, t or 0
  if decay == "linear" then return math.max(0, 1 - c * t)
  elseif decay == "exp" then return math.exp(-c * t)
  elseif decay == "step" then return 0 end
  sl.fail("prune: decay must be linear, exp or step, found %s", tostring(decay))
end

--- PGF structure decay: {{n = M-1, m = M}, {n = M/2, m = M}, {n = M/4, m = M}, ..., {n = N, m = M}}
--- (each pattern once, halving from M/2, clamped at N; the last is N:M).
function P.pgf_schedule(n, m)
  if not (n >= 1 and m >= n) then sl.fail("prune: pgf_schedule needs 1 <= n <= m, found n = %s, m = %s", tostring(n), tostring(m)) end
  local out, last = {}, nil
  local function add(k)
    k = math.max(k, n)
    if k ~= last and k < m then out[#out + 1] = {n = k, m = m}; last = k end
  end
  add(m - 1)
  local k = m // 2
  while k > n do add(k); k = k // 2 end
  add(n)
  if #out == 0 then out[1] = {n = n, m = m} end -- n = m: nothing pruned
  return out
end

--- Soft N:M in place: every prunable weight becomes W . (mask + (1 - mask) beta).
function P.nm_soft(m, o)
  o = o or {}
  local n, mm = o.n or 2, o.m or 4
  if o.frame then
    local sched = P.pgf_schedule(n, mm)
    if o.frame < 1 or o.frame > #sched then
      sl.fail("prune: frame must be in [1, %d] for %d:%d, found %s", #sched, n, mm, tostring(o.frame))
    end
    n = sched[o.frame].n
  end
  local beta = o.beta or P.soft_beta(o.decay or "step", o.c, o.t)
  if not (beta >= 0 and beta <= 1) then sl.fail("prune: beta must be in [0, 1], found %s", tostring(beta)) end
  for _, name in ipairs(P.linears(m)) do
    local w = m.c:weight(name)
    local hard = sl.prune.magnitude(w, {n = n, m = mm})
    if beta > 0 then
      local wr, hr = w:totable(), hard:totable()
      for r, row in ipairs(wr) do
        local h = hr[r]
        for c, v in ipairs(row) do
          if h[c] == 0 and v ~= 0 then row[c] = v * beta end
        end
      end
      hard = sl.tensor(wr)
    end
    m.c:set_weight(name, hard)
  end
end

function P.snapshot(m)
  local out = {}
  for _, name in ipairs(P.linears(m)) do out[name] = m.c:weight(name):to("f32") end
  return out
end

function P.restore(m, snap)
  for name, w in pairs(snap) do m.c:set_weight(name, w) end
end

function P.save(m, path) sl.save(path, P.snapshot(m)) end

function P.load(m, path)
  local ts = sl.load(path)
  for _, name in ipairs(P.linears(m)) do
    if not ts[name] then sl.fail("prune.load: %s has no tensor '%s'", path, name) end
    m.c:set_weight(name, ts[name])
  end
end

--- Random ERK baseline (card magnitude_prune step 4; essential_sparsity's
--- prune_model_random_erk): tensor l keeps a Bernoulli mask of density
--- d_l = min(1, eps . (n_in + n_out) / (n_in . n_out)), eps solved so that
--- sum_l d_l . numel_l = (1 - s) . total (tensors that would pass density 1
--- are set dense and eps re-solved, until none does). o.uniform = true gives
--- the random-unstructured baseline (d_l = 1 - s everywhere). The masks come
--- from sl.rand with seed o.seed (default 1) + the tensor's index. Returns
--- {[name] = d_l} (the expected densities) and the expected total density.
function P.erk(m, o)
  o = o or {}
  local s, seed = o.sparsity or 0.5, o.seed or 1
  local names, numel, raw, total = P.linears(m), {}, {}, 0
  for i, name in ipairs(names) do
    local sh = m.c:weight(name):shape()
    numel[i] = sh[1] * sh[2]
    raw[i] = o.uniform and 1 or (sh[1] + sh[2]) / (sh[1] * sh[2])
    total = total + numel[i]
  end
  local dense, dens = {}, {}
  while true do
    local fixed, scaled = 0, 0
    for i = 1, #names do
      if dense[i] then fixed = fixed + numel[i] else scaled = scaled + raw[i] * numel[i] end
    end
    local eps = scaled > 0 and ((1 - s) * total - fixed) / scaled or 0
    local again = false
    for i = 1, #names do
      if not dense[i] and eps * raw[i] > 1 then dense[i], again = true, true end
    end
    if not again then
      for i = 1, #names do dens[i] = dense[i] and 1 or math.max(0, eps * raw[i]) end
      break
    end
  end
  local out, expected = {}, 0
  for i, name in ipairs(names) do
    local w = m.c:weight(name)
    local r, rows = sl.rand(w:shape(), {seed = seed + i}):totable(), w:totable()
    for a, row in ipairs(rows) do
      for b = 1, #row do if r[a][b] >= dens[i] then row[b] = 0 end end
    end
    m.c:set_weight(name, sl.tensor(rows))
    out[name] = dens[i]
    expected = expected + dens[i] * numel[i]
  end
  return out, expected / total
end

--- Fraction of zeros over the prunable weights.
function P.sparsity(m)
  local z, n = 0, 0
  for _, name in ipairs(P.linears(m)) do
    for _, v in ipairs(flat(m.c:weight(name))) do
      n = n + 1
      if v == 0 then z = z + 1 end
    end
  end
  return z / n
end

--- KV variant (card magnitude_prune step 7; SparAMX custom_llama_attention
--- `sparsify`: a kthvalue threshold on |K| over the whole tensor): t is one
--- layer's K or V cache [H, n, d]; exactly floor(s . numel) entries smallest
--- in (|t|, flat index) order are zeroed (prune.magnitude) over the whole
--- tensor (o.scope "layer", SparAMX's) or per head ("head", the card's
--- variant: floor(s . n . d) per head). o.blind = "random": the same count
--- zeroed at seeded random positions (the score-blind control; o.seed).
function P.kv_prune(t, s, o)
  o = o or {}
  if s <= 0 then return t end
  local scope = o.scope or "layer"
  if scope ~= "layer" and scope ~= "head" then
    sl.fail("prune.kv: scope must be 'layer' or 'head', found '%s'", tostring(scope))
  end
  local function one(x)
    if o.blind == "random" then
      o._seed = (o._seed or o.seed or 31) + 1
      local keep = sl.prune.magnitude(sl.rand(x:shape(), {seed = o._seed}), {sparsity = s}):totable()
      local vals = x:totable()
      local function walk(a, b)
        for i = 1, #a do
          if type(a[i]) == "table" then walk(a[i], b[i]) elseif b[i] == 0 then a[i] = 0 end
        end
      end
      walk(vals, keep)
      return sl.tensor(vals)
    elseif o.blind ~= nil then
      sl.fail("prune.kv: blind must be 'random', found '%s'", tostring(o.blind))
    end
    return sl.prune.magnitude(x, {sparsity = s})
  end
  if scope == "layer" then return one(t) end
  local heads = {}
  for h = 1, t:shape()[1] do heads[h] = one(t:narrow(1, h, 1)) end
  return sl.cat(heads, 1)
end

--- The attention hook (model.c:forward's 3rd argument) of the KV variant:
--- every call prunes the layer's visible K cache to o.k and V to o.v
--- (fractions zeroed; P.kv_prune with o.scope, o.blind) and runs causal
--- attention on them. Prefill = SparAMX's one pruning of the whole cache;
--- a decode step re-thresholds the cache with its new row (this
--- workbench's reading: the stored cache itself stays dense). stats
--- (optional): zeros_k, zeros_v (counted in the pruned tensors) and
--- entries (K's numel), summed over calls.
function P.kv_hook(o, stats)
  o = o or {}
  return function(layer, q, k, v)
    local kp = P.kv_prune(k, o.k or 0.5, o)
    local vp = P.kv_prune(v, o.v or 0.5, o)
    if stats then
      local function zeros(t)
        local c = 0
        for _, x in ipairs(flat(t)) do if x == 0 then c = c + 1 end end
        return c
      end
      stats.entries = (stats.entries or 0) + k:numel()
      stats.zeros_k = (stats.zeros_k or 0) + zeros(kp)
      stats.zeros_v = (stats.zeros_v or 0) + zeros(vp)
    end
    return (sl.attn.dense(q, kp, vp, {causal = true}))
  end
end

--- The knee of a sweep (card magnitude_prune, "essential sparsity"; select.elbow):
--- xs ascending, ys the metric; both axes scaled to [0, 1] by their ranges,
--- the point of largest distance to the chord from the first to the last
--- point (ties: the lower x). Returns its index and x.
function P.elbow(xs, ys)
  local n = #xs
  if n < 3 or n ~= #ys then sl.fail("prune.elbow: expected at least 3 points with one y each, found %d x, %d y", n, #ys) end
  local ylo, yhi = math.huge, -math.huge
  for _, y in ipairs(ys) do ylo, yhi = math.min(ylo, y), math.max(yhi, y) end
  local xr, yr = xs[n] - xs[1], yhi - ylo
  if not (xr > 0) then sl.fail("prune.elbow: xs must ascend, found %g .. %g", xs[1], xs[n]) end
  if not (yr > 0) then return 1, xs[1] end
  local function px(i) return (xs[i] - xs[1]) / xr end
  local function py(i) return (ys[i] - ylo) / yr end
  local ax, ay, bx, by = px(1), py(1), px(n), py(n)
  local len = math.sqrt((bx - ax) ^ 2 + (by - ay) ^ 2)
  local best, bi = -1, 1
  for i = 1, n do
    local d = math.abs((bx - ax) * (ay - py(i)) - (ax - px(i)) * (by - ay)) / len
    if d > best + 1e-12 then best, bi = d, i end
  end
  return bi, xs[bi]
end

--- The largest x whose metric is within tol of the first point's (the card's
--- "largest s with delta metric <= a tolerance"); nil when none but the first.
function P.essential(xs, ys, tol)
  local best
  for i = 1, #xs do if ys[i] - ys[1] <= tol then best = xs[i] end end
  return best
end

--- Mean next-token negative log-likelihood over the sequences (the dense FFN).
function P.nll(m, seqs) return require("sparselab.actsparse").nll(m, seqs) end

return P
