-- Sparser is Faster and Less is More: Efficient Sparse Attention for
-- Long-Range Transformers (SparseK attention) — card: sparsek.
-- Card steps implemented (trainable.sparsek):
--   1. scoring: one query-independent score u_j per key and kv head (the
--      query heads of a GQA group share the kv head's selection, as a
--      constant-size KV cache per kv head would);
--   2. the SPARSEK operator: p = argmin ||p - u||² over 0 <= p <= 1, Σp = k,
--      p_j = clip(u_j - tau, 0, 1); tau by float64 bisection (200 steps)
--      in the op, checked in the tests against the exact breakpoint
--      algorithm (Algorithm 1); the hard set = top-k of u (ties: lower
--      index);
--   3. causal prefix selection: query t selects among keys j <= t;
--      `weight` = 1 scales the selected keys and values by p_j (the
--      third-party reimplementation's reading; the paper's placement is
--      unknown), 0 runs the hard top-k mask (inference);
--   5. a sliding window of `window` keys added (SparseK + local window).
-- Parameters from a file (param `weights`; safetensors, float tensors):
--   u [Hkv, n]                per-key scores captured from a model, used as given;
--   score_w [Hkv, D], score_b [Hkv]   u_j = score_w[kv]·k_j + score_b[kv]: the
--                             paper's linear scorer w_h·x_j with the key k_j
--                             standing in for the hidden state x_j (Q/K/V
--                             captures hold no x); the form fit-params fits.
--   Unknown tensors, missing partners, wrong shapes or dtypes and NaN are
--   one-line errors naming the file and the tensor.
-- Stand-in without weights (params_source "standin:mean_query"): u_j =
--   q̄·k_j / sqrt(D), q̄ the mean query of the kv head's group over the whole
--   input: closed-form, reads no attention map (not an oracle).
-- Fitting (`sparselab fit-params sparsek`): score_w, score_b by closed-form
--   ridge regression (lambda = 1e-3 per key) of y_j = log(mean attention
--   probability key j receives from the queries that see it, summed over the
--   group's heads + 1e-6) on [k_j, 1]; the normal equations solved by
--   Gaussian elimination; the hand gradient of the ridge objective is checked
--   against finite differences in tests/lua/test_methods_trainable.lua.
-- Density: keys attended (selected ∪ window) over causal keys, from the op's
--   count output.
-- NOT implemented: decode with incremental eviction (step 4); the
--   end-to-end training of w_h; the third-party eps·j position bias.
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local STANDIN = "standin:mean_query"

local dims = T.dims

local function spec(prob)
  local _, _, d, hkv, nk = dims(prob)
  return {
    {name = "u", shape = {hkv, nk}, dims = "(kv heads, keys)"},
    {name = "score_w", shape = {hkv, d}, dims = "(kv heads, head_dim)", group = "linear"},
    {name = "score_b", shape = {hkv}, dims = "(kv heads)", group = "linear"},
  }
end

-- u from the linear scorer over the keys.
local function linear_scores(prob, W, B)
  local _, _, d, hkv, nk = dims(prob)
  local K, w, b = E.heads(prob.k), W:totable(), B:totable()
  local u = {}
  for kv = 1, hkv do
    local row, wk, kh = {}, w[kv], K[kv]
    for j = 1, nk do
      local s, kj = b[kv], kh[j]
      for e = 1, d do s = s + wk[e] * kj[e] end
      row[j] = s
    end
    u[kv] = row
  end
  return sl.tensor(u)
end

-- The stand-in: u_j = mean query of the group · k_j / sqrt(D).
local function standin_scores(prob)
  local hq, nq, d, hkv = dims(prob)
  local g = hq // hkv
  local Q = E.heads(prob.q)
  local w, b = {}, {}
  for kv = 1, hkv do
    local m = {}
    for e = 1, d do m[e] = 0 end
    for h = (kv - 1) * g + 1, kv * g do
      for t = 1, nq do local qt = Q[h][t] for e = 1, d do m[e] = m[e] + qt[e] end end
    end
    for e = 1, d do m[e] = m[e] / (g * nq) / math.sqrt(d) end
    w[kv], b[kv] = m, 0
  end
  return linear_scores(prob, sl.tensor(w), sl.tensor(b))
end

local function scores(prob, p)
  if (p.weights or "") == "" then return standin_scores(prob), STANDIN end
  local ws = T.load_weights("sparsek", p.weights, spec(prob))
  if ws.u and ws.score_w then
    sl.fail("sparsek: weights %s: holds both u and score_w/score_b; expected one form", p.weights)
  end
  if not ws.u and not ws.score_w then
    sl.fail("sparsek: weights %s: holds neither u [kv heads, keys] nor score_w/score_b", p.weights)
  end
  local u = ws.u or linear_scores(prob, ws.score_w, ws.score_b)
  return u, T.file_source(p.weights)
end

local M = {
  id = "sparsek",
  card = "sparsek",
  title = "Sparser is Faster and Less is More: Efficient Sparse Attention for Long-Range Transformers",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "Top-k keys of the causal prefix by a learned per-key score (SPARSEK projection), plus a window.",
  knob = "k",
  params = {
    k = {default = 64, min = 0, int = true, doc = "keys selected per query from its prefix"},
    window = {default = 0, min = 0, int = true, doc = "sliding-window keys added (0: none)"},
    weight = {default = 0, min = 0, max = 1, int = true, doc = "1: selected K, V scaled by the SPARSEK projection p"},
    weights = {default = "", doc = "safetensors file with u or score_w/score_b (empty: the mean-query stand-in)"},
  },
  ops = {"trainable.sparsek"},
  checks = {"k >= n equals dense", "independent float64 SparseK (exact breakpoint tau) to 1e-5",
    "score-blind scores lose recall", "bad weight files: one-line errors", "ridge gradient vs finite differences"},
  params_sources = {STANDIN, "sha256:<weights file>"},
}

M.scores = scores

function M.run(prob, p)
  local u, source = scores(prob, p)
  local args = {k = p.k, window = p.window, weight = p.weight, backend = prob.backend}
  local o, lse, count = sl.trainable.sparsek(prob.q, prob.k, prob.v, u, args)
  p.params_source = source
  return {o = o, lse = lse, params_source = source,
    stats = {flops = sl.op_flops("trainable.sparsek", prob.q, prob.k, prob.v, u, args), density = T.count_density(prob, count)}}
end

-- ---- fitting: closed-form ridge regression of score_w, score_b ----

--- Per kv head the regression rows of one problem: x_j = [k_j, 1], y_j =
--- log(mean probability key j receives from the queries that see it, summed
--- over the group + 1e-6).
function M.fit_rows(prob)
  local hq, nq, d, hkv, nk = dims(prob)
  local g = hq // hkv
  local col = E.heads(sl.score.exact(prob.q, prob.k, {bq = nq, bk = 1, causal = 1, backend = prob.backend}))
  local K = E.heads(prob.k)
  local rows = {}
  for kv = 1, hkv do
    local X, Y = {}, {}
    for j = 1, nk do
      local mass = 0
      for h = (kv - 1) * g + 1, kv * g do mass = mass + col[h][1][j] end
      local seen = math.min(nq, nk - j + 1)
      local x = {}
      for e = 1, d do x[e] = K[kv][j][e] end
      x[d + 1] = 1
      X[j], Y[j] = x, math.log(mass / seen + 1e-6)
    end
    rows[kv] = {X = X, Y = Y}
  end
  return rows
end

--- The ridge objective J(w) = Σ_j (x_j·w - y_j)² + lambda·|w|² and its
--- gradient (shared with the other trainable recipes).
M.ridge_loss_grad = T.ridge_loss_grad

--- Fits score_w, score_b on problems (same kv heads and head_dim).
function M.fit(probs, o)
  local _, _, d, hkv = dims(probs[1])
  local data = {}
  for kv = 1, hkv do data[kv] = {X = {}, Y = {}} end
  for i, prob in ipairs(probs) do
    local _, _, di, hi = dims(prob)
    if di ~= d or hi ~= hkv then
      sl.fail("sparsek fit: input %d has %d kv heads of dim %d, input 1 has %d of dim %d; expected the same", i, hi, di,
        hkv, d)
    end
    for kv, r in ipairs(M.fit_rows(prob)) do
      for j = 1, #r.X do table.insert(data[kv].X, r.X[j]); table.insert(data[kv].Y, r.Y[j]) end
    end
  end
  local W, B, before, after = {}, {}, 0, 0
  for kv = 1, hkv do
    local w, l0, l1 = T.ridge(data[kv].X, data[kv].Y, 1e-3)
    before, after = before + l0, after + l1
    W[kv] = {table.unpack(w, 1, d)}
    B[kv] = w[d + 1]
  end
  return {score_w = sl.tensor(W), score_b = sl.tensor(B)},
    {loss_before = before / hkv, loss_after = after / hkv, optimiser = "ridge least squares (closed form, lambda=1e-3/key)"}
end

return M
