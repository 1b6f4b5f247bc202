-- Training-free and Adaptive Sparse Attention for Efficient Long Video
-- Generation (AdaSpa) — card: adaspa. Needs a video layout (prob.layout;
-- its text tokens are the text sink) and a non-causal problem.
-- Card steps implemented:
--   1. exact block mass W[p, q] = Σ_{i∈p, j∈q} exp(scale·q_i·k_j - LSE_i)
--      (mass.blocks);
--   2. search steps: a fresh search runs dense attention (pass 1: O and
--      LSE), then mass.blocks with that LSE (pass 2); an LSE-cached search
--      (the LSE of the last fresh search, kept in the step state) runs
--      mass.blocks alone. Under sparselab.steps the first search step
--      outputs its dense O (the card's fused search) and caches the LSE;
--      later estimate steps are LSE-cached searches and output the sparse
--      attention with their new mask; "reuse" steps run the last mask.
--      The card's schedule (dense warm-up to t_w, searches at T_s) is a
--      sparselab.steps schedule (dense_first = t_w, refresh between
--      searches; T_s = {10, 30} is refresh = 20 after dense_first = 10);
--   3. row-wise selection: every query block keeps the top k = round((1 -
--      sparsity)·nb_video) video key blocks of its W row (ties: lower block
--      first); text rows and columns always on (the text sink);
--   4. head-adaptive hierarchy: per-head recall at s (mean over query-block
--      rows of kept W / row W); n = #heads with recall > recall_bar, capped
--      at floor(H/2) so the two groups are disjoint; the n highest-recall
--      heads get sparsity (1 + s)/2, the n lowest get (3s - 1)/2, i.e. s ± δ
--      with δ = (1 - s)/2; reading: δ is capped at s (below s = 1/3 the
--      card's low value would be negative), keeping the mean at s;
--   5. attn.block_sparse with the per-head masks.
-- Readings: a standalone call (no step state) is a fresh search whose mask
-- is applied at once (sparse output), so that one step can be evaluated;
-- the card's Algorithm "Log(qk - LSE)" is read as exp(qk - LSE) (the card
-- says so). No public code (card).
-- Memory (issue 19): W stays a tensor, read a chunk of rows of one head at a
-- time (twice: the recalls, then the keeps), and the keep is a u8 tensor.
local sl = require "sparselab"
local video = require "sparselab.video"
local E = require "sparselab.blockest"

local M = {}

--- Step 1: W, f32 [H, nqb, nkb] (a tensor; run reads it a chunk of rows of
--- one head at a time), and its FLOPs. (Tests replace it with a score-blind
--- one, which may return W as a Lua table W[h][I][J].)
function M.block_mass(prob, lse, p)
  local w = sl.mass.blocks(prob.q, prob.k, lse, {bq = p.block, bk = p.block, causal = false, backend = prob.backend})
  return w, sl.op_flops("mass.blocks", prob.q, prob.k, lse, {bq = p.block, bk = p.block, causal = false})
end

-- fn(I, row) for every row of head h's W in order: a tensor through
-- E.each_row (a chunk of rows per read), or a Lua table W[h][I][J].
local function each_w_row(w, h, fn)
  if type(w) == "table" then
    for I, row in ipairs(w[h]) do fn(I, row) end
  else
    E.each_row(w, h, fn, M.rows_per_call)
  end
end

-- The video key blocks (0-based) of a layout: blocks not wholly text.
local function video_blocks(lay, n, b)
  local out = {}
  for J = 0, (n + b - 1) // b - 1 do
    local any = false
    for t = J * b, math.min(n, (J + 1) * b) - 1 do
      if not lay:is_text(t) then any = true break end
    end
    if any then out[#out + 1] = J end
  end
  return out
end

--- Step 3 for one query-block row of W: the kept video blocks (0-based,
--- the top k of the row, ties to the lower block), their mass and the
--- row's video mass.
function M.select_row(row, vb, k)
  local order = {}
  for _, J in ipairs(vb) do order[#order + 1] = J end
  table.sort(order, function(a, b)
    if row[a + 1] ~= row[b + 1] then return row[a + 1] > row[b + 1] end
    return a < b
  end)
  local picks, tot, kept = {}, 0, 0
  for _, J in ipairs(vb) do tot = tot + row[J + 1] end
  for x = 1, math.min(k, #order) do picks[x] = order[x]; kept = kept + row[order[x] + 1] end
  return picks, kept, tot
end

--- Step 3 for one head: keep[I][J] (1-based) with k blocks per row, and the
--- head's recall.
function M.select_rows(wh, vb, k, nb)
  local keep, recall = {}, 0
  for I = 1, nb do
    local picks, kept, tot = M.select_row(wh[I], vb, k)
    local kr = {}
    for J = 1, nb do kr[J] = 0 end
    for _, J in ipairs(picks) do kr[J + 1] = 1 end
    keep[I] = kr
    recall = recall + (tot > 0 and kept / tot or 1)
  end
  return keep, recall / nb
end

--- Step 4: per-head sparsities from per-head recalls at base s.
function M.adaptive(recalls, s, bar)
  local H = #recalls
  local n = 0
  for _, r in ipairs(recalls) do if r > bar then n = n + 1 end end
  n = math.min(n, H // 2)
  local idx = {}
  for h = 1, H do idx[h] = h end
  table.sort(idx, function(a, b)
    if recalls[a] ~= recalls[b] then return recalls[a] > recalls[b] end
    return a < b
  end)
  local sp = {}
  for h = 1, H do sp[h] = s end
  -- the card's (1 + s)/2 and (3s - 1)/2 are s ± (1 - s)/2; the shift is
  -- capped at s so that the low group stays >= 0 and the mean stays s
  local delta = math.min((1 - s) / 2, s)
  local hi, lo = s + delta, s - delta
  for x = 1, n do
    sp[idx[x]] = hi
    sp[idx[H - x + 1]] = lo
  end
  return sp
end

local function keep_count(s, nv)
  return math.max(0, math.min(nv, math.floor((1 - s) * nv + 0.5)))
end

local function run(prob, p)
  local lay = video.layout_of("adaspa", prob)
  local n, b, H = lay.n, p.block, prob.q:shape()[1]
  local nb = (n + b - 1) // b
  local st = prob.state
  local t0 = sl.time()
  local cached = st and st.adaspa_lse
  local dense_o, lse
  local est_flops = 0
  if cached and p.lse_cache then
    lse = cached
  else
    dense_o, lse = sl.attn.dense(prob.q, prob.k, prob.v, {causal = false, backend = prob.backend})
    est_flops = sl.op_flops("attn.dense", prob.q, prob.k, prob.v, {causal = false})
    if st then st.adaspa_lse = lse end
  end
  local w, wf = M.block_mass(prob, lse, p)
  est_flops = est_flops + wf
  local vb = video_blocks(lay, n, b)
  -- W is read a chunk of rows of one head at a time (about 2^18 values) and
  -- the keep is a u8 tensor written in place (issue 19: W and the keeps as
  -- whole [H][nqb][nkb] Lua tables were n², and W's totable passed Lua's 1e6
  -- limit at 32K with 8 heads); the recall sums its rows in the same order
  local sp
  if p.adaptive then
    local recalls, k = {}, keep_count(p.sparsity, #vb)
    for h = 1, H do
      local recall = 0
      each_w_row(w, h, function(_, row)
        local _, kept, tot = M.select_row(row, vb, k)
        recall = recall + (tot > 0 and kept / tot or 1)
      end)
      recalls[h] = recall / nb
    end
    sp = M.adaptive(recalls, p.sparsity, p.recall_bar)
  end
  local keep = sl.zeros({H, nb, nb}, "u8")
  for h = 1, H do
    local k = keep_count(sp and sp[h] or p.sparsity, #vb)
    each_w_row(w, h, function(I, row)
      for _, J in ipairs((M.select_row(row, vb, k))) do keep:set(h, I, J + 1, 1) end
    end)
  end
  local mask = video.block_mask(keep, n, b, lay)
  local t1 = sl.time()
  local out = {mask = mask, stats = {density = mask:density(false), estimator_flops = est_flops,
    lse_cached = (cached and p.lse_cache) and 1 or 0}}
  if dense_o and st then
    -- the fused search step of a trajectory outputs its dense attention
    out.o, out.lse = dense_o, lse
    out.stats.flops = est_flops
    out.stats.density = 1
  else
    out.o, out.lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, mask, {backend = prob.backend})
    out.stats.flops = sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, mask, {})
  end
  local t2 = sl.time()
  out.stats.estimate_ms, out.stats.execute_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
  if sp then
    local s = {}
    for h = 1, H do s[h] = string.format("%.3g", sp[h]) end
    out.stats.head_sparsity = table.concat(s, ",")
  end
  return out
end

M.id = "adaspa"
M.card = "adaspa"
M.title = "Training-free and Adaptive Sparse Attention for Efficient Long Video Generation"
M.family = "video-estimate"
M.phase = "prefill"
M.summary = "Exact block mass (fresh or cached LSE), row-wise top-k blocks, head-adaptive sparsity, text sink."
M.knob = "sparsity"
M.knob_direction = -1
M.params = {
  sparsity = {default = 0.8, min = 0, max = 1, doc = "base fraction of video key blocks dropped per query block"},
  block = {default = 64, min = 1, max = 4096, int = true, doc = "block size B"},
  adaptive = {default = true, doc = "head-adaptive sparsity hierarchy (step 4)"},
  recall_bar = {default = 0.8, min = 0, max = 1, doc = "recall above which a head counts in n (step 4)"},
  lse_cache = {default = true, doc = "later search steps reuse the LSE of the first (step 2)"},
}
M.ops = {"attn.dense", "mass.blocks", "attn.block_sparse"}
M.checks = {"sparsity 0 equals dense", "fresh-LSE W rows sum to the block's rows", "cached LSE deviates",
  "adaptive rule keeps the mean sparsity and stays in [0, 1]", "equal video blocks per query block",
  "a score-blind W loses fidelity at the same density"}
M.needs_layout = true      -- a video layout on the problem (sparselab.layout)
M.noncausal_only = true    -- video attention is bidirectional
M.run = run

return M
