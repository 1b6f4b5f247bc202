-- test_model_methods.lua — the non-attention cards of issue 17 as registry
-- entries (sparselab.model_recipe: family "non-attention", phase "model"),
-- and token_prune_attn_score (sparselab.tokenprune) on the shipped
-- TinyStories model: k = V changes nothing, the scores from the |R| x N
-- block equal those of a full attention matrix computed here in float64,
-- the keep set is the top-k of those scores (a first-k keep fails the same
-- check), prefix and raters are kept in order, and attention scores give a
-- lower held-out NLL than first-k and random keeps at the same budget.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local MR = require "sparselab.model_recipe"
local T = require "sparselab.tokenprune"
local E = require "sparselab.moe"
local U = require "sparselab.tokenupdate"
local Q = require "sparselab.qkest"
local P = require "sparselab.prune"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local function ids_of(name)
  local f = assert(io.open(DATA .. "/texts/" .. name .. ".txt", "rb"))
  local s = f:read("a")
  f:close()
  return m:encode(s)
end
local function head(ids, n)
  local out = {}
  for i = 1, math.min(n, #ids) do out[i] = ids[i] end
  return out
end
-- calibration and held-out texts are never the same
local CALIB = {head(ids_of("03_brave_turtle"), 160)}
local HELD = {head(ids_of("05_moon_friend"), 200), head(ids_of("06_little_seed"), 200)}

local CARDS = {"token_prune_attn_score", "topk_activation", "channel_threshold", "act_sparse_matmul",
  "temporal_delta", "k_sparse_autoencoder", "magnitude_prune", "nm_sparse_matmul", "unstructured_sparse_matmul",
  "sparsegpt_prune", "qk_lowrank", "moe_split_route",
  "sparse_token_update", "token_merge_recycle"}

test("model methods: registered as non-attention with card ids, backends and a one-line eval error", function()
  local have = {}
  for _, id in ipairs(sl.methods.ids()) do have[id] = true end
  for _, id in ipairs(CARDS) do
    truthy(have[id], id .. " registered")
    local meth = sl.methods.get(id)
    eq(meth.family, "non-attention", id .. " family")
    eq(meth.phase, "model", id .. " phase")
    eq(meth.card, id, id .. " card")
    truthy(type(meth.model.how) == "string" and #meth.model.how > 0, id .. " says how to run it")
    local b = table.concat(sl.methods.backends(meth), ",")
    truthy(b:find("ref", 1, true) and b:find("cpu", 1, true), id .. " backends " .. b)
    for _, op in ipairs(meth.ops) do
      local found = false
      for _, o in ipairs(sl.ops()) do if o.name == op then found = true end end
      truthy(found, id .. " op " .. op)
    end
    local prob = sl.problem{q = sl.randn({1, 8, 4}, {seed = 1}), k = sl.randn({1, 8, 4}, {seed = 2}),
      v = sl.randn({1, 8, 4}, {seed = 3})}
    local ok, err = pcall(sl.eval, id, prob, {})
    truthy(not ok and tostring(err):find("acts on the model", 1, true) and not tostring(err):find("\n"),
      id .. ": eval error " .. tostring(err))
  end
end)

test("model methods: each apply runs on the model; the identity settings leave the NLL unchanged", function()
  local dense = MR.nll(m, "magnitude_prune", {sparsity = 0}, CALIB, HELD)
  local ref = 0
  do
    local total, count = 0, 0
    for _, ids in ipairs(HELD) do
      local st <close> = m.c:state(#ids)
      local logits = m.c:forward(ids, st)
      local c = sl.model_c.compare(logits, logits, ids)
      total, count = total + c.nll * c.n, count + c.n
    end
    ref = total / count
  end
  eq(dense, ref, "magnitude_prune at 0% leaves the NLL bit-identical")
  near(MR.nll(m, "token_prune_attn_score", {ratio = 1}, CALIB, HELD), ref, 1e-5, "token pruning keeping all")
  near(MR.nll(m, "topk_activation", {k = m.cfg.hidden_dim}, CALIB, HELD), ref, 1e-6, "top-k keeping all units")
  for _, c in ipairs{{"magnitude_prune", {sparsity = 0.5}}, {"nm_sparse_matmul", {}}, {"topk_activation", {k = 32}},
    {"token_prune_attn_score", {ratio = 0.3}}, {"temporal_delta", {sparsity = 0.5}}} do
    local v = MR.nll(m, c[1], c[2], CALIB, HELD)
    truthy(v == v and v > ref - 0.05 and v < 20, c[1] .. " nll " .. v .. " (dense " .. ref .. ")")
  end
  -- weights are restored after each run
  eq(MR.nll(m, "magnitude_prune", {sparsity = 0}, CALIB, HELD), ref, "weights restored")
  raises(function() MR.nll(m, "act_sparse_matmul", {}, CALIB, HELD) end, "not a model method with apply", "kernel card")
  raises(function() MR.nll(m, "sparsegpt_prune", {}, nil, HELD) end, "calibration sequences are required", "calib")
end)

-- ---- token_prune_attn_score ---------------------------------------------------

local function logits_with(ids, hook)
  local st <close> = m.c:state(#ids)
  return m.c:forward(ids, st, hook)
end

test("token_prune_attn_score: k = V leaves every logit bit-identical", function()
  local ids = HELD[1]
  local plain = logits_with(ids, function(_, q, k, v) return (sl.attn.dense(q, k, v, {causal = true})) end)
  local kept = logits_with(ids, T.hook(m, {ratio = 1, layers = {0, 2}, probe = 16}))
  eq(sl.metric.max_abs(plain, kept), 0, "max |diff|")
end)

-- float64 column scores from the full attention matrix: mean over heads of
-- the causal softmax rows, summed over the last `probe` rows, restricted to
-- the keys in keep (nil: all), renormalised over them.
local function full_scores(q, k, keep, probe)
  local Q, K = q:totable(), k:totable()
  local hq, hkv, n = #Q, #K, #Q[1]
  local d = #Q[1][1]
  local cols = keep or {}
  if not keep then for i = 0, n - 1 do cols[i + 1] = i end end
  local s = {}
  for j = 1, #cols do s[j] = 0 end
  for h = 1, hq do
    local kh = K[(h - 1) // (hq // hkv) + 1]
    for r = #cols - probe + 1, #cols do
      local i = cols[r]
      local logits, mx = {}, -math.huge
      for j = 1, r do
        local dot = 0
        for c = 1, d do dot = dot + Q[h][i + 1][c] * kh[cols[j] + 1][c] end
        logits[j] = dot / math.sqrt(d)
        if logits[j] > mx then mx = logits[j] end
      end
      local z = 0
      for j = 1, r do z = z + math.exp(logits[j] - mx) end
      for j = 1, r do s[j] = s[j] + math.exp(logits[j] - mx) / z / hq end
    end
  end
  return s
end

local function layer_qk(ids, layer)
  local cap = m:capture{tokens = ids, layers = {layer}}
  return cap[layer + 1].q, cap[layer + 1].k
end

test("token_prune_attn_score: scores from the |R| x N block equal the full matrix's (float64)", function()
  local ids = head(HELD[1], 96)
  local q, k = layer_qk(ids, 1)
  local probe = 12
  local got, want = T.score(q, k, nil, probe), full_scores(q, k, nil, probe)
  eq(#got, #want, "length")
  for j = 1, #want do near(got[j], want[j], 1e-5, "column " .. j) end
  -- with a keep list: the gathered keys alone (softmax over the kept keys)
  local keep = {}
  for i = 0, #ids - 1 do if i % 3 ~= 1 or i >= #ids - probe then keep[#keep + 1] = i end end
  got, want = T.score(q, k, keep, probe), full_scores(q, k, keep, probe)
  eq(#got, #keep, "compacted length")
  for j = 1, #want do near(got[j], want[j], 1e-5, "kept column " .. j) end
end)

-- The keep set after layer `layer` with scores `scores`, checked against the
-- brute-force top-k of the float64 full-matrix scores: returns whether the
-- kept candidates are exactly that top-k (ties: lower index).
local function keep_matches_topk(ids, o)
  local stats = {}
  logits_with(ids, T.hook(m, o, stats))
  local keep = stats.keep[o.layers[1]]
  local n, prefix, probe = #ids, o.prefix or 1, o.probe
  -- order preserved, prefix and raters kept, |K| = k
  for i = 2, #keep do truthy(keep[i] > keep[i - 1], "ascending") end
  for i = 0, prefix - 1 do eq(keep[i + 1], i, "prefix kept") end
  for t = 1, probe do eq(keep[#keep - probe + t], n - probe + t - 1, "rater kept") end
  local V = n - prefix - probe
  local kk = math.floor(o.ratio * V + 1e-9)
  eq(#keep, prefix + kk + probe, "|K| = k")
  local q, k = layer_qk(ids, o.layers[1])
  local s = full_scores(q, k, nil, probe)
  local order = {}
  for j = prefix, n - probe - 1 do order[#order + 1] = j end
  table.sort(order, function(a, b)
    if s[a + 1] ~= s[b + 1] then return s[a + 1] > s[b + 1] end
    return a < b
  end)
  local want = {}
  for i = 1, kk do want[order[i]] = true end
  for i = prefix + 1, #keep - probe do if not want[keep[i]] then return false end end
  return true
end

test("token_prune_attn_score: the kept tokens are the top-k of the attention scores; first-k fails", function()
  local ids = head(HELD[2], 120)
  truthy(keep_matches_topk(ids, {ratio = 0.3, layers = {1}, probe = 16}), "attention scores: top-k kept")
  -- the score-blind selector (first k candidates) does not pass the same check
  truthy(not keep_matches_topk(ids, {ratio = 0.3, layers = {1}, probe = 16, scores = "first"}),
    "first-k must fail the top-k check")
  truthy(not keep_matches_topk(ids, {ratio = 0.3, layers = {1}, probe = 16, scores = "random", seed = 5}),
    "random must fail the top-k check")
end)

test("token_prune_attn_score: later pruning layers prune among the kept tokens; later layers run on fewer", function()
  local ids = HELD[1]
  local stats = {}
  logits_with(ids, T.hook(m, {ratio = 0.5, layers = {0, 2}, probe = 16}, stats))
  local first, second = {}, stats.keep[2]
  for _, p in ipairs(stats.keep[0]) do first[p] = true end
  for _, p in ipairs(second) do truthy(first[p], "position " .. p .. " kept at layer 2 was kept at layer 0") end
  truthy(#second < #stats.keep[0], "fewer after the second pruning")
  eq(stats.rows[0], #ids, "layer 0 runs on every token")
  eq(stats.rows[1], #stats.keep[0], "layer 1 runs on the kept ones")
  eq(stats.rows[3], #second, "layer 3 runs on the second keep set")
  raises(function() T.hook(m, {layers = {0}}) end, "give ratio", "no budget")
  raises(function() T.hook(m, {ratio = 1.5}) end, "ratio must be in", "bad ratio")
end)

test("token_prune_attn_score: attention scores beat first-k and random keeps on held-out NLL", function()
  local o = {ratio = 0.2, layers = {0}, probe = 32}
  local nll_attn = T.nll(m, HELD, o)
  local nll_first = T.nll(m, HELD, {ratio = 0.2, layers = {0}, probe = 32, scores = "first"})
  local nll_rand = T.nll(m, HELD, {ratio = 0.2, layers = {0}, probe = 32, scores = "random", seed = 3})
  truthy(nll_attn < nll_first, string.format("attn %.4f < first %.4f", nll_attn, nll_first))
  truthy(nll_attn < nll_rand, string.format("attn %.4f < random %.4f", nll_attn, nll_rand))
end)

-- ---- moe_split_route -------------------------------------------------------------

test("moe_split_route: every split is a partition; k = E with unit weights equals the dense FFN", function()
  local hidden = m.cfg.hidden_dim
  for _, split in ipairs{"importance", "sequential", "random"} do
    local moe = E.build(m, CALIB, {experts = 5, k = 5, split = split, iters = 5})
    for l = 0, m.cfg.n_layers - 1 do
      local seen, total = {}, 0
      for _, ex in ipairs(moe.experts[l]) do
        truthy(#ex >= hidden // 5 and #ex <= hidden // 5 + 1, split .. ": expert size " .. #ex)
        for _, j in ipairs(ex) do
          truthy(not seen[j], split .. ": neuron " .. j .. " in two experts")
          seen[j] = true
          total = total + 1
        end
      end
      eq(total, hidden, split .. ": every neuron in an expert")
    end
    local ids = HELD[1]
    local st <close> = m.c:state(#ids)
    local dense = m.c:forward(ids, st)
    local st2 <close> = m.c:state(#ids)
    local routed = m.c:forward(ids, st2, nil, E.hook(m, moe))
    truthy(sl.metric.max_abs(dense, routed) <= 1e-5 * math.max(1, sl.metric.max_abs(dense, sl.zeros(dense:shape()))),
      split .. ": k = E equals dense")
  end
end)

test("moe_split_route: routing keeps exactly k experts per token, ties to the lower id", function()
  local r = E.route({{1, 3, 3, 0}, {2, 2, 2, 2}, {-1, -5, 4, 4}}, 2)
  eq(table.concat(r[1], ","), "2,3", "row 1")
  eq(table.concat(r[2], ","), "1,2", "ties")
  eq(table.concat(r[3], ","), "3,4", "row 3")
  local moe = E.build(m, CALIB, {experts = 4, k = 1, iters = 5})
  local stats = {}
  local ids = HELD[2]
  local st <close> = m.c:state(#ids)
  m.c:forward(ids, st, nil, E.hook(m, moe, stats))
  local per = m.cfg.hidden_dim / 4
  near(stats.kept / stats.units, per / m.cfg.hidden_dim, 0.01, "kept share = one expert of four")
  raises(function() E.build(m, CALIB, {experts = 4, k = 5}) end, "k must be in", "k > E")
  raises(function() E.build(m, CALIB, {split = "gradient"}) end, "split must be", "bad split")
end)

test("moe_split_route: importance split with the clustering router beats score-blind routing", function()
  local calib = {head(ids_of("01_red_kite"), 250), head(ids_of("02_lost_mitten"), 250), CALIB[1]}
  local good = E.nll(m, HELD, E.build(m, calib, {experts = 4, k = 2}))
  -- score-blind: sequential split, router = random calibration vectors
  local blind = E.nll(m, HELD, E.build(m, calib, {experts = 4, k = 2, split = "sequential", router = "random"}))
  local seq = E.nll(m, HELD, E.build(m, calib, {experts = 4, k = 2, split = "sequential"}))
  truthy(good < blind, string.format("importance+cluster %.4f < sequential+random %.4f", good, blind))
  truthy(good < seq, string.format("importance split %.4f < sequential split %.4f (same router)", good, seq))
end)

test("moe_split_route: the runner's grouped executor (mm.moe) equals the hook path; k = E equals dense; FLOPs",
  function()
  local ids = HELD[1]
  local function logits(moe, how, backend)
    local st <close> = m.c:state(#ids)
    if how == "grouped" then
      E.use(m, moe, backend)
      local out = m.c:forward(ids, st)
      local s = E.stats(m)
      E.off(m)
      return out, s
    elseif how == "hook" then
      return m.c:forward(ids, st, nil, E.hook(m, moe))
    end
    return m.c:forward(ids, st)
  end
  local function close(a, b, what)
    local scale = math.max(1, sl.metric.max_abs(b, sl.zeros(b:shape())))
    truthy(sl.metric.max_abs(a, b) <= 1e-5 * scale, what .. string.format(": max |diff| %g", sl.metric.max_abs(a, b)))
  end
  local dim, hidden, L = m.cfg.dim, m.cfg.hidden_dim, m.cfg.n_layers
  -- k = E, unit weights: every unit of every token, the dense FFN
  local all = E.build(m, CALIB, {experts = 5, k = 5, iters = 5})
  local dense = logits(nil, "dense")
  local g, s = logits(all, "grouped")
  close(g, dense, "k = E grouped = dense")
  eq(s.rows, L * #ids, "rows: every token of every layer")
  eq(s.pairs, 5 * s.rows, "pairs = rows . k (token counts conserved)")
  eq(s.units, s.rows * hidden, "k = E: every unit computed")
  local load = 0
  for _, v in ipairs(s.load) do load = load + v end
  eq(load, s.pairs, "the per-expert loads sum to the pairs")
  -- k = 2 of 4, softmax weights x scale 0.7: grouped (cpu and ref) = the site-hook path
  local moe = E.build(m, CALIB, {experts = 4, k = 2, weights = "softmax", scale = 0.7, iters = 5})
  local hook = logits(moe, "hook")
  local gc, sc = logits(moe, "grouped", "cpu")
  close(gc, hook, "grouped (cpu) = hook path")
  local gr = logits(moe, "grouped", "ref")
  close(gr, hook, "grouped (ref) = hook path")
  truthy(sl.metric.max_abs(gc, dense) > 1e-3, "k = 2 of 4 changes the logits")
  -- executed FLOPs: the router (2 E dim per row) + per pair 6 |e| dim + 4 |e| + 2 dim, below dense
  near(sc.flops, 2 * sc.rows * 4 * dim + 6 * sc.units * dim + 4 * sc.units + 2 * sc.pairs * dim, 1e-6 * sc.flops,
    "executed flops")
  eq(sc.dense_flops, 6 * sc.rows * hidden * dim, "dense FFN flops")
  truthy(sc.units < 0.55 * sc.rows * hidden and sc.units > 0.45 * sc.rows * hidden, "about half the units")
  truthy(sc.flops < 0.6 * sc.dense_flops, "executed flops below 0.6 of dense")
  -- replacing an FFN weight turns that layer's MoE off (its copies would be stale): dense there
  E.use(m, moe)
  local w1 = m.c:weight("layers.0.w1"):to("f32")
  m.c:set_weight("layers.0.w1", w1)
  m.c:moe_stats(true)
  local st3 <close> = m.c:state(#ids)
  m.c:forward(ids, st3)
  eq(m.c:moe_stats().rows, (L - 1) * #ids, "layer 0 runs dense after set_weight")
  E.off(m)
  -- the recipe runs through the runner and leaves nothing installed
  local nll = MR.nll(m, "moe_split_route", {experts = 4, k = 2}, CALIB, {head(HELD[2], 60)})
  truthy(nll > 0 and nll < 20, "recipe NLL " .. nll)
  eq(m.c:moe_stats(), nil, "no MoE left in the runner after MR.nll")
  raises(function() m.c:moe_on(4, 5, false, 1) end, "k must be in", "k > E")
  m.c:moe_on(4, 2, false, 1)
  raises(function() m.c:moe_layer(0, moe.router[0], sl.tensor({1, 2}, "i32")) end, "expert map", "bad map")
  m.c:moe_off()
end)

-- ---- sparse_token_update -----------------------------------------------------------

-- the normed attention inputs of every layer (attn_in site), with hooks o (nil: dense)
local function attn_inputs(ids, o, stats)
  local attn, site = nil, nil
  if o then attn, site = U.hooks(m, o, stats) end
  local seen = {}
  local st <close> = m.c:state(#ids)
  local logits = m.c:forward(ids, st, attn, function(layer, name, x)
    if name == "attn_in" then seen[layer] = x:totable() end
    return site and site(layer, name, x) or nil
  end)
  return seen, logits
end

test("sparse_token_update: every token selected equals the dense model bit for bit", function()
  local ids = HELD[1]
  local plain = logits_with(ids, function(_, q, k, v) return (sl.attn.dense(q, k, v, {causal = true})) end)
  local attn, site = U.hooks(m, {rho = 1, cascade = {1}, from = 1})
  local st <close> = m.c:state(#ids)
  eq(sl.metric.max_abs(plain, m.c:forward(ids, st, attn, site)), 0, "max |diff|")
end)

test("sparse_token_update: skipped rows pass through unchanged; nested sets; top rows by |x| of the block input",
  function()
  local ids = head(HELD[2], 150)
  local from, rho, n = 2, 0.5, 150
  local stats = {}
  local seen = attn_inputs(ids, {rho = rho, from = from}, stats)
  local dense_in = attn_inputs(ids, nil)
  -- sizes follow the cascade; sets nested
  local cascade = {1.0, 0.8, 0.6}
  for l = from, m.cfg.n_layers - 1 do
    eq(#stats.selected[l], math.floor(rho * cascade[math.min(3, l - from + 1)] * n + 1e-9), "size at layer " .. l)
    if l > from then
      local prev = {}
      for _, r in ipairs(stats.selected[l - 1]) do prev[r] = true end
      for _, r in ipairs(stats.selected[l]) do truthy(prev[r], "row " .. r .. " nested at layer " .. l) end
    end
  end
  -- a row skipped at layer l keeps its residual: x_{l+1} = x_l, so xb / rms_att weight agrees
  local wl = m.c:weight(string.format("layers.%d.rms_att", from)):totable()
  local wn = m.c:weight(string.format("layers.%d.rms_att", from + 1)):totable()
  local sel = {}
  for _, r in ipairs(stats.selected[from]) do sel[r] = true end
  local checked = 0
  for i = 0, n - 1 do
    if not sel[i] then
      for c = 1, #wl do
        local before = seen[from][i + 1][c] / wl[c]
        near(seen[from + 1][i + 1][c] / wn[c], before, 1e-5 * math.max(1, math.abs(before)), "row " .. i .. " unchanged")
      end
      checked = checked + 1
    end
  end
  eq(checked, n - #stats.selected[from], "skipped rows checked")
  -- layers before `from` are dense: the block input of layer `from` is the dense one
  for c = 1, #wl do eq(seen[from][7][c], dense_in[from][7][c], "layer from input is dense") end
  -- the selection at `from` is the top by mean |x| of that input (computed here), ties lower index
  local score, order = {}, {}
  for i, row in ipairs(dense_in[from]) do
    local a = 0
    for _, v in ipairs(row) do a = a + math.abs(v) end
    score[i - 1], order[i] = a / #row, i - 1
  end
  table.sort(order, function(a, b) if score[a] ~= score[b] then return score[a] > score[b] end return a < b end)
  local want = {}
  for i = 1, #stats.selected[from] do want[order[i]] = true end
  local function matches(list) for _, r in ipairs(list) do if not want[r] then return false end end return true end
  truthy(matches(stats.selected[from]), "act_mag selection = top rows by mean |x|")
  local blind = {}
  attn_inputs(ids, {rho = rho, from = from, scores = "first"}, blind)
  truthy(not matches(blind.selected[from]), "a first-k selection must fail the same check")
end)

test("sparse_token_update: activation magnitude beats first-k and random updates on held-out NLL", function()
  local o = {rho = 0.5, from = 3}
  local good = U.nll(m, HELD, o)
  local first = U.nll(m, HELD, {rho = 0.5, from = 3, scores = "first"})
  local rand = U.nll(m, HELD, {rho = 0.5, from = 3, scores = "random", seed = 2})
  truthy(good < first, string.format("act_mag %.4f < first %.4f", good, first))
  truthy(good < rand, string.format("act_mag %.4f < random %.4f", good, rand))
  raises(function() U.hooks(m, {rho = 2}) end, "rho must be in", "bad rho")
end)

-- ---- qk_lowrank as an estimator ------------------------------------------------------

test("qk_lowrank: full-rank estimator q, k (rotated) equal the model's post-RoPE q, k", function()
  local ids = head(HELD[1], 64)
  local est = Q.build(m, CALIB, {rank = m.cfg.dim})
  local cap = m:capture{tokens = ids, layers = {1}}
  local qh, kh = Q.reconstruct(m, est[1], P.capture(m, {ids}, 1).attn_in)
  truthy(sl.metric.max_abs(qh, cap[2].q) < 1e-4, "q")
  truthy(sl.metric.max_abs(kh, cap[2].k) < 1e-4, "k")
end)

test("qk_lowrank: estimator recall far above first-k and random keys, not below at higher rank", function()
  local held = {head(HELD[1], 160)}
  local rec = {}
  for _, r in ipairs{4, 16} do
    local _, rc = Q.run(m, held, Q.build(m, CALIB, {rank = r}), {keep = 16, scores = "lowrank_rope"})
    rec[r] = rc
  end
  local est = Q.build(m, CALIB, {rank = 4})
  local _, first = Q.run(m, held, est, {keep = 16, scores = "first"})
  local _, rand = Q.run(m, held, est, {keep = 16, scores = "random", seed = 4})
  local _, exact = Q.run(m, held, est, {keep = 16, scores = "exact"})
  truthy(rec[16] >= rec[4] - 0.01, string.format("rank 16 %.3f vs rank 4 %.3f", rec[16], rec[4]))
  truthy(exact >= rec[16] - 1e-6, string.format("exact top-k %.3f >= estimate %.3f", exact, rec[16]))
  truthy(rec[4] > 2 * first and rec[4] > 2 * rand,
    string.format("low-rank %.3f vs first %.3f, random %.3f", rec[4], first, rand))
end)

-- ---- token_merge_recycle -----------------------------------------------------------

local function blobs(c, per, dim, seed)
  local r = sl.randn({c * per, dim}, {seed = seed}):totable()
  local rows, truth = {}, {}
  for b = 1, c do
    for i = 1, per do
      local idx = (b - 1) * per + i
      local row = {}
      for t = 1, dim do row[t] = r[idx][t] * 0.05 + 10 * b * ((t + b) % 3 - 1) end
      rows[idx], truth[idx] = row, b
    end
  end
  return rows, truth
end

test("token_merge_recycle: DPC is a partition, centres own their cluster, blobs recovered, merged = mean", function()
  local rows, truth = blobs(4, 9, 6, 31)
  local assign, centres = T.dpc(rows, 4)
  eq(#centres, 4, "c centres")
  local size = {}
  for i, k in ipairs(assign) do truthy(k >= 1 and k <= 4, "cluster id " .. i); size[k] = (size[k] or 0) + 1 end
  local total = 0
  for k = 1, 4 do total = total + size[k] end
  eq(total, #rows, "sizes sum to m")
  for k, ci in ipairs(centres) do eq(assign[ci], k, "centre " .. ci .. " in its own cluster") end
  -- blobs: same blob <=> same cluster
  for i = 1, #rows do
    for j = 1, #rows do eq(truth[i] == truth[j], assign[i] == assign[j], "pair " .. i .. "," .. j) end
  end
  -- merged = mean of the members (float64 here)
  local merged = T.merge_mean(rows, assign, 4)
  for k = 1, 4 do
    for t = 1, 6 do
      local s, n = 0, 0
      for i, r in ipairs(rows) do if assign[i] == k then s, n = s + r[t], n + 1 end end
      near(merged[k][t], s / n, 1e-12, "mean")
    end
  end
  -- c = m: every candidate its own cluster, merged set = the candidates
  local few = {rows[1], rows[10], rows[20], rows[30]}
  local a2, c2 = T.dpc(few, 4)
  local m2 = T.merge_mean(few, a2, #c2)
  for i = 1, 4 do for t = 1, 6 do eq(m2[a2[i]][t], few[i][t], "c = m keeps the candidates") end end
end)

test("token_merge_recycle: DPC is invariant to the input order", function()
  local rows = sl.randn({25, 5}, {seed = 77}):totable()
  local a1 = T.dpc(rows, 3)
  local perm, prow = {}, {}
  for i = 1, 25 do perm[i] = (i * 7) % 25 + 1 end
  for i = 1, 25 do prow[i] = rows[perm[i]] end
  local a2 = T.dpc(prow, 3)
  for i = 1, 25 do
    for j = 1, 25 do
      eq(a1[perm[i]] == a1[perm[j]], a2[i] == a2[j], "pair " .. i .. "," .. j)
    end
  end
end)

test("token_merge_recycle: merged tokens enter the keep list with the members' mean hidden state", function()
  local ids = head(HELD[1], 160)
  local stats = {}
  local attn, site = T.hook(m, {ratio = 0.3, layers = {0}, probe = 16, recycle = true}, stats)
  -- dense layer-0 outputs (layer 0 attends densely in both runs) and the pruned run's layer-1 inputs
  local dense_out
  do
    local st <close> = m.c:state(#ids)
    m.c:forward(ids, st, nil, function(l, name, x) if l == 0 and name == "layer_out" then dense_out = x:totable() end end)
  end
  local in1
  local st <close> = m.c:state(#ids)
  m.c:forward(ids, st, attn, function(l, name, x)
    local r = site(l, name, x)
    if l == 1 and name == "attn_in" then in1 = x:totable() end
    return r
  end)
  local mg = stats.merged[0]
  local n_pruned = (#ids - 1 - 16) - math.floor(0.3 * (#ids - 1 - 16))
  eq(#mg.members, math.floor(0.3 * n_pruned) + 1, "m = floor(0.3 n_p) + 1")
  local c = #mg.members // 10 + 1
  local n_slots = 0
  for _ in pairs(mg.slots) do n_slots = n_slots + 1 end
  eq(n_slots, c, "c merged tokens")
  eq(#stats.keep[0], 1 + math.floor(0.3 * (#ids - 1 - 16)) + 16 + c, "keep list grew by c")
  local w = m.c:weight("layers.1.rms_att"):totable()
  for k, slot in pairs(mg.slots) do
    local mean = {}
    for t = 1, m.cfg.dim do mean[t] = 0 end
    local cnt = 0
    for i, pos in ipairs(mg.members) do
      if mg.assign[i] == k then
        cnt = cnt + 1
        truthy(pos <= slot, "slot is the last member")
        for t = 1, m.cfg.dim do mean[t] = mean[t] + dense_out[pos + 1][t] end
      end
    end
    local ss = 0
    for t = 1, m.cfg.dim do mean[t] = mean[t] / cnt; ss = ss + mean[t] * mean[t] end
    local inv = 1 / math.sqrt(ss / m.cfg.dim + 1e-5)
    for t = 1, m.cfg.dim do near(in1[slot + 1][t], mean[t] * inv * w[t], 1e-4, "normed merged row") end
  end
end)

H.done()
