-- Flash Sparse Attention: More Efficient Natively Trainable Sparse Attention
-- (FSA) — card: fsa.
-- FSA is an executor of NSA's selection branch, not a new selection: the
-- same math as nsa (see nsa.lua, whose variants, weights file, stand-in,
-- params_source and fit this recipe shares), run in KV-block-outer order.
-- Card steps implemented (trainable.fsa):
--   1. inverse index: per (kv head, key block) the (query, slot) pairs that
--      selected it (counting sort over the block lists);
--   2.-3. per (kv head, key block): for each of its queries and every query
--      head of the GQA group the partial (max, sum, O) over the block's keys
--      up to the query (causal trimming in the diagonal block), stored per
--      (query, slot) — no atomics;
--   4. per query: the partials merged through their log-sum-exps; o =
--      g_cmp·o_cmp + g_swa·o_swa (from trainable.nsa with g_slc = 0, which also
--      gives the block lists) + g_slc·O_sel (trainable.fsa, opt.base/opt.gate).
-- Reference: Relaxed-System-Lab/Flash-Sparse-Attention
-- fsa/ops/FSA_topk_sparse_attention.py (build_block_to_token_triton: the
-- inverse index; qk_kernel: per (block, token) row max first; forward_kernel_opt:
-- o_tiles with that max; reduce_kernel: the merge). Divergence: one online
-- pass per (block, query) instead of the reference's separate max pass, and
-- no special storage of block 0; the merged result is the same softmax.
-- The recall (lse) reported is trainable.nsa's, over the union of the
-- selected blocks and the window, the keys this recipe reads.
-- NOT implemented: the backward pass; the fallback to the NSA kernel order for
-- GQA groups >= 8 (a performance choice, outputs equal); timing: this recipe
-- runs the selection attention twice (inside trainable.nsa with gate 0, then
-- in FSA order), so its times say nothing about FSA's speed.
local sl = require "sparselab"
local nsa = require "sparselab.methods.nsa"

local M = {
  id = "fsa",
  card = "fsa",
  title = "Flash Sparse Attention: More Efficient Natively Trainable Sparse Attention",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "NSA's forward with its selected-block attention executed KV-block-outer (inverse index + lse merge).",
  knob = "n",
  params = nsa.params,
  ops = {"trainable.compress", "trainable.nsa", "trainable.fsa"},
  checks = {"output equals nsa (both variants, stand-in and weights)", "equals masked dense / query-outer ref (op tests)",
    "-1 slots ignored, causal trimming in the diagonal block", "score-blind selection loses recall (as nsa)"},
  params_sources = nsa.params_sources,
  fit = nsa.fit,
  fit_doc = nsa.fit_doc,
  fit_data = nsa.fit_data,
  fit_loss_grad = nsa.fit_loss_grad,
}

function M.run(prob, p)
  local base = nsa.run(prob, p, M.id)
  local _, source, op = nsa.setup(prob, p, M.id)
  -- the same gates as nsa.run: recompute them to split off g_slc
  local ws = (p.weights or "") ~= "" and sl.load(p.weights) or {}
  local gc, gs, gw
  if ws.g_cmp then
    gc, gs, gw = ws.g_cmp, ws.g_slc, ws.g_swa
  elseif ws.gate_w then
    gc, gs, gw = nsa.q_gates(prob, ws.gate_w, ws.gate_b)
  elseif ws["gate_mlp.w1"] then
    gc, gs, gw = nsa.mlp_gates(prob, ws)
  else
    gc, gs, gw = nsa.const_gates(prob, 0, 1, 0)
    op.window = 0
  end
  local kc, vc = nsa.compress(prob, ws, op)
  local zero = nsa.const_gates(prob, 0, 0, 0)
  local rest, lse, blocks = nsa.forward(prob, op, kc, vc, gc, zero, gw)
  local args = {bs = op.bs, gate = gs, base = rest, backend = prob.backend}
  local o = sl.trainable.fsa(prob.q, prob.k, prob.v, blocks, args)
  base.stats.flops = (base.stats.flops or 0) + sl.op_flops("trainable.fsa", prob.q, prob.k, prob.v, blocks, args)
  p.params_source = source
  return {o = o, lse = lse, blocks = blocks, params_source = source, stats = base.stats}
end

return M
