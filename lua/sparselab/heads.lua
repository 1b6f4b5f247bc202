-- sparselab.heads — head-level sparsity in the model runner (issue 16):
-- head masks as attention schedules (a removed head is the spec "skip": its
-- attention is not computed and its output, hence its W_o slice's
-- contribution, is 0 — the ξ_h = 0 of Michel et al.), and gradient-free
-- head-importance measures on a model:
--   "ablation"  |ΔNLL| when the head alone is removed (a finite difference of
--               the loss in ξ_h from 1 to 0: the stand-in for the card's
--               gradient proxy |∂L/∂ξ_h|, which needs autograd), averaged over
--               the texts; optionally normalised per layer by the ℓ2 norm
--               over its heads (the paper's normalisation);
--   "l2"        mean ‖o_h‖ over tokens of the head's attention output (a
--               DejaVu-style magnitude, forward only);
--   "kl"        KL(dense ‖ head removed) of the next-token distributions
--               (ShadowLLM's oracle ablation);
--   "gradient"  the card's proxy |∂L/∂ξ_h| at ξ = 1 (Michel et al.), with L
--               the text's mean NLL and ξ_h a multiplier on the head's
--               output: the runner has no backward, so the derivative is the
--               central difference (L(1 + ε) − L(1 − ε)) / 2ε, ε = opts.eps
--               (default 1e-2), 2 forwards per head (Hd.central_diff; its
--               convergence to the analytic derivative is tested on a tiny
--               layer written out in tests/lua/test_heads.lua).
-- opts.removed ({[layer] = {[head] = true}}) scores with those heads already
-- removed (Hd.iterative: the paper's iterative pruning with re-scoring).
-- Layers and heads are 0-based, tables are imp[layer][head].
local sl = require "sparselab"

local Hd = {}

--- The schedule that removes the heads in `removed` ({[layer] = {[head] =
--- true}}) and runs every other head densely.
function Hd.schedule(removed)
  local heads = {}
  for l, hs in pairs(removed) do
    for h, off in pairs(hs) do
      if off then heads[l] = heads[l] or {}; heads[l][h] = "skip" end
    end
  end
  return {default = "dense", heads = heads}
end

--- NLL (and KL to dense) of the model on tokens under a schedule.
local function score(model, tokens, schedule)
  local m = model:evaluate{tokens = tokens, attention = schedule}
  return m.nll, m.kl
end

--- The central difference (f(x + eps) − f(x − eps)) / (2·eps).
function Hd.central_diff(f, x, eps)
  return (f(x + eps) - f(x - eps)) / (2 * eps)
end

--- The spec of a head whose output is multiplied by xi (ξ_h of the card).
local function scaled_spec(xi)
  return {method = {id = "xi_scale", title = "head output times xi", family = "probe", phase = "both", params = {},
    run = function(prob)
      local o = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true})
      local t = o:totable()
      for _, hd in ipairs(t) do for _, row in ipairs(hd) do for c = 1, #row do row[c] = row[c] * xi end end end
      return {o = sl.tensor(t)}
    end}}
end

--- The schedule with `removed` skipped and head (l, h) scaled by xi.
local function schedule_with(removed, l, h, xi)
  local sch = Hd.schedule(removed or {})
  if l then
    sch.heads[l] = sch.heads[l] or {}
    sch.heads[l][h] = scaled_spec(xi)
  end
  return sch
end

local function nll_of(model, tokens, sch)
  local logits = model:run{tokens = tokens, attention = sch}
  return sl.model_c.compare(logits, logits, tokens).nll
end

