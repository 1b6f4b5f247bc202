-- MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic
-- Sparse Attention — the vertical-slash (VS) pattern — card: vertical_slash.
-- Card steps implemented:
--   1. offline per-head pattern search (calibrate): candidates A-shape(100,
--      800), VS(30,800) (100,750) (500,700) (3500,100), block-sparse (8 of
--      32-token blocks), scored by the attention recall of rows from_row
--      (2500) on of the exact map; the A-shape winner is stored as VS with
--      the same sizes (sink columns as verticals, window as slashes), the
--      block winner as VS(1000, 6096); config = {layers = {{per query head
--      {type, vertical_size, slash_size, score}}, ...}};
--   2. online estimate: exact softmax of the last last_q = 64 queries
--      (score.last_q, causal corner masked);
--   3. verticals: column sums (reduce.columns); the first `sinks` = 30
--      columns forced; top V = min(n, max(vertical_size, 30)) in all;
--   4. slashes: diagonal sums (reduce.diagonals), offsets 0 .. local-1
--      (local = 100) forced; top S = min(n, max(slash_size, 50)) in all;
--   5. index conversion: exact lines stay per-head column and offset lists
--      (i32, -1 padded); widen = true: slashes as a block mask of 64-key
--      tiles (from_slashes), columns as per-query-block lists (strict: up to
--      the block's first row; the diagonal tile holds the rest, see below);
--   6. executor: attn.lines (each row's keys read by offset: memory
--      O(n · lines), time proportional to the pairs kept; issue 19), or with
--      widen attn.vs_mixed (blocks + gathered columns, one softmax);
--   7. the ratio knob (minference_ratio) multiplies both sizes.
-- Default = the paper's semantic mask executed exactly: slash lines as token
-- diagonals (attn.lines). Option widen = true: the reference kernel's
-- convert_vertical_slash_indexes (slash lines widened to 64-key tiles);
-- `semantic_mask` / stats.density_semantic always give the token-exact
-- vertical ∪ slash mask beside the executed one.
-- Not implemented: starting_layer (dense below it: the caller's choice per
-- layer), the per-call-site variants of the forced local width (30 in the
-- search code: set local = 30).
-- Unknowns chosen: the forced entries count inside V and S (the reference
-- sets them to +inf before top-k); when S < local all `local` offsets are
-- still kept (the reference would keep an arbitrary S of them); ties: lower
-- index first; a head missing from the config uses the fallback (1000,
-- 6096); with widen, columns inside a query block's own rows are added to the
-- block part as token bits of the diagonal tile (so executed ⊇ semantic for
-- any local).
-- Reference read (issue 20, session 5): microsoft/MInference
--   minference/modules/minference_forward.py (gather_last_q_vertical_slash_topk_v4
--   and minference_prefill_kernel's vertical_and_slash_kernel: last_q = 64,
--   sizes min(n, max(v, 30)) / min(n, max(s, 50)), first 30 columns and the
--   last local diagonals set to +inf before torch.topk, sum_all_diagonal_matrix;
--   search_pattern / search_pattern_v2 for step 1),
--   minference/ops/pit_sparse_flash_attention_v2.py (vertical_slash_sparse_attention,
--   convert_vertical_slash_indexes: the widen = true executor). The forced
--   local width is 30 in gather_last_q_vertical_slash_topk_v4 and 100 in the
--   kernel-dict variant (local = 30 / 100 here); divergences are the
--   unknowns above (topk's tie order; S < local).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"
local D = require "sparselab.dynamic"

local ID = "vertical_slash"

-- Per query head {vertical_size, slash_size} for this problem.
local function head_sizes(prob, p, hq)
  local cfg = p.config
  if type(cfg) == "string" then
    local ok, cal = pcall(require, "sparselab.calibrate")
    if not ok then sl.fail("%s: config '%s' needs sparselab.calibrate, which is not available", ID, cfg) end
    cfg = cal.load(cfg, ID)
  end
  local heads
  if type(cfg) == "table" then
    local layers = cfg.layers or {cfg.heads}
    heads = layers[(prob.layer or 0) + 1] or {}
  else
    heads = {}
  end
  local out = {}
  for h = 1, hq do
    local c = heads[h]
    local vs, ss = p.vertical_size, p.slash_size
    if type(c) == "table" then vs, ss = c.vertical_size or vs, c.slash_size or ss end
    out[h] = {v = vs * p.ratio, s = ss * p.ratio}
  end
  return out
end

-- The estimate: column and offset lists per query head, and FLOPs.
local function select_lines(prob, p, opts)
  local n = D.check_prefill(ID, prob)
  local hq, d = prob.q:shape()[1], prob.q:shape()[3]
  local args = {last = p.last_q, backend = prob.backend}
  local probs = sl.score.last_q(prob.q, prob.k, args)
  local m = probs:shape()[2]
  local flops = sl.op_flops("score.last_q", prob.q, prob.k, args)
  local vcol, sdiag = sl.reduce.columns(probs), sl.reduce.diagonals(probs)
  flops = flops + 2 * probs:numel()
  probs:close()
  local sizes = head_sizes(prob, p, hq)
  local n_sink, n_local = math.min(p.sinks, n), math.min(p["local"], n)
  local kv, ks = {}, {}
  for h = 1, hq do
    local V = math.min(n, math.max(math.floor(sizes[h].v + 0.5), p.sinks))
    local S = math.min(n, math.max(math.floor(sizes[h].s + 0.5), 50))
    kv[h], ks[h] = math.max(0, V - n_sink), math.max(0, S - n_local)
  end
  D.knock_out(vcol, n_sink)
  D.knock_out(sdiag, n_local)
  local keep_v = sl.select.topk(vcol, {k = sl.tensor(kv, "i32")})
  local keep_s = sl.select.topk(sdiag, {k = sl.tensor(ks, "i32")})
  local cols, offs
  if opts and opts.lua_union then
    -- the old path (tests only): lists, then a Lua union with the forced lines and a sort
    cols, offs = D.lists(keep_v), D.lists(keep_s)
    local forced_c, forced_o = {}, {}
    for j = 0, n_sink - 1 do forced_c[#forced_c + 1] = j end
    for o = 0, n_local - 1 do forced_o[#forced_o + 1] = o end
    for h = 1, hq do
      cols[h] = D.union(cols[h], forced_c)
      offs[h] = D.union(offs[h], forced_o)
    end
  else
    -- the forced lines set in the keep tensors: the lists come out as the
    -- sorted unions (issue 20, session 4: no Lua union and sort)
    for h = 1, hq do
      for j = 1, n_sink do keep_v:set(h, j, 1) end
      for o = 1, n_local do keep_s:set(h, o, 1) end
    end
    cols, offs = D.lists(keep_v), D.lists(keep_s)
  end
  return cols, offs, flops, {last_rows = m, n = n, d = d}
end

local function estimate(prob, p, opts)
  local cols, offs, flops, info = select_lines(prob, p, opts)
  local m, sem = D.lines_mask(cols, offs, info.n, p.bq, p.bk, p.widen)
  local nv, ns = 0, 0
  for h = 1, #cols do nv, ns = nv + #cols[h], ns + #offs[h] end
  return {mask = m, flops = flops, semantic_density = sem, extra = {verticals = nv / #cols, slashes = ns / #cols},
    cols = cols, offs = offs}
end

local function semantic_mask(prob, p)
  local cols, offs = select_lines(prob, p)
  local n = prob.q:shape()[2]
  local v = sl.mask.vertical{cols = cols}:materialize{n_q = n, n_k = n, bq = p.bq, bk = p.bk, n_heads = #cols}
  local s = sl.mask.from_slashes(D.padded(offs), {n_q = n, n_k = n, bq = p.bq, bk = p.bk, widen = false})
  local m = v + s
  v:close(); s:close()
  return m
end

-- ---- calibration (search_pattern) ------------------------------------------------

local CANDIDATES = {
  {type = "a_shape", v = 100, s = 800},
  {type = "vertical_and_slash", v = 30, s = 800},
  {type = "vertical_and_slash", v = 100, s = 750},
  {type = "vertical_and_slash", v = 500, s = 700},
  {type = "vertical_and_slash", v = 3500, s = 100},
  {type = "block_sparse", v = 1000, s = 6096},
}

-- Per query head mean recall exp(L - L_dense) over rows >= from.
local function head_recall(lse, dense_lse, from)
  local s = lse:shape()
  local out = {}
  for h = 1, s[1] do
    local a, b = lse:narrow(1, h, 1):totable()[1], dense_lse:narrow(1, h, 1):totable()[1]
    local sum, cnt = 0, 0
    for r = from + 1, s[2] do sum, cnt = sum + math.exp(a[r] - b[r]), cnt + 1 end
    out[h] = cnt > 0 and sum / cnt or 0
  end
  return out
end

-- A-shape(sinks, window) as a block mask per head (token exact).
local function a_shape(n, sinks, window, hq, p)
  return (sl.mask.sink{s = sinks} + sl.mask.window{w = window}):materialize{n_q = n, n_k = n, bq = p.bq, bk = p.bk,
    n_heads = 1}, hq
end

-- MInference's block-sparse candidate: top 8 of 32-token blocks by pooled q·k.
local function block_candidate(prob, n)
  local sc = sl.score.pooled(prob.q, prob.k, {bq = 32, bk = 32, scale = 1, backend = prob.backend})
  local keep = sl.select.topk(sc, {k = 8})
  return sl.mask.from_blocks(keep, {n_q = n, n_k = n, bq = 32, bk = 32, causal = true})
end

--- calibrate(problems, opts) -> config: per layer (problem.layer, default 0)
--- and query head the candidate with the best recall summed over the
--- problems. opts.params: from_row (2500; clipped to n/2 on short inputs),
--- plus the method's params (bq, bk, last_q, ...).
local function calibrate(problems, opts)
  local params = (opts and opts.params) or {}
  local from_row = params.from_row or 2500
  local base = {}
  for k, v in pairs(params) do if k ~= "from_row" then base[k] = v end end
  local method = sl.methods.get(ID)
  local dense = sl.methods.get("dense")
  local by_layer = {}
  for _, prob in ipairs(problems) do
    local n = D.check_prefill(ID, prob)
    local hq = prob.q:shape()[1]
    local from = math.min(from_row, n // 2)
    local ref = dense.run(prob, {})
    local layer = (prob.layer or 0) + 1
    local acc = by_layer[layer] or {}
    by_layer[layer] = acc
    for ci, c in ipairs(CANDIDATES) do
      local lse
      if c.type == "vertical_and_slash" then
        local pp = sl.registry.resolve(method, base)
        pp.vertical_size, pp.slash_size, pp.config, pp.ratio = c.v, c.s, nil, 1
        lse = method.run(prob, pp).lse
      elseif c.type == "a_shape" then
        local m = a_shape(n, c.v, c.s, hq, sl.registry.resolve(method, base))
        _, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, m, {backend = prob.backend})
        m:close()
      else
        local m = block_candidate(prob, n)
        _, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, m, {backend = prob.backend})
        m:close()
      end
      local rec = head_recall(lse, ref.lse, from)
      for h = 1, hq do
        acc[h] = acc[h] or {}
        acc[h][ci] = (acc[h][ci] or 0) + rec[h]
      end
    end
  end
  local layers = {}
  for layer, acc in pairs(by_layer) do
    local heads = {}
    for h, scores in ipairs(acc) do
      local best = 1
      for ci = 2, #CANDIDATES do if scores[ci] > scores[best] then best = ci end end
      local c = CANDIDATES[best]
      heads[h] = {type = "vertical_and_slash", searched = c.type, vertical_size = c.v, slash_size = c.s,
        score = scores[best] / #problems}
    end
    layers[layer] = heads
  end
  local n_layers = 0
  for layer in pairs(layers) do if layer > n_layers then n_layers = layer end end
  for l = 1, n_layers do layers[l] = layers[l] or {} end
  return {layers = layers, from_row = from_row}
end

return {
  id = ID,
  card = ID,
  title = "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention",
  family = "stripe-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Last-64-query estimate of vertical columns and slash diagonals per head (top-k of each), " ..
    "executed line by line (attn.lines; widen: the mixed block + gathered-column kernel).",
  knob = "ratio",
  knob_direction = 1,
  params = recipe.block_params{
    ratio = {default = 1, min = 0, max = 64, doc = "multiplies every head's vertical and slash sizes (minference_ratio); at most 64, so that budget matching bisects it finely (64 x the fallback sizes cover n = 390K)"},
    vertical_size = {default = 1000, min = 0, int = true, doc = "verticals per head without a config (fallback)"},
    slash_size = {default = 6096, min = 0, int = true, doc = "slashes per head without a config (fallback)"},
    last_q = {default = 64, min = 1, int = true, doc = "estimate rows taken from the end"},
    sinks = {default = 30, min = 0, int = true, doc = "first columns always kept"},
    ["local"] = {default = 100, min = 0, int = true, doc = "smallest diagonal offsets always kept"},
    widen = {default = false, doc = "true: the reference kernel's slash tiles (convert_vertical_slash_indexes)"},
    config = {default = nil, doc = "per-head sizes: a calibration file path (sl.calibrate) or its config table"},
  },
  ops = {"score.last_q", "reduce.columns", "reduce.diagonals", "select.topk", "attn.lines", "attn.vs_mixed"},
  checks = {"sizes = n equals dense", "diagonal and first 30 columns always executed", "executed ⊇ semantic",
    "recall monotone in the sizes", "independent float64 estimate on a tiny input"},
  mask = function(prob, p) return estimate(prob, p).mask end,
  semantic_mask = semantic_mask,
  estimate = estimate,
  calibrate = calibrate,
  run = D.runner(estimate),
}
