-- Sparse Query Attention (SQA, Filipek 2025, arXiv 2510.01817) — card: sqa.
-- Card steps implemented:
--   1-3. H_q' = H_q / ratio query heads with the workbench's GQA mapping
--        (query head h' uses KV head ⌊h'·H_kv/H_q'⌋, i.e. h' / (H_q'/H_kv)),
--        standard causal softmax attention: attn.dense on the reduced heads;
--        score/PV FLOPs ∝ H_q' (the op's FLOP count of the reduced call).
-- A trained SQA model has H_q' query heads of its own and W_O: H_q'·d_h → D.
--   None is available, so on a problem (an MHA/GQA model's Q/K/V) the reduced
--   queries are a conversion: each group of `ratio` consecutive query heads
--   (within one KV group) is mean-pooled into one query head (the
--   mean-pooling that converts MHA to GQA checkpoints), and its output is given
--   to every head of the group so that the output has the problem's shape.
--   That is a reading of this workbench (not the paper's), measuring the
--   kernel-level cost scaling and the error of the conversion only; recall
--   through L is reported (each head's output is a softmax attention, but of
--   the pooled query, not its own).
-- Checks: ratio 1 (H_q' = H_q) is identical to dense; FLOPs scale as 1/ratio.
-- Reference: RxAI-dev/RxNN (not read in detail, per the card).
-- Read in issue 20, session 5: RxAI-dev/RxNN python/src/rxnn/transformers/
--   attention.py SparseQueryAttention (_init_q, _init_kv, _init_out,
--   _split_q_head, split_kv_head, _calculate_attention): H_q' = num_query_groups
--   query heads with their own q_proj and an out_proj from H_q'·d_h, K/V with
--   num_groups heads, SDPA with enable_gqa (query head h' reads KV head
--   h' // (H_q'/H_kv)) — the mapping used here. Divergence: the reference is a
--   trained architecture (its own W_Q, W_O); the mean-pooled query heads and
--   the output copied to every head of a group are this workbench's
--   conversion (above), not in the reference.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local function run(prob, p)
  local hq, hkv, n, d = prob.q:shape()[1], prob.k:shape()[1], prob.q:shape()[2], prob.q:shape()[3]
  local G = hq // hkv
  if p.ratio < 1 or G % p.ratio ~= 0 then
    sl.fail("sqa: ratio must divide the %d query heads of a KV group, found %d", G, p.ratio)
  end
  local t0 = sl.time()
  local hr = hq // p.ratio
  local Q
  if p.ratio == 1 then
    Q = prob.q
  else
    local q, pooled = E.heads(prob.q), {} -- head by head (a whole q passes totable's 1e6 limit at 32K)
    for h2 = 1, hr do
      local rows = {}
      for i = 1, n do
        local r = {}
        for c = 1, d do
          local s = 0
          for u = 0, p.ratio - 1 do s = s + q[(h2 - 1) * p.ratio + u + 1][i][c] end
          r[c] = s / p.ratio
        end
        rows[i] = r
      end
      pooled[h2] = rows
    end
    Q = sl.tensor(pooled)
  end
  local args = {causal = prob.causal, backend = prob.backend}
  local o, lse = sl.attn.dense(Q, prob.k, prob.v, args)
  local flops = sl.op_flops("attn.dense", Q, prob.k, prob.v, args)
  if p.ratio > 1 then
    -- every head of a pooled group gets the group's output
    local oh, lh = {}, {}
    for h = 1, hq do
      local src = (h - 1) // p.ratio + 1
      oh[h] = o:narrow(1, src, 1)
      lh[h] = lse:narrow(1, src, 1)
    end
    o, lse = sl.cat(oh, 1), sl.cat(lh, 1)
  end
  local ms = (sl.time() - t0) * 1e3
  return {o = o, lse = lse, stats = {flops = flops, estimator_flops = 0, density = 1 / p.ratio,
    query_heads = hr, estimate_ms = 0, execute_ms = ms}}
end

return {
  id = "sqa",
  card = "sqa",
  title = "Sparse Query Attention (SQA): fewer query heads",
  family = "head-level",
  phase = "both",
  summary = "H_q / ratio query heads (GQA mapping to the KV heads): attention FLOPs scale with the query heads; a trained SQA model is needed (here: mean-pooled query heads).",
  knob = "ratio",
  knob_direction = -1,
  params = {
    ratio = {default = 2, min = 1, int = true, doc = "query heads per SQA query head (H_q' = H_q / ratio); must divide H_q / H_kv"},
  },
  ops = {"attn.dense"},
  checks = {"ratio 1 equals dense (MHA/GQA)", "FLOPs ∝ H_q'", "GQA mapping h' -> h' / (H_q'/H_kv)"},
  run = run,
}
