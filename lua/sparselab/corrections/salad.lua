-- SALAD: Achieve High-Sparsity Attention via Efficient Linear Attention
-- Tuning for Video Diffusion Transformer — card: salad (correction:
-- attn.linear + correct.linear_branch).
-- Card steps implemented (any base method is the sparse branch, step 1):
--   2. linear branch O_l = phi(q)ᵀ Σ phi(k) vᵀ / phi(q)ᵀ Σ phi(k) on the same
--      (shared-projection) Q, K, V (attn.linear; causal when the problem is);
--   4. a scalar gate per sample (one value for every token and head);
--   5. fusion Ō = O_s + G·Proj_l(O_l) (correct.linear_branch).
-- Not here: training (steps 3, 6: no trained weights exist — no public code),
-- the 3-D RoPE inside the branch, v2's multi-level scaling, branch dropping.
-- Without trained weights (the default) the gate comes from a stated closed
-- form, "the attention mass the sparse branch misses":
--   G = 1 - mean over heads and `gate_rows` evenly spaced rows i of
--       exp(L_s,i - L_i), L_i the dense log-normaliser of row i (attn.rows),
-- and the fusion is the convex one (convex = true): Ō = (1 - G)·O_s + G·O_l,
-- i.e. Proj_l = identity applied to O_l - O_s — the linear branch (an
-- estimate of all of attention) stands in for the missed mass. gate = g in
-- [0, 1] fixes G instead (ablations, the card's fixed-g bench).
-- weights = path of a safetensors file: "proj" [D, D] or [1 or H, D, D]
-- (Proj_l) and optionally "gate_w" [D], "gate_b" [1] giving
-- G = sigmoid(gate_w · x̄ + gate_b); x̄ = mean of q over heads and the gate
-- rows (the layer input x is not part of a problem: q stands in for it).
-- With weights the fusion is the card's (convex = false unless set).
-- Unknowns chosen: phi = elu(x) + 1 (feature = 0; the card: unknown), no scale
-- inside phi; the gate's pooling of x (mean over tokens).
local sl = require "sparselab"


-- gate_rows rows spread evenly over [0, n_q): the first, the last and between.
local function gate_rows(n_q, r)
  local rows = {}
  if r >= n_q then
    for i = 0, n_q - 1 do rows[#rows + 1] = i end
  elseif r == 1 then
    rows[1] = n_q - 1
  else
    for t = 0, r - 1 do rows[#rows + 1] = (t * (n_q - 1)) // (r - 1) end
  end
  return rows
end

local function load_weights(path, h, d)
  local ok, t = pcall(sl.load, path)
  if not ok then sl.fail("salad: weights '%s': %s", path, tostring(t)) end
  if type(t) ~= "table" then sl.fail("salad: weights '%s' must be a safetensors file", path) end
  local w = {}
  if t.proj then
    local s = t.proj:shape()
    if #s == 2 and s[1] == d and s[2] == d then
      w.proj = sl.tensor({t.proj:totable()}) -- [1, D, D]: one projection for every head
    elseif #s == 3 and (s[1] == 1 or s[1] == h) and s[2] == d and s[3] == d then
      w.proj = t.proj
    else
      sl.fail("salad: weights '%s': proj must be [%d, %d] or [1 or %d, %d, %d]", path, d, d, h, d, d)
    end
  end
  if t.gate_w then
    local s = t.gate_w:shape()
    if #s ~= 1 or s[1] ~= d then sl.fail("salad: weights '%s': gate_w must be [%d]", path, d) end
    w.gate_w = t.gate_w:totable()
    w.gate_b = t.gate_b and t.gate_b:totable()[1] or 0
  end
  if not w.proj and not w.gate_w then sl.fail("salad: weights '%s' hold neither proj nor gate_w", path) end
  return w
end

return {
  id = "salad",
  card = "salad",
  aliases = {"linear_branch"},
  title = "SALAD: Achieve High-Sparsity Attention via Efficient Linear Attention Tuning for Video Diffusion Transformer",
  summary = "a linear-attention branch beside the sparse one, mixed in by a scalar gate (closed form: the mass " ..
    "the sparse branch misses on sampled rows; or trained weights from a file)",
  params = {
    feature = {default = 0, min = 0, max = 1, int = true, doc = "linear-branch feature map: 0 elu(x)+1, 1 relu(x)"},
    gate = {default = -1, min = -1, max = 1, doc = "-1: the closed-form gate (or the file's); g in [0, 1]: fixed"},
    gate_rows = {default = 64, min = 1, max = 1 << 30, int = true, doc = "rows the closed-form gate samples"},
    convex = {default = true, doc = "true: (1 - G)·O_s + G·P·O_l; false: the card's O_s + G·P·O_l"},
    weights = {default = "", doc = "safetensors with proj [D, D] and gate_w [D], gate_b [1] (trained SALAD parts)"},
  },
  ops = {"attn.linear", "attn.rows", "correct.linear_branch"},
  checks = {"gate 0: output equals the sparse branch exactly", "full mask: closed-form gate is 0, output equals dense",
    "linear-branch row weights are non-negative and sum to one (constant values come back)",
    "the gate is one scalar per sample (every token and head)", "gate 1, convex: output equals the linear branch"},
  after = function(prob, p, base)
    local branch = sl.correct.op("linear_branch")
    local qs = prob.q:shape()
    local h, n, d = qs[1], qs[2], qs[3]
    local causal = prob.causal ~= false
    local largs = {causal = causal, feature = p.feature, backend = prob.backend}
    local o_lin = sl.attn.linear(prob.q, prob.k, prob.v, largs)
    local flops = sl.op_flops("attn.linear", prob.q, prob.k, prob.v, largs)
    local w = p.weights ~= "" and load_weights(p.weights, h, d) or nil
    local rows = gate_rows(n, p.gate_rows)
    local g, from_file = p.gate, 0
    if g < 0 and w and w.gate_w then
      -- x̄: mean of q over heads and the gate rows
      local x, cnt = {}, 0
      for c = 1, d do x[c] = 0 end
      for hh = 1, h do
        for _, r in ipairs(rows) do
          for c = 1, d do x[c] = x[c] + prob.q:get(hh, r + 1, c) end
          cnt = cnt + 1
        end
      end
      local z = w.gate_b
      for c = 1, d do z = z + w.gate_w[c] * x[c] / cnt end
      g, from_file = 1 / (1 + math.exp(-z)), 1
    elseif g < 0 then
      if not base.lse then sl.fail("salad: the closed-form gate needs the base method's lse") end
      local off = prob.k:shape()[2] - n
      local limits = {}
      for i, r in ipairs(rows) do limits[i] = causal and (off + r + 1) or prob.k:shape()[2] end
      local rt, lt = sl.tensor({rows}, "i32"), sl.tensor({limits}, "i32")
      local rargs = {backend = prob.backend}
      local _, l_rows = sl.attn.rows(prob.q, prob.k, prob.v, rt, lt, rargs)
      flops = flops + sl.op_flops("attn.rows", prob.q, prob.k, prob.v, rt, lt, rargs)
      local kept, cnt = 0, 0
      for hh = 1, h do
        for i, r in ipairs(rows) do
          local ld, ls = l_rows:get(hh, i), base.lse:get(hh, r + 1)
          if ld > -math.huge then
            kept = kept + (ls > -math.huge and math.min(1, math.exp(ls - ld)) or 0)
            cnt = cnt + 1
          end
        end
      end
      g = cnt > 0 and math.max(0, math.min(1, 1 - kept / cnt)) or 0
      rt:close(); lt:close()
    end
    local gt = sl.tensor({g})
    local bargs = {convex = p.convex, backend = prob.backend, proj = w and w.proj or nil}
    local o = branch(base.o, o_lin, gt, bargs)
    flops = flops + sl.op_flops("correct.linear_branch", base.o, o_lin, gt, bargs)
    o_lin:close()
    return {o = o, lse = base.lse, stats = {correction_flops = flops, salad_gate = g, salad_gate_from_file = from_file}}
  end,
}
