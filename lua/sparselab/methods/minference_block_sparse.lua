-- MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic
-- Sparse Attention — the "block-sparse" pattern — card: minference_block_sparse.
-- Card steps implemented:
--   2. mean-pooled query and key blocks of 64 (score.pooled, pool = mean);
--   3. block scores q̄_r · k̄_c, no 1/sqrt(d) and no softmax (scale 1: only
--      the ranking matters), -inf on blocks after the query block (causal);
--   4. per query block the top-k blocks (k = topk, 100), diagonal NOT forced;
--   5. executor: attn.block_sparse over the kept blocks ∩ causal (token
--      causal inside the diagonal tile).
-- Default = the paper's rule: the ragged last block is the mean of its valid
-- rows. Option pad = true: the reference's quirk (zero padding counted in the
-- mean of the last block, i.e. its sum / 64).
-- Not implemented: step 1's "+64 when divisible" padding (it changes no
-- output); the per-head k of the paper's offline search (one k for all).
-- Unknowns chosen: ties lower block index first; GQA: every query head ranks
-- with its own pooled queries against its KV head's pooled keys.
-- Reference read (issue 20, session 5): microsoft/MInference
--   minference/ops/block_sparse_flash_attention.py (block_sparse_attention,
--   _build_block_index, _triton_block_sparse_attn_fwd_kernel) and
--   minference/modules/minference_forward.py (block_sparse_kernel: topk = 100).
--   Matched: Q, K padded by 64 - (n mod 64) rows (64 when n is a multiple),
--   64-row means, q̄·k̄ without scale, -inf where the key block starts after
--   the query block, top min(topk, padded n / 64), sorted; the kernel reads
--   min((r + 1), topk) of them per query block with a token causal mask, i.e.
--   min(topk, r + 1) visible blocks. Named option: pad = true (the padded
--   last block's mean over 64 rows with its zeros). Remaining divergence:
--   torch.topk's tie order (here lower block first).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"
local D = require "sparselab.dynamic"

local ID = "minference_block_sparse"

local function estimate(prob, p)
  local n = D.check_prefill(ID, prob)
  local args = {bq = p.bq, bk = p.bk, scale = 1, pool = 0, pad = p.pad, causal = true, backend = prob.backend}
  local sc = sl.score.pooled(prob.q, prob.k, args)
  local flops = sl.op_flops("score.pooled", prob.q, prob.k, args)
  local keep = sl.select.topk(sc, {k = p.topk})
  local m = sl.mask.from_blocks(keep, {n_q = n, n_k = n, bq = p.bq, bk = p.bk, causal = true})
  return {mask = m, flops = flops}
end

return {
  id = ID,
  card = ID,
  title = "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention",
  family = "block-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Mean-pooled 64x64 block scores (scale-free), top-k key blocks per query block, block-sparse attention.",
  knob = "topk",
  knob_direction = 1,
  params = recipe.block_params{
    topk = {default = 100, min = 0, int = true, doc = "key blocks kept per query block"},
    pad = {default = false, doc = "true: the reference's zero padding in the last block's mean"},
  },
  ops = {"score.pooled", "select.topk", "attn.block_sparse"},
  checks = {"topk >= n_blocks equals dense", "min(topk, r+1) blocks per row, all c <= r", "scale-free mask",
    "recall monotone in topk"},
  mask = function(prob, p) return estimate(prob, p).mask end,
  estimate = estimate,
  run = D.runner(estimate),
}
