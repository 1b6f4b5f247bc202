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
--      highest wins (ties: the first in the list). Quantisation term
--      (session 3, our reading — the card names in-block "incoherence,
--      e.g. max/mean spread" and leaves formula and weights unknown): with
--      quant_weight = λ > 0 the score is concentration − λ·incoherence,
--      incoherence = mean over the densest blocks of log(max P / mean P) /
--      log(B²) (M.incoherence; score.exact block sums and maxes); λ = 0
--      (default) is block sparsity alone;
--   2. offline per (timestep, layer, head): a static block mask in the
--      permuted order, the densest ceil(density·nb^2) blocks of the block
--      mass (head-global threshold); the timestep is the problem's
--      workload_params.step (0 without one); a run at step s uses the mask
--      of the largest calibrated step <= s;
--   3. runtime: Q, K, V permuted per head (perm.apply; text untouched), Q and
--      K quantised to INT-b (quant.fake: Q per 32 rows, K per 64 rows, the
--      reference's WARPQ / BLKK groups; bits = 16: not quantised), one
--      block-sparse pass with the static masks ∪ text rows and columns, O
--      and L permuted back. P·V (session 3): quant.attn_block with pv_bits
--      (default: = bits, the card's INT8 QK + INT8 PV; 16: f32 P·V).
--      Emulated precision: Q, K hold exact INT-b grid values, QKᵀ and the
--      softmax statistics are f32; P is coded per (query row, key block)
--      as round(qmax·exp(s − block max)) (0..qmax, scale exp(block max −
--      row max)/qmax), V per (key block, channel) symmetric INT-b, their
--      products summed exactly in int32, scaled in f32; the row sum l is
--      the f32 P's (as a FlashAttention kernel keeps it). The reference's
--      per-warp scale layout of P is not public in the card; per (row,
--      block) is our reading. Fidelity vs f32 at mask = all: see the test
--      and docs/notes/issue-15.md.
-- Memory (issue 19): the block maps stay tensors [H, nb, nb]; Lua reads one
-- head at a time, a chunk of rows per call (M.head, M.rows_per_call), and only
-- the orders that are some head's best so far are kept; the keep is a u8
-- tensor. Still n²/b² per head by the card (a head-global threshold over the
-- whole block map: every block is ranked).
-- Plans come from `config` (sparselab calibrate paroattention ... --layout)
-- or, without one, from the problem itself (self-calibrated).
-- Reference (card): jamescsq47/PAROAtten permute_qk / permute_attn_out, per_warp_int8;
-- its offline search is not public — this search is our reading of the paper.
local sl = require "sparselab"
local video = require "sparselab.video"
local E = require "sparselab.blockest"

local M = {}
local ID = "paroattention"
M.ORDERS = {"fyx", "fxy", "yxf", "yfx", "xyf", "xfy"}
M.NAMES = {fyx = "FHW", fxy = "FWH", yxf = "HWF", yfx = "HFW", xyf = "WHF", xfy = "WFH"}

-- The block sums (and, with_max, block maxes) of one problem in one order:
-- tensors [H, nb, nb] (issue 19: they stay tensors; Lua reads one head at a
-- time, a chunk of rows per call, see M.head).
local function block_mass(prob, lay, order, b, with_max)
  local perm = lay:perm_tensor(order)
  local qp, kp = sl.layout.permute(prob.q, perm, prob.backend), sl.layout.permute(prob.k, perm, prob.backend)
  local sum = sl.score.exact(qp, kp, {bq = b, bk = b, reduce = 0, causal = false, backend = prob.backend})
  local max = with_max and sl.score.exact(qp, kp, {bq = b, bk = b, reduce = 1, causal = false, backend = prob.backend}) or nil
  qp:close(); kp:close()
  return sum, max
end

--- Head h of a block map t [H, nb, nb] as a flat Lua array {nb = nb, v = v},
--- v[(I - 1)·nb + J] = t[h][I][J], read M.rows_per_call rows per call (default
--- about 2^18 values; issue 19: the whole map [H, nb, nb] in one totable passed
--- Lua's 1e6 limit at 32K with 8 heads and was n² Lua numbers per order).
function M.head(t, h, nb)
  local v = {}
  E.each_row(t, h, function(I, row)
    local base = (I - 1) * nb
    for J = 1, nb do v[base + J] = row[J] end
  end, M.rows_per_call)
  return {nb = nb, v = v}
end

-- a head's block map as a flat array: M.head's form, or a nested table wh[I][J]
local function flat(wh)
  if wh.nb then return wh.v, wh.nb end
  local nb = #wh
  local v = {}
  for I = 1, nb do for J = 1, nb do v[(I - 1) * nb + J] = wh[I][J] end end
  return v, nb
end

-- flattened (I, J) block indices of one head sorted by mass, densest first
local function ranked(wh)
  local val, nb = flat(wh)
  local idx = {}
  for x = 1, nb * nb do idx[x] = x end
  table.sort(idx, function(a, c) if val[a] ~= val[c] then return val[a] > val[c] end return a < c end)
  return idx, val, nb
end

--- Step 1's score of a head's block mass (tests replace it with a score-blind one).
--- wh: M.head's flat form or a nested table wh[I][J].
function M.concentration(wh, keep)
  local idx, val = ranked(wh)
  local top, tot = 0, 0
  for x, i in ipairs(idx) do
    tot = tot + val[i]
    if x <= keep then top = top + val[i] end
  end
  return tot > 0 and top / tot or 0
end

--- Step 1's quantisation term (our reading of the paper's in-block
--- "incoherence"; the card gives no formula): for the densest `keep` blocks
--- of a head's attention map, log(max P / mean P) over the block's bq·bk
--- entries, averaged and divided by log(bq·bk) (0: flat blocks, easy to
--- quantise with one scale; 1: one spike per block). wh: block sums, mh:
--- block maxes (M.head's flat form or nested tables), cells = entries per
--- block (the ragged last blocks are counted as full: a small bias on them only).
function M.incoherence(wh, mh, keep, cells)
  local idx, val = ranked(wh)
  local mv = flat(mh)
  local acc, cnt = 0, 0
  for x = 1, math.min(keep, #idx) do
    local i = idx[x]
    local mean = val[i] / cells
    if mean > 0 then acc = acc + math.log(math.max(1, mv[i] / mean)); cnt = cnt + 1 end
  end
  return cnt > 0 and acc / cnt / math.log(cells) or 0
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
    -- per problem and order the block sums stay tensors while the order is
    -- some head's best so far (best[h]: the first order of highest score, as
    -- the choice below); each head is read alone (M.head), and a step's mass is
    -- summed per head over its problems in problem order (issue 19)
    local score, sums, best = {}, {}, {}
    for pi = 1, #probs do sums[pi] = {} end
    for o, order in ipairs(M.ORDERS) do
      score[o] = {}
      for h = 1, H do score[o][h] = 0 end
      for pi, prob in ipairs(probs) do
        local w, wmax = block_mass(prob, lay, order, p.block, p.quant_weight > 0)
        for h = 1, H do
          local wh = M.head(w, h, nb)
          score[o][h] = score[o][h] + M.concentration(wh, keep)
          if wmax then score[o][h] = score[o][h] - p.quant_weight * M.incoherence(wh, M.head(wmax, h, nb), keep, p.block * p.block) end
        end
        if wmax then wmax:close() end
        sums[pi][o] = w
      end
      for h = 1, H do
        if o == 1 or score[o][h] > score[best[h]][h] then best[h] = o end
      end
      local used = {}
      for h = 1, H do used[best[h]] = true end
      for o2 = 1, o do
        if not used[o2] then
          for pi = 1, #probs do if sums[pi][o2] then sums[pi][o2]:close(); sums[pi][o2] = nil end end
        end
      end
    end
    local orders = {}
    for h = 1, H do orders[h] = M.ORDERS[best[h]] end
    local by_step = {}
    for pi, prob in ipairs(probs) do
      local step = tostring(math.tointeger((prob.workload_params or {}).step) or 0)
      by_step[step] = by_step[step] or {}
      table.insert(by_step[step], pi)
    end
    local steps = {}
    for step, pis in pairs(by_step) do
      local heads = {}
      for h = 1, H do
        local acc
        for _, pi in ipairs(pis) do
          local v = M.head(sums[pi][best[h]], h, nb).v
          if not acc then acc = v
          else for x = 1, nb * nb do acc[x] = acc[x] + v[x] end end
        end
        local idx = ranked{nb = nb, v = acc}
        local l2 = {}
        for x = 1, keep do l2[x] = idx[x] - 1 end
        table.sort(l2)
        heads[h] = l2
      end
      steps[step] = heads
    end
    for pi = 1, #probs do for _, t in pairs(sums[pi]) do t:close() end end
    layers[l] = {orders = orders, steps = steps}
  end
  local list = {}
  for l = 1, #layers do list[l] = layers[l] or {orders = {}, steps = {}} end
  return {block = p.block, density = p.density, layers = list}
end

local function plan_for(prob, p)
  local layer = video.plan_layer(ID, prob, p, "orders", function(pr)
    return M.calibrate({pr}, {params = {block = p.block, density = p.density, quant_weight = p.quant_weight}})
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
  -- the keep is a u8 tensor [H, nb, nb] (issue 19: not H·nb² Lua numbers)
  local keep = sl.zeros({H, nb, nb}, "u8")
  for h = 1, H do
    for _, x in ipairs(lists[h]) do keep:set(h, x // nb + 1, x % nb + 1, 1) end
  end
  local mask = video.block_mask(keep, n, b, lay)
  keep:close()
  local perm = lay:perm_tensor(orders)
  local t1 = sl.time()
  local be = prob.backend
  local q, k, v = sl.layout.permute(prob.q, perm, be), sl.layout.permute(prob.k, perm, be), sl.layout.permute(prob.v, perm, be)
  if p.bits < 16 then
    q = sl.quant.fake(q, {bits = p.bits, group = 32, backend = be})
    k = sl.quant.fake(k, {bits = p.bits, group = 64, backend = be})
  end
  local pv_bits = p.pv_bits > 0 and p.pv_bits or p.bits
  local o, lse
  if pv_bits < 16 then
    o, lse = sl.quant.attn_block(q, k, v, mask, {bits = pv_bits, backend = be})
  else
    o, lse = sl.attn.block_sparse(q, k, v, mask, {backend = be})
  end
  o, lse = sl.layout.unpermute(o, perm, be), sl.layout.unpermute(lse, perm, be)
  local t2 = sl.time()
  local names = {}
  for h, o2 in ipairs(orders) do names[h] = M.NAMES[o2] end
  return {o = o, lse = lse, mask = mask, orders = orders, stats = {density = mask:density(false),
    flops = sl.op_flops("attn.block_sparse", q, k, v, mask, {}), pv_bits = pv_bits, estimate_ms = (t1 - t0) * 1e3,
    execute_ms = (t2 - t1) * 1e3, head_orders = table.concat(names, ",")}}
end

M.id = ID
M.card = ID
M.title = "PAROAttention: Pattern-Aware ReOrdering for Efficient Sparse and Quantized Attention in Visual Generation Models"
M.family = "video-pattern"
M.phase = "prefill"
M.summary = "Per-head axis-order permutation chosen offline, static per-step block masks, INT8 Q/K and INT8 P.V (emulated)."
M.knob = "density"
M.params = {
  density = {default = 0.25, min = 0, max = 1, doc = "kept fraction of blocks per head (static masks)"},
  block = {default = 64, min = 1, max = 4096, int = true, doc = "block size"},
  bits = {default = 8, min = 2, max = 16, int = true, doc = "INT-b Q and K (16: not quantised)"},
  pv_bits = {default = 0, min = 0, max = 16, int = true,
    doc = "INT-b P and V codes of the P.V product (quant.attn_block; 2..8, 16: f32 P.V); 0: the same as bits (the card's INT8 QK + INT8 PV)"},
  quant_weight = {default = 0, min = 0, max = 100,
    doc = "weight of the quantisation (incoherence) term in the order metric (0: block sparsity alone; the paper's weights are unknown)"},
  config = {default = nil, doc = "the plan: a calibration file path (sparselab calibrate) or its table"},
}
M.ops = {"perm.apply", "score.exact", "quant.fake", "quant.attn_block", "attn.block_sparse"}
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
