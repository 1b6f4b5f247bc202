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
--   gate_logits [Hq, 2]            per-head constant gates σ(logit) (sparse, swa): the
--                                  fitted form (issue 14, session 4); a file with it
--                                  and no R/full_q selects by the stand-in's oracle
--                                  (params_source "sha256:<hex>+oracle:same_layer_block_max").
-- Fitting (`sparselab fit-params hysparse`, session 4): per-head constant
--   gates (gate_logits) and the two sink logits by Adam on the output error
--   vs dense (hand gradient checked against finite differences); selection
--   held at the stand-in's oracle. Not fitted: the gates on x (x is not
--   captured) and the projections (trained with the model).
-- Density: keys attended by the union of both branches over causal keys;
--   out.lse is the lse of that union (for recall against dense), out.o the
--   gated, sink-scaled sum.
-- Execution (issue 19: memory linear in n with a small constant): one block
--   of query rows at a time — R of those rows only (score.exact + reduce.heads,
--   or the file's rows), the top blocks by page.select (ranking by R
--   descending, ties to the lower block; R's causal future is below every
--   visible block), the block branch by page.attend (pages = blocks, causal);
--   the SWA branch is one attn.lines call (diagonals 0..window-1); the
--   union's lse continues the block branch's softmax (attn.token_sparse with
--   state) over the window keys outside the selected blocks. No n x n_sel
--   list exists (the earlier Lua CSR lists took 530 MB at n = 8192, one
--   head; now 18 MB). Selection, density and FLOPs are those of the list
--   form, outputs equal to rounding (test_methods_trainable2.lua).
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
  ops = {"score.exact", "reduce.heads", "page.select", "page.attend", "attn.lines", "attn.token_sparse"},
  checks = {"R = max over the block of the dense probabilities (naive float64)", "one block set per GQA group",
    "all blocks, gates (1, 0), no sink equals dense", "independent float64 HySparse (sinks, gates) to 1e-5",
    "score-blind R loses recall", "bad weight files: one-line errors", "fit: hand gradient equals finite differences",
    "fitted gates and sinks beat the stand-in on held-out texts"},
  params_sources = {STANDIN, "sha256:<weights file>"},
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
    {name = "gate_logits", shape = {hq, 2}, dims = "(query heads, [sparse, swa])"},
  }
end

--- R of query rows r0..r1 (1-based, inclusive) as a tensor [Hkv, r1 - r0 + 1,
--- ceil(r1 / block)]: from queries and keys, score.exact of those rows
--- against keys 1..r1 (the narrowed problem's causal offset is the rows' own
--- position) max-reduced over each GQA group by reduce.heads; future blocks
--- hold 0, below every visible block's value (> 0), so the top-k ranking
--- (ties: lower block) never prefers them.
function M.block_max_tensor(q, k, block, r0, r1, backend)
  local hkv = k:shape()[1]
  local S = sl.score.exact(q:narrow(2, r0, r1 - r0 + 1), k:narrow(2, 1, r1),
    {bq = 1, bk = block, reduce = 1, causal = 1, backend = backend})
  local g = q:shape()[1] // hkv
  if g == 1 then return S end
  return sl.reduce.heads(S, {group = g, mode = 1, backend = backend})
end

