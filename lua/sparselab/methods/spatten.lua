-- SpAtten: Efficient Sparse Attention Architecture with Cascade Token and
-- Head Pruning — card: spatten. The decode (GPT-2 generation) side of
-- cascade token pruning: attention probabilities accumulate per token across
-- layers and steps; at the pruning layer of every step the tokens beyond the
-- budget with the least accumulated importance are pruned for good.
-- Card steps implemented:
--   1. cascade token pruning: importance s_j = sum over processed layers,
--      query heads and decode steps of the attention probability token j
--      received (exact probabilities exp(z - LSE) of the tokens the layer
--      attended); at layer prune_layer of each step, when more than `budget`
--      tokens are alive, the top-budget by s stay (ties: the later position;
--      the current token always stays) and the others are pruned — they never
--      return in later layers or steps (state: st.spatten.alive / .score);
--      layers at or after prune_layer attend only alive tokens.
-- Not implemented: head pruning (step 2), local V pruning (step 3),
-- progressive quantisation (step 4: MSB/LSB split and threshold unknown),
-- the hardware top-k engine (step 5).
-- Unknowns chosen: layers before prune_layer see every token (pruning
-- cascades forward from the layer that decided it); the pruning ratio is a
-- token budget; the prefill is dense and seeds no importance (decode only).
-- Reference read (issue 20): mit-han-lab/spatten, the LLM release —
--   spatten_llm/kv_cache_token_pruning.py (SpAttenKVCache.apply_token_pruning),
--   spatten_llm/pos_shift/modify_llama.py (llama_pos_shift_attention_forward:
--   self.attn_scores), run_spatten_llama.py (spatten_inference). It is not
--   the paper's cascade, and this recipe follows the paper (card), not it:
--   - the released score is the last forward's pre-softmax logits q.k/sqrt(d)
--     (stored before the mask and the softmax), summed over the batch and the
--     query rows, per layer and per head — not accumulated probabilities;
--   - each layer and head keeps its own tokens: start_size first + the top
--     important_size of the middle by that score + recent_size last (run
--     defaults 0 / 150 / 150), so a token pruned in one layer can stay in
--     another (no cascade across layers);
--   - pruning runs between conversation turns (when the cache would exceed
--     start + important + recent), not at a layer of every decode step;
--   - positions are shifted (StreamingLLM-style RoPE at cache positions).
--   The hardware path (spatten_hardware, Chisel RTL and a C++ simulator:
--   TopK.scala, SpAttenController.scala) was not read.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "spatten",
  card = "spatten",
  title = "SpAtten: Efficient Sparse Attention Architecture with Cascade Token and Head Pruning",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Cascade token pruning: attention probabilities accumulate across layers and steps; the least important tokens are pruned for good.",
  knob = "budget",
  params = {
    budget = {default = 1024, min = 1, int = true, doc = "tokens alive after each pruning"},
    prune_layer = {default = 2, min = 0, int = true, doc = "layer that prunes (and from which layers see only alive tokens)"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
  },
  ops = {"page.token_scores", "page.attend"},
  checks = {"cascade: a pruned token never reappears in later layers or steps", "importance = sum of column sums of P",
    "budget >= length is dense", "accumulated importance beats position-order pruning on peaked inputs"},
}

local function sorted_keys(set)
  local t = {}
  for j in pairs(set) do t[#t + 1] = j end
  table.sort(t)
  return t
end

-- rank_fn(score, j) replaces the importance in score-blind tests.
function M.decode(st, ls, step, p, rank_fn)
  local layer, cache, q = step.layer or 0, ls.cache, step.q
  local n, hq, d = cache:len(), q:shape()[1], cache:head_dim()
  local sp = st.spatten
  if not sp then
    sp = {alive = {}, score = {}, pruned = {}}
    st.spatten = sp
  end
  for j = 0, n - 1 do
    if not sp.pruned[j] and not sp.alive[j] then sp.alive[j] = true; sp.score[j] = 0 end
  end
  local positions
  if layer < p.prune_layer then
    positions = {}
    for j = 0, n - 1 do positions[j + 1] = j end
  else
    positions = sorted_keys(sp.alive)
  end
  local lists = decode.shared_lists(cache:heads(), positions)
  local o, lse = decode.attend_tokens(cache, q, lists, {backend = step.backend})
  -- importance: the probabilities this layer gave the alive tokens
  local z, l = decode.token_scores(cache, q, {backend = step.backend}):totable(), lse:totable()
  for _, j in ipairs(positions) do
    if sp.alive[j] then
      local acc = 0
      for h = 1, hq do acc = acc + math.exp(z[h][1][j + 1] - l[h][1]) end   -- this layer's softmax over the alive set
      sp.score[j] = sp.score[j] + acc
    end
  end
  if layer == p.prune_layer then
    local alive = sorted_keys(sp.alive)
    if #alive > p.budget then
      local cur = n - 1
      local rank = rank_fn or function(score, j) return score[j] end
      table.sort(alive, function(a, b)
        if a == cur or b == cur then return a == cur end
        local x, y = rank(sp.score, a), rank(sp.score, b)
        if x ~= y then return x > y end
        return a > b
      end)
      for i = p.budget + 1, #alive do
        sp.alive[alive[i]] = nil
        sp.pruned[alive[i]] = true
      end
    end
  end
  local tokens = #positions
  return {o = o, lse = lse, pages = lists,
    stats = {tokens_read = tokens, density = tokens / n, kv_bytes = 8 * d * tokens * cache:heads()}}
end

--- Kernel level (one layer): the layer is the pruning layer of each step,
--- so rows after the first see the tokens the earlier steps kept.
function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {layer = prob.layer or p.prune_layer})
end

return M
