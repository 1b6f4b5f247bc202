-- Sparser Block-Sparse Attention via Token Permutation (PBS-Attn) — card: pbs_attn.
-- Card steps implemented:
--   (dense when n <= segment);
--   1. segment-local key permutation: probe = the last `block` queries,
--      softmax over the keys of all complete segments with no causal mask
--      (score.last_q on the probe rows against those keys), key score = the
--      probe rows' sum (∝ mean); within each complete segment keys sorted by
--      score descending (ties: lower position first), the trailing partial
--      segment keeps its order; K and V gathered with the permutation per
--      query head (gather.rows; GQA: K repeated as in the reference);
--   2. block grid: query blocks in original order, key blocks on the
--      permuted keys; the segment of a block is its position // segment;
--   3. off-segment selection: P = row softmax of mean(Q_r)·mean(K̃_c)/sqrt(d)
--      (score.pooled raw scores) over the blocks of earlier segments; sorted
--      blocks kept until the cumulative sum first reaches τ (inclusive);
--   4. forced: the key block holding original token 0 and every
--      same-segment block (the diagonal segment region);
--   5. executor: the same-segment region is causal attention inside each
--      segment in original order (block_diag ∩ causal, attn.block_sparse) —
--      all its blocks are kept, so the permutation changes nothing there and
--      causality by original position is exact; the off-segment blocks run
--      on the permuted K̃, Ṽ (attn.block_sparse, every key of an earlier
--      segment precedes the query); the two passes cover disjoint keys and
--      are merged by attn.lse_merge.
-- Not implemented: permuting queries (the reference does not either); the
-- mean-pooling baseline helper's segment 1024.
-- Unknowns chosen: segment must be a multiple of block; a row with no
-- earlier segment has no off-segment pass (lse -inf there, merged away).
-- Reference read (issue 20, session 5): xinghaow99/pbs-attn
--   pbs_attn/src/permute_states.py (last_block_attn_sorting, apply_permutation),
--   pbs_attn/src/pbs.py (permuted_block_sparse_attn_fwd, permuted_block_selection,
--   first_token_mask), pbs_attn/src/utils.py (block_pooled_attn, select_blocks),
--   pbs_attn/patch/huggingface.py (get_permuted_block_sparse_attn_fwd: block 128,
--   segment 256, threshold 0.9, force_select_first_block — the defaults here).
--   Matched: dense when n <= segment; probe = the last `block` queries, softmax
--   over the complete segments' keys with no causal mask, mean over the probe
--   rows, per-segment descending sort, the partial tail in order; queries not
--   permuted; pooled means, 1/sqrt(d), softmax over the off-segment causal blocks,
--   sort, the first index whose cumsum >= threshold inclusive; the key block
--   holding token 0 OR-ed in; the segment blocks always computed; GQA by
--   repeating K/V (the reference asserts Hq = Hkv after repeat_kv).
--   Divergences: (a) a ragged n — the reference zero-pads Q and K to a
--   multiple of block and mean-pools the padded last block with its zeros
--   (sum / block), so the last query block's pooled query is shrunk by
--   valid/block and its block softmax is flatter; the default is the mean of
--   its valid rows (the card's pooling), named option pad = true the
--   reference's (score.pooled pad = 1; the last key block never enters the
--   off-segment pass) — with it the selection equals a float64 transcription
--   of the reference (tests/lua/test_estimators_f64.lua). No option for the
--   rest: (b) torch.argsort / torch.sort(descending) give no tie order (here
--   lower position / lower block first); (c) the reference's
--   softmax and cumsum are float32, here float64 from the float32 pooled
--   logits; (d) a row whose float32 cumsum never reaches the threshold
--   (threshold 1.0 passed as a float, or rounding) keeps only the forced
--   blocks in the reference (any_exceeds); here every off-segment block.
local sl = require "sparselab"
local E = require "sparselab.blockest"
local D = require "sparselab.dynamic"

