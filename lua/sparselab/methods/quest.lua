-- Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference —
-- card: quest (also the decode method of The Sparse Frontier). Decode-time
-- page selection from per-channel min/max key bounds.
-- Card steps implemented:
--   1. page metadata m_p, M_p (channel-wise min and max of the page's keys)
--      kept incrementally in the paged cache (sl.kvcache_c: prefill builds
--      every page, each decode append folds the new key into the last page);
--      keys as stored (post-RoPE is the caller's business);
--   2. page score U_p = sum_c max(q_c m_p,c, q_c M_p,c) (page.bounds);
--   3. budget: token budget B -> k_p = max(1, B // P) pages, three readings
--      under `variant` (mit-han-lab/Quest): 0 = the kernel (quest/utils/controller.py: the last
--      page always kept, top-(k_p - 1) of the others), 1 = the accuracy-eval
--      code (evaluation/quest_attention.py local_heavy_hitter_mask: top
--      max(3, B // P) over all pages, nothing forced), 2 = Sparse Frontier
--      (top-(k_p + 1) with the current page written into the last slot; here
--      the current page forced plus the k_p best others, i.e. no duplicate
--      when the current page already ranked — a documented divergence);
--   4. GQA: share = 1 sums the bounds over the query heads of a KV group and
--      keeps one page list per KV head (Sparse Frontier share_pages); share =
--      0 one list per query head (original Quest, MHA);
--   5. executor: exact softmax over the selected pages (page.attend, split-K
--      merged by LSE), causal trimming of the last page, no renormalisation;
--   6. layers below dense_layers (2) and the whole prefill run dense (eval
--      code: `q_len > 1 or layer_id < 2`); no state between steps but the
--      page metadata, selection recomputed every step and layer.
--   7. (issue 13 session 3, beyond the card) kv_bits = 8 / 4: the cache's
--      pages hold int8 / int4 K codes (v_bits: V too) with one scale per page
--      and channel INSTEAD of f32 K/V (sl_kvcache_set_quant); the page
--      metadata is that of the dequantised keys (so the bound still holds for
--      what is read) and page.attend_q dequantises inside the kernel.
--      kv_zero = 1 (session 4): asymmetric codes, zero = page-channel min,
--      scale = range / (2^b - 1) (sl_kvcache_set_quant_zero; page.attend_q
--      opt.kzero / opt.vzero).
-- Not implemented: the fused CUDA paging kernels of the reference (our
-- page.attend is a plain split-K kernel); RoPE (the captured keys are used).
-- Unknowns chosen: budget >= cache (k >= n_pages) is dense, not an error; a
-- page larger than the prefix cache is an error at kernel level.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local function page_count(p)
  local kp = math.max(1, p.budget // p.page)
  if p.variant == 1 then return math.max(3, kp), 0 end
  if p.variant == 2 then return kp + 1, 1 end
  return kp, 1
end

local function bounds(cache, q, backend)
  return decode.bounds(cache, q, backend)
end

-- One decode step of one layer over cache (which already holds the step's
-- key): select pages (scorer: the estimator, Quest's bound unless replaced)
-- and attend. Returns {o, lse, pages, stats}.
local function page_step(cache, q, p, layer, backend, scorer)
  local np, hq, hkv, d = cache:pages(), q:shape()[1], cache:heads(), cache:head_dim()
  local g = p.share == 1 and hq // hkv or 1
  local k, last = page_count(p)
  local pages, est_bytes = nil, 0
  if layer < p.dense_layers or k >= np then
    pages = decode.all_pages(hq // g, 1, np)
  else
    local s = (scorer or bounds)(cache, q, backend)
    pages = sl.page.select(s, {k = k, group = g, last = last, sink = 0, backend = backend})
    est_bytes = 8 * d * np * hkv   -- min and max rows of every page
  end
  local o, lse = decode.attend(cache, q, pages, {backend = backend})
  return {o = o, lse = lse, pages = pages, stats = decode.page_stats(pages, cache, est_bytes)}
end

local M = {
  id = "quest",
  card = "quest",
  title = "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Per page channel-wise key min/max; pages ranked by the upper bound of q.k; top pages (last page kept) attended.",
  knob = "budget",
  params = {
    budget = {default = 1024, min = 1, int = true, doc = "token budget B per step (k_p = B // page pages)"},
    page = {default = 16, min = 1, max = 65536, int = true, doc = "tokens per page P"},
    variant = {default = 0, min = 0, max = 2, int = true,
      doc = "0 kernel (last page + top k_p-1), 1 eval code (top max(3,k_p)), 2 Sparse Frontier (last page + top k_p)"},
    share = {default = 0, min = 0, max = 1, int = true, doc = "1: one page list per KV head from bounds summed over its query heads"},
    dense_layers = {default = 2, min = 0, int = true, doc = "layers below this run dense"},
    kv_bits = {default = 0, min = 0, max = 8, int = true,
      doc = "0: f32 pages; 4 or 8: the cache holds int4/int8 key codes with per-page, per-channel scales instead of f32 K (read by page.attend_q)"},
    v_bits = {default = 0, min = 0, max = 8, int = true, doc = "with kv_bits: 0 keeps V in f32; 4 or 8 quantises V's pages too"},
    kv_zero = {default = 0, min = 0, max = 1, int = true,
      doc = "with kv_bits: 1 = asymmetric codes (per page and channel zero point = min, scale = range / (2^b - 1))"},
  },
  ops = {"page.bounds", "page.select", "page.attend", "page.attend_q"},
  checks = {"q.k <= U_p for every key of every page (tests/test_page_ops.c)",
    "incremental page metadata equals a rebuild after appends and evictions (tests/test_page_ops.c)",
    "budget >= cache length equals dense to 1e-5", "the current page is always selected (variant 0, 2); |selected| = min(k_p, n_p)",
    "recall beats first-k and random page selection on peaked inputs"},
  page_step = page_step,
}

--- Kernel level: prefill (n_q = n_k) is dense as the card says; a decode
--- problem replays its rows one step at a time through a cache of the prefix
--- (as a sparse layer unless prob.layer says otherwise).
function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {layer = prob.layer or p.dense_layers})
end

function M.decode(st, ls, step, p)
  return page_step(ls.cache, step.q, p, step.layer or 0, step.backend)
end

return M
