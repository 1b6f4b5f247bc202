-- model_sparsity.lua — perplexity vs sparsity on the shipped TinyStories
-- model (issue 17): weight pruning (magnitude per layer / global, N:M 2:4
-- and 4:8, SparseGPT unstructured and N:M, whitened low-rank W_q/W_k), FFN activation sparsity (top-k,
-- CATS and CHESS thresholds, temporal deltas over tokens), token pruning by attention score (scored on
-- the last 32 tokens), sparse token updates, token recycling, FFN -> MoE routing and the low-rank Q.K estimator (each with
-- its score-blind baseline), each alone and (where the card allows) combined with a sparse
-- attention method (streaming_llm); calibration on texts 01-04, evaluation
-- on the held-out texts 05-08. Every point is recorded in SQLite and the
-- table is printed from the database, with the FLOPs the sparse executors
-- would run per token (linear layers: 2 per nonzero weight; the down
-- projection scaled by the activation density, low-rank W_q/W_k as their two
-- factors; attention excluded).
--   LUA_CPATH='build/?.so' lua5.4 experiments/model_sparsity.lua [db]
local sl = require "sparselab"
local P = require "sparselab.prune"
local A = require "sparselab.actsparse"
local T = require "sparselab.tokenprune"
local U = require "sparselab.tokenupdate"
local MOE = require "sparselab.moe"
local QE = require "sparselab.qkest"

