-- experiments/act_kv_sweep.lua — issue 17, session 4 figures on the shipped
-- stories260K model, evaluated on the held-out texts 05-08 (nothing is
-- calibrated here: the predictor and the pruners read no data):
--   1. Spark's FFN predictor (card topk_activation step 4; sparselab.actsparse
--      kind "spark"): recall of the exact top-k and perplexity, against exact
--      top-k of |h| and the score-blind first-k / random predictors;
--   2. KV magnitude pruning (card magnitude_prune step 7; prune.kv_hook):
--      perplexity vs the share of K and V entries zeroed, layer / head scope and
--      a random mask of the same count;
--   3. the essential-sparsity sweep of per-layer weight magnitude pruning and of
--      the KV variant, with the elbow (prune.elbow) and the largest sparsity
--      within 5 % of the dense perplexity (prune.essential).
-- Run: LUA_CPATH='build/?.so' lua5.4 experiments/act_kv_sweep.lua [part]
-- (part 1, 2 or 3; all by default). Prints Markdown tables.
local sl = require "sparselab"
local A = require "sparselab.actsparse"
local P = require "sparselab.prune"

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local function read(n)
  local f = assert(io.open(DATA .. "/texts/" .. n, "rb"))
  local s = f:read("a")
  f:close()
  return m:encode(s)
end
local held = {read("05_moon_friend.txt"), read("06_little_seed.txt"), read("07_toy_shop.txt"), read("08_rainy_day.txt")}
local part = tonumber(arg and arg[1])

local function nll_attn(hook)
  local total, n = 0, 0
  for _, ids in ipairs(held) do
    local st <close> = m.c:state(#ids)
    local lg = m.c:forward(ids, st, hook)
    local c = sl.model_c.compare(lg, lg, ids)
    total, n = total + c.nll * c.n, n + c.n
  end
  return total / n
end
local dense_ppl = math.exp(nll_attn(nil))
print(string.format("dense ppl (held-out 05-08): %.3f", dense_ppl))

if not part or part == 1 then
  print("\n| k (of 172) | predictor | r | units kept | recall of gate top-k | recall of abs(h) top-k | ppl |")
  print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
  for _, k in ipairs{86, 43} do
    local rows = {
      {"exact top-k of abs(h)", {kind = "topk", k = k}},
      {"spark gate.up", {kind = "spark", k = k, r = 16}},
      {"spark gate.up", {kind = "spark", k = k, r = 32}},
      {"spark gate.up", {kind = "spark", k = k, r = 48}},
      {"spark gate.up, stat top-k", {kind = "spark", k = k, r = 32, stat = true}},
      {"spark gate (Spark's score)", {kind = "spark", k = k, r = 32, score = "gate"}},
      {"exact gate top-k (gate, r = 64)", {kind = "spark", k = k, r = 64, score = "gate"}},
      {"first-k (blind)", {kind = "spark", k = k, blind = "first"}},
      {"random (blind)", {kind = "spark", k = k, blind = "random"}},
    }
    for _, r in ipairs(rows) do
      local st = {}
      local ppl = math.exp(A.nll(m, held, r[2], st))
      local rc = r[2].kind == "spark" and A.spark_recall(m, held, r[2]) or {recall_gate = 0 / 0, recall_h = 1}
      print(string.format("| %d | %s | %s | %.3f | %.3f | %.3f | %.3f |", k, r[1], r[2].r or "-", st.kept / st.hidden,
        rc.recall_gate, rc.recall_h, ppl))
    end
  end
end

if not part or part == 2 then
  print("\n| K, V zeroed | scope | ppl | zeros / entries |")
  print("| ---: | --- | ---: | ---: |")
  for _, s in ipairs{0.1, 0.3, 0.5, 0.7} do
    for _, o in ipairs{{scope = "layer"}, {scope = "head"}, {scope = "layer", blind = "random"}} do
      o.k, o.v = s, s
      local st = {}
      local ppl = math.exp(nll_attn(P.kv_hook(o, st)))
      print(string.format("| %.1f | %s%s | %.3f | %.3f |", s, o.scope, o.blind and " (random mask)" or "", ppl,
        st.zeros_k / st.entries))
    end
  end
  for _, c in ipairs{{0.5, 0}, {0, 0.5}} do
    print(string.format("| K %.1f, V %.1f | layer | %.3f | |", c[1], c[2], math.exp(nll_attn(P.kv_hook({k = c[1], v = c[2]})))))
  end
end

if not part or part == 3 then
  local xs = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98}
  local yw, yk = {}, {}
  local snap = P.snapshot(m)
  for i, s in ipairs(xs) do
    P.magnitude(m, {sparsity = s, scope = "layer"})
    yw[i] = math.exp(P.nll(m, held))
    P.restore(m, snap)
    yk[i] = math.exp(nll_attn(s > 0 and P.kv_hook({k = s, v = s}) or nil))
  end
  print("\n| sparsity | ppl, weights (per layer) | ppl, K and V |")
  print("| ---: | ---: | ---: |")
  for i, s in ipairs(xs) do print(string.format("| %.2f | %.3f | %.3f |", s, yw[i], yk[i])) end
  for _, c in ipairs{{"weights", yw}, {"K and V", yk}} do
    local lg = {}
    for i, y in ipairs(c[2]) do lg[i] = math.log(y) end
    local _, ex = P.elbow(xs, c[2])
    local _, exl = P.elbow(xs, lg)
    print(string.format("%s: elbow of ppl at s = %.2f, of log ppl at s = %.2f; largest s within 5 %% of dense: %s",
      c[1], ex, exl, tostring(P.essential(xs, c[2], 0.05 * c[2][1]))))
  end
end
