-- HySparse: A Hybrid Sparse Attention Architecture with Oracle Token
-- Selection and KV Cache Sharing — card: hysparse (one sparse layer S_m).
-- Card steps implemented:
--   1. the full layer F's block-max probabilities R[t, i] = max_{j in block
--      i, j <= t} softmax_t(q_t·k_j/sqrt(D)) (score.exact, reduce = max,
--      bq = 1, bk = block): from the full layer's Q, K given in the weights
--      file (full_q, full_k: the cross-layer use) or captured R given as is;
--      without a file from the evaluated layer itself (an ORACLE, below);
--   2. GQA: R max-reduced over the query heads of a kv group: one block set
--      per kv head (every head of a group uses it);
--   3. top-(n_sel / block) blocks per query row among its causal blocks
--      (ties: lower block);
--   4. the sparse layer: (a) block-sparse branch over the selected blocks
--      (causal inside the own block) with the evaluated layer's own K, V — the
--      card's reuse of F's KV cache needs a model trained that way and is NOT
--      emulated (full_k / full_v are not read for the branch); (b) SWA branch
--      over the last `window` keys (the query included); (c) gated fusion
--      o = g_sparse ⊙ o_sparse + g_swa ⊙ o_swa with per-token gates
--      (σ(W x) in the card: x is not captured, so the gates come per head and
--      token from the file, or the stand-in's 0.5 = σ(0));
--      both branches with a per-head learnable sink bias b (GPT-OSS style: one
--      extra logit with a zero value in the softmax), applied exactly as
--      o · 1/(1 + exp(b − lse)) on the branch's output; no file: no sink.
-- Reference: none public (Xiaomi; the card's secondary note).
-- Parameters from a file (param `weights`; safetensors, float tensors; names ours):
--   R [Hkv, n, nb]                 F's block-max probabilities, GQA-reduced (nb = ceil(n / block));
--   full_q [Hq, n, D], full_k [Hkv, n, D]   F's queries and keys (R computed from them);
--   g_sparse, g_swa [Hq, n]        gates in [0, 1] (sigmoid outputs);
--   sink_sparse, sink_swa [Hq]     sink logits.
-- Stand-in without a file (params_source
--   "oracle:same_layer_block_max+gates(0.5,0.5)"): R from the evaluated
--   layer's own exact map — an oracle (it reads the exact attention) —,
--   gates 0.5, no sinks. swa = 0 drops the SWA branch (the card's ablation;
--   g_sparse is then 1 unless the file gives it).
-- Fitting: not done — the gates read the hidden state x (not in Q/K/V
--   captures) and the sparse layers' projections and sinks are trained with
--   the model; `fit-params hysparse` says so.
-- Density: keys attended by the union of both branches over causal keys;
--   out.lse is the lse of that union (for recall against dense), out.o the
--   gated, sink-scaled sum.
-- NOT implemented: F's KV reuse in the sparse branch, decode state, the
--   FlashAttention side-output kernel (score.exact computes R directly).
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local dims = T.dims
local STANDIN = "oracle:same_layer_block_max+gates(0.5,0.5)"

local M = {
  id = "hysparse",
  card = "hysparse",
  title = "HySparse: full-attention oracle layers feeding sparse layers (block-max selection + SWA, gated, sinks)",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "Top blocks by the full layer's block-max probabilities (GQA max) + sliding window, gated sum with sink biases.",
  knob = "n_sel",
  params = {
    block = {default = 64, min = 1, int = true, doc = "key block size B"},
    n_sel = {default = 1024, min = 1, int = true, doc = "selected tokens per query (n_sel / B blocks)"},
    window = {default = 128, min = 0, int = true, doc = "SWA keys (the query included)"},
    swa = {default = 1, min = 0, max = 1, int = true, doc = "0: drop the SWA branch (ablation)"},
    weights = {default = "", doc = "safetensors file with R or full_q/full_k, gates and sinks (empty: the oracle stand-in)"},
  },
  ops = {"score.exact", "attn.token_sparse"},
  checks = {"R = max over the block of the dense probabilities (naive float64)", "one block set per GQA group",
    "all blocks, gates (1, 0), no sink equals dense", "independent float64 HySparse (sinks, gates) to 1e-5",
    "score-blind R loses recall", "bad weight files: one-line errors"},
  params_sources = {STANDIN, "sha256:<weights file>"},
  fit_why = "the gates read the hidden state x (not captured) and the sparse layers' projections and sinks train with the model",
}

--- R [Hkv][n][nb] (Lua) from queries and keys: block max of the causal probabilities, max over the group.
function M.block_max(q, k, block, backend)
  local hq, hkv = q:shape()[1], k:shape()[1]
  local g = hq // hkv
  local S = E.heads(sl.score.exact(q, k, {bq = 1, bk = block, reduce = 1, causal = 1, backend = backend}))
  local R = {}
  for kv = 1, hkv do
    local acc = {}
    for h = (kv - 1) * g + 1, kv * g do
      local Sh = S[h]
      for t = 1, #Sh do
        acc[t] = acc[t] or {}
        for i = 1, #Sh[t] do acc[t][i] = math.max(acc[t][i] or -math.huge, Sh[t][i]) end
      end
    end
    R[kv] = acc
  end
  return R
end

--- R as M.block_max gives it, computed one block of query rows at a time on
--- first use (rows r0..r1 against keys 0..r1: the causal offset of the
--- narrowed problem is the rows' own position), holding only the current
--- block: memory O(n · rows) instead of the n × nb table. Read it in row
--- order (M.select does).
function M.block_max_rows(q, k, block, backend)
  local hkv, n = k:shape()[1], q:shape()[2]
  local rows = math.max(1, 65536 // ((n + block - 1) // block))
  local r0, cur = nil, nil
  local R = {}
  for kv = 1, hkv do
    R[kv] = setmetatable({}, {__index = function(_, t)
      if not r0 or t < r0 or t >= r0 + rows then
        r0 = (t - 1) // rows * rows + 1
        local r1 = math.min(n, r0 + rows - 1)
        cur = M.block_max(q:narrow(2, r0, r1 - r0 + 1), k:narrow(2, 1, r1), block, backend)
      end
      return cur[kv][t - r0 + 1]
    end})
  end
  return R
end

local function spec(prob, block)
  local hq, n, d, hkv = dims(prob)
  local nb = (n + block - 1) // block
  return {
    {name = "R", shape = {hkv, n, nb}, dims = "(kv heads, query rows, key blocks)"},
    {name = "full_q", shape = {hq, n, d}, dims = "(query heads, tokens, head_dim)", group = "full"},
    {name = "full_k", shape = {hkv, n, d}, dims = "(kv heads, tokens, head_dim)", group = "full"},
    {name = "g_sparse", shape = {hq, n}, dims = "(query heads, tokens)", range = {0, 1}, range_why = "sigmoid gates"},
    {name = "g_swa", shape = {hq, n}, dims = "(query heads, tokens)", range = {0, 1}, range_why = "sigmoid gates"},
    {name = "sink_sparse", shape = {hq}, dims = "(query heads)"},
    {name = "sink_swa", shape = {hq}, dims = "(query heads)"},
  }
end

--- The parameters: R, gates, sinks (Lua tables; sinks nil = none) and params_source.
function M.load_params(prob, p)
  local hq, n = dims(prob)
  local function const(x) local g = {} for h = 1, hq do g[h] = {} for t = 1, n do g[h][t] = x end end return g end
  local gs_default = p.swa == 1 and 0.5 or 1
  if (p.weights or "") == "" then
    return {R = M.block_max_rows(prob.q, prob.k, p.block, prob.backend), g_sparse = const(gs_default), g_swa = const(0.5)}, STANDIN
  end
  local ws = T.load_weights("hysparse", p.weights, spec(prob, p.block))
  if ws.R and ws.full_q then sl.fail("hysparse: weights %s: holds both R and full_q/full_k; expected one of them", p.weights) end
  if not ws.R and not ws.full_q then sl.fail("hysparse: weights %s: holds neither R nor full_q/full_k", p.weights) end
  local out = {R = ws.R and E.heads(ws.R) or M.block_max_rows(ws.full_q, ws.full_k, p.block, prob.backend)}
  out.g_sparse = ws.g_sparse and ws.g_sparse:totable() or const(gs_default)
  out.g_swa = ws.g_swa and ws.g_swa:totable() or const(0.5)
  out.sink_sparse = ws.sink_sparse and ws.sink_sparse:totable()
  out.sink_swa = ws.sink_swa and ws.sink_swa:totable()
  return out, T.file_source(p.weights)
end

--- Per kv head and row the selected blocks (0-based, ascending).
function M.select(R, n, block, nsel)
  local nblk = math.max(1, nsel // block)
  local sel = {}
  for kv = 1, #R do sel[kv] = {} end
  for t = 1, n do   -- rows outer: R may be computed in row blocks (M.block_max_rows)
    for kv = 1, #R do
      local vis = (t - 1) // block + 1
      local row, order = R[kv][t], {}
      for i = 1, vis do order[i] = i end
      table.sort(order, function(a, b) if row[a] ~= row[b] then return row[a] > row[b] end return a < b end)
      local s = {}
      for i = 1, math.min(nblk, vis) do s[i] = order[i] - 1 end
      table.sort(s)
      sel[kv][t] = s
    end
  end
  return sel
end

local function attend(prob, row_ptr, col)
  local o, lse, flops = T.token_sparse(prob, row_ptr, col)
  return o:totable(), lse:totable(), flops
end

function M.run(prob, p)
  local hq, n, d, hkv, nk = dims(prob)
  if n ~= nk then sl.fail("hysparse: %d queries and %d keys; expected self-attention over one sequence (prefill)", n, nk) end
  local P, source = M.load_params(prob, p)
  local g = hq // hkv
  local sel = M.select(P.R, n, p.block, p.n_sel)
  local rp_s, col_s, rp_w, col_w, union = {}, {}, {}, {}, 0
  for h = 1, hq do
    local kv = (h - 1) // g + 1
    local rs, rw = {#col_s}, {#col_w}
    for t = 1, n do
      local seen = {}
      for _, b in ipairs(sel[kv][t]) do
        for j = b * p.block, math.min(t, (b + 1) * p.block) - 1 do col_s[#col_s + 1] = j; seen[j] = true; union = union + 1 end
      end
      rs[#rs + 1] = #col_s
      if p.swa == 1 then
        for j = math.max(0, t - p.window), t - 1 do
          col_w[#col_w + 1] = j
          if not seen[j] then union = union + 1 end
        end
      end
      rw[#rw + 1] = #col_w
    end
    rp_s[h], rp_w[h] = rs, rw
  end
  local Os, Ls, f1 = attend(prob, rp_s, col_s)
  local Ow, Lw, f2 = attend(prob, rp_w, col_w)
  local function sink_scale(b, lse) -- exp(lse) / (exp(lse) + exp(b))
    if not b or lse == -math.huge then return 1 end
    return 1 / (1 + math.exp(b - lse))
  end
  local O = {}
  for h = 1, hq do
    O[h] = {}
    for t = 1, n do
      local a = P.g_sparse[h][t] * sink_scale(P.sink_sparse and P.sink_sparse[h], Ls[h][t])
      local b = p.swa == 1 and P.g_swa[h][t] * sink_scale(P.sink_swa and P.sink_swa[h], Lw[h][t]) or 0
      local row, os, ow = {}, Os[h][t], Ow[h][t]
      for e = 1, d do row[e] = a * os[e] + b * ow[e] end
      O[h][t] = row
    end
  end
  -- lse of the union of the keys both branches read (recall against dense; gates and sinks aside)
  local rp_u, col_u = {}, {}
  for h = 1, hq do
    local ru = {#col_u}
    for t = 1, n do
      local s = {}
      for x = rp_s[h][t] + 1, rp_s[h][t + 1] do s[col_s[x]] = true end
      for x = rp_w[h][t] + 1, rp_w[h][t + 1] do s[col_w[x]] = true end
      local js = {}
      for j in pairs(s) do js[#js + 1] = j end
      table.sort(js)
      for _, j in ipairs(js) do col_u[#col_u + 1] = j end
      ru[#ru + 1] = #col_u
    end
    rp_u[h] = ru
  end
  local _, lse = sl.attn.token_sparse(prob.q, prob.k, prob.v, sl.tensor(rp_u, "i32"),
    #col_u > 0 and sl.tensor(col_u, "i32") or sl.tensor({0}, "i32"):narrow(1, 1, 0), {rows_per_entry = 1, backend = prob.backend})
  p.params_source = source
  return {o = sl.tensor(O), lse = lse, params_source = source,
    stats = {flops = f1 + f2, density = union / (hq * n * (n + 1) / 2)}}
end

return M
