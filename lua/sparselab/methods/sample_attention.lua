-- SampleAttention: Near-Lossless Acceleration of Long Context LLM Inference
-- with Adaptive Structured Sparse Attention — card: sample_attention (v1,
-- arXiv 2406.15486).
-- Card steps implemented (v1):
--   1. local window: every query keeps its most recent w = ceil(r_w · n)
--      keys, the diagonal included (a fraction of n);
--   2. stage 1, query-guided sampling: exact softmax rows (score.rows) of
--      R = ceil(r_row · n) sampled queries, evenly strided over the sequence
--      (row t = floor((t + 1) · n / R) - 1, so the last row is one of them);
--      column scores c[j] = Σ_sampled A[i, j] (reduce.block + reduce.columns);
--   3. stage 2, score-based KV filtering: the smallest set of largest
--      columns holding >= alpha of the sampled mass (select.topp, the cdf
--      rule), kept for every query;
--   4. mask = window ∪ columns ∩ causal; executor attn.vs_mixed (window and
--      in-block columns as the block part, the other columns gathered per
--      query block) — the executed pairs are exactly the semantic mask.
-- Not implemented: the MLSys 2025 variant (segment-tail sampling, column and
-- slash stripes at 128-token blocks); the CRA-driven search over r_w.
-- Unknowns chosen (no code repository): alpha 0.95, r_w 0.05, r_row 0.02,
-- the sampling rule above; sampled rows run in chunks of 64 rows (memory).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"
local D = require "sparselab.dynamic"

local ID = "sample_attention"
local CHUNK = 64

-- Column scores [Hq, n] summed over the sampled rows, and their FLOPs.
local function column_scores(prob, rows)
  local parts, flops = {}, 0
  for s = 1, #rows, CHUNK do
    local chunk = {}
    for i = s, math.min(#rows, s + CHUNK - 1) do chunk[#chunk + 1] = rows[i] end
    local rt = sl.tensor(chunk, "i32")
    local args = {backend = prob.backend}
    local pr = sl.score.rows(prob.q, prob.k, rt, args)
    flops = flops + sl.op_flops("score.rows", prob.q, prob.k, rt, args) + pr:numel()
    parts[#parts + 1] = sl.reduce.block(pr, {br = #chunk, bc = 1, mode = 0})   -- [H, 1, n]
    pr:close()
  end
  local stacked = #parts == 1 and parts[1] or sl.cat(parts, 2)
  return sl.reduce.columns(stacked), flops
end

local function estimate(prob, p)
  local n = D.check_prefill(ID, prob)
  local hq = prob.q:shape()[1]
  local w = math.max(1, math.min(n, math.ceil(p.r_w * n)))
  local R = math.max(1, math.min(n, math.ceil(p.r_row * n)))
  local rows = {}
  for t = 0, R - 1 do rows[#rows + 1] = (t + 1) * n // R - 1 end
  local c, flops = column_scores(prob, rows)
  local cols = D.lists(sl.select.topp(c, {p = p.alpha}))
  -- executed = semantic: window ∪ columns, counted analytically
  local win_pairs = 0
  for i = 0, n - 1 do win_pairs = win_pairs + math.min(i + 1, w) end
  local kept = 0
  for h = 1, hq do
    kept = kept + win_pairs
    for _, j in ipairs(cols[h]) do kept = kept + (n - j) - math.min(w, n - j) end
  end
  -- the window holds offsets 0 .. w-1: the in-block columns it misses (w < bq) join as token bits
  local win = {}
  for o = 0, math.min(w, p.bq) - 1 do win[#win + 1] = o end
  local wins = {}
  for h = 1, hq do wins[h] = win end
  local blocks = sl.mask.window{w = w}:materialize{n_q = n, n_k = n, bq = p.bq, bk = p.bk, n_heads = 1}
  local lc = D.in_block_columns(cols, wins, n, p.bq, p.bk)
  if lc then
    local u = blocks + lc
    blocks:close()
    lc:close()
    blocks = u
  end
  local m = D.vs_mask(blocks, cols, n, n, kept)
  local nc = 0
  for h = 1, hq do nc = nc + #cols[h] end
  return {mask = m, flops = flops, extra = {window = w, sampled_rows = R, columns = nc / hq}}
end

return {
  id = ID,
  card = ID,
  title = "SampleAttention: Near-Lossless Acceleration of Long Context LLM Inference with Adaptive Structured " ..
    "Sparse Attention",
  family = "stripe-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Sampled exact query rows score key columns; the columns holding alpha of the mass plus a local " ..
    "window (a fraction of n) are kept for every query.",
  knob = "alpha",
  knob_direction = 1,
  params = recipe.block_params{
    alpha = {default = 0.95, min = 0, max = 1, doc = "share of the sampled column mass the kept columns hold (CRA target)"},
    r_w = {default = 0.05, min = 0, max = 1, doc = "local window as a fraction of n"},
    r_row = {default = 0.02, min = 0, max = 1, doc = "sampled query rows as a fraction of n"},
  },
  ops = {"score.rows", "reduce.block", "reduce.columns", "select.topp", "attn.vs_mixed"},
  checks = {"alpha = 1 and r_w = 1 equal dense", "columns monotone in alpha", "window scales with n",
    "executed equals semantic"},
  mask = function(prob, p) return estimate(prob, p).mask end,
  estimate = estimate,
  run = D.runner(estimate),
}
