-- Less Is More: Training-Free Sparse Attention with Global Locality for
-- Efficient Reasoning — card: lessismore. TidalDecode's layer roles with one
-- token set shared by every head: the rank-major union of the heads' top
-- middle tokens, plus sinks and a recency window.
-- Card steps implemented:
--   1. budget split: K_mid = floor(K r_mid), K_recent = K - K_mid; sinks a
--      come out of the recent part when K_recent >= a, else a = 0;
--   2. per query head the top-K_mid tokens of the exact logits over the middle
--      [a, n - K_recent) (page.token_scores restricted to the middle,
--      page.select), ranked by logit (ties: lower position);
--   3. rank-major union across heads (rank 0 of heads 0..H-1, then rank 1,
--      ...), duplicates dropped at first occurrence, truncated to K_mid;
--   4. ρ = sinks ∪ union ∪ last K_recent positions, the same for every head;
--   5. layers below select_layer dense; selection layers {s, c} attend densely
--      and save ρ in the decode state; other layers reuse it (exact softmax
--      over ρ with their own K, V); K >= n is dense; prefill dense.
-- Reference read (issue 20): DerrickYLJ/LessIsMore
--   src/tidal_build/modify_qwen3_lim.py (qwen_tidal_attention_forward,
--   enable_qwen_tidal_attention), src/enable_tidal.py,
--   experiments/reasoning/run_eval_slurm.sh (the paper's run: sink 4,
--   lim_ratio 0.75, sparse start 2, correction 12 for Qwen3-8B / 20 for 4B).
--   Matched: K = min(n, top_k) (K >= n: an all-ones mask, dense), middle =
--   int(K . lim_ratio), recent = K - middle with the sinks taken out of it
--   when it can hold them (else no sinks); per query head (GQA keys repeated)
--   torch.topk over the scaled logits of [sink, n - recent); the union
--   rank-major (transpose(1, 3) then flatten: rank 0 of every head, rank 1,
--   ...), first occurrence kept (dict.fromkeys), cut to the middle budget;
--   sinks ∪ union ∪ recent for every head; the selection layers themselves
--   dense; other layers mask_fill the rest with the dtype minimum.
--   Divergences: torch.topk's order among equal logits is unspecified (here
--   lower position first), which can change the union's order and so its
--   cut; the reference builds the union from batch element 0 for the whole
--   batch (one problem here); the CLI defaults of enable_tidal /
--   eval_reasoning.py are lim_ratio 1 and no sinks, the paper's script
--   0.75 and 4 (the defaults here); correction_layer 13 here, 12 or 20 in
--   the script per model (a parameter).
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "lessismore",
  card = "lessismore",
  title = "Less Is More: Training-Free Sparse Attention with Global Locality for Efficient Reasoning",
  family = "layer-reuse",
  phase = "decode",
  causal_only = true,
  summary = "TidalDecode roles; one set for all heads: sinks + rank-major union of heads' top middle tokens + recency window.",
  knob = "budget",
  params = {
    budget = {default = 2048, min = 1, int = true, doc = "tokens K of the shared set"},
    sinks = {default = 4, min = 0, int = true, doc = "attention sinks a"},
    r_mid = {default = 0.75, min = 0, max = 1, doc = "share of K chosen by score (lim_ratio)"},
    select_layer = {default = 2, min = 0, int = true, doc = "first selection layer s (layers below dense)"},
    correction_layer = {default = 13, min = 0, int = true, doc = "re-selection layer c"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
  },
  ops = {"page.token_scores", "page.select", "page.attend"},
  checks = {"union has no duplicates, length <= K_mid, indices in the middle", "all heads agree => union = that head's top-K_mid",
    "|ρ| <= K; K >= n is dense", "the reused set equals the saved one", "rank-major union beats first-k on peaked inputs"},
}

-- The shared set ρ (sorted positions) for q over the cache; scorer replaces
-- the logits (score-blind tests).
local function select_set(cache, q, p, backend, scorer)
  local n, hq = cache:len(), q:shape()[1]
  if p.budget >= n then
    local all = {}
    for j = 0, n - 1 do all[#all + 1] = j end
    return all, {}
  end
  local kmid = math.floor(p.budget * p.r_mid)
  local krec, a = p.budget - kmid, p.sinks
  if krec >= a then krec = krec - a else a = 0 end
  local lo, hi = a, n - krec
  local union = {}
  if kmid > 0 and hi > lo then
    local middle = decode.token_range(cache:heads(), lo, hi)
    local s = scorer and scorer(cache, q, lo, hi) or decode.token_scores(cache, q, {pages = middle, page = 1, backend = backend})
    local sel = sl.page.select(s, {k = math.min(kmid, hi - lo), last = 0, p = 1, backend = backend}):totable()
    local st = s:totable()
    local ranked = {}
    for h = 1, hq do
      local ids = {}
      for _, j in ipairs(sel[h][1]) do if j >= 0 then ids[#ids + 1] = j end end
      local row = st[h][1]
      table.sort(ids, function(x, y)
        if row[x + 1] ~= row[y + 1] then return row[x + 1] > row[y + 1] end
        return x < y
      end)
      ranked[h] = ids
    end
    local seen = {}
    for r = 1, kmid do
      for h = 1, hq do
        local j = ranked[h][r]
        if j and not seen[j] and #union < kmid then seen[j] = true; union[#union + 1] = j end
      end
    end
  end
  local set, have = {}, {}
  local function add(j) if not have[j] then have[j] = true; set[#set + 1] = j end end
  for j = 0, a - 1 do add(j) end
  for _, j in ipairs(union) do add(j) end
  for j = math.max(hi, a), n - 1 do add(j) end
  table.sort(set)
  return set, union
end
M.select_set = select_set

local function selects(p)
  return function(layer) return layer == p.select_layer or layer == p.correction_layer end
end

function M.decode(st, ls, step, p, scorer)
  return decode.reuse_step(M.id, st, ls, step, p, p.select_layer, selects(p), function(cache, q, pp, backend)
    return decode.shared_lists(cache:heads(), (select_set(cache, q, pp, backend, scorer)))
  end)
end

function M.run(prob, p)
  return decode.reuse_kernel_run(M, prob, p, prob.layer or p.select_layer + 1, p.select_layer, selects(p))
end

return M
