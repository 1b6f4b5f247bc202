-- HyLRA: Hybrid Layer Reuse Attention for Efficient Long-Context Inference
-- — card: hylra. The decode side: a per-layer policy (FULL or REUSE(source))
-- found by dynamic programming over profiled inter-layer similarities; FULL
-- layers attend densely and emit top-k token indices, REUSE layers attend
-- over their source's indices.
-- Card steps implemented:
--   1a. sensitivity: M.profile replaces each layer alone by top-k attention
--       over its own indices and marks it sensitive when the output's
--       relative L2 error exceeds `tolerance`;
--   1b. similarity: M[i][j] = |S_i ∩ S_j| / k of the layers' top-k sets
--       (head-agnostic: one set per layer, the top-k of the attention
--       probabilities summed over heads — the card leaves the rule unknown);
--   2. policy by DP (M.plan): the state is the current source layer; layer j
--      reuses the source i iff M[i][j] >= theta and j is not sensitive,
--      otherwise it resets (FULL); minimise the FULL layers, ties broken by
--      the largest summed similarity; layer 0 and sensitive layers are FULL;
--   3. inference: FULL layers attend densely and save their set in the
--      decode state; REUSE(i) layers attend over layer i's set of the step.
-- Not implemented: index-guided prefetch of offloaded KV; the prefill side.
-- Unknowns chosen (no code was available): k = budget (2048), theta 0.85,
-- profiling on the caller's calibration step (per-layer q, k, v); without a
-- plan, full_every = k > 0 makes every k-th layer FULL (a fixed stand-in,
-- not the DP).
-- Kernel level (one layer, no plan): the layer is a REUSE layer of itself
-- (its own top-k), i.e. the oracle of the head-agnostic set.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "hylra",
  card = "hylra",
  title = "HyLRA: Hybrid Layer Reuse Attention for Efficient Long-Context Inference",
  family = "layer-reuse",
  phase = "decode",
  causal_only = true,
  summary = "A DP over profiled layer similarities picks FULL layers; the others reuse the last FULL layer's top-k tokens.",
  knob = "budget",
  params = {
    budget = {default = 2048, min = 1, int = true, doc = "top-k tokens of a FULL layer"},
    theta = {default = 0.85, min = 0, max = 1, doc = "least index overlap for reuse"},
    tolerance = {default = 0.1, min = 0, doc = "profiling: rel_l2 above which a layer is sensitive"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
    full_every = {default = 0, min = 0, int = true, doc = "without a plan in the state: FULL every k-th layer, the others reuse (0: a plan is required)"},
  },
  ops = {"page.token_scores", "page.attend"},
  checks = {"the DP plan has the fewest FULL layers (brute force), ties by similarity", "budget >= n is dense",
    "the reused set equals the saved one", "top-k sets beat first-k sets on peaked inputs"},
}

