-- SSA: Sparse Sparse Attention by Aligning Full and Sparse Attention Outputs
-- in Feature Space — card: ssa.
-- SSA is a training objective; at inference a layer runs either stream.
-- Card steps implemented:
--   sparse stream: NSA's selection branch alone, as FLA's parallel_nsa with
--      g_cmp = 0 and g_swa = 0 (zhenyi4/ssa modeling_llama_nsa.py): mean-pooled
--      compressed keys over blocks of `block`, block importance from the
--      compressed attention summed over the GQA group, the local block forced,
--      top `counts` blocks, selected-block attention times g_slc
--      (trainable.nsa with variant fla, window 0, gates (0, g_slc, 0));
--   full stream: dense causal attention times the same g_slc;
--   the alignment objective, reported per run as stats.align_loss:
--      L = SmoothL1(o_full, sg(o_sparse)) + SmoothL1(sg(o_full), o_sparse)
--      (mean over elements, beta 1, torch's default), and its gradient:
--      the first term's flows only into the full stream, the second's only
--      into the sparse one (M.align_loss_grad, checked against finite
--      differences in tests/lua/test_methods_trainable.lua).
-- `mode` = "sparse" (default) returns the sparse stream, "full" the full one.
-- Parameters from a file (param `weights`): g_slc [Hq, n] in [0, 1] (the
-- per-token gate of the reference's g_proj, captured), checked as nsa's gates.
-- Stand-in without weights (params_source "standin:g_slc=1"): g_slc = 1.
-- Not fitted here: SSA trains the whole model with the alignment loss
-- (no small learned part of its own).
-- Defaults: block 16, counts 16 (card: the 1B config), window 0.
-- NOT implemented: the training loop (random stream choice, x10 weight).
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"
local nsa = require "sparselab.methods.nsa"

local function smoothl1(x)
  local a = math.abs(x)
  return a < 1 and 0.5 * x * x or a - 0.5
end
local function smoothl1_d(x)
  if x > 1 then return 1 elseif x < -1 then return -1 end
  return x
end

local M = {
  id = "ssa",
  card = "ssa",
  title = "SSA: Sparse Sparse Attention by Aligning Full and Sparse Attention Outputs in Feature Space",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "NSA's selection branch alone (FLA form) as the sparse stream; reports the full/sparse alignment loss.",
  knob = "counts",
  params = {
    block = {default = 16, min = 1, max = 65536, int = true, doc = "selection block size (= compression block)"},
    counts = {default = 16, min = 1, int = true, doc = "selected blocks per query and kv head (the local one included)"},
    mode = {default = "sparse", doc = "sparse: the sparse stream's output; full: the gated dense output"},
    weights = {default = "", doc = "safetensors file with g_slc [Hq, n] (empty: g_slc = 1)"},
  },
  ops = {"trainable.compress", "trainable.nsa", "attn.dense"},
  checks = {"alignment loss zero iff the streams agree", "each term's gradient flows into one stream only (finite differences)",
    "counts >= #blocks: sparse equals full", "selection as nsa's fla variant (score-blind check)"},
  params_sources = {"standin:g_slc=1", "sha256:<weights file>"},
  fit_why = "SSA trains the whole model with its alignment loss; there is no small learned part to fit",
}

--- The alignment loss of two output tables (nested [H][T][D]) and its two
--- gradients: d/d o_full of SmoothL1(o_full, sg(o_sparse)) and d/d o_sparse of
--- SmoothL1(sg(o_full), o_sparse), each a mean over the elements.
function M.align_loss_grad(full, sparse)
  local n, loss, gf, gs = 0, 0, {}, {}
  for h = 1, #full do
    gf[h], gs[h] = {}, {}
    for t = 1, #full[h] do
      gf[h][t], gs[h][t] = {}, {}
      for e = 1, #full[h][t] do n = n + 1 end
    end
  end
  for h = 1, #full do
    for t = 1, #full[h] do
      for e = 1, #full[h][t] do
        local d = full[h][t][e] - sparse[h][t][e]
        loss = loss + 2 * smoothl1(d) / n
        gf[h][t][e] = smoothl1_d(d) / n
        gs[h][t][e] = -smoothl1_d(d) / n
      end
    end
  end
  return loss, gf, gs
end

function M.run(prob, p)
  if p.mode ~= "sparse" and p.mode ~= "full" then sl.fail("ssa: mode must be 'sparse' or 'full', found '%s'", tostring(p.mode)) end
  local hq, nq = prob.q:shape()[1], prob.q:shape()[2]
  local gs, source
  if (p.weights or "") ~= "" then
    local ws = T.load_weights("ssa", p.weights, {{name = "g_slc", shape = {hq, nq}, dims = "(query heads, tokens)",
      required = true, range = {0, 1}, range_why = "gates are sigmoid outputs"}})
    gs, source = ws.g_slc, T.file_source(p.weights)
  else
    gs, source = select(2, nsa.const_gates(prob, 0, 1, 0)), "standin:g_slc=1"
  end
  local op = {l = p.block, s = p.block, bs = p.block, n = p.counts, init = 0, ["local"] = 1, window = 0}
  local kc, vc = nsa.compress(prob, {}, op)
  local zero = nsa.const_gates(prob, 0, 0, 0)
  local o_sp, lse_sp, blocks, _, flops = nsa.forward(prob, op, kc, vc, zero, gs, zero)
  local o_d, lse_d = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true, backend = prob.backend})
  -- the full stream gated by g_slc, and the alignment loss (Lua loops over the outputs)
  local G, D, S = E.heads(gs), E.heads(o_d), E.heads(o_sp)
  local full = {}
  for h = 1, hq do
    full[h] = {}
    for t = 1, nq do
      local row, g = {}, G[h][t]
      for e, x in ipairs(D[h][t]) do row[e] = g * x end
      full[h][t] = row
    end
  end
  local sparse = {}
  for h = 1, hq do sparse[h] = S[h] end
  local align = M.align_loss_grad(full, sparse)
  local o_full = sl.tensor(full)
  -- density: the selected tokens over the causal keys
  local nk = prob.k:shape()[2]
  local B = E.heads(blocks)
  local kept, causal = 0, 0
  for kv = 1, #B do
    for t = 1, nq do
      local pos = nk - nq + t - 1
      for _, j in ipairs(B[kv][t]) do
        if j >= 0 then kept = kept + math.min((j + 1) * p.block, pos + 1) - j * p.block end
      end
      causal = causal + pos + 1
    end
  end
  p.params_source = source
  local full_mode = p.mode == "full"
  return {o = full_mode and o_full or o_sp, lse = full_mode and lse_d or lse_sp, o_full = o_full, o_sparse = o_sp,
    params_source = source,
    stats = {flops = full_mode and sl.op_flops("attn.dense", prob.q, prob.k, prob.v, {causal = true}) or flops,
      density = full_mode and 1.0 or kept / causal, align_loss = align}}
end

return M
