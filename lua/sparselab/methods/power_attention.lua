-- PowerAttention: Exponentially Scaling of Receptive Fields for Effective
-- Sparse Attention — card: power_attention.
-- Card steps implemented:
--   1/2. block form (token form with block = 1): key block c visible to query
--      block r iff Δ = r - c is 0 or a power of two, united with the
--      `window` most recent blocks (Δ < window) and `sink` sink blocks
--      (c < sink), ∩ causal (token-causal inside the diagonal block);
--   3. executor: attn.block_sparse.
-- Not here: the hybrid layer schedule (step 4; use sl.assign.layers) and the
-- reachability analysis metric (tested on the mask only).
-- Unknowns chosen: block 256, window 5 blocks, sink 1 block (the card's
-- secondary digest; public-code defaults unknown).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function mask_for(prob, p)
  local pat = sl.mask.power{block = p.block}
  if p.window > 0 then pat = pat + sl.mask.window{w = p.window, block = p.block} end
  if p.sink > 0 then pat = pat + sl.mask.sink{s = p.sink, block = p.block} end
  return recipe.materialize(pat, prob, p)
end

return {
  id = "power_attention",
  card = "power_attention",
  title = "PowerAttention: Exponentially Scaling of Receptive Fields for Effective Sparse Attention",
  family = "static-pattern",
  phase = "both",
  causal_only = true,
  summary = "Key blocks at power-of-two block distances, plus local window blocks and a sink block.",
  knob = "window",
  params = recipe.block_params{
    window = {default = 5, min = 0, int = true, doc = "most recent blocks kept (including the diagonal)"},
    block = {default = 256, min = 1, int = true, doc = "tokens per pattern block (1: the token form)"},
    sink = {default = 1, min = 0, int = true, doc = "sink blocks at the start"},
  },
  ops = {"attn.block_sparse"},
  checks = {"output and density equal an independent block-level reference",
    "token form: row i is {i} ∪ {i - 2^k >= 0}, out-degree <= floor(log2 i) + 2",
    "token form reachability: every j with i - j < 2^L reachable in L layers",
    "few blocks => all selected => dense"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
}
