-- sparselab.tokenprune — token pruning by attention score between layers of
-- the model runner, with a KV keep list (issue 17; card
-- token_prune_attn_score), composed of existing ops: gather.rows (compact
-- the kept tokens), score.rows (rater rows' softmax over the kept keys),
-- reduce.heads + reduce.columns (mean over heads, sum over raters),
-- select.topk (ties: lower index), mask.index_from_columns +
-- attn.token_sparse (later layers attend only the kept keys).
--
-- Segments of a text-only LM (the card's prefix / visual / text): prefix =
-- the first `prefix` tokens (BOS; always kept), candidates = [prefix, N -
-- probe), text = the last `probe` rows, which rate the candidates (the
-- card's "last n rows" rater option) and are always kept.
--
--   T.hook(m, o, stats) -> attention hook for m.c:forward(ids, st, hook)
--     (and, with o.recycle, the site hook: m.c:forward(ids, st, attn, site))
--     o.recycle = true: token_merge_recycle's recycling of the pruned
--       tokens (T.dpc, T.merge_mean; o.recycle_frac 0.3, o.cluster_div 10;
--       DPC runs as the cluster.dpc op on o.backend (default cpu), or in Lua
--       with o.dpc = "lua")
--     o.layers  = {l, ...} pruning layers (0-based; pruning at l acts on layers > l)
--     o.ratio   = kept share of the candidates alive at each pruning layer
--                 (k = floor(ratio * V); the card's "ratio" budget), or
--     o.keep    = {[l] = k} a fixed per-layer list (SparseVLM's option)
--     o.prefix  = 1, o.probe = 16
--     o.scores  = "attn" (default) | "first" | "random" (score-blind baselines)
--     o.seed    = seed of "random"
--     stats (optional) gets keep = {[l] = list of kept 0-based positions}
--       after each pruning layer and rows = {[l] = tokens the layer runs on}.
--   T.score(q, k, keep, probe) -> column scores [Nc] of the compacted keys
--     (Lua array over the kept positions, in order).
--   T.nll(m, seqs, o) -> mean NLL of the probe rows (the only rows whose
--     outputs exist after pruning), tokens counted, mean kept share.
--
-- Positions are the card's keep_original (the runner applies RoPE before the
-- hook: kept tokens keep their phases); layers <= l keep the full KV. Not
-- done: renumber positions, text raters / head subset / RoPE de-bias /
-- VASparse prior / neuron-match scores, rank / cdf / elbow budgets, the
-- decode-time contrastive branch.
-- The clamp k <= V - 1 of the reference codes is not applied, so that k = V
-- (nothing dropped) leaves the model unchanged as the card's first check asks.
local sl = require "sparselab"

local T = {}

local function idx_tensor(keep, heads)
  local rows = {}
  for h = 1, heads do rows[h] = keep end
  return sl.tensor(rows, "i32")
end

--- Column scores of the compacted keys: mean over heads, sum over the last
--- `probe` rows of the softmax probabilities (score.rows on the gathered q, k).
function T.score(q, k, keep, probe)
  local qc, kc = q, k
  if keep then
    qc = sl.gather.rows(q, idx_tensor(keep, q:shape()[1]))
    kc = sl.gather.rows(k, idx_tensor(keep, k:shape()[1]))
  end
  local nc = qc:shape()[2]
  local rows = {}
  for t = math.max(0, nc - probe), nc - 1 do rows[#rows + 1] = t end
  local pr = sl.score.rows(qc, kc, sl.tensor(rows, "i32"), {causal = true})   -- [Hq, R, Nc]
  local mean = sl.reduce.heads(pr, {group = 0, mode = 2})                       -- [1, R, Nc]
  return sl.reduce.columns(mean):totable()[1]                                  -- [Nc]
end

local function pick(o, scores, cand, kk, rng)
  local chosen = {}
  if o.scores == "first" then
    for i = 1, kk do chosen[i] = cand[i] end
  elseif o.scores == "random" then
    local c = {}
    for i, v in ipairs(cand) do c[i] = v end
    for i = #c, 2, -1 do local j = rng(i); c[i], c[j] = c[j], c[i] end
    for i = 1, kk do chosen[i] = c[i] end
  else
    local s = {}
    for i, j in ipairs(cand) do s[i] = scores[j] end
    local keep = sl.select.topk(sl.tensor({s}, "f32"), {k = kk}):totable()[1]
    for i, flag in ipairs(keep) do if flag ~= 0 then chosen[#chosen + 1] = cand[i] end end
  end
  table.sort(chosen)
  return chosen
end

--- DPC-kNN clustering (token_merge_recycle A3-A4; SparseVLM's
--- cluster_and_merge): rows = list of vectors, c clusters. D_ij = |y_i -
--- y_j| / sqrt(D); rho_i = exp(-mean of the c smallest D_ij^2, self
--- included); delta_i = min D_ij over j denser than i (ties: the lower
--- index counts as denser; the reference adds 1e-6 noise), the densest
--- gets max D; centres = top-c by rho . delta (ties lower index); every
--- row goes to its nearest centre (ties lower centre), centres to
--- themselves. Returns assign (row -> cluster 1..c) and centres (row ids).
function T.dpc(rows, c)
  local n = #rows
  c = math.max(1, math.min(c, n))
  local dim = #rows[1]
  local D, dmax = {}, 0
  for i = 1, n do
    D[i] = {}
    for j = 1, n do
      local s = 0
      for t = 1, dim do local e = rows[i][t] - rows[j][t]; s = s + e * e end
      D[i][j] = math.sqrt(s / dim)
      if D[i][j] > dmax then dmax = D[i][j] end
    end
  end
  local rho = {}
  for i = 1, n do
    local sq = {}
    for j = 1, n do sq[j] = D[i][j] * D[i][j] end
    table.sort(sq)
    local acc = 0
    for j = 1, c do acc = acc + sq[j] end
    rho[i] = math.exp(-acc / c)
  end
  local function denser(j, i) return rho[j] > rho[i] or (rho[j] == rho[i] and j < i) end
  local gamma, order = {}, {}
  for i = 1, n do
    local d = math.huge
    for j = 1, n do if denser(j, i) and D[i][j] < d then d = D[i][j] end end
    if d == math.huge then d = dmax end
    gamma[i], order[i] = rho[i] * d, i
  end
  table.sort(order, function(a, b) if gamma[a] ~= gamma[b] then return gamma[a] > gamma[b] end return a < b end)
  local centres = {}
  for k = 1, c do centres[k] = order[k] end
  table.sort(centres)
  local assign = {}
  for i = 1, n do
    local best, bd = 1, math.huge
    for k, ci in ipairs(centres) do
      if ci == i then best, bd = k, -1; break end
      if D[i][ci] < bd then best, bd = k, D[i][ci] end
    end
    assign[i] = best
  end
  return assign, centres
end

--- T.dpc through the cluster.dpc op (issue 17, session 3): the same
--- contract and results (1-based assign and centres), the loops in C / CUDA.
function T.dpc_op(rows, c, backend)
  local a, ce = sl.cluster.dpc(sl.tensor(rows, "f32"), {c = math.max(1, c), backend = backend})
  local assign, centres = a:totable(), ce:totable()
  for i = 1, #assign do assign[i] = assign[i] + 1 end
  for k = 1, #centres do centres[k] = centres[k] + 1 end
  return assign, centres
end

--- Merged tokens: the unweighted mean of each cluster's rows -> list of c vectors.
function T.merge_mean(rows, assign, c)
  local sum, cnt = {}, {}
  for k = 1, c do sum[k], cnt[k] = {}, 0; for t = 1, #rows[1] do sum[k][t] = 0 end end
  for i, r in ipairs(rows) do
    local k = assign[i]
    cnt[k] = cnt[k] + 1
    for t = 1, #r do sum[k][t] = sum[k][t] + r[t] end
  end
  for k = 1, c do for t = 1, #sum[k] do sum[k][t] = sum[k][t] / cnt[k] end end
  return sum
end

function T.hook(m, o, stats)
  local prefix, probe = o.prefix or 1, o.probe or 16
  local prune_at = {}
  for _, l in ipairs(o.layers or {0}) do prune_at[l] = true end
  if not o.ratio and not o.keep then sl.fail("tokenprune: give ratio = r or keep = {[layer] = k}") end
  if o.ratio and (o.ratio < 0 or o.ratio > 1) then
    sl.fail("tokenprune: ratio must be in [0, 1], found %s", tostring(o.ratio))
  end
  local state = 0x9e3779b9 + (o.seed or 1)
  local function rng(n) state = (state * 1103515245 + 12345) % 2147483648; return state % n + 1 end
  local keep -- kept positions (0-based, ascending); nil = all
  local recycle_at = {} -- [layer] = {pruned = {positions}, scores = {position -> s}}
  local _ = m
  local function attention(layer, q, k, v)
    local n = q:shape()[2]
    if stats then stats.rows = stats.rows or {}; stats.rows[layer] = keep and #keep or n end
    local out
    if keep then
      local idx = sl.mask.index_from_columns(sl.tensor({keep}, "i32"), {n_q = n, n_k = n, rows_per_entry = 1,
        causal = true})
      out = sl.attn.token_sparse(q, k, v, idx.row_ptr, idx.col, {rows_per_entry = 1})
    else
      out = sl.attn.dense(q, k, v, {causal = true})
    end
    if prune_at[layer] and n > prefix + probe then
      local cur = keep
      if not cur then cur = {}; for i = 0, n - 1 do cur[i + 1] = i end end
      local scores = o.scores ~= "first" and o.scores ~= "random" and T.score(q, k, keep, probe) or nil
      -- candidates: compacted indices (1-based) of kept positions in [prefix, n - probe)
      local cand = {}
      for i, pos in ipairs(cur) do if pos >= prefix and pos < n - probe then cand[#cand + 1] = i end end
      local kk = o.keep and o.keep[layer] or math.floor(o.ratio * #cand + 1e-9)
      kk = math.max(0, math.min(#cand, kk))
      local chosen = pick(o, scores, cand, kk, rng)
      local is_cand, nxt = {}, {}
      for _, i in ipairs(cand) do is_cand[i] = true end
      local ci = 1
      for i, pos in ipairs(cur) do
        if not is_cand[i] then nxt[#nxt + 1] = pos
        elseif chosen[ci] == i then nxt[#nxt + 1] = pos; ci = ci + 1 end
      end
      if o.recycle then
        local kept_set, pruned, ps = {}, {}, {}
        for _, pos in ipairs(nxt) do kept_set[pos] = true end
        for i, pos in ipairs(cur) do
          if not kept_set[pos] then pruned[#pruned + 1] = pos; ps[pos] = scores and scores[i] or -pos end
        end
        if #pruned > 0 then recycle_at[layer] = {pruned = pruned, scores = ps} end
      end
      if #nxt < n or keep then keep = nxt end
      if stats then stats.keep = stats.keep or {}; stats.keep[layer] = keep or cur end
    end
    return out
  end
  -- token_merge_recycle A (SparseVLM v1): after the pruning layer, the top m = floor(0.3 n_p) + 1
  -- pruned tokens by score are clustered (DPC-kNN, c = floor(m / 10) + 1) and each cluster's mean
  -- hidden state is written into the slot of its last member (the largest position: no earlier
  -- token sees it), which joins the keep list
  local function site(layer, name, x)
    local r = recycle_at[layer]
    if name ~= "layer_out" or not r then return nil end
    recycle_at[layer] = nil
    local cand = {}
    for i, pos in ipairs(r.pruned) do cand[i] = pos end
    table.sort(cand, function(a, b)
      if r.scores[a] ~= r.scores[b] then return r.scores[a] > r.scores[b] end
      return a < b
    end)
    local mm = math.min(#cand, math.floor((o.recycle_frac or 0.3) * #cand) + 1)
    local members = {}
    for i = 1, mm do members[i] = cand[i] end
    table.sort(members)
    local rows = x:totable()
    local ys = {}
    for i, pos in ipairs(members) do ys[i] = rows[pos + 1] end
    local c = mm // (o.cluster_div or 10) + 1
    local assign, centres
    if o.dpc == "lua" then assign, centres = T.dpc(ys, c) else assign, centres = T.dpc_op(ys, c, o.backend) end
    local merged = T.merge_mean(ys, assign, #centres)
    local slots = {}
    for i, pos in ipairs(members) do
      local k = assign[i]
      if not slots[k] or pos > slots[k] then slots[k] = pos end
    end
    local set = {}
    for _, pos in ipairs(keep) do set[pos] = true end
    for k, pos in pairs(slots) do rows[pos + 1] = merged[k]; set[pos] = true end
    local nk = {}
    for pos in pairs(set) do nk[#nk + 1] = pos end
    table.sort(nk)
    keep = nk
    if stats then
      stats.keep[layer] = keep
      stats.merged = stats.merged or {}
      stats.merged[layer] = {members = members, assign = assign, slots = slots}
    end
    return sl.tensor(rows)
  end
  if o.recycle then return attention, site end
  return attention
end

--- Mean NLL of the last `probe` rows of each sequence with pruning o, the
--- number of tokens scored and the mean share of tokens the layers run on.
function T.nll(m, seqs, o)
  local probe = o.probe or 16
  local total, count, share, nshare = 0, 0, 0, 0
  for _, ids in ipairs(seqs) do
    local stats = {}
    local st <close> = m.c:state(#ids)
    local attn, site = T.hook(m, o, stats)
    local logits = m.c:forward(ids, st, attn, site)
    local n, vocab = #ids, logits:shape()[2]
    local rows = logits:totable()
    for i = n - probe, n - 1 do -- row i (0-based) predicts ids[i + 2]
      if i + 2 <= n then
        local row, mx = rows[i + 1], -math.huge
        for j = 1, vocab do if row[j] > mx then mx = row[j] end end
        local z = 0
        for j = 1, vocab do z = z + math.exp(row[j] - mx) end
        total = total + (mx + math.log(z) - row[ids[i + 2] + 1])
        count = count + 1
      end
    end
    for _, r in pairs(stats.rows or {}) do share, nshare = share + r / n, nshare + 1 end
  end
  return total / count, count, nshare > 0 and share / nshare or 1
end

return T
