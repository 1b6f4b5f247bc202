-- RainFusion: Adaptive Video Generation Acceleration via Multi-Dimensional
-- Visual Redundancy — card: rainfusion. Needs a video layout with the text
-- tokens last (prob.layout) and a non-causal problem.
-- Card steps implemented:
--   1. three head patterns on the F x H x W grid (neighborhood patterns,
--      token exact), each with the text rows and columns on:
--      spatial  = every token of the cf = max(1, round(bw·F)) frames around
--                 the query's frame (kernel {cf, H, W}, shifted inside the
--                 video at its ends, NATTEN's rule);
--      temporal = the kh x kw positions around the query's (y, x) in every
--                 frame, kh = round(sqrt(bw)·H), kw = round(sqrt(bw)·W)
--                 (kernel {F, kh, kw}: about bw of the positions);
--      textural = K/V subsampled on a checkerboard: keys at (y, x) with
--                 y mod tau = x mod tau (the union over phases k of the
--                 card's Eq. 4), seen by every query (1/tau of the keys);
--   2. ARM per head: sampled queries ("local": `rows` queries of the FIRST
--      frame, the better sampling in the paper's ablation; "global": every
--      omega-th video token) against ALL keys; R'(M) = the attention mass
--      inside M per sampled row (exp(L_M - L) from attn.token_sparse over
--      the row's kept keys and attn.rows), averaged over the rows (the
--      card's unknown "reduction to a scalar": the mean); temporal if
--      R'(temporal) >= alpha, else spatial if R'(spatial) >= alpha, else
--      textural (temporal first, as the card says);
--   3. one block-sparse pass with the per-head masks (sl.mask.assign); the
--      dense warm-up (first 10% of steps) is a sparselab.steps schedule;
--   4. RainFusion+ (plus = true): per head the smallest bandwidth of
--      {0.125, 0.25, 0.5} whose sampled recall reaches 0.9 for the chosen
--      kind (0.5 when none does).
-- Unknowns chosen: alpha = 0.8 (card: unknown), omega = 16, the scalar is
-- the mean over sampled rows. No public code for v1 (card).
local sl = require "sparselab"
local video = require "sparselab.video"

local M = {}

M.CODES = {spatial = "sp", temporal = "tp", textural = "tx"}

local function round(x) return math.floor(x + 0.5) end

--- Kernel sizes {frames, rows, columns} of the spatial and temporal
--- patterns at bandwidth bw.
function M.kernels(lay, bw)
  local cf = math.max(1, math.min(lay.frames, round(bw * lay.frames)))
  local kh = math.max(1, math.min(lay.height, round(math.sqrt(bw) * lay.height)))
  local kw = math.max(1, math.min(lay.width, round(math.sqrt(bw) * lay.width)))
  return {cf, lay.height, lay.width}, {lay.frames, kh, kw}
end

-- NATTEN's non-causal window along one dimension of size X for kernel k:
-- the keys [c - lf, c + rt] around x, shifted inside [0, X).
local function window(x, k, X)
  local lf = k // 2
  local rt = k - 1 - lf
  local c = math.min(math.max(x, lf), X - 1 - rt)
  return c - lf, c + rt
end

--- The kept keys (0-based, sorted) of video query t under a neighborhood
--- kernel (written from the rule in sparselab.h), plus the text keys.
function M.neighborhood_keys(lay, t, kernel)
  local f, y, x = lay:coord(t)
  local f0, f1 = window(f, kernel[1], lay.frames)
  local y0, y1 = window(y, kernel[2], lay.height)
  local x0, x1 = window(x, kernel[3], lay.width)
  local out = {}
  for ff = f0, f1 do for yy = y0, y1 do for xx = x0, x1 do out[#out + 1] = lay:index(ff, yy, xx) end end end
  for j = lay.n_video, lay.n - 1 do out[#out + 1] = j end
  table.sort(out)
  return out
end

--- The checkerboard key list of the textural pattern.
function M.textural_keys(lay, tau)
  local out = {}
  for f = 0, lay.frames - 1 do
    for y = 0, lay.height - 1 do
      for x = 0, lay.width - 1 do
        if y % tau == x % tau then out[#out + 1] = lay:index(f, y, x) end
      end
    end
  end
  return out
end

--- The pattern of one head kind ("spatial", "temporal", "textural").
function M.pattern(lay, kind, bw, tau)
  local grid = {lay.frames, lay.height, lay.width}
  local ks, kt = M.kernels(lay, bw)
  local pat
  if kind == "spatial" then pat = sl.mask.neighborhood{grid = grid, kernel = ks, causal = false}
  elseif kind == "temporal" then pat = sl.mask.neighborhood{grid = grid, kernel = kt, causal = false}
  else pat = sl.mask.dense_cols{cols = M.textural_keys(lay, tau), causal = false} end
  local text = video.text_patterns(lay)
  return text and pat + text or pat
end

--- The sampled query rows of ARM.
function M.sample_rows(lay, p)
  if p.sampling == "global" then
    local rows = {}
    for t = 0, lay.n_video - 1, p.omega do rows[#rows + 1] = t end
    return rows
  end
  local S = lay.height * lay.width
  return video.sample(0, S, p.rows, p.seed)
end

--- ARM: per head, the sampled recall of a candidate kernel. (Tests replace
--- it with a score-blind one.)
function M.recalls(prob, lay, rows, kernel, ref_lse)
  local qs = video.gather_rows(prob.q, rows)
  local lists = {}
  for r, t in ipairs(rows) do lists[r] = M.neighborhood_keys(lay, t, kernel) end
  local _, lse = video.list_rows(qs, prob.k, prob.v, lists, prob.backend)
  local a, b = lse:totable(), ref_lse:totable()
  local out = {}
  for h = 1, #a do
    local s = 0
    for r = 1, #rows do s = s + math.exp(a[h][r] - b[h][r]) end
    out[h] = s / #rows
  end
  return out
end

--- Step 2 (and 4): per head {kind, bw}.
function M.classify(prob, lay, p)
  local rows = M.sample_rows(lay, p)
  local _, ref_lse = video.dense_rows(prob, rows)
  local H = prob.q:shape()[1]
  local cache = {}
  local function rec(bw, which)
    local key = which .. bw
    if not cache[key] then
      local ks, kt = M.kernels(lay, bw)
      cache[key] = M.recalls(prob, lay, rows, which == "temporal" and kt or ks, ref_lse)
    end
    return cache[key]
  end
  local heads = {}
  for h = 1, H do
    local kind = "textural"
    if rec(p.bandwidth, "temporal")[h] >= p.alpha then kind = "temporal"
    elseif rec(p.bandwidth, "spatial")[h] >= p.alpha then kind = "spatial" end
    local bw = p.bandwidth
    if p.plus and kind ~= "textural" then
      bw = 0.5
      for _, b in ipairs{0.125, 0.25, 0.5} do
        if rec(b, kind)[h] >= 0.9 then bw = b break end
      end
    end
    heads[h] = {kind = kind, bw = bw}
  end
  return heads
end

local function run(prob, p)
  local lay = video.layout_of("rainfusion", prob)
  if lay.text_first and lay.text > 0 then
    sl.fail("rainfusion: expects the text tokens after the video tokens (text_first layouts are not supported)")
  end
  local t0 = sl.time()
  local heads = M.classify(prob, lay, p)
  local items, kinds = {}, {}
  for h, x in ipairs(heads) do
    items[h] = M.pattern(lay, x.kind, x.bw, p.tau)
    kinds[h] = M.CODES[x.kind] .. (p.plus and ("@" .. x.bw) or "")
  end
  local n = lay.n
  local mask = sl.mask.assign(items):materialize{n_q = n, n_k = n, bq = p.block, bk = p.block, n_heads = #items}
  local t1 = sl.time()
  local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, mask, {backend = prob.backend})
  local t2 = sl.time()
  return {o = o, lse = lse, mask = mask, heads = heads, stats = {density = mask:density(false),
    flops = sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, mask, {}),
    estimate_ms = (t1 - t0) * 1e3, execute_ms = (t2 - t1) * 1e3, head_kinds = table.concat(kinds, ",")}}
end

M.id = "rainfusion"
M.card = "rainfusion"
M.title = "RainFusion: Adaptive Video Generation Acceleration via Multi-Dimensional Visual Redundancy"
M.family = "video-estimate"
M.phase = "prefill"
M.summary = "Per-head spatial / temporal / textural pattern chosen online by sampled recall (ARM), temporal tested first."
M.knob = "bandwidth"
M.params = {
  bandwidth = {default = 0.5, min = 0, max = 1, doc = "fraction of frames (spatial) or positions (temporal) kept"},
  alpha = {default = 0.8, min = 0, max = 1, doc = "recall a pattern needs on the sampled rows (card: unknown)"},
  tau = {default = 2, min = 1, max = 1 << 20, int = true, doc = "checkerboard stride of the textural pattern"},
  rows = {default = 32, min = 1, max = 1 << 20, int = true, doc = "sampled first-frame queries (local sampling)"},
  sampling = {default = "local", doc = "local (first frame) or global (every omega-th token)"},
  omega = {default = 16, min = 1, max = 1 << 20, int = true, doc = "stride of global sampling (card: unknown)"},
  seed = {default = 1, min = 0, max = 1 << 30, int = true, doc = "seed of the sampled rows"},
  plus = {default = false, doc = "RainFusion+: the smallest bandwidth of {0.125, 0.25, 0.5} with recall >= 0.9"},
  block = {default = 64, min = 1, max = 4096, int = true, doc = "executor block size"},
}
M.ops = {"attn.rows", "attn.token_sparse", "gather.rows", "attn.block_sparse"}
M.checks = {"bandwidth 1 equals dense; textural with tau = 1 equals dense", "ARM picks temporal on a planted temporal head",
  "sampled recall in [0, 1], 1 for the full mask", "temporal is tested before spatial",
  "a score-blind ARM misses planted heads"}
M.needs_layout = true      -- a video layout on the problem (sparselab.layout)
M.noncausal_only = true    -- video attention is bidirectional
M.run = run

return M
