-- Adaptively Sparse Transformers (α-entmax / sparsemax attention, Correia,
-- Niculae, Martins 2019) — card: entmax.
-- Card steps implemented:
--   scores z = scale·QKᵀ (causal: future keys masked, weight exactly 0);
--   A) bisection (algo = "bisect"): X = (α-1)z, τ_lo = max X - 1,
--      τ_hi = max X - (1/n)^(α-1), n_iter halvings, p = p(τ_m)/Σp(τ_m)
--      (deep-spin entmax/root_finding.py EntmaxBisectFunction.forward);
--   B) exact sparsemax (α = 2) and C) exact 1.5-entmax by the sorted row
--      (algo = "sort"; ref and cpu sort, the CUDA kernel finds the same support
--      by bracketing and then takes the same closed form);
--   α = 1 is softmax (taken exactly, not by bisection); weights are exactly
--   sparse and P·V skips the zeros; the support size per row is returned and
--   reported (support_mean, density = Σ support / visible pairs).
-- Not here: training (gradients, the learned per-head α = 1 + sigmoid(a) of the
--   adaptive model) and the partial-sort (top-k doubling) variant. The method
--   needs a model trained with entmax: on a softmax-trained model (TinyStories)
--   this recipe reports the kernel-level behaviour only — output error against
--   softmax, support size, cost.
-- Fidelity: there is no log-sum-exp, so recall through L does not apply; the
--   recipe returns no lse and the evaluation records rel_l2 / cosine against
--   softmax dense, plus density (support) — never a recall.
-- Divergences from the reference (deep-spin/entmax root_finding.py,
--   EntmaxBisectFunction.forward): n in τ_hi counts the visible keys only (the
--   reference counts masked -inf entries too; both brackets are valid and 50
--   halvings reach the same τ to float precision); τ_lo moves when f(τ_m) >= 0,
--   the reference's f_m·f_lo >= 0 (identical unless f_lo = 0 exactly: a row
--   whose max leads all others by >= 1, one-hot either way).
-- Per-head α: α is one value per call here; per-head α runs the op per head.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local ALGO = {sort = 0, bisect = 1}

local function run(prob, p)
  local algo = ALGO[p.algo]
  if not algo then sl.fail("entmax: algo must be 'sort' or 'bisect', found '%s'", tostring(p.algo)) end
  local args = {causal = prob.causal and 1 or 0, alpha = p.alpha, algo = algo, n_iter = p.n_iter,
    backend = prob.backend}
  local t0 = sl.time()
  local o, support = sl.attn.entmax(prob.q, prob.k, prob.v, args)
  local ms = (sl.time() - t0) * 1e3
  local kept, rows = 0, 0
  for _, row in ipairs(E.heads(support)) do
    for _, c in ipairs(row) do kept = kept + c; rows = rows + 1 end
  end
  local d = prob.q:shape()[3]
  local pairs = E.pairs(prob)
  local search = algo == 0 and math.log(math.max(prob.k:shape()[2], 2), 2) or 3 * p.n_iter
  return {o = o, lse = nil, support = support, stats = {
    -- scores over every visible pair, P·V over the support only, the threshold search
    flops = 2 * d * pairs + 2 * d * kept + search * pairs,
    density = pairs > 0 and kept / pairs or 0, support_mean = kept / math.max(rows, 1),
    estimate_ms = 0, execute_ms = ms}}
end

return {
  id = "entmax",
  card = "entmax",
  title = "Adaptively Sparse Transformers (α-entmax / sparsemax attention)",
  family = "non-softmax",
  phase = "both",
  summary = "α-entmax weights (α = 2 sparsemax, 1.5 entmax, 1 softmax): exact zeros below a threshold τ; needs a model trained with it.",
  knob = "alpha",
  knob_direction = -1,
  params = {
    alpha = {default = 1.5, min = 1, max = 2, doc = "α: 1 softmax, 1.5 entmax-1.5, 2 sparsemax (larger is sparser)"},
    algo = {default = "sort", doc = "'sort' (exact; α 1, 1.5 or 2) or 'bisect' (any α, deep-spin entmax_bisect)"},
    n_iter = {default = 50, min = 1, max = 200, int = true, doc = "bisection iterations (reference default 50)"},
  },
  ops = {"attn.entmax"},
  checks = {"sparsemax is the Euclidean projection onto the simplex (independent sort-based float64, KKT)",
    "weights sum to one with exact zeros; masked keys get 0", "α → 1 approaches softmax",
    "bisection and sort-based agree (α 1.5 and 2)", "shift invariance", "dominant score gives one-hot",
    "support shrinks as α grows"},
  fidelity = "rel_l2",
  run = run,
}
