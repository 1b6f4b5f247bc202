-- sparselab.actsparse — FFN activation sparsity in the model runner (issue
-- 17; cards topk_activation, channel_threshold, act_sparse_matmul), through
-- the runner's activation sites (model:forward's site hook).
--
--   A.hook(m, spec, stats) -> site hook for m.c:forward(ids, st, nil, hook)
--     spec {kind = "topk", k =}: per token the k FFN hidden units of largest
--       |h| (h = silu(gate) * up) are kept (act.topk), the rest zeroed;
--     spec {kind = "threshold", theta = {[layer] = tensor [hidden]}}: the
--       gate activation silu(x.w1^T) is zeroed where |.| < theta[layer][j]
--       (CATS: one value per layer; CHESS: per channel), i.e. h_j = 0 there;
--     stats (optional table) accumulates hidden = units seen, kept = units
--       nonzero, flops_down = 2 . dim . kept (what mm.act_sparse executes for
--       the down projection) and flops_down_dense.
--   A.calibrate(m, seqs, s) -> {cats = {[layer] = theta}, chess = {[layer] =
--     tensor}, ubar = {[layer] = table}}: CHESS's two passes (thresholds.py)
--     on the calibration sequences, target sparsity s.
--   A.calibrate_delta(m, seqs, s) -> {[layer] = theta}: temporal_delta's
--     per-layer threshold, the s-quantile of consecutive-token differences.
--   A.nll(m, seqs, spec, stats) -> mean next-token NLL with the spec.
--   A.core_token(row, rho), A.core_sentence(rows, rho, beta): percentile core
--     neurons (topk_activation 3); spec {kind = "core", rho =, beta =}: the
--     prompt's sentence-level core neurons, kept alone in decode.
--   A.spark_select, A.spark_recall; spec {kind = "spark", k =, r =, stat =,
--     score =, blind =}: Spark's predictor (topk_activation 4), top-k units
--     chosen on a score of the first r input dims (act.spark_score), h exact on them.
--
-- Card steps done: exact top-k (topk_activation 1) on the FFN hidden units
-- by |h| (SwiGLU units are signed: the magnitude is this workbench's
-- reading); CATS (channel_threshold 1, 6) and CHESS (2, 5, 6) gate
-- thresholds with the two calibration passes; temporal_delta steps 1-3
-- (reference state, thresholded delta, y = W xhat, per-layer threshold
-- calibrated by a quantile) over the token axis of a prefill, without the
-- periodic refresh (4: the reference restarts with every forward) and
-- without training (5). Later sessions: statistical top-k (2), percentile
-- core neurons (3), Spark's predictor (4; session 4). Not done: CHESS+
-- attention thresholds (channel_threshold 3, 4, 7); sparselab.runexec runs
-- w2 through mm.act_sparse on the zeroed units.
local sl = require "sparselab"

local A = {}

local function silu(v) return v / (1 + math.exp(-v)) end

