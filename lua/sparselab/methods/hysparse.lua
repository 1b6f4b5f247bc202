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
  if not ws.R and not ws.full_q then sl.fail("hysparse: weights %s: holds neither R nor full_q/full_k", p.weights) end
  local out = {rows = function(r0, r1)
    if ws.R then return file_rows(ws.R, p.block, r0, r1) end
    return M.block_max_tensor(ws.full_q, ws.full_k, p.block, r0, r1, prob.backend)
  end}
  out.g_sparse = ws.g_sparse and ws.g_sparse:totable() or const(gs_default)
  out.g_swa = ws.g_swa and ws.g_swa:totable() or const(0.5)
  out.sink_sparse = ws.sink_sparse and ws.sink_sparse:totable()
  out.sink_swa = ws.sink_swa and ws.sink_swa:totable()
  return out, T.file_source(p.weights)
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
function M.run(prob, p)
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

return M
