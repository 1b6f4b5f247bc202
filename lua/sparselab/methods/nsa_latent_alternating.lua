-- Optimizing Native Sparse Attention with Latent Attention and Local Global
-- Alternating Strategies (ASA) — card: nsa_latent_alternating (one layer).
-- Card steps implemented:
--   1. the layer plan: layer `layer` (0-based) is local or global by parity,
--      `local_layers` = odd (the secondary note's reading, default) or even;
--      a local layer runs only the sliding-window branch (exact windowed
--      attention over the last `window` keys, attn.token_sparse); a global
--      layer runs NSA's compression + selection branches with the window
--      branch off (trainable.compress + trainable.nsa with g_swa = 0 and
--      window = 0; every nsa parameter and variant applies);
--   2. latent KV, emulated as the card allows: K, V replaced by their
--      low-rank reconstructions K̂ = (K·k_down)·k_up, V̂ = (V·v_down)·v_up per
--      kv head (rank r) before either branch — the trained MLA / GLA latents
--      (c_t = W_down x_t shared across heads or groups) need x and trained
--      weights and are NOT reproduced; the group sharing of GLA is not
--      modelled (one latent per kv head);
--   3. global layers' selection/compression math is nsa's (its recipe's
--      functions are called).
-- Reference: none public (the card's secondary notes).
-- Parameters from files: `weights` — nsa's file (g_cmp, g_slc [, g_swa
--   ignored: global layers have no window branch], or gate_w/gate_b, or the
--   gate MLP gate_mlp.*; compress_key/value or the MLP phi k_compress.*,
--   v_compress.*; intra_block_pe), read by nsa's loader; `latent` —
--   k_down [Hkv, D, r], k_up [Hkv, r, D], v_down [Hkv, D, r], v_up [Hkv, r, D]
--   (names ours).
-- Stand-ins: nsa's ("standin:mean_pool+gates(0,1,0)") for the global
--   branches; for the latent with rank 0 < r < D and no `latent` file, the
--   top-r principal directions of the evaluated input's own K and V
--   ("self-svd": transductive, reads no attention map); rank 0 (default): no
--   latent. params_source joins both, e.g. "standin:...|latent:self-svd(r=8)".
-- Fitting (`sparselab fit-params nsa_latent_alternating`): the latent bases
--   by closed form — top-r eigenvectors (Jacobi) of Σ kkᵀ and Σ vvᵀ over the
--   fitting inputs (the least-squares rank-r reconstruction, PCA without
--   centring): k_down = U, k_up = Uᵀ. The gates are nsa's (`fit-params nsa`).
-- stats: local_layer (1 local, 0 global), kv_ratio = r / D (latent cache per
--   token and kv head over per-head K and V; 1 without latent; the card
--   expects about 0.5 against NSA).
-- Density: local — window keys over causal keys; global — nsa's count of
--   the selected blocks (window off).
-- NOT implemented: trained MLA/GLA, decode, the whole-model schedule (run
--   one layer per call with its index).
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"
local nsa = require "sparselab.methods.nsa"

local dims = T.dims

local params = {}
for k, v in pairs(nsa.params) do params[k] = v end
params.window = {default = 512, min = 1, int = true, doc = "sliding-window keys of local layers"}
params.layer = {default = 0, min = 0, int = true, doc = "layer index (0-based): its parity picks local or global"}
params.local_layers = {default = "odd", doc = "which layers are local: odd or even"}
params.rank = {default = 0, min = 0, int = true, doc = "latent rank r (0: no latent; a latent file's r wins)"}
params.latent = {default = "", doc = "safetensors file with k_down, k_up, v_down, v_up (empty: self-svd when rank > 0)"}

local M = {
  id = "nsa_latent_alternating",
  card = "nsa_latent_alternating",
  title = "NSA with latent attention and local/global layer alternation (ASA)",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "Alternating layers: local = sliding window only, global = NSA compression + selection; K, V through a low-rank latent.",
  knob = "n",
  params = params,
  ops = {"trainable.compress", "trainable.nsa", "attn.token_sparse"},
  checks = {"layers alternate, each with one branch family", "latent reconstruction exact at rank = D",
    "kv_ratio = r / D", "local layer = independent float64 window attention", "global layer = nsa without its window branch",
    "score-blind compressed keys lose recall", "bad latent files: one-line errors"},
  params_sources = {"<nsa's>|latent:self-svd(r=<r>)", "<nsa's>|latent:sha256:<file>", "<nsa's>"},
}

function M.is_local(p)
  local odd = p.layer % 2 == 1
  if p.local_layers == "odd" then return odd end
  if p.local_layers == "even" then return not odd end
  sl.fail("nsa_latent_alternating: local_layers '%s'; expected odd or even", tostring(p.local_layers))
