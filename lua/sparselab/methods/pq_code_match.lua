-- Sparse Transformer fine-tuning with product-quantised attention (SPT,
-- Gui et al. 2024: "SPT: Fine-Tuning Transformer-based Language Models
-- Efficiently with Sparsification") — card: pq_code_match.
-- Card steps implemented:
--   1. encode every q and k: per subspace (S = d / dc of them) the L1-nearest
--      codeword (select.pq_match, one C op: ref, cpu, cuda);
--   2. match count m_ij = #{s : code_q = code_k} over causal j;
--   3. fixed budget nnz = floor(n / coeff) (sparse_coeff 8): bucket into 4
--      slots ⌊m/(S/4)⌋ (capped at 3) and take keys from the highest slot
--      down, in scan order, until nnz — the CUDA lookup kernel's
--      approximate top-nnz; rows seeing fewer than nnz keys take them all
--      (no duplicate index 0 padding: the card's fix);
--   4. exact attention on the candidates: attn.token_sparse (per-row index
--      lists), softmax over them. The ±10 logit clamp of the reference is off
--      (the card's workbench default; not implemented as an option).
--   5. codebooks: plain k-means (L1 assignment, mean update) per kv head and
--      subspace, fitted on the keys and queries (the codebook is shared by Q
--      and K), C codewords, `iters` Lloyd steps from seeded random samples;
--      stored by m.calibrate (sl.calibrate, config = file); without a config a
--      problem fits its own (at most `fit_rows` sampled rows per head).
-- Not here: SPT's fine-tuning losses (soft/hard MSE), the fixed-indptr CSR
--   kernels' 16-row blocking (n % 16 == 0 is not required).
-- Reference: ytgui/SPT-proto (naive_gpt/layers/basic/quantizer.py PQBase,
--   naive_gpt/layers/sparse/attention.py SparseVanillaAttentionV2,
--   extension/lookup.cu) per the card; read in issue 20, session 5
--   (attention.py SparseVanillaAttentionV2._get_attn, lookup.cu
--   lookup_forward_kernel, quantizer.py PQV2 'encode': torch.cdist p = 1,
--   argmin). Matched: L1-nearest codes, match count per subspace, causal,
--   slot = min(3, count / (S/4)), nnz = n / 8, highest slot first.
--   Divergences (no option): (a) the kernel's 4 worker lanes — lane t scans
--   the keys j = t (mod 4) of each 16-key tile and keeps its own nnz/4
--   entries per slot (a full slot overwrites its last entry with later keys,
--   the cursor capped at nnz - t - 1), and the output takes nnz/4 entries per
--   lane; so the reference keeps about nnz/4 keys from each residue class mod
--   4, the earliest per slot, while here one scan over all keys in order; (b)
--   rows seeing fewer than nnz keys are zero-filled there (index 0 repeated in
--   a fixed-indptr CSR); (c) logits clamped to [-10, 10] after scaling; (d)
--   n % 16 == 0 and n / 8 in {32, 64, 128, ...} are required by the kernel.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local ID = "pq_code_match"

-- k-means of the points pts (list of vectors of length dc) into C codewords
local function kmeans(pts, C, iters, seed)
  local n, dc = #pts, #pts[1]
  local state = seed
  local function rand(m) state = (state * 1103515245 + 12345) % 2147483648; return state % m + 1 end
  local cb = {}
  for c = 1, C do
    local src = pts[rand(n)]
    cb[c] = {}
    for e = 1, dc do cb[c][e] = src[e] end
  end
  for _ = 1, iters do
    local sum, cnt = {}, {}
    for c = 1, C do sum[c] = {}; cnt[c] = 0; for e = 1, dc do sum[c][e] = 0 end end
    for _, x in ipairs(pts) do
      local best, arg = math.huge, 1
      for c = 1, C do
        local dist, w = 0, cb[c]
        for e = 1, dc do dist = dist + math.abs(x[e] - w[e]) end
        if dist < best then best, arg = dist, c end
      end
      cnt[arg] = cnt[arg] + 1
      for e = 1, dc do sum[arg][e] = sum[arg][e] + x[e] end
    end
    for c = 1, C do
      if cnt[c] > 0 then for e = 1, dc do cb[c][e] = sum[c][e] / cnt[c] end
      else local src = pts[rand(n)]; for e = 1, dc do cb[c][e] = src[e] end end
    end
  end
  return cb
end

-- codebook table [Hkv][S][C][dc] fitted on the problems' q and k rows
local function fit(probs, p)
  local hkv, d = probs[1].k:shape()[1], probs[1].q:shape()[3]
  if d % p.subspaces ~= 0 then sl.fail("pq_code_match: subspaces (%d) must divide head_dim %d", p.subspaces, d) end
  local S, dc = p.subspaces, d // p.subspaces
  local out = {}
  for g = 1, hkv do
    local rows = {}
    for _, prob in ipairs(probs) do
      local G = prob.q:shape()[1] // hkv
      -- only the sampled rows come to Lua (a head's [n, d] as one table
      -- exceeded the totable limit at n = 16K, d = 64)
      local function row(t, h, i) return t:narrow(1, h, 1):narrow(2, i, 1):totable()[1][1] end
      local nk = prob.k:shape()[2]
      local step = math.max(1, nk // p.fit_rows)
      for j = 1, nk, step do rows[#rows + 1] = row(prob.k, g, j) end
      for h = (g - 1) * G + 1, g * G do
        local nq = prob.q:shape()[2]
        local stepq = math.max(1, nq * G // p.fit_rows)
        for i = 1, nq, stepq do rows[#rows + 1] = row(prob.q, h, i) end
      end
    end
    out[g] = {}
    for s = 1, S do
      local pts = {}
      for t, r in ipairs(rows) do
        local x = {}
        for e = 1, dc do x[e] = r[(s - 1) * dc + e] end
        pts[t] = x
      end
      out[g][s] = kmeans(pts, p.codewords, p.iters, p.seed * 7919 + g * 131 + s)
    end
  end
  return out
end

local function codebook(prob, p)
  local cfg = E.config(p, ID)
  if cfg then
    local cb = cfg.codebooks["L" .. tostring(prob.layer or "any")] or cfg.codebooks["Lany"]
    if not cb then sl.fail("pq_code_match: the config has no codebook for layer %s", tostring(prob.layer)) end
    return sl.tensor(cb), "config"
  end
  return sl.tensor(fit({prob}, p)), "self"
end

local function lists(prob, p, cb)
  local n = prob.k:shape()[2]
  local nnz = math.max(1, n // p.coeff)
  local args = {nnz = nnz, causal = prob.causal and 1 or 0, slots = 4, backend = prob.backend}
  local rp, col = sl.select.pq_match(prob.q, prob.k, cb, args)
  return rp, col, sl.op_flops("select.pq_match", prob.q, prob.k, cb, args), nnz
end

local function run(prob, p)
  local t0 = sl.time()
  local cb, source = codebook(prob, p)
  local rp, col, est_flops, nnz = lists(prob, p, cb)
  local t1 = sl.time()
  local args = {rows_per_entry = 1, backend = prob.backend}
  local o, lse = sl.attn.token_sparse(prob.q, prob.k, prob.v, rp, col, args)
  local t2 = sl.time()
  local kept = col:shape()[1]
  local d, pairs = prob.q:shape()[3], E.pairs(prob)
  return {o = o, lse = lse, row_ptr = rp, col = col, stats = {
    flops = sl.op_flops("attn.token_sparse", prob.q, prob.k, prob.v, rp, col, args), estimator_flops = est_flops,
    density = kept / pairs, nnz = nnz, estimate_ms = (t1 - t0) * 1e3, execute_ms = (t2 - t1) * 1e3,
    calib_self = source == "self" and 1 or 0}, d = d}
end

local function calibrate(problems, opts)
  local p = sl.registry.resolve(sl.methods.get(ID), opts.params or {})
  local by_layer = {}
  for _, prob in ipairs(problems) do
    local key = "L" .. tostring(prob.layer or "any")
    by_layer[key] = by_layer[key] or {}
    table.insert(by_layer[key], prob)
  end
  local cbs = {}
  for key, probs in pairs(by_layer) do cbs[key] = fit(probs, p) end
  return {codebooks = cbs, subspaces = p.subspaces, codewords = p.codewords}
end

return {
  id = ID,
  card = ID,
  title = "SPT: product-quantised code matching for sparse attention",
  family = "token-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Q and K product-quantised with k-means codebooks; keys with the most matching codes (4 bucketed slots) per row, nnz = n / coeff, exact attention on them.",
  knob = "coeff",
  knob_direction = -1,
  params = {
    coeff = {default = 8, min = 1, int = true, doc = "sparse_coeff: nnz = floor(n / coeff) keys per row"},
    subspaces = {default = 4, min = 1, int = true, doc = "S: subspaces (must divide head_dim)"},
    codewords = {default = 16, min = 1, max = 65536, int = true, doc = "C: codewords per subspace"},
    iters = {default = 8, min = 1, int = true, doc = "k-means (Lloyd) iterations"},
    fit_rows = {default = 256, min = 8, int = true, doc = "rows sampled per head (keys, and queries) for fitting"},
    seed = {default = 1, min = 0, int = true, doc = "seed of the k-means initialisation"},
    config = {default = "", doc = "codebook file (sl.calibrate); empty: fitted on the problem itself"},
  },
  ops = {"select.pq_match", "attn.token_sparse"},
  checks = {"nnz >= n equals dense", "selected j <= i, min(i+1, nnz) distinct per row",
    "bucketing order (every kept slot >= every dropped slot)", "beats a score-blind choice of the same counts on recall"},
  calibrate = calibrate,
  fit = fit,
  lists = lists,
  run = run,
}
