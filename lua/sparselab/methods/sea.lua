-- SEA: Sparse Linear Attention with Estimated Attention Mask — card: sea.
-- Card steps implemented (on captured Q, K, V; causal):
--   1-2. the estimated compressed attention Â [H, T, T_M] (probabilities
--      over T_M cells per query row): from a weights file (`a_hat`, the
--      trained estimator's softmaxed output captured from a model) or, as
--      the stand-in, from a Performer FAVOR+ linear-attention estimate (below);
--   3. top-k in compressed space, k_flatten_dim "causal_batch": per query
--      row t (causal length t_i = t + 1) one budget over the H·T_M cells of
--      all heads, round(H·k·T_M / t_i) cells, at least 1 (ties: lower head,
--      then lower cell: torch.topk leaves them unspecified);
--   4. nearest resize from T_M to the row's width t_i: key j of row t lies in
--      cell floor(((j + 1) - 1 + 0.5) / t_i · T_M - 1e-4) (the reference's
--      resize_from_m_to_t with k_oversample 1, where its oversample mask
--      keeps everything); a kept cell no key maps to adds nothing;
--   Steps 3-4 run as the C op trainable.cells (time O(H·T_M) per row plus
--      the kept keys; the map is read as float32); M.choose + M.lists are
--      the earlier Lua loops (O(n²)), kept as the test's oracle (identical
--      lists on a float32 map, tested). The Performer stand-in estimate
--      runs as the C op trainable.performer (float64 prefix sums of phi(k)
--      per kv head, O(n·T_M·m) per head); M.performer_map_lua is the earlier
--      O(n²·m) Lua loop, kept as the test's oracle (same map to 1e-6, tested);
--   5. exact sparse attention on the mask (attn.token_sparse, one list per
--      head and row). The "mix" with the Performer context output and the
--      partial_attention_scaler are NOT implemented (output = the sparse
--      attention alone);
--   6. training (KL + MSE distillation, LoRA): not run.
-- Reference: gmlwns2000/sea-attention src/models/perlin_attention/attention.py
-- (per_item_top_k for causal_batch, topk over t = probs.transpose(1, 2)
-- .reshape(N, T, H·T_M), clamp_min 1) and ops/kernels/resize_m_to_t.py
-- (token_index_x): matched as described in steps 3-4. The estimator network
-- (attention_predictor_enc / dec_row / CausalConv2d cnn) is not run: its
-- output a_hat is taken from a file instead.
-- Parameters from a file (param `weights`; safetensors, float tensors):
--   a_hat [Hq, n, T_M]          the estimated compressed map (probabilities in
--                               [0, 1]), captured after the reference's softmax;
--                               T_M is then the file's;
--   projection_matrix [m, D]    the Performer random features (performer_pytorch
--                               FastAttention's buffer name) for the stand-in
--                               estimate, m features.
-- Stand-in without weights (params_source "standin:performer(m=..,seed=..)"):
--   FAVOR+ positive random features phi(x) = exp(w·x' - |x'|²/2 - c)/sqrt(m),
--   x' = x·D^{-1/4}, w ~ N(0, I) (seeded; nb_features = round(D·ln D), the
--   reference's performer_nb_factor 1), the causal estimate of p[t, j] ∝
--   phi(q_t)·phi(k_j) for j <= t, summed per cell and normalised per row:
--   the card's "score.linear_attn -> lowres" stand-in, no trained estimator.
--   estimator = "oracle": the exact attention probabilities summed per cell
--   (params_source "oracle:pooled_attention"; reads the exact map).
-- Fitting: not done — SEA's estimator is a network (MLP encoder/decoder and
--   a causal CNN over the T × T_M map) trained by distillation with the
--   whole model; it is not a small learned part (`fit-params sea` says so).
-- Density: keys attended over causal keys of all heads.
-- NOT implemented: the Performer context mix, decode, the estimator network.
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local dims = T.dims

local M = {
  id = "sea",
  card = "sea",
  title = "SEA: sparse attention from a linear-attention-estimated (compressed) attention map",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "Estimated compressed attention (T_M cells per row; Performer stand-in), one top-k budget over all heads per row, nearest resize, exact sparse attention.",
  knob = "k",
  params = {
    k = {default = 7, min = 1, max = 65536, doc = "keys per head and query on average (the budget is round(H·k·T_M/t) cells)"},
    t_m = {default = 128, min = 1, int = true, doc = "compressed width T_M (attention_predictor_length)"},
    estimator = {default = "performer", doc = "stand-in without weights: performer or oracle (pooled exact attention)"},
    nb_features = {default = 0, min = 0, int = true, doc = "Performer features m (0: round(D·ln D))"},
    seed = {default = 0, min = 0, int = true, doc = "seed of the Performer features"},
    weights = {default = "", doc = "safetensors file with a_hat or projection_matrix (empty: the Performer stand-in)"},
  },
  ops = {"trainable.performer", "trainable.cells", "attn.token_sparse"},
  checks = {"kept cells = max(1, round(H·k·T_M/t)) per row (one budget over heads)", "no key beyond the row (resize causal)",
    "k large equals dense", "oracle map beats the stand-in", "score-blind map loses recall", "independent float64 SEA to 1e-5",
    "bad weight files: one-line errors"},
  params_sources = {"standin:performer(m=<m>,seed=<seed>)", "oracle:pooled_attention", "sha256:<weights file>"},
  fit_why = "SEA's estimator is an MLP encoder/decoder plus a causal CNN trained by distillation with the whole model, not a small learned part",
}