end

local function matmul(A, B)
  local n, m, q = #A, #B, #B[1]
  local C = {}
  for i = 1, n do
    local ci, ai = {}, A[i]
    for j = 1, q do ci[j] = 0 end
    for k = 1, m do local a, bk = ai[k], B[k] if a ~= 0 then for j = 1, q do ci[j] = ci[j] + a * bk[j] end end end
    C[i] = ci
  end
  return C
end

--- Top-r eigenvectors of the second moment of the rows of the given matrices: U [D][r].
function M.pca(mats, r)
  local d = #mats[1][1]
  local C = {}
  for i = 1, d do C[i] = {} for j = 1, d do C[i][j] = 0 end end
  for _, x in ipairs(mats) do
    for t = 1, #x do local xt = x[t] for i = 1, d do local a = xt[i] for j = 1, d do C[i][j] = C[i][j] + a * xt[j] end end end
  end
  local _, V = T.sym_eig(C)
  local U = {}
  for i = 1, d do U[i] = {} for c = 1, r do U[i][c] = V[i][c] end end
  return U
end

local function transpose(A)
  local B = {}
  for j = 1, #A[1] do B[j] = {} for i = 1, #A do B[j][i] = A[i][j] end end
  return B
end

--- The latent bases per kv head {k_down, k_up, v_down, v_up} (Lua), r and its source (nil: no latent).
function M.latent(prob, p)
  local _, _, d, hkv = dims(prob)
  if (p.latent or "") ~= "" then
    local okw, raw = pcall(sl.load, p.latent)
    -- r from the first well-formed tensor (k_down/v_down [.,.,r], k_up/v_up [.,r,.]), so a bad one is named against it
    local r = p.rank
    if okw and type(raw) == "table" then
      for _, nd in ipairs{{"k_down", 3}, {"v_down", 3}, {"k_up", 2}, {"v_up", 2}} do
        local t = raw[nd[1]]
        if t and #t:shape() == 3 then r = t:shape()[nd[2]] break end
      end
    end
    local ws = T.load_weights("nsa_latent_alternating", p.latent, {
      {name = "k_down", shape = {hkv, d, r}, dims = "(kv heads, head_dim, rank)", required = true},
      {name = "k_up", shape = {hkv, r, d}, dims = "(kv heads, rank, head_dim)", required = true},
      {name = "v_down", shape = {hkv, d, r}, dims = "(kv heads, head_dim, rank)", required = true},
      {name = "v_up", shape = {hkv, r, d}, dims = "(kv heads, rank, head_dim)", required = true},
    })
    return {k_down = ws.k_down:totable(), k_up = ws.k_up:totable(), v_down = ws.v_down:totable(), v_up = ws.v_up:totable()},
      r, "latent:" .. T.file_source(p.latent)
  end
  if p.rank == 0 or p.rank >= d then return nil, d, nil end
  local K, V = E.heads(prob.k), E.heads(prob.v)
  local L = {k_down = {}, k_up = {}, v_down = {}, v_up = {}}
  for kv = 1, hkv do
    local Uk, Uv = M.pca({K[kv]}, p.rank), M.pca({V[kv]}, p.rank)
    L.k_down[kv], L.k_up[kv], L.v_down[kv], L.v_up[kv] = Uk, transpose(Uk), Uv, transpose(Uv)
  end
  return L, p.rank, string.format("latent:self-svd(r=%d)", p.rank)
end

--- The problem with K, V replaced by their latent reconstructions.
function M.reconstruct(prob, L)
  local _, _, _, hkv = dims(prob)
  local K, V = E.heads(prob.k), E.heads(prob.v)
  local Kh, Vh = {}, {}
  for kv = 1, hkv do
    Kh[kv] = matmul(matmul(K[kv], L.k_down[kv]), L.k_up[kv])
    Vh[kv] = matmul(matmul(V[kv], L.v_down[kv]), L.v_up[kv])
  end
  return sl.problem{q = prob.q, k = sl.tensor(Kh), v = sl.tensor(Vh), causal = prob.causal, backend = prob.backend}
end

