-- Localist LLMs — A Mathematical Framework for Dynamic Locality Control —
-- card: localist_llm (a brief card: abstract and summaries only, no code).
-- Card steps implemented, as readings (the card marks the mechanisms unknown):
--   1. semantic blocks: a segment id per token from a file, or the stand-in's
--      fixed blocks of `block` consecutive tokens;
--   2. the group-sparsity penalty λ·Σ_b ‖α_{i,b}‖₂ on a query's attention
--      weights α_i, applied at inference as the locality dial through its
--      proximal operator (our reading of "the dial can be changed at
--      inference"; the card: mechanism unknown): α_{i,b} ← α_{i,b} ·
--      max(0, 1 − λ / ‖α_{i,b}‖₂) (block soft-thresholding), then
--      renormalised to sum 1; λ = 0 is plain attention; a larger λ drops the
--      blocks of small norm and concentrates the row on few blocks; a row
--      whose every block is dropped keeps its block of largest norm (the
--      prox would give all zeros, which has no normalisation);
--   3. anchor design and rule injection: unknown, NOT implemented;
--   4. the metric: per row the block entropy −Σ_b m_b log m_b of the block
--      masses m_b = Σ_{j in b} α_ij (0 when the row lies in one block);
--      stats.block_entropy (after the dial) and stats.dense_block_entropy.
-- The forward is a float64 Lua row loop over the exact attention weights
--   (O(n²·D) time, O(n) memory per row): the card has no kernel and the
--   method reads the exact weights by definition (the penalty acts on them).
-- Reference: none public (arXiv abstract only).
-- Parameters from a file (param `weights`): segment_ids [n] (integers >= 0,
--   as an i32 / i64 tensor or a float one; tokens with the same id form one
--   block, contiguous or not).
-- Stand-in without a file: blocks of `block` consecutive tokens. Every
--   params_source starts with "oracle:exact_weights|" (then
--   "standin:fixed_blocks(B)" or the file's sha256): the dial acts on the
--   exact attention weights, so the method reads the exact map — its density
--   saves no work here and it is not a like-for-like rival of estimators.
-- Fitting: nothing to fit — λ is a dial; the penalty trains the model itself
--   (`fit-params localist_llm` says so).
-- Density: keys with nonzero weight after the dial over causal keys.
-- NOT implemented: training with the penalty, anchors, rule injection, decode.
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local dims = T.dims

local M = {
  id = "localist_llm",
  card = "localist_llm",
  title = "Localist LLMs: a locality dial via group-sparse attention",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "Block soft-thresholding (group-lasso prox) of the attention weights over semantic blocks; λ = 0 is dense.",
  knob = "lambda",
  knob_direction = -1, -- a larger dial is sparser
  params = {
    lambda = {default = 0.05, min = 0, doc = "locality dial λ (0: plain attention)"},
    block = {default = 16, min = 1, int = true, doc = "tokens per block of the stand-in segmentation"},
    weights = {default = "", doc = "safetensors file with segment_ids [n] (empty: fixed blocks)"},
  },
  ops = {},
  -- no op: the forward is a float64 Lua loop on the host whatever backend is
  -- asked, so only the host backends are listed (not cuda: nothing runs there)
  backends = {"ref", "cpu"},
  checks = {"λ = 0 equals dense", "block entropy 0 when a row lies in one block", "entropy falls as λ grows",
    "group norms vs score-blind ones: recall check", "bad weight files: one-line errors"},
  params_sources = {"oracle:exact_weights|standin:fixed_blocks(<B>)", "oracle:exact_weights|sha256:<weights file>"},
  fit_why = "λ is an inference dial and the group penalty trains the whole model; there is no small learned part",
}

--- The block entropy of a weight row w[1..m] over segment ids seg (0-based ids).
function M.block_entropy(w, seg)
  local mass = {}
  for j = 1, #w do mass[seg[j]] = (mass[seg[j]] or 0) + w[j] end
  local h = 0
  for _, m in pairs(mass) do if m > 0 then h = h - m * math.log(m) end end
  return h
end

function M.segments(prob, p)
  local _, n = dims(prob)
  if (p.weights or "") == "" then
    local seg = {}
    for j = 1, n do seg[j] = (j - 1) // p.block end
    return seg, string.format("oracle:exact_weights|standin:fixed_blocks(%d)", p.block)
  end
  local ws = T.load_weights("localist_llm", p.weights, {{name = "segment_ids", shape = {n}, dims = "(tokens)", required = true,
    int = true}})
  local seg = ws.segment_ids:totable()
  for j = 1, n do
    if seg[j] < 0 or seg[j] ~= math.floor(seg[j]) then
      sl.fail("localist_llm: weights %s: tensor 'segment_ids' holds %g at token %d; expected integers >= 0", p.weights, seg[j], j - 1)
    end
  end
  return seg, "oracle:exact_weights|" .. T.file_source(p.weights)
end

--- The forward: o (Lua [Hq][n][D]), lse of the kept keys, kept count and
--- the mean block entropies. norms(h, t, norm) may replace the group norms
--- (the tests' score-blind check).
function M.forward(prob, p, seg, norms)
  local hq, n, d, hkv = dims(prob)
  local g = hq // hkv
  local Q, K, V = E.heads(prob.q), E.heads(prob.k), E.heads(prob.v)
  local scale = 1 / math.sqrt(d)
  local O, L, kept, ent, ent0 = {}, {}, 0, 0, 0
  for h = 1, hq do
    local kh, vh = K[(h - 1) // g + 1], V[(h - 1) // g + 1]
    O[h], L[h] = {}, {}
    for t = 1, n do
      local qt, s, mx = Q[h][t], {}, -math.huge
      for j = 1, t do
        local x, kj = 0, kh[j]
        for e = 1, d do x = x + qt[e] * kj[e] end
        s[j] = x * scale
        if s[j] > mx then mx = s[j] end
      end
      local z = 0
      for j = 1, t do s[j] = math.exp(s[j] - mx); z = z + s[j] end
      local a = {}
      for j = 1, t do a[j] = s[j] / z end
      ent0 = ent0 + M.block_entropy(a, seg)
      local sq = {}
      for j = 1, t do sq[seg[j]] = (sq[seg[j]] or 0) + a[j] * a[j] end
      local norm, factor, best, bestn = {}, {}, nil, -1
      for b, v in pairs(sq) do
        norm[b] = math.sqrt(v)
        if norms then norm[b] = norms(h, t, b, norm[b]) end
        if norm[b] > bestn or (norm[b] == bestn and b < best) then best, bestn = b, norm[b] end
      end
      local any = false
      for b, nb in pairs(norm) do
        factor[b] = nb > 0 and math.max(0, 1 - p.lambda / nb) or 0
        if factor[b] > 0 then any = true end
      end
      if not any then factor[best] = 1 end
      local w, tot = {}, 0
      for j = 1, t do w[j] = a[j] * factor[seg[j]]; tot = tot + w[j] end
      local acc = {}
      for e = 1, d do acc[e] = 0 end
      local zk = 0
      for j = 1, t do
        if w[j] > 0 then
          w[j] = w[j] / tot
          kept = kept + 1
          zk = zk + s[j]
          local vj = vh[j]
          for e = 1, d do acc[e] = acc[e] + w[j] * vj[e] end
        else
          w[j] = 0
        end
      end
      ent = ent + M.block_entropy(w, seg)
      O[h][t], L[h][t] = acc, mx + math.log(zk)
    end
  end
  return O, L, kept, ent / (hq * n), ent0 / (hq * n)
end

function M.run(prob, p)
  local hq, n, d = dims(prob)
  local seg, source = M.segments(prob, p)
  local O, L, kept, ent, ent0 = M.forward(prob, p, seg)
  p.params_source = source
  return {o = sl.tensor(O), lse = sl.tensor(L), params_source = source,
    stats = {flops = 4 * hq * d * n * (n + 1) / 2, density = kept / (hq * n * (n + 1) / 2), block_entropy = ent,
      dense_block_entropy = ent0}}
end

return M