--- The cell of key j (0-based) in a row of width w: the reference's nearest resize.
function M.cell(j, w, tm)
  local c = math.floor((j + 0.5) / w * tm - 1e-4)
  if c < 0 then c = 0 end
  if c > tm - 1 then c = tm - 1 end
  return c
end

-- Performer features phi of the rows of x (Lua [n][D]) with w [m][D]:
-- exp(w·x' - |x'|²/2 - c) / sqrt(m), c the max exponent of the row (per_row)
-- or of all rows (keys): a common factor that the per-row normalisation
-- removes.
local function features(x, w, per_row)
  local n, d, m = #x, #x[1], #w
  local s = d ^ -0.25
  local out, gmax = {}, -math.huge
  for t = 1, n do
    local xt, ex, nrm = x[t], {}, 0
    for e = 1, d do nrm = nrm + (xt[e] * s) ^ 2 end
    local mx = -math.huge
    for f = 1, m do
      local a, wf = 0, w[f]
      for e = 1, d do a = a + wf[e] * xt[e] * s end
      ex[f] = a - nrm / 2
      if ex[f] > mx then mx = ex[f] end
    end
    out[t] = ex
    out[t].mx = mx
    if mx > gmax then gmax = mx end
  end
  for t = 1, n do
    local c = per_row and out[t].mx or gmax
    for f = 1, m do out[t][f] = math.exp(out[t][f] - c) / math.sqrt(m) end
  end
  return out
end

-- The estimated compressed map from per-row key weights est(h, t) -> {p_j, j = 1..t}:
-- a[h][t][c] = Σ_{j in cell c} p_j / Σ_j p_j.
local function pool_cells(hq, n, tm, est)
  local a = {}
  for h = 1, hq do
    a[h] = {}
    for t = 1, n do
      local p, row, z = est(h, t), {}, 0
      for c = 1, tm do row[c] = 0 end
      for j = 1, t do
        local c = M.cell(j - 1, t, tm) + 1
        row[c] = row[c] + p[j]
        z = z + p[j]
      end
      if z > 0 then for c = 1, tm do row[c] = row[c] / z end end
      a[h][t] = row
    end
  end
  return a
end