-- k-th smallest (1-based k) of a Lua array (copied, sorted)
local function kth(values, k)
  local c = {}
  for i, v in ipairs(values) do c[i] = v end
  table.sort(c)
  return c[math.max(1, math.min(#c, k))]
end

local function count_nonzero(rows)
  local nz = 0
  for _, row in ipairs(rows) do for _, v in ipairs(row) do if v ~= 0 then nz = nz + 1 end end end
  return nz
end

--- Percentile core neurons (card topk_activation step 3, CoreMatching after
--- CoreInfer), token level: row is a Lua array of one token's activations;
--- A+ = its positive entries; C_rho = {n : a_n >= percentile(A+, rho)} with
--- the percentile read as the ceil((1 - rho) |A+|)-th largest of A+ (so
--- |C_rho| = ceil((1 - rho) |A+|) without ties; rho a fraction in [0, 1]).
--- Returns the sorted 1-based indices.
function A.core_token(row, rho)
  local pos = {}
  for _, v in ipairs(row) do if v > 0 then pos[#pos + 1] = v end end
  local c = math.ceil((1 - rho) * #pos - 1e-9)
  local out = {}
  if c <= 0 then return out end
  table.sort(pos, function(a, b) return a > b end)
  local th = pos[c]
  for n, v in ipairs(row) do if v > 0 and v >= th then out[#out + 1] = n end end
  return out
end

--- Sentence level: rows [T][m]; f(n) = #tokens t with n in C_rho(row t);
--- C^beta = {n : f(n) >= percentile(f, beta)}, the percentile the
--- ceil((1 - beta) m)-th largest f, and f(n) > 0. Returns the sorted indices
--- and f.
function A.core_sentence(rows, rho, beta)
  local m = #rows[1]
  local f = {}
  for n = 1, m do f[n] = 0 end
  for _, row in ipairs(rows) do for _, n in ipairs(A.core_token(row, rho)) do f[n] = f[n] + 1 end end
  local c = math.ceil((1 - beta) * m - 1e-9)
  local out = {}
  if c <= 0 then return out, f end
  local sorted = {}
  for n = 1, m do sorted[n] = f[n] end
  table.sort(sorted, function(a, b) return a > b end)
  local th = sorted[c]
  for n = 1, m do if f[n] > 0 and f[n] >= th then out[#out + 1] = n end end
  return out, f
end

--- Spark's FFN predictor (card topk_activation step 4; spark_transformer's
--- split): per FFN input row x [T, dim] of layer, a score from the first r
--- input dims only (spec.r, default ceil(dim/2): the card's r ~ d_model/2), by
--- the op act.spark_score: spec.score = "gate" (Spark's: z = x[:r] . W1[:, :r]^T)
--- or "gate_up" (default; z = |silu(gate_r) . up_r| with the same r dims of
--- W3: this untrained SwiGLU model's stand-in for the trained predictor);
--- then the k largest z per row (act.topk by value), or with spec.stat =
--- true Spark's statistical top-k (act.stat_topk at sparsity 1 - k/hidden,
--- its nonzero set; no sort, count only ~k). spec.blind = "first" (units
--- 1..k) or "random" (k seeded random units per row): the score-blind
--- controls. Returns per row a set {[unit (1-based)] = true} and the units
--- listed. A unit whose kept score is exactly 0 counts as not selected.
function A.spark_select(m, layer, x, spec)
  local d, hidden = m.cfg.dim, m.cfg.hidden_dim
  local k = math.min(spec.k, hidden)
  local T = x:shape()[1]
  local sets, listed = {}, 0
  local function from(y)
    for t, row in ipairs(y:totable()) do
      local set = {}
      for j, v in ipairs(row) do if v ~= 0 then set[j] = true; listed = listed + 1 end end
      sets[t] = set
    end
    return sets, listed
  end
  if spec.blind == "first" then
    for t = 1, T do sets[t] = {}; for j = 1, k do sets[t][j] = true end end
    return sets, T * k
  elseif spec.blind == "random" then
    spec._rng = (spec._rng or (spec.seed or 17)) + 1
    return from(sl.act.topk(sl.rand({T, hidden}, {seed = spec._rng}), {k = k, abs = false}))
  elseif spec.blind ~= nil then
    sl.fail("actsparse: spark blind must be 'first' or 'random', found '%s'", tostring(spec.blind))
  end
  local score = spec.score or "gate_up"
  if score ~= "gate" and score ~= "gate_up" then
    sl.fail("actsparse: spark score must be 'gate' or 'gate_up', found '%s'", tostring(score))
  end
  local args = {r = spec.r or (d + 1) // 2, backend = spec.backend}
  if score == "gate_up" then args.w3 = m.c:weight(string.format("layers.%d.w3", layer)) end
  local z = sl.act.spark_score(x, m.c:weight(string.format("layers.%d.w1", layer)), args)
  if spec.stat then
    if k >= hidden then return from(sl.act.topk(z, {k = k, abs = false, backend = spec.backend})) end
    return from(sl.act.stat_topk(z, {sparsity = 1 - k / hidden, backend = spec.backend}))
  end
  return from(sl.act.topk(z, {k = k, abs = false, backend = spec.backend}))
end

--- Recall of Spark's predictor over the sequences (dense forwards; the
--- predictor only observes): mean over layers and rows of |pred ∩ exact| / k,
--- exact = the k units of largest full gate g = x W1^T (the score the
--- predictor estimates; ties the lower unit) -> recall_gate, and the k units of
--- largest |h|, h = silu(g) . up (what kind "topk" keeps) -> recall_h.
function A.spark_recall(m, seqs, spec)
  local hidden = m.cfg.hidden_dim
  local k = math.min(spec.k, hidden)
  local hit_g, hit_h, n = 0, 0, 0
  for _, ids in ipairs(seqs) do
    local st <close> = m.c:state(#ids)
    m.c:forward(ids, st, nil, function(layer, site, x)
      if site ~= "ffn_in" then return nil end
      local pred = A.spark_select(m, layer, x, spec)
      local g = sl.mm.dense(x, m.c:weight(string.format("layers.%d.w1", layer)))
      local u = sl.mm.dense(x, m.c:weight(string.format("layers.%d.w3", layer))):totable()
      local tg = sl.act.topk(g, {k = k, abs = false}):totable()
      local gt = g:totable()
      for t, row in ipairs(gt) do
        for j, v in ipairs(row) do row[j] = silu(v) * u[t][j] end
      end
      local th = sl.act.topk(sl.tensor(gt), {k = k, abs = true}):totable()
      for t = 1, #gt do
        for j = 1, hidden do
          if pred[t][j] then
            if tg[t][j] ~= 0 then hit_g = hit_g + 1 end
            if th[t][j] ~= 0 then hit_h = hit_h + 1 end
          end
        end
        n = n + k
      end
    end)
  end
  return {recall_gate = hit_g / n, recall_h = hit_h / n, rows = n // k}
end

function A.hook(m, spec, stats)
  local d, hidden = m.cfg.dim, m.cfg.hidden_dim
  local keep_mask = {}
  local function account(h_rows)
    if not stats then return end
    local nz = count_nonzero(h_rows)
    stats.hidden = (stats.hidden or 0) + #h_rows * hidden
    stats.kept = (stats.kept or 0) + nz
    stats.flops_down = (stats.flops_down or 0) + 2 * d * nz
    stats.flops_down_dense = (stats.flops_down_dense or 0) + 2 * d * hidden * #h_rows
  end
  return function(layer, site, x)
    if spec.kind == "topk" then
      if site ~= "ffn_hidden" then return nil end
      local y = sl.act.topk(x, {k = spec.k, abs = true})
      account(y:totable())
      return y
    elseif spec.kind == "stat_topk" then
      -- statistical top-k on the gate pre-activation (card topk_activation step 2, Gemma 3n's
      -- order gate -> stat_topk -> activation -> x up): h = silu(stat_topk(x W1^T)) . (x W3^T)
      if site == "ffn_in" then
        local z = sl.mm.dense(x, m.c:weight(string.format("layers.%d.w1", layer)))
        local u = sl.mm.dense(x, m.c:weight(string.format("layers.%d.w3", layer))):totable()
        local g = sl.act.stat_topk(z, {sparsity = spec.sparsity}):totable()
        for i, row in ipairs(g) do
          for j, v in ipairs(row) do row[j] = v ~= 0 and silu(v) * u[i][j] or 0 end
        end
        keep_mask[layer] = g
      elseif site == "ffn_hidden" then
        local h = keep_mask[layer]
        account(h)
        return sl.tensor(h)
      end
      return nil
    elseif spec.kind == "spark" then
      -- Spark's predictor (card topk_activation step 4): select on the partial-dimension gate
      -- score, compute on the full row: the selected units keep their exact h = silu(x.W1^T) .
      -- (x.W3^T), every other unit is 0 (what mm.out_sparse on the listed units, then
      -- mm.act_sparse for w2, computes). stats.flops_predictor: 2 . r . hidden per row.
      if site == "ffn_in" then
        local sets, pairs_listed = A.spark_select(m, layer, x, spec)
        keep_mask[layer] = sets
        if stats then
          local r = spec.blind and 0 or math.min(d, spec.r or (d + 1) // 2)
          local per = (spec.score or "gate_up") == "gate_up" and 4 or 2
          stats.flops_predictor = (stats.flops_predictor or 0) + per * r * hidden * #sets
          stats.listed = (stats.listed or 0) + pairs_listed
        end
      elseif site == "ffn_hidden" then
        local h, sets = x:totable(), keep_mask[layer]
        for t, row in ipairs(h) do for j = 1, #row do if not sets[t][j] then row[j] = 0 end end end
        account(h)
        return sl.tensor(h)
      end
      return nil
    elseif spec.kind == "core" then
      -- CoreInfer / CoreMatching: a forward of more than one token (the prompt's prefill) runs
      -- dense and fixes per layer the sentence-level core neurons of its |h| (SwiGLU units are
      -- signed: |h| is this workbench's reading of the activation); single-token forwards
      -- (decode) keep only those units. spec.rho, spec.beta: fractions; spec.blind = true keeps
      -- the first |C| units instead (the score-blind control).
      if site ~= "ffn_hidden" then return nil end
      local h = x:totable()
      if #h > 1 then
        local a = {}
        for i, row in ipairs(h) do a[i] = {}; for j, v in ipairs(row) do a[i][j] = math.abs(v) end end
        local core = A.core_sentence(a, spec.rho, spec.beta)
        if spec.blind then for i = 1, #core do core[i] = i end end
        local keep = {}
        for _, n in ipairs(core) do keep[n] = true end
        keep_mask[layer] = keep
        account(h)
        return nil
      end
      local keep = keep_mask[layer]
      if not keep then return nil end
      for _, row in ipairs(h) do for j = 1, #row do if not keep[j] then row[j] = 0 end end end
      account(h)
      return sl.tensor(h)
    elseif spec.kind == "delta" then
      -- tokens as the time axis: the FFN hidden stream goes through act.delta
      -- and the runner's down projection sees the reference xhat (W xhat_t =
      -- the accumulated act-sparse products of the deltas)
      if site ~= "ffn_hidden" or not spec.theta[layer] then return nil end
      local delta, xhat = sl.act.delta(x, spec.theta[layer])
      account(delta:totable())
      return xhat
    elseif spec.kind == "threshold" then
      local theta = spec.theta[layer]
      if not theta then return nil end
      if site == "ffn_in" then
        local g = sl.mm.dense(x, m.c:weight(string.format("layers.%d.w1", layer))):totable()
        for _, row in ipairs(g) do for j, v in ipairs(row) do row[j] = silu(v) end end
        keep_mask[layer] = sl.act.threshold(sl.tensor(g), theta):totable()
      elseif site == "ffn_hidden" then
        local h, mask = x:totable(), keep_mask[layer]
        for i, row in ipairs(h) do for j = 1, #row do if mask[i][j] == 0 then row[j] = 0 end end end
        account(h)
        return sl.tensor(h)
      end
      return nil
    end
    sl.fail("actsparse: spec.kind must be 'topk', 'stat_topk', 'spark', 'core', 'delta' or 'threshold', found '%s'",
      tostring(spec.kind))
  end
end

--- CHESS calibration (two passes; thresholds are means over samples of
--- per-sample quantiles). Returns per layer the CATS threshold, the CHESS
--- per-channel thresholds (tensor [hidden]) and ubar.
function A.calibrate(m, seqs, s)
  local L, hidden = m.cfg.n_layers, m.cfg.hidden_dim
  local cats, tau, ubar_sum, count = {}, {}, {}, {}
  local gates = {} -- [layer][sample] = {abs act values (flat)}, and per-sample rows for pass 2
  for l = 0, L - 1 do cats[l], tau[l], ubar_sum[l], count[l], gates[l] = 0, 0, {}, 0, {} end
  for j = 1, hidden do for l = 0, L - 1 do ubar_sum[l][j] = 0 end end
  -- pass 1: CATS thresholds and ubar
  for si, ids in ipairs(seqs) do
    local st <close> = m.c:state(#ids)
    m.c:forward(ids, st, nil, function(layer, site, x)
      if site ~= "ffn_in" then return nil end
      local g = sl.mm.dense(x, m.c:weight(string.format("layers.%d.w1", layer))):totable()
      local u = sl.mm.dense(x, m.c:weight(string.format("layers.%d.w3", layer))):totable()
      local flat, rows = {}, {}
      for i, row in ipairs(g) do
        local r = {}
        for j, v in ipairs(row) do
          local a = math.abs(silu(v))
          flat[#flat + 1] = a
          r[j] = a
          ubar_sum[layer][j] = ubar_sum[layer][j] + math.abs(u[i][j])
        end
        rows[i] = r
      end
      count[layer] = count[layer] + #g
      cats[layer] = cats[layer] + kth(flat, math.floor(s * #flat)) / #seqs
      gates[layer][si] = rows
    end)
  end
  local ubar, chess = {}, {}
  for l = 0, L - 1 do
    ubar[l] = {}
    for j = 1, hidden do ubar[l][j] = ubar_sum[l][j] / count[l] end
    -- pass 2: importance |act| . ubar, its per-sample quantile averaged
    for _, rows in ipairs(gates[l]) do
      local flat = {}
      for _, r in ipairs(rows) do for j, a in ipairs(r) do flat[#flat + 1] = a * ubar[l][j] end end
      tau[l] = tau[l] + kth(flat, math.floor(s * #flat)) / #seqs
    end
    local th = {}
    for j = 1, hidden do th[j] = ubar[l][j] > 0 and tau[l] / ubar[l][j] or math.huge end
    chess[l] = sl.tensor(th)
    local c = {}
    for j = 1, hidden do c[j] = cats[l] end
    cats[l] = sl.tensor(c)
  end
  return {cats = cats, chess = chess, ubar = ubar}
end

--- temporal_delta thresholds: per layer the mean over sequences of the
--- s-quantile of |h_t - h_{t-1}| (consecutive tokens' FFN hidden units), as
--- a constant vector [hidden].
function A.calibrate_delta(m, seqs, s)
  local L, hidden = m.cfg.n_layers, m.cfg.hidden_dim
  local th = {}
  for l = 0, L - 1 do th[l] = 0 end
  for _, ids in ipairs(seqs) do
    local st <close> = m.c:state(#ids)
    m.c:forward(ids, st, nil, function(layer, site, x)
      if site ~= "ffn_hidden" then return nil end
      local h, flat = x:totable(), {}
      for t = 2, #h do for j = 1, hidden do flat[#flat + 1] = math.abs(h[t][j] - h[t - 1][j]) end end
      th[layer] = th[layer] + kth(flat, math.floor(s * #flat)) / #seqs
    end)
  end
  local out = {}
  for l = 0, L - 1 do
    local v = {}
    for j = 1, hidden do v[j] = th[l] end
    out[l] = sl.tensor(v)
  end
  return out
end

function A.nll(m, seqs, spec, stats)
  local total, n = 0, 0
  for _, ids in ipairs(seqs) do
    local st <close> = m.c:state(#ids)
    local logits = m.c:forward(ids, st, nil, spec and A.hook(m, spec, stats) or nil)
    local c = sl.model_c.compare(logits, logits, ids)
    total, n = total + c.nll * c.n, n + c.n
  end
  return total / n
end

return A