--- Importance of every head: imp[layer][head] (0-based) by measure over the
--- texts (lists of token ids or strings). opts.normalize: divide each layer's
--- scores by their ℓ2 norm; opts.removed: heads already removed (they score
--- 0); opts.eps: the central-difference step of "gradient".
function Hd.importance(model, texts, measure, opts)
  opts = opts or {}
  local removed = opts.removed or {}
  local function gone(l, h) return removed[l] and removed[l][h] end
  local L, H = model.cfg.n_layers, model.cfg.n_heads
  local imp = {}
  for l = 0, L - 1 do imp[l] = {}; for h = 0, H - 1 do imp[l][h] = 0 end end
  local toks = {}
  for i, t in ipairs(texts) do toks[i] = type(t) == "string" and model:encode(t) or t end
  if measure == "l2" then
    for _, tokens in ipairs(toks) do
      model:run{tokens = tokens, attention = function(layer, head)
        return {method = {id = "l2_probe", title = "probe", family = "probe", phase = "both", params = {},
          run = function(prob)
            local o = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true})
            local t, s = o:totable()[1], 0
            for _, row in ipairs(t) do
              local r = 0
              for _, x in ipairs(row) do r = r + x * x end
              s = s + math.sqrt(r)
            end
            imp[layer][head] = imp[layer][head] + s / #t / #toks
            return {o = o}
          end}}
      end}
    end
  elseif measure == "ablation" or measure == "kl" then
    for _, tokens in ipairs(toks) do
      local base = next(removed) and nll_of(model, tokens, Hd.schedule(removed)) or score(model, tokens, nil)
      for l = 0, L - 1 do
        for h = 0, H - 1 do
          if not gone(l, h) then
            local rm = {}
            for ll, hs in pairs(removed) do rm[ll] = {}; for hh, v in pairs(hs) do rm[ll][hh] = v end end
            rm[l] = rm[l] or {}
            rm[l][h] = true
            local nll, kl = score(model, tokens, Hd.schedule(rm))
            -- |ΔNLL| per text, then the mean (the card takes |.| per example)
            imp[l][h] = imp[l][h] + (measure == "kl" and kl or math.abs(nll - base)) / #toks
          end
        end
      end
    end
  elseif measure == "gradient" then
    local eps = opts.eps or 1e-2
    for _, tokens in ipairs(toks) do
      for l = 0, L - 1 do
        for h = 0, H - 1 do
          if not gone(l, h) then
            local g = Hd.central_diff(function(xi) return nll_of(model, tokens, schedule_with(removed, l, h, xi)) end, 1, eps)
            -- E_x |∂L(x)/∂ξ_h|: the absolute value per text, then the mean
            imp[l][h] = imp[l][h] + math.abs(g) / #toks
          end
        end
      end
    end
  else
    sl.fail("heads.importance: measure must be 'ablation', 'kl', 'l2' or 'gradient', found '%s'", tostring(measure))
  end
  for l, hs in pairs(removed) do for h, v in pairs(hs) do if v then imp[l][h] = 0 end end end
  if opts.normalize then
    for l = 0, L - 1 do
      local n2 = 0
      for h = 0, H - 1 do n2 = n2 + imp[l][h] ^ 2 end
      n2 = math.sqrt(n2)
      if n2 > 0 then for h = 0, H - 1 do imp[l][h] = imp[l][h] / n2 end end
    end
  end
  return imp
end

