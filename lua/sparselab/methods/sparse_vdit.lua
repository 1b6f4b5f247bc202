-- Sparse-vDiT: Unleashing the Power of Sparse Attention to Accelerate Video
-- Diffusion Transformers — card: sparse_vdit. Needs a video layout
-- (prob.layout) and a non-causal problem.
-- Card steps implemented (block granular, blocks of `block` tokens over the
-- whole sequence; text rows and columns always on, the card's assumption):
--   1. candidates per head: full; skip (the head's output is 0); diagonal
--      (blocks |I - J| < w, w in {1, 2, 4}); multi-diagonal (blocks whose
--      token offset is within w·block of a multiple k·S of the frame size,
--      k = -F..F, w in {1, 2}: the same position in other frames); vertical
--      stripes (the c key blocks with the most attention mass on the
--      calibration input, c in {nb/8, nb/4}; the card leaves the choice of
--      columns unknown: this is our reading);
--   2. offline search (calibrate(problems) -> config, `sparselab calibrate
--      sparse_vdit --qkv ... --layout video,...`): per head and candidate
--      the error = rel_l2 of the head's output against dense, averaged over
--      the calibration problems; cost = the kernel-latency model (session
--      3; form ours, the card gives none): per pattern kind launch +
--      per_block · kept blocks, constants M.COSTS fitted on this machine by
--      M.measure_costs (timed attn.block_sparse at two sizes per kind), or
--      the `cost_model` parameter; cost = "blocks" is the earlier block
--      count; per head the cheapest candidate with error <= threshold,
--      else full. skip has error 1 (rel_l2 of zeros), so it is chosen only
--      with threshold >= 1 (the paper's criterion is the model's loss,
--      which a single layer cannot see);
--   3. head fusion: one attn.block_sparse launch over the per-head masks
--      (heads sharing a strategy share its mask); fused = false runs every
--      head alone (the check: identical outputs);
--   4. inference with the plan from `config` (a calibration file or table,
--      per layer: problem.layer); without one the plan is searched on the
--      problem itself (self-calibrated, an oracle plan).
-- No public code (card).
-- Memory (issue 19): the stripe columns' block sums are read a chunk of rows
-- of one head at a time; keep_of still builds an nb x nb Lua table per head
-- and candidate (n² Lua numbers, transient; see docs/notes/issue-19.md).
local sl = require "sparselab"
local video = require "sparselab.video"
local E = require "sparselab.blockest"

local M = {}
local ID = "sparse_vdit"

--- The candidate list for a layout (kinds and widths; stripes get their
--- columns in the search).
function M.candidates(lay, b)
  local nb = (lay.n + b - 1) // b
  local c = {{kind = "full"}, {kind = "skip"}}
  for _, w in ipairs{1, 2, 4} do c[#c + 1] = {kind = "diag", w = w} end
  for _, w in ipairs{1, 2} do c[#c + 1] = {kind = "multidiag", w = w} end
  for _, f in ipairs{8, 4} do c[#c + 1] = {kind = "vertical", count = math.max(1, nb // f)} end
  return c
end

--- keep[I][J] (1-based) of one strategy.
function M.keep_of(s, lay, b)
  local nb = (lay.n + b - 1) // b
  local S = lay.height * lay.width
  local cols = {}
  for _, J in ipairs(s.cols or {}) do cols[J] = true end
  local keep = {}
  for I = 0, nb - 1 do
    local row = {}
    for J = 0, nb - 1 do
      local on = false
      if s.kind == "full" then on = true
      elseif s.kind == "diag" then on = math.abs(I - J) < s.w
      elseif s.kind == "multidiag" then
        for k = -lay.frames, lay.frames do
          if math.abs((I - J) * b - k * S) < s.w * b then on = true break end
        end
      elseif s.kind == "vertical" then on = cols[J] == true end
      row[J + 1] = on and 1 or 0
    end
    keep[I + 1] = row
  end
  return keep
end

local function kept_blocks(keep)
  local c = 0
  for _, row in ipairs(keep) do for _, x in ipairs(row) do c = c + x end end
  return c
end
M.kept_blocks = kept_blocks

--- The kernel-latency cost model (card step 2: "a hardware cost from a
--- measured kernel-latency cost model"; its form is not in the card — our
--- reading): per pattern kind a fixed cost (launch, index set-up) and a
--- cost per kept block, latency = launch + per_block · blocks, in ms; skip
---- costs nothing. M.COSTS: fitted by M.measure_costs on the shared 2-core
--- box (cpu backend, one head, d = 64, blocks of 64). Pass another table as the `cost_model`
--- parameter (e.g. measured on the target machine); cost = "blocks" is the
--- earlier block-count stand-in.
--- (Rounded from two runs of M.measure_costs(16 x 16 x 16 + 32 text, 64)
--- at load 11: per block 0.03-0.05 ms for every kind, vertical stripes
--- the dearest per block; the fitted fixed costs were 0-5 ms and noisy.)
M.COSTS = {
  full = {launch = 1.0, per_block = 0.034},
  diag = {launch = 1.0, per_block = 0.030},
  multidiag = {launch = 1.0, per_block = 0.029},
  vertical = {launch = 0.5, per_block = 0.045},
}

function M.latency(kind, blocks, model)
  if kind == "skip" then return 0 end
  local c = (model or M.COSTS)[kind]
  if not c then sl.fail("%s: cost_model has no entry for pattern '%s'", ID, kind) end
  return c.launch + c.per_block * blocks
end

--- Fits the cost model on this machine: per kind, attn.block_sparse timed
--- (median of `reps`) on random Q/K/V of `lay` and of the same layout with
--- 1/2 and 1/4 of the frames; a least-squares line through the three
--- (kept blocks, ms) points gives launch (>= 0) and per_block.
function M.measure_costs(lay, b, opts)
  opts = opts or {}
  local d, reps, be = opts.d or 64, opts.reps or 5, opts.backend
  local lays = {lay}
  for _, div in ipairs{2, 4} do
    lays[#lays + 1] = sl.layout.video{frames = math.max(1, lay.frames // div), height = lay.height, width = lay.width,
      text = lay.text, text_first = lay.text_first}
  end
  local widths = {full = {}, diag = {w = 2}, multidiag = {w = 1}, vertical = {count = 4}}
  local model = {}
  for _, kind in ipairs{"full", "diag", "multidiag", "vertical"} do
    local extra = widths[kind]
    local xs, ys = {}, {}
    for i, l in ipairs(lays) do
      local nb = (l.n + b - 1) // b
      local s = {kind = kind, w = extra.w}
      if kind == "vertical" then
        s.cols = {}
        for x = 1, math.min(nb, extra.count) do s.cols[x] = x - 1 end
      end
      local keep = M.keep_of(s, l, b)
      local mask = sl.mask.from_blocks(sl.tensor({keep}, "u8"), {n_q = l.n, n_k = l.n, bq = b, bk = b, causal = 0})
      local q, k, v = sl.randn({1, l.n, d}, 1), sl.randn({1, l.n, d}, 2), sl.randn({1, l.n, d}, 3)
      local t = {}
      for r = 1, reps do
        local t0 = sl.time()
        sl.attn.block_sparse(q, k, v, mask, {backend = be})
        t[r] = (sl.time() - t0) * 1e3
      end
      table.sort(t)
      xs[i], ys[i] = kept_blocks(keep), t[(reps + 1) // 2]
    end
    local mx, my = 0, 0
    for i = 1, #xs do mx, my = mx + xs[i] / #xs, my + ys[i] / #xs end
    local sxy, sxx = 0, 0
    for i = 1, #xs do sxy, sxx = sxy + (xs[i] - mx) * (ys[i] - my), sxx + (xs[i] - mx) ^ 2 end
    local per = math.max(sxx > 0 and sxy / sxx or 0, 1e-9)
    model[kind] = {per_block = per, launch = math.max(0, my - per * mx)}
  end
  return model
end

-- The per-head mask of a plan (skip heads: nothing kept, text included).
local function plan_mask(plan, lay, b)
  local n = lay.n
  local nb = (n + b - 1) // b
  local keeps, skip = {}, {}
  for h, s in ipairs(plan) do
    keeps[h] = M.keep_of(s.kind == "skip" and {kind = "none"} or s, lay, b)
    skip[h] = s.kind == "skip"
  end
  local m = video.block_mask(keeps, n, b, lay)
  local any_skip = false
  for _, x in ipairs(skip) do any_skip = any_skip or x end
  if any_skip then
    -- skipped heads keep nothing at all (not even text)
    local items = {}
    for h = 1, #plan do
      if skip[h] then
        local empty = {}
        for I = 1, nb do local r = {} for J = 1, nb do r[J] = 0 end empty[I] = r end
        items[h] = sl.mask.from_blocks(sl.tensor({empty}, "u8"), {n_q = n, n_k = n, bq = b, bk = b, causal = 0})
      else
        items[h] = sl.mask.from_blocks(sl.tensor({keeps[h]}, "u8"), {n_q = n, n_k = n, bq = b, bk = b, causal = 0})
        local text = video.text_patterns(lay)
        if text then items[h] = items[h] + text end
      end
    end
    m = sl.mask.assign(items)
  end
  return m
end

--- Per head error of a plan on a problem: rel_l2 of each head's output.
--- (Tests replace it with a score-blind one.)
function M.head_errors(prob, o, ref)
  local out = {}
  for h = 1, prob.q:shape()[1] do out[h] = sl.metric.rel_l2(o:narrow(1, h, 1), ref:narrow(1, h, 1)) end
  return out
end

-- The key blocks with the most attention mass (exact block sums over every query).
-- The block sums are read a chunk of rows of one head at a time (about 2^18
-- values; issue 19: the whole [H, nb, nb] table was n² and passed Lua's 1e6
-- totable limit at 32K with 8 heads); each column sums its rows in order.
local function stripe_columns(prob, b, count)
  local st = sl.score.exact(prob.q, prob.k, {bq = b, bk = b, reduce = 0, causal = false, backend = prob.backend})
  local H, nb = st:shape()[1], st:shape()[3]
  local cols = {}
  for h = 1, H do
    local mass = {}
    for J = 1, nb do mass[J] = 0 end
    E.each_row(st, h, function(_, row)
      for J = 1, nb do mass[J] = mass[J] + row[J] end
    end, M.rows_per_call)
    local idx = E.order_desc(mass, nb)
    local l = {}
    for x = 1, math.min(count, nb) do l[x] = idx[x] - 1 end
    table.sort(l)
    cols[h] = l
  end
  return cols
end

M.stripe_columns = stripe_columns

--- The offline search: per layer (problem.layer, default 0) a per-head plan.
function M.calibrate(problems, opts)
  local m = sl.methods.get(ID)
  local p = sl.registry.resolve(m, opts and opts.params or {})
  local layers = {}
  for l, probs in pairs(video.by_layer(problems)) do
    local lay = video.layout_of(ID, probs[1])
    local H = probs[1].q:shape()[1]
    local cands = M.candidates(lay, p.block)
    local err, cost = {}, {}
    for c = 1, #cands do err[c] = {} for h = 1, H do err[c][h] = 0 end end
    local cols_by_prob = {}
    for i, prob in ipairs(probs) do
      video.layout_of(ID, prob)
      local ref = sl.attn.dense(prob.q, prob.k, prob.v, {causal = false, backend = prob.backend})
      for c, cand in ipairs(cands) do
        local plan = {}
        local cols
        if cand.kind == "vertical" then
          cols = stripe_columns(prob, p.block, cand.count)
          cols_by_prob[i] = cols_by_prob[i] or {}
          cols_by_prob[i][c] = cols
        end
        for h = 1, H do plan[h] = {kind = cand.kind, w = cand.w, cols = cols and cols[h]} end
        local o = sl.attn.block_sparse(prob.q, prob.k, prob.v, plan_mask(plan, lay, p.block), {backend = prob.backend})
        local e = M.head_errors(prob, o, ref)
        for h = 1, H do err[c][h] = err[c][h] + e[h] / #probs end
      end
    end
    if p.cost ~= "latency" and p.cost ~= "blocks" then
      sl.fail("%s: cost must be 'latency' or 'blocks', found '%s'", ID, tostring(p.cost))
    end
    local model = p.cost_model or M.COSTS
    for c, cand in ipairs(cands) do
      local blocks = cand.kind == "skip" and 0 or kept_blocks(M.keep_of({kind = cand.kind, w = cand.w,
        cols = cand.kind == "vertical" and (function() local t = {} for x = 1, cand.count do t[x] = x - 1 end return t end)()
        or nil}, lay, p.block))
      cost[c] = p.cost == "blocks" and blocks or M.latency(cand.kind, blocks, model)
    end
    local heads = {}
    for h = 1, H do
      local best = 1
      for c = 1, #cands do
        if err[c][h] <= p.threshold and (cost[c] < cost[best] or (cost[c] == cost[best] and err[c][h] < err[best][h])) then
          best = c
        end
      end
      local cand = cands[best]
      heads[h] = {kind = cand.kind, w = cand.w, error = err[best][h], cost = cost[best],
        cols = cand.kind == "vertical" and cols_by_prob[1][best][h] or nil}
    end
    local errors = {}
    for h = 1, H do errors[h] = {} for c = 1, #cands do errors[h][c] = err[c][h] end end
    layers[l] = {heads = heads, errors = errors, costs = cost}
  end
  local list = {}
  for l = 1, #layers do list[l] = layers[l] or {heads = {}} end
  return {block = p.block, layers = list}
end

local function plan_for(prob, p)
  return video.plan_layer(ID, prob, p, "heads", function(pr)
    return M.calibrate({pr}, {params = {block = p.block, threshold = p.threshold, cost = p.cost,
      cost_model = p.cost_model}})
  end).heads
end

--- Runs a plan: fused (one launch over per-head masks) or head by head.
function M.execute(prob, lay, plan, b, fused)
  if fused then
    local mask = plan_mask(plan, lay, b)
    local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, mask, {backend = prob.backend})
    return o, lse, mask
  end
  local os, ls = {}, {}
  for h = 1, #plan do
    local one = function(t) return t:narrow(1, h, 1) end
    local mask = plan_mask({plan[h]}, lay, b)
    os[h], ls[h] = sl.attn.block_sparse(one(prob.q), one(prob.k), one(prob.v), mask, {backend = prob.backend})
  end
  return sl.cat(os, 1), sl.cat(ls, 1), nil
end

local function run(prob, p)
  local lay = video.layout_of(ID, prob)
  local t0 = sl.time()
  local plan = plan_for(prob, p)
  local t1 = sl.time()
  local o, lse, mask = M.execute(prob, lay, plan, p.block, p.fused)
  local t2 = sl.time()
  local kinds = {}
  for h, s in ipairs(plan) do kinds[h] = s.kind .. (s.w and tostring(s.w) or "") end
  local out = {o = o, lse = lse, mask = mask, plan = plan, stats = {estimate_ms = (t1 - t0) * 1e3,
    execute_ms = (t2 - t1) * 1e3, head_plan = table.concat(kinds, ",")}}
  if mask then
    out.stats.density = mask:density(false)
    out.stats.flops = sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, mask, {})
  end
  return out
end

M.id = ID
M.card = ID
M.title = "Sparse-vDiT: Unleashing the Power of Sparse Attention to Accelerate Video Diffusion Transformers"
M.family = "video-pattern"
M.phase = "prefill"
M.summary = "Offline per-head choice among full / skip / diagonal / multi-diagonal / vertical-stripe block patterns (cheapest under an error bound), fused by pattern."
M.knob = "threshold"
M.params = {
  threshold = {default = 0.3, min = 0, max = 10, doc = "largest per-head rel_l2 a candidate may have in the search"},
  block = {default = 64, min = 1, max = 4096, int = true, doc = "block size of every candidate"},
  fused = {default = true, doc = "one launch over per-head masks (false: head by head)"},
  cost = {default = "latency",
    doc = "search cost: the kernel-latency model (launch + per_block x blocks per pattern) or the kept-block count"},
  cost_model = {default = nil, doc = "latency model {kind = {launch =, per_block =}} (default M.COSTS; M.measure_costs fits one)"},
  config = {default = nil, doc = "the plan: a calibration file path (sparselab calibrate) or its table"},
}
M.ops = {"score.exact", "attn.dense", "attn.block_sparse"}
M.checks = {"full reproduces dense; skip returns zeros", "multi-diagonal with width >= S is full",
  "fused equals unfused", "the search is deterministic and its plan round-trips through a calibration file",
  "a score-blind search loses fidelity"}
M.calibrate = M.calibrate
M.needs_layout = true      -- a video layout on the problem (sparselab.layout)
M.noncausal_only = true    -- video attention is bidirectional
M.run = run
-- The plan is static (no estimator once searched): a reuse step runs it as it is.
M.reuse = function(prob, p) return run(prob, p) end

return M
