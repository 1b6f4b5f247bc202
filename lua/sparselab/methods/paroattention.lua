-- PAROAttention: Pattern-Aware ReOrdering for Efficient Sparse and Quantized
-- Attention in Visual Generation Models — card: paroattention. Needs a video
-- layout (prob.layout) and a non-causal problem.
-- Card steps implemented:
--   1. offline per (layer, head): one of the six axis orders {FHW, FWH, HWF,
--      HFW, WHF, WFH} (sparselab.layout "fyx", "fxy", "yxf", "yfx", "xyf",
--      "xfy": the last axis is the contiguous one), chosen by block-sparsity
--      concentration: the fraction of the head's exact attention mass
--      (score.exact block sums on the permuted Q, K) inside its densest
--      ceil(density·nb^2) blocks, summed over the calibration problems;
--      highest wins (ties: the first in the list). The quantisation
--      "incoherence" term of the paper's metric is not used (its formula is
--      unknown in the card);
--   2. offline per (timestep, layer, head): a static block mask in the
--      permuted order, the densest ceil(density·nb^2) blocks of the block
--      mass (head-global threshold); the timestep is the problem's
--      workload_params.step (0 without one); a run at step s uses the mask
--      of the largest calibrated step <= s;
--   3. runtime: Q, K, V permuted per head (perm.apply; text untouched), Q and
--      K quantised to INT-b (quant.fake: Q per 32 rows, K per 64 rows, the
--      reference's WARPQ / BLKK groups; bits = 16: not quantised), one
--      block-sparse pass with the static masks ∪ text rows and columns, O
--      and L permuted back. Emulated precision: the INT-b values are exact,
--      the products and the P·V stay f32 (the reference's INT8 P·V is not
--      emulated).
-- Plans come from `config` (sparselab calibrate paroattention ... --layout)
-- or, without one, from the problem itself (self-calibrated).
-- Reference (card): jamescsq47/PAROAtten permute_qk / permute_attn_out, per_warp_int8;
-- its offline search is not public — this search is our reading of the paper.
local sl = require "sparselab"
local video = require "sparselab.video"

local M = {}
local ID = "paroattention"
M.ORDERS = {"fyx", "fxy", "yxf", "yfx", "xyf", "xfy"}
M.NAMES = {fyx = "FHW", fxy = "FWH", yxf = "HWF", yfx = "HFW", xyf = "WHF", xfy = "WFH"}

local function block_mass(prob, lay, order, b)
  local perm = lay:perm_tensor(order)
  local qp, kp = sl.layout.permute(prob.q, perm, prob.backend), sl.layout.permute(prob.k, perm, prob.backend)
  return sl.score.exact(qp, kp, {bq = b, bk = b, reduce = 0, causal = false, backend = prob.backend}):totable()
end

-- flattened (I, J) block indices of one head sorted by mass, densest first
local function ranked(wh)
  local nb = #wh
  local idx, val = {}, {}
  for I = 1, nb do for J = 1, nb do
    local x = (I - 1) * nb + J
    idx[#idx + 1] = x
    val[x] = wh[I][J]
  end end
  table.sort(idx, function(a, c) if val[a] ~= val[c] then return val[a] > val[c] end return a < c end)
  return idx, val
end

--- Step 1's score of a head's block mass (tests replace it with a score-blind one).
function M.concentration(wh, keep)
  local idx, val = ranked(wh)
  local top, tot = 0, 0
  for x, i in ipairs(idx) do
    tot = tot + val[i]
    if x <= keep then top = top + val[i] end
  end
  return tot > 0 and top / tot or 0
end

local function keep_count(nb, density) return math.min(nb * nb, math.max(1, math.ceil(density * nb * nb))) end

--- The offline search over calibration problems (see the header).
function M.calibrate(problems, opts)
  local m = sl.methods.get(ID)
  local p = sl.registry.resolve(m, opts and opts.params or {})
  local layers = {}
  for l, probs in pairs(video.by_layer(problems)) do
    local lay = video.layout_of(ID, probs[1])
    local H = probs[1].q:shape()[1]
    local nb = (lay.n + p.block - 1) // p.block
    local keep = keep_count(nb, p.density)
    local score, mass = {}, {}
    for o, order in ipairs(M.ORDERS) do
      score[o] = {}
      for h = 1, H do score[o][h] = 0 end
      for _, prob in ipairs(probs) do
        local w = block_mass(prob, lay, order, p.block)
        local step = tostring(math.tointeger((prob.workload_params or {}).step) or 0)
        mass[step] = mass[step] or {}
        mass[step][o] = mass[step][o] or {}
        for h = 1, H do
          score[o][h] = score[o][h] + M.concentration(w[h], keep)
          local acc = mass[step][o][h]
          if not acc then mass[step][o][h] = w[h]
          else for I = 1, nb do for J = 1, nb do acc[I][J] = acc[I][J] + w[h][I][J] end end end
        end
      end
    end
    local orders, best = {}, {}
    for h = 1, H do
      local b = 1
      for o = 2, #M.ORDERS do if score[o][h] > score[b][h] then b = o end end
      best[h], orders[h] = b, M.ORDERS[b]
    end
    local steps = {}
    for step, byo in pairs(mass) do
      local heads = {}
      for h = 1, H do
        local idx = ranked(byo[best[h]][h])
        local l2 = {}
        for x = 1, keep do l2[x] = idx[x] - 1 end
        table.sort(l2)
        heads[h] = l2
      end
      steps[step] = heads
    end
    layers[l] = {orders = orders, steps = steps}
  end
  local list = {}
  for l = 1, #layers do list[l] = layers[l] or {orders = {}, steps = {}} end
  return {block = p.block, density = p.density, layers = list}
end

local function plan_for(prob, p)
  local layer = video.plan_layer(ID, prob, p, "orders", function(pr)
    return M.calibrate({pr}, {params = {block = p.block, density = p.density}})
  end)
  local step = math.tointeger((prob.workload_params or {}).step) or 0
  local best
  for key in pairs(layer.steps) do
    local s = math.tointeger(tonumber(key))
    if s and s <= step and (not best or s > best) then best = s end
  end
  if not best then sl.fail("%s: the plan has no mask for step %d or earlier", ID, step) end
  return layer.orders, layer.steps[tostring(best)], best
end

local function run(prob, p)
  local lay = video.layout_of(ID, prob)
  local n, b, H = lay.n, p.block, prob.q:shape()[1]
  local nb = (n + b - 1) // b
  local t0 = sl.time()
  local orders, lists = plan_for(prob, p)
  local keeps = {}
  for h = 1, H do
    local keep = {}
    for I = 1, nb do local r = {} for J = 1, nb do r[J] = 0 end keep[I] = r end
    for _, x in ipairs(lists[h]) do keep[x // nb + 1][x % nb + 1] = 1 end
    keeps[h] = keep
  end
  local mask = video.block_mask(keeps, n, b, lay)
  local perm = lay:perm_tensor(orders)
  local t1 = sl.time()
  local be = prob.backend
  local q, k, v = sl.layout.permute(prob.q, perm, be), sl.layout.permute(prob.k, perm, be), sl.layout.permute(prob.v, perm, be)
  if p.bits < 16 then
    q = sl.quant.fake(q, {bits = p.bits, group = 32, backend = be})
    k = sl.quant.fake(k, {bits = p.bits, group = 64, backend = be})
  end
  local o, lse = sl.attn.block_sparse(q, k, v, mask, {backend = be})
  o, lse = sl.layout.unpermute(o, perm, be), sl.layout.unpermute(lse, perm, be)
  local t2 = sl.time()
  local names = {}
  for h, o2 in ipairs(orders) do names[h] = M.NAMES[o2] end
  return {o = o, lse = lse, mask = mask, orders = orders, stats = {density = mask:density(false),
    flops = sl.op_flops("attn.block_sparse", q, k, v, mask, {}), estimate_ms = (t1 - t0) * 1e3,
    execute_ms = (t2 - t1) * 1e3, head_orders = table.concat(names, ",")}}
end

M.id = ID
M.card = ID
M.title = "PAROAttention: Pattern-Aware ReOrdering for Efficient Sparse and Quantized Attention in Visual Generation Models"
M.family = "video-pattern"
M.phase = "prefill"
M.summary = "Per-head axis-order permutation chosen offline, static per-step block masks, INT8 Q/K (emulated)."
M.knob = "density"
M.params = {
  density = {default = 0.25, min = 0, max = 1, doc = "kept fraction of blocks per head (static masks)"},
  block = {default = 64, min = 1, max = 4096, int = true, doc = "block size"},
  bits = {default = 8, min = 2, max = 16, int = true, doc = "INT-b Q and K (16: not quantised)"},
  config = {default = nil, doc = "the plan: a calibration file path (sparselab calibrate) or its table"},
}
M.ops = {"perm.apply", "score.exact", "quant.fake", "attn.block_sparse"}
M.checks = {"permutation round trip exact, text untouched", "all blocks without quantisation equal dense",
  "a same-position (temporal) head picks an order with F innermost", "INT8 / INT4 error at mask = all, documented",
  "a score-blind order choice loses fidelity"}
M.calibrate = M.calibrate
M.needs_layout = true      -- a video layout on the problem (sparselab.layout)
M.noncausal_only = true    -- video attention is bidirectional
M.run = run
-- The plan is static (no estimator): a reuse step runs it as it is.
M.reuse = function(prob, p) return run(prob, p) end

return M
