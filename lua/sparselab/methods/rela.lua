-- Sparse Attention with Linear Units (ReLA, Zhang, Titov, Sennrich 2021) —
-- card: rela.
-- Card steps implemented:
--   1-3. z = q·k/√d_h, masked keys weight exactly 0 (the reference multiplies
--        the logits by the 0/1 mask before the ReLU: the same zeros), α = ReLU(z)
--        unnormalised: attn.relu(power = 1, bias = 0, norm = 0);
--   4-5. per-head outputs concatenated and stabilised by the gated RMSNorm
--        y = g ⊙ u/rms(u) ⊙ σ(w ⊙ u) over the concatenated heads of each token
--        (norm.rms_gated; reference bzhangGo/zero modules/rela.py
--        gated_rms_norm, "post" scope, eps = float32 epsilon); stabilise =
--        "rms" gives ReLA-i's plain RMSNorm, "none" the raw ReLU output.
-- Not here: the output projection W_o (step 6, outside attention), training.
-- Readings chosen: g and w are learned in the paper (g init 1, w the
--   framework's default initialiser); with no ReLA-trained model they are 1
--   here (option gate_w scales w). The method needs a model trained with ReLA:
--   on TinyStories Q/K/V (softmax-trained) this recipe reports kernel-level
--   behaviour only — sparsity (density = fraction of nonzero weights), output
--   error against softmax dense (rel_l2, cosine), cost. There is no
--   log-sum-exp: recall through L does not apply and is not recorded.
-- Cost: the dense score pass (2·d per visible pair) plus P·V over the nonzero
--   weights only (2·d each), and the norm.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local function run(prob, p)
  local t0 = sl.time()
  local o, count = sl.attn.relu(prob.q, prob.k, prob.v, {causal = prob.causal and 1 or 0, power = 1, bias = 0, norm = 0,
    backend = prob.backend})
  local y = o
  if p.stabilise ~= "none" then
    if p.stabilise ~= "gated" and p.stabilise ~= "rms" then
      sl.fail("rela: stabilise must be 'gated', 'rms' or 'none', found '%s'", tostring(p.stabilise))
    end
    local args = {gate = p.stabilise == "gated" and 1 or 0, backend = prob.backend}
    if p.gate_w ~= 1 then
      local hd = prob.q:shape()[1] * prob.q:shape()[3]
      local w = {}
      for i = 1, hd do w[i] = p.gate_w end
      args.w = sl.tensor(w)
    end
    y = sl.norm.rms_gated(o, args)
  end
  local ms = (sl.time() - t0) * 1e3
  local kept = 0
  for _, row in ipairs(E.heads(count)) do for _, c in ipairs(row) do kept = kept + c end end
  local d, pairs = prob.q:shape()[3], E.pairs(prob)
  local n_el = prob.q:shape()[1] * prob.q:shape()[2] * d
  return {o = y, lse = nil, count = count, stats = {
    flops = 2 * d * pairs + 2 * d * kept + (p.stabilise ~= "none" and 8 * n_el or 0),
    density = pairs > 0 and kept / pairs or 0, estimate_ms = 0, execute_ms = ms}}
end

return {
  id = "rela",
  card = "rela",
  title = "Sparse Attention with Linear Units (ReLA)",
  family = "non-softmax",
  phase = "both",
  summary = "ReLU(q·k/√d) weights, unnormalised (exact zeros), then a gated RMSNorm over the concatenated heads; needs a model trained with it.",
  knob = nil,
  params = {
    stabilise = {default = "gated", doc = "'gated' (ReLA-g, reference), 'rms' (ReLA-i: plain RMSNorm) or 'none' (raw ReLU output)"},
    gate_w = {default = 1, min = -1e6, max = 1e6, doc = "every entry of the gate vector w (learned in the paper; 1 untrained)"},
  },
  ops = {"attn.relu", "norm.rms_gated"},
  checks = {"attn.relu matches an independent float64 ReLA (multiplicative 0/1 mask)",
    "a row with all z <= 0 gives 0 (before and after the norm)", "RMSNorm scale invariance (scaling V)",
    "density = fraction of nonzero weights, below entmax-1.5's on the same scores", "multiplicative masking = exclusion"},
  fidelity = "rel_l2",
  run = run,
}
