-- Trainable Dynamic Mask Sparse Attention (DMA) — card: dma.
-- Card steps implemented (trainable.sparsek with bias = 1):
--   1. content-aware key bias from the values, query-independent, per kv head:
--      dt_j = W_dt · concat_h V[h, j] (+ dt bias), b_{h,j} = A_h · softplus(dt_{h,j})
--      (bias_form "softplus": the implementation's form) or exp(A_h · softplus(dt))
--      (bias_form "exp": the modeling_doge.py example of the README);
--   2. dynamic mask: query t keeps the top-w keys of its causal prefix by b
--      (ties: lower index), per kv head (shared by its query heads);
--   3. attention over the kept keys with logits q·k·scale + b_j.
-- Reference: SmallDoges/flash-dmattn examples/modeling/modeling_doge.py
-- (dt_proj over value_states flattened over kv heads, A, attn_bias; both
-- bias forms appear in its versions). flash_sparse_attn/utils/mask.py
-- (topk_mask, block_smooth, relu_mask) not read: the optional block
-- smoothing and the relu mode are not implemented.
-- Parameters from a file (param `weights`; safetensors, float tensors):
--   dt_proj.weight [Hkv, Hkv·D], dt_proj.bias [Hkv] (optional), A [Hkv];
--   or attn_bias [Hkv, n]: the bias b captured from a model, used as given.
-- Stand-in without weights (params_source "standin:value_norm"): keys
--   selected by ||v_j|| (a query-independent, value-based score as the card
--   suggests) and NO bias added to the logits (a trained A·softplus is
--   unknown; an invented bias would distort the output). Not an oracle.
-- Not fitted here (`sparselab fit-params dma` says so): b enters the logits
--   as well as the selection, so a fit needs the output loss through the
--   top-w selection; not done.
-- Checks: w >= n equals dense attention with the additive bias (test against
-- an independent float64 implementation); selection nested in time.
-- NOT implemented: decode, block smoothing, the relu mode.
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local STANDIN = "standin:value_norm"

local dims = T.dims

local function spec(prob)
  local _, _, d, hkv, nk = dims(prob)
  return {
    {name = "attn_bias", shape = {hkv, nk}, dims = "(kv heads, keys)"},
    {name = "dt_proj.weight", shape = {hkv, hkv * d}, dims = "(kv heads, kv heads·head_dim)", group = "dt"},
    {name = "A", shape = {hkv}, dims = "(kv heads)", group = "dt"},
    {name = "dt_proj.bias", shape = {hkv}, dims = "(kv heads)"},
  }
end

local function softplus(x) return x > 20 and x or math.log(1 + math.exp(x)) end

-- b [Hkv, Nk] from dt_proj and A over the values.
local function bias_from(prob, ws, form)
  local _, _, d, hkv, nk = dims(prob)
  local V, W, A = E.heads(prob.v), ws["dt_proj.weight"]:totable(), ws.A:totable()
  local Bb = ws["dt_proj.bias"] and ws["dt_proj.bias"]:totable() or nil
  local b = {}
  for h = 1, hkv do
    local row, w = {}, W[h]
    for j = 1, nk do
      local dt = Bb and Bb[h] or 0
      for g = 1, hkv do
        local vj, off = V[g][j], (g - 1) * d
        for e = 1, d do dt = dt + w[off + e] * vj[e] end
      end
      local x = A[h] * softplus(dt)
      row[j] = form == "exp" and math.exp(x) or x
    end
    b[h] = row
  end
  return sl.tensor(b)
end

local function value_norms(prob)
  local _, _, d, hkv, nk = dims(prob)
  local V = E.heads(prob.v)
  local u = {}
  for h = 1, hkv do
    local row = {}
    for j = 1, nk do
      local s = 0
      for e = 1, d do s = s + V[h][j][e] ^ 2 end
      row[j] = math.sqrt(s)
    end
    u[h] = row
  end
  return sl.tensor(u)
end

local M = {
  id = "dma",
  card = "dma",
  title = "Trainable Dynamic Mask Sparse Attention",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "Top-w keys of the causal prefix by a value-derived learned bias, which is also added to the logits.",
  knob = "w",
  params = {
    w = {default = 2048, min = 0, int = true, doc = "kept keys per query (keep_window_size)"},
    bias_form = {default = "softplus", doc = "softplus: b = A·softplus(dt); exp: b = exp(A·softplus(dt))"},
    weights = {default = "", doc = "safetensors file with dt_proj.weight and A, or attn_bias (empty: stand-in)"},
  },
  ops = {"trainable.sparsek"},
  checks = {"w >= n equals dense attention with the additive bias (float64 reference)",
    "kept set nested in time", "score-blind selection loses recall", "bad weight files: one-line errors"},
  params_sources = {STANDIN, "sha256:<weights file>"},
  fit_why = "the bias enters the logits as well as the top-w selection; fitting needs the output loss through the selection (not done)",
}

--- The bias/score of a run and whether it enters the logits.
function M.scores(prob, p)
  if p.bias_form ~= "softplus" and p.bias_form ~= "exp" then
    sl.fail("dma: bias_form must be 'softplus' or 'exp', found '%s'", tostring(p.bias_form))
  end
  if (p.weights or "") == "" then return value_norms(prob), false, STANDIN end
  local ws = T.load_weights("dma", p.weights, spec(prob))
  if ws.attn_bias and ws.A then
    sl.fail("dma: weights %s: holds both attn_bias and dt_proj/A; expected one form", p.weights)
  end
  if ws["dt_proj.bias"] and not ws.A then
    sl.fail("dma: weights %s: tensor 'dt_proj.bias' given without dt_proj.weight and A", p.weights)
  end
  if not ws.attn_bias and not ws.A then
    sl.fail("dma: weights %s: holds neither attn_bias [kv heads, keys] nor dt_proj.weight and A", p.weights)
  end
  return ws.attn_bias or bias_from(prob, ws, p.bias_form), true, T.file_source(p.weights)
end

function M.run(prob, p)
  local b, with_bias, source = M.scores(prob, p)
  local args = {k = p.w, window = 0, weight = 0, bias = with_bias and 1 or 0, backend = prob.backend}
  local o, lse, count = sl.trainable.sparsek(prob.q, prob.k, prob.v, b, args)
  p.params_source = source
  return {o = o, lse = lse, params_source = source,
    stats = {flops = sl.op_flops("trainable.sparsek", prob.q, prob.k, prob.v, b, args),
      density = T.count_density(prob, count),
      bias_in_logits = with_bias and 1 or 0}}
end

return M
