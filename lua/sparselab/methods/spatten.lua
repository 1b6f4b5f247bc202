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
--   2. (issue 13 session 3) cascade head pruning: head importance =
--      accumulated |o_h| (sum over channels of the magnitude of each query
--      head's attention output) over layers and steps (st.spatten.head_score);
--      at layer head_prune_layer of each step, when more than `heads` query
--      heads are alive the lowest are pruned for good; from that layer on a
--      pruned head's output is 0 (its Q/K/V skipped; a KV head is still read
--      while any query head of its group is alive). heads = 0: no pruning.
--   4. (issue 13 session 3) progressive quantisation, confidence > 0: each
--      row's scores are first computed from the "MSBs" — q and k quantised to
--      msb_bits per row (asymmetric min/max over the channels,
--      page.token_scores bits = qbits = msb_bits); a head whose softmax peak
--      reaches `confidence` keeps that result (softmax of the MSB scores
--      applied to V: attn.rows with the scores as opt.bias and q = 0), the
--      others "fetch the LSBs" and are recomputed exactly. The MSB/LSB split
--      and the threshold are the card's unknowns: msb_bits 4 and a
--      threshold parameter (default 0 = off) chosen here.
--   3. (issue 13 session 3) local V pruning, v_threshold > 0: per query head
--      only the V rows of tokens whose probability (exact, over the attended
--      set) reaches v_threshold are read; the output is the attention over
--      those tokens (renormalised over them — whether the hardware
--      renormalises is not in the card: an unknown read this way). It runs
--      before progressive quantisation, which may still replace a confident
--      head's row. Importance accumulates from the full probabilities.
-- Not implemented: the hardware top-k engine (step 5).
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
    heads = {default = 0, min = 0, int = true, doc = "query heads kept by cascade head pruning (0: no head pruning)"},
    head_prune_layer = {default = 2, min = 0, int = true, doc = "layer that prunes heads (later layers skip pruned heads)"},
    confidence = {default = 0, min = 0, max = 1.01,
      doc = "progressive quantisation: a row whose MSB softmax peak reaches this keeps the MSB result (0: off, every row exact)"},
    msb_bits = {default = 4, min = 2, max = 8, int = true, doc = "bits of the MSB pass (q and k quantised per row)"},
    v_threshold = {default = 0, min = 0, max = 1,
      doc = "local V pruning: per query head only V rows of tokens with probability >= this are read (0: every row)"},
  },
  ops = {"page.token_scores", "page.attend", "attn.rows"},
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
--- rank_fn: a function (token ranking) or {token = f, head = f} (head
--- ranking f(head_score, h)) replacing the importances in tests.
function M.decode(st, ls, step, p, rank_fn)
  local head_rank
  if type(rank_fn) == "table" then rank_fn, head_rank = rank_fn.token, rank_fn.head end
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
  -- importance: the probabilities this layer gave the alive tokens (exact softmax over the attended set)
  local z, l = decode.token_scores(cache, q, {backend = step.backend}):totable(), lse:totable()
  for _, j in ipairs(positions) do
    if sp.alive[j] then
      local acc = 0
      for h = 1, hq do acc = acc + math.exp(z[h][1][j + 1] - l[h][1]) end   -- this layer's softmax over the alive set
      sp.score[j] = sp.score[j] + acc
    end
  end
  -- step 3, local V pruning: per query head only the V rows of tokens whose probability reaches v_threshold
  local v_rows = #positions * hq
  if p.v_threshold > 0 then
    local keep, rows = {}, 0
    for h = 1, hq do
      keep[h] = {}
      local best, bj = -math.huge, positions[#positions]
      for _, j in ipairs(positions) do
        local pj = math.exp(z[h][1][j + 1] - l[h][1])
        if pj >= p.v_threshold then keep[h][#keep[h] + 1] = j end
        if pj > best then best, bj = pj, j end
      end
      if #keep[h] == 0 then keep[h][1] = bj end   -- the most probable row always stays
      rows = rows + #keep[h]
    end
    if rows < v_rows then
      o, lse = decode.attend_tokens(cache, q, decode.lists_tensor(keep), {backend = step.backend})
      v_rows = rows
    end
  end
  local msb_heads = 0
  if p.confidence > 0 then o, lse, msb_heads = M.progressive(cache, q, positions, o, lse, p, step.backend) end
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
  -- step 2: head importance and cascade head pruning
  local kv_alive = cache:heads()
  if p.heads > 0 then
    sp.head_alive = sp.head_alive or {}
    sp.head_score = sp.head_score or {}
    sp.head_pruned = sp.head_pruned or {}
    local ot = o:totable()
    for h = 1, hq do
      if not sp.head_pruned[h - 1] then
        local m = 0
        for c = 1, d do m = m + math.abs(ot[h][1][c]) end
        sp.head_score[h - 1] = (sp.head_score[h - 1] or 0) + m
        sp.head_alive[h - 1] = true
      end
    end
    if layer == p.head_prune_layer then
      local alive = sorted_keys(sp.head_alive)
      if #alive > p.heads then
        local hr = head_rank or function(score, h) return score[h] end
        table.sort(alive, function(a, b)
          local x, y = hr(sp.head_score, a), hr(sp.head_score, b)
          if x ~= y then return x > y end
          return a < b
        end)
        for i = p.heads + 1, #alive do sp.head_alive[alive[i]] = nil; sp.head_pruned[alive[i]] = true end
      end
    end
    if layer >= p.head_prune_layer and next(sp.head_pruned) then
      local lt = lse:totable()
      local g, groups = hq // cache:heads(), {}
      for h = 1, hq do
        if sp.head_pruned[h - 1] then
          for c = 1, d do ot[h][1][c] = 0 end
          lt[h][1] = -math.huge
        else
          groups[(h - 1) // g] = true
        end
      end
      o, lse = sl.tensor(ot), sl.tensor(lt)
      kv_alive = 0
      for _ in pairs(groups) do kv_alive = kv_alive + 1 end
    end
  end
  local tokens = #positions
  return {o = o, lse = lse, pages = lists,
    stats = {tokens_read = tokens, density = tokens / n, kv_bytes = 8 * d * tokens * kv_alive, msb_heads = msb_heads,
      v_rows_read = v_rows}}
end

--- Step 4, progressive quantisation: per query head, scores from q and k
--- quantised to msb_bits (page.token_scores bits = qbits); a head whose
--- softmax peak over the attended positions reaches p.confidence keeps
--- softmax(MSB scores) . V (attn.rows with q = 0 and the scores as bias),
--- the others keep the exact o, lse. Returns o, lse, heads answered by MSBs.
function M.progressive(cache, q, positions, o, lse, p, backend)
  local n, hq, d = cache:len(), q:shape()[1], cache:head_dim()
  local z = sl.page.token_scores(q, cache:tensor("k"), {n = n, causal = 1, bits = p.msb_bits, qbits = p.msb_bits,
    scale = 1 / math.sqrt(d), backend = backend}):totable()
  local use = {}
  for _, j in ipairs(positions) do use[j + 1] = true end
  local bias, confident, count = {}, {}, 0
  for h = 1, hq do
    local row, mx = z[h][1], -math.huge
    for j = 1, n do
      if not use[j] then row[j] = -math.huge end
      mx = math.max(mx, row[j])
    end
    local sum = 0
    for j = 1, n do if row[j] > -math.huge then sum = sum + math.exp(row[j] - mx) end end
    confident[h] = 1 / sum >= p.confidence   -- the peak probability exp(mx - mx) / sum
    if confident[h] then count = count + 1 end
    for j = 1, n do row[j] = row[j] > -math.huge and row[j] or -1e30 end
    bias[h] = {row}
  end
  if count == 0 then return o, lse, 0 end
  local v = cache:tensor("v"):narrow(2, 1, n)
  local om, lm = sl.attn.rows(sl.zeros({hq, 1, d}), cache:tensor("k"):narrow(2, 1, n), v,
    sl.tensor({{0}}, "i32"), sl.tensor({{n}}, "i32"), {bias = sl.tensor(bias), backend = backend})
  local ot, lt, omt, lmt = o:totable(), lse:totable(), om:totable(), lm:totable()
  for h = 1, hq do
    if confident[h] then ot[h], lt[h] = omt[h], lmt[h] end
  end
  return sl.tensor(ot), sl.tensor(lt), count
end

--- Kernel level (one layer): the layer is the pruning layer of each step,
--- so rows after the first see the tokens the earlier steps kept.
function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {layer = prob.layer or p.prune_layer})
end

return M