--- The `count` least important heads over all layers (ties: lower layer,
--- then lower head), as {[layer] = {[head] = true}}.
function Hd.lowest(imp, count)
  local all = {}
  for l, hs in pairs(imp) do for h, s in pairs(hs) do all[#all + 1] = {l, h, s} end end
  table.sort(all, function(a, b)
    if a[3] ~= b[3] then return a[3] < b[3] end
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  local out = {}
  for i = 1, math.min(count, #all) do
    local l, h = all[i][1], all[i][2]
    out[l] = out[l] or {}
    out[l][h] = true
  end
  return out
end

--- Iterative pruning with re-scoring (Michel et al. §4): remove `step` heads
--- of least importance, score the remaining heads again with those removed,
--- until `count` heads are removed. Returns the removed set and the removal
--- order ({layer, head} pairs). opts as Hd.importance.
function Hd.iterative(model, texts, measure, count, step, opts)
  opts = opts or {}
  local removed, order = {}, {}
  while #order < count do
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.removed = removed
    local imp = Hd.importance(model, texts, measure, o)
    local live = {}
    for l, hs in pairs(imp) do
      live[l] = {}
      for h, x in pairs(hs) do if not (removed[l] and removed[l][h]) then live[l][h] = x end end
    end
    local pick = Hd.lowest(live, math.min(step, count - #order))
    local picked = {}
    for l, hs in pairs(pick) do for h in pairs(hs) do picked[#picked + 1] = {l, h} end end
    table.sort(picked, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    if #picked == 0 then break end
    for _, lh in ipairs(picked) do
      removed[lh[1]] = removed[lh[1]] or {}
      removed[lh[1]][lh[2]] = true
      order[#order + 1] = lh
    end
  end
  return removed, order
end

-- ---- the head-importance predictor (card head_neuron_predictor, ShadowLLM) ----

-- One forward over tokens with a probe per head: the concatenated layer-1
-- queries of the last token (the predictor's input; ShadowLLM's "b1e" uses the
-- hidden state after the first layer, of which these queries are a linear
-- image after RMSNorm) and every head's mean output norm (the l2 criterion).
local function probe(model, tokens)
  local feat, l2 = {}, {}
  local H = model.cfg.n_heads
  model:run{tokens = tokens, attention = function(layer, head)
    return {method = {id = "head_probe", title = "probe", family = "probe", phase = "both", params = {},
      run = function(prob)
        if layer == 1 then
          local n = prob.q:shape()[2]
          local last = prob.q:narrow(2, n, 1):totable()[1][1]
          for c, x in ipairs(last) do feat[head * #last + c] = x end
        end
        local o = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true})
        local t, s = o:totable()[1], 0
        for _, row in ipairs(t) do
          local r = 0
          for _, x in ipairs(row) do r = r + x * x end
          s = s + math.sqrt(r)
        end
        l2[layer * H + head + 1] = s / #t
        return {o = o}
      end}}
  end}
  feat[#feat + 1] = 1  -- bias
  return feat, l2
end

--- One training sample of a token list: {x = features, y = criterion per
--- (layer, head) flattened layer-major}. criterion "l2" (forward only) or
--- "ablation" (|ΔNLL| of removing each head alone: L·H extra forwards).
function Hd.sample(model, tokens, criterion)
  local x, l2 = probe(model, tokens)
  if criterion == "l2" then return {x = x, y = l2} end
  if criterion ~= "ablation" then sl.fail("heads.sample: criterion must be 'l2' or 'ablation', found '%s'", tostring(criterion)) end
  local imp = Hd.importance(model, {tokens}, "ablation")
  local y, H = {}, model.cfg.n_heads
  for l = 0, model.cfg.n_layers - 1 do for h = 0, H - 1 do y[l * H + h + 1] = imp[l][h] end end
  return {x = x, y = y}
end

--- Ridge regression from x to y over the samples: W [F][T] solving
--- (XᵀX + λI) W = XᵀY (Gaussian elimination with partial pivoting). The
--- card's predictor is an MLP trained with AdamW; a linear map is the
--- smallest honest stand-in at the workbench's sample counts.
function Hd.fit_predictor(samples, lambda)
  lambda = lambda or 1e-2
  local F, T = #samples[1].x, #samples[1].y
  local A, B = {}, {}
  for i = 1, F do
    A[i], B[i] = {}, {}
    for j = 1, F do A[i][j] = i == j and lambda or 0 end
    for t = 1, T do B[i][t] = 0 end
  end
  for _, s in ipairs(samples) do
    for i = 1, F do
      local xi = s.x[i]
      for j = 1, F do A[i][j] = A[i][j] + xi * s.x[j] end
      for t = 1, T do B[i][t] = B[i][t] + xi * s.y[t] end
    end
  end
  for c = 1, F do
    local piv = c
    for r = c + 1, F do if math.abs(A[r][c]) > math.abs(A[piv][c]) then piv = r end end
    A[c], A[piv], B[c], B[piv] = A[piv], A[c], B[piv], B[c]
    for r = 1, F do
      if r ~= c and A[r][c] ~= 0 then
        local f = A[r][c] / A[c][c]
        for j = c, F do A[r][j] = A[r][j] - f * A[c][j] end
        for t = 1, T do B[r][t] = B[r][t] - f * B[c][t] end
      end
    end
  end
  for r = 1, F do for t = 1, T do B[r][t] = B[r][t] / A[r][r] end end
  return B
end

--- Predicted criterion per (layer, head), flattened layer-major.
function Hd.predict(W, x)
  local out = {}
  for t = 1, #W[1] do
    local s = 0
    for i = 1, #x do s = s + x[i] * W[i][t] end
    out[t] = s
  end
  return out
end

--- The predictor used by the recipe and the experiment: the static mean of
--- the training targets plus a ridge map of the features to the residual
--- (λ large -> the static mask, the card's baseline). Returns {mean =, W =}.
function Hd.train_predictor(samples, lambda)
  local T, mean = #samples[1].y, {}
  for t = 1, T do
    local s = 0
    for _, x in ipairs(samples) do s = s + x.y[t] end
    mean[t] = s / #samples
  end
  local res = {}
  for i, x in ipairs(samples) do
    local y = {}
    for t = 1, T do y[t] = x.y[t] - mean[t] end
    res[i] = {x = x.x, y = y}
  end
  return {kind = "ridge", mean = mean, W = Hd.fit_predictor(res, lambda)}
end

-- ---- the card's MLP predictor (ShadowLLM B1EPredModel: fc(F -> hidden),
-- ReLU, fc(hidden -> L·H); MSE; AdamW lr 1e-3 with cosine annealing) ----
-- Full-batch training (the workbench has tens of prompts, not a data
-- loader's worth). Features and targets are standardised with the training
-- set's mean and std (a constant feature is dropped; a constant target is
-- predicted as that constant exactly). Matrix products run in C (mm.dense).

local function rng(seed)
  local st = seed
  return function()
    st = (st * 1103515245 + 12345) % 2147483648
    return st / 2147483648
  end
end

local function transpose(t)
  local out = {}
  for j = 1, #t[1] do
    local r = {}
    for i = 1, #t do r[i] = t[i][j] end
    out[j] = r
  end
  return out
end

local function mm(x, w) return sl.mm.dense(sl.tensor(x), sl.tensor(w)):totable() end -- x·wᵀ

--- Forward pass of the MLP on standardised rows X (a table of rows): the
--- outputs [N][T], and the pre-activations [N][hidden] for the backward.
local function mlp_forward(net, X)
  local Z = mm(X, net.W1)
  for _, r in ipairs(Z) do for j = 1, #r do r[j] = r[j] + net.b1[j] end end
  local A = {}
  for i, r in ipairs(Z) do
    local a = {}
    for j = 1, #r do a[j] = r[j] > 0 and r[j] or 0 end
    A[i] = a
  end
  local Y = mm(A, net.W2)
  for _, r in ipairs(Y) do for t = 1, #r do r[t] = r[t] + net.b2[t] end end
  return Y, Z, A
end

--- MSE loss (mean over rows and outputs) of net on X against Y and its
--- gradients {W1, b1, W2, b2} (the manual backward).
function Hd.mlp_grad(net, X, Yt)
  local Y, Z, A = mlp_forward(net, X)
  local N, T = #Y, #Y[1]
  local dY, loss = {}, 0
  for i = 1, N do
    local r = {}
    for t = 1, T do
      local e = Y[i][t] - Yt[i][t]
      loss = loss + e * e
      r[t] = 2 * e / (N * T)
    end
    dY[i] = r
  end
  local gW2 = mm(transpose(dY), transpose(A))   -- [T][hidden]
  local dA = mm(dY, transpose(net.W2))          -- [N][hidden]
  for i, r in ipairs(dA) do for j = 1, #r do if Z[i][j] <= 0 then r[j] = 0 end end end
  local gW1 = mm(transpose(dA), transpose(X))   -- [hidden][F]
  local gb1, gb2 = {}, {}
  for j = 1, #net.b1 do local s = 0; for i = 1, N do s = s + dA[i][j] end; gb1[j] = s end
  for t = 1, T do local s = 0; for i = 1, N do s = s + dY[i][t] end; gb2[t] = s end
  return loss / (N * T), {W1 = gW1, b1 = gb1, W2 = gW2, b2 = gb2}
end

local function standardise(rows)
  local F, mean, sd = #rows[1], {}, {}
  for j = 1, F do
    local s, s2 = 0, 0
    for _, r in ipairs(rows) do s = s + r[j]; s2 = s2 + r[j] * r[j] end
    mean[j] = s / #rows
    sd[j] = math.sqrt(math.max(0, s2 / #rows - mean[j] ^ 2))
  end
  return mean, sd
end

local function scaled(x, mean, sd)
  local out = {}
  for j = 1, #x do out[j] = sd[j] > 1e-12 and (x[j] - mean[j]) / sd[j] or 0 end
  return out
end

--- A freshly initialised net (PyTorch nn.Linear's U(±1/√fan_in), seeded).
function Hd.mlp_init(F, hidden, T, seed)
  local u = rng(seed or 1)
  local function mat(rows, cols, b)
    local m = {}
    for i = 1, rows do
      local r = {}
      for j = 1, cols do r[j] = (2 * u() - 1) * b end
      m[i] = r
    end
    return m
  end
  local b1, b2 = 1 / math.sqrt(F), 1 / math.sqrt(hidden)
  return {W1 = mat(hidden, F, b1), b1 = mat(1, hidden, b1)[1], W2 = mat(T, hidden, b2), b2 = mat(1, T, b2)[1]}
end

--- Trains the MLP predictor on samples {x =, y =}; o: hidden (2048, the
--- card's), steps (400), lr (1e-3), weight_decay (0.01: torch AdamW's
--- default), seed. Returns {kind = "mlp", net, xm, xs, ym, ys, losses}.
function Hd.train_mlp(samples, o)
  o = o or {}
  local X0, Y0 = {}, {}
  for i, s in ipairs(samples) do X0[i], Y0[i] = s.x, s.y end
  local xm, xs = standardise(X0)
  local ym, ys = standardise(Y0)
  local X, Y = {}, {}
  for i = 1, #X0 do X[i], Y[i] = scaled(X0[i], xm, xs), scaled(Y0[i], ym, ys) end
  local steps, lr0, wd = o.steps or 400, o.lr or 1e-3, o.weight_decay or 0.01
  local net = Hd.mlp_init(#X[1], o.hidden or 2048, #Y[1], o.seed or 1)
  local m, v, losses = {}, {}, {}
  local b1, b2, eps = 0.9, 0.999, 1e-8
  for t = 1, steps do
    local loss, g = Hd.mlp_grad(net, X, Y)
    losses[t] = loss
    local lr = lr0 * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps)) -- CosineAnnealingLR(T_max = steps)
    local c1, c2 = 1 - b1 ^ t, 1 - b2 ^ t
    for name, gp in pairs(g) do
      m[name] = m[name] or {}
      v[name] = v[name] or {}
      local par, mm_, vv = net[name], m[name], v[name]
      local function upd(i, j, gv)
        local key = j and (i - 1) * #gp[1] + j or i
        mm_[key] = b1 * (mm_[key] or 0) + (1 - b1) * gv
        vv[key] = b2 * (vv[key] or 0) + (1 - b2) * gv * gv
        local pv = j and par[i][j] or par[i]
        pv = pv * (1 - lr * wd) - lr * (mm_[key] / c1) / (math.sqrt(vv[key] / c2) + eps)
        if j then par[i][j] = pv else par[i] = pv end
      end
      if type(gp[1]) == "table" then
        for i, row in ipairs(gp) do for j, gv in ipairs(row) do upd(i, j, gv) end end
      else
        for i, gv in ipairs(gp) do upd(i, nil, gv) end
      end
    end
  end
  return {kind = "mlp", net = net, xm = xm, xs = xs, ym = ym, ys = ys, losses = losses}
end

--- Trains the predictor named by kind: "ridge" (Hd.train_predictor, o.lambda)
--- or "mlp" (Hd.train_mlp, o as there).
function Hd.train(samples, kind, o)
  o = o or {}
  if kind == "ridge" then return Hd.train_predictor(samples, o.lambda or 100) end
  if kind == "mlp" then return Hd.train_mlp(samples, o) end
  sl.fail("heads.train: predictor must be 'ridge' or 'mlp', found '%s'", tostring(kind))
end

function Hd.predict_scores(P, x)
  if P.kind == "mlp" then
    local y = mlp_forward(P.net, {scaled(x, P.xm, P.xs)})[1]
    for t = 1, #y do y[t] = P.ys[t] > 1e-12 and P.ym[t] + P.ys[t] * y[t] or P.ym[t] end
    return y
  end
  local r = Hd.predict(P.W, x)
  for t = 1, #r do r[t] = r[t] + P.mean[t] end
  return r
end

--- Features of a token list (for Hd.predict).
function Hd.features(model, tokens) return (probe(model, tokens)) end

--- Per-layer masks: in every layer the floor(p·H) heads with the lowest
--- scores (flattened layer-major; ties: the lower head) -> {[l] = {[h] = true}}.
function Hd.per_layer(scores, L, H, p)
  local out, m = {}, math.floor(p * H + 1e-9)
  for l = 0, L - 1 do
    local idx = {}
    for h = 0, H - 1 do idx[#idx + 1] = h end
    table.sort(idx, function(a, b)
      local sa, sb = scores[l * H + a + 1], scores[l * H + b + 1]
      if sa ~= sb then return sa < sb end
      return a < b
    end)
    for i = 1, m do out[l] = out[l] or {}; out[l][idx[i]] = true end
  end
  return out
end

--- Spearman rank correlation of two equally long lists (average ranks for ties).
function Hd.spearman(a, b)
  local function ranks(x)
    local idx = {}
    for i = 1, #x do idx[i] = i end
    table.sort(idx, function(p, q) return x[p] < x[q] end)
    local r, i = {}, 1
    while i <= #idx do
      local j = i
      while j < #idx and x[idx[j + 1]] == x[idx[i]] do j = j + 1 end
      for k = i, j do r[idx[k]] = (i + j) / 2 end
      i = j + 1
    end
    return r
  end
  local ra, rb, n = ranks(a), ranks(b), #a
  local ma, mb = (n + 1) / 2, (n + 1) / 2
  local sab, saa, sbb = 0, 0, 0
  for i = 1, n do
    sab = sab + (ra[i] - ma) * (rb[i] - mb)
    saa = saa + (ra[i] - ma) ^ 2
    sbb = sbb + (rb[i] - mb) ^ 2
  end
  return (saa > 0 and sbb > 0) and sab / math.sqrt(saa * sbb) or 0
end

return Hd
