-- SnapKV (and Ada-SnapKV with `adaptive = 1`) as the decode baselines of
-- The Sparse Frontier — card: sparse_frontier (decode study; SnapKV has no
-- card of its own). After the prefill the KV cache of every KV head is
-- compressed to a capacity: the first `prefix` tokens, the last `local`
-- tokens, and the middle tokens with the largest pooled attention from the
-- prompt's last `obs_window` queries; decode steps then attend to the kept
-- tokens plus every generated token (nothing more is evicted).
-- Steps implemented (sparse_frontier card, configs of the reference
-- PiotrNawrot/sparse-frontier kv_compression.py as the card lists them):
--   importance = softmax of the obs-window queries over the prefix keys,
--   summed over window rows and the query heads of a KV group, pooled along
--   keys (kernel 21, average; `pooling` 1 = max); capacity = budget per KV
--   head; uniform (SnapKV) or adaptive across the KV heads of a layer
--   (Ada-SnapKV: every head keeps at least min_ratio of its share, the rest
--   goes to the largest importances across heads); sparsity accounting
--   s = 1 - kept / n (density reported per step).
-- evict = 1 (issue 13, session 3): the kept sets are applied as physical
-- compaction per KV head (decode.compact_heads: one cache per KV head holding
-- its kept prompt tokens and the generated ones, shrunk to its pages; the
-- resident bytes drop with the eviction ratio) and decode goes on over the
-- compacted caches; outputs equal the token-list path (test).
-- Divergences (evict = 0, the default): the kept set is applied as per-head token lists over the
-- cache (the tokens are not physically evicted: reads drop, memory does
-- not; kv_bytes counts reads). Pooling checked against the reference (issue
-- 20: PiotrNawrot/sparse-frontier sparse_frontier/modelling/attention/
-- kv_compression.py, SnapKVCompression.kv_compress): avg_pool1d(kernel,
-- padding kernel // 2, stride 1, zero padding counted) over the importance
-- of ALL prompt tokens (the window included), then the local window and the
-- prefix set to +inf and one top-capacity — the pooling here; its group mean
-- (vs a sum here) gives the same ranking.
-- Kernel level: a prefill problem (n_q = n_k) with decode_rows = r > 0
-- decodes its last r rows (the obs window is the rows before them, the
-- earlier rows run dense); a decode problem (n_q < n_k) needs the prompt's
-- queries in problem.state.obs_q.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "snapkv",
  card = "sparse_frontier",
  title = "SnapKV: LLM Knows What You are Looking for Before Generation",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Prompt KV compressed per head: sinks, a local window and the middle tokens the last prompt queries attend to.",
  knob = "budget",
  params = {
    budget = {default = 1024, min = 1, int = true, doc = "KV capacity per head after compression (tokens)"},
    obs_window = {default = 256, min = 1, int = true, doc = "prompt queries whose attention scores the keys"},
    kernel = {default = 21, min = 1, int = true, doc = "pooling kernel along keys (odd)"},
    pooling = {default = 0, min = 0, max = 1, int = true, doc = "0 average, 1 max"},
    ["local"] = {default = 128, min = 0, int = true, doc = "most recent prompt tokens always kept"},
    prefix = {default = 4, min = 0, int = true, doc = "first prompt tokens always kept"},
    adaptive = {default = 0, min = 0, max = 1, int = true, doc = "1: Ada-SnapKV budget across the KV heads of the layer"},
    min_ratio = {default = 0.2, min = 0, max = 1, doc = "Ada-SnapKV: share of the uniform budget every head keeps"},
    decode_rows = {default = 0, min = 0, int = true, doc = "kernel level, n_q = n_k: the last rows decoded through the compressed cache"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
    evict = {default = 0, min = 0, max = 1, int = true,
      doc = "1: the kept sets are evicted physically, per KV head (each head's cache compacted and shrunk; resident bytes drop)"},
  },
  ops = {"page.token_scores", "page.attend"},
  checks = {"budget >= prompt length keeps everything (dense)", "kept = prefix + local + top middle by pooled importance",
    "Ada: per-head counts differ, total equals the uniform total, each head >= min_ratio share",
    "importance beats first-k (position) selection on peaked inputs"},
}

-- The kept prompt positions per KV head (Lua lists, 0-based) from importance
-- imp[g][j] (a score-blind test passes its own).
local function compress(imp, n, p, hkv)
  local pre, loc = math.min(p.prefix, n), math.min(p["local"], n)
  local lo, hi = pre, n - loc          -- the middle [lo, hi)
  local share = math.max(0, math.min(p.budget - pre - loc, hi - lo))
  local kept, take = {}, {}
  for g = 1, hkv do
    kept[g] = {}
    for j = 0, pre - 1 do kept[g][#kept[g] + 1] = j end
    for j = math.max(hi, pre), n - 1 do kept[g][#kept[g] + 1] = j end
    take[g] = p.adaptive == 1 and math.floor(p.min_ratio * share) or share
  end
  -- per head: middle positions by importance (ties: lower position)
  local order = {}
  for g = 1, hkv do
    order[g] = {}
    for j = lo, hi - 1 do order[g][#order[g] + 1] = j end
    table.sort(order[g], function(a, b)
      if imp[g][a + 1] ~= imp[g][b + 1] then return imp[g][a + 1] > imp[g][b + 1] end
      return a < b
    end)
  end
  if p.adaptive == 1 then
    -- the rest of the layer's budget to the largest importances across heads
    local rest, pool = hkv * share, {}
    for g = 1, hkv do
      rest = rest - take[g]
      for i = take[g] + 1, #order[g] do pool[#pool + 1] = {g, order[g][i]} end
    end
    table.sort(pool, function(a, b)
      local x, y = imp[a[1]][a[2] + 1], imp[b[1]][b[2] + 1]
      if x ~= y then return x > y end
      if a[1] ~= b[1] then return a[1] < b[1] end
      return a[2] < b[2]
    end)
    for i = 1, math.min(rest, #pool) do take[pool[i][1]] = take[pool[i][1]] + 1 end
  end
  for g = 1, hkv do
    for i = 1, take[g] do kept[g][#kept[g] + 1] = order[g][i] end
  end
  return kept
end
M.compress = compress

local function step_with(ls, q, p, backend, importance)
  local cache, hkv = ls.cache, ls.cache:heads()
  if not ls.kept then
    local n0 = ls.n_prefill
    if n0 <= p.budget then
      ls.kept = {}
      for g = 1, hkv do ls.kept[g] = {}; for j = 0, n0 - 1 do ls.kept[g][j + 1] = j end end
    else
      if not ls.obs_q then
        sl.fail("snapkv: the layer has no prompt queries (decode.prefill(st, layer, k, v, {q = ...}))")
      end
      local w = math.min(p.obs_window, ls.obs_q:shape()[2], n0)
      local obs = ls.obs_q:narrow(2, ls.obs_q:shape()[2] - w + 1, w)
      local imp = importance and importance(cache, obs, n0) or
        decode.snapkv_importance(cache, obs, n0, p.kernel, p.pooling, backend)
      ls.kept = compress(imp, n0, p, hkv)
    end
  end
  return decode.kept_step(ls, q, ls.kept, backend, p.evict)
end
M.step_with = step_with

function M.decode(st, ls, step, p)
  return step_with(ls, step.q, p, step.backend)
end

function M.run(prob, p)
  local qs, ks = prob.q:shape(), prob.k:shape()
  local R, N = qs[2], ks[2]
  local obs
  if R == N then
    local r = math.min(p.decode_rows, N - 1)
    if r == 0 then
      local o, lse = sl.attn.dense(prob.q, prob.k, prob.v, {causal = prob.causal, backend = prob.backend})
      return {o = o, lse = lse, stats = {density = 1}}
    end
    local n0 = N - r
    local w = math.min(p.obs_window, n0)
    obs = prob.q:narrow(2, n0 - w + 1, w)
    local dq = prob.q:narrow(2, 1, n0)
    local od, ld = sl.attn.dense(dq, prob.k:narrow(2, 1, n0), prob.v:narrow(2, 1, n0), {causal = true, backend = prob.backend})
    local rest = decode.kernel_run(M, {q = prob.q:narrow(2, n0 + 1, r), k = prob.k, v = prob.v, backend = prob.backend,
      state = {obs_q = obs}, save_mask = prob.save_mask}, p, {})
    local sel
    if rest.selection then   -- eval --save-mask: the dense causal prompt rows, then the decode rows' selection
      local t, hq = rest.selection:totable(), qs[1]
      local full = {}
      for h = 1, hq do
        full[h] = {}
        for i = 1, n0 do
          local row = {}
          for j = 1, N do row[j] = j <= i and 1 or 0 end
          full[h][i] = row
        end
        for i = 1, r do full[h][n0 + i] = t[h][i] end
      end
      sel = sl.tensor(full, "u8")
    end
    return {o = sl.cat({od, rest.o}, 2), lse = sl.cat({ld, rest.lse}, 2), stats = rest.stats, selection = sel}
  end
  obs = prob.state and prob.state.obs_q
  if not obs then
    sl.fail("snapkv: a decode problem needs the prompt's queries (problem.state.obs_q [Hq, w, D])")
  end
  return decode.kernel_run(M, prob, p, {prefill_q = obs})
end

return M
