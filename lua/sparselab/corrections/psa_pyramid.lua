-- PSA: Pyramid Sparse Attention for Efficient Video Understanding and
-- Generation — card: psa_pyramid, as a correction ("multi-level pooled KV
-- instead of binary masks"): the key blocks a base method's binary mask
-- skips are not dropped but read at a coarse pyramid level.
-- Steps: the base runs (its mask M = the card's level-1 blocks); every block
-- (head, query block, key block) that M does not touch at all and that some
-- row of the query block can see gets level `level` (mean-pooled keys and
-- values, logit + log s: attn.pooled_kv, card steps 1 and 4); that pooled
-- partial attention is merged into the base's through the log-sum-exp
-- (attn.lse_merge: the key sets are disjoint, so it is one softmax over
-- both, as the card's single normalisation).
-- Reading chosen (the card's graded selection is the psa_pyramid METHOD):
-- one level for every skipped block (default 8, the card's coarsest non-empty
-- level; capped at the largest power of two <= the mask's bk). A block the base
-- keeps partially (token bits) is left to the base: its dropped pairs stay
-- dropped. With a full mask nothing is left: the output is the base's
-- exactly. Cost: attn.pooled_kv FLOPs (≈ (1 - density)/level of dense plus the
-- pooling) and the merge.
local sl = require "sparselab"
local psa = require "sparselab.methods.psa_pyramid"


return {
  id = "psa_pyramid",
  card = "psa_pyramid",
  aliases = {"pooled_kv"},
  title = "PSA: Pyramid Sparse Attention for Efficient Video Understanding and Generation",
  summary = "the blocks the base mask skips are attended on mean-pooled keys/values (level s, logit + log s) " ..
    "and merged into the base output by log-sum-exp",
  params = {
    level = {default = 8, min = 1, max = 4096, int = true, doc = "pooling level of skipped blocks (a power of two)"},
  },
  ops = {"attn.pooled_kv", "attn.lse_merge"},
  checks = {"full mask: output equals the base (dense) exactly", "level 1: every visible block exact = dense",
    "identical keys in each group: equals dense", "no block at level > bk"},
  after = function(prob, p, base)
    local bmask = sl.mask.as_block(base.mask)
    if not bmask then
      sl.fail("psa_pyramid: the base method returned no block mask (the pooled blocks are the ones it skips)")
    end
    if not base.lse then sl.fail("psa_pyramid: the base method returned no lse") end
    local s = psa.pow2_floor(p.level)
    if s ~= p.level then sl.fail("psa_pyramid: level must be a power of two, found %d", p.level) end
    local info = bmask:info()
    s = math.min(s, psa.pow2_floor(info.bk))
    local qs = prob.q:shape()
    local nq, nk = info.n_q, info.n_k
    local off = nk - nq
    local causal = prob.causal ~= false
    -- blocks the mask lists, per mask head
    local rp, ci = bmask:arrays()
    local rpt, cit = rp:totable(), ci:totable()
    rp:close(); ci:close()
    local listed = {}
    for h = 1, info.n_heads do
      listed[h] = {}
      local row = rpt[h]
      for I = 1, info.n_qb do
        local set = {}
        for e = row[I], row[I + 1] - 1 do set[cit[e + 1] + 1] = true end
        listed[h][I] = set
      end
    end
    local per = qs[1] // info.n_heads
    local n_pooled = 0
    local levels = psa.levels_tensor(info.n_heads, info.n_qb, info.n_kb, function(h, I, J)
      if listed[h][I][J] then return 0 end
      local last_pos = off + math.min(I * info.bq, nq) - 1
      if causal and (J - 1) * info.bk + math.min(s, info.bk) - 1 > last_pos then return 0 end
      n_pooled = n_pooled + 1
      return s
    end)
    local args = {bq = info.bq, bk = info.bk, causal = causal, backend = prob.backend}
    local o_c, l_c = sl.attn.pooled_kv(prob.q, prob.k, prob.v, levels, args)
    local flops = sl.op_flops("attn.pooled_kv", prob.q, prob.k, prob.v, levels, args)
    local margs = {backend = prob.backend}
    local o, lse = sl.attn.lse_merge(base.o, base.lse, o_c, l_c, margs)
    flops = flops + sl.op_flops("attn.lse_merge", base.o, base.lse, o_c, l_c, margs)
    levels:close(); o_c:close(); l_c:close()
    return {o = o, lse = lse, stats = {correction_flops = flops, psa_level = s,
      psa_pooled_blocks = n_pooled * per}}
  end,
}