--- The Performer stand-in map by the earlier Lua loop (O(n²·m); proj a Lua
-- [m][D] table): kept as the test's oracle for the trainable.performer op.
function M.performer_map_lua(prob, proj, tm)
  local hq, n, _, hkv = dims(prob)
  local g = hq // hkv
  local Q, K = E.heads(prob.q), E.heads(prob.k)
  local phik = {}
  for kv = 1, hkv do phik[kv] = features(K[kv], proj, false) end
  local m = #proj
  local phiq
  local cur = 0
  return pool_cells(hq, n, tm, function(h, t)
    if cur ~= h then phiq, cur = features(Q[h], proj, true), h end
    local fq, fk, p = phiq[t], phik[(h - 1) // g + 1], {}
    for j = 1, t do
      local s, kj = 0, fk[j]
      for f = 1, m do s = s + fq[f] * kj[f] end
      p[j] = s
    end
    return p
  end)
end

-- The Performer stand-in map by the C op trainable.performer (prefix sums of
-- phi(k): O(n·T_M·m) per head), a float32 tensor [Hq, n, T_M].
local function performer_map(prob, proj, tm)
  return sl.trainable.performer(prob.q, prob.k, proj, {t_m = tm, backend = prob.backend})
end

local function oracle_map(prob, tm)
  local hq, n = dims(prob)
  local P = E.heads(sl.score.exact(prob.q, prob.k, {bq = 1, bk = 1, causal = 1, backend = prob.backend}))
  return pool_cells(hq, n, tm, function(h, t) return P[h][t] end)
end

--- The estimated compressed map a [Hq][n][T_M] (Lua tables: oracle and a_hat; a float32
-- tensor: Performer), its width and params_source.
function M.estimate(prob, p)
  local hq, n, d = dims(prob)
  local tm = p.t_m
  local m = p.nb_features > 0 and p.nb_features or math.max(1, math.floor(d * math.log(d) + 0.5))
  if (p.weights or "") == "" then
    if p.estimator == "oracle" then return oracle_map(prob, tm), tm, "oracle:pooled_attention" end
    if p.estimator ~= "performer" then sl.fail("sea: estimator '%s'; expected performer or oracle", tostring(p.estimator)) end
    local proj = sl.randn({m, d}, {seed = p.seed})
    return performer_map(prob, proj, tm), tm, string.format("standin:performer(m=%d,seed=%d)", m, p.seed)
  end
  local okw, ws = pcall(sl.load, p.weights) -- for the file's T_M and m; load_weights reports a bad file
  if not okw or type(ws) ~= "table" then ws = {} end
  local tm_file = ws.a_hat and #ws.a_hat:shape() == 3 and ws.a_hat:shape()[3] or tm
  local pm = ws.projection_matrix and #ws.projection_matrix:shape() == 2 and ws.projection_matrix:shape()[1] or m
  ws = T.load_weights("sea", p.weights, {
    {name = "a_hat", shape = {hq, n, tm_file}, dims = "(query heads, query rows, T_M cells)", range = {0, 1},
      range_why = "softmaxed estimated probabilities"},
    {name = "projection_matrix", shape = {pm, d}, dims = "(features, head_dim)"},
  })
  if ws.a_hat and ws.projection_matrix then
    sl.fail("sea: weights %s: holds both a_hat and projection_matrix; expected one of them", p.weights)
  end
  if not ws.a_hat and not ws.projection_matrix then
    sl.fail("sea: weights %s: holds neither a_hat [heads, rows, T_M] nor projection_matrix [features, head_dim]", p.weights)
  end
  if ws.a_hat then return E.heads(ws.a_hat), tm_file, T.file_source(p.weights) end
  return performer_map(prob, ws.projection_matrix, tm), tm, T.file_source(p.weights)
end

--- Per row the kept cells over all heads: keep[h][t] = set of 0-based cells; the budgets.
function M.choose(a, n, tm, k)
  local hq = #a
  local keep, budget = {}, {}
  for h = 1, hq do keep[h] = {} end
  for t = 1, n do
    local b = math.max(1, math.floor(hq * k * tm / t + 0.5))
    b = math.min(b, hq * tm)
    budget[t] = b
    local flat = {}
    for h = 1, hq do for c = 1, tm do flat[#flat + 1] = (h - 1) * tm + (c - 1) end end
    table.sort(flat, function(x, y)
      local vx, vy = a[x // tm + 1][t][x % tm + 1], a[y // tm + 1][t][y % tm + 1]
      if vx ~= vy then return vx > vy end
      return x < y
    end)
    for h = 1, hq do keep[h][t] = {} end
    for i = 1, b do local f = flat[i]; keep[f // tm + 1][t][f % tm] = true end
  end
  return keep, budget
end

--- Index lists of the resized mask: row t of head h attends keys j <= t whose cell is kept.
function M.lists(keep, n, tm)
  local row_ptr, col = {}, {}
  for h = 1, #keep do
    local rp = {#col}
    for t = 1, n do
      local kt = keep[h][t]
      for j = 0, t - 1 do if kt[M.cell(j, t, tm)] then col[#col + 1] = j end end
      rp[#rp + 1] = #col
    end
    row_ptr[h] = rp
  end
  return row_ptr, col
end

--- The map as a float32 tensor [Hq, n, T_M] (one head at a time).
function M.map_tensor(a)
  if type(a) ~= "table" then return a end -- already a tensor
  local parts = {}
  for h = 1, #a do parts[h] = sl.tensor({a[h]}) end
  return #parts > 1 and sl.cat(parts, 1) or parts[1]
end

--- Steps 3-4 by the C op trainable.cells: row_ptr, col tensors and the pair count.
function M.lists_op(prob, at, k)
  local rp, col = sl.trainable.cells(at, {k = k, backend = prob.backend})
  local hq, n = rp:shape()[1], rp:shape()[2] - 1
  local total = math.tointeger(rp:get(hq, n + 1))
  return rp, col:narrow(1, 1, total), total
end

function M.run(prob, p)
  local hq, nq, _, _, nk = dims(prob)
  if nq ~= nk then sl.fail("sea: %d queries and %d keys; expected self-attention over one sequence (prefill)", nq, nk) end
  local a, _, source = M.estimate(prob, p)
  local rp, col, total = M.lists_op(prob, M.map_tensor(a), p.k)
  local o, lse, flops = T.token_sparse_t(prob, rp, col)
  p.params_source = source
  return {o = o, lse = lse, params_source = source,
    stats = {flops = flops, density = total / (hq * nk * (nk + 1) / 2)}}
end

return M