--- R of rows r0..r1 from a given R tensor [Hkv, n, nb]: its visible blocks,
--- -inf in the causal future (a file's values there are never ranked).
local function file_rows(R, block, r0, r1)
  local nb1 = (r1 + block - 1) // block
  local t = R:narrow(2, r0, r1 - r0 + 1):narrow(3, 1, nb1):totable()
  for kv = 1, #t do
    for x, row in ipairs(t[kv]) do
      for i = (r0 + x - 2) // block + 2, nb1 do row[i] = -math.huge end
    end
  end
  return sl.tensor(t)
end

--- The parameters: R, gates, sinks (Lua tables; sinks nil = none) and params_source.
function M.load_params(prob, p)
  local hq, n = dims(prob)
  local function const(x) local g = {} for h = 1, hq do g[h] = {} for t = 1, n do g[h][t] = x end end return g end
  local gs_default = p.swa == 1 and 0.5 or 1
  if (p.weights or "") == "" then
    return {rows = function(r0, r1) return M.block_max_tensor(prob.q, prob.k, p.block, r0, r1, prob.backend) end,
      g_sparse = const(gs_default), g_swa = const(0.5)}, STANDIN
  end
  local ws = T.load_weights("hysparse", p.weights, spec(prob, p.block))
  if ws.R and ws.full_q then sl.fail("hysparse: weights %s: holds both R and full_q/full_k; expected one of them", p.weights) end
  if ws.gate_logits and (ws.g_sparse or ws.g_swa) then
    sl.fail("hysparse: weights %s: holds both per-token gates (g_sparse, g_swa) and gate_logits; expected one form", p.weights)
  end
  local source = T.file_source(p.weights)
  -- a fitted file (gate_logits, sinks: `fit-params hysparse`) selects as it was fitted: by the stand-in's oracle
  local oracle_sel = not ws.R and not ws.full_q and ws.gate_logits
  if not ws.R and not ws.full_q and not oracle_sel then
    local hq, n, d, hkv = dims(prob)
    local found = {}
    for name in pairs(ws) do found[#found + 1] = name end
    table.sort(found)
    sl.fail("hysparse: weights %s: holds neither R nor full_q/full_k (found: %s); expected R %s (kv heads, query rows, " ..
      "key blocks), or full_q %s (query heads, tokens, head_dim) with full_k %s (kv heads, tokens, head_dim), or " ..
      "gate_logits %s (query heads, [sparse, swa]: the fitted form, selecting by the oracle)", p.weights,
      #found > 0 and table.concat(found, ", ") or "no tensor", T.shape_str{hkv, n, (n + p.block - 1) // p.block},
      T.shape_str{hq, n, d}, T.shape_str{hkv, n, d}, T.shape_str{hq, 2})
  end
  local out = {rows = function(r0, r1)
    if ws.R then return file_rows(ws.R, p.block, r0, r1) end
    if oracle_sel then return M.block_max_tensor(prob.q, prob.k, p.block, r0, r1, prob.backend) end
    return M.block_max_tensor(ws.full_q, ws.full_k, p.block, r0, r1, prob.backend)
  end}
  if oracle_sel then source = source .. "+oracle:same_layer_block_max" end
  out.g_sparse = ws.g_sparse and ws.g_sparse:totable() or const(gs_default)
  out.g_swa = ws.g_swa and ws.g_swa:totable() or const(0.5)
  if ws.gate_logits then
    local gl = ws.gate_logits:totable()
    local function sig(z) return 1 / (1 + math.exp(-z)) end
    for h = 1, hq do
      for t = 1, n do out.g_sparse[h][t], out.g_swa[h][t] = sig(gl[h][1]), sig(gl[h][2]) end
    end
  end
  out.sink_sparse = ws.sink_sparse and ws.sink_sparse:totable()
  out.sink_swa = ws.sink_swa and ws.sink_swa:totable()
  return out, source
end

--- Entries of R held at once (query heads x rows of a row block x key
--- blocks: 4 MiB of floats); tests lower it to run many row blocks on small
--- problems.
M.row_budget = 1048576

--- The sparse layer, one block of query rows at a time (memory O(n) at any
--- n: nothing of size n x n or n x n_sel is held): per row block, R of its
--- rows, page.select's top-(n_sel / block) blocks per kv head (ascending, ties
--- to the lower block), page.attend over them (causal inside the own block);
--- the SWA branch is one attn.lines call over the diagonals 0..window-1; the
--- union's lse continues the sparse branch's online softmax (attn.token_sparse
--- with state) over the window keys outside the selected blocks.
function M.run(prob, p, collect)
  local hq, n, d, hkv, nk = dims(prob)
  if n ~= nk then sl.fail("hysparse: %d queries and %d keys; expected self-attention over one sequence (prefill)", n, nk) end
  local P, source = M.load_params(prob, p)
  local g = hq // hkv
  local B, W = p.block, p.swa == 1 and p.window or 0
  local nblk = math.max(1, p.n_sel // B)
  local q, k, v, be = prob.q, prob.k, prob.v, prob.backend
  local flops, union = 0, 0
  -- SWA branch: row i attends keys i - o for o = 0 .. W-1 (the query included)
  local Ow, Lw
  if W > 0 then
    local offs = {}
    for o = 0, W - 1 do offs[o + 1] = o end
    local cols, offt = sl.zeros({1, 0}, "i32"), sl.tensor({offs}, "i32")
    local o, l = sl.attn.lines(q, k, v, cols, offt, {backend = be})
    Ow, Lw = o, l
    flops = flops + sl.op_flops("attn.lines", q, k, v, cols, offt, {})
  end
  local function sink_scale(b, lse) -- exp(lse) / (exp(lse) + exp(b))
    if not b or lse == -math.huge then return 1 end
    return 1 / (1 + math.exp(b - lse))
  end
  local nb = (n + B - 1) // B
  -- rows per block: R holds hq x rows x nb floats, the Lua lists of window
  -- keys outside the selected blocks at most hkv x rows x W entries
  local rows = math.max(1, math.min(n, M.row_budget // (hq * nb), M.row_budget // (8 * hkv * math.max(W, nblk))))
  local oparts, lparts = {}, {}
  for r0 = 1, n, rows do
    local r1 = math.min(n, r0 + rows - 1)
    local qr, kr, vr = q:narrow(2, r0, r1 - r0 + 1), k:narrow(2, 1, r1), v:narrow(2, 1, r1)
    local pages = sl.page.select(P.rows(r0, r1), {k = nblk, group = 1, sink = 0, last = 0, backend = be})
    local pa = {page = B, causal = 1, backend = be}
    local Os, Ls = sl.page.attend(qr, kr, vr, pages, pa)
    -- per kv head and row: keys in the selected blocks, the window keys outside them
    local pt = pages:totable()
    local rp, col = {}, {}
    for kv = 1, hkv do
      local r = {#col}
      for x, list in ipairs(pt[kv]) do
        local pos = r0 + x - 2   -- 0-based position of the row
        local sel = {}
        for _, b in ipairs(list) do
          if b >= 0 and b * B <= pos then
            sel[b] = true
            local keys = g * (math.min(pos + 1, (b + 1) * B) - b * B)
            union = union + keys
            -- FLOPs of the pairs kept (page.attend's own count charges whole pages)
            flops = flops + 4 * d * keys
          end
        end
        for j = math.max(0, pos - W + 1), pos do
          if W > 0 and not sel[j // B] then col[#col + 1] = j; union = union + g end
        end
        r[#r + 1] = #col
      end
      rp[kv] = r
    end
    local Lu = Ls
    if #col > 0 then
      local _
      _, Lu = sl.attn.token_sparse(qr, kr, vr, sl.tensor(rp, "i32"), sl.tensor(col, "i32"),
        {rows_per_entry = 1, state_o = Os, state_lse = Ls, backend = be})
    end
    -- gated fusion of the two branches (sink-scaled) for these rows
    local O = {}
    local ls, lw = Ls:totable(), Lw and Lw:narrow(2, r0, r1 - r0 + 1):totable()
    for h = 1, hq do   -- one head at a time: Lua holds rows x d numbers
      local os = Os:narrow(1, h, 1):totable()[1]
      local ow = Ow and Ow:narrow(1, h, 1):narrow(2, r0, r1 - r0 + 1):totable()[1]
      O[h] = {}
      if collect then   -- the branches of the fit (M.fit): outputs and lse per head and row
        for key in pairs{os = 1, ls = 1, ow = 1, lw = 1} do collect[key] = collect[key] or {} collect[key][h] = collect[key][h] or {} end
        for x = 1, r1 - r0 + 1 do
          local t = r0 + x - 1
          collect.os[h][t], collect.ls[h][t] = os[x], ls[h][x]
          if ow then collect.ow[h][t], collect.lw[h][t] = ow[x], lw[h][x] end
        end
      end
      for x = 1, r1 - r0 + 1 do
        local t = r0 + x - 1
        local a = P.g_sparse[h][t] * sink_scale(P.sink_sparse and P.sink_sparse[h], ls[h][x])
        local row, rs = {}, os[x]
        if ow then
          local b = P.g_swa[h][t] * sink_scale(P.sink_swa and P.sink_swa[h], lw[h][x])
          local rw = ow[x]
          for e = 1, d do row[e] = a * rs[e] + b * rw[e] end
        else
          for e = 1, d do row[e] = a * rs[e] end
        end
        O[h][x] = row
      end
    end
    oparts[#oparts + 1], lparts[#lparts + 1] = sl.tensor(O), Lu
  end
  local o = #oparts == 1 and oparts[1] or sl.cat(oparts, 2)
  local lse = #lparts == 1 and lparts[1] or sl.cat(lparts, 2)
  p.params_source = source
  return {o = o, lse = lse, params_source = source,
    stats = {flops = flops, density = union / (hq * n * (n + 1) / 2)}}
end

-- ---- fitting per-head constant gates and sinks (issue 14, session 4) ----

local function sigmoid(z) return 1 / (1 + math.exp(-z)) end

--- The fit's data of one problem: the two branches (output and lse per
--- head and row, the stand-in's selection) and dense attention, as tables.
function M.fit_data(prob, p)
  local q0 = {}
  for key, val in pairs(p) do q0[key] = val end
  q0.weights = ""
  local c = {}
  M.run(prob, q0, c)
  local hq, n, d = dims(prob)
  local dense = E.heads((sl.attn.dense(prob.q, prob.k, prob.v, {causal = true, backend = prob.backend})))
  return {os = c.os, ls = c.ls, ow = p.swa == 1 and p.window > 0 and c.ow or nil, lw = c.lw, dense = dense, hq = hq, n = n, d = d}
end

--- Loss (mean squared output error vs dense) and gradient at x = {u[1..Hq],
--- w[1..Hq], s[1..Hq], r[1..Hq]}: o = σ(u_h)·c(s_h, L_sp)·o_sp + σ(w_h)·c(r_h,
--- L_swa)·o_swa with the sink factor c(b, L) = 1 / (1 + exp(b - L)) (the
--- card's sink logit, applied as M.run does); dc/db = -c (1 - c).
function M.fit_loss_grad(data, x)
  local hq = data[1].hq
  local g, loss, count = {}, 0, 0
  for i = 1, #x do g[i] = 0 end
  for _, D in ipairs(data) do count = count + D.hq * D.n * D.d end
  for _, D in ipairs(data) do
    for h = 1, hq do
      local su, sw = sigmoid(x[h]), sigmoid(x[hq + h])
      for t = 1, D.n do
        local os, ref = D.os[h][t], D.dense[h][t]
        local ls = D.ls[h][t]
        local cs = ls == -math.huge and 1 or 1 / (1 + math.exp(x[2 * hq + h] - ls))
        local a = su * cs
        local ow, cw, b = D.ow and D.ow[h][t], 1, 0
        if ow then
          local lw = D.lw[h][t]
          cw = lw == -math.huge and 1 or 1 / (1 + math.exp(x[3 * hq + h] - lw))
          b = sw * cw
        end
        local da, db = 0, 0
        for e = 1, D.d do
          local r = a * os[e] + (ow and b * ow[e] or 0) - ref[e]
          loss = loss + r * r
          da = da + r * os[e]
          if ow then db = db + r * ow[e] end
        end
        da, db = 2 * da / count, 2 * db / count
        g[h] = g[h] + da * cs * su * (1 - su)
        if ls ~= -math.huge then g[2 * hq + h] = g[2 * hq + h] - da * su * cs * (1 - cs) end
        if ow then
          g[hq + h] = g[hq + h] + db * cw * sw * (1 - sw)
          if D.lw[h][t] ~= -math.huge then g[3 * hq + h] = g[3 * hq + h] - db * sw * cw * (1 - cw) end
        end
      end
    end
  end
  return loss / count, g
end

--- Fits gate_logits [Hq, 2] and sink_sparse, sink_swa [Hq] by Adam (lr
--- 0.05, `steps`; T.adam) from the stand-in's gates (logits 0: 0.5, 0.5)
--- and sinks of -4 (a sink factor near 1); selection: the stand-in's (the
--- same layer's block max, an oracle), as the written file selects.
function M.fit(probs, o)
  local p = o.params
  local data = {}
  for i, prob in ipairs(probs) do data[i] = M.fit_data(prob, p) end
  local hq = data[1].hq
  for i, D in ipairs(data) do
    if D.hq ~= hq then sl.fail("hysparse fit: input %d has %d query heads, input 1 has %d; expected the same", i, D.hq, hq) end
  end
  local x = {}
  for h = 1, hq do x[h], x[hq + h], x[2 * hq + h], x[3 * hq + h] = 0, 0, -4, -4 end
  local before, after
  x, before, after = T.adam(x, function(y) return M.fit_loss_grad(data, y) end, {steps = o.steps, lr = o.lr or 0.05})
  local gl, ss, sw = {}, {}, {}
  for h = 1, hq do gl[h], ss[h], sw[h] = {x[h], x[hq + h]}, x[2 * hq + h], x[3 * hq + h] end
  return {gate_logits = sl.tensor(gl), sink_sparse = sl.tensor(ss), sink_swa = sl.tensor(sw)},
    {loss_before = before, loss_after = after, optimiser = "adam(lr=" .. (o.lr or 0.05) .. ", steps=" .. o.steps .. ")"}
end

M.fit_doc = "gate_logits (per-head constant gates) and sink_sparse, sink_swa: Adam on the mean squared output error vs " ..
  "dense attention, with the stand-in's (oracle) selection"

return M