local DATA = "experiments/data/tinystories260k"
local db_path = arg[1] or "model_sparsity.db"
local m = sl.model.load(DATA .. "/model.bin")
local function ids_of(names)
  local out = {}
  for _, name in ipairs(names) do
    local f = assert(io.open(DATA .. "/texts/" .. name .. ".txt", "rb"))
    out[#out + 1] = m:encode(f:read("a"))
    f:close()
  end
  return out
end
local CALIB = ids_of{"01_red_kite", "02_lost_mitten", "03_brave_turtle", "04_cake_for_mom"}
local HELD = ids_of{"05_moon_friend", "06_little_seed", "07_toy_shop", "08_rainy_day"}
local dense = P.snapshot(m)
local HELD_N = 0
for _, ids in ipairs(HELD) do HELD_N = HELD_N + #ids end
local cfg = m.cfg

-- linear FLOPs per token of the current weights (2 per nonzero), the dense
-- count, and the down projections' share (w2)
local function linear_flops()
  local f, fd, f2 = 0, 0, 0
  for _, name in ipairs(P.linears(m)) do
    local w = m.c:weight(name)
    local nz = w:numel()
    for _, row in ipairs(w:totable()) do for _, v in ipairs(row) do if v == 0 then nz = nz - 1 end end end
    f, fd = f + 2 * nz, fd + 2 * w:numel()
    if name:match("%.w2$") then f2 = f2 + 2 * nz end
  end
  return f, fd, f2
end

local attn_method = sl.methods.get("streaming_llm")
local function attention_hook(window)
  if not window then return nil end
  local p = sl.registry.resolve(attn_method, {bq = 16, bk = 16, n_init = 4}, window)
  return function(_, q, k, v)
    return attn_method.run(sl.problem{q = q, k = k, v = v, causal = true}, p).o
  end
end

-- mean NLL over the held-out texts, and the activation stats
local function evaluate(spec, window)
  local stats, total, n = {}, 0, 0
  for _, ids in ipairs(HELD) do
    local st <close> = m.c:state(#ids)
    local logits = m.c:forward(ids, st, attention_hook(window), spec and A.hook(m, spec, stats) or nil)
    local c = sl.model_c.compare(logits, logits, ids)
    total, n = total + c.nll * c.n, n + c.n
  end
  return total / n, stats, n
end

local db = sl.store.open(db_path)
local run_id = db:begin_run{script = "experiments/model_sparsity.lua", argv = arg}
local dense_nll = evaluate()

local function record(name, params, weight_fn, spec, window)
  P.restore(m, dense)
  if weight_fn then weight_fn() end
  local nll, stats, n = evaluate(spec, window)
  local f, fd, f2 = linear_flops()
  -- an act-sparse down projection skips the zero activations: expected
  -- products w2 FLOPs x density (independence of weight and activation zeros)
  if stats.hidden then f = f - f2 * (1 - stats.kept / stats.hidden) end
  if params.rank then -- W_q, W_k run as the two factors: 2 r (N + K) instead of 2 N K
    for l = 0, cfg.n_layers - 1 do
      for _, k in ipairs{"wq", "wk"} do
        local sh = m.c:weight(string.format("layers.%d.%s", l, k)):shape()
        f = f - 2 * sh[1] * sh[2] + 2 * params.rank * (sh[1] + sh[2])
      end
    end
  end
  local metrics = {ppl = math.exp(nll), ppl_dense = math.exp(dense_nll), nll = nll, weight_sparsity = P.sparsity(m),
    act_sparsity = stats.hidden and 1 - stats.kept / stats.hidden or 0, flops_per_token = f,
    flops_ratio = f / fd}
  db:record{run_id = run_id, method = name, params = params, workload = "tinystories:heldout", phase = "prefill",
    n_q = n, n_k = n, heads = cfg.n_heads, kv_heads = cfg.n_kv_heads, head_dim = cfg.head_dim, backend = "cpu",
    budget = window, metrics = metrics}
  io.stderr:write(string.format("%-28s ppl %.4f\n", name .. (window and (" +window" .. window) or ""), metrics.ppl))
end

-- linear FLOPs per token of one layer, by projection
local LIN = {}
do
  local qd, kvd = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  LIN.q, LIN.k, LIN.v, LIN.o = 2 * cfg.dim * qd, 2 * cfg.dim * kvd, 2 * cfg.dim * kvd, 2 * qd * cfg.dim
  LIN.ffn = 3 * 2 * cfg.dim * cfg.hidden_dim
  LIN.total = LIN.q + LIN.k + LIN.v + LIN.o + LIN.ffn
end

-- a row from a method with its own runner: fn() -> nll, the dense nll on the same rows, linear FLOPs ratio
local function record_custom(name, params, window, fn)
  P.restore(m, dense)
  local nll, ref_nll, ratio, recall = fn()
  local metrics = {ppl = math.exp(nll), ppl_dense = math.exp(ref_nll), nll = nll, weight_sparsity = 0,
    act_sparsity = 0, flops_ratio = ratio, attn_recall = recall}
  db:record{run_id = run_id, method = name, params = params, workload = "tinystories:heldout", phase = "prefill",
    n_q = HELD_N, n_k = HELD_N, heads = cfg.n_heads, kv_heads = cfg.n_kv_heads, head_dim = cfg.head_dim, backend = "cpu",
    budget = window, metrics = metrics}
  io.stderr:write(string.format("%-28s ppl %.4f\n", name .. (window and (" +window" .. window) or ""), metrics.ppl))
end

local cal = {}
local dth = {}
for _, s in ipairs{0.5, 0.7} do cal[s], dth[s] = A.calibrate(m, CALIB, s), A.calibrate_delta(m, CALIB, s) end

for _, window in ipairs{false, 64} do
  local w = window or nil
  record("dense", {}, nil, nil, w)
  for _, s in ipairs{0.3, 0.5, 0.7} do
    record("magnitude_layer", {sparsity = s}, function() P.magnitude(m, {sparsity = s}) end, nil, w)
  end
  record("magnitude_global", {sparsity = 0.5}, function() P.magnitude(m, {sparsity = 0.5, scope = "global"}) end, nil, w)
  for _, nm in ipairs{{2, 4}, {4, 8}} do
    record("magnitude_nm", {n = nm[1], m = nm[2]}, function() P.magnitude(m, {n = nm[1], m = nm[2]}) end, nil, w)
    record("sparsegpt_nm", {n = nm[1], m = nm[2]}, function() P.sparsegpt(m, CALIB, {n = nm[1], m = nm[2]}) end, nil, w)
  end
  for _, s in ipairs{0.3, 0.5, 0.7} do
    record("sparsegpt", {sparsity = s}, function() P.sparsegpt(m, CALIB, {sparsity = s}) end, nil, w)
  end
  for _, k in ipairs{86, 43, 17} do
    record("topk_activation", {k = k}, nil, {kind = "topk", k = k}, w)
  end
  for _, s in ipairs{0.5, 0.7} do
    record("cats", {sparsity = s}, nil, {kind = "threshold", theta = cal[s].cats}, w)
    record("chess", {sparsity = s}, nil, {kind = "threshold", theta = cal[s].chess}, w)
    record("temporal_delta", {sparsity = s}, nil, {kind = "delta", theta = dth[s]}, w)
  end
  for _, r in ipairs{8, 16} do
    record("qk_lowrank", {rank = r, whiten = true}, function() P.lowrank_qk(m, CALIB, {rank = r}) end, nil, w)
    record("qk_lowrank_plain_svd", {rank = r, whiten = false},
      function() P.lowrank_qk(m, CALIB, {rank = r, whiten = false}) end, nil, w)
  end
  record("sparsegpt+topk", {sparsity = 0.5, k = 86}, function() P.sparsegpt(m, CALIB, {sparsity = 0.5}) end,
    {kind = "topk", k = 86}, w)
  -- token-level and routing cards: their own runners (sparselab.tokenupdate / moe); FLOPs of the
  -- compacted / routed computation (linear layers)
  for _, rho in ipairs{0.8, 0.5} do
    for _, sc in ipairs{"act_mag", "random"} do
      record_custom("sparse_token_update", {rho = rho, from = 3, scores = sc}, w, function()
        local nll, share = U.nll(m, HELD, {rho = rho, from = 3, scores = sc, attention = attention_hook(w)})
        local L = cfg.n_layers
        return nll, dense_nll, (3 * LIN.total + (L - 3) * (LIN.k + LIN.v + (LIN.q + LIN.o + LIN.ffn) * share)) /
          (L * LIN.total)
      end)
    end
  end
  for _, c in ipairs{{2, "importance", "cluster"}, {1, "importance", "cluster"}, {2, "sequential", "random"}} do
    record_custom("moe_split_route", {experts = 4, k = c[1], split = c[2], router = c[3]}, w, function()
      local moe = MOE.build(m, CALIB, {experts = 4, k = c[1], split = c[2], router = c[3]})
      -- session 4: the runner's FFN runs as the grouped executor mm.moe (sparselab.moe.use)
      local nll, kept = MOE.nll(m, HELD, moe, {attention = attention_hook(w)})
      return nll, dense_nll, (LIN.q + LIN.k + LIN.v + LIN.o + LIN.ffn * kept + 2 * cfg.dim * 4) / LIN.total
    end)
  end
end
-- token pruning (dense attention only: its attention hook is the executor with the keep list);
-- perplexity of the last 32 tokens of each held-out text (the raters; the only rows left)
local probe_dense = T.nll(m, HELD, {ratio = 1, layers = {0}, probe = 32})
for _, r in ipairs{0.5, 0.3, 0.1} do
  for _, sc in ipairs{"attn", "first", "random"} do
    record_custom("token_prune_attn_score", {ratio = r, layers = "0", probe = 32, scores = sc}, nil, function()
      local nll, _, share = T.nll(m, HELD, {ratio = r, layers = {0}, probe = 32, scores = sc})
      return nll, probe_dense, share
    end)
  end
  record_custom("token_merge_recycle", {ratio = r, layers = "0", probe = 32, frac = 0.3}, nil, function()
    local nll, _, share = T.nll(m, HELD, {ratio = r, layers = {0}, probe = 32, recycle = true})
    return nll, probe_dense, share
  end)
end
-- qk_lowrank as an estimator: 16 keys per query row chosen by the rank-8 whitened scores (pre-RoPE
-- core, or the rotated reconstruction), run exactly; against exact top-16, first-16 and random-16
-- (linear FLOPs unchanged: the column is 1; attn_recall = exact attention mass kept)
local qest = QE.build(m, CALIB, {rank = 8})
for _, sc in ipairs{"lowrank", "lowrank_rope", "exact", "first", "random"} do
  record_custom("qk_lowrank_estimator", {rank = 8, keep = 16, scores = sc}, nil, function()
    local nll, recall = QE.run(m, HELD, qest, {keep = 16, scores = sc})
    return nll, dense_nll, 1, recall
  end)
end
P.restore(m, dense)
db:finish_run(run_id, "ok")

local rows = db:query([[
  SELECT method, params_json AS params, coalesce(budget, 'dense') AS attn_window,
         round(weight_sparsity, 3) AS w_sparsity, round(act_sparsity, 3) AS act_sparsity,
         round(ppl, 4) AS ppl, round(ppl_dense, 4) AS ppl_dense, round(flops_ratio, 3) AS linear_flops_ratio
    FROM (SELECT r.method, r.params_json, r.budget,
                 (SELECT value FROM metric WHERE result_id = r.id AND name = 'weight_sparsity') AS weight_sparsity,
                 (SELECT value FROM metric WHERE result_id = r.id AND name = 'act_sparsity') AS act_sparsity,
                 (SELECT value FROM metric WHERE result_id = r.id AND name = 'ppl') AS ppl,
                 (SELECT value FROM metric WHERE result_id = r.id AND name = 'ppl_dense') AS ppl_dense,
                 (SELECT value FROM metric WHERE result_id = r.id AND name = 'flops_ratio') AS flops_ratio,
                 r.id AS id
            FROM result r WHERE r.run_id = ?)
   ORDER BY attn_window, id]], run_id)
print(sl.report.table(rows, rows.columns))
local est_rows = db:query([[
  SELECT r.method, r.params_json AS params,
         round((SELECT value FROM metric WHERE result_id = r.id AND name = 'attn_recall'), 4) AS attn_recall,
         round((SELECT value FROM metric WHERE result_id = r.id AND name = 'ppl'), 4) AS ppl
    FROM result r WHERE r.run_id = ? AND r.method = 'qk_lowrank_estimator' ORDER BY r.id]], run_id)
print(sl.report.table(est_rows, est_rows.columns))
print(string.format("run %d recorded in %s", run_id, db_path))
db:close()
