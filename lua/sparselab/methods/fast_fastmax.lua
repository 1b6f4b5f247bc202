-- Fast Fastmax / Fastmax: linear-time polynomial attention — card:
-- fast_fastmax.
-- Card steps implemented:
--   1. normalisation (reference normalize = 1): q ← lim·q / max_i‖q_i‖ per
--      query head, k likewise per kv head (lim = 1), temperature 1;
--   2. weights f(x) = a0 + a1 x + a2 x² (p = 2; p = 1 drops x²), defaults
--      1, 1, 1/2, row-normalised: o_i = Σ f v / Σ f (causal optional);
--   3. the factorised evaluation with running key states (Σ v, Σ k, Σ k vᵀ,
--      Σ (k⊗k) vᵀ over symmetric pairs): the cpu kernel of attn.fastmax, O(n d³)
--      for p = 2 (O(n d²) for p = 1), no n² matrix; ref and CUDA evaluate the
--      explicit f(QKᵀ) rows (the card's dense reference), and the op tests check
--      factorised == explicit.
-- Not here: dropout on the quadratic features, the relative positional
--   encoding of the reference CUDA kernel (zero RPE = off), training. For p = 2
--   and head_dim > 64 the cpu kernel falls back to explicit rows (the d³ state
--   would be too large per thread).
-- Reference: the authors' FAST code (fastmax_function /
--   FASTMultiHeadAttention_Function; repository not located, not read):
--   defaults follow the card. Fastmax is a trained architecture and not sparse
--   (density 1): on softmax-trained Q/K/V this is the "dense linear-time" end
--   of comparisons, kernel-level behaviour only. No log-sum-exp: recall does
--   not apply; rel_l2 against softmax dense is recorded.
local sl = require "sparselab"

local function run(prob, p)
  local args = {causal = prob.causal and 1 or 0, p = p.p, a0 = p.a0, a1 = p.a1, a2 = p.a2,
    normalize = p.normalize, lim = p.lim, backend = prob.backend}
  local t0 = sl.time()
  local o = sl.attn.fastmax(prob.q, prob.k, prob.v, args)
  local ms = (sl.time() - t0) * 1e3
  return {o = o, lse = nil, stats = {flops = sl.op_flops("attn.fastmax", prob.q, prob.k, prob.v, args), density = 1.0,
    estimate_ms = 0, execute_ms = ms}}
end

return {
  id = "fast_fastmax",
  card = "fast_fastmax",
  title = "Fast Fastmax: linear-time polynomial (Taylor) attention",
  family = "non-softmax",
  phase = "both",
  summary = "exp(q·k) replaced by 1 + x + x²/2 of max-norm-scaled q·k, row-normalised; factorised in linear time; dense (no sparsity).",
  knob = nil,
  params = {
    p = {default = 2, min = 1, max = 2, int = true, doc = "polynomial degree (1 drops x²)"},
    a0 = {default = 1, min = -1e6, max = 1e6, doc = "constant coefficient"},
    a1 = {default = 1, min = -1e6, max = 1e6, doc = "linear coefficient"},
    a2 = {default = 0.5, min = -1e6, max = 1e6, doc = "quadratic coefficient"},
    normalize = {default = 1, min = 0, max = 1, int = true, doc = "max-norm scaling of q and k (reference normalize = 1)"},
    lim = {default = 1, min = 1e-6, max = 1e6, doc = "the norm bound of the scaling"},
  },
  ops = {"attn.fastmax"},
  checks = {"factorised == explicit row-normalised f(QKᵀ)V (causal and not)", "all weights > 0",
    "p = 1 with |q||k| < 1 positive", "density 1 (not sparse)"},
  fidelity = "rel_l2",
  run = run,
}
