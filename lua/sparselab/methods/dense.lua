-- Dense attention (the reference every method is compared with) — no card;
-- the exact softmax attention that FlashAttention computes.
-- Steps: one attn.dense call (causal unless the problem says otherwise).
local sl = require "sparselab"

return {
  id = "dense",
  title = "Dense softmax attention (exact; the FlashAttention computation)",
  card = nil,
  family = "dense",
  phase = "both",
  summary = "Exact attention over every visible key; the baseline of every comparison (density 1).",
  knob = nil,
  params = {},
  ops = {"attn.dense"},
  run = function(prob, p)
    local args = {causal = prob.causal ~= false, backend = prob.backend}
    local o, lse = sl.attn.dense(prob.q, prob.k, prob.v, args)
    return {o = o, lse = lse, stats = {flops = sl.op_flops("attn.dense", prob.q, prob.k, prob.v, args), density = 1.0}}
  end,
}
