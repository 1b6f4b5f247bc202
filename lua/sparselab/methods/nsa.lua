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
-- NOT implemented: the gate network on the hidden state x (it reads q
-- instead: captures hold no x); fitting the MLP phi or the gate MLP (only
-- gate_w/gate_b are fitted); decode with a compressed token appended every s steps (the op takes
-- Nq < Nk with the decode offset, but no incremental cache); training.
-- Fitting (`sparselab fit-params nsa`): gate_w, gate_b by Adam on the output
-- error vs dense attention (hand gradients, checked against finite
-- differences in tests/lua/test_methods_trainable.lua); compression is not
-- fitted (its gradient runs through the top-n selection).
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local STANDIN = "standin:mean_pool+gates(0,1,0)"

local dims = T.dims

-- The op parameters of a variant.
local function op_params(p)
  local l, s, init, loc = p.l, p.s, 1, 2
  if p.variant == "fla" then
    l, s, init, loc = p.bs, p.bs, 0, 1
  elseif p.variant ~= "paper" then
    sl.fail("nsa: variant must be 'paper' or 'fla', found '%s'", tostring(p.variant))
  end
  if l % s ~= 0 or p.bs % s ~= 0 then
    sl.fail("nsa: l = %d and bs = %d must be multiples of the stride s = %d (paper eq. 9 maps compressed scores to " ..
      "selection blocks in units of s)", l, p.bs, s)
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
local function setup(prob, p)
  local op = op_params(p)
  if (p.weights or "") == "" then return {}, STANDIN, op end
  local spec = weight_spec(prob, op)
  for _, e in ipairs(mlp_spec(prob, op, p.weights)) do spec[#spec + 1] = e end
  local ws = T.load_weights("nsa", p.weights, spec)
  local forms = (ws.g_cmp and 1 or 0) + (ws.gate_w and 1 or 0) + (ws["gate_mlp.w1"] and 1 or 0)
  if forms > 1 then
    sl.fail("nsa: weights %s: holds more than one gate form (g_cmp/g_slc/g_swa, gate_w/gate_b, gate_mlp.*); expected one",
      p.weights)
  end
  if ws.compress_key and ws["k_compress.w1"] then
    sl.fail("nsa: weights %s: holds both the linear phi (compress_key) and the MLP phi (k_compress.*); expected one", p.weights)
  end
  if ws["k_compress.w1"] and p.variant ~= "paper" then
    sl.fail("nsa: weights %s: k_compress.* is the paper's MLP phi; expected variant=paper", p.weights)
  end
  if ws.g_cmp and ws.gate_w then
    sl.fail("nsa: weights %s: holds both per-token gates (g_cmp, g_slc, g_swa) and gate_w/gate_b; expected one form",
      p.weights)
  end
  if ws.compress_key and p.variant ~= "paper" then
    sl.fail("nsa: weights %s: compress_key is FSA's linear phi of the paper variant; expected variant=paper", p.weights)
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
  phase = "prefill",
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
  },
  ops = {"trainable.compress", "trainable.nsa"},
  checks = {"compressed token i invisible to query t when i·s + l - 1 > t; first l - 1 queries o_cmp = 0, no NaN",
    "selected blocks within the causal ones, forced ones present", "overlap-weight mapping = brute-force token sum",
    "n = all blocks with gates (0,1,0) equals dense", "one block set per GQA group",
    "float64 independent implementation (both variants) to 1e-5", "score-blind selection loses recall",
    "bad weight files: one-line errors"},
  params_sources = {STANDIN, "sha256:<weights file>"},
}

M.setup, M.compress, M.forward, M.const_gates, M.q_gates = setup, compress, forward, const_gates, q_gates
M.mlp_gates = mlp_gates

function M.run(prob, p)
  local ws, source, op = setup(prob, p)
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
function M.fit_loss_grad(data, x)
  local hq, d = data[1].hq, data[1].d
  local nb = hq * 3 * d
  local g, loss, count = {}, 0, 0
  for i = 1, #x do g[i] = 0 end
  for _, D in ipairs(data) do count = count + D.hq * D.nq * D.d end
  for _, D in ipairs(data) do
    for h = 1, hq do
      for t = 1, D.nq do
        local qt, z, sg = D.q[h][t], {}, {}
        for b = 1, 3 do
          local zz, off = x[nb + (h - 1) * 3 + b], ((h - 1) * 3 + (b - 1)) * d
          for e = 1, d do zz = zz + x[off + e] * qt[e] end
          z[b], sg[b] = zz, sigmoid(zz)
        end
        local o1, o2, o3, ref = D.br[1][h][t], D.br[2][h][t], D.br[3][h][t], D.dense[h][t]
        local dz1, dz2, dz3 = 0, 0, 0
        for e = 1, d do
          local r = sg[1] * o1[e] + sg[2] * o2[e] + sg[3] * o3[e] - ref[e]
          loss = loss + r * r
          dz1, dz2, dz3 = dz1 + r * o1[e], dz2 + r * o2[e], dz3 + r * o3[e]
        end
        local dz = {dz1, dz2, dz3}
        for b = 1, 3 do
          local gz = 2 / count * dz[b] * sg[b] * (1 - sg[b])
          local off = ((h - 1) * 3 + (b - 1)) * d
          for e = 1, d do g[off + e] = g[off + e] + gz * qt[e] end
          g[nb + (h - 1) * 3 + b] = g[nb + (h - 1) * 3 + b] + gz
        end
      end
    end
  end
  return loss / count, g
end

--- Fits gate_w, gate_b on problems (same heads and head_dim) with Adam
--- (lr 0.05, `steps`), starting at the stand-in's gates (w = 0, logits -4,
--- 4, -4 for cmp, slc, swa). Returns {gate_w =, gate_b =} and a report.
function M.fit(probs, o)
  local p = o.params
  local data = {}
  for i, prob in ipairs(probs) do data[i] = M.fit_data(prob, p) end
  local hq, d = data[1].hq, data[1].d
  for i, D in ipairs(data) do
    if D.hq ~= hq or D.d ~= d then
      sl.fail("nsa fit: input %d has %d heads of dim %d, input 1 has %d of dim %d; expected the same", i, D.hq, D.d, hq, d)
    end
  end
  local x, nb = {}, hq * 3 * d
  for i = 1, nb do x[i] = 0 end
  for h = 1, hq do x[nb + (h - 1) * 3 + 1], x[nb + (h - 1) * 3 + 2], x[nb + (h - 1) * 3 + 3] = -4, 4, -4 end
  local before, after
  x, before, after = T.adam(x, function(y) return M.fit_loss_grad(data, y) end, {steps = o.steps, lr = o.lr or 0.05})
  local w, b = {}, {}
  for h = 1, hq do
    w[h], b[h] = {}, {}
    for br = 1, 3 do
      local off, row = ((h - 1) * 3 + (br - 1)) * d, {}
      for e = 1, d do row[e] = x[off + e] end
      w[h][br], b[h][br] = row, x[nb + (h - 1) * 3 + br]
    end
  end
  return {gate_w = sl.tensor(w), gate_b = sl.tensor(b)},
    {loss_before = before, loss_after = after, optimiser = "adam(lr=" .. (o.lr or 0.05) .. ", steps=" .. o.steps .. ")"}
end

M.fit_doc = "gate_w, gate_b: Adam on the mean squared output error vs dense attention; compression not fitted"

return M
