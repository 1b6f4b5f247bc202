-- Are Sixteen Heads Really Better than One? (Michel, Levy, Neubig 2019) —
-- card: sixteen_heads.
-- Card steps implemented:
--   1. head masks ξ_h ∈ {0, 1}: a removed head's attention is not computed
--      and its output is 0 (in the model runner: the "skip" spec,
--      sparselab.heads.schedule, so its W_o slice contributes nothing);
--   3. importance on the model (sparselab.heads.importance): "gradient",
--      the card's proxy I_h = E_x |∂L(x)/∂ξ_h| at ξ = 1 with ξ_h a
--      multiplier on the head's output (the runner has no backward: the
--      central difference (L(1+ε) − L(1−ε))/2ε, ε = 1e-2, two forwards per
--      head; tested to converge to the analytic derivative on a tiny layer
--      and to agree between ε and ε/2 on the runner); also "ablation"
--      |ΔNLL| when the head alone is removed, "kl", "l2"; the paper's
--      per-layer ℓ2 normalisation as an option. On a single attention
--      problem (this recipe's run) the proxy is the head's mean output norm
--      (l2), since the loss needs the whole model;
--   4. pruning: the lowest-importance heads go first, one-shot or iterative
--      with re-scoring after each round (sparselab.heads.iterative; both in
--      experiments/heads.lua, which prints perplexity vs heads kept from the
--      database; per problem here: `keep` = fraction of query heads kept).
-- Not here: physically removing Q/K/V/O slices (step 5: skipping is
--   emulated by zero outputs); the exact (autograd) derivative on the model.
-- Calibration: m.calibrate(problems) stores l2 importances per (layer, head);
--   without a config the problem scores its own heads (optimistic).
-- Fidelity: removed heads output 0 (L = -inf): recall counts their rows as
--   lost; rel_l2 against dense is recorded.
-- Reference read (issue 20, session 5): pmichel31415/are-16-heads-really-better-
--   than-1 holds only scripts (experiments/BERT/heads_pruning.sh: --do_prune
--   --prune_percent 5..100); the code is the author's fork
--   pmichel31415/pytorch-pretrained-BERT, branch `paul`: examples/classifier_eval.py
--   calculate_head_importance, examples/pruning.py what_to_prune /
--   determine_pruning_sequence. Matched: heads ranked over all layers by
--   importance, lowest first, iterative rounds with re-scoring, ℓ2
--   normalisation per layer (normalize_scores_by_layer, on by default there).
--   Divergences: (a) the reference's importance is Σ over tokens of
--   |grad_ctx_t · ctx_t| — the absolute value is taken PER TOKEN (a gate per
--   position), then summed over tokens and examples; the card's proxy (here)
--   is |∂L/∂ξ_h| with one gate for the whole input, i.e. |Σ_t g_t·ctx_t| (no
--   option: per-token gates would need 2·n forwards per head with the central
--   difference); (b) the reference divides every layer but the last by the
--   token count and the last by the number of examples; (c) at_least_x_heads
--   _per_layer protection is not here.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local ID = "sixteen_heads"

local function l2_scores(prob)
  local o = sl.attn.dense(prob.q, prob.k, prob.v, {causal = prob.causal, backend = prob.backend})
  local sh = o:shape()
  local hq, n = sh[1], sh[2]
  local step, out = math.max(1, 262144 // sh[3]), {}
  for h = 1, hq do
    -- one head's rows in chunks (a head's [n, d] as one Lua table exceeded
    -- the totable limit at n = 16K, d = 64)
    local s = 0
    for r0 = 1, n, step do
      for _, row in ipairs(o:narrow(1, h, 1):narrow(2, r0, math.min(step, n - r0 + 1)):totable()[1]) do
        local r = 0
        for _, x in ipairs(row) do r = r + x * x end
        s = s + math.sqrt(r)
      end
    end
    out[h] = s / n
  end
  return out
end

local function kept_heads(prob, p, blind)
  local hq = prob.q:shape()[1]
  local cfg = E.config(p, ID)
  local imp
  if cfg then
    imp = cfg.importance["L" .. tostring(prob.layer or "any")] or cfg.importance["Lany"]
    if not imp then sl.fail("sixteen_heads: the config has no importance for layer %s", tostring(prob.layer)) end
  else
    imp = l2_scores(prob)
  end
  local n_keep = math.max(0, math.min(hq, math.floor(p.keep * hq + 0.5)))
  local order = {}
  for h = 1, hq do order[h] = h end
  if not blind then
    table.sort(order, function(a, b)
      if imp[a] ~= imp[b] then return imp[a] > imp[b] end
      return a < b
    end)
  end
  local keep = {}
  for i = 1, n_keep do keep[order[i]] = true end
  return keep, n_keep
end

local function run(prob, p, blind)
  local t0 = sl.time()
  local keep, n_keep = kept_heads(prob, p, blind)
  local t1 = sl.time()
  local hq, hkv = prob.q:shape()[1], prob.k:shape()[1]
  local G = hq // hkv
  local os_, ls = {}, {}
  local flops = 0
  for h = 1, hq do
    local g = (h - 1) // G + 1
    if keep[h] then
      local args = {causal = prob.causal, backend = prob.backend}
      local q1, k1, v1 = prob.q:narrow(1, h, 1), prob.k:narrow(1, g, 1), prob.v:narrow(1, g, 1)
      os_[h], ls[h] = sl.attn.dense(q1, k1, v1, args)
      flops = flops + sl.op_flops("attn.dense", q1, k1, v1, args)
    else
      local n = prob.q:shape()[2]
      os_[h] = sl.zeros({1, n, prob.q:shape()[3]})
      local t = {}
      for i = 1, n do t[i] = -math.huge end
      ls[h] = sl.tensor({t})
    end
  end
  local o, lse = sl.cat(os_, 1), sl.cat(ls, 1)
  local t2 = sl.time()
  return {o = o, lse = lse, kept = keep, stats = {flops = flops, estimator_flops = 0, density = n_keep / hq,
    heads_kept = n_keep, estimate_ms = (t1 - t0) * 1e3, execute_ms = (t2 - t1) * 1e3}}
end

local function calibrate(problems)
  local acc, cnt = {}, {}
  for _, prob in ipairs(problems) do
    local key = "L" .. tostring(prob.layer or "any")
    local s = l2_scores(prob)
    acc[key], cnt[key] = acc[key] or {}, (cnt[key] or 0) + 1
    for h, x in ipairs(s) do acc[key][h] = (acc[key][h] or 0) + x end
  end
  for key, t in pairs(acc) do for h = 1, #t do t[h] = t[h] / cnt[key] end end
  return {importance = acc}
end

return {
  id = ID,
  card = ID,
  title = "Are Sixteen Heads Really Better than One?",
  family = "head-level",
  phase = "both",
  summary = "Head masks ξ_h: the least important heads (gradient-free proxies: ablation ΔNLL on the model, output norm per problem) are removed, their outputs 0.",
  knob = "keep",
  params = {
    keep = {default = 0.5, min = 0, max = 1, doc = "fraction of query heads kept (the most important)"},
    config = {default = "", doc = "importance file (sl.calibrate); empty: the problem scores its own heads"},
  },
  ops = {"attn.dense"},
  checks = {"keep = 1 equals dense", "removing a zero-importance head leaves the model's logits unchanged (tests/lua/test_heads.lua)",
    "importance-ordered removal beats a score-blind order"},
  calibrate = calibrate,
  run_with = run,
  run = function(prob, p) return run(prob, p, false) end,
}
