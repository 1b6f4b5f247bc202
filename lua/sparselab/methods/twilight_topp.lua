-- Twilight: Adaptive Attention Sparsity with Hierarchical Top-p Pruning —
-- card: twilight_topp. Select-then-prune: a conservative top-k selector
-- (Quest pages), then top-p over softmax weights estimated from 4-bit keys
-- on the selected tokens only, then exact attention over what is left.
-- Card steps implemented:
--   1. selector (B0 tokens): `selector` 0 = Quest page bounds, top-(B0 // P)
--      pages with the last page kept (quest's kernel reading); 1 = none (S0 =
--      every token, the oracle selector);
--   2. weight estimator on S0: keys quantised per token (asymmetric min/max
--      over the d channels, 2^bits levels; bits = 4), s_j = q.K4_j / sqrt(d),
--      -inf outside S0; stored = 1 (default): the paged cache keeps the int4
--      copy of K (sl_kvcache_set_bits, 1/8 of K's bytes plus 8 per token) and
--      the estimator reads it (page.qscores), as the reference keeps its
--      quantised K; stored = 0 quantises on the fly (page.token_scores bits);
--   3. pruner: the smallest prefix of S0 by estimated weight holding >= p of
--      the softmax mass (page.select's top-p mode, sort-based; the reference
--      kernel's binary search on a probability threshold returns the same set
--      up to ties within its eps 1e-5); p = 1 keeps all of S0;
--   4. executor: exact softmax over S = S0 ∩ S_p with full-precision K, V
--      (renormalised, no compensation; page.attend over one-token pages);
--   5. per-head budgets are whatever top-p leaves (reported: tokens_read);
--   6. layers below dense_layers (2) dense.
-- Not implemented: the Double Sparsity selector (use selector 1 or the
-- double_sparsity method), head-flattened load balancing (a kernel concern).
-- Reference read (issue 20): tsinghua-ideal/Twilight twilight/pyimpl/
--   attention.py (attention_forward), quest.py (quest_selector), quantize.py
--   (min_max_per_token_quant_kv), top_p.py (top_p_unnormalized),
--   benchmark/configs/config_quest_twi.json (B0 8192, chunk 16, 4 bits,
--   p 0.85, first two layers skipped: the defaults here). Matched: per query
--   head (GQA keys repeated), Quest's bound sum_c max(q_c min_c, q_c max_c)
--   per chunk, per-token asymmetric min/max quantisation of K over d with
--   2^bits - 1 steps, estimated logits q.K'/sqrt(d) with the unselected
--   tokens at the dtype minimum, top-p over their softmax, exact softmax
--   over selected ∩ pruned with full-precision K, V. Divergences:
--   - chunk count: quest_selector takes ceil(B0 / P) chunks (at least 1) and
--     does not force the last chunk; here floor(B0 / P) pages with the last
--     page forced (Quest's own kernel reading, as the quest method). Equal
--     when P divides B0 and the last page ranks in the top anyway.
--   - top-p: the reference kernel (top_p_fp32_return_mask, a binary search
--     on a probability threshold) vs a sort here: the same set up to ties
--     within its eps; torch.round (half to even) vs round half away from
--     zero in the quantiser (different codes only on exact halves).
--   - the pyimpl (accuracy path) quantises K on the fly each step; stored = 0
--     does the same, stored = 1 keeps the codes in the cache.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "twilight_topp",
  card = "twilight_topp",
  title = "Twilight: Adaptive Attention Sparsity with Hierarchical Top-p Pruning",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Quest selects B0 tokens; 4-bit key estimates prune them to the top-p softmax mass; exact attention on the rest.",
  knob = "p",
  knob_direction = 1,
  params = {
    p = {default = 0.85, min = 0.01, max = 1, doc = "softmax mass kept by the pruner"},
    budget = {default = 8192, min = 1, int = true, doc = "selector budget B0 (tokens)"},
    page = {default = 16, min = 1, int = true, doc = "Quest page size of the selector"},
    selector = {default = 0, min = 0, max = 1, int = true, doc = "0 Quest pages, 1 none (every token)"},
    bits = {default = 4, min = 0, max = 8, int = true, doc = "estimator key bits (0: exact keys)"},
    stored = {default = 1, min = 0, max = 1, int = true, doc = "1: the cache keeps the low-bit K copy the estimator reads"},
    dense_layers = {default = 2, min = 0, int = true, doc = "layers below this run dense"},
  },
  ops = {"page.bounds", "page.select", "page.token_scores", "page.qscores", "page.attend"},
  checks = {"p = 1 keeps every token of S0 (equals the selector alone)", "p = 1 with B0 >= n equals dense to 1e-5",
    "kept estimated mass >= p and minimal", "S ⊆ S0", "peaked rows keep few tokens at high recall; score-blind pruning fails"},
}

-- S0: the selector's pages (i32 lists [Hq, 1, m] over pages of P tokens).
local function selector_pages(cache, q, p, backend)
  local np, hq = cache:pages(), q:shape()[1]
  local kp = math.max(1, p.budget // p.page)
  if p.selector == 1 or kp >= np then return decode.all_pages(hq, 1, np) end
  return sl.page.select(decode.bounds(cache, q, backend), {k = kp, last = 1, backend = backend})
end

local function token_step(cache, q, p, layer, backend, scorer)
  local n, hq, d = cache:len(), q:shape()[1], cache:head_dim()
  local lists, est_bytes = nil, 0
  local s0
  if layer < p.dense_layers then
    lists = decode.token_range(hq, 0, n)
  else
    s0 = selector_pages(cache, q, p, backend)
    local s
    if scorer then
      s = scorer(cache, q, s0)
    elseif p.stored == 1 and p.bits >= 2 and cache:bits() == p.bits then
      s = sl.page.qscores(q, cache:tensor("kq"), cache:tensor("kscale"),
        {pages = s0, page = p.page, n = n, backend = backend})
    else
      s = decode.token_scores(cache, q, {pages = s0, bits = p.bits, page = p.page, backend = backend})
    end
    lists = sl.page.select(s, {k = n, p = p.p, last = 0, backend = backend})
    local _, s0_tokens = decode.pages_read(s0, p.page, n)
    est_bytes = 8 * d * cache:pages() * cache:heads() + s0_tokens * (d * p.bits / 8 + 8)
  end
  local o, lse = decode.attend_tokens(cache, q, lists, {backend = backend})
  local _, tokens = decode.pages_read(lists, 1, n)
  return {o = o, lse = lse, pages = lists, selector = s0,
    stats = {tokens_read = tokens / hq, density = tokens / (hq * n), kv_bytes = 8 * d * tokens + est_bytes}}
end
M.token_step = token_step
M.cache_bits = function(p) return (p.stored == 1 and p.bits >= 2) and p.bits or 0 end

function M.decode(st, ls, step, p)
  return token_step(ls.cache, step.q, p, step.layer or 0, step.backend)
end

function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {layer = prob.layer or p.dense_layers})
end

return M
