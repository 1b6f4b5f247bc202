-- SeerAttention with the oracle gate — card: seer_attention. The block
-- selection of seer_attention (threshold or nz_ratio top-k, last two block
-- rows dense, tril) on the gate's training target instead of a learned
-- gate: G = per (query block, key block) the max softmax probability over
-- its pairs (score.exact, reduce = max), each row renormalised to sum 1. An
-- id of its own so that an oracle result is never recorded as
-- seer_attention (issue 20); see seer_attention.lua for the card steps.
return require("sparselab.methods.seer_attention").oracle_method
