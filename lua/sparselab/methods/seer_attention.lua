-- SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs — card:
-- seer_attention.
-- Card steps implemented:
--   gate from a file (`gate` = safetensors with the AttnGate weights):
--   1. pooling per block of b (ceil mode): Q by mean, K by max, min and mean
--      concatenated along channels in that order (the "Qavg_Kmaxminavg"
--      gate; pool.tokens);
--   2. per-head linear maps: K̂ = W_k[h]·pooled_K (3d → dg), Q̂ = W_q[h]·q̄
--      when the file has W_q (else q̄ itself: single avg pooling with dg = d);
--      a kv-head W_k is repeated to its query heads (GQA);
--   3. RoPE (rotate_half) on Q̂ and K̂ at the block's FIRST token position,
--      base rope_theta;
--   4. G = row softmax(Q̂K̂ᵀ/sqrt(dg)) under the block-causal mask (blocks
--      after the diagonal masked) — score.pooled over the gate vectors;
--   oracle stand-in — a method of its own, seer_attention_oracle (same card,
--   no gate parameter), so that its results never carry seer_attention's
--   id: G = the training target — per (query block, key block) the max
--   softmax probability over its pairs (score.exact, reduce = max, the 2-D
--   max-pool of the attention map), each row renormalised to sum 1;
--   seer_attention itself requires gate = FILE (one-line error without);
--   5. sparsify: method 0 threshold (keep G > θ), method 1 nz_ratio (top-k
--      per row, k = int((1 - sqrt(1 - nz_ratio))·n_blocks), at least 1);
--      last_block_dense forces the last TWO block rows; tril (causal);
--   6. executor attn.block_sparse over the kept b x b tiles.
-- NOT implemented: gate training (self-distillation); reading gate weights
-- of other pooling combinations than Qavg_Kmaxminavg.
-- Reference code (microsoft/SeerAttention, read for issue 20:
-- seer_attn/prefill_sparse/attn_gate.py AttnGate.forward, MultiHeadLinear;
-- seer_attn/prefill_sparse/llama/modeling_llama_seerattn.py, the gate call and
-- block_position_ids = position_ids[:, 0::block_size];
-- seer_attn/modules/common.py get_sparse_attn_mask_from_threshold /
-- _from_nz_ratio): matched — ceil-mode pooling (the ragged last block is the
-- mean / max / min of its valid rows), K pools in the order max, min, avg,
-- MultiHeadLinear per head (pooled K repeated to the weight's heads), RoPE
-- at block-first positions, scale dg^{-1/2}, block-causal mask, softmax for
-- the threshold method (top-k on logits for nz_ratio: the same ranking),
-- topk = int((1 - sqrt(1 - nz_ratio))·n_blocks) or 1, the last two block
-- rows dense, tril. Divergence: the reference's gate reads Q and K BEFORE the
-- model's RoPE (attn_gate(query_states, key_states, ...) precedes
-- apply_rotary_pos_emb); a sparselab problem holds the Q, K it is given —
-- post-RoPE for the shipped captures — so a trained gate file sees rotated
-- inputs here unless the problem is built from pre-RoPE Q, K.
-- Unknowns chosen: the gate file's tensors are found by name suffix
-- `layers.<layer>.<...>mask_linear_k.weight` ([H, 3d, dg]) and `...mask_linear_q.weight`
-- ([Hq, d, dg], optional) for the problem's layer (prob.layer, default 0),
-- or the only such tensor when the file holds one layer; rope_theta = 500000
-- (Llama-3.1; no RoPE scaling). The gate's linear maps run as Lua loops
-- over pooled blocks (block-level work, but slow at long n — the oracle is
-- the fast path).
local sl = require "sparselab"
local E = require "sparselab.blockest"

local function square(p)
  if p.bq ~= p.bk then sl.fail("seer_attention: square blocks only (bq = bk), found bq %d, bk %d", p.bq, p.bk) end
  return p.bq
