-- sparselab.recipe — pieces recipes share: the block-size parameters of
-- block-sparse executors, a pattern materialised at the problem's size, and
-- the run function of a method that is "a mask, then attn.block_sparse".
local sl = require "sparselab"

local R = {}

--- The bq/bk parameter specs every block-sparse recipe exposes.
function R.block_params(params)
  params.bq = {default = 64, min = 1, max = 4096, int = true, doc = "query rows per executor block"}
  params.bk = {default = 64, min = 1, max = 4096, int = true, doc = "keys per executor block"}
  return params
end

--- A pattern materialised at the problem's n_q, n_k and the method's blocks,
--- for the heads it needs: n_heads when given (e.g. the KV heads of a
--- per-KV-head pattern; it must divide q's heads), else the pattern's own
--- per-head count (an assign or per-head lists), else q's heads (a
--- head-dependent rule such as strided with head_step or drop gets one head
--- per query head; a head-independent one still materialises one shared head).
function R.materialize(pattern, prob, p, n_heads)
  local h = n_heads
  if h == nil then
    if pattern.heads and pattern.heads > 0 then h = pattern.heads else h = prob.q:shape()[1] end
  end
  return pattern:materialize{n_q = prob.q:shape()[2], n_k = prob.k:shape()[2], bq = p.bq, bk = p.bk, n_heads = h}
end

--- run(prob, p) for a method whose whole computation is attn.block_sparse
--- over mask_for(prob, p): output, lse, the executed mask, its density and
--- the executor's FLOPs.
function R.block_sparse_run(mask_for)
  return function(prob, p)
    local m = mask_for(prob, p)
    local args = {backend = prob.backend}
    local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, m, args)
    return {o = o, lse = lse, mask = m,
      stats = {flops = sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, m, args), density = m:density(true)}}
  end
end

return R
