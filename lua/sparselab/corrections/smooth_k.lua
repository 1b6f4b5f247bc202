-- Key smoothing of SpargeAttn (SpargeAttention: Accurate and Training-free
-- Sparse Attention) and SALE — no card of its own (cards sparge_attn, sale).
-- Steps: before the base method runs, K is replaced by K - mean_tokens(K)
-- per kv head (correct.smooth_k), so that its estimator (pooled or
-- quantised scores, self-similarity) sees centred keys; softmax is
-- invariant to the shift, so O is unchanged, and after the run L is moved
-- back to the original keys (L + scale·q_i·k̄). A static-pattern base is
-- therefore unaffected (up to rounding); a base whose mask depends on the
-- scores is the point.
local sl = require "sparselab"

return {
  id = "smooth_k",
  card = nil,
  title = "Key smoothing (SpargeAttn / SALE): K minus its mean over tokens",
  summary = "the base method runs on mean-centred keys; its L is shifted back to the original keys",
  params = {},
  ops = {"correct.smooth_k"},
  checks = {"full mask: O and L equal dense", "a static pattern's output is unchanged"},
  before = function(prob, p)
    local ks = sl.correct.smooth_k(prob.q, prob.k, {backend = prob.backend})
    local prob2 = {}
    for key, val in pairs(prob) do
      if key ~= "_dense" then prob2[key] = val end
    end
    prob2.k = ks
    return prob2
  end,
  after = function(prob, p, base)
    local args = {lse = base.lse, backend = prob.backend}
    local _, lse = sl.correct.smooth_k(prob.q, prob.k, args)
    -- the op runs twice (centre K before, shift L after)
    local flops = 2 * sl.op_flops("correct.smooth_k", prob.q, prob.k, args)
    return {o = base.o, lse = lse, stats = {correction_flops = flops}}
  end,
}
