-- Threshold Relative Attention (TRA; Opper et al., arXiv 2503.23174) — card:
-- tra.
-- Card steps implemented (attn.tra, one op):
--   1. parameter-free QK RMSNorm (eps 1e-6);
--   2-3. S = q·k/√d_h, causal; kept set K_i = {j <= i : S_ij > 0} (ReLU
--        threshold fixed at 0);
--   5-6. contextual distance c_ij = #{l in K_i : j <= l <= i} (a reverse
--        cumulative count of kept keys), A_ij = S_ij + δ_i·c_ij on K_i;
--   7-8. softmax over K_i, zero row when K_i is empty; O = P·V.
-- Step 4 (the query gate δ_i = log σ(w_δ·x_i + b_δ), a learned linear map of
--   the layer input) needs the trained model's x and w_δ; a problem has only
--   Q/K/V, so δ is a stand-in: δ_i^h = log σ(gate_gain·(q_i·u_h)/√d +
--   gate_bias) with u_h seeded normal (gate_gain = 0: one constant δ =
--   log σ(gate_bias) for every query). No position encoding is used, as in the
--   paper (a TinyStories model has RoPE already applied in its Q/K).
-- Reference: the authors' notebook (abhishekpanigrahi1996/MOSS
--   submissions/submission-96/TRA_FFL.ipynb, TRA.forward) was located but not
--   read in full (a 160 kB notebook); the card's step list is followed: the -1e11
--   masking constant is realised as exclusion (weight exactly 0).
-- TRA is a trained architecture: on softmax-trained Q/K/V this recipe reports
--   kernel-level behaviour only (density = |K_i| / visible keys, rel_l2 vs
--   softmax dense, cost). The logits differ from dense's, so recall through L
--   does not apply and no lse is returned.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local function deltas(prob, p)
  local qs = prob.q:shape()
  local hq, nq, d = qs[1], qs[2], qs[3]
  local out = {}
  local q = p.gate_gain ~= 0 and prob.q:totable() or nil
  local u = p.gate_gain ~= 0 and sl.randn({hq, d}, {seed = p.seed}):totable() or nil
  for h = 1, hq do
    out[h] = {}
    for i = 1, nq do
      local z = p.gate_bias
      if q then
        local s = 0
        for c = 1, d do s = s + q[h][i][c] * u[h][c] end
        z = z + p.gate_gain * s / math.sqrt(d)
      end
      -- log σ(z), stable for large |z|
      out[h][i] = z >= 0 and -math.log(1 + math.exp(-z)) or z - math.log(1 + math.exp(z))
    end
  end
  return sl.tensor(out)
end

local function run(prob, p)
  local delta = deltas(prob, p)
  local t0 = sl.time()
  local args = {causal = prob.causal and 1 or 0, qk_norm = p.qk_norm, backend = prob.backend}
  local o, count = sl.attn.tra(prob.q, prob.k, prob.v, delta, args)
  local ms = (sl.time() - t0) * 1e3
  local kept = 0
  for _, row in ipairs(E.heads(count)) do for _, c in ipairs(row) do kept = kept + c end end
  local d, pairs = prob.q:shape()[3], E.pairs(prob)
  return {o = o, lse = nil, count = count, delta = delta, stats = {
    flops = 2 * d * pairs + 2 * d * kept, density = pairs > 0 and kept / pairs or 0,
    estimate_ms = 0, execute_ms = ms}}
end

return {
  id = "tra",
  card = "tra",
  title = "Threshold Relative Attention (selective sparsity + contextual distance)",
  family = "non-softmax",
  phase = "both",
  summary = "Softmax over the keys with positive QK-normed score, biased by δ times the number of kept keys to the query; needs a model trained with it.",
  knob = nil,
  params = {
    qk_norm = {default = 1, min = 0, max = 1, int = true, doc = "parameter-free RMSNorm of q and k (the card's QK-norm)"},
    gate_bias = {default = -2, min = -1e3, max = 1e3, doc = "stand-in gate: δ = log σ(gate_gain·q·u/√d + gate_bias)"},
    gate_gain = {default = 0, min = -1e3, max = 1e3, doc = "stand-in gate: query dependence (0: constant δ)"},
    seed = {default = 1, min = 0, int = true, doc = "seed of the stand-in gate direction u"},
  },
  ops = {"attn.tra"},
  checks = {"all S > 0 and δ = 0 is softmax over the causal keys (QK-normed)", "empty kept set gives a zero row",
    "inserting irrelevant keys leaves the output unchanged", "c_ij counts kept keys only (float64 reference)"},
  fidelity = "rel_l2",
  run = run,
}
