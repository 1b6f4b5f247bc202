-- BiFormer: Vision Transformer with Bi-Level Routing Attention — card:
-- biformer.
-- Card steps implemented:
--   1. regions: contiguous runs of `region` tokens (a 2-D image given in
--      region-major order, i.e. the card's 2-D → 1-D region permutation
--      already applied; `grid_h`, `grid_w`, `n_win` describe an image in
--      raster order instead: the recipe then permutes the mask, see below);
--   2. region descriptors q_r, k_r = means of the region's queries / keys;
--   3. region adjacency A = (q_r·scale)·k_rᵀ over ALL channels of all heads
--      (the per-head pooled scores summed over heads: a concatenated-channel
--      dot product; GQA keys repeated), routing I_r = top-k regions per query
--      region (ties: lower region first) — one routing for every head;
--   4. token attention of each query to all tokens of its k routed regions:
--      attn.block_sparse with blocks = regions (non-causal; a causal problem
--      additionally gets the causal mask and routes among visible regions);
--   raster images (grid_h·grid_w = n, n_win regions per side): the region of
--   token (y, x) is (y // (grid_h/n_win), x // (grid_w/n_win)); the region
--   scores come from pool.tokens over the region-major permuted order
--   (gathered in Lua per region — slow beyond small images) and the mask is
--   built on region-major positions, then mapped back with mask:permute.
-- NOT implemented here: the LEPE depthwise-conv term on V is the separate
-- correction `lepe` (compose as "biformer+lepe"); the output projection
-- (model-side); KV downsampling variants; soft routing weights; per-stage
-- top-k schedules (use sl.assign).
-- Reference code (rayleizhu/BiFormer, ops/bra_legacy.py: TopkRouting.forward,
-- KVGather, BiLevelRoutingAttention.forward), read for issue 20: the routing
-- is matched at its defaults (param_routing = False, diff_routing = False,
-- soft_routing = False, kv_downsample_mode = 'identity'): window means of q
-- and k over all qk_dim channels, (q_win·scale)·k_winᵀ with scale =
-- qk_dim^{-1/2}, torch.topk per query window, hard gather of whole windows.
-- Divergences: (a) the token attention — the reference scales q_pix by the
-- same self.scale = qk_dim^{-1/2} (all heads' channels), not head_dim^{-1/2};
-- here the executor is standard per-head attention (1/sqrt(head_dim)) over
-- the routed tokens, so the reference's softmax is flatter by sqrt(heads)
-- (option reference_scale = true runs the executor at the reference's scale);
-- (b) causal problems (the reference is non-causal vision); (c) auto_pad
-- (here grid sides must be divisible by n_win) and torch.topk's tie order.
-- Unknowns chosen: region = 64 tokens and topk = 4 (BiFormer-T stage 2) for
-- sequences; scale 1/sqrt(head_dim·heads) (qk_dim^{-1/2} over the
-- concatenated channels).
-- Memory (issue 19): score.pooled runs on row blocks of regions and the
-- routing is kept as i32 lists (n·topk), so nothing is n² at any n.
local sl = require "sparselab"
local E = require "sparselab.blockest"

-- Region-major permutation of a raster image: perm[i] = raster position of
-- the i-th token in region-major order (0-based).
local function region_perm(p)
  local H, W, S = p.grid_h, p.grid_w, p.n_win
  if H % S ~= 0 or W % S ~= 0 then sl.fail("biformer: grid %dx%d not divisible by n_win %d", H, W, S) end
  local rh, rw = H // S, W // S
  local perm = {}
  for ry = 0, S - 1 do
    for rx = 0, S - 1 do
      for y = 0, rh - 1 do
        for x = 0, rw - 1 do perm[#perm + 1] = (ry * rh + y) * W + rx * rw + x end
      end
    end
  end
  return perm, rh * rw
end

-- x [H, n, d] gathered in the order perm (0-based) — Lua, small images only.
local function gather(x, perm)
  local t = E.heads(x)
  local out = {}
  for h = 1, #t do
    local rows = {}
    for i, src in ipairs(perm) do rows[i] = t[h][src + 1] end
    out[h] = rows
  end
  return sl.tensor(out)
end

local function square(p)
  if p.bq ~= p.bk then sl.fail("biformer: square blocks only (bq = bk), found bq %d, bk %d", p.bq, p.bk) end
  return p.bq
end

local function from_keep(keep, prob, R, causal)
  return sl.mask.from_blocks(keep, {n_q = prob.q:shape()[2], n_k = prob.k:shape()[2], bq = R, bk = R, causal = causal})
end

local M

local function estimate(prob, p)
  local n = prob.q:shape()[2]
  local perm, R = nil, square(p)
  local q, k = prob.q, prob.k
  if p.grid_h > 0 then
    if p.grid_h * p.grid_w ~= n or prob.k:shape()[2] ~= n then
      sl.fail("biformer: grid %dx%d does not match %d tokens", p.grid_h, p.grid_w, n)
    end
    perm, R = region_perm(p)
    q, k = gather(q, perm), gather(k, perm)
  end
  local hq, d = q:shape()[1], q:shape()[3]
  local nqb, nkb = E.blocks(prob, R, R)
  local sargs = {bq = R, bk = R, causal = (prob.causal and not perm) and 1 or 0, pool = 0, softmax = 0,
    scale = 1 / math.sqrt(d * hq), backend = prob.backend}
  -- Row blocks (issue 19): score.pooled runs on about ROW_SCORES region scores
  -- at a time (q rows [r0·R, r1·R) against keys 0 .. the block's last visible
  -- key when causal: the same causal offset, the same region means), one row of
  -- region blocks (all heads) is read at a time, and the routed regions go to
  -- i32 lists [1, nqb, min(topk, nkb)] (sl.mask.block_lists): memory n·topk,
  -- not the [Hq, nqb, nkb] scores and nqb x nkb keep. A causal problem whose
  -- offset n_k - n_q is not a multiple of R would cut a key region at the
  -- prefix's end: it runs in one call.
  local nq, nk = q:shape()[2], k:shape()[2]
  local causal = sargs.causal == 1
  local per = math.max(1, M.ROW_SCORES // math.max(1, hq * nkb))
  if causal and (nk - nq) % R ~= 0 then per = nqb end
  local L = math.min(p.topk, nkb)
  local lists = sl.zeros({1, nqb, L}, "i32")
  for r0 = 0, nqb - 1, per do
    local r1 = math.min(nqb, r0 + per)
    local qr, kr = q, k
    if r0 > 0 or r1 < nqb then
      local i0, i1 = r0 * R, math.min(nq, r1 * R)
      qr = q:narrow(2, i0 + 1, i1 - i0)
      if causal then kr = k:narrow(2, 1, math.min(nk, i1 + nk - nq)) end
    end
    local st = sl.score.pooled(qr, kr, sargs)
    local cols = st:shape()[3]
    local keep = sl.zeros({1, r1 - r0, cols}, "u8")
    for r = r0 + 1, r1 do
      local vis = math.min(cols, (perm and nkb) or E.visible(prob, r - 1, R, R, nkb))
      local view = st:narrow(2, r - r0, 1)
      local s = view:totable()
      view:close() -- a view holds st's buffer until collected
      local a = {}
      for c = 1, vis do
        local x = 0
        for h = 1, hq do x = x + s[h][1][c] end
        a[c] = x
      end
      local order = E.order_desc(a, vis)
      for i = 1, math.min(p.topk, vis) do keep:set(1, r - r0, order[i], 1) end
    end
    sl.mask.block_lists(keep, L, lists, r0 + 1)
    st:close(); keep:close()
  end
  local keep = lists
  local est_flops = sl.op_flops("score.pooled", q, k, sargs) + hq * nqb * nkb
  -- reference_scale: the token attention at the reference's q_pix * qk_dim^{-1/2} (all heads' channels)
  local scale = p.reference_scale and 1 / math.sqrt(d * hq) or nil
  if not perm then
    return from_keep(keep, prob, R, prob.causal), {estimator_flops = est_flops, scale = scale}
  end
  -- built on region-major positions, then mapped back to raster positions
  local m = from_keep(keep, prob, R, false)
  m = m:inverse_permute(perm)
  if prob.causal then m = m * sl.mask.causal() end
  return m, {estimator_flops = est_flops, scale = scale}
end

M = {
  id = "biformer",
  card = "biformer",
  title = "BiFormer: Vision Transformer with Bi-Level Routing Attention",
  family = "block-estimate",
  phase = "prefill",   -- a full-sequence (vision) method: no decode step
  summary = "Region-level routing (mean-pooled regions, top-k regions per query region, shared by heads).",
  knob = "topk",
  knob_direction = 1,
  params = {
    bq = {default = 64, min = 1, max = 4096, int = true, doc = "tokens per region of a sequence (bq = bk)"},
    bk = {default = 64, min = 1, max = 4096, int = true, doc = "tokens per region (bq = bk)"},
    topk = {default = 4, min = 1, int = true, doc = "routed regions per query region"},
    grid_h = {default = 0, min = 0, int = true, doc = "image height (0: a sequence of regions)"},
    grid_w = {default = 0, min = 0, int = true, doc = "image width"},
    n_win = {default = 7, min = 1, int = true, doc = "regions per side of an image"},
    reference_scale = {default = false, doc = "true: token attention scaled by 1/sqrt(heads·head_dim) as the " ..
      "reference's q_pix * self.scale (default: per-head 1/sqrt(head_dim))"},
  },
  ops = {"score.pooled", "attn.block_sparse"},
  checks = {"topk = all regions equals dense", "one routing for every head", "gathered = masked dense"},
  mask = function(prob, p) return (estimate(prob, p)) end,
  run = E.block_run(estimate),
  ROW_SCORES = 1 << 18, -- pooled region scores per score.pooled call (a test sets it small)
}

return M
