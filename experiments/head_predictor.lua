-- head_predictor.lua — Question: how well do the head-importance predictors
-- of card head_neuron_predictor (ShadowLLM) predict a held-out prompt's
-- per-head criterion on the shipped model: the card's MLP (fc 2048, ReLU,
-- fc; MSE, AdamW 1e-3, cosine), the ridge map kept as an option, and the
-- static mean (the card's baseline)?
-- Inputs: the shipped TinyStories 260K model (5 layers x 8 heads); training
-- samples are prefixes (every `step` tokens, from 24 on) of texts 01-05,
-- held-out samples prefixes of texts 06-08 (other stories). The predictor's
-- input is the layer-1 last-token queries (sparselab.heads.features); the
-- target the criterion per head ("l2": mean output norm, forward only;
-- "ablation": |ΔNLL| of removing the head alone, 40 extra forwards each).
-- Output: mean Spearman ρ (over held-out prompts, of the 40 predicted vs true
-- scores) and the held-out MSE of the standardised targets, per predictor.
--   LUA_CPATH='build/?.so' lua5.4 experiments/head_predictor.lua [l2|ablation] [step]
local sl = require "sparselab"
local Hd = require "sparselab.heads"

local criterion, step = arg[1] or "l2", tonumber(arg[2] or "") or 24
local data = "experiments/data/tinystories260k"
local train_texts = {"01_red_kite", "02_lost_mitten", "03_brave_turtle", "04_cake_for_mom", "05_moon_friend"}
local test_texts = {"06_little_seed", "07_toy_shop", "08_rainy_day"}
local model = sl.model.load(data .. "/model.bin")

local function samples_of(names)
  local out = {}
  for _, n in ipairs(names) do
    local f = assert(io.open(data .. "/texts/" .. n .. ".txt", "rb"))
    local toks = model:encode(f:read("a"))
    f:close()
    for len = 24, #toks, step do
      local pre = {}
      for i = 1, len do pre[i] = toks[i] end
      out[#out + 1] = Hd.sample(model, pre, criterion)
    end
  end
  return out
end

local t0 = sl.time()
local train, test = samples_of(train_texts), samples_of(test_texts)
print(string.format("criterion %s: %d training prompts (texts 01-05), %d held-out prompts (texts 06-08), sampled in %.1f s",
  criterion, #train, #test, sl.time() - t0))

local function evaluate(name, P, secs)
  local rho, n = 0, 0
  for _, s in ipairs(test) do
    rho = rho + Hd.spearman(Hd.predict_scores(P, s.x), s.y)
    n = n + 1
  end
  print(string.format("%-28s mean Spearman rho %.3f   (trained in %.1f s)", name, rho / n, secs))
end

local zeroW = {}
for i = 1, #train[1].x do zeroW[i] = {}; for t = 1, #train[1].y do zeroW[i][t] = 0 end end
local static = Hd.train_predictor(train, 1e12)
static.W = zeroW
evaluate("static mean (card baseline)", static, 0)
for _, lam in ipairs{10, 1000} do
  local t1 = sl.time()
  local P = Hd.train(train, "ridge", {lambda = lam})
  evaluate(string.format("ridge residual, lambda %g", lam), P, sl.time() - t1)
end
for _, o in ipairs{{hidden = 2048, steps = 300}, {hidden = 256, steps = 300}} do
  local t1 = sl.time()
  local P = Hd.train(train, "mlp", o)
  evaluate(string.format("MLP hidden %d, %d steps", o.hidden, o.steps), P, sl.time() - t1)
  print(string.format("  training MSE (standardised) %.3f -> %.3f", P.losses[1], P.losses[#P.losses]))
end
