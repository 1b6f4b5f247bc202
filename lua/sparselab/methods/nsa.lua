-- Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse
-- Attention (NSA) — card: nsa.
-- Card steps implemented (one trainable.nsa call after trainable.compress):
--   1. compression branch: compressed keys/values over windows [i·s, i·s + l)
--      (trainable.compress: phi = mean of the window, or the linear map of the
--      flattened window of FSA's compress_key / compress_value with the
--      intra-window position embedding when the weights file has them);
--      compressed token i visible to query t iff i·s + l - 1 <= t; o_cmp = 0
--      for a query that sees none;
--   2. selection: importance of selection block j (size bs = l') from the
--      compression probabilities by the overlap-weighted mapping (paper eq.
--      9; FSA nsa_ref ops/compressed_attention.py transform_score: weights =
--      token overlap / s), summed over the query heads of a GQA group (one
--      block set per kv head); forced initial and local blocks, top-n
--      including them (ties: lower block), blocks past the query's never;
--      o_slc exact over the selected tokens (causal in the last block);
--   3. sliding window: o_swa over the last `window` keys;
--   4. o = g_cmp·o_cmp + g_slc·o_slc + g_swa·o_swa.
-- Variants (param `variant`):
--   "paper": overlapping windows l = 32, s = 16, bs = 64, 1 initial + 2 local
--      blocks forced (the paper's Section 3.3);
--   "fla": the fla-org/native-sparse-attention reference
--      (native_sparse_attention/ops/naive.py: compression() mean-pools blocks
--      of block_size with zero padding, naive_nsa_compression() forces only
--      the local block — through attn_select = 1 per head rather than +inf —
--      and takes the top block_counts): l = s = bs, init 0, local 1. Our
--      forcing is exact (+inf); FLA's differs only if another block holds
--      probability 1 in every head of the group.
-- Parameters from a file (param `weights`, Lua params.weights; safetensors,
-- float tensors f32/f16/bf16):
--   g_cmp, g_slc, g_swa   [Hq, n]  per-token gates in [0, 1] (captured from a
--                         PyTorch model: modeling_nsa.py's g_proj -> sigmoid),
--                         used as given;
--   gate_w [Hq, 3, D], gate_b [Hq, 3]  gates computed here as
--                         sigmoid(gate_w[h]·q_t + gate_b[h]) (order cmp, slc,
--                         swa): the form `sparselab fit-params nsa` fits, the
--                         query standing in for the hidden state x_t that
--                         Q/K/V captures do not hold;
--   compress_key, compress_value [Hkv, l·D, D]  FSA's linear phi (paper
--                         variant; both or neither);
--   intra_block_pe [Hkv, l, D]  FSA's intra-block position embedding, added
--                         to the window before phi (keys and values);
--   k_compress.w1 [Hkv, l·D, M], k_compress.b1 [Hkv, M], k_compress.w2 [Hkv,
--   M, D], k_compress.b2 [Hkv, D] and the same four for v_compress (issue 14,
--   session 3): the paper's MLP phi (paper variant only; names after
--   lucidrains/native-sparse-attention-pytorch's k_compress / v_compress
--   modules, layout ours): per window the flattened (x + pe) of its l slots
--   (a slot past the end: zero, pe included), phi = W2ᵀ·relu(W1ᵀ·window + b1)
--   + b2 (ReLU: lucidrains' default compress MLP; the paper does not name
--   the activation). Layer 1 runs on trainable.compress (mode 1, W1's
--   columns in blocks of D, zero-padded); bias, ReLU and layer 2 in Lua
--   (O(windows·M·D));
--   gate_mlp.w1 [Hq, D, M], gate_mlp.b1 [Hq, M], gate_mlp.w2 [Hq, M, 3],
--   gate_mlp.b2 [Hq, 3] (session 3): the gate network, (g_cmp, g_slc, g_swa)
--   = sigmoid(W2ᵀ·relu(W1ᵀ·q_t + b1) + b2) per query head: the paper's MLP +
--   sigmoid on the hidden state, read on q (Q/K/V captures hold no x;
--   lucidrains' to_strategy_combine is one Linear on x). Exactly one gate
--   form per file (per-token gates, gate_w/gate_b, or gate_mlp.*).
--   Any other tensor, a missing partner, a wrong shape or dtype, NaN or a gate
--   outside [0, 1] is a one-line error naming the file and the tensor.
-- Stand-in without weights (params_source "standin:mean_pool+gates(0,1,0)"):
--   mean-pooled compression and fixed gates (0, 1, 0): the selection branch
--   alone (which holds the local blocks) with blocks chosen by the mean-pooled
--   compressed attention; with g_swa = 0 its window branch is not run
--   (window = 0), so density and recall count only keys that reach the
--   output. Not an oracle (reads no exact attention map).
-- Every run sets params.params_source (recorded in the result's params) and
-- out.params_source: the stand-in's name or "sha256:<hex>" of the weights file.
-- Density: the original keys the selection and window branches read per
-- (kv head, query) over the causal keys, averaged (the compressed tokens
-- are extra reads, reported as stats.cmp_tokens per row).
-- Decode (issue 14, session 4; phase "both"): M.decode is a hook of the
-- decode runtime (sparselab.decode: the paged cache sl.kvcache_c, `eval
-- --steps S`, `model --decode nsa`). Per layer it keeps a compressed cache:
-- on the first step every complete window of the prefill is compressed in
-- one call; afterwards the window [i s, i s + l) is compressed from its l
-- tokens alone and appended as soon as the cache holds it (one compressed
-- token every s steps). Each step selects its own blocks from the
-- compressed attention and runs the three branches (one trainable.nsa call,
-- query at position n - 1). A run on a decode problem (n_q < n_k) replays
-- through the hook. Tested: the decode rows equal the prefill forward's
-- rows (stand-in both variants, q-gates + MLP phi, per-token gates); a
-- score-blind selection (zero compressed keys) fails the recall check.
-- Per-token gate files in decode: column r for the r-th decode step.
-- Stats per step: cmp_tokens, cmp_appended, blocks_changed (|S_t \ S_t-1|
-- per kv head), tokens_read, kv_bytes. Limits: one weights file for every
-- layer at model level; no eviction (the cache keeps every token).
-- NOT implemented: the gate network on the hidden state x (it reads q
-- instead: captures hold no x); training of the whole model.
-- Fitting (`sparselab fit-params nsa`): gate_w, gate_b by Adam on the output
-- error vs dense attention (hand gradients, checked against finite
-- differences in tests/lua/test_methods_trainable.lua). Session 4: with
-- the paper variant and phi_hidden ~= 0 (default: head_dim) the MLP phi
-- (k_compress.*, v_compress.*) is fitted jointly (M.fit_phi): the gradient
-- of o_cmp = softmax(q·kc/sqrt(D))·vc goes back through kc and vc into each
-- window's two-layer MLP; o_slc and o_swa are held fixed with the blocks
-- chosen by the current phi, re-selected every `reselect` steps (the top-n
-- is not differentiable); start at the MLP that equals mean pooling;
-- Adam (gates lr 0.05, phi phi_lr) with a ridge phi_decay·|phi - phi_0|²
-- toward that start (without it the fitted phi lost to mean pooling on
-- held-out texts: docs/notes/issue-14.md, session 4). phi_hidden = 0: the
-- gates alone (the fla variant always).
-- Session 5: gate_hidden = M > 0 fits the gate network gate_mlp.* (hidden
-- width M) instead of gate_w/gate_b, alone or jointly with the MLP phi.
-- Its input is q_t: the reading documented above for gate_mlp.* (the
-- paper's g = sigmoid(MLP(x_t)) on the hidden state x_t, which Q/K/V
-- captures do not hold; post-RoPE q of each query head stands in). Hand
-- gradients: dL/dz_b = (2/N)·Σ_e r_e·o_b,e·σ'(z_b), back through W2, the
-- ReLU and W1 (M.gate_model / gate_eval / gate_grad; checked against finite
-- differences in tests/lua/test_methods_trainable.lua, gates alone and
-- jointly with phi). Start: W2 = 0, b2 = the stand-in's logits (-4, 4, -4),
-- W1 ~ N(0, 1/D) seeded, b1 = 0 (the initial gates are constant); Adam lr
-- 0.05 and a ridge gate_decay·|(W1, W2) - start|² (1e-4: without it the
-- MLP over-fits the fitting texts and loses to the q-linear gates held out;
-- docs/notes/issue-14.md, session 5).
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local STANDIN = "standin:mean_pool+gates(0,1,0)"

local dims = T.dims

-- The op parameters of a variant. id: the method that reports an error (fsa
-- and nsa_latent_alternating share this code; default "nsa").
local function op_params(p, id)
  id = id or "nsa"
  local l, s, init, loc = p.l, p.s, 1, 2
  if p.variant == "fla" then
    l, s, init, loc = p.bs, p.bs, 0, 1
  elseif p.variant ~= "paper" then
    sl.fail("%s: variant must be 'paper' or 'fla', found '%s'", id, tostring(p.variant))
  end
  if l % s ~= 0 or p.bs % s ~= 0 then
    sl.fail("%s: l = %d and bs = %d must be multiples of the stride s = %d (paper eq. 9 maps compressed scores to " ..
      "selection blocks in units of s)", id, l, p.bs, s)
  end
  if p.init >= 0 then init = p.init end
  if p["local"] >= 0 then loc = p["local"] end
  return {l = l, s = s, bs = p.bs, n = p.n, init = init, ["local"] = loc, window = p.window}
end

local function weight_spec(prob, op)
  local hq, nq, d, hkv = dims(prob)
  local gate = {range = {0, 1}, range_why = "gates are sigmoid outputs"}
  local function g(name)
    return {name = name, shape = {hq, nq}, dims = "(query heads, tokens)", group = "gates", range = gate.range,
      range_why = gate.range_why}
  end
  return {
    g("g_cmp"), g("g_slc"), g("g_swa"),
    {name = "gate_w", shape = {hq, 3, d}, dims = "(query heads, [cmp, slc, swa], head_dim)", group = "qgate"},
    {name = "gate_b", shape = {hq, 3}, dims = "(query heads, [cmp, slc, swa])", group = "qgate"},
    {name = "compress_key", shape = {hkv, op.l * d, d}, dims = "(kv heads, l·head_dim, head_dim)", group = "phi"},
    {name = "compress_value", shape = {hkv, op.l * d, d}, dims = "(kv heads, l·head_dim, head_dim)", group = "phi"},
    {name = "intra_block_pe", shape = {hkv, op.l, d}, dims = "(kv heads, l, head_dim)"},
  }
end

-- The MLP tensors (hidden widths read from the file's own w1 shapes; load_weights checks the rest).
local function mlp_spec(prob, op, path)
  local hq, _, d, hkv = dims(prob)
  local okw, raw = pcall(sl.load, path)
  raw = okw and type(raw) == "table" and raw or {}
  local function width(name, dflt)
    local t = raw[name]
    return t and #t:shape() == 3 and t:shape()[3] or dflt
  end
  local mk, mv, mg = width("k_compress.w1", d), width("v_compress.w1", d), width("gate_mlp.w1", d)
  local spec = {}
  for _, x in ipairs{{"k_compress", mk}, {"v_compress", mv}} do
    local nm, m = x[1], x[2]
    spec[#spec + 1] = {name = nm .. ".w1", shape = {hkv, op.l * d, m}, dims = "(kv heads, l·head_dim, hidden)", group = "mlp_phi"}
    spec[#spec + 1] = {name = nm .. ".b1", shape = {hkv, m}, dims = "(kv heads, hidden)", group = "mlp_phi"}
    spec[#spec + 1] = {name = nm .. ".w2", shape = {hkv, m, d}, dims = "(kv heads, hidden, head_dim)", group = "mlp_phi"}
    spec[#spec + 1] = {name = nm .. ".b2", shape = {hkv, d}, dims = "(kv heads, head_dim)", group = "mlp_phi"}
  end
  spec[#spec + 1] = {name = "gate_mlp.w1", shape = {hq, d, mg}, dims = "(query heads, head_dim, hidden)", group = "gate_mlp"}
  spec[#spec + 1] = {name = "gate_mlp.b1", shape = {hq, mg}, dims = "(query heads, hidden)", group = "gate_mlp"}
  spec[#spec + 1] = {name = "gate_mlp.w2", shape = {hq, mg, 3}, dims = "(query heads, hidden, [cmp, slc, swa])", group = "gate_mlp"}
  spec[#spec + 1] = {name = "gate_mlp.b2", shape = {hq, 3}, dims = "(query heads, [cmp, slc, swa])", group = "gate_mlp"}
  return spec
end

local function relu(x) return x > 0 and x or 0 end

local function sigmoid(z) return 1 / (1 + math.exp(-z)) end

-- Gates [Hq, Nq] x 3 from gate_w, gate_b and the queries.
local function q_gates(prob, W, B)
  local hq, nq, d = dims(prob)
  local q, w, b = E.heads(prob.q), W:totable(), B:totable()
  local out = {{}, {}, {}}
  for br = 1, 3 do
    for h = 1, hq do
      local row, wv, bb = {}, w[h][br], b[h][br]
      for t = 1, nq do
        local z, qt = bb, q[h][t]
        for e = 1, d do z = z + wv[e] * qt[e] end
        row[t] = sigmoid(z)
      end
      out[br][h] = row
    end
  end
  return sl.tensor(out[1]), sl.tensor(out[2]), sl.tensor(out[3])
end

-- Gates [Hq, Nq] x 3 from the gate MLP on the queries: sigmoid(W2ᵀ·relu(W1ᵀ·q_t + b1) + b2).
local function mlp_gates(prob, ws)
  local hq, nq, d = dims(prob)
  local q = E.heads(prob.q)
  local W1, B1, W2, B2 = ws["gate_mlp.w1"]:totable(), ws["gate_mlp.b1"]:totable(), ws["gate_mlp.w2"]:totable(),
    ws["gate_mlp.b2"]:totable()
  local m = #B1[1]
  local out = {{}, {}, {}}
  for h = 1, hq do
    for br = 1, 3 do out[br][h] = {} end
    local w1, b1, w2, b2 = W1[h], B1[h], W2[h], B2[h]
    for t = 1, nq do
      local qt, hid = q[h][t], {}
      for j = 1, m do hid[j] = b1[j] end
      for e = 1, d do local a, w = qt[e], w1[e] for j = 1, m do hid[j] = hid[j] + a * w[j] end end
      for br = 1, 3 do
        local z = b2[br]
        for j = 1, m do if hid[j] > 0 then z = z + hid[j] * w2[j][br] end end
        out[br][h][t] = sigmoid(z)
      end
    end
  end
  return sl.tensor(out[1]), sl.tensor(out[2]), sl.tensor(out[3])
end

local function const_gates(prob, a, b, c)
  local hq, nq = dims(prob)
  local function fill(x)
    local t = {}
    for h = 1, hq do local r = {} for i = 1, nq do r[i] = x end t[h] = r end
    return sl.tensor(t)
  end
  return fill(a), fill(b), fill(c)
end

-- Loads the weights (or none); returns ws (maybe empty), source, op params.
-- id: the method named in errors (default "nsa").
local function setup(prob, p, id)
  id = id or "nsa"
  local op = op_params(p, id)
  if (p.weights or "") == "" then return {}, STANDIN, op end
  local spec = weight_spec(prob, op)
  for _, e in ipairs(mlp_spec(prob, op, p.weights)) do spec[#spec + 1] = e end
  local ws = T.load_weights(id, p.weights, spec)
  local forms = (ws.g_cmp and 1 or 0) + (ws.gate_w and 1 or 0) + (ws["gate_mlp.w1"] and 1 or 0)
  if forms > 1 then
    sl.fail("%s: weights %s: holds more than one gate form (g_cmp/g_slc/g_swa, gate_w/gate_b, gate_mlp.*); expected one",
      id, p.weights)
  end
  if ws.compress_key and ws["k_compress.w1"] then
    sl.fail("%s: weights %s: holds both the linear phi (compress_key) and the MLP phi (k_compress.*); expected one", id, p.weights)
  end
  if ws["k_compress.w1"] and p.variant ~= "paper" then
    sl.fail("%s: weights %s: k_compress.* is the paper's MLP phi; expected variant=paper", id, p.weights)
  end
  if ws.g_cmp and ws.gate_w then
    sl.fail("%s: weights %s: holds both per-token gates (g_cmp, g_slc, g_swa) and gate_w/gate_b; expected one form",
      id, p.weights)
  end
  if ws.compress_key and p.variant ~= "paper" then
    sl.fail("%s: weights %s: compress_key is FSA's linear phi of the paper variant; expected variant=paper", id, p.weights)
  end
  return ws, T.file_source(p.weights), op
end

-- The paper's MLP phi of one of k, v: per window [i s, i s + l) the flattened
-- (x + pe) (a slot past the end: zero, pe included), y = W2·act(W1ᵀ·window +
-- b1) + b2. Layer 1 runs as trainable.compress mode 1 on column blocks of W1
-- (zero-padded to a multiple of D: act(0) = 0 and the padded rows of W2 are
-- zero, so padding adds nothing); bias, activation and layer 2 in Lua
-- (O(windows·hidden·D)).
local function mlp_compress(prob, x, ws, pre, op, act)
  local _, _, d, hkv = dims(prob)
  local W1, B1, W2, B2 = ws[pre .. ".w1"], ws[pre .. ".b1"]:totable(), ws[pre .. ".w2"], ws[pre .. ".b2"]:totable()
  local m = W1:shape()[3]
  local P = (m + d - 1) // d
  local hidden = {} -- hidden[c][h] = [C][D] block c of layer 1's output
  for c = 1, P do
    local parts = {}
    for h = 1, hkv do
      local w = W1:narrow(1, h, 1):totable()[1]
      local blk = {}
      for r = 1, op.l * d do
        local row, src = {}, w[r]
        for e = 1, d do local col = (c - 1) * d + e row[e] = col <= m and src[col] or 0 end
        blk[r] = row
      end
      parts[h] = sl.tensor({blk})
    end
    local wc = hkv > 1 and sl.cat(parts, 1) or parts[1]
    hidden[c] = sl.trainable.compress(x, {l = op.l, s = op.s, mode = 1, w = wc, pe = ws.intra_block_pe,
      backend = prob.backend}):totable()
  end
  local out = {}
  for h = 1, hkv do
    local w2 = W2:narrow(1, h, 1):totable()[1]
    local nc = #hidden[1][h]
    out[h] = {}
    for i = 1, nc do
      local y = {}
      for e = 1, d do y[e] = B2[h][e] end
      for c = 1, P do
        local hv = hidden[c][h][i]
        for e = 1, d do
          local col = (c - 1) * d + e
          if col <= m then
            local a = act(hv[e] + B1[h][col])
            if a ~= 0 then local w2r = w2[col] for f = 1, d do y[f] = y[f] + a * w2r[f] end end
          end
        end
      end
      out[h][i] = y
    end
  end
  return sl.tensor(out)
end

-- Compressed keys and values.
local function compress(prob, ws, op)
  if ws["k_compress.w1"] then
    return mlp_compress(prob, prob.k, ws, "k_compress", op, relu), mlp_compress(prob, prob.v, ws, "v_compress", op, relu)
  end
  local args = {l = op.l, s = op.s, mode = ws.compress_key and 1 or 0, pe = ws.intra_block_pe, backend = prob.backend}
  args.w = ws.compress_key
  local kc = sl.trainable.compress(prob.k, args)
  args.w = ws.compress_value
  local vc = sl.trainable.compress(prob.v, args)
  return kc, vc
end

-- trainable.nsa with the given gates. Its imp output is f32 [Hkv, Nq,
-- ceil(Nk/bs)]: n²/bs floats per kv head (64 MiB per kv head at n = 32K),
-- so above IMP_BYTES of it (issue 19: memory linear in n) the call runs on
-- row blocks of queries — q rows [r0, r1) and their gates against keys 0 ..
-- the block's last position (the same positions p = Nk - Nq + t, so the
-- same compressed visibility, importance and selection; kc, vc whole: a
-- compressed token past p is invisible) — and o, lse, blocks are joined;
-- imp is then nil. rows (tests only): query rows per call.
local IMP_BYTES = 1 << 24
local function forward(prob, op, kc, vc, gc, gs, gw, rows)
  local args = {l = op.l, s = op.s, bs = op.bs, n = op.n, init = op.init, ["local"] = op["local"],
    window = op.window, backend = prob.backend}
  local flops = sl.op_flops("trainable.nsa", prob.q, prob.k, prob.v, kc, vc, gc, gs, gw, args)
  local hq, nq, _, hkv, nk = dims(prob)
  local nb = (nk + op.bs - 1) // op.bs
  local per = rows or math.max(1, IMP_BYTES // (4 * hkv * nb))
  if per >= nq then
    local o, lse, blocks, imp = sl.trainable.nsa(prob.q, prob.k, prob.v, kc, vc, gc, gs, gw, args)
    return o, lse, blocks, imp, flops
  end
  local os, L, B = {}, {}, {}
  for h = 1, hq do L[h] = {} end
  for g = 1, hkv do B[g] = {} end
  for r0 = 0, nq - 1, per do
    local m = math.min(per, nq - r0)
    local last = nk - nq + r0 + m -- keys 0 .. the block's last position
    local o, lse, blocks = sl.trainable.nsa(prob.q:narrow(2, r0 + 1, m), prob.k:narrow(2, 1, last),
      prob.v:narrow(2, 1, last), kc, vc, gc:narrow(2, r0 + 1, m), gs:narrow(2, r0 + 1, m), gw:narrow(2, r0 + 1, m), args)
    os[#os + 1] = o
    for h, row in ipairs(lse:totable()) do
      local t = L[h]
      for i = 1, m do t[r0 + i] = row[i] end
    end
    for g, rws in ipairs(blocks:totable()) do
      local t = B[g]
      for i = 1, m do t[r0 + i] = rws[i] end
    end
  end
  return sl.cat(os, 2), sl.tensor(L), sl.tensor(B, "i32"), nil, flops
end

-- Density of the keys read (selected blocks ∪ window) over the causal keys.
local function density(prob, op, blocks)
  local _, nq, _, _, nk = dims(prob)
  local b = E.heads(blocks)
  local kept, causal = 0, 0
  for kv = 1, #b do
    for t = 1, nq do
      local pos = nk - nq + t - 1
      local w0 = math.max(0, pos - op.window + 1)
      local row, n_sel, win_out = b[kv][t], 0, pos + 1 - w0
      for _, j in ipairs(row) do
        if j >= 0 then
          local k0, k1 = j * op.bs, math.min((j + 1) * op.bs, pos + 1)
          n_sel = n_sel + (k1 - k0)
          -- window keys inside a selected block are counted once
          local o0, o1 = math.max(k0, w0), k1
          if o1 > o0 then win_out = win_out - (o1 - o0) end
        end
      end
      kept = kept + n_sel + win_out
      causal = causal + pos + 1
    end
  end
  return kept / causal
end

local M = {
  id = "nsa",
  card = "nsa",
  title = "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse Attention",
  family = "trainable",
  phase = "both",
  causal_only = true,
  summary = "Gated compressed, selected-block and sliding-window attention; weights from a file or a mean-pool stand-in.",
  knob = "n",
  params = {
    variant = {default = "paper", doc = "paper (l=32, s=16, 1 initial + 2 local forced) or fla (mean pool, l = s = bs, local only)"},
    l = {default = 32, min = 1, max = 65536, int = true, doc = "compression window (paper variant)"},
    s = {default = 16, min = 1, max = 65536, int = true, doc = "compression stride (paper variant)"},
    bs = {default = 64, min = 1, max = 65536, int = true, doc = "selection block size l'"},
    n = {default = 16, min = 3, int = true, doc = "selected blocks per query and kv head, forced ones included"},
    init = {default = -1, min = -1, max = 65536, int = true, doc = "forced initial blocks (-1: the variant's)"},
    ["local"] = {default = -1, min = -1, max = 65536, int = true, doc = "forced local blocks (-1: the variant's)"},
    window = {default = 512, min = 0, int = true, doc = "sliding-window keys (0: no window branch)"},
    weights = {default = "", doc = "safetensors file of gates / phi (empty: the stand-in)"},
    phi_hidden = {default = -1, min = -1, max = 4096, int = true,
      doc = "fit-params only: hidden width of the fitted MLP phi (-1: head_dim; 0: fit the gates alone)"},
    phi_lr = {default = 0.002, min = 0, max = 1, doc = "fit-params only: Adam learning rate of the MLP phi"},
    phi_decay = {default = 0.01, min = 0, max = 1e6,
      doc = "fit-params only: ridge weight pulling the MLP phi toward its mean-pool initial point"},
    reselect = {default = 10, min = 1, int = true, doc = "fit-params only: steps between block re-selections"},
    gate_hidden = {default = 0, min = 0, max = 4096, int = true,
      doc = "fit-params only: 0 fits the q-gates gate_w/gate_b; > 0 fits the gate MLP gate_mlp.* of this hidden width"},
    gate_decay = {default = 1e-4, min = 0, max = 1e6,
      doc = "fit-params only: ridge weight pulling the gate MLP's w1, w2 toward their initial point (gate_hidden > 0)"},
  },
  ops = {"trainable.compress", "trainable.nsa"},
  checks = {"compressed token i invisible to query t when i·s + l - 1 > t; first l - 1 queries o_cmp = 0, no NaN",
    "selected blocks within the causal ones, forced ones present", "overlap-weight mapping = brute-force token sum",
    "n = all blocks with gates (0,1,0) equals dense", "one block set per GQA group",
    "float64 independent implementation (both variants) to 1e-5", "score-blind selection loses recall",
    "bad weight files: one-line errors", "decode steps through the decode cache equal the prefill rows",
    "fit: hand gradient equals finite differences", "fitted phi beats the gates-only fit on held-out texts"},
  params_sources = {STANDIN, "sha256:<weights file>"},
}

M.setup, M.compress, M.forward, M.const_gates, M.q_gates = setup, compress, forward, const_gates, q_gates
M.mlp_gates = mlp_gates

-- ---- decode (issue 14, session 4): a compressed token appended every s steps ----

local function shape_of(s) return {shape = function() return s end} end

-- The weights, source and op parameters of a decode layer (loaded once per
-- layer state). A per-token gate file [Hq, R] gives decode step r (r-th
-- token after the prefill) its column r.
local function decode_setup(ls, step, p)
  if ls.nsa then return ls.nsa end
  local qs, ks = step.q:shape(), step.k:shape()
  local width = 1
  if (p.weights or "") ~= "" then
    local ok, raw = pcall(sl.load, p.weights)
    if ok and type(raw) == "table" and raw.g_cmp and #raw.g_cmp:shape() == 2 then width = raw.g_cmp:shape()[2] end
  end
  local ws, source, op = setup({q = shape_of({qs[1], width, qs[3]}), k = shape_of({ks[1], width, ks[3]})}, p)
  ls.nsa = {ws = ws, source = source, op = op, nc = 0, prev = nil}
  return ls.nsa
end

-- Appends to the layer's compressed cache every window [i s, i s + l) that
-- the cache now holds complete: on the first step all of the prefill's
-- windows in one compression, afterwards the one new window every s steps
-- (phi of its l tokens only: nothing is recomputed).
local function decode_compress(st_nsa, K, V, n, step)
  local op, ws = st_nsa.op, st_nsa.ws
  local avail = n >= op.l and (n - op.l) // op.s + 1 or 0
  if avail <= st_nsa.nc then return end
  local a = st_nsa.nc * op.s
  local span = (avail - 1) * op.s + op.l - a
  local sub = {q = step.q, k = K:narrow(2, a + 1, span), v = V:narrow(2, a + 1, span), backend = step.backend}
  local kc, vc = compress(sub, ws, op)
  kc, vc = kc:narrow(2, 1, avail - st_nsa.nc), vc:narrow(2, 1, avail - st_nsa.nc)
  if st_nsa.kc then
    st_nsa.kc, st_nsa.vc = sl.cat({st_nsa.kc, kc}, 2), sl.cat({st_nsa.vc, vc}, 2)
  else
    st_nsa.kc, st_nsa.vc = kc, vc
  end
  st_nsa.appended = (st_nsa.appended or 0) + (st_nsa.nc > 0 and avail - st_nsa.nc or 0)
  st_nsa.nc = avail
end

--- The decode hook: the new token is in ls.cache (the driver appended it);
--- complete windows are compressed into the layer's compressed cache
--- (decode_compress), then one trainable.nsa call with the step's query at
--- position n - 1 runs the three branches (blocks selected for this step
--- from the compressed attention) and the gated sum.
local function decode(_, ls, step, p)
  local S = decode_setup(ls, step, p)
  local ws, op = S.ws, {}
  for key, val in pairs(S.op) do op[key] = val end
  local n = ls.cache:len()
  local K, V = ls.cache:tensor("k"):narrow(2, 1, n), ls.cache:tensor("v"):narrow(2, 1, n)
  decode_compress(S, K, V, n, step)
  local one = {q = step.q, k = K, v = V, backend = step.backend}
  local kc, vc = S.kc, S.vc
  if not kc then   -- no complete window yet: one zero token that no query sees (i s + l - 1 > n - 1)
    kc = sl.zeros({K:shape()[1], 1, K:shape()[3]})
    vc = kc
  end
  local gc, gs, gw
  if ws.g_cmp then
    local col = ls.seen - (ls.n_prefill or 0)
    local width = ws.g_cmp:shape()[2]
    if col < 1 or col > width then
      sl.fail("nsa: weights %s: per-token gates cover %d decode steps; step %d has no column", p.weights, width, col)
    end
    gc, gs, gw = ws.g_cmp:narrow(2, col, 1), ws.g_slc:narrow(2, col, 1), ws.g_swa:narrow(2, col, 1)
  elseif ws.gate_w then
    gc, gs, gw = q_gates(one, ws.gate_w, ws.gate_b)
  elseif ws["gate_mlp.w1"] then
    gc, gs, gw = mlp_gates(one, ws)
  else
    gc, gs, gw = const_gates(one, 0, 1, 0)
    op.window = 0
  end
  local o, lse, blocks = sl.trainable.nsa(step.q, K, V, kc, vc, gc, gs, gw, {l = op.l, s = op.s, bs = op.bs, n = op.n,
    init = op.init, ["local"] = op["local"], window = op.window, backend = step.backend})
  -- blocks changed since the previous step (per kv head: |S_t \ S_{t-1}|)
  local bt, changed = blocks:totable(), 0
  if S.prev then
    for g = 1, #bt do
      local had = {}
      for _, j in ipairs(S.prev[g][1]) do had[j] = true end
      for _, j in ipairs(bt[g][1]) do if j >= 0 and not had[j] then changed = changed + 1 end end
    end
    changed = changed / #bt
  end
  S.prev = bt
  local dens = density(one, op, blocks)
  local d, hkv = K:shape()[3], K:shape()[1]
  local tokens = dens * n
  return {o = o, lse = lse, blocks = blocks, params_source = S.source,
    stats = {density = dens, tokens_read = tokens, cmp_tokens = S.nc, kv_bytes = 8 * d * (tokens + S.nc) * hkv,
      blocks_changed = changed, cmp_appended = S.appended or 0}}
end
M.decode = decode

--- id (optional): the method named in errors (fsa runs this; default "nsa").
function M.run(prob, p, id)
  local _, nq0, _, _, nk0 = dims(prob)
  if nq0 < nk0 then
    -- a decode problem (the last nq rows of nk keys): replayed one step at a
    -- time through the decode runtime (the cache of the prefix, then M.decode)
    local r = require("sparselab.decode").replay(M, prob, p)
    local src = r.state.layers[1].nsa.source
    p.params_source = src
    return {o = r.o, lse = r.lse, params_source = src, steps = r.steps,
      stats = require("sparselab.decode").replay_stats(r.steps)}
  end
  local ws, source, op = setup(prob, p, id)
  local kc, vc = compress(prob, ws, op)
  local gc, gs, gw
  if ws.g_cmp then
    gc, gs, gw = ws.g_cmp, ws.g_slc, ws.g_swa
  elseif ws.gate_w then
    gc, gs, gw = q_gates(prob, ws.gate_w, ws.gate_b)
  elseif ws["gate_mlp.w1"] then
    gc, gs, gw = mlp_gates(prob, ws)
  else
    -- the stand-in's window gate is 0: its window branch is not run at all,
    -- so density and recall count only the keys that reach the output
    gc, gs, gw = const_gates(prob, 0, 1, 0)
    op.window = 0
  end
  local o, lse, blocks, imp, flops = forward(prob, op, kc, vc, gc, gs, gw)
  local _, nq = dims(prob)
  p.params_source = source
  return {o = o, lse = lse, blocks = blocks, imp = imp, params_source = source,
    stats = {flops = flops, density = density(prob, op, blocks), cmp_tokens = kc:shape()[2] / nq}}
end

-- ---- fitting: gate_w, gate_b on captured Q/K/V ----

--- The fitting data of one problem: q, the three branch outputs with unit
--- gates and dense attention, as Lua tables.
function M.fit_data(prob, p)
  local ws, _, op = setup(prob, p)
  local kc, vc = compress(prob, ws, op)
  local br = {}
  for b = 1, 3 do
    local gc, gs, gw = const_gates(prob, b == 1 and 1 or 0, b == 2 and 1 or 0, b == 3 and 1 or 0)
    br[b] = E.heads((forward(prob, op, kc, vc, gc, gs, gw)))
  end
  local dense = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true, backend = prob.backend})
  local hq, nq, d = dims(prob)
  return {q = E.heads(prob.q), br = br, dense = E.heads(dense), hq = hq, nq = nq, d = d}
end

--- Loss (mean squared output error vs dense over every data set) and its
--- gradient at x = gate_w [Hq, 3, D] then gate_b [Hq, 3], flattened.
--- o = Σ_b σ(z_b) O_b with z_b = w_b·q + c_b; dL/dz_b = (2/N) Σ_e r_e O_b,e σ'(z_b).
-- Adds one row's gradient of the squared output error into the gate
-- parameters: dz[b] = sum_e r_e . o_b[e] for branch b, sg the sigmoid gates,
-- qt the row's query (gate_w block of head h at ((h-1)*3 + b-1)*d, gate_b
-- at nb + (h-1)*3 + b).
local function add_gate_grad(g, nb, h, d, count, dz, sg, qt)
  for b = 1, 3 do
    local gz = 2 / count * dz[b] * sg[b] * (1 - sg[b])
    local off = ((h - 1) * 3 + (b - 1)) * d
    for e = 1, d do g[off + e] = g[off + e] + gz * qt[e] end
    g[nb + (h - 1) * 3 + b] = g[nb + (h - 1) * 3 + b] + gz
  end
end

-- ---- the gate model of a fit (issue 14, session 5) ----
-- The gate entries sit at the start of the fit's flat parameter array x.
-- Two forms:
--   "linear" (gate_hidden = 0): gate_w [Hq, 3, D] then gate_b [Hq, 3]; z_b =
--     gate_w[h, b]·q_t + gate_b[h, b] (the form of sessions 3-4);
--   "mlp" (gate_hidden = M > 0): per query head h a block of M·D + M + 3·M + 3
--     entries at (h-1)·S: W1 [D, M] (row e, column j at (e-1)·M + j), b1 [M],
--     W2 [M, 3] (row j, column b at (j-1)·3 + b), b2 [3]; z = W2ᵀ·relu(W1ᵀ·q_t +
--     b1) + b2, the recipe's gate_mlp.* (q standing in for the hidden state).
-- In both, g_b = sigmoid(z_b).
function M.gate_model(hq, d, m)
  if (m or 0) <= 0 then
    return {kind = "linear", hq = hq, d = d, m = 0, nb = hq * 3 * d, n = hq * 3 * d + hq * 3}
  end
  local S = d * m + m + 3 * m + 3
  return {kind = "mlp", hq = hq, d = d, m = m, S = S, n = hq * S}
end

-- The offsets of head h's MLP block: w1, b1, w2, b2 (each entry at off + index).
local function mlp_offsets(G, h)
  local base, d, m = (h - 1) * G.S, G.d, G.m
  return base, base + d * m, base + d * m + m, base + d * m + m + 3 * m
end

-- The gates of head h at query qt: sg[1..3] and (mlp) the hidden
-- activations after the ReLU.
local function gate_eval(G, x, h, qt)
  local sg, d = {}, G.d
  if G.kind == "linear" then
    local nb = G.nb
    for b = 1, 3 do
      local zz, off = x[nb + (h - 1) * 3 + b], ((h - 1) * 3 + (b - 1)) * d
      for e = 1, d do zz = zz + x[off + e] * qt[e] end
      sg[b] = sigmoid(zz)
    end
    return sg
  end
  local m = G.m
  local w1, b1, w2, b2 = mlp_offsets(G, h)
  local hid = {}
  for j = 1, m do hid[j] = x[b1 + j] end
  for e = 1, d do
    local a, base = qt[e], w1 + (e - 1) * m
    for j = 1, m do hid[j] = hid[j] + a * x[base + j] end
  end
  for j = 1, m do if hid[j] < 0 then hid[j] = 0 end end
  for b = 1, 3 do
    local z = x[b2 + b]
    for j = 1, m do z = z + hid[j] * x[w2 + (j - 1) * 3 + b] end
    sg[b] = sigmoid(z)
  end
  return sg, hid
end

-- Adds one row's gradient into the gate entries of g: dz[b] = Σ_e r_e·o_b[e]
-- (r the row's residual), so dL/dz_b = (2/count)·dz[b]·σ'(z_b); for the MLP
-- back through W2, the ReLU (units with relu = 0 pass nothing) and W1.
local function gate_grad(G, g, x, h, qt, count, dz, sg, hid)
  if G.kind == "linear" then return add_gate_grad(g, G.nb, h, G.d, count, dz, sg, qt) end
  local d, m = G.d, G.m
  local w1, b1, w2, b2 = mlp_offsets(G, h)
  local gz = {}
  for b = 1, 3 do
    gz[b] = 2 / count * dz[b] * sg[b] * (1 - sg[b])
    g[b2 + b] = g[b2 + b] + gz[b]
  end
  local dh = {}
  for j = 1, m do
    local hj, o = hid[j], w2 + (j - 1) * 3
    g[o + 1], g[o + 2], g[o + 3] = g[o + 1] + hj * gz[1], g[o + 2] + hj * gz[2], g[o + 3] + hj * gz[3]
    dh[j] = hj > 0 and (x[o + 1] * gz[1] + x[o + 2] * gz[2] + x[o + 3] * gz[3]) or 0
    g[b1 + j] = g[b1 + j] + dh[j]
  end
  for e = 1, d do
    local a, base = qt[e], w1 + (e - 1) * m
    if a ~= 0 then for j = 1, m do g[base + j] = g[base + j] + a * dh[j] end end
  end
end

-- The gate model's ridge: decay · Σ (w1 - w1₀)² + (w2 - w2₀)² over the MLP's
-- weights toward its initial point G.x0 (seeded W1, W2 = 0: a gate close to
-- the initial constant one; biases free); nothing for the linear form or
-- without G.x0. Adds into g, returns the term.
local function gate_ridge(G, x, g, decay)
  if G.kind ~= "mlp" or not decay or decay <= 0 or not G.x0 then return 0 end
  local s, d, m, x0 = 0, G.d, G.m, G.x0
  for h = 1, G.hq do
    local w1, _, w2 = mlp_offsets(G, h)
    for _, span in ipairs{{w1, d * m}, {w2, 3 * m}} do
      for i = span[1] + 1, span[1] + span[2] do
        local dx = x[i] - x0[i]
        s = s + dx * dx
        g[i] = g[i] + 2 * decay * dx
      end
    end
  end
  return decay * s
end

--- The gate model's initial entries into x: the stand-in's gates (logits
--- -4, 4, -4 for cmp, slc, swa) with no dependence on q: linear w = 0; MLP
--- W2 = 0, b2 = the logits, W1 ~ N(0, 1/D) seeded (so every unit has a
--- gradient once W2 moves), b1 = 0.
function M.gate_init(G, x, seed)
  for i = 1, G.n do x[i] = 0 end
  local logits = {-4, 4, -4}
  if G.kind == "linear" then
    for h = 1, G.hq do for b = 1, 3 do x[G.nb + (h - 1) * 3 + b] = logits[b] end end
    return x
  end
  local w = sl.randn({G.hq * G.d * G.m}, {seed = seed or 1, std = 1 / math.sqrt(G.d)}):totable()
  local wi = 0
  for h = 1, G.hq do
    local w1, _, _, b2 = mlp_offsets(G, h)
    for i = 1, G.d * G.m do wi = wi + 1; x[w1 + i] = w[wi] end
    for b = 1, 3 do x[b2 + b] = logits[b] end
  end
  return x
end

--- The gate tensors of x: gate_w, gate_b (linear) or gate_mlp.{w1,b1,w2,b2}.
function M.gate_tensors(G, x)
  if G.kind == "linear" then
    local w, b = {}, {}
    for h = 1, G.hq do
      w[h], b[h] = {}, {}
      for br = 1, 3 do
        local off, row = ((h - 1) * 3 + (br - 1)) * G.d, {}
        for e = 1, G.d do row[e] = x[off + e] end
        w[h][br], b[h][br] = row, x[G.nb + (h - 1) * 3 + br]
      end
    end
    return {gate_w = sl.tensor(w), gate_b = sl.tensor(b)}
  end
  local d, m = G.d, G.m
  local W1, B1, W2, B2 = {}, {}, {}, {}
  for h = 1, G.hq do
    local w1, b1, w2, b2 = mlp_offsets(G, h)
    W1[h], B1[h], W2[h], B2[h] = {}, {}, {}, {}
    for e = 1, d do local row = {} for j = 1, m do row[j] = x[w1 + (e - 1) * m + j] end W1[h][e] = row end
    for j = 1, m do B1[h][j] = x[b1 + j] end
    for j = 1, m do W2[h][j] = {x[w2 + (j - 1) * 3 + 1], x[w2 + (j - 1) * 3 + 2], x[w2 + (j - 1) * 3 + 3]} end
    B2[h] = {x[b2 + 1], x[b2 + 2], x[b2 + 3]}
  end
  return {["gate_mlp.w1"] = sl.tensor(W1), ["gate_mlp.b1"] = sl.tensor(B1), ["gate_mlp.w2"] = sl.tensor(W2),
    ["gate_mlp.b2"] = sl.tensor(B2)}
end

--- Loss and gradient of the gate fit at x (the gate model G; default the
--- linear q-gates): the mean squared output error vs dense over every data
--- set, plus the gate MLP's ridge G.decay·|w|² when G has one.
function M.fit_loss_grad(data, x, G)
  local hq, d = data[1].hq, data[1].d
  G = G or M.gate_model(hq, d, 0)
  local g, loss, count = {}, 0, 0
  for i = 1, #x do g[i] = 0 end
  for _, D in ipairs(data) do count = count + D.hq * D.nq * D.d end
  for _, D in ipairs(data) do
    for h = 1, hq do
      for t = 1, D.nq do
        local qt = D.q[h][t]
        local sg, hid = gate_eval(G, x, h, qt)
        local o1, o2, o3, ref = D.br[1][h][t], D.br[2][h][t], D.br[3][h][t], D.dense[h][t]
        local dz1, dz2, dz3 = 0, 0, 0
        for e = 1, d do
          local r = sg[1] * o1[e] + sg[2] * o2[e] + sg[3] * o3[e] - ref[e]
          loss = loss + r * r
          dz1, dz2, dz3 = dz1 + r * o1[e], dz2 + r * o2[e], dz3 + r * o3[e]
        end
        gate_grad(G, g, x, h, qt, count, {dz1, dz2, dz3}, sg, hid)
      end
    end
  end
  return loss / count + gate_ridge(G, x, g, G.decay), g
end

--- Fits gate_w, gate_b on problems (same heads and head_dim) with Adam
--- (lr 0.05, `steps`), starting at the stand-in's gates (w = 0, logits -4,
--- 4, -4 for cmp, slc, swa). Returns {gate_w =, gate_b =} and a report.
--- With phi_hidden ~= 0 (paper variant) the MLP phi is fitted as well
--- (M.fit_phi).
function M.fit_gates(probs, o)
  local p = o.params
  local data = {}
  for i, prob in ipairs(probs) do data[i] = M.fit_data(prob, p) end
  local hq, d = data[1].hq, data[1].d
  for i, D in ipairs(data) do
    if D.hq ~= hq or D.d ~= d then
      sl.fail("nsa fit: input %d has %d heads of dim %d, input 1 has %d of dim %d; expected the same", i, D.hq, D.d, hq, d)
    end
  end
  local G = M.gate_model(hq, d, p.gate_hidden or 0)
  G.decay = p.gate_decay
  local x = M.gate_init(G, {}, o.seed)
  G.x0 = {table.unpack(x, 1, G.n)}
  local before, after
  x, before, after = T.adam(x, function(y) return M.fit_loss_grad(data, y, G) end, {steps = o.steps, lr = o.lr or 0.05})
  local what = G.kind == "mlp" and string.format("gate MLP hidden %d, ridge %g; ", G.m, G.decay or 0) or ""
  return M.gate_tensors(G, x),
    {loss_before = before, loss_after = after, optimiser = "adam(" .. what .. "lr=" .. (o.lr or 0.05) .. ", steps=" .. o.steps .. ")"}
end

-- ---- fitting the MLP phi (issue 14, session 4) ----
-- The parameters of the joint fit are one flat array x: the gate part of
-- M.fit_loss_grad (gate_w [Hq, 3, D] then gate_b [Hq, 3]) followed, for k
-- then v and each kv head g, by W1 [l·D, M] (row-major), b1 [M], W2 [M, D],
-- b2 [D]. The loss is M.fit_loss_grad's (mean squared output error vs dense
-- attention, averaged over every output element of every problem) with
-- o_cmp computed here from phi (only complete windows: a window that runs
-- past the row is never visible) and o_slc, o_swa taken from the op with the
-- blocks chosen by the current phi (held fixed between re-selections: the
-- top-n is not differentiable).

--- Offsets of the joint parameter array: {nb (start of gate_b), gates
--- (count of gate entries), k = {g = {w1, b1, w2, b2}}, v = ..., n (total),
--- L (= l·D), M, D, hq, hkv}.
function M.phi_layout(hq, hkv, d, l, m, G)
  local L = l * d
  G = G or M.gate_model(hq, d, 0)
  local lay = {nb = G.nb, gates = G.n, G = G, L = L, M = m, D = d, hq = hq, hkv = hkv}
  local off = lay.gates
  for _, side in ipairs{"k", "v"} do
    lay[side] = {}
    for g = 1, hkv do
      local o = {w1 = off, b1 = off + L * m, w2 = off + L * m + m, b2 = off + L * m + m + m * d}
      off = o.b2 + d
      lay[side][g] = o
    end
  end
  lay.n = off
  return lay
end

-- Flattened complete windows [i s, i s + l) of x (heads table [H][t][D]):
-- X[h][i] = {x[i s][1..D], x[i s + 1][1..D], ...} (l·D numbers), i = 1..nc.
local function flat_windows(x, l, s, nc, d)
  local X = {}
  for h = 1, #x do
    X[h] = {}
    for i = 1, nc do
      local w, t0 = {}, (i - 1) * s
      for r = 0, l - 1 do
        local row = x[h][t0 + r + 1]
        for e = 1, d do w[r * d + e] = row[e] end
      end
      X[h][i] = w
    end
  end
  return X
end

--- The joint fit's data of one problem: q, dense output, the flattened
--- complete windows of k and v, per row the count of visible compressed
--- tokens, and (filled by M.phi_reselect) the selection and window branch
--- outputs with unit gates.
function M.phi_data(prob, p)
  local op = op_params(p)
  local hq, nq, d, hkv, nk = dims(prob)
  if nq ~= nk then sl.fail("nsa fit: input has %d query rows and %d keys; expected a prefill capture (equal)", nq, nk) end
  local nc = nk >= op.l and (nk - op.l) // op.s + 1 or 0
  local vis = {}
  for t = 1, nq do
    local pos = t - 1
    vis[t] = pos >= op.l - 1 and math.min(nc, (pos - op.l + 1) // op.s + 1) or 0
  end
  local dense = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true, backend = prob.backend})
  return {prob = prob, op = op, q = E.heads(prob.q), dense = E.heads(dense), hq = hq, hkv = hkv, nq = nq, d = d,
    nc = nc, vis = vis, xk = flat_windows(E.heads(prob.k), op.l, op.s, nc, d),
    xv = flat_windows(E.heads(prob.v), op.l, op.s, nc, d), scale = 1 / math.sqrt(d)}
end

-- The MLP phi of every complete window of one side: y[g][i] (D numbers),
-- act[g][i] (M numbers after the ReLU).
local function phi_forward(X, x, lay, side, nc)
  local L, m, d = lay.L, lay.M, lay.D
  local y, act = {}, {}
  for g = 1, lay.hkv do
    local o = lay[side][g]
    y[g], act[g] = {}, {}
    for i = 1, nc do
      local w, a = X[g][i], {}
      for j = 1, m do a[j] = x[o.b1 + j] end
      for r = 1, L do
        local xv = w[r]
        if xv ~= 0 then
          local base = o.w1 + (r - 1) * m
          for j = 1, m do a[j] = a[j] + xv * x[base + j] end
        end
      end
      local out = {}
      for c = 1, d do out[c] = x[o.b2 + c] end
      for j = 1, m do
        local aj = a[j]
        if aj > 0 then
          local base = o.w2 + (j - 1) * d
          for c = 1, d do out[c] = out[c] + aj * x[base + c] end
        else
          a[j] = 0
        end
      end
      y[g][i], act[g][i] = out, a
    end
  end
  return y, act
end

-- Back through the MLP of one side: dy[g][i] (D numbers) into g.
local function phi_backward(X, x, lay, side, act, dy, g_out, nc)
  local L, m, d = lay.L, lay.M, lay.D
  for g = 1, lay.hkv do
    local o = lay[side][g]
    for i = 1, nc do
      local dyi = dy[g][i]
      if dyi then
        local a, w = act[g][i], X[g][i]
        for c = 1, d do g_out[o.b2 + c] = g_out[o.b2 + c] + dyi[c] end
        local dpre = {}
        for j = 1, m do
          local base, aj = o.w2 + (j - 1) * d, a[j]
          local s = 0
          for c = 1, d do
            s = s + x[base + c] * dyi[c]
            g_out[base + c] = g_out[base + c] + aj * dyi[c]
          end
          dpre[j] = aj > 0 and s or 0
        end
        for j = 1, m do g_out[o.b1 + j] = g_out[o.b1 + j] + dpre[j] end
        for r = 1, L do
          local xv = w[r]
          if xv ~= 0 then
            local base = o.w1 + (r - 1) * m
            for j = 1, m do g_out[base + j] = g_out[base + j] + xv * dpre[j] end
          end
        end
      end
    end
  end
end

--- Loss and gradient of the joint fit at x (layout lay) over data (each
--- with br[2], br[3] set): o = σ(z_cmp)·o_cmp(phi) + σ(z_slc)·o_slc +
--- σ(z_swa)·o_swa, z_b = gate_w[h, b]·q_t + gate_b[h, b]; o_cmp =
--- softmax(scale·q·kc)·vc over the visible complete windows. Backward:
--- dL/do_cmp = σ(z_cmp)·2r/N; dvc_i += P_i·do; dz_i = P_i·(do·vc_i - Σ_j
--- P_j do·vc_j); dkc_i += scale·dz_i·q; then through each window's MLP.
function M.phi_loss_grad(data, x, lay)
  local d, G = lay.D, lay.hq // lay.hkv
  local g, loss, count = {}, 0, 0
  for i = 1, lay.n do g[i] = 0 end
  for _, Dt in ipairs(data) do count = count + Dt.hq * Dt.nq * Dt.d end
  for _, Dt in ipairs(data) do
    local nc = Dt.nc
    local kc, ak = phi_forward(Dt.xk, x, lay, "k", nc)
    local vc, av = phi_forward(Dt.xv, x, lay, "v", nc)
    local dk, dv = {}, {}
    for kv = 1, lay.hkv do dk[kv], dv[kv] = {}, {} end
    for h = 1, lay.hq do
      local kv = (h - 1) // G + 1
      local kch, vch, dkh, dvh = kc[kv], vc[kv], dk[kv], dv[kv]
      for t = 1, Dt.nq do
        local qt, nv = Dt.q[h][t], Dt.vis[t]
        -- compressed branch
        local P, oc = {}, {}
        for e = 1, d do oc[e] = 0 end
        if nv > 0 then
          local mx = -math.huge
          for i = 1, nv do
            local ki, z = kch[i], 0
            for e = 1, d do z = z + qt[e] * ki[e] end
            z = z * Dt.scale
            P[i] = z
            if z > mx then mx = z end
          end
          local sum = 0
          for i = 1, nv do P[i] = math.exp(P[i] - mx); sum = sum + P[i] end
          for i = 1, nv do
            local pi, vi = P[i] / sum, vch[i]
            P[i] = pi
            for e = 1, d do oc[e] = oc[e] + pi * vi[e] end
          end
        end
        -- gates
        local sg, hid = gate_eval(lay.G, x, h, qt)
        local o2, o3, ref = Dt.br[2][h][t], Dt.br[3][h][t], Dt.dense[h][t]
        local dz1, dz2, dz3, r = 0, 0, 0, {}
        for e = 1, d do
          local re = sg[1] * oc[e] + sg[2] * o2[e] + sg[3] * o3[e] - ref[e]
          r[e] = re
          loss = loss + re * re
          dz1, dz2, dz3 = dz1 + re * oc[e], dz2 + re * o2[e], dz3 + re * o3[e]
        end
        gate_grad(lay.G, g, x, h, qt, count, {dz1, dz2, dz3}, sg, hid)
        if nv > 0 then
          local cdo = 2 / count * sg[1]
          local dov, dot = {}, 0
          for i = 1, nv do
            local vi, s = vch[i], 0
            for e = 1, d do s = s + r[e] * vi[e] end
            dov[i] = cdo * s
            dot = dot + P[i] * dov[i]
          end
          for i = 1, nv do
            local pi = P[i]
            local dvi = dvh[i]
            if not dvi then dvi = {}; for e = 1, d do dvi[e] = 0 end; dvh[i] = dvi end
            for e = 1, d do dvi[e] = dvi[e] + pi * cdo * r[e] end
            local dzi = pi * (dov[i] - dot) * Dt.scale
            local dki = dkh[i]
            if not dki then dki = {}; for e = 1, d do dki[e] = 0 end; dkh[i] = dki end
            for e = 1, d do dki[e] = dki[e] + dzi * qt[e] end
          end
        end
      end
    end
    phi_backward(Dt.xk, x, lay, "k", ak, dk, g, nc)
    phi_backward(Dt.xv, x, lay, "v", av, dv, g, nc)
  end
  loss = loss / count + gate_ridge(lay.G, x, g, lay.G.decay)
  if lay.decay and lay.decay > 0 then
    -- ridge toward the initial (mean-pool) phi: decay · Σ (x - x0)² over the phi entries
    local dec, x0 = lay.decay, lay.x0
    for i = lay.gates + 1, lay.n do
      local dx = x[i] - x0[i]
      loss = loss + dec * dx * dx
      g[i] = g[i] + 2 * dec * dx
    end
  end
  return loss, g
end

--- The weights of x (layout lay) as the file's tensors: gate_w, gate_b,
--- k_compress.*, v_compress.*.
function M.phi_tensors(x, lay)
  local hkv, d, L, m = lay.hkv, lay.D, lay.L, lay.M
  local out = M.gate_tensors(lay.G, x)
  for _, side in ipairs{"k", "v"} do
    local w1, b1, w2, b2 = {}, {}, {}, {}
    for g = 1, hkv do
      local o = lay[side][g]
      w1[g], b1[g], w2[g], b2[g] = {}, {}, {}, {}
      for r = 1, L do local row = {} for j = 1, m do row[j] = x[o.w1 + (r - 1) * m + j] end w1[g][r] = row end
      for j = 1, m do b1[g][j] = x[o.b1 + j] end
      for j = 1, m do local row = {} for c = 1, d do row[c] = x[o.w2 + (j - 1) * d + c] end w2[g][j] = row end
      for c = 1, d do b2[g][c] = x[o.b2 + c] end
    end
    local pre = side .. "_compress"
    out[pre .. ".w1"], out[pre .. ".b1"], out[pre .. ".w2"], out[pre .. ".b2"] =
      sl.tensor(w1), sl.tensor(b1), sl.tensor(w2), sl.tensor(b2)
  end
  return out
end

--- Re-selection: the op's selection and window branches (unit gates) with
--- the blocks the current phi picks, into each data set's br[2], br[3].
function M.phi_reselect(data, x, lay)
  for _, Dt in ipairs(data) do
    local prob, op = Dt.prob, Dt.op
    local kc, vc = phi_forward(Dt.xk, x, lay, "k", Dt.nc), phi_forward(Dt.xv, x, lay, "v", Dt.nc)
    if Dt.nc == 0 then   -- no complete window: one zero token no query sees
      local z = {}
      for g = 1, lay.hkv do local row = {} for c = 1, lay.D do row[c] = 0 end z[g] = {row} end
      kc, vc = z, z
    end
    local kct, vct = sl.tensor(kc), sl.tensor(vc)
    Dt.br = {}
    for b = 2, 3 do
      local gc, gs, gw = const_gates(prob, 0, b == 2 and 1 or 0, b == 3 and 1 or 0)
      Dt.br[b] = E.heads((forward(prob, op, kct, vct, gc, gs, gw)))
    end
  end
end

--- The initial point of the joint fit: the stand-in's gates (w = 0, logits
--- -4, 4, -4) and the MLP that equals mean pooling (pe = 0): W1 = I/l per
--- slot on the first D hidden units, b1 = shift (every unit stays active:
--- shift = 1 + the largest |k|, |v| of the data), W2 = I, b2 = -shift;
--- hidden units past D start with W1 ~ N(0, 0.01²) (seeded), b1 = 0, W2 = 0.
function M.phi_init(lay, l, shift, seed)
  local x = M.gate_init(lay.G, {}, seed)
  for i = lay.gates + 1, lay.n do x[i] = 0 end
  local d, m = lay.D, lay.M
  local extra = m > d and sl.randn({2 * lay.hkv * lay.L * (m - d)}, {seed = seed or 1, std = 0.01}):totable() or {}
  local ei = 0
  for _, side in ipairs{"k", "v"} do
    for g = 1, lay.hkv do
      local o = lay[side][g]
      for r = 1, lay.L do
        local e = (r - 1) % d + 1
        for j = 1, m do
          if j <= d then
            x[o.w1 + (r - 1) * m + j] = j == e and 1 / l or 0
          else
            ei = ei + 1
            x[o.w1 + (r - 1) * m + j] = extra[ei]
          end
        end
      end
      for j = 1, math.min(m, d) do
        x[o.b1 + j] = shift
        x[o.w2 + (j - 1) * d + j] = 1
      end
      for c = 1, d do x[o.b2 + c] = -shift end
    end
  end
  return x
end

--- The joint fit (paper variant): gate_w, gate_b and the MLP phi of k and v
--- (hidden width phi_hidden, -1: head_dim) by Adam (Kingma & Ba: beta1 0.9,
--- beta2 0.999, eps 1e-8; lr 0.05 for the gates, phi_lr for phi), `steps`
--- steps, the blocks re-selected with the current phi every `reselect`
--- steps (and once at the end, for the reported loss).
function M.fit_phi(probs, o)
  local p = o.params
  local data = {}
  for i, prob in ipairs(probs) do data[i] = M.phi_data(prob, p) end
  local hq, hkv, d = data[1].hq, data[1].hkv, data[1].d
  local shift = 0
  for i, Dt in ipairs(data) do
    if Dt.hq ~= hq or Dt.d ~= d or Dt.hkv ~= hkv then
      sl.fail("nsa fit: input %d has %d/%d heads of dim %d, input 1 has %d/%d of dim %d; expected the same", i, Dt.hq,
        Dt.hkv, Dt.d, hq, hkv, d)
    end
    for _, X in ipairs{Dt.xk, Dt.xv} do
      for _, hw in ipairs(X) do for _, w in ipairs(hw) do for _, v in ipairs(w) do shift = math.max(shift, math.abs(v)) end end end
    end
  end
  local m = p.phi_hidden < 0 and d or p.phi_hidden
  local op = data[1].op
  local G = M.gate_model(hq, d, p.gate_hidden or 0)
  G.decay = p.gate_decay
  local lay = M.phi_layout(hq, hkv, d, op.l, m, G)
  local x = M.phi_init(lay, op.l, 1 + shift, o.seed)
  G.x0 = {table.unpack(x, 1, G.n)}
  lay.x0, lay.decay = {}, p.phi_decay
  for i = 1, lay.n do lay.x0[i] = x[i] end
  local lr_g, lr_p = o.lr or 0.05, p.phi_lr
  local b1, b2, eps = 0.9, 0.999, 1e-8
  local mm, vv = {}, {}
  for i = 1, lay.n do mm[i], vv[i] = 0, 0 end
  local before, reselects
  reselects = 0
  for step = 1, o.steps do
    if (step - 1) % p.reselect == 0 then M.phi_reselect(data, x, lay); reselects = reselects + 1 end
    local loss, g = M.phi_loss_grad(data, x, lay)
    before = before or loss
    for i = 1, lay.n do
      mm[i] = b1 * mm[i] + (1 - b1) * g[i]
      vv[i] = b2 * vv[i] + (1 - b2) * g[i] * g[i]
      local mh, vh = mm[i] / (1 - b1 ^ step), vv[i] / (1 - b2 ^ step)
      x[i] = x[i] - (i <= lay.gates and lr_g or lr_p) * mh / (math.sqrt(vh) + eps)
    end
  end
  M.phi_reselect(data, x, lay)
  local after = M.phi_loss_grad(data, x, lay)
  return M.phi_tensors(x, lay), {loss_before = before, loss_after = after,
    optimiser = string.format("adam(lr=%g gates, %g phi; steps=%d; blocks re-selected every %d steps, %d times; phi hidden %d; " ..
      "ridge %g toward mean pooling)", lr_g, lr_p, o.steps, p.reselect, reselects + 1, m, p.phi_decay)}
end

function M.fit(probs, o)
  local p = o.params
  if p.phi_hidden ~= 0 and p.variant == "paper" then return M.fit_phi(probs, o) end
  return M.fit_gates(probs, o)
end

M.fit_doc = "gate_w, gate_b (or, gate_hidden > 0, the gate MLP gate_mlp.*) and (paper variant, phi_hidden ~= 0) the MLP " ..
  "phi k_compress.*, v_compress.*: Adam on the " ..
  "mean squared output error vs dense attention, block selection held fixed between re-selections"


return M
