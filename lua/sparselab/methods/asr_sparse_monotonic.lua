-- Adaptive Sparse and Monotonic Attention for Transformer-based ASR (Zhao et
-- al., DSAA 2022, arXiv 2209.15176) — card: asr_sparse_monotonic.
-- Card steps implemented:
--   1. adaptive sparse self-attention: α-entmax per head (attn.entmax run per
--      query head with its own α_h; mode = "entmax"). The learned α_h of the
--      paper (α = 1 + sigmoid(a) most likely — unknown) is a parameter here:
--      `alphas`, a comma-separated list cycled over the heads (default
--      "1.25,1.5,1.75,2": a spread as the adaptive model learns);
--   2. monotonic attention (mode = "monotonic"): hard monotonic chunkwise
--      attention at inference (MoChA style; the paper's exact variant is
--      unknown): a per-head pointer moves forward to the first key whose energy
--      scale·q·k + r >= 0 and a softmax runs over the chunk of w keys ending
--      there (attn.monotonic). The paper applies it to encoder-decoder
--      attention; on a self-attention problem the pointer scans the causal keys.
-- Not here: the regulariser pruning redundant monotonic heads (step 3; form
--   unknown — head masks of the model runner are the workbench's head
--   pruning), training, the soft (expected) monotonic attention of training.
-- No reference code exists (card). Fidelity: the entmax mode has no
--   log-sum-exp (recall does not apply, rel_l2 and density recorded); the
--   monotonic mode is a softmax over a subset, so its L is comparable and
--   recall is recorded. Both need a model trained with them: on softmax-trained
--   Q/K/V the kernel-level behaviour is reported.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local function alpha_list(s)
  local out = {}
  for tok in tostring(s):gmatch("[^,%s]+") do
    local a = tonumber(tok)
    if not a or a < 1 or a > 2 then sl.fail("asr_sparse_monotonic: alphas must be numbers in [1, 2], found '%s'", tok) end
    out[#out + 1] = a
  end
  if #out == 0 then sl.fail("asr_sparse_monotonic: alphas is empty") end
  return out
end

local function run_entmax(prob, p)
  local al = alpha_list(p.alphas)
  local hq, hkv = prob.q:shape()[1], prob.k:shape()[1]
  local G = hq // hkv
  local outs, kept = {}, 0
  local t0 = sl.time()
  for h = 1, hq do
    local a = al[(h - 1) % #al + 1]
    local exact = a == 1 or a == 1.5 or a == 2
    local g = (h - 1) // G + 1
    local o, sup = sl.attn.entmax(prob.q:narrow(1, h, 1), prob.k:narrow(1, g, 1), prob.v:narrow(1, g, 1),
      {causal = prob.causal and 1 or 0, alpha = a, algo = exact and 0 or 1, backend = prob.backend})
    outs[h] = o
    for _, row in ipairs(sup:totable()) do for _, c in ipairs(row) do kept = kept + c end end
  end
  local o = sl.cat(outs, 1)
  local ms = (sl.time() - t0) * 1e3
  local d, pairs = prob.q:shape()[3], E.pairs(prob)
  return {o = o, lse = nil, stats = {flops = 2 * d * pairs + 2 * d * kept + 50 * pairs,
    density = pairs > 0 and kept / pairs or 0, estimate_ms = 0, execute_ms = ms}}
end

local function run_monotonic(prob, p)
  local args = {chunk = p.chunk, r = p.r, causal = prob.causal and 1 or 0, backend = prob.backend}
  local t0 = sl.time()
  local o, lse, stop = sl.attn.monotonic(prob.q, prob.k, prob.v, args)
  local ms = (sl.time() - t0) * 1e3
  local kept, rows, empty = 0, 0, 0
  for _, head in ipairs(stop:totable()) do
    for _, j in ipairs(head) do
      rows = rows + 1
      if j < 0 then empty = empty + 1 else kept = kept + math.min(p.chunk, j + 1) end
    end
  end
  local d, pairs = prob.q:shape()[3], E.pairs(prob)
  return {o = o, lse = lse, stop = stop, stats = {flops = 4 * d * kept, estimator_flops = 2 * d * prob.k:shape()[2] * prob.q:shape()[1],
    density = pairs > 0 and kept / pairs or 0, empty_rows = empty, estimate_ms = 0, execute_ms = ms}}
end

local function run(prob, p)
  if p.mode == "entmax" then return run_entmax(prob, p) end
  if p.mode == "monotonic" then return run_monotonic(prob, p) end
  sl.fail("asr_sparse_monotonic: mode must be 'entmax' or 'monotonic', found '%s'", tostring(p.mode))
end

return {
  id = "asr_sparse_monotonic",
  card = "asr_sparse_monotonic",
  title = "Adaptive Sparse and Monotonic Attention for Transformer-based Automatic Speech Recognition",
  family = "non-softmax",
  phase = "both",
  summary = "Per-head α-entmax self-attention (mode entmax) or hard monotonic chunkwise attention (mode monotonic); needs a model trained with it.",
  knob = nil,
  params = {
    mode = {default = "entmax", doc = "'entmax' (per-head α) or 'monotonic' (MoChA-style chunk attention)"},
    alphas = {default = "1.25,1.5,1.75,2", doc = "α per head, comma-separated, cycled over the query heads"},
    chunk = {default = 8, min = 1, int = true, doc = "monotonic: keys of the chunk ending at the stop"},
    r = {default = 0, min = -1e6, max = 1e6, doc = "monotonic: energy offset (stop where scale·q·k + r >= 0)"},
  },
  ops = {"attn.entmax", "attn.monotonic"},
  checks = {"α_h = 1 is a softmax head, α_h = 2 a sparsemax head", "monotonic stops never decrease",
    "chunk attention equals float64 softmax over the chunk"},
  run = run,
}
