-- SeerAttention-R: Sparse Attention Adaptation for Long Reasoning — card:
-- seer_attention_r. Decode-time block selection per KV head; this recipe is
-- the reference's `oracle_sparse` implementation (exact scores at the same
-- budget), the stand-in DESIGN names for a learned gate without weights.
-- Card steps implemented (oracle variant):
--   3'. scores: the exact attention probabilities exp(z - LSE) of every query
--       head (page.token_scores, page.attend over every page for the LSE),
--       max-pooled over each KV block of `block` tokens (reduce.block, max),
--       then max-pooled over the query heads of the GQA group (reduce.heads,
--       max) — the training ground truth's pooling;
--   4. top (budget / block) blocks per KV head with the last (incomplete)
--      block always selected (page.select, last forced); one selection per
--      GQA group;
--   5. executor: exact attention over the selected blocks (page.attend with
--      page = block, lists per KV head: split-K over the selected blocks).
-- gate = 1 (issue 13 session 3): the learned gate from a safetensors file
-- (`--param weights=FILE`, `gate=1`; reference microsoft/SeerAttention
-- seer_attn/decode_sparse/attn_gate_inf.py, AttnGate with "Qproj" and
-- Kmaxminavg):
--   1. Q branch: per KV head h, the g query heads of its group concatenated
--      ([g.d]) and projected: Q_gate[h] = Wq[h] . concat(q) (mm.dense);
--   2. K branch: per complete block of `block` tokens, concat(max, min, mean)
--      of its keys (page.meta with page = block) projected: K_gate[h, b] =
--      Wk[h] . concat(...) (mm.dense), kept in the decode state as the "K
--      compression cache" and extended only when a block completes (test:
--      equals a recomputation from scratch);
--   3. scores Q_gate . K_gate / sqrt(dg) (mm.dense; no softmax: top-k is
--      invariant); the incomplete last block is not scored (the reference
--      zeroes it) but always selected;
--   4-5. as the oracle: top (budget / block) blocks per KV head, last block
--      forced, exact attention over them.
--   Weights file tensors (f32; per layer L, or one pair for every layer):
--     "wq.L" / "wq": [Hkv, dg, g.d] — the reference's attngate_linear_q.weight
--       [Hkv, g, d, dg] reshaped to [Hkv, g.d, dg] and transposed (1, 2);
--     "wk.L" / "wk": [Hkv, dg, 3.d] — attngate_linear_k.weight [Hkv, 3d, dg]
--       transposed (1, 2); input channels in the order max, min, mean.
--   Session 4: the gate's RMSNorm and RoPE, as the reference's AttnGate
--   .forward (decode branch) and modeling_qwen3_seerattn_inference.py:
--   - gate_norm = 1 (reference use_qk_norm; its default is off, so is ours):
--     Q_gate and every K_gate row pass an RMSNorm over dg, eps 1e-6,
--     y = w . x / sqrt(mean(x^2) + eps), weights "qnorm(.L)" / "knorm(.L)"
--     [dg] (the reference's attngate_qnorm.weight / attngate_knorm.weight);
--     applied after the projection, before RoPE, as the reference does.
--   - gate_rope = 1 (default, reference seerattn_use_rope = True): RoPE of
--     dimension dg in the reference's rotate_half layout (channel j pairs
--     with j + dg/2, angle pos . theta^(-2j/dg)); theta = gate_theta, or the
--     model's rope_theta in the runner's decode loop when gate_theta = 0,
--     10000 at kernel level (no model). The query is rotated at its own
--     position (cache length - 1: the step's token), a K_gate row at
--     position b . block (the first token of its block: the card, and the
--     reference's prefill path, block_position_ids = position_ids[0::b]).
--   - gate_kpos = 1 (named reference option): the reference's decode path
--     (attn_gate_inf.py, AttnGate.forward, `max_cache_len % block == 0`)
--     rotates a block completed during decoding at the current position
--     (its last token, b . block + block - 1) instead; blocks complete at
--     prefill keep their first token. Default 0 (the card).
--   Divergence: no rope_scaling of the gate's RoPE (the reference builds it
--   from the model config, so scaled models would scale it); keys captured
--   at kernel level are post-RoPE, and the positions are the cache slots.
--   Not in the gate: the Qavg / Qavgproj / Qorig pooling types.
-- Not implemented: the threshold variant, the optional sliding window,
-- training.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "seer_attention_r",
  card = "seer_attention_r",
  title = "SeerAttention-R: Sparse Attention Adaptation for Long Reasoning",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Oracle stand-in for the learned gate: blocks ranked by group-max of block-max attention probability; last block kept.",
  knob = "budget",
  params = {
    budget = {default = 4096, min = 1, int = true, doc = "token budget B (B / block blocks per KV head)"},
    block = {default = 64, min = 1, int = true, doc = "KV block b"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
    gate = {default = 0, min = 0, max = 1, int = true, doc = "0: oracle_sparse stand-in; 1: the learned gate from `weights`"},
    weights = {default = "", doc = "gate = 1: safetensors file with wq(.L) [Hkv, dg, g.d] and wk(.L) [Hkv, dg, 3.d] (see the header)"},
    gate_rope = {default = 1, min = 0, max = 1, int = true, doc = "gate = 1: RoPE on Q_gate and K_gate (reference seerattn_use_rope)"},
    gate_norm = {default = 0, min = 0, max = 1, int = true,
      doc = "gate = 1: RMSNorm of Q_gate / K_gate with qnorm(.L) / knorm(.L) [dg] (reference use_qk_norm)"},
    gate_theta = {default = 0, min = 0, doc = "gate RoPE base; 0 = the model's rope_theta, 10000 without a model"},
    gate_kpos = {default = 0, min = 0, max = 1, int = true,
      doc = "K_gate RoPE position: 0 first token of the block; 1 the reference's decode path (blocks completed while decoding at their last token)"},
  },
  ops = {"page.token_scores", "page.attend", "reduce.block", "reduce.heads", "page.select", "page.meta", "mm.dense"},
  checks = {"budget >= n is dense", "the last block is always selected; one selection per GQA group",
    "oracle block choice beats first-k blocks on peaked inputs"},
}

local function block_scores(cache, q, p, backend)
  local hq = q:shape()[1]
  local P = decode.attention_probs(cache, q, backend)
  local rows = {}
  for h = 1, hq do rows[h] = {P[h]} end
  local probs = sl.tensor(rows)
  local bm = sl.reduce.block(probs, {br = 1, bc = p.block, mode = 1, backend = backend})
  return sl.reduce.heads(bm, {group = hq // cache:heads(), mode = 1, backend = backend})
end

-- A 2-D f32 tensor [rows, cols] from row tables.
local function mat(rows) return sl.tensor(rows) end

-- The gate's weights of a layer as 2-D tensors per KV head (converted once,
-- kept in the decode state): {q = {[h] = [dg, g.d]}, k = {[h] = [dg, 3d]}, dg}.
local function gate_weights(st, p, layer, hkv, g, d)
  st.gate = st.gate or {}
  if st.gate[layer] then return st.gate[layer] end
  if p.weights == "" then sl.fail("seer_attention_r: gate = 1 needs --param weights=FILE (a safetensors file)") end
  st.gate_file = st.gate_file or sl.load(p.weights)
  local f = st.gate_file
  local wq, wk = f["wq." .. layer] or f.wq, f["wk." .. layer] or f.wk
  if not wq or not wk then
    sl.fail("seer_attention_r: %s has no wq.%d / wq or wk.%d / wk tensor", p.weights, layer, layer)
  end
  local qs, ks = wq:shape(), wk:shape()
  if #qs ~= 3 or qs[1] ~= hkv or qs[3] ~= g * d or #ks ~= 3 or ks[1] ~= hkv or ks[3] ~= 3 * d or ks[2] ~= qs[2] then
    sl.fail("seer_attention_r: %s: expected wq [%d, dg, %d] and wk [%d, dg, %d], found wq [%s] and wk [%s]", p.weights,
      hkv, g * d, hkv, 3 * d, table.concat(qs, ", "), table.concat(ks, ", "))
  end
  local qt, kt = wq:to("f32"):totable(), wk:to("f32"):totable()
  local w = {q = {}, k = {}, dg = qs[2]}
  for h = 1, hkv do w.q[h], w.k[h] = mat(qt[h]), mat(kt[h]) end
  if p.gate_norm == 1 then
    local qn, kn = f["qnorm." .. layer] or f.qnorm, f["knorm." .. layer] or f.knorm
    if not qn or not kn then
      sl.fail("seer_attention_r: gate_norm = 1: %s has no qnorm.%d / qnorm or knorm.%d / knorm tensor", p.weights, layer, layer)
    end
    local a, b = qn:shape(), kn:shape()
    if #a ~= 1 or a[1] ~= qs[2] or #b ~= 1 or b[1] ~= qs[2] then
      sl.fail("seer_attention_r: %s: expected qnorm and knorm [%d] (dg), found qnorm [%s] and knorm [%s]", p.weights,
        qs[2], table.concat(a, ", "), table.concat(b, ", "))
    end
    w.qnorm, w.knorm = qn:to("f32"):totable(), kn:to("f32"):totable()
  end
  if qs[2] % 2 ~= 0 and p.gate_rope == 1 then
    sl.fail("seer_attention_r: gate_rope = 1 needs an even gate dim dg, found dg = %d", qs[2])
  end
  st.gate[layer] = w
  return w
end

-- RMSNorm of a row (Lua table) with weights wt, eps 1e-6 (reference RMSNorm).
local function rms_row(row, wt)
  local s = 0
  for _, x in ipairs(row) do s = s + x * x end
  local r = 1 / math.sqrt(s / #row + 1e-6)
  for c = 1, #row do row[c] = wt[c] * row[c] * r end
  return row
end

-- RoPE of a row at position pos, the reference's rotate_half layout.
local function rope_row(row, pos, theta)
  local dg = #row
  local half = dg // 2
  for j = 0, half - 1 do
    local ang = pos * theta ^ (-2 * j / dg)
    local c, s = math.cos(ang), math.sin(ang)
    local x0, x1 = row[j + 1], row[j + half + 1]
    row[j + 1], row[j + half + 1] = x0 * c - x1 * s, x1 * c + x0 * s
  end
  return row
end

-- The gate's RoPE base: gate_theta, else the model's, else 10000.
local function gate_theta(p, rope)
  if p.gate_theta and p.gate_theta > 0 then return p.gate_theta end
  return rope and rope.theta or 10000
end

-- The K compression cache of a layer: per KV head the gate keys of every
-- complete block (rows of dg), extended when blocks complete; rows are
-- normalised (gate_norm) and rotated (gate_rope) before they are cached.
local function gate_keys(ls, cache, p, w, backend, rope)
  local n, hkv = cache:len(), cache:heads()
  local complete = n // p.block
  -- blocks complete before the first step's token are the prefill's
  ls.kgate = ls.kgate or {blocks = 0, rows = {}, prefill_blocks = math.max(n - 1, 0) // p.block}
  local kc = ls.kgate
  local theta = gate_theta(p, rope)
  if complete > kc.blocks then
    local from = kc.blocks * p.block
    local k = cache:tensor("k"):narrow(2, from + 1, (complete - kc.blocks) * p.block)
    local mn, mx, me = sl.page.meta(k, {page = p.block, backend = backend})
    local tmn, tmx, tme = mn:totable(), mx:totable(), me:totable()
    for h = 1, hkv do
      local x = {}
      for b = 1, complete - kc.blocks do
        local row = {}
        for _, part in ipairs{tmx[h][b], tmn[h][b], tme[h][b]} do
          for _, val in ipairs(part) do row[#row + 1] = val end
        end
        x[b] = row
      end
      local y = sl.mm.dense(mat(x), w.k[h], {backend = backend}):totable()
      kc.rows[h] = kc.rows[h] or {}
      for i, row in ipairs(y) do
        local b = kc.blocks + i - 1
        if w.knorm then rms_row(row, w.knorm) end
        if p.gate_rope == 1 then
          local pos = b * p.block
          if p.gate_kpos == 1 and b >= kc.prefill_blocks then pos = pos + p.block - 1 end
          rope_row(row, pos, theta)
        end
        kc.rows[h][#kc.rows[h] + 1] = row
      end
    end
    kc.blocks = complete
  end
  return kc
end

-- Gate scores [Hkv, 1, nb]: Q_gate . K_gate / sqrt(dg) per complete block,
-- -inf for the incomplete last block (selected anyway: last = 1).
local function gate_scores(st, ls, cache, q, p, layer, backend, rope)
  local hq, hkv, d = q:shape()[1], cache:heads(), cache:head_dim()
  local g, n = hq // hkv, cache:len()
  local nb = (n + p.block - 1) // p.block
  local w = gate_weights(st, p, layer, hkv, g, d)
  local kc = gate_keys(ls, cache, p, w, backend, rope)
  local theta = gate_theta(p, rope)
  local qt = q:totable()
  local out = {}
  for h = 1, hkv do
    local x = {}
    for j = 1, g do for c = 1, d do x[#x + 1] = qt[(h - 1) * g + j][1][c] end end
    local qg = sl.mm.dense(mat({x}), w.q[h], {backend = backend})
    if w.qnorm or p.gate_rope == 1 then
      local r = qg:totable()[1]
      if w.qnorm then rms_row(r, w.qnorm) end
      if p.gate_rope == 1 then rope_row(r, n - 1, theta) end
      qg = mat({r})
    end
    local row = {}
    if kc.blocks > 0 then
      row = sl.mm.dense(qg, mat(kc.rows[h]), {backend = backend}):totable()[1]
      for b = 1, #row do row[b] = row[b] / math.sqrt(w.dg) end
    end
    for b = kc.blocks + 1, nb do row[b] = -math.huge end
    out[h] = {row}
  end
  return sl.tensor(out)
end
M.gate_keys = gate_keys

local function block_step(cache, q, p, backend, scorer)
  local n, hkv, d = cache:len(), cache:heads(), cache:head_dim()
  local nb = (n + p.block - 1) // p.block
  local kb = math.max(1, p.budget // p.block)
  local lists
  if kb >= nb then
    lists = decode.all_pages(hkv, 1, nb)
  else
    local s = scorer and scorer(cache, q, nb) or block_scores(cache, q, p, backend)
    lists = sl.page.select(s, {k = kb, last = 1, backend = backend})
  end
  local o, lse = sl.page.attend(q, cache:tensor("k"), cache:tensor("v"), lists,
    {page = p.block, n = n, backend = backend})
  local _, tokens = decode.pages_read(lists, p.block, n)
  return {o = o, lse = lse, pages = lists,
    stats = {tokens_read = tokens / hkv, density = tokens / (hkv * n), kv_bytes = 8 * d * tokens}}
end
M.block_step = block_step

function M.decode(st, ls, step, p)
  if p.gate == 1 then
    local layer = step.layer or 0
    return block_step(ls.cache, step.q, p, step.backend,
      function(cache, q) return gate_scores(st, ls, cache, q, p, layer, step.backend, step.rope) end)
  end
  return block_step(ls.cache, step.q, p, step.backend)
end

function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {})
end

return M
