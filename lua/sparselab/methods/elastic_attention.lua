-- Elastic Attention: per-head routing between full and sparse attention
-- (card: elastic_attention).
-- Card steps implemented, per KV head (a GQA group shares its decision):
--   2. decision r_h ∈ {FA, SA}: FA = dense causal attention ("retrieval"
--      mode), SA = streaming attention: `sink` tokens plus the `local_window`
--      most recent, in blocks of `block` (card defaults 64, 128, 1024);
--   3. execution: one block-sparse pass with per-head masks
--      (attn.block_sparse, mask heads = KV heads).
-- Step 1 (the trained router: pooled key features, MLPs, Gumbel decision)
--   needs released router weights; the card's workbench stand-in is used: an
--   oracle router — each KV head's retrieval score is the attention mass the
--   streaming mask would lose for the last `window_q` queries (exact softmax,
--   score.last_q, averaged over the group's query heads); the `sa_ratio`
--   fraction of KV heads with the lowest loss go SA (a fixed target ratio:
--   the trained model's ratio is input dependent). router = "random" draws
--   the SA heads by a seeded shuffle instead (the card's other stand-in).
-- Not here: training (the Lagrangian sparsity objective), task embeddings,
--   the XAttention retrieval-mode alternative.
-- Reference read (issue 20): LCM-Lab/Elastic-Attention,
--   elasticattn/training/eval/modeling_flash_qwen.py — AttentionRouter.forward,
--   Qwen3Attention.__init__ / forward (head_mask_type), get_mask. Divergences:
--   - the decision: the reference's router is a trained MLP over the mean of
--     the layer's keys (after k_norm, before RoPE) over the first 100 and last
--     100 tokens (pooling "ctx_q"), one decision per KV head repeated over its
--     group (as here); z = 1 runs the head dense (head_mask_type 0), z = 0
--     streaming (-1). With use_softmax (config default false) it is the argmax
--     of two logits; without it a sigmoid of logit + Gumbel noise thresholded
--     at 0.5 — the noise is drawn at inference too, so the reference's own
--     decision is random around its logit. The number of SA heads is input
--     dependent; here the oracle (or random) router takes a fixed sa_ratio.
--     Without enable_ada_sparsity (its config default) the reference uses a
--     static per-head mask from learned log-alphas (get_mask), not a router.
--   - the streaming layout: the reference's block_streaming_attn_func (MIT
--     Block-Sparse-Attention, not read) works in 128-token blocks, sink_blocks
--     = ceil(sink_size / 128), local_blocks = ceil(local_window_size / 128);
--     here the same rule in `block`-token blocks (card default 64): `block =
--     128` gives the reference's block counts (1 sink block, 8 local blocks at
--     the defaults), assuming its local blocks end at the query's own block
--     as stream_keep does.
--   - the "xattn" retrieval mode (XAttention on the FA heads) is not here.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local function stream_keep(prob, p, r, nkb)
  -- 1-based key blocks c kept by the streaming mask for query block r (1-based)
  local vis = E.visible(prob, r - 1, p.block, p.block, nkb)
  local sink_b = (p.sink + p.block - 1) // p.block
  local local_b = (p.local_window + p.block - 1) // p.block
  local keep = {}
  for c = 1, math.min(sink_b, vis) do keep[c] = true end
  for c = math.max(1, vis - local_b + 1), vis do keep[c] = true end
  return keep
end

local function route(prob, p, blind)
  local hq, hkv, n = prob.q:shape()[1], prob.k:shape()[1], prob.k:shape()[2]
  local G = hq // hkv
  local n_sa = math.floor(p.sa_ratio * hkv + 0.5)
  local order, flops = {}, 0
  for g = 1, hkv do order[g] = g end
  if blind or p.router == "random" then
    local st = p.seed
    for t = hkv, 2, -1 do
      st = (st * 1103515245 + 12345) % 2147483648
      local u = st % t + 1
      order[t], order[u] = order[u], order[t]
    end
  elseif n_sa > 0 then
    local W = math.min(p.window_q, prob.q:shape()[2])
    local args = {last = W, causal = prob.causal and 1 or 0, backend = prob.backend}
    -- [Hq, W, n] stays a tensor; one row at a time comes to Lua (the whole
    -- map as Lua tables took 8 heads x W x n numbers and failed at n = 16K)
    local probs = sl.score.last_q(prob.q, prob.k, args)
    flops = sl.op_flops("score.last_q", prob.q, prob.k, args)
    local nq = prob.q:shape()[2]
    local loss = {}
    for g = 1, hkv do
      local s = 0
      for h = (g - 1) * G + 1, g * G do
        local Ph = probs:narrow(1, h, 1)
        for t = 1, W do
          local row = Ph:narrow(2, t, 1):totable()[1][1]
          local pos = (n - nq) + (nq - W + t - 1)  -- 0-based key position of the row
          for j = 1, pos + 1 do
            local c = (j - 1) // p.block + 1
            local row_block = pos // p.block + 1
            local sink = (j - 1) < p.sink
            local near = c > row_block - (p.local_window + p.block - 1) // p.block
            if not (sink or near) then s = s + row[j] end
          end
        end
      end
      loss[g] = s
    end
    table.sort(order, function(a, b)
      if loss[a] ~= loss[b] then return loss[a] < loss[b] end
      return a < b
    end)
  end
  local sa = {}
  for i = 1, n_sa do sa[order[i]] = true end
  return sa, n_sa, flops
end

local function estimate(prob, p, blind)
  local hkv = prob.k:shape()[1]
  local nqb, nkb = E.blocks(prob, p.block, p.block)
  local sa, n_sa, flops = route(prob, p, blind)
  -- a u8 keep written in place (issue 19: an nqb x nkb Lua table per kv
  -- head was the largest n² term; a full head's block mask still lists its
  -- nqb·nkb/2 visible blocks, 4 bytes each)
  local keep = sl.zeros({hkv, nqb, nkb}, "u8")
  for g = 1, hkv do
    for r = 1, nqb do
      local vis = E.visible(prob, r - 1, p.block, p.block, nkb)
      if sa[g] then
        for c in pairs(stream_keep(prob, p, r, nkb)) do keep:set(g, r, c, 1) end
      else
        for c = 1, vis do keep:set(g, r, c, 1) end
      end
    end
  end
  return sl.mask.from_blocks(keep, {n_q = prob.q:shape()[2], n_k = prob.k:shape()[2], bq = p.block, bk = p.block,
    causal = prob.causal}), {estimator_flops = flops, stats = {sa_heads = n_sa}}
end

return {
  id = "elastic_attention",
  card = "elastic_attention",
  title = "Elastic Attention: per-head routing between full and streaming sparse attention",
  family = "head-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Each KV head is routed to full attention or to streaming (sink + local) attention; oracle router stand-in ranks heads by the mass streaming would lose.",
  knob = "sa_ratio",
  knob_direction = -1,
  params = {
    sa_ratio = {default = 0.5, min = 0, max = 1, doc = "fraction of KV heads in sparse (streaming) mode"},
    block = {default = 64, min = 1, max = 4096, int = true, doc = "block size of the masks"},
    sink = {default = 128, min = 0, int = true, doc = "sink tokens of SA heads"},
    local_window = {default = 1024, min = 1, int = true, doc = "local window tokens of SA heads"},
    window_q = {default = 64, min = 1, int = true, doc = "oracle router: last queries whose lost mass ranks the heads"},
    router = {default = "oracle", doc = "'oracle' (lost mass) or 'random' (seeded)"},
    seed = {default = 1, min = 0, int = true, doc = "seed of the random router"},
  },
  ops = {"score.last_q", "attn.block_sparse"},
  checks = {"sa_ratio 0 equals dense", "SA heads follow the streaming mask exactly", "oracle routing beats random routing on recall"},
  estimate = estimate,
  mask = function(prob, p) return (estimate(prob, p)) end,
  run = E.block_run(estimate),
}
