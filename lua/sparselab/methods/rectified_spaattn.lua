-- Rectified SpaAttn: Revisiting Attention Sparsity for Efficient Video
-- Generation — card: rectified_spaattn, the whole pipeline as a method (the
-- rectification alone, steps 1-3 and 5-8, is the correction
-- corrections/rectified_spaattn.lua on any base; this method adds the
-- card's missing steps). Needs a video layout (prob.layout), non-causal.
-- Card steps implemented:
--   0. video tokens reordered along the 3-D Gilbert curve over (T, H, W)
--      (sparselab.layout "gilbert", perm.apply; text untouched), inverse
--      permutation of O and L at the end;
--   1-3. pooled block probabilities with IPAR: P'_IJ = softmax_J(q̄_I·k̄_J /
--      sqrt(d) + log |J|) (score.pooled mean logits, + log of each key
--      block's token count; equal blocks cancel);
--   4. critical blocks per video query block I: P'_I sorted descending, the
--      count(cumsum <= p_remain) + 1 first blocks but at least top_k =
--      floor((1 - drop_rate)·nb); ∪ the 3-D neighbour blocks of I on the
--      curve layout (blocks holding a token within one step in f, y and x of
--      a token of I: the 26-neighbourhood, static per layout); ∪ every block
--      holding text (always); Wan path (first_frame = true): ∪ the square of
--      the first floor(nb / T) blocks in curve order;
--   5-8. GAPR and the rectification on that mask: correct.rectify (O = R·O*
--      + N, O* = attn.block_sparse over the critical blocks);
--   9. text query rows dense: blocks holding text queries keep every key
--      block (then R = 1, N = 0 for them);
--   warm-up: dense first steps through sparselab.steps (M.schedule(T, w):
--      dense_first = w; the reference's Wan T2V setting is 10 processor
--      calls = 5 steps x CFG 2), and dense first layers (M.schedule(T, w,
--      layers), session 3).
-- Text (Hunyuan path, isolate_text = true): IPAR's isolated pooling — text
-- keys are not pooled, each has its own logit, merged into one always-kept
-- entry — by the op ipar.rectify (ref, cpu, CUDA; session 3 replaced the
-- earlier Lua path M.rectify_isolated, kept as an independent reference in
-- tests/lua/test_methods_video.lua, same numbers to 1e-5), used when the
-- layout has text and the video part is whole blocks; otherwise (or
-- isolate_text = false) correct.rectify runs with text keys pooled within
-- their blocks. gapr = false now means "restore every dropped video block"
-- (correct.rectify's reading, the card's naive pooled rectification); the
-- Lua path restored none there. Neighbour blocks are computed from token
-- adjacency, our reading of gilbert_block_neighbor_mapping.
-- Layer-level warm-up (the reference's dense layers 0-1): M.schedule(T, w,
-- 2) on a multi-layer trajectory (sparselab.steps dense_layers; a single
-- problem is one layer, so sl.eval alone never sees it).
-- Reference read (card): BienLuky/Rectified-SpaAttn rectified_hunyuan_attn.py
-- _build_block_index_with_importance_optimized, gapr_mask.py estimate_pr_gain.
-- Read in issue 20, session 5 (rectified_spaattn/gapr_mask.py estimate_pr_gain;
--   rectified_spaattn/rectified_hunyuan_attn.py
--   _build_block_index_with_importance_optimized). Matched: GAPR on raw
--   (unscaled) pooled dot products, err = |mean|δq|·k̄| + |q̄·mean|δk||
--   against gain |q̄·k̄| (the Bq·Bk factor on both sides), video blocks only;
--   IPAR = video block probabilities × block size, renormalised together
--   with the isolated text keys' summed probability (one merged entry);
--   count(sorted cumsum <= prob_threshold) + 1, at least top_k; ∪ the
--   neighbour list; ∪ every text block. Divergences: (a) in the reference the
--   merged text entry sits in the sorted list (its mass counts toward the
--   cumsum and it can take one of the counted slots); here the count runs over
--   the nb pooled blocks (text blocks forced separately); (b) the reference
--   reshapes Q/K into whole 128-token blocks (the video part must be a
--   multiple of the block); (c) torch.sort's tie order (here lower block
--   first); (d) prob_threshold / top_k come from the processor's config
--   (p_remain_rates, select_block_num), not from drop_rate.
local sl = require "sparselab"
local video = require "sparselab.video"

local M = {}
local ID = "rectified_spaattn"

