-- NOSA: Native and Offloadable Sparse Attention — card: nosa.
-- Card steps implemented (prefill rows stand for decode steps: row t's block
-- set is the set step t would load):
--   1. query-aware part: InfLLM-v2 block scores — keys mean-pooled per
--      sub-block of `sub` keys, q·(sub-block mean), the max over the
--      sub-blocks of a block (score.pooled, pool mean, bq = 1), summed over
--      the query heads of a kv head's group (one set per kv head: our reading;
--      the card does not say); the top k_q complete earlier blocks;
--   2. query-agnostic part: an eviction score per key e_j from the values
--      (a learned 2-layer network in NOSA; see weights), per block the mean
--      of e over its keys; the top k_e blocks by it among the causal blocks
--      the query-aware part did not take;
--   3. the query's own block is always kept (local); S = own ∪ S_q ∪ S_e,
--      at most 1 + k_q + k_e blocks; attention over S (causal in the own
--      block; attn.block_sparse over a bq = 1 mask);
--   4. locality, as the card's metric: gamma(t) = |S_t ∩ S_{t-1}| / |S_t| per
--      kv head and row (stats.gamma_mean, stats.gamma_min) and the transfer
--      volume per row |S_t \\ S_{t-1}| (stats.transfer_blocks, mean).
-- Reference: thunlp/NOSA not read (the card is from a secondary note); the
-- sub-block / block sizes are InfLLM-v2-style guesses (sub 16, block 64).
-- Parameters from a file (param `weights`): eviction.w1 [Hkv, D, M],
-- eviction.b1 [Hkv, M], eviction.w2 [Hkv, M], eviction.b2 [Hkv]: e_j =
-- w2·relu(w1ᵀ v_j + b1) + b2 (the eviction head; layer names are ours, the
-- reference's were not read); or e [Hkv, n] captured directly.
-- Stand-in without weights (params_source "standin:value_norm"): e_j = ||v_j||.
-- Not fitted here: the eviction head is trained end to end with the bias it
-- adds to the logits (ED-DMA), which this forward does not model.
-- Decode (issue 14, session 4; phase "both"): a hook of the decode runtime
-- (`eval --steps S`, `model --decode nosa`; a decode problem replays
-- through it). Each step selects its sets from the cache exactly as the
-- prefill selects that row (tested: decode rows = prefill rows), attends the
-- keys of the set, and reports the offload locality per step:
-- transfer_blocks |S_t \ S_t-1| (the blocks to fetch from the host),
-- transfer_bytes, gamma, set_blocks. The eviction scores are kept in the
-- layer state (the prefill's keys on the first step, then one key a step);
-- a captured `e` file cannot decode (it covers a fixed prefill).
-- NOT implemented: the eviction score as an additive logit bias (training
-- form), the offload system itself (host/device copies).
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local dims = T.dims

local function spec(prob)
  local _, _, d, hkv, nk = dims(prob)
  return {
    {name = "e", shape = {hkv, nk}, dims = "(kv heads, keys)"},
    {name = "eviction.w1", shape = {hkv, d, 0}, dims = "(kv heads, head_dim, hidden)", group = "mlp"},
    {name = "eviction.b1", shape = {hkv, 0}, dims = "(kv heads, hidden)", group = "mlp"},
    {name = "eviction.w2", shape = {hkv, 0}, dims = "(kv heads, hidden)", group = "mlp"},
    {name = "eviction.b2", shape = {hkv}, dims = "(kv heads)", group = "mlp"},
  }
end

-- e [Hkv][Nk] as Lua tables, and the params_source.
local function eviction_scores(prob, p)
  local _, _, d, hkv, nk = dims(prob)
  local V = E.heads(prob.v)
  local e = {}
  if (p.weights or "") == "" then
    for h = 1, hkv do
      e[h] = {}
      for j = 1, nk do
        local s = 0
        for c = 1, d do s = s + V[h][j][c] ^ 2 end
        e[h][j] = math.sqrt(s)
      end
    end
    return e, "standin:value_norm"
  end
  -- the raw read only sizes the hidden width; load_weights reports a bad file (with the method's name)
  local okw, raw = pcall(sl.load, p.weights)
  if not okw or type(raw) ~= "table" then raw = {} end
  local m = raw["eviction.w1"] and #raw["eviction.w1"]:shape() == 3 and raw["eviction.w1"]:shape()[3] or 1
  local sp = spec(prob)
  for _, x in ipairs(sp) do
    for i, v in ipairs(x.shape) do if v == 0 then x.shape[i] = m end end
  end
  local ws = T.load_weights("nosa", p.weights, sp)
  if ws.e and ws["eviction.w1"] then
    sl.fail("nosa: weights %s: holds both e and the eviction.* network; expected one form", p.weights)
  end
  if not ws.e and not ws["eviction.w1"] then
    sl.fail("nosa: weights %s: holds neither e [kv heads, keys] nor eviction.w1/b1/w2/b2", p.weights)
  end
  if ws.e then return ws.e:totable(), T.file_source(p.weights) end
  local w1, b1, w2, b2 = ws["eviction.w1"]:totable(), ws["eviction.b1"]:totable(), ws["eviction.w2"]:totable(),
    ws["eviction.b2"]:totable()
  for h = 1, hkv do
    e[h] = {}
    for j = 1, nk do
      local s = b2[h]
      for u = 1, m do
        local z = b1[h][u]
        for c = 1, d do z = z + w1[h][c][u] * V[h][j][c] end
        if z > 0 then s = s + w2[h][u] * z end
      end
      e[h][j] = s
    end
  end
  return e, T.file_source(p.weights)
end

-- Per kv head and row the selected block set (1-based block ids as keys),
-- handed to emit(kv, t, set) as it is made (rows in order for each kv head),
-- so no table of every row's set is kept.
local function select_blocks(prob, p, emit, e_given)
  local hq, nq, _, hkv, nk = dims(prob)
  local g, B = hq // hkv, p.block
  if B % p.sub ~= 0 then
    sl.fail("nosa: block = %d must be a multiple of sub = %d (InfLLM-v2 max-pools sub-blocks into blocks)", B, p.sub)
  end
  local nb, per = (nk + B - 1) // B, B // p.sub
  local args = {bq = 1, bk = p.sub, causal = 0, pool = 0, scale = 1, backend = prob.backend}
  local e, source
  if e_given then e, source = e_given.e, e_given.source else e, source = eviction_scores(prob, p) end
  local eb = {}
  for kv = 1, hkv do
    -- block eviction scores: the mean of e over the block's keys
    eb[kv] = {}
    for b = 1, nb do
      local s, n = 0, 0
      for j = (b - 1) * B + 1, math.min(b * B, nk) do s = s + e[kv][j]; n = n + 1 end
      eb[kv][b] = s / n
    end
  end
  -- The sub-block scores [hq, rows, nk/sub] one block of query rows at a time
  -- (bq = 1, no causal rule: a row's scores do not depend on the others), so
  -- memory is O(n · rows), never the whole nq × nk/sub table.
  local nsub = (nk + p.sub - 1) // p.sub
  local rows = math.max(1, 65536 // nsub)
  for r0 = 1, nq, rows do
    local len = math.min(rows, nq - r0 + 1)
    local S = E.heads(sl.score.pooled(prob.q:narrow(2, r0, len), prob.k, args))
    for kv = 1, hkv do
      for t = r0, r0 + len - 1 do
        local pos = nk - nq + t - 1
        local own = pos // B + 1
        local qs = {}
        for b = 1, own - 1 do
          local s = 0
          for h = (kv - 1) * g + 1, kv * g do
            local row, best = S[h][t - r0 + 1], -math.huge
            for x = (b - 1) * per + 1, b * per do best = math.max(best, row[x]) end
            s = s + best
          end
          qs[b] = s
        end
        local set = {[own] = true}
        local order = E.order_desc(qs, own - 1)
        for i = 1, math.min(p.k_q, own - 1) do set[order[i]] = true end
        local rest, ids = {}, {}
        for b = 1, own - 1 do if not set[b] then ids[#ids + 1] = b; rest[#ids] = eb[kv][b] end end
        local eo = E.order_desc(rest, #ids)
        for i = 1, math.min(p.k_e, #ids) do set[ids[eo[i]]] = true end
        emit(kv, t, set)
      end
    end
  end
  return source, sl.op_flops("score.pooled", prob.q, prob.k, args)
end

-- Every row's sets as a table sets[kv][t] (for tests on small inputs).
local function all_sets(prob, p)
  local sets = {}
  local source, flops = select_blocks(prob, p, function(kv, t, set)
    sets[kv] = sets[kv] or {}
    sets[kv][t] = set
  end)
  return sets, source, flops
end

local function estimate(prob, p)
  local hq, nq, _, hkv, nk = dims(prob)
  local g, nb = hq // hkv, (nk + p.block - 1) // p.block
  -- u8 [hq, nq, nb] set in place (a Lua keep table would hold nq · nb entries)
  local keep = sl.zeros({hq, nq, nb}, "u8")
  local gsum, gmin, moved, cnt = 0, 1, 0, 0
  local prev = {}
  local source, flops = select_blocks(prob, p, function(kv, t, set)
    local last, size, inter = prev[kv], 0, 0
    for b in pairs(set) do
      size = size + 1
      if last and last[b] then inter = inter + 1 end
      for h = (kv - 1) * g + 1, kv * g do keep:set(h, t, b, 1) end
    end
    if last then
      local gamma = inter / size
      gsum, gmin, moved, cnt = gsum + gamma, math.min(gmin, gamma), moved + (size - inter), cnt + 1
    end
    prev[kv] = set
  end)
  p.params_source = source
  return sl.mask.from_blocks(keep, {n_q = nq, n_k = nk, bq = 1, bk = p.block, causal = true}),
    {estimator_flops = flops, stats = {gamma_mean = cnt > 0 and gsum / cnt or 1, gamma_min = gmin,
      transfer_blocks = cnt > 0 and moved / cnt or 0}}
end

local run_blocks = E.block_run(estimate)

-- ---- decode (issue 14, session 4) ----

--- The decode hook: the new token is in ls.cache; the step's block sets are
--- made by select_blocks on the one-row problem (q at position n - 1 over
--- the cache's n keys: the prefill's selection of that row), the query
--- attends the keys of its kv head's set (one-token lists, page.attend),
--- and the offload locality against the previous step's sets is reported:
--- transfer_blocks = mean over kv heads of |S_t \ S_{t-1}| (the blocks a
--- step must fetch; on the first step the whole set), gamma = |S_t ∩
--- S_{t-1}| / |S_t| (1 on the first step), set_blocks = |S_t|.
local function decode(_, ls, step, p)
  local D = require "sparselab.decode"
  if not ls.nosa and (p.weights or "") ~= "" then
    local ok, raw = pcall(sl.load, p.weights)
    if ok and type(raw) == "table" and raw.e then
      sl.fail("nosa: weights %s: a captured e [kv heads, keys] covers a fixed prefill; decode needs the eviction.* network",
        p.weights)
    end
  end
  ls.nosa = ls.nosa or {}
  local n = ls.cache:len()
  local K, V = ls.cache:tensor("k"):narrow(2, 1, n), ls.cache:tensor("v"):narrow(2, 1, n)
  local one = {q = step.q, k = K, v = V, backend = step.backend}
  -- eviction scores of the keys not scored yet (the prefill's on the first step, then the new token's)
  local S0 = ls.nosa
  local have = S0.e and #S0.e[1] or 0
  if have < n then
    local new = {q = step.q, k = K:narrow(2, have + 1, n - have), v = V:narrow(2, have + 1, n - have)}
    local e, source = eviction_scores(new, p)
    S0.e = S0.e or {}
    for kv = 1, #e do
      S0.e[kv] = S0.e[kv] or {}
      for j = 1, #e[kv] do S0.e[kv][have + j] = e[kv][j] end
    end
    S0.source = source
  end
  local sets = {}
  local source = select_blocks(one, p, function(kv, _, set) sets[kv] = set end, {e = S0.e, source = S0.source})
  local prev, B = ls.nosa.prev, p.block
  local lists, moved, gsum, size_sum, tokens = {}, 0, 0, 0, 0
  for kv = 1, #sets do
    local l, size, inter = {}, 0, 0
    for b in pairs(sets[kv]) do
      size = size + 1
      if prev and prev[kv][b] then inter = inter + 1 end
      for j = (b - 1) * B, math.min(b * B, n) - 1 do l[#l + 1] = j end
    end
    lists[kv] = l
    tokens = tokens + #l
    moved, gsum, size_sum = moved + (size - inter), gsum + (prev and inter / size or 1), size_sum + size
  end
  ls.nosa.prev, ls.nosa.source = sets, source
  local hkv, d = #sets, K:shape()[3]
  local o, lse = D.attend_tokens(ls.cache, step.q, D.lists_tensor(lists), {backend = step.backend})
  return {o = o, lse = lse, params_source = source,
    stats = {transfer_blocks = moved / hkv, gamma = gsum / hkv, set_blocks = size_sum / hkv, tokens_read = tokens / hkv,
      density = tokens / (hkv * n), kv_bytes = 8 * d * tokens, transfer_bytes = 8 * d * B * moved}}
end

return {
  id = "nosa",
  card = "nosa",
  title = "NOSA: Native and Offloadable Sparse Attention",
  family = "trainable",
  phase = "both",
  causal_only = true,
  summary = "InfLLM-v2 query-aware blocks plus query-agnostic eviction-score blocks (locality by construction).",
  knob = "k_q",
  params = {
    block = {default = 64, min = 1, max = 65536, int = true, doc = "keys per block"},
    sub = {default = 16, min = 1, max = 65536, int = true, doc = "keys per sub-block (mean-pooled; max over a block)"},
    k_q = {default = 16, min = 0, int = true, doc = "query-aware blocks"},
    k_e = {default = 48, min = 0, int = true, doc = "query-agnostic (eviction-score) blocks"},
    weights = {default = "", doc = "safetensors file with e or the eviction.* network (empty: ||v|| stand-in)"},
  },
  ops = {"score.pooled", "attn.block_sparse"},
  checks = {"gamma(t) >= k_e / (1 + k_q + k_e) once the causal blocks exceed the budget", "k_e = 0: InfLLM-v2 (query-aware) only",
    "k_q = 0: query-agnostic only", "independent float64 selection", "score-blind selection loses recall",
    "decode steps equal the prefill rows; per-step block transfers match the prefill sets"},
  params_sources = {"standin:value_norm", "sha256:<weights file>"},
  fit_why = "the eviction head is trained end to end with its logit bias (ED-DMA), which this forward does not model",
  select_blocks = all_sets,
  mask = function(prob, p) return (estimate(prob, p)) end,
  decode = decode,
  run = function(prob, p)
    local _, nq, _, _, nk = dims(prob)
    if nq < nk then
      -- a decode problem: replayed step by step through the decode runtime (cache, then the hook)
      local D = require "sparselab.decode"
      local r = D.replay("nosa", prob, p)
      p.params_source = r.state.layers[1].nosa.source
      local st = D.replay_stats(r.steps)
      return {o = r.o, lse = r.lse, steps = r.steps, stats = st, params_source = p.params_source}
    end
    local out = run_blocks(prob, p)
    out.params_source = p.params_source
    return out
  end,
}
