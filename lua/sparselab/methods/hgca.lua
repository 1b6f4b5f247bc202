-- HGCA: Hybrid GPU-CPU Attention for Long Context LLM Inference — card:
-- hgca. The recent keys attended densely on one device, salient older keys
-- per head on the CPU, the two partial attentions merged by log-sum-exp.
-- Card steps implemented:
--   1. "GPU" path: dense attention of q over the last `window` tokens of the
--      cache (page.attend over one-token pages) on `gpu_backend` (the
--      problem's backend by default; "cuda" where it runs);
--   2. "CPU" path: per query head the `budget` older tokens (positions before
--      the window) with the largest exact q.k (page.token_scores restricted to
--      the older tokens, page.select), attended on the cpu backend; the two
--      key sets are disjoint by construction;
--   3. merge: attn.lse_merge of (o_R, lse_R) and (o_S, lse_S); an empty CPU
--      set (budget 0 or no older tokens) returns the GPU part alone;
--   4. state: only the cache; the window slides with the cache length.
-- Unknowns chosen (the card has only the abstract): the CPU selection
-- criterion (exact top-k scores per head — an oracle-quality policy; the
-- paper's CPU-optimised policy is not public), window 1024 and budget 1024.
-- Bytes crossing between the devices per step: Hq.(d + 1) floats (reported
-- as pcie_bytes).
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "hgca",
  card = "hgca",
  title = "HGCA: Hybrid GPU-CPU Attention for Long Context LLM Inference",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Recent window dense on the GPU, top-k older tokens per head on the CPU, merged by log-sum-exp.",
  knob = "budget",
  params = {
    budget = {default = 1024, min = 0, int = true, doc = "older tokens attended per head on the CPU (0: none)"},
    window = {default = 1024, min = 1, int = true, doc = "recent tokens attended densely on the GPU"},
    gpu_cuda = {default = 0, min = 0, max = 1, int = true, doc = "1: the window part on the cuda backend"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
  },
  ops = {"page.token_scores", "page.select", "page.attend", "attn.lse_merge"},
  checks = {"older set = everything: the merge equals dense", "empty CPU set equals the GPU part alone",
    "window and CPU sets are disjoint", "bytes between devices are Hq.(d+1) floats",
    "top-k beats first-k older tokens on peaked inputs"},
}

-- One step; scorer replaces the CPU selection's scores in tests.
local function split_step(cache, q, p, backend, scorer)
  local n, hq, d = cache:len(), q:shape()[1], cache:head_dim()
  local w = math.min(p.window, n)
  local old = n - w
  local gpu = p.gpu_cuda == 1 and "cuda" or backend
  local o, lse = decode.attend_tokens(cache, q, decode.token_range(hq, old, n), {backend = gpu})
  local tokens = w * hq
  local cpu_lists
  if p.budget > 0 and old > 0 then
    local older = decode.token_range(hq, 0, old)
    local s = scorer and scorer(cache, q, old) or
      decode.token_scores(cache, q, {pages = older, page = 1, backend = "cpu"})
    cpu_lists = sl.page.select(s, {k = math.min(p.budget, old), last = 0, p = 1, backend = "cpu"})
    local o2, lse2 = decode.attend_tokens(cache, q, cpu_lists, {backend = "cpu"})
    o, lse = sl.attn.lse_merge(o, lse, o2, lse2, {backend = backend})
    local _, t2 = decode.pages_read(cpu_lists, 1, n)
    tokens = tokens + t2
  end
  return {o = o, lse = lse, pages = cpu_lists, window_start = old,
    stats = {tokens_read = tokens / hq, density = tokens / (hq * n), kv_bytes = 8 * d * tokens,
      pcie_bytes = 4 * hq * (d + 1)}}
end
M.split_step = split_step

function M.decode(st, ls, step, p)
  return split_step(ls.cache, step.q, p, step.backend)
end

function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {layer = prob.layer or 0})
end

return M
