-- ZipVL: Efficient Large Vision-Language Models with Dynamic Token
-- Sparsification and KV Cache Compression — card: zipvl. The decode side:
-- after the prefill, a layer-wide set of important tokens (adaptive count
-- from an attention-mass threshold) keeps its K/V at b_h bits, the rest at
-- b_l bits; decoding attends densely over the dequantised mixed cache.
-- Card steps implemented:
--   1. probe attention: the last `probe` prompt queries (the card leaves the
--      probe rows unknown; ZipCache's recent-token probe read this way) over
--      the prompt keys, softmax per row (page.token_scores, causal);
--   2. adaptive count p: the smallest number of tokens whose normalised
--      importance, sorted descending, reaches tau of the total (summed over
--      every head: one layer-wide set, the card's "aggregation: unknown");
--   3. normalised importance: column sums divided by the number of probe
--      rows that see the column (causal correction);
--   4. T = the top-p tokens, U = the rest;
--   6. KV cache: K and V of T quantised to b_h bits, of U to b_l bits,
--      asymmetric min/max (the card: bit layout unknown; read as KIVI's: K
--      per channel over the tokens of its precision class, V per token over
--      its channels), kept dequantised beside the cache;
--   7. decode: dense attention over the mixed cache plus every generated
--      token (full precision).
--   7b. (issue 13 session 3) re-compression every `recompress` (100)
--      generated tokens: once that many generated tokens are uncompressed,
--      steps 2-4 re-run on them with the decode queries that produced them
--      as probes (their attention over the cache up to their positions,
--      page.token_scores; causal-count normalised), and the window's K/V are
--      quantised with the same rule (its important tokens b_h bits, the rest
--      b_l); recompress = 0 keeps generated tokens in full precision. The
--      probes' scores are taken against the f32 keys (the decode attention
--      itself reads the dequantised ones) — an unknown read this way.
-- Not implemented: step 5 (token-level sparse prefill: the prefill here is
-- dense). Quantisation and importance run in Lua (tables), so this recipe is
-- for small inputs.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "zipvl",
  card = "zipvl",
  title = "ZipVL: Efficient Large Vision-Language Models with Dynamic Token Sparsification and KV Cache Compression",
  family = "budget",
  phase = "decode",
  causal_only = true,
  summary = "Layer-wide important tokens by an attention-mass threshold keep b_h-bit KV, the rest b_l bits; dense decode over the mixed cache.",
  knob = "tau",
  knob_direction = 1,
  params = {
    tau = {default = 0.975, min = 0, max = 1, doc = "attention mass the important tokens hold"},
    probe = {default = 64, min = 1, int = true, doc = "last prompt queries probing the attention"},
    bits_high = {default = 4, min = 2, max = 8, int = true, doc = "bits of the important tokens' K/V"},
    bits_low = {default = 2, min = 2, max = 8, int = true, doc = "bits of the other tokens' K/V"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
    recompress = {default = 100, min = 0, int = true,
      doc = "re-compress every this many generated tokens (steps 2-4 with their decode queries; 0: never)"},
  },
  ops = {"page.token_scores", "attn.dense"},
  checks = {"tau = 1 and bits_high = bits_low = 8: close to dense", "the important set holds >= tau of the normalised importance",
    "importance beats position order at the same count"},
}

-- Per token asymmetric min/max quantise-dequantise of a row (Lua list).
local function qdq(row, bits)
  local lo, hi = math.huge, -math.huge
  for _, x in ipairs(row) do lo = math.min(lo, x); hi = math.max(hi, x) end
  local step = (hi - lo) / ((1 << bits) - 1)
  local out = {}
  for i, x in ipairs(row) do
    out[i] = step > 0 and lo + math.floor((x - lo) / step + 0.5) * step or x
  end
  return out
end
M.qdq = qdq

--- The important set (Lua set of 0-based positions) of a prompt of n0
--- tokens from probe queries obs [Hq, w, D]; imp_fn replaces the importance.
function M.important(cache, obs, n0, p, backend, imp_fn, from)
  from = from or 0
  local imp
  if imp_fn then
    imp = imp_fn(n0)
  else
    local w = obs:shape()[2]
    local per = decode.snapkv_importance(cache, obs, n0, 1, 0, backend)   -- column sums per KV head
    imp = {}
    for j = 1, n0 do
      local acc = 0
      for g = 1, #per do acc = acc + per[g][j] end
      local seen = w - math.max(0, (j - 1) - (n0 - w))   -- probe rows at n0-w .. n0-1 that see key j-1
      imp[j] = acc / math.max(1, seen)
    end
  end
  local order, total = {}, 0
  for j = from + 1, n0 do order[#order + 1] = j; total = total + imp[j] end
  table.sort(order, function(a, b) if imp[a] ~= imp[b] then return imp[a] > imp[b] end return a < b end)
  local set, acc = {}, 0
  for _, j in ipairs(order) do
    if acc >= p.tau * total then break end
    set[j - 1] = true
    acc = acc + imp[j]
  end
  return set
end

-- V: per token over its channels. K: per channel over the tokens of the
-- same precision class (KIVI's layout: keys have outlier channels, which a
-- per-token range would spread over every channel).
local function mixed(t, n0, set, p, per_channel, from)
  from = from or 0
  local rows = t:narrow(2, from + 1, n0 - from):totable()
  for _, head in ipairs(rows) do
    if not per_channel then
      for j, row in ipairs(head) do head[j] = qdq(row, set[from + j - 1] and p.bits_high or p.bits_low) end
    else
      for _, high in ipairs{true, false} do
        local idx = {}
        for j = 1, n0 - from do if (set[from + j - 1] == true) == high then idx[#idx + 1] = j end end
        for c = 1, #head[1] do
          local col = {}
          for i, j in ipairs(idx) do col[i] = head[j][c] end
          local q = qdq(col, high and p.bits_high or p.bits_low)
          for i, j in ipairs(idx) do head[j][c] = q[i] end
        end
      end
    end
  end
  return sl.tensor(rows)
end
M.mixed = mixed

function M.decode(st, ls, step, p, imp_fn)
  local cache, q = ls.cache, step.q
  local n, n0 = cache:len(), ls.n_prefill
  if not ls.zipvl then
    if not ls.obs_q then sl.fail("zipvl: the layer has no prompt queries (decode.prefill(st, layer, k, v, {q = ...}))") end
    local w = math.min(p.probe, ls.obs_q:shape()[2], n0)
    local obs = ls.obs_q:narrow(2, ls.obs_q:shape()[2] - w + 1, w)
    local set = M.important(cache, obs, n0, p, step.backend, imp_fn)
    ls.zipvl = {set = set, k = mixed(cache:tensor("k"), n0, set, p, true), v = mixed(cache:tensor("v"), n0, set, p),
      done = n0, probes = {}, windows = {}}
  end
  local z = ls.zipvl
  -- step 7b: this step's query probes its own token; a full window of generated tokens is re-compressed
  if p.recompress > 0 then
    z.probes[#z.probes + 1] = q
    if n - z.done >= p.recompress then
      local probes = sl.cat(z.probes, 2)
      local w = probes:shape()[2]
      local wset = M.important(cache, probes, n, p, step.backend, imp_fn and function() return imp_fn(n) end, n - w)
      z.k = sl.cat({z.k, mixed(cache:tensor("k"), n, wset, p, true, n - w)}, 2)
      z.v = sl.cat({z.v, mixed(cache:tensor("v"), n, wset, p, false, n - w)}, 2)
      for j in pairs(wset) do z.set[j] = true end
      z.windows[#z.windows + 1] = {from = n - w, to = n, set = wset}
      z.done, z.probes = n, {}
    end
  end
  local k, v = z.k, z.v
  if n > z.done then
    k = sl.cat({k, cache:tensor("k"):narrow(2, z.done + 1, n - z.done)}, 2)
    v = sl.cat({v, cache:tensor("v"):narrow(2, z.done + 1, n - z.done)}, 2)
  end
  local o, lse = sl.attn.dense(q, k, v, {causal = false, backend = step.backend})
  local n_high = 0
  for _ in pairs(z.set) do n_high = n_high + 1 end
  local d = cache:head_dim()
  -- bytes read: the compressed tokens at their bits (+ lo, step per token or channel), the rest f32
  local bytes = cache:heads() * 2 * (n_high * (d * p.bits_high / 8 + 8) + (z.done - n_high) * (d * p.bits_low / 8 + 8) +
    (n - z.done) * 4 * d)
  return {o = o, lse = lse, important = ls.zipvl.set,
    stats = {tokens_read = n, density = 1, important_ratio = n_high / z.done, kv_bytes = bytes, compressed = z.done}}
end

function M.run(prob, p)
  if prob.q:shape()[2] == prob.k:shape()[2] then return decode.kernel_run(M, prob, p, {}) end
  local obs = prob.state and prob.state.obs_q
  if not obs then sl.fail("zipvl: a decode problem needs the prompt's queries (problem.state.obs_q [Hq, w, D])") end
  return decode.kernel_run(M, prob, p, {prefill_q = obs})
end

return M
