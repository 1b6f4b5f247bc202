-- Mixture of Sparse Attention: Content-Based Learnable Sparse Attention via
-- Expert-Choice Routing (MoSA) — card: mosa.
-- Card steps implemented (on captured per-head Q, K, V):
--   1. router r[t, h] = sigmoid(router_w[h]·k_t + router_b[h]) per query head
--      (each query head is one MoSA "expert"); our reading: the key k_t of the
--      head's kv head stands in for the hidden state x_t (Q/K/V captures hold
--      no x), or r given per token and head from a file;
--   2. expert choice: per head the top-k positions by r over the whole
--      sequence, k = max(2, floor(T / rho)) (ties: lower position);
--      include_first = 1 forces position 0 and takes the top-(k-1) of the
--      rest (PureMoSA.get_topk_includefirst);
--   3. the projections are the captured ones: a head's Q, K, V at its chosen
--      positions (X[I_e] W_e^{qkv} was already applied by the model);
--   4. attention among the k chosen tokens with the causal mask on ORIGINAL
--      positions (attn.token_sparse: row t in I_h attends {j in I_h, j <= t});
--      RoPE: the captured Q, K carry the model's own rotary positions, so
--      the card's partial RoPE with original positions is not re-applied;
--   5. output weighting AV ⊙ r[t, h] (router_weight = 1; 0 leaves it out),
--      scattered to the chosen positions; rows no head chose get O = 0,
--      L = -inf (they receive nothing from MoSA heads);
--   Execution (issue 14, session 3): M.forward_op runs steps 3-5 on existing
--      ops — gather.rows of each head's chosen rows, causal attn.dense among
--      them, the router weight, gather.rows back to the n positions from the
--      outputs plus a zero row — with no per-pair Lua (the earlier
--      token_sparse lists, M.forward, are kept as the test's oracle; equal
--      to 1e-5);
--   6. the hybrid layer's dense heads (num_other_heads) are not run: every
--      query head is a MoSA head here.
-- Reference: piotrpiekos/MoSA mosa/MoSA.py (PureMoSA) read: matched —
-- get_topk's k = min(max(T // sparsity, 2), T), topk over the sequence per
-- router column, get_topk_includefirst (position 0 + top-(k-1) of 1..T-1),
-- inner_attend's mask topk_I[a] >= topk_I[b] with SDPA's 1/sqrt(h') scale,
-- AV * topk_vals, scatter_add to the chosen positions (zero elsewhere).
-- Divergences: the router there is Linear(h, E, bias=False) on x (module
-- r.0.weight [E, h]); here it reads the key k_t (router_w [Hq, D]) and has a
-- bias (pass router_b = 0 for the reference's form); torch.topk's tie order
-- is unspecified, ours is lower position first; the partial RoPE of
-- inner_attend is the model's own (captured Q, K are already rotated).
-- Parameters from a file (param `weights`; safetensors, float tensors):
--   r [Hq, n]                      router outputs in [0, 1] captured from a model,
--                                  used as given (a sigmoid output: values outside
--                                  [0, 1] are a one-line error);
--   router_w [Hq, D], router_b [Hq]  the linear router on the keys (names ours:
--                                  the reference's W_r [h, E] acts on x).
-- Stand-in without weights (params_source "standin:mean_query"): r =
--   sigmoid(q̄_h·k_t / sqrt(D)), q̄_h the head's mean query over the input:
--   closed form, reads no attention map. router = "oracle" instead uses the
--   card's workbench stand-in, the column importance (mean attention
--   probability token t receives from the queries that see it, / its max
--   over t) read from the exact attention map: params_source
--   "oracle:column_importance" (an oracle).
-- Fitting (`sparselab fit-params mosa`): router_w, router_b by closed-form
--   ridge regression (lambda = 1e-3 per token) of y_t = log(mean attention
--   probability token t receives + 1e-6) on [k_t, 1], per query head — the
--   expert-choice ranking is by r, and sigmoid is monotone, so the ranking
--   follows w·k + b. The card trains the router end to end through the
--   multiplicative weight (top-k itself has no gradient); that loss needs
--   the rest of the model and is not run here.
-- Density: pairs attended (Σ_h Σ_{t in I_h} |{j in I_h, j <= t}|) over the
--   causal pairs of all heads. stats.column_recall: the share of the column
--   importance mass (as the oracle's) the chosen positions hold, mean over
--   heads — the card's "evaluate selection quality" (computed only with
--   param column_recall = 1: it reads the exact attention map).
-- NOT implemented: decode (the card marks MoSA's decode handling unknown:
--   top-k over the whole sequence is non-causal), the hybrid dense heads,
--   the training loss.
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local STANDIN, ORACLE = "standin:mean_query", "oracle:column_importance"
local dims = T.dims

local function sigmoid(x) return 1 / (1 + math.exp(-x)) end

local function spec(prob)
  local hq, _, d, _, nk = dims(prob)
  return {
    {name = "r", shape = {hq, nk}, dims = "(query heads, tokens)", range = {0, 1}, range_why = "sigmoid router outputs"},
    {name = "router_w", shape = {hq, d}, dims = "(query heads, head_dim)", group = "linear"},
    {name = "router_b", shape = {hq}, dims = "(query heads)", group = "linear"},
  }
end

-- r[h][t] = sigmoid(w[h]·k_t + b[h]) (k from the head's kv head).
local function linear_router(prob, w, b)
  local hq, _, d, hkv, nk = dims(prob)
  local g = hq // hkv
  local K = E.heads(prob.k)
  local r = {}
  for h = 1, hq do
    local kh, wh, row = K[(h - 1) // g + 1], w[h], {}
    for t = 1, nk do
      local s, kt = b[h], kh[t]
      for e = 1, d do s = s + wh[e] * kt[e] end
      row[t] = sigmoid(s)
    end
    r[h] = row
  end
  return r
end

-- Column importance per query head: mean probability token t receives from
-- the queries that see it (causal), from the exact attention map.
local function column_importance(prob)
  local hq, nq, _, _, nk = dims(prob)
  local col = E.heads(sl.score.exact(prob.q, prob.k, {bq = nq, bk = 1, causal = 1, backend = prob.backend}))
  local out = {}
  for h = 1, hq do
    local row = {}
    for t = 1, nk do row[t] = col[h][1][t] / math.max(1, math.min(nq, nk - t + 1)) end
    out[h] = row
  end
  return out
end

local function standin_router(prob)
  local hq, nq, d = dims(prob)
  local Q = E.heads(prob.q)
  local w, b = {}, {}
  for h = 1, hq do
    local m = {}
    for e = 1, d do m[e] = 0 end
    for t = 1, nq do local qt = Q[h][t] for e = 1, d do m[e] = m[e] + qt[e] end end
    for e = 1, d do m[e] = m[e] / nq / math.sqrt(d) end
    w[h], b[h] = m, 0
  end
  return linear_router(prob, w, b)
end

local M = {
  id = "mosa",
  card = "mosa",
  title = "MoSA: Mixture of Sparse Attention (expert-choice token routing per head)",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "Each head chooses its own top-T/rho tokens by a router; causal attention among them, router-weighted, scattered back.",
  knob = "rho",
  knob_direction = -1, -- a larger rho is sparser
  params = {
    rho = {default = 16, min = 1, max = 65536, doc = "sparsity factor: k = max(2, floor(T / rho)) tokens per head"},
    include_first = {default = 0, min = 0, max = 1, int = true, doc = "1: position 0 always chosen (get_topk_includefirst)"},
    router_weight = {default = 1, min = 0, max = 1, int = true, doc = "1: outputs multiplied by the router score (card step 5)"},
    router = {default = "standin", doc = "stand-in without weights: standin (mean query) or oracle (column importance)"},
    column_recall = {default = 0, min = 0, max = 1, int = true, doc = "1: stats.column_recall (reads the exact map)"},
    weights = {default = "", doc = "safetensors file with r or router_w/router_b (empty: the stand-in)"},
  },
  ops = {"gather.rows", "attn.dense"},
  checks = {"rho = 1 with router = 1 equals dense", "a chosen token never attends a later one",
    "positions no head chose receive zero", "score-blind router loses column recall",
    "bad weight files: one-line errors", "ridge gradient vs finite differences"},
  params_sources = {STANDIN, ORACLE, "sha256:<weights file>"},
}

--- The router scores r [Hq][n] (Lua tables) and their params_source.
function M.router(prob, p)
  if (p.weights or "") == "" then
    if p.router == "oracle" then
      local c = column_importance(prob)
      for h = 1, #c do
        local mx = 0
        for t = 1, #c[h] do mx = math.max(mx, c[h][t]) end
        for t = 1, #c[h] do c[h][t] = mx > 0 and c[h][t] / mx or 0 end
      end
      return c, ORACLE
    elseif p.router ~= "standin" then
      sl.fail("mosa: router '%s'; expected standin or oracle", tostring(p.router))
    end
    return standin_router(prob), STANDIN
  end
  local ws = T.load_weights("mosa", p.weights, spec(prob))
  if ws.r and ws.router_w then sl.fail("mosa: weights %s: holds both r and router_w/router_b; expected one form", p.weights) end
  if not ws.r and not ws.router_w then sl.fail("mosa: weights %s: holds neither r [heads, tokens] nor router_w/router_b", p.weights) end
  local r = ws.r and E.heads(ws.r) or linear_router(prob, ws.router_w:totable(), ws.router_b:totable())
  return r, T.file_source(p.weights)
end

--- Expert choice: per head the sorted (ascending, 0-based) chosen positions.
function M.choose(r, n, rho, include_first)
  local k = math.min(n, math.max(2, math.floor(n / rho)))
  local sel = {}
  for h = 1, #r do
    local rh, order = r[h], {}
    local start = include_first == 1 and 2 or 1
    for t = start, n do order[#order + 1] = t end
    table.sort(order, function(a, b) if rh[a] ~= rh[b] then return rh[a] > rh[b] end return a < b end)
    local s = {}
    if include_first == 1 then s[1] = 0 end
    for i = 1, k - #s do s[#s + 1] = order[i] - 1 end
    table.sort(s)
    sel[h] = s
  end
  return sel, k
end

--- The share of the column-importance mass the chosen positions hold, mean over heads.
function M.column_recall(prob, sel)
  local c = column_importance(prob)
  local acc = 0
  for h = 1, #sel do
    local tot, got = 0, 0
    for t = 1, #c[h] do tot = tot + c[h][t] end
    for _, t in ipairs(sel[h]) do got = got + c[h][t + 1] end
    acc = acc + got / tot
  end
  return acc / #sel
end

--- The forward given router scores r and a selection: o, lse, pairs attended.
function M.forward(prob, r, sel, router_weight)
  local hq, nq, d, _, nk = dims(prob)
  if nq ~= nk then sl.fail("mosa: %d queries and %d keys; expected self-attention over one sequence (prefill)", nq, nk) end
  local row_ptr, col, pairs = {}, {}, 0
  for h = 1, hq do
    local rp, chosen = {#col}, {}
    for _, t in ipairs(sel[h]) do chosen[t] = true end
    local members = {}
    for t = 0, nq - 1 do
      if chosen[t] then
        members[#members + 1] = t
        for _, j in ipairs(members) do col[#col + 1] = j end
        pairs = pairs + #members
      end
      rp[#rp + 1] = #col
    end
    row_ptr[h] = rp
  end
  local args = {rows_per_entry = 1, backend = prob.backend}
  local rpt, ct = sl.tensor(row_ptr, "i32"), sl.tensor(col, "i32")
  local o, lse = sl.attn.token_sparse(prob.q, prob.k, prob.v, rpt, ct, args)
  local flops = sl.op_flops("attn.token_sparse", prob.q, prob.k, prob.v, rpt, ct, args)
  if router_weight == 1 then
    local O = o:totable()
    for h = 1, hq do
      for _, t in ipairs(sel[h]) do
        local w, ot = r[h][t + 1], O[h][t + 1]
        for e = 1, d do ot[e] = ot[e] * w end
      end
    end
    o = sl.tensor(O)
  end
  return o, lse, pairs, flops
end

--- The same forward on existing ops, no per-pair Lua: per head its chosen
--- rows of q and of k, v (gather.rows), causal attn.dense among them (the
--- chosen positions ascending, so the gathered order is the original one),
--- the router weight on the k output rows, and back to the n positions by a
--- second gather.rows from the outputs plus one zero row. o, lse, pairs, flops.
function M.forward_op(prob, r, sel, router_weight)
  local hq, nq, d, _, nk = dims(prob)
  if nq ~= nk then sl.fail("mosa: %d queries and %d keys; expected self-attention over one sequence (prefill)", nq, nk) end
  local k = #sel[1]
  local idx = sl.tensor(sel, "i32")
  local be = {backend = prob.backend}
  local qg, kg, vg = sl.gather.rows(prob.q, idx, be), sl.gather.rows(prob.k, idx, be), sl.gather.rows(prob.v, idx, be)
  local og, lg = sl.attn.dense(qg, kg, vg, {causal = 1, backend = prob.backend})
  local flops = sl.op_flops("attn.dense", qg, kg, vg, {causal = 1})
  if router_weight == 1 then
    local parts = {}
    for h = 1, hq do -- one head at a time (k·D values; a whole-tensor table would pass Lua's limit)
      local O = og:narrow(1, h, 1):totable()
      for i, t in ipairs(sel[h]) do
        local w, ot = r[h][t + 1], O[1][i]
        for e = 1, d do ot[e] = ot[e] * w end
      end
      parts[h] = sl.tensor(O)
    end
    og = hq > 1 and sl.cat(parts, 1) or parts[1]
  end
  -- back to the positions: row t of head h reads output row i (t = sel[h][i]) or the zero row k
  local inv, L, LG = {}, {}, lg:totable()
  for h = 1, hq do
    local ih, lh = {}, {}
    for t = 1, nq do ih[t], lh[t] = k, -math.huge end
    for i, t in ipairs(sel[h]) do ih[t + 1], lh[t + 1] = i - 1, LG[h][i] end
    inv[h], L[h] = ih, lh
  end
  local o = sl.gather.rows(sl.cat({og, sl.zeros({hq, 1, d})}, 2), sl.tensor(inv, "i32"), be)
  return o, sl.tensor(L), hq * k * (k + 1) // 2, flops
end

function M.run(prob, p)
  local _, _, _, _, nk = dims(prob)
  local r, source = M.router(prob, p)
  local sel, k = M.choose(r, nk, p.rho, p.include_first)
  local o, lse, pairs, flops = M.forward_op(prob, r, sel, p.router_weight)
  local hq = #sel
  p.params_source = source
  local stats = {flops = flops, density = pairs / (hq * nk * (nk + 1) / 2), tokens_per_head = k}
  if p.column_recall == 1 then stats.column_recall = M.column_recall(prob, sel) end
  return {o = o, lse = lse, params_source = source, stats = stats}
end

-- ---- fitting: closed-form ridge regression of router_w, router_b ----

--- Per query head the regression rows: x_t = [k_t, 1], y_t = log(column importance + 1e-6).
function M.fit_rows(prob)
  local hq, _, d, hkv, nk = dims(prob)
  local g = hq // hkv
  local c = column_importance(prob)
  local K = E.heads(prob.k)
  local rows = {}
  for h = 1, hq do
    local X, Y = {}, {}
    local kh = K[(h - 1) // g + 1]
    for t = 1, nk do
      local x = {}
      for e = 1, d do x[e] = kh[t][e] end
      x[d + 1] = 1
      X[t], Y[t] = x, math.log(c[h][t] + 1e-6)
    end
    rows[h] = {X = X, Y = Y}
  end
  return rows
end

function M.fit(probs, _)
  local hq, _, d = dims(probs[1])
  local data = {}
  for h = 1, hq do data[h] = {X = {}, Y = {}} end
  for i, prob in ipairs(probs) do
    local hi, _, di = dims(prob)
    if di ~= d or hi ~= hq then
      sl.fail("mosa fit: input %d has %d heads of dim %d, input 1 has %d of dim %d; expected the same", i, hi, di, hq, d)
    end
    for h, rr in ipairs(M.fit_rows(prob)) do
      for j = 1, #rr.X do table.insert(data[h].X, rr.X[j]); table.insert(data[h].Y, rr.Y[j]) end
    end
  end
  local W, B, before, after = {}, {}, 0, 0
  for h = 1, hq do
    local w, b0, b1 = T.ridge(data[h].X, data[h].Y, 1e-3)
    before, after = before + b0, after + b1
    W[h] = {table.unpack(w, 1, d)}
    B[h] = w[d + 1]
  end
  return {router_w = sl.tensor(W), router_b = sl.tensor(B)},
    {loss_before = before / hq, loss_after = after / hq, optimiser = "ridge least squares (closed form, lambda=1e-3/token)"}
end

return M