local ID = "pbs_attn"

-- Per query head permutation (0-based original positions, perm[t] = key at
-- permuted slot t) from the probe's key scores.
local function permutations(prob, p, n)
  local hq = prob.q:shape()[1]
  local S, B = p.segment, p.block
  local n_c = (n // S) * S
  local perms, flops = {}, 0
  local score
  if n_c > 0 then
    local q_last = prob.q:narrow(2, n - B + 1, B)
    local k_c = prob.k:narrow(2, 1, n_c)
    local args = {last = B, causal = false, backend = prob.backend}
    local pr = sl.score.last_q(q_last, k_c, args)
    flops = sl.op_flops("score.last_q", q_last, k_c, args) + pr:numel()
    score = sl.reduce.columns(pr)
    pr:close()
  end
  for h = 1, hq do
    local perm = {}
    local sc = score and score:narrow(1, h, 1):totable()[1]
    for s0 = 0, n - 1, S do
      local s1 = math.min(s0 + S, n)
      if s1 - s0 == S and sc then
        -- descending score, ties in index order: the distinct values sorted
        -- numerically (no Lua comparator, issue 20), each with its keys
        local vals, at = {}, {}
        for j = s0, s1 - 1 do
          local x = sc[j + 1]
          local l = at[x]
          if l then l[#l + 1] = j else at[x] = {j}; vals[#vals + 1] = x end
        end
        table.sort(vals)
        for i = #vals, 1, -1 do
          for _, j in ipairs(at[vals[i]]) do perm[#perm + 1] = j end
        end
      else
        for j = s0, s1 - 1 do perm[#perm + 1] = j end
      end
    end
    perms[h] = perm
  end
  return perms, flops
end

local function dense_est(prob, n, hq)
  local m = sl.mask.causal():materialize{n_q = n, n_k = n, bq = 64, bk = 64, n_heads = 1}
  return {mask = m, flops = 0, extra = {dense_fallback = 1}}
end

local function estimate(prob, p)
  local n = D.check_prefill(ID, prob)
  local hq = prob.q:shape()[1]
  local S, B = p.segment, p.block
  if S % B ~= 0 then sl.fail("%s: segment %d must be a multiple of block %d", ID, S, B) end
  if n <= S then return dense_est(prob, n, hq) end
  local perms, flops = permutations(prob, p, n)
  local be = prob.backend
  local idx = sl.tensor(perms, "i32")
  local kp, vp = sl.gather.rows(prob.k, idx, {backend = be}), sl.gather.rows(prob.v, idx, {backend = be})
  local pa = {bq = B, bk = B, causal = true, pad = p.pad and 1 or 0, backend = be}
  local sc = sl.score.pooled(prob.q, kp, pa)
  flops = flops + sl.op_flops("score.pooled", prob.q, kp, pa)
  local nb = (n + B - 1) // B
  local per_seg = S // B
  local keep, kept_pairs = {}, 0
  for h = 1, hq do
    local A = sc:narrow(1, h, 1):totable()[1]
    -- the permuted slot of original token 0 (segment 0)
    local first_blk
    for t, j in ipairs(perms[h]) do if j == 0 then first_blk = (t - 1) // B + 1; break end end
    keep[h] = {}
    for r = 1, nb do
      local row = {}
      for c = 1, nb do row[c] = 0 end
      local seg_r = (r - 1) // per_seg
      local lim = seg_r * per_seg   -- blocks 1..lim are in earlier segments
      if lim > 0 then
        local a, mx = A[r], -math.huge
        for c = 1, lim do if a[c] > mx then mx = a[c] end end
        local w, z = {}, 0
        for c = 1, lim do w[c] = math.exp(a[c] - mx); z = z + w[c] end
        -- the prefix of the order (larger w first, ties to the lower index)
        -- whose mass reaches threshold x z: its length from the numerically
        -- sorted masses (equal masses add the same in any order), then the
        -- blocks above the last kept mass and the first ones equal to it
        local sv = table.move(w, 1, lim, 1, {})
        table.sort(sv)
        local cum, cnt = 0, 0
        for i = lim, 1, -1 do
          if cum >= p.threshold * z and p.threshold < 1 then break end
          cnt = cnt + 1
          cum = cum + sv[i]
        end
        E.mark_largest(row, w, lim, sv, cnt)
        if p.force_first then row[first_blk] = 1 end
      end
      keep[h][r] = row
    end
  end
  flops = flops + sc:numel() * math.log(math.max(nb, 2), 2)
  local off = sl.mask.from_blocks(sl.tensor(keep, "u8"), {n_q = n, n_k = n, bq = B, bk = B, causal = false})
  local same = (sl.mask.block_diag{size = S}):materialize{n_q = n, n_k = n, bq = B, bk = B, n_heads = 1}
  for h = 1, hq do kept_pairs = kept_pairs + off:kept(h) + same:kept(1) end
  local density = kept_pairs / (D.causal_pairs(n, n) * hq)
  local function execute()
    local args = {backend = be}
    local o1, l1 = sl.attn.block_sparse(prob.q, prob.k, prob.v, same, args)
    local o2, l2 = sl.attn.block_sparse(prob.q, kp, vp, off, args)
    local o, l = sl.attn.lse_merge(o1, l1, o2, l2, args)
    local fl = sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, same, args) +
      sl.op_flops("attn.block_sparse", prob.q, kp, vp, off, args) + sl.op_flops("attn.lse_merge", o1, l1, o2, l2)
    return o, l, fl
  end
  -- the executed pairs in original key positions (small problems: token bits everywhere)
  local function materialize()
    local heads = {}
    for h = 1, hq do
      local pinv = {}
      for t, j in ipairs(perms[h]) do pinv[j + 1] = t - 1 end
      local one = sl.mask.from_blocks(sl.tensor({keep[h]}, "u8"), {n_q = n, n_k = n, bq = B, bk = B, causal = false})
      local ident = {}
      for i = 0, n - 1 do ident[i + 1] = i end
      heads[h] = one:permute(ident, pinv)
      one:close()
    end
    local all = sl.mask.assign(heads)
    return all + same
  end
  local m = D.light_mask("permuted block-sparse", density, materialize, function() off:close(); same:close() end)
  return {mask = m, flops = flops, execute = execute, extra = {segments = (n + S - 1) // S}}
end

return {
  id = ID,
  card = ID,
  title = "Sparser Block-Sparse Attention via Token Permutation",
  family = "block-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Keys sorted by a last-block probe inside segments concentrate mass into fewer blocks; pooled " ..
    "top-p over earlier segments' permuted blocks, the own segment always computed.",
  knob = "threshold",
  knob_direction = 1,
  params = {
    threshold = {default = 0.9, min = 0, max = 1, doc = "τ: cumulative pooled mass of the off-segment blocks kept"},
    block = {default = 128, min = 1, max = 4096, int = true, doc = "B: block size (queries and permuted keys)"},
    segment = {default = 256, min = 1, int = true, doc = "S: permutation segment (a multiple of block)"},
    force_first = {default = true, doc = "keep the key block holding token 0"},
    pad = {default = false, doc = "the reference's zero padding: a ragged last block pooled as its sum / block (pbs.py)"},
  },
  ops = {"score.last_q", "reduce.columns", "gather.rows", "score.pooled", "attn.block_sparse", "attn.lse_merge"},
  checks = {"τ = 1 equals dense", "perm is a bijection per complete segment, identity on the last partial one",
    "same-segment and first-token blocks always computed", "monotone in τ"},
  mask = function(prob, p) return estimate(prob, p).mask end,
  estimate = estimate,
  permutations = permutations,
  run = D.runner(estimate),
}