--- The global layer: nsa's compression + selection, window off. kc_override(kc) -> kc: the tests' score-blind compressed keys.
function M.global_forward(prob, p, kc_override)
  local np = {}
  for k in pairs(nsa.params) do np[k] = p[k] end
  np.window = 0
  local ws, source, op = nsa.setup(prob, np, M.id)
  local kc, vc = nsa.compress(prob, ws, op)
  if kc_override then kc = kc_override(kc) end
  local gc, gs, gw
  if ws.g_cmp then
    gc, gs = ws.g_cmp, ws.g_slc
    gw = select(3, nsa.const_gates(prob, 0, 0, 0))
  elseif ws.gate_w then
    gc, gs = nsa.q_gates(prob, ws.gate_w, ws.gate_b)
    gw = select(3, nsa.const_gates(prob, 0, 0, 0))
  elseif ws["gate_mlp.w1"] then
    gc, gs = nsa.mlp_gates(prob, ws)
    gw = select(3, nsa.const_gates(prob, 0, 0, 0))
  else
    gc, gs, gw = nsa.const_gates(prob, 0, 1, 0)
  end
  op.window = 0
  local o, lse, blocks, _, flops = nsa.forward(prob, op, kc, vc, gc, gs, gw)
  -- density: the selected blocks' keys over causal keys
  local _, nq, _, _, nk = dims(prob)
  local b = E.heads(blocks)
  local kept, causal = 0, 0
  for kv = 1, #b do
    for t = 1, nq do
      local pos = nk - nq + t - 1
      for _, j in ipairs(b[kv][t]) do
        if j >= 0 then kept = kept + math.min((j + 1) * op.bs, pos + 1) - j * op.bs end
      end
      causal = causal + pos + 1
    end
  end
  return o, lse, flops, kept / causal, source
end

function M.local_forward(prob, p)
  local hq, nq, _, _, nk = dims(prob)
  local row_ptr, col = {}, {}
  for h = 1, hq do
    local rp = {#col}
    for t = 1, nq do
      local pos = nk - nq + t - 1
      for j = math.max(0, pos - p.window + 1), pos do col[#col + 1] = j end
      rp[#rp + 1] = #col
    end
    row_ptr[h] = rp
  end
  local args = {rows_per_entry = 1, backend = prob.backend}
  local rpt, ct = sl.tensor(row_ptr, "i32"), sl.tensor(col, "i32")
  local o, lse = sl.attn.token_sparse(prob.q, prob.k, prob.v, rpt, ct, args)
  local causal = 0
  for t = 1, nq do causal = causal + nk - nq + t end
  return o, lse, sl.op_flops("attn.token_sparse", prob.q, prob.k, prob.v, rpt, ct, args), #col / (hq * causal)
end

function M.run(prob, p)
  local _, _, d = dims(prob)
  local L, r, lsource = M.latent(prob, p)
  local work = L and M.reconstruct(prob, L) or prob
  local is_local = M.is_local(p)
  local o, lse, flops, dens, source
  if is_local then
    o, lse, flops, dens = M.local_forward(work, p)
    source = "parameter-free(window)"
  else
    o, lse, flops, dens, source = M.global_forward(work, p)
  end
  if lsource then source = source .. "|" .. lsource end
  p.params_source = source
  return {o = o, lse = lse, params_source = source,
    stats = {flops = flops, density = dens, local_layer = is_local and 1 or 0, kv_ratio = r / d}}
end

--- Fits the latent bases (PCA of K and V over the fitting inputs, per kv head).
function M.fit(probs, o)
  local p = sl.registry.resolve(M, o.params or {})
  local _, _, d, hkv = dims(probs[1])
  local r = p.rank > 0 and math.min(p.rank, d) or math.max(1, d // 2)
  local out = {k_down = {}, k_up = {}, v_down = {}, v_up = {}}
  local before, after, count = 0, 0, 0
  for kv = 1, hkv do
    local Ks, Vs = {}, {}
    for i, prob in ipairs(probs) do
      local _, _, di, hi = dims(prob)
      if di ~= d or hi ~= hkv then
        sl.fail("nsa_latent_alternating fit: input %d has %d kv heads of dim %d, input 1 has %d of dim %d; expected the same",
          i, hi, di, hkv, d)
      end
      Ks[#Ks + 1], Vs[#Vs + 1] = E.heads(prob.k)[kv], E.heads(prob.v)[kv]
    end
    local Uk, Uv = M.pca(Ks, r), M.pca(Vs, r)
    out.k_down[kv], out.k_up[kv], out.v_down[kv], out.v_up[kv] = Uk, transpose(Uk), Uv, transpose(Uv)
    for _, pair in ipairs{{Ks, Uk}, {Vs, Uv}} do
      for _, x in ipairs(pair[1]) do
        local rec = matmul(matmul(x, pair[2]), transpose(pair[2]))
        for t = 1, #x do
          for e = 1, d do before = before + x[t][e] ^ 2; after = after + (x[t][e] - rec[t][e]) ^ 2 end
          count = count + 1
        end
      end
    end
  end
  local ws = {}
  for k, v in pairs(out) do ws[k] = sl.tensor(v) end
  return ws, {loss_before = before / count, loss_after = after / count,
    optimiser = string.format("closed-form PCA (Jacobi eigenvectors of the uncentred second moment), rank %d; loss: squared K, V reconstruction error per token (before: no latent = all-zero reconstruction)", r)}
end

return M
