-- Gated Attention for Large Language Models (Qiu et al. 2025) — card:
-- gated_attention.
-- Card steps implemented:
--   1. the q_proj layout of the reference (qiuzh20/gated_attention
--      modeling_qwen3.py, Qwen3Attention.forward): per KV group, [G·d_h query
--      | G (headwise) or G·d_h (elementwise) gate] — split_qproj below, tested
--      with a hand-built projection;
--   2. standard attention: attn.dense (causal softmax, GQA);
--   3. the G1 gate after SDPA, õ = o ⊙ σ(g), headwise (broadcast over d_h) or
--      elementwise: attn.sigmoid_gate; gates below eps skip their output
--      exactly (the card's head/token sparsity; eps = 0 is the paper's model);
--      stats: gate_density (fraction of outputs kept), gate_mean.
-- Not here: W_o (step 4, outside attention), training, RoPE/QK-norm.
-- Readings chosen: the gate logits come from the layer input x through W_θ,
--   learned with the model; no gated model is available (weights
--   QwQZh/gated_attention not downloaded), so on a problem (Q/K/V only) the
--   recipe derives stand-in logits from the query: headwise g = gain·(q·u_h)/√d
--   + bias, elementwise g_c = gain·(q·U_h[:, c])/√d + bias, with u_h / U_h
--   seeded normal. This measures the kernel-level behaviour (skipping,
--   cost, error against ungated softmax) only: the method needs a model
--   trained with its gates. Fidelity: the output is not a softmax average,
--   so recall through L does not apply and no lse is returned; rel_l2 against
--   ungated dense is recorded.
local sl = require "sparselab"

local M = {}

--- Splits one token's q_proj output (a flat table of hkv·(G·d + G·w) values,
--- w = 1 headwise or d elementwise) as the reference does: per KV group g,
--- the first G·d entries are the group's G query heads (head g·G + i at
--- offset i·d), the next G·w the same heads' gates. Returns q [hq][d] and
--- gate [hq][w] (query head h = g·G + i).
function M.split_qproj(row, hq, hkv, d, elementwise)
  local G, w = hq // hkv, elementwise and d or 1
  local per = G * d + G * w
  if #row ~= hkv * per then
    sl.fail("gated_attention.split_qproj: expected %d values (%d kv groups of %d), found %d", hkv * per, hkv, per, #row)
  end
  local q, gate = {}, {}
  for g = 0, hkv - 1 do
    for i = 0, G - 1 do
      local h = g * G + i + 1
      q[h], gate[h] = {}, {}
      for c = 1, d do q[h][c] = row[g * per + i * d + c] end
      for c = 1, w do gate[h][c] = row[g * per + G * d + i * w + c] end
    end
  end
  return q, gate
end

-- stand-in gate logits [hq, nq, w] from the query (see the header)
local function gate_logits(prob, p)
  local qs = prob.q:shape()
  local hq, nq, d = qs[1], qs[2], qs[3]
  local w = p.mode == "elementwise" and d or 1
  local U = sl.randn({hq, d, w}, {seed = p.seed}):totable()
  local g = {}
  for h = 1, hq do
    g[h] = {}
    -- the queries of head h in chunks of rows (a whole q as Lua tables
    -- exceeded the totable limit at 8 heads, n = 4096, d = 64)
    local step = math.max(1, 262144 // d)
    for r0 = 1, nq, step do
      local cnt = math.min(step, nq - r0 + 1)
      local q = prob.q:narrow(1, h, 1):narrow(2, r0, cnt):totable()[1]
      for x = 1, cnt do
        local row = {}
        for c = 1, w do
          local s = 0
          for e = 1, d do s = s + q[x][e] * U[h][e][c] end
          row[c] = p.gain * s / math.sqrt(d) + p.bias
        end
        g[h][r0 + x - 1] = row
      end
    end
  end
  return sl.tensor(g)
end

-- calls f(x) for every element of t [H, R, ...] (at most 2^18 elements to Lua at a time)
local function each(t, f)
  local sh = t:shape()
  local per = 1
  for i = 3, #sh do per = per * sh[i] end
  local step = math.max(1, 262144 // per)
  local function walk(x) if type(x) == "table" then for _, y in ipairs(x) do walk(y) end else f(x) end end
  for h = 1, sh[1] do
    for r0 = 1, sh[2], step do walk(t:narrow(1, h, 1):narrow(2, r0, math.min(step, sh[2] - r0 + 1)):totable()) end
  end
end

local function run(prob, p)
  if p.mode ~= "headwise" and p.mode ~= "elementwise" then
    sl.fail("gated_attention: mode must be 'headwise' or 'elementwise', found '%s'", tostring(p.mode))
  end
  local g = gate_logits(prob, p)
  local t0 = sl.time()
  local args = {causal = prob.causal and 1 or 0, backend = prob.backend}
  local o = sl.attn.dense(prob.q, prob.k, prob.v, args)
  local y, kept = sl.attn.sigmoid_gate(o, g, {eps = p.eps, backend = prob.backend})
  local ms = (sl.time() - t0) * 1e3
  local qs = prob.q:shape()
  local total, on = qs[1] * qs[2] * qs[3], 0
  each(kept, function(c) on = on + c end)
  local gsum, gn = 0, 0
  each(g, function(x) gsum = gsum + 1 / (1 + math.exp(-x)); gn = gn + 1 end)
  local flops = sl.op_flops("attn.dense", prob.q, prob.k, prob.v, args)
  return {o = y, lse = nil, kept = kept, gate = g, stats = {
    -- a skipped output's P·V could be left out: the attention FLOPs scale by the kept fraction
    flops = flops * on / total + 6 * total, density = on / total, gate_density = on / total,
    gate_mean = gsum / math.max(gn, 1), estimate_ms = 0, execute_ms = ms}}
end

M.id = "gated_attention"
M.card = "gated_attention"
M.title = "Gated Attention for Large Language Models: Non-linearity, Sparsity, and Attention-Sink-Free"
M.family = "non-softmax"
M.phase = "both"
M.summary = "Softmax attention output times a per-head (or per-channel) sigmoid gate; near-zero gates skip outputs; needs a model trained with its gates."
M.knob = "eps"
M.knob_direction = -1
M.params = {
  mode = {default = "headwise", doc = "'headwise' (one gate per token and head) or 'elementwise' (one per channel)"},
  eps = {default = 0, min = 0, max = 1, doc = "gates sigmoid(g) below eps skip their output exactly (0: the paper's model)"},
  gain = {default = 4, min = -1e6, max = 1e6, doc = "stand-in logits: multiplier of q·u/√d"},
  bias = {default = 0, min = -1e6, max = 1e6, doc = "stand-in logits: added constant"},
  seed = {default = 1, min = 0, int = true, doc = "seed of the stand-in gate projection"},
}
M.ops = {"attn.dense", "attn.sigmoid_gate"}
M.checks = {"gate logits -> +inf equals ungated attention", "q_proj layout split per KV group (hand-built weight)",
  "headwise gate broadcast over d_h, elementwise not", "skipping (eps) zeroes exactly the gated-off outputs"}
M.fidelity = "rel_l2"
M.run = run
return M
