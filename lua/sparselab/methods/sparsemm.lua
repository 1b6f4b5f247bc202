-- SparseMM: Head Sparsity Emerges from Visual Concept Responses in MLLMs —
-- card: sparsemm. KV-cache budgets allocated per KV head from visual-head
-- scores, then SnapKV-style per-head eviction at the end of the prefill;
-- decode attends densely to each head's retained cache plus new tokens.
-- Card steps implemented:
--   2. budget allocation: per-head base b = base_capacity - window, floor
--      ratio ρ: min = floor(b ρ), pool R = (b - min) . L . Hkv, budget_{l,h} =
--      round(σ_{l,h} R + min) with σ normalised over every layer and head
--      given (head scores: decode state `head_scores[layer + 1][h]`, per KV
--      head — query-head scores summed over the group by the caller; none or
--      problem.state.head_scores at kernel level; absent: uniform, which is
--      SnapKV's uniform budget);
--   3. per-head eviction: importance = softmax attention of the last `window`
--      prompt queries to each earlier key, averaged over the group (a sum:
--      the same ranking), max-pooled (kernel 7); keep the top budget_{l,h}
--      prefix tokens plus the window (token lists per KV head, not freed;
--      evict = 1, issue 13 session 3: physically, each KV head's cache
--      compacted to its kept tokens and shrunk, so the resident bytes drop
--      with each head's own budget — decode.compact_heads);
--   4. decode: dense attention over each head's retained tokens plus every
--      generated token; no re-selection.
-- Not implemented: step 1, the offline OCR-grounded visual-head scoring (no
-- MLLM here): scores are an input.
-- Reference read (issue 20): CR400AF-A/SparseMM sparsemm/sparsemm_utils.py —
--   SparseMM.__init__ (head_adaptive_capacity), calcul_attn_sore, update_kv,
--   init_sparsemm. Matched: scores normalised over every layer and query head
--   then summed per KV group, min = floor(b ρ), pool (b - min) L Hkv, the last
--   `window` queries' softmax (causal inside the window) averaged over rows
--   and the group (a mean: the same ranking as the sum here), the top
--   budget prefix keys plus the window kept. Divergences:
--   - pooling span: the reference pools the prefix's scores only
--     (attn_weights[..., :-window], padding kernel // 2 at both ends); by
--     default here the scores of all n0 prompt keys are pooled and the prefix
--     ranked (as SnapKV's sparse-frontier code does), so the last kernel // 2
--     prefix keys also see the window keys' scores; `reference_pool = true`
--     pools the prefix alone, as the reference.
--   - the released entry (init_sparsemm) sets kernel_size 5 and avgpool when
--     the model config does not, overriding the class defaults (7, maxpool)
--     that the card and this recipe use; `kernel = 5` is reachable, average
--     pooling is not an option of this recipe.
--   - no compression at all when b = base_capacity - window exceeds the
--     prefix length (the reference tests the base, not the head's budget);
--     here each head keeps min(budget_h, prefix) tokens, so low-score heads
--     are still cut in that case.
--   - torch.round (half to even) vs round half up here; torch.sort's order
--     on equal pooled scores is unspecified (here: lower position first).
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "sparsemm",
  card = "sparsemm",
  title = "SparseMM: Head Sparsity Emerges from Visual Concept Responses in MLLMs",
  family = "budget",
  phase = "decode",
  causal_only = true,
  summary = "Per-KV-head cache budgets from visual-head scores; SnapKV-style per-head eviction after the prefill.",
  knob = "base_capacity",
  params = {
    base_capacity = {default = 256, min = 1, int = true, doc = "per-head capacity before allocation (window included)"},
    window = {default = 32, min = 0, int = true, doc = "observation window and kept recent prompt tokens"},
    ratio = {default = 0.1, min = 0, max = 1, doc = "floor ratio ρ of every head's base budget"},
    kernel = {default = 7, min = 1, int = true, doc = "max-pooling kernel along keys"},
    reference_pool = {default = false, doc = "pool the prefix's scores only, as the reference's calcul_attn_sore (default: every prompt key's, as SnapKV's sparse-frontier code)"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
    evict = {default = 0, min = 0, max = 1, int = true,
      doc = "1: per-head eviction is physical (each KV head's cache compacted and shrunk to its budget; resident bytes drop)"},
  },
  ops = {"page.token_scores", "page.attend"},
  checks = {"Σ budgets = Hkv . b (up to rounding), every head >= min", "uniform scores = uniform (SnapKV) budgets",
    "budget >= prompt length keeps everything", "importance beats position-order eviction on peaked inputs"},
}

--- Budgets per KV head of one layer from scores sigma (Lua list, any
--- positive scale; nil: uniform) normalised with the other layers' scores
--- (total = Σ over every layer and head given; n_layers of them).
function M.allocate(sigma, hkv, p, total, n_layers)
  local b = math.max(0, p.base_capacity - p.window)
  local mn = math.floor(b * p.ratio)
  local R = (b - mn) * (n_layers or 1) * hkv
  local out = {}
  for h = 1, hkv do
    local s = sigma and sigma[h] / total or 1 / (hkv * (n_layers or 1))
    out[h] = math.floor(s * R + mn + 0.5)
  end
  return out
end

local function compress(ls, p, st, layer, backend, importance)
  local cache, n0 = ls.cache, ls.n_prefill
  local hkv = cache:heads()
  local sigma, total, nl = nil, 0, 1
  local hs = st.head_scores
  if hs and hs[layer + 1] then
    sigma = hs[layer + 1]
    nl = 0
    for _, l in pairs(hs) do nl = nl + 1; for _, x in ipairs(l) do total = total + x end end
  end
  local budgets = M.allocate(sigma, hkv, p, total, nl)
  local w = math.min(p.window, n0)
  local kept = {}
  if not ls.obs_q then sl.fail("sparsemm: the layer has no prompt queries (decode.prefill(st, layer, k, v, {q = ...}))") end
  local obs = ls.obs_q:narrow(2, ls.obs_q:shape()[2] - math.min(w, ls.obs_q:shape()[2]) + 1, math.min(w, ls.obs_q:shape()[2]))
  local imp = importance and importance(cache, obs, n0) or decode.snapkv_importance(cache, obs, n0, p.kernel, 1, backend,
    p.reference_pool and n0 - w or nil)
  for g = 1, hkv do
    local prefix = {}
    for j = 0, n0 - w - 1 do prefix[#prefix + 1] = j end
    table.sort(prefix, function(a, b)
      if imp[g][a + 1] ~= imp[g][b + 1] then return imp[g][a + 1] > imp[g][b + 1] end
      return a < b
    end)
    kept[g] = {}
    for i = 1, math.min(budgets[g], #prefix) do kept[g][i] = prefix[i] end
    for j = n0 - w, n0 - 1 do kept[g][#kept[g] + 1] = j end
  end
  return kept, budgets
end

function M.decode(st, ls, step, p, importance)
  if not ls.kept then ls.kept, ls.budgets = compress(ls, p, st, step.layer or 0, step.backend, importance) end
  return decode.kept_step(ls, step.q, ls.kept, step.backend, p.evict)
end

--- Kernel level: a prefill problem (n_q = n_k) runs dense (the compression
--- happens after the prefill); a decode problem needs the prompt's queries in
--- problem.state.obs_q (and head scores in problem.state.head_scores, a list
--- per KV head of this layer).
function M.run(prob, p)
  if prob.q:shape()[2] == prob.k:shape()[2] then return decode.kernel_run(M, prob, p, {}) end
  local obs = prob.state and prob.state.obs_q
  if not obs then sl.fail("sparsemm: a decode problem needs the prompt's queries (problem.state.obs_q [Hq, w, D])") end
  local hs = prob.state.head_scores
  local m2 = {}
  for key, val in pairs(M) do m2[key] = val end
  m2.decode = function(st, ls, step, pp)
    if hs then st.head_scores = {[(step.layer or 0) + 1] = hs} end
    return M.decode(st, ls, step, pp)
  end
  return decode.kernel_run(m2, prob, p, {prefill_q = obs})
end

return M
