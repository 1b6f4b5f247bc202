-- LServe: Efficient Long-sequence LLM Serving with Unified Sparse Attention
-- — card: lserve. ONLY the static streaming-head prefill part.
-- Card steps implemented:
--   prefill 1. streaming KV heads: Λ-shaped mask, sinks j < ctx_sink and the
--      window 0 <= i - j < ctx_local, ∩ causal;
--   prefill 2. the other (retrieval) KV heads: dense causal;
--   roles are per KV head and shared by its query heads (the mask has Hkv
--   heads); executor: attn.block_sparse.
-- Decode (issue 13), a decode hook over the paged cache (kernel level: a
-- decode problem, n_q < n_k, is replayed step by step through it):
--   decode 3. streaming KV heads attend to the first dec_sink and the last
--      dec_local tokens;
--   decode 4. dense heads, when the cache holds more than dec_budget tokens:
--      a. logical pages of `page` (16) tokens carry the cache's min/max;
--      b. logical page bound u (page.bounds, per query head);
--      c. physical page (sub_chunks = 4 logical pages) score = max of its
--         logical pages (reduce.block, mode max);
--      d. top (min(max(3, dec_budget / physical), n_phys) - 1) physical pages
--         of the others plus the last one (page.select, last forced);
--      e. reusable selector: the selection is recomputed every
--         update_interval (4) steps and reused in between (the current
--         physical page is added to a reused selection so the newest tokens
--         are always attended — a documented reading of "always append the
--         most recent physical page");
--   decode 5. exact attention over the selected tokens (page.attend).
-- NOT implemented: the DuoAttention gate calibration of head roles; KV
-- quantisation (QServe).
-- Unknowns chosen: without gate scores, the streaming heads are the first
-- round(static_sparsity · Hkv) KV heads (0-based 0 .. s-1); defaults
-- static_sparsity 0.5, ctx_sink 128, ctx_local 8192 (the card's).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function n_streaming(p, hkv)
  return math.floor(p.static_sparsity * hkv + 0.5)
end

local function mask_for(prob, p)
  local hkv = prob.k:shape()[1]
  local ns = n_streaming(p, hkv)
  local items = {}
  for h = 0, hkv - 1 do
    if h < ns then
      items[h + 1] = sl.mask.sink{s = p.ctx_sink} + sl.mask.window{w = p.ctx_local}
    else
      items[h + 1] = sl.mask.causal()
    end
  end
  return recipe.materialize(sl.mask.assign(items), prob, p, hkv)
end

local M = {
  id = "lserve",
  card = "lserve",
  title = "LServe: Efficient Long-sequence LLM Serving with Unified Sparse Attention",
  family = "static-pattern",
  phase = "both",
  causal_only = true,
  summary = "Streaming KV heads run sinks + a local window, the others dense (prefill) or Quest-style page selection with a reusable selector (decode).",
  knob = "ctx_local",
  params = recipe.block_params{
    ctx_local = {default = 8192, min = 1, int = true, doc = "streaming heads' window including the query"},
    ctx_sink = {default = 128, min = 0, int = true, doc = "streaming heads' sink tokens"},
    static_sparsity = {default = 0.5, min = 0, max = 1, doc = "fraction of KV heads that stream"},
    dec_sink = {default = 128, min = 0, int = true, doc = "decode: streaming heads' sink tokens"},
    dec_local = {default = 256, min = 1, int = true, doc = "decode: streaming heads' recent tokens"},
    dec_budget = {default = 4096, min = 1, int = true, doc = "decode: dense heads' token budget"},
    page = {default = 16, min = 1, int = true, doc = "decode: logical page (cache metadata) tokens"},
    sub_chunks = {default = 4, min = 1, int = true, doc = "decode: logical pages per physical page"},
    update_interval = {default = 4, min = 1, int = true, doc = "decode: steps between selector updates"},
  },
  ops = {"attn.block_sparse", "page.bounds", "reduce.block", "page.select", "page.attend"},
  checks = {"output and density equal an independent reference", "static_sparsity 0 equals dense",
    "streaming head rows equal streaming_llm rows (same sink and window)",
    "decode: budget >= cache is dense; the selector is reused between updates; score-blind page choice fails"},
  mask = mask_for,
}

local prefill_run = recipe.block_sparse_run(mask_for)

-- Dense heads' physical pages (Lua lists per query head, 0-based ids);
-- scorer replaces the page bounds in tests.
local function select_physical(cache, q, p, backend, scorer)
  local u = scorer and scorer(cache, q) or require("sparselab.decode").bounds(cache, q, backend)
  local phys = sl.reduce.block(u, {br = 1, bc = p.sub_chunks, mode = 1, backend = backend})
  local np = phys:shape()[3]
  local k = math.min(math.max(3, p.dec_budget // (p.page * p.sub_chunks)), np)
  local t = sl.page.select(phys, {k = k, last = 1, backend = backend}):totable()
  local lists = {}
  for h, row in ipairs(t) do
    lists[h] = {}
    for _, id in ipairs(row[1]) do if id >= 0 then lists[h][#lists[h] + 1] = id end end
  end
  return lists
end

function M.decode(st, ls, step, p, scorer)
  local decode = require "sparselab.decode"
  local cache, q = ls.cache, step.q
  local n, hq, hkv, d = cache:len(), q:shape()[1], cache:heads(), cache:head_dim()
  local ns, group = n_streaming(p, hkv), hq // hkv
  local phys_len = p.page * p.sub_chunks
  local sel
  if n > p.dec_budget and ns < hkv then
    local saved = ls.lserve
    if not saved or st.steps - saved.step >= p.update_interval then
      saved = {step = st.steps, lists = select_physical(cache, q, p, step.backend, scorer)}
      ls.lserve = saved
    end
    sel = saved.lists
  end
  local lists, tokens = {}, 0
  local cur = (n - 1) // phys_len
  for h = 1, hq do
    local l = {}
    if (h - 1) // group < ns then
      for j = 0, math.min(p.dec_sink, n) - 1 do l[#l + 1] = j end
      for j = math.max(p.dec_sink, n - p.dec_local), n - 1 do l[#l + 1] = j end
    elseif not sel then
      for j = 0, n - 1 do l[#l + 1] = j end
    else
      local have = {}
      for _, u in ipairs(sel[h]) do have[u] = true end
      have[cur] = true
      for u = 0, cur do
        if have[u] then for j = u * phys_len, math.min((u + 1) * phys_len, n) - 1 do l[#l + 1] = j end end
      end
    end
    lists[h] = l
    tokens = tokens + #l
  end
  local t = decode.lists_tensor(lists)
  local o, lse = decode.attend_tokens(cache, q, t, {backend = step.backend})
  return {o = o, lse = lse, pages = t, selection = sel,
    stats = {tokens_read = tokens / hq, density = tokens / (hq * n), kv_bytes = 8 * d * tokens}}
end

--- Prefill problems run the static masks; a decode problem (n_q < n_k) is
--- replayed through the decode hook.
function M.run(prob, p)
  if prob.q:shape()[2] < prob.k:shape()[2] then
    return require("sparselab.decode").kernel_run(M, prob, p, {})
  end
  return prefill_run(prob, p)
end

return M