end

local function find_weight(ws, layer, suffix)
  local hit, count, any = nil, 0, nil
  for name, t in pairs(ws) do
    if name:sub(-#suffix) == suffix then
      count = count + 1
      any = t
      if name:find("layers%." .. layer .. "%.") then hit = t end
    end
  end
  if hit then return hit end
  if count == 1 then return any end
  return nil
end

-- out[h][r][o] = Σ_i x[h'][r][i] · W[hw][i][o] (plain loops over pooled blocks)
local function linear(x, xh_of, W, hw_of, H)
  local out = {}
  for h = 1, H do
    local xs, w = x[xh_of(h)], W[hw_of(h)]
    local dg = #w[1]
    local rows = {}
    for r = 1, #xs do
      local xr, o = xs[r], {}
      for c = 1, dg do o[c] = 0 end
      for i = 1, #xr do
        local a, wi = xr[i], w[i]
        if a ~= 0 then for c = 1, dg do o[c] = o[c] + a * wi[c] end end
      end
      rows[r] = o
    end
    out[h] = rows
  end
  return out
end

-- rotate_half RoPE in place at position pos(r) for rows of t[h][r][1..dg]
local function rope(t, theta, pos)
  for _, rows in ipairs(t) do
    for r, x in ipairs(rows) do
      local dg = #x
      local half = dg // 2
      local p = pos(r)
      for i = 1, half do
        local inv = theta ^ (-2 * (i - 1) / dg)
        local c, s = math.cos(p * inv), math.sin(p * inv)
        local a, b = x[i], x[i + half]
        x[i], x[i + half] = a * c - b * s, b * c + a * s
      end
    end
  end
end

local function gate_scores(prob, p)
  local b = square(p)
  local hq, hkv = prob.q:shape()[1], prob.k:shape()[1]
  local be = prob.backend
  local ws = sl.load(p.gate)
  local layer = prob.layer or 0
  local Wk = find_weight(ws, layer, "mask_linear_k.weight")
  if not Wk then sl.fail("seer_attention: gate file %s has no mask_linear_k.weight for layer %d", p.gate, layer) end
  local Wq = find_weight(ws, layer, "mask_linear_q.weight")
  local d = prob.q:shape()[3]
  local ks = Wk:shape()
  if ks[2] ~= 3 * d or (ks[1] ~= hkv and ks[1] ~= hq) then
    sl.fail("seer_attention: mask_linear_k.weight must be [%d or %d, %d, dg], found [%d, %d, %d]", hkv, hq, 3 * d,
      ks[1], ks[2], ks[3])
  end
  local dg = ks[3]
  local pooled = {}
  for i, mode in ipairs{1, 2, 0} do pooled[i] = sl.pool.tokens(prob.k, {block = b, mode = mode, backend = be}) end
  local kcat = E.heads(sl.cat(pooled, 3))
  local qbar = E.heads(sl.pool.tokens(prob.q, {block = b, backend = be}))
  local Wkt = E.heads(Wk)
  local g = hq // hkv
  -- K̂ per weight head (kv heads, or query heads when the file has one per query head)
  local kh = linear(kcat, function(h) return ks[1] == hkv and h or (h - 1) // g + 1 end, Wkt, function(h) return h end,
    ks[1])
  local qh
  if Wq then
    local qs = Wq:shape()
    if qs[1] ~= hq or qs[2] ~= d or qs[3] ~= dg then
      sl.fail("seer_attention: mask_linear_q.weight must be [%d, %d, %d], found [%d, %d, %d]", hq, d, dg, qs[1], qs[2], qs[3])
    end
    qh = linear(qbar, function(h) return h end, E.heads(Wq), function(h) return h end, hq)
  else
    if dg ~= d then sl.fail("seer_attention: the gate has no mask_linear_q but dg %d != head_dim %d", dg, d) end
    qh = qbar
  end
  local nq, nk = prob.q:shape()[2], prob.k:shape()[2]
  rope(qh, p.rope_theta, function(r) return (r - 1) * b + nk - nq end)
  rope(kh, p.rope_theta, function(r) return (r - 1) * b end)
  local qt, kt = sl.tensor(qh), sl.tensor(kh)
  local sargs = {bq = 1, bk = 1, causal = prob.causal and 1 or 0, pool = 0, softmax = 1, scale = 1 / math.sqrt(dg),
    backend = be}
  local G = sl.score.pooled(qt, kt, sargs)
  local nqb = #qh[1]
  local flops = 2 * nqb * 3 * d * dg * ks[1] + (Wq and 2 * nqb * d * dg * hq or 0) +
    sl.op_flops("score.pooled", qt, kt, sargs)
  return G, flops
end

-- The oracle map of prob (q, k, causal, backend) and the op's args (args_only: no map).
local function oracle_scores(prob, p, args_only)
  local args = {bq = square(p), bk = square(p), reduce = 1, normalize = 1, causal = prob.causal and 1 or 0,
    backend = prob.backend}
  if args_only then return nil, args end
  return sl.score.exact(prob.q, prob.k, args), args
end

-- score.exact entries per call of the oracle's row blocks (a test sets it small)
local LIMITS = {ROW_SCORES = 1 << 18}

local function estimate(prob, p)
  local b = square(p)
  local hq = prob.q:shape()[1]
  local nqb, nkb = E.blocks(prob, b, b)
  local from_file = not p._oracle
  if from_file and (p.gate or "") == "" then
    sl.fail("seer_attention: needs gate=FILE (safetensors of the trained AttnGate weights); the oracle stand-in " ..
      "(max-pooled attention map) is the method seer_attention_oracle")
  end
  local keep = sl.zeros({hq, nqb, nkb}, "u8")
  local k = math.max(1, math.floor((1 - math.sqrt(1 - p.nz_ratio)) * nkb))
  -- block rows r0 + 1 .. r0 + rows of G (a tensor [Hq, rows, <= nkb]) into the keep
  local function select_rows(G, r0, rows)
    local cols = G:shape()[3]
    for h = 1, hq do
      local view = G:narrow(1, h, 1)
      local Gh = view:numel() <= 1000000 and view:totable()[1] or E.heads(view)[1]
      view:close() -- a view holds G's buffer until collected
      for r = r0 + 1, r0 + rows do
        local vis = math.min(cols, E.visible(prob, r - 1, b, b, nkb))
        local x = Gh[r - r0]
        if p.last_block_dense ~= 0 and r > nqb - 2 then
          for c = 1, vis do keep:set(h, r, c, 1) end
        elseif p.method == 1 then
          local order = E.order_desc(x, vis)
          for i = 1, math.min(k, vis) do keep:set(h, r, order[i], 1) end
        else
          for c = 1, vis do if x[c] > p.threshold then keep:set(h, r, c, 1) end end
        end
      end
    end
  end
  -- G (the gate's or the oracle's) stays a tensor read one head at a time; the keep is a u8
  -- tensor written in place (issue 19: [Hq, nqb, nkb] as Lua tables was n²)
  local flops
  if from_file then
    local G
    G, flops = gate_scores(prob, p)
    select_rows(G, 0, nqb)
  else
    -- the oracle map in row blocks of about ROW_SCORES entries (issue 19: the whole
    -- [Hq, nqb, nkb] f32 map was n²): q rows [r0·b, r1·b) against keys 0 .. the
    -- block's last visible key when causal (the same causal offset, so the same
    -- exact softmax rows); a causal offset that is not a multiple of b runs in one call
    local nq, nk = prob.q:shape()[2], prob.k:shape()[2]
    local per = math.max(1, LIMITS.ROW_SCORES // math.max(1, hq * nkb))
    if prob.causal and (nk - nq) % b ~= 0 then per = nqb end
    for r0 = 0, nqb - 1, per do
      local r1 = math.min(nqb, r0 + per)
      local q, kk = prob.q, prob.k
      if r0 > 0 or r1 < nqb then
        local i0, i1 = r0 * b, math.min(nq, r1 * b)
        q = prob.q:narrow(2, i0 + 1, i1 - i0)
        if prob.causal then kk = prob.k:narrow(2, 1, math.min(nk, i1 + nk - nq)) end
      end
      local G = oracle_scores({q = q, k = kk, causal = prob.causal, backend = prob.backend}, p)
      select_rows(G, r0, r1 - r0)
      G:close()
    end
    flops = sl.op_flops("score.exact", prob.q, prob.k, select(2, oracle_scores(prob, p, true)))
  end
  return sl.mask.from_blocks(keep, {n_q = prob.q:shape()[2], n_k = prob.k:shape()[2], bq = b, bk = b,
    causal = prob.causal}),
    {estimator_flops = flops, stats = {gate_file = from_file and 1 or 0}}
end

local run_blocks = E.block_run(estimate)

-- The method table; oracle = true: seer_attention_oracle (no gate parameter, G = the oracle map).
local function make(oracle)
  local params = {
    bq = {default = 64, min = 1, max = 4096, int = true, doc = "block size b: query rows per block (bq = bk)"},
    bk = {default = 64, min = 1, max = 4096, int = true, doc = "keys per block (bq = bk)"},
    threshold = {default = 2e-3, min = 0, max = 1, doc = "θ: keep blocks whose gate score exceeds it (method 0)"},
    method = {default = 0, min = 0, max = 1, int = true, doc = "0 threshold, 1 nz_ratio top-k"},
    nz_ratio = {default = 0.1, min = 0, max = 1, doc = "method 1: target density over the causal triangle"},
    last_block_dense = {default = 1, min = 0, max = 1, int = true, doc = "1: the last two block rows are dense"},
  }
  if not oracle then
    params.gate = {default = "", doc = "safetensors file of the trained AttnGate weights (required)"}
    params.rope_theta = {default = 500000, min = 1, doc = "RoPE base of the gate"}
  end
  local function with_mode(p)
    local q = {}
    for k, v in pairs(p) do q[k] = v end
    q._oracle = oracle
    return q
  end
  return {
    id = oracle and "seer_attention_oracle" or "seer_attention",
    card = "seer_attention",
    title = oracle and "SeerAttention (oracle gate: the max-pooled attention map it is trained on)"
      or "SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs",
    family = "block-estimate",
    phase = "prefill",
    causal_only = true,
    summary = oracle and "SeerAttention's block selection on its training target (the row-normalised max-pooled " ..
      "attention map) instead of a learned gate: an upper bound of the gate, not the method."
      or "Learned AttnGate block scores (from a gate file); threshold or top-k.",
    requires = (not oracle) and {"gate"} or nil,
    knob = "threshold",
    knob_direction = -1,
    params = params,
    ops = oracle and {"score.exact", "attn.block_sparse"} or {"pool.tokens", "score.pooled", "attn.block_sparse"},
    checks = oracle and {"threshold 0 equals dense", "oracle G is the row-normalised max-pooled softmax map",
      "last two block rows dense", "nz_ratio top-k formula"}
      or {"gate RoPE at block-first positions", "a missing gate file is an error"},
    mask = function(prob, p) return (estimate(prob, with_mode(p))) end,
    -- which gate ran: stats.gate_file (1 file, 0 oracle) besides the id
    run = function(prob, p)
      local out = run_blocks(prob, with_mode(p))
      out.gate = oracle and "oracle" or "file"
      return out
    end,
  }
end

local M = make(false)
M.oracle_method = make(true)
M.oracle_method.limits = LIMITS
return M
