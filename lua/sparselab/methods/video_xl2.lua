-- Video-XL-2: Towards Very Long-Video Understanding Through Task-Aware KV
-- Sparsification — card: video_xl2. The decode side: a bi-level KV cache in
-- which the chunks relevant to the query keep their dense KV and every other
-- chunk is average-pooled along the sequence; decoding attends densely over
-- the mixed cache.
-- Card steps implemented:
--   2. bi-level KV per prompt chunk of `chunk` tokens: dense, or the chunk's
--      tokens average-pooled with window = stride = `step` (keys and values
--      alike; pool.tokens over segment bounds builds the mixed cache in one
--      call, a dense token being a segment of one);
--   3. chunk selection: chunks {0, 1, last} always dense, plus the `topk`
--      most relevant others; relevance (the card: unknown, the released code
--      takes ground-truth units) is read here as q . mean key of the chunk,
--      summed over every query head (page.token_scores against pool.tokens
--      means, page.select with sink = 2, last = 1, one list for all heads),
--      chosen at the first decode step and kept;
--   4. decoding: dense attention over the mixed cache (order preserved) plus
--      every generated token (dense).
-- Not implemented: step 1 (the chunk-based prefill mask with timestamp rows
-- and columns; videoxl2_chunk_prefill holds a prefill mask) and timestamp
-- tokens in the compressed chunks (no timestamp layout in generic inputs).
-- Reference read (issue 20): VectorSpaceLab/Video-XL,
--   Video-XL-2/eval/lvu/w_chunk_bilevel/videoxl2/videoxl2/model/language_model/
--   llava_qwen.py — LlavaQwenForCausalLM.forward ("bi-level KVs Decoding":
--   blocks_positions, cmpr_kvs, gt_block_idx, mixed_prefill_past_key_values)
--   and pooling_kvs. Divergences:
--   - selection: the reference does not score chunks; it maps given ground-
--     truth frame units to chunks (block = unit // (selected_chunk_size / 2)
--     + 1), keeps {0, 1, last} ∪ those dense and reads `selected_topk` without
--     using it; with no units every chunk stays dense. Here the units are not
--     an input, so relevance is q . mean key summed over heads (above) and
--     `topk` chunks are taken: the reference's exact selection needs its unit
--     list (not reproducible from Q/K/V; no option).
--   - chunks: the reference's chunk 0 is the system prefix (up to the first
--     visual token) and the others are `selected_chunk_size` frame groups
--     (timestamp tokens + a group's visual tokens); here chunks are `chunk`
--     tokens from position 0.
--   - pooling: pooling_kvs is F.avg_pool1d(kernel = stride = step) over each
--     frame group's visual tokens (timestamps kept dense), which drops the
--     last (L mod step) tokens of a group; here a ragged last window is
--     averaged over the tokens it has (nothing dropped).
--   - positions: the reference continues RoPE positions after the mixed
--     cache's (shorter) length; a sparselab problem holds Q, K as given.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "video_xl2",
  card = "video_xl2",
  title = "Video-XL-2: Towards Very Long-Video Understanding Through Task-Aware KV Sparsification",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Bi-level KV: relevant chunks dense, the others average-pooled by `step`; dense decoding over the mixed cache.",
  knob = "topk",
  params = {
    topk = {default = 4, min = 0, int = true, doc = "relevant chunks kept dense besides {0, 1, last}"},
    chunk = {default = 64, min = 1, int = true, doc = "prompt tokens per chunk"},
    step = {default = 12, min = 1, int = true, doc = "pooling window (= stride) of a compressed chunk"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
  },
  ops = {"pool.tokens", "page.token_scores", "page.select", "attn.dense"},
  checks = {"every chunk selected equals dense exactly", "chunks 0, 1 and the last are always dense",
    "query-relevant chunks beat the first chunks on peaked inputs"},
}

-- The dense chunks (0-based ids, a set) for q over the prompt of n0 tokens.
local function select_chunks(cache, q, p, n0, backend, scorer)
  local nc = (n0 + p.chunk - 1) // p.chunk
  local keep = {}
  if p.topk + 3 >= nc then
    for c = 0, nc - 1 do keep[c] = true end
    return keep
  end
  local s
  if scorer then
    s = scorer(nc)
  else
    local means = sl.pool.tokens(cache:tensor("k"):narrow(2, 1, n0), {block = p.chunk, mode = 0, backend = backend})
    s = sl.page.token_scores(q, means, {causal = 0, backend = backend})
  end
  local t = sl.page.select(s, {k = p.topk + 3, group = q:shape()[1], sink = 2, last = 1, backend = backend}):totable()
  for _, c in ipairs(t[1][1]) do if c >= 0 then keep[c] = true end end
  return keep
end
M.select_chunks = select_chunks

-- Segment starts of the mixed cache: dense chunks token by token, the
-- others every `step` tokens; generated tokens (>= n0) dense.
local function bounds(keep, p, n0, n)
  local b = {}
  for c = 0, (n0 + p.chunk - 1) // p.chunk - 1 do
    local a, e = c * p.chunk, math.min((c + 1) * p.chunk, n0)
    local stride = keep[c] and 1 or p.step
    for j = a, e - 1, stride do b[#b + 1] = j end
  end
  for j = n0, n - 1 do b[#b + 1] = j end
  return b
end

function M.decode(st, ls, step, p, scorer)
  local cache, q = ls.cache, step.q
  local n, n0 = cache:len(), ls.n_prefill
  if not ls.vx_keep then ls.vx_keep = select_chunks(cache, q, p, n0, step.backend, scorer) end
  local b = bounds(ls.vx_keep, p, n0, n)
  local bt = sl.tensor(b, "i32")
  local kn, vn = cache:tensor("k"):narrow(2, 1, n), cache:tensor("v"):narrow(2, 1, n)
  local km = sl.pool.tokens(kn, {bounds = bt, mode = 0, backend = step.backend})
  local vm = sl.pool.tokens(vn, {bounds = bt, mode = 0, backend = step.backend})
  local o, lse = sl.attn.dense(q, km, vm, {causal = false, backend = step.backend})
  local rows = #b
  return {o = o, lse = lse, keep = ls.vx_keep,
    stats = {tokens_read = rows, density = rows / n, kv_bytes = 8 * cache:head_dim() * rows * cache:heads()}}
end

function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {})
end

return M
