-- Post-Training Sparse Attention with Double Sparsity — card:
-- double_sparsity. Decode-time token selection scored on a small subset of
-- channels ("label cache"), exact attention over the selected tokens.
-- Card steps implemented:
--   1. channel ranking per head: mean |x[t, c]| over calibration tokens,
--      sorted descending (decode.channel_rank). `channel` 0 = "k": from the
--      cached prefill keys of the layer, computed at its first decode step and
--      kept in the decode state (no calibration set needed); 1 = "q" and 2 =
--      "qk" (the reference's get_q_hook / get_qk_hook) need calibration
--      queries: pass them as st.calib_q[layer] ([Hq, n, D]) or, at kernel
--      level, they are refused with an error (no calibration queries there);
--   2. r = max(1, D // group_factor) top channels; the label cache is the
--      cache's keys read on those channels (page.token_scores gathers them);
--   3. estimate s_ij = q_i[C] . k_j[C] / sqrt(r), causal (page.token_scores);
--   4. top-k tokens by s (k = budget, heavy_const), nothing forced (as the
--      reference), ties to the lower index (page.select over one-token pages);
--   5. exact softmax over the selected tokens' full K, V (page.attend, page 1);
--   6. layers below dense_layers (2) dense; budget >= cache is dense.
--   2b. label quantisation (issue 13 session 3): label_bits = b in 2..8
--      pseudo-quantises both q[C] and k[C] per row with asymmetric min/max
--      uniform quantisation, 2^b levels (the reference's pseudo_quantize in
--      evaluation/modify_llama.py; page.token_scores bits = qbits = b);
--      label_bits 0 or 16 = no quantisation. Default 0 here (the reference's
--      CLI defaults differ: 4 in convert, 2 in perplexity_eval — an unknown
--      resolved to keep full-precision labels unless asked).
-- Not implemented: the offload variant (step 7, unknown).
-- GQA: channels per KV head for channel 0 (keys are per KV head), per query
-- head for 1 and 2 (the reference repeats KV to the query heads).
-- Reference read: andy-yang-1/DoubleSparse evaluation/modify_llama.py
-- (sorted_channel gather, outlier_num = head_dim // group_factor, sort then
-- discard beyond heavy_const) — matched.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "double_sparsity",
  card = "double_sparsity",
  title = "Post-Training Sparse Attention with Double Sparsity",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Tokens ranked by q.k on r = d/group_factor calibrated channels; exact attention over the top-k tokens.",
  knob = "budget",
  params = {
    budget = {default = 128, min = 1, int = true, doc = "tokens kept per step (heavy_const)"},
    group_factor = {default = 8, min = 1, int = true, doc = "r = head_dim // group_factor label channels"},
    channel = {default = 0, min = 0, max = 2, int = true, doc = "ranking statistic: 0 mean|K| (prefill keys), 1 mean|Q|, 2 mean|Q.K| (calibration queries)"},
    dense_layers = {default = 2, min = 0, int = true, doc = "layers below this run dense"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache (metadata only; selection is per token)"},
    label_bits = {default = 0, min = 0, max = 16, int = true,
      doc = "label pseudo-quantisation of q[C] and k[C] per row (2..8 bits; 0 or 16: none; reference default 4 / 2)"},
  },
  ops = {"page.token_scores", "page.select", "page.attend"},
  checks = {"r = d equals the oracle top-k selection", "budget >= cache length equals dense to 1e-5",
    "channel ranking is a prefix of a permutation of 0..d-1", "recall rises with r on keys with outlier channels",
    "recall beats first-k token selection on peaked inputs"},
}

local function channels_for(st, ls, layer, p, hq)
  if ls.channels then return ls.channels end
  local cache = ls.cache
  local d = cache:head_dim()
  local r = math.max(1, d // p.group_factor)
  if p.channel == 0 then
    ls.channels = decode.channel_rank(cache:tensor("k"), r, cache:len())
  else
    local cq = st.calib_q and st.calib_q[layer]
    if not cq then
      sl.fail("double_sparsity: channel = %d needs calibration queries (st.calib_q[%d]); none given", p.channel, layer)
    end
    ls.channels = decode.channel_rank(cq, r, nil, p.channel == 2 and cache:tensor("k") or nil)
    if ls.channels:shape()[1] ~= hq then
      sl.fail("double_sparsity: calibration queries have %d heads, q has %d", ls.channels:shape()[1], hq)
    end
  end
  return ls.channels
end

-- One step over cache with channels (scorer replaces the estimator in tests).
local function token_step(cache, q, p, layer, backend, channels, scorer)
  local n, hq = cache:len(), q:shape()[1]
  local lists, est_bytes
  if layer < p.dense_layers or p.budget >= n then
    lists, est_bytes = decode.token_range(hq, 0, n), 0
  else
    local lb = p.label_bits == 16 and 0 or p.label_bits
    if lb == 1 or lb > 8 then
      sl.fail("double_sparsity: label_bits = %d; expected 2..8, or 0 / 16 for unquantised labels", p.label_bits)
    end
    local s = scorer and scorer(cache, q) or
      decode.token_scores(cache, q, {channels = channels, bits = lb, qbits = lb, backend = backend})
    lists = sl.page.select(s, {k = p.budget, last = 0, backend = backend})
    -- the label cache read: r channels per token at lb bits (+ lo, step per row), or f32
    est_bytes = (lb > 0 and (channels:shape()[2] * lb / 8 + 8) or 4 * channels:shape()[2]) * n * cache:heads()
  end
  local o, lse = decode.attend_tokens(cache, q, lists, {backend = backend})
  local _, tokens = decode.pages_read(lists, 1, n)
  return {o = o, lse = lse, pages = lists,
    stats = {tokens_read = tokens / hq, density = tokens / (hq * n), kv_bytes = 8 * cache:head_dim() * tokens + est_bytes}}
end
M.token_step = token_step

function M.decode(st, ls, step, p)
  local layer = step.layer or 0
  local channels = layer >= p.dense_layers and channels_for(st, ls, layer, p, step.q:shape()[1]) or nil
  return token_step(ls.cache, step.q, p, layer, step.backend, channels)
end

function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {layer = prob.layer or p.dense_layers})
end

return M
