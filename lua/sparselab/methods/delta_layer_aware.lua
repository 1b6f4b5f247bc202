-- DELTA: Dynamic Layer-Aware Token Attention for Efficient Long-Context
-- Reasoning — card: delta_layer_aware. Δ-layers attend densely and choose a
-- page set from the max-over-heads attention probabilities; the other layers
-- reuse it.
-- Card steps implemented:
--   1. Δ-layer: full attention (page.attend over every page gives each head's
--      LSE), exact logits z_h(t) (page.token_scores); token score
--      s_t = max over ALL query heads of exp(z_h(t) - LSE_h); page score
--      S_u = sum of s_t over the page's tokens;
--   2. selection: K pages = the last L pages ∪ the top-(K - L) older pages by
--      S_u (ties: lower page), one set shared by every head;
--   3. sparse layers: exact attention over the tokens of those pages;
--   4. the set lives in the decode state, recomputed at each Δ-layer each
--      step; warm-up layers below `warmup` dense.
-- Δ-layers: delta_a, delta_b, delta_c (default 2, 14, 23; -1 leaves one out).
-- Not implemented: step 5, the offline Δ-layer placement by inter-layer shift
-- (1 - cos of adjacent attention maps) — the placement is a parameter.
-- Reference read (issue 20): hoenza/DELTA, DELTA/Engine/DELTA/page_score.py
--   (_compute_page_scores_kernel), backend.py
--   (_compute_page_scores_from_attention_buffer[_legacy_softmax]),
--   page_selector_v2.py (PageSelectorV2._prepare_scores,
--   _select_general_from_scores), public_config.py (the release settings:
--   selector v2, "del3_legacy_softmax" scores). Matched: token score = max
--   over all query heads of the softmax probability, page score = the sum
--   over the page's tokens, the last L pages forced (+inf before one top-k of
--   K pages), pages past the sequence never chosen, the chosen pages in
--   position order, one set for every head. Divergences:
--   - the v2 selector adds a position bias -1e-7 · page index to every page
--     score before the top-k, so pages whose scores differ by less than
--     1e-7 per page of distance also go to the lower page; the default here
--     breaks exact ties only, `position_bias = 1e-7` is the reference's rule.
--   - the release recomputes the softmax from its float32 logits buffer
--     (torch.softmax over the buffered length) and sums in float32; here the
--     probabilities are exp(z - LSE) from page.attend's LSE, summed in Lua
--     doubles: equal up to rounding.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "delta_layer_aware",
  card = "delta_layer_aware",
  title = "DELTA: Dynamic Layer-Aware Token Attention for Efficient Long-Context Reasoning",
  family = "layer-reuse",
  phase = "decode",
  causal_only = true,
  summary = "Δ-layers pick pages by max-over-heads attention probability (plus a recency window); other layers reuse them.",
  knob = "budget",
  params = {
    budget = {default = 64, min = 1, int = true, doc = "pages K kept (K.P tokens)"},
    recent = {default = 8, min = 0, int = true, doc = "recency pages L always kept"},
    page = {default = 16, min = 1, int = true, doc = "tokens per page P"},
    warmup = {default = 2, min = 0, int = true, doc = "layers below this run dense"},
    delta_a = {default = 2, min = -1, int = true, doc = "first Δ-layer"},
    delta_b = {default = 14, min = -1, int = true, doc = "second Δ-layer (-1: none)"},
    delta_c = {default = 23, min = -1, int = true, doc = "third Δ-layer (-1: none)"},
    position_bias = {default = 0, min = 0, doc = "subtracted x page index from each page score before the ranking (the reference's v2 selector: 1e-7)"},
  },
  ops = {"page.token_scores", "page.attend"},
  checks = {"Δ-layers equal dense", "K >= n_pages is dense", "the set holds the last L pages and K pages in all",
    "the reused set equals the saved one", "max-probability pages beat first-k pages on peaked inputs"},
}

-- The page set (sorted page ids) for q over the cache; prob_fn replaces the
-- token probabilities (score-blind tests).
local function select_pages(cache, q, p, backend, prob_fn)
  local n, hq, P = cache:len(), q:shape()[1], p.page
  local np = (n + P - 1) // P
  local set = {}
  if p.budget >= np then
    for u = 0, np - 1 do set[#set + 1] = u end
    return set
  end
  local s
  if prob_fn then
    s = prob_fn(n)
  else
    local P = decode.attention_probs(cache, q, backend)
    s = {}
    for t = 1, n do
      local best = 0
      for h = 1, hq do best = math.max(best, P[h][t]) end
      s[t] = best
    end
  end
  local L = math.min(p.recent, p.budget)
  local score, older = {}, {}
  for u = 0, np - 1 do
    local acc = 0
    for t = u * P + 1, math.min((u + 1) * P, n) do acc = acc + s[t] end
    score[u] = acc - (p.position_bias or 0) * u
    if u < np - L then older[#older + 1] = u end
  end
  table.sort(older, function(x, y) if score[x] ~= score[y] then return score[x] > score[y] end return x < y end)
  for u = np - L, np - 1 do set[#set + 1] = u end
  for i = 1, p.budget - L do set[#set + 1] = older[i] end
  table.sort(set)
  return set
end
M.select_pages = select_pages

local function deltas(p)
  return function(layer)
    return layer >= p.warmup and (layer == p.delta_a or layer == p.delta_b or layer == p.delta_c)
  end
end

local function tokens_of(pages, P, n)
  local t = {}
  for _, u in ipairs(pages) do
    for j = u * P, math.min((u + 1) * P, n) - 1 do t[#t + 1] = j end
  end
  return t
end

function M.decode(st, ls, step, p, prob_fn)
  local first = math.min(p.delta_a >= 0 and p.delta_a or math.huge, p.delta_b >= 0 and p.delta_b or math.huge,
    p.delta_c >= 0 and p.delta_c or math.huge)
  if (step.layer or 0) < p.warmup then first = math.huge end
  return decode.reuse_step(M.id, st, ls, step, p, first, deltas(p), function(cache, q, pp, backend)
    return decode.shared_lists(cache:heads(), tokens_of(select_pages(cache, q, pp, backend, prob_fn), pp.page, cache:len()))
  end)
end

function M.run(prob, p)
  local layer = prob.layer or p.warmup + 1
  local sparse = layer >= p.warmup and not deltas(p)(layer)
  if sparse and layer < p.delta_a then sparse = false end
  return decode.kernel_run(M, prob, p, {layer = layer, step = {self_select = sparse or nil}})
end

return M