--- The head-agnostic top-k set (sorted positions) of q over the cache:
--- probabilities summed over heads (score_fn replaces them in tests).
local function topk_set(cache, q, k, backend, score_fn)
  local n, hq = cache:len(), q:shape()[1]
  local all = {}
  for j = 0, n - 1 do all[#all + 1] = j end
  if k >= n then return all end
  local w
  if score_fn then
    w = score_fn(n)
  else
    local P = decode.attention_probs(cache, q, backend)
    w = {}
    for j = 1, n do
      local acc = 0
      for h = 1, hq do acc = acc + P[h][j] end
      w[j] = acc
    end
  end
  table.sort(all, function(a, b) if w[a + 1] ~= w[b + 1] then return w[a + 1] > w[b + 1] end return a < b end)
  local set = {}
  for i = 1, k do set[i] = all[i] end
  table.sort(set)
  return set
end
M.topk_set = topk_set

--- The DP policy: sim[i][j] (1-based layers, i < j), sensitive[j] (true:
--- FULL), theta. Returns plan[j] = 0 for FULL or the 1-based source layer,
--- the FULL count and the summed similarity.
function M.plan(sim, sensitive, theta, n_layers)
  -- best[src] = {fulls, simsum, plan}
  local best = {[1] = {1, 0, {0}}}
  for j = 2, n_layers do
    local nxt = {}
    local function offer(src, f, s, plan)
      local b = nxt[src]
      if not b or f < b[1] or (f == b[1] and s > b[2]) then nxt[src] = {f, s, plan} end
    end
    for src, b in pairs(best) do
      local pf = {}
      for i, x in ipairs(b[3]) do pf[i] = x end
      pf[j] = 0
      offer(j, b[1] + 1, b[2], pf)
      if not sensitive[j] and sim[src][j] >= theta then
        local pr = {}
        for i, x in ipairs(b[3]) do pr[i] = x end
        pr[j] = src
        offer(src, b[1], b[2] + sim[src][j], pr)
      end
    end
    best = nxt
  end
  local win
  for _, b in pairs(best) do
    if not win or b[1] < win[1] or (b[1] == win[1] and b[2] > win[2]) then win = b end
  end
  return win[3], win[1], win[2]
end

--- Profiling on one calibration step: layers = {{q =, k =, v =}, ...} (q
--- [Hq, 1, D] the step's query, k, v [Hkv, n, D] the layer's cache). Returns
--- sim, sensitive (1-based) for M.plan.
function M.profile(layers, p, backend)
  local sets, sensitive, n_layers = {}, {}, #layers
  for l, x in ipairs(layers) do
    local c = decode.cache_from(x.k, x.v, p.page, "hylra")
    sets[l] = topk_set(c, x.q, p.budget, backend)
    local n = c:len()
    local od = decode.attend_tokens(c, x.q, decode.token_range(x.q:shape()[1], 0, n), {backend = backend})
    local os = decode.attend_tokens(c, x.q, decode.shared_lists(c:heads(), sets[l]), {backend = backend})
    sensitive[l] = l == 1 or sl.metric.rel_l2(os, od) > p.tolerance
    c:close()
  end
  local sim = {}
  for i = 1, n_layers do
    sim[i] = {}
    local si = {}
    for _, j in ipairs(sets[i]) do si[j] = true end
    for j = i + 1, n_layers do
      local both = 0
      for _, t in ipairs(sets[j]) do if si[t] then both = both + 1 end end
      sim[i][j] = both / math.max(1, #sets[i])
    end
  end
  return sim, sensitive
end

function M.decode(st, ls, step, p, score_fn)
  local layer, cache, q = step.layer or 0, ls.cache, step.q
  local n, hq, d = cache:len(), q:shape()[1], cache:head_dim()
  if not st.plan and not step.self_select and p.full_every == 0 then
    sl.fail("hylra: no layer plan in the decode state (st.plan from hylra.plan / hylra.profile, or full_every > 0)")
  end
  st.hylra_sets = st.hylra_sets or {}
  local role
  if step.self_select then
    role = -1
  elseif st.plan then
    role = st.plan[layer + 1] or 0
  else
    role = layer % p.full_every == 0 and 0 or layer - layer % p.full_every + 1
  end
  local positions
  if role == 0 or role == -1 then
    local set = topk_set(cache, q, p.budget, step.backend, score_fn)
    st.hylra_sets[layer + 1] = {step = st.steps, set = set}
    if role == 0 then
      positions = {}
      for j = 0, n - 1 do positions[j + 1] = j end
    else
      positions = set
    end
  else
    local saved = st.hylra_sets[role]
    if not saved or saved.step ~= st.steps then
      sl.fail("hylra: layer %d reuses layer %d, which has no set of this step", layer, role - 1)
    end
    positions = saved.set
  end
  local lists = decode.shared_lists(cache:heads(), positions)
  local o, lse = decode.attend_tokens(cache, q, lists, {backend = step.backend})
  return {o = o, lse = lse, pages = lists,
    stats = {tokens_read = #positions, density = #positions / n, kv_bytes = 8 * d * #positions * cache:heads()}}
end

function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {layer = prob.layer or 0, step = {self_select = true}})
end

return M
