-- DraftAttention: Fast Video Diffusion via Low-Resolution Attention
-- Guidance — card: draft_attention. Needs a video layout (prob.layout) and
-- a non-causal problem.
-- Card steps implemented:
--   1. draft Q/K: every frame cut into regions of ph x pw tokens; the
--      tokens reordered region by region ("tiles" order of sparselab.layout
--      with tf = 1, th = ph, tw = pw: frame, region row, region column, then
--      row-major inside the region — the reference's generate_reorg_indices
--      order), so region r is token block r of ph·pw tokens; a draft token is
--      the mean of its region (score.pooled, mean pooling);
--   2. draft map per head: softmax over the S = F·(h/ph)·(w/pw) draft keys
--      of the scaled draft scores (score.pooled with softmax, 1/sqrt(d));
--   3. head-global selection: with k = floor(sparsity·S^2), threshold = the
--      largest of the k smallest entries of the head's S x S map, keep every
--      entry >= threshold (as attention_percentile_mask_headwise: the
--      threshold entry and ties are kept; k = 0 keeps all); text rows and
--      columns all on;
--   4-5. Q, K, V reordered (perm.apply), one block-sparse pass with blocks of
--      ph·pw tokens, O and L restored (exact inverse).
-- Divergences: h and w must be multiples of ph and pw (the reference asserts
-- its one shape; avg_pool2d's ceil mode for ragged regions is not needed);
-- text blocks are united token-exact (the reference sets whole 128-token
-- text blocks, the same when the text is block aligned). Dense steps are a
-- pipeline choice: sparselab.steps (unknown in the card).
-- Reference read: shawnricecake/draft-attention draft_attention.py
-- (Draft_Attention.sample_qk_attention_2d, attention_percentile_mask_headwise,
-- generate_reorg_indices, forward).
local sl = require "sparselab"
local video = require "sparselab.video"

local M = {}

local function check_grid(lay, p)
  if lay.height % p.ph ~= 0 or lay.width % p.pw ~= 0 then
    sl.fail("draft_attention: regions of %d x %d tokens must tile the %d x %d frame (height %% ph and width %% pw = 0)",
      p.ph, p.pw, lay.height, lay.width)
  end
  if lay.video0 % (p.ph * p.pw) ~= 0 then
    sl.fail("draft_attention: %d text tokens before the video are not a multiple of the %d-token regions", lay.video0,
      p.ph * p.pw)
  end
end

--- Step 1-2: the draft map [H, S, S] as a Lua table (probabilities), from
--- the reordered Q and K. (Tests replace it with a score-blind map.)
function M.draft_map(qp, kp, lay, p)
  local b = p.ph * p.pw
  local s0 = lay.video0
  local qv, kv = qp:narrow(2, s0 + 1, lay.n_video), kp:narrow(2, s0 + 1, lay.n_video)
  local map = sl.score.pooled(qv, kv, {bq = b, bk = b, causal = false, softmax = true, pool = 0, backend = "cpu"})
  local S, d, H = lay.n_video // b, qp:shape()[3], qp:shape()[1]
  return map:totable(), 2.0 * H * lay.n_video * d + 2.0 * H * S * S * d
end

--- Step 3: per head, the kept (I, J) of the S x S map (1-based keep table).
function M.select(map, sparsity)
  local keeps = {}
  for h, rows in ipairs(map) do
    local S = #rows
    local flat = {}
    for I = 1, S do for J = 1, S do flat[#flat + 1] = rows[I][J] end end
    local k = math.floor(sparsity * S * S)
    local thr = -math.huge
    if k >= S * S then thr = math.huge
    elseif k > 0 then table.sort(flat); thr = flat[k] end
    local keep = {}
    for I = 1, S do
      local row = {}
      for J = 1, S do row[J] = rows[I][J] >= thr and 1 or 0 end
      keep[I] = row
    end
    keeps[h] = keep
  end
  return keeps
end

local function run(prob, p)
  local lay = video.layout_of("draft_attention", prob)
  check_grid(lay, p)
  local n, b = lay.n, p.ph * p.pw
  local t0 = sl.time()
  local perm = lay:perm_tensor("tiles", {tf = 1, th = p.ph, tw = p.pw})
  local be = prob.backend
  local qp, kp, vp = sl.layout.permute(prob.q, perm, be), sl.layout.permute(prob.k, perm, be),
    sl.layout.permute(prob.v, perm, be)
  local t1 = sl.time()
  local map, est_flops = M.draft_map(qp, kp, lay, p)
  local keeps = M.select(map, p.sparsity)
  -- the video blocks of the draft, the text blocks left to the text patterns
  local nb = (n + b - 1) // b
  local first = lay.video0 // b
  local full = {}
  for h, keep in ipairs(keeps) do
    local t = {}
    for I = 1, nb do
      local row = {}
      for J = 1, nb do
        local i, j = I - first, J - first
        row[J] = (keep[i] and keep[i][j]) or 0
      end
      t[I] = row
    end
    full[h] = t
  end
  local mask = video.block_mask(full, n, b, lay)
  local t2 = sl.time()
  local o, lse = sl.attn.block_sparse(qp, kp, vp, mask, {backend = be})
  local flops = sl.op_flops("attn.block_sparse", qp, kp, vp, mask, {})
  o, lse = sl.layout.unpermute(o, perm, be), sl.layout.unpermute(lse, perm, be)
  local t3 = sl.time()
  return {o = o, lse = lse, mask = mask, perm = perm, stats = {density = mask:density(false), flops = flops,
    estimator_flops = est_flops, estimate_ms = (t2 - t1) * 1e3, execute_ms = (t3 - t2 + t1 - t0) * 1e3}}
end

M.id = "draft_attention"
M.card = "draft_attention"
M.title = "DraftAttention: Fast Video Diffusion via Low-Resolution Attention Guidance"
M.family = "video-estimate"
M.phase = "prefill"
M.summary = "Region-pooled low-resolution attention map, head-global top fraction of its entries as a block mask on region-reordered tokens."
M.knob = "sparsity"
M.knob_direction = -1
M.params = {
  sparsity = {default = 0.9, min = 0, max = 1, doc = "fraction of draft-map entries dropped per head"},
  ph = {default = 8, min = 1, max = 4096, int = true, doc = "region height (tokens)"},
  pw = {default = 16, min = 1, max = 4096, int = true, doc = "region width (tokens)"},
}
M.ops = {"perm.apply", "score.pooled", "attn.block_sparse"}
M.checks = {"reorder then restore is the identity, text untouched", "sparsity 0 equals dense",
  "block k holds exactly region k's tokens", "per-row kept counts may differ; text keeps every row non-empty",
  "kept fraction per head about 1 - sparsity", "a score-blind map loses fidelity at the same density"}
M.needs_layout = true      -- a video layout on the problem (sparselab.layout)
M.noncausal_only = true    -- video attention is bidirectional
M.run = run

return M