--- Warm-up: dense first `warmup` steps and (session 3) dense layers below
--- `dense_layers` (the reference's Wan setting: layers 0-1) — the latter
--- acts on multi-layer trajectories (steps.replay with {layers = ...}).
function M.schedule(T, warmup, dense_layers)
  return require("sparselab.steps").schedule{steps = T, dense_first = math.min(T, warmup or 0), refresh = 1,
    dense_layers = dense_layers or 0}
end

--- The 26-neighbour blocks of every block (0-based sets) for a token order.
function M.neighbours(lay, order, b)
  local pos = {}
  for p0, t in ipairs(order) do pos[t] = p0 - 1 end
  local nb = (lay.n + b - 1) // b
  local nbr = {}
  for I = 0, nb - 1 do nbr[I] = {[I] = true} end
  for t = 0, lay.n - 1 do
    if not lay:is_text(t) then
      local f, y, x = lay:coord(t)
      local I = pos[t] // b
      for df = -1, 1 do for dy = -1, 1 do for dx = -1, 1 do
        local ff, yy, xx = f + df, y + dy, x + dx
        if ff >= 0 and ff < lay.frames and yy >= 0 and yy < lay.height and xx >= 0 and xx < lay.width then
          nbr[I][pos[lay:index(ff, yy, xx)] // b] = true
        end
      end end end
    end
  end
  return nbr
end

--- P' [H][nb][nb] (1-based) with IPAR's log-size term. (Tests replace it.)
function M.probs(qp, kp, lay, b)
  local s = sl.score.pooled(qp, kp, {bq = b, bk = b, causal = false, softmax = false, pool = 0,
    backend = "cpu"}):totable()
  local n = lay.n
  for _, head in ipairs(s) do
    for _, row in ipairs(head) do
      local m = -math.huge
      for J = 1, #row do
        local size = math.min(b, n - (J - 1) * b)
        row[J] = row[J] + math.log(size)
        if row[J] > m then m = row[J] end
      end
      local z = 0
      for J = 1, #row do row[J] = math.exp(row[J] - m); z = z + row[J] end
      for J = 1, #row do row[J] = row[J] / z end
    end
  end
  return s
end

--- Step 4 for one head: keep[I][J] (1-based).
function M.select(P, p, nb, nbr, text_block, first_sq)
  local top_k = math.floor((1 - p.drop_rate) * nb)
  local keep = {}
  for I = 1, nb do
    local row = {}
    for J = 1, nb do row[J] = 0 end
    if text_block[I - 1] then
      for J = 1, nb do row[J] = 1 end          -- step 9: text query rows dense
    else
      local idx = {}
      for J = 1, nb do idx[J] = J end
      local pr = P[I]
      table.sort(idx, function(a, c) if pr[a] ~= pr[c] then return pr[a] > pr[c] end return a < c end)
      local cum, count = 0, 0
      for _, J in ipairs(idx) do
        cum = cum + pr[J]
        if cum <= p.p_remain then count = count + 1 else break end
      end
      count = math.min(nb, math.max(count + 1, top_k))
      for x = 1, count do row[idx[x]] = 1 end
      if nbr then for J in pairs(nbr[I - 1]) do row[J + 1] = 1 end end
      for J = 0, nb - 1 do if text_block[J] then row[J + 1] = 1 end end
      if first_sq and I <= first_sq then for J = 1, first_sq do row[J] = 1 end end
    end
    keep[I] = row
  end
  return keep
end

-- Attention over the critical-block mask in the permuted order, then the
-- rectification (IPAR with isolated text keys when the layout has text and
-- its video part is whole blocks; otherwise correct.rectify); O and L back
-- in the original order.
local function execute(prob, p, mask, perm)
  local be = prob.backend
  local lay = prob.layout
  local qp, kp, vp = sl.layout.permute(prob.q, perm, be), sl.layout.permute(prob.k, perm, be),
    sl.layout.permute(prob.v, perm, be)
  local o_s, lse = sl.attn.block_sparse(qp, kp, vp, mask, {backend = be})
  local o, restored, isolated = o_s, 0, 0
  if p.rectify then
    if p.isolate_text and lay.text > 0 and lay.video0 % p.block == 0 and lay.n_video % p.block == 0 then
      local _, rs
      o, _, rs = sl.ipar.rectify(qp, kp, vp, mask, o_s, {video0 = lay.video0, n_video = lay.n_video,
        gapr = p.gapr and 1 or 0, backend = be})
      restored = rs:stats() * p.block / (rs:shape()[1] * lay.n)
      isolated = 1
    else
      local args = {causal = false, ipar = 1, gapr = p.gapr and 1 or 0, backend = be}
      local _, rs
      o, _, rs = sl.correct.rectify(qp, kp, vp, mask, o_s, args)
      restored = rs:stats() / rs:numel()
    end
  end
  o, lse = sl.layout.unpermute(o, perm, be), sl.layout.unpermute(lse, perm, be)
  return o, lse, restored, sl.op_flops("attn.block_sparse", qp, kp, vp, mask, {}), isolated
end

local function run(prob, p)
  local lay = video.layout_of(ID, prob)
  local n, b, H = lay.n, p.block, prob.q:shape()[1]
  local nb = (n + b - 1) // b
  local t0 = sl.time()
  local order = lay:order("gilbert")
  local perm = lay:perm_tensor({order})
  local be = prob.backend
  local qp, kp = sl.layout.permute(prob.q, perm, be), sl.layout.permute(prob.k, perm, be)
  local P = M.probs(qp, kp, lay, b)
  local nbr = p.neighbours and M.neighbours(lay, order, b) or nil
  local text_block = {}
  for pos, t in ipairs(order) do if lay:is_text(t) then text_block[(pos - 1) // b] = true end end
  local first_sq = p.first_frame and math.max(1, nb // lay.frames) or nil
  local keeps = {}
  for h = 1, H do keeps[h] = M.select(P[h], p, nb, nbr, text_block, first_sq) end
  local mask = sl.mask.from_blocks(sl.tensor(keeps, "u8"), {n_q = n, n_k = n, bq = b, bk = b, causal = 0})
  local t1 = sl.time()
  local o, lse, restored, flops, isolated = execute(prob, p, mask, perm)
  local t2 = sl.time()
  return {o = o, lse = lse, mask = mask, perm = perm, keeps = keeps, stats = {density = mask:density(false),
    flops = flops, estimate_ms = (t1 - t0) * 1e3, execute_ms = (t2 - t1) * 1e3, rectify_restored_mean = restored,
    text_isolated = isolated}}
end

-- Reuse across denoising steps: the cached critical blocks, rectified on this step's Q/K/V.
local function reuse(prob, p, cache)
  video.layout_of(ID, prob)
  local c = cache.last
  if not (c and c.perm and cache.mask) then sl.fail("%s: no cached critical-block mask in the step state", ID) end
  local o, lse, restored, flops, isolated = execute(prob, p, cache.mask, c.perm)
  return {o = o, lse = lse, mask = cache.mask, perm = c.perm, keeps = c.keeps, stats = {
    density = cache.mask:density(false), flops = flops, rectify_restored_mean = restored, text_isolated = isolated}}
end

M.id = ID
M.card = ID
M.title = "Rectified SpaAttn: Revisiting Attention Sparsity for Efficient Video Generation"
M.family = "video-estimate"
M.phase = "prefill"
M.summary = "Gilbert-ordered blocks, IPAR pooled probabilities, critical blocks (cdf / top-k + 3-D neighbours + text), GAPR rectification."
M.knob = "drop_rate"
M.knob_direction = -1
M.params = {
  drop_rate = {default = 0.75, min = 0, max = 1, doc = "top_k = floor((1 - drop_rate) nb) blocks at least"},
  p_remain = {default = 0.3, min = 0, max = 1, doc = "blocks kept while the sorted P' cumsum stays <= p_remain, + 1"},
  block = {default = 128, min = 1, max = 4096, int = true, doc = "block size B (query and key)"},
  rectify = {default = true, doc = "apply steps 5-8 (false: the critical-block attention alone)"},
  gapr = {default = true, doc = "restore only GAPR-trusted dropped blocks"},
  first_frame = {default = false, doc = "Wan path: the first nb/T blocks see each other"},
  neighbours = {default = true, doc = "add the 3-D neighbour blocks (step 4)"},
  isolate_text = {default = true, doc = "IPAR's isolated text pooling (text keys one logit each; op ipar.rectify)"},
}
M.ops = {"perm.apply", "score.pooled", "attn.block_sparse", "correct.rectify", "ipar.rectify"}
M.checks = {"drop_rate 0 keeps every block: dense", "every video block row keeps >= top_k blocks, its neighbours and the text",
  "text query rows dense", "Gilbert order round trip exact", "a score-blind P' loses fidelity"}
M.needs_layout = true      -- a video layout on the problem (sparselab.layout)
M.noncausal_only = true    -- video attention is bidirectional
M.run = run
M.reuse = reuse

return M
