-- test_fidelity.lua — the reference options of issue 20 against
-- re-implementations of the reference code written here, in plain float64
-- Lua, from the reference's own steps (not from the recipes):
--   * flexprefill reference = true selects exactly the blocks of
--     bytedance/FlexPrefill get_active_blocks (probe softmax, profiles,
--     score_cover_topk // 128 + 1 counts, sqrt-JSD head switch, vertical /
--     slash top-k with the forced blocks, score_cover_idx on query-aware
--     heads) on every head, for all-VS, all-QA and mixed τ;
--   * xattention reference = true selects exactly what a literal port of
--     mit-han-lab/x-attention find_blocks_chunked (mask, sorted values laid
--     out [0, forced, others], argsort with the 100000·(1+x) trick, cumsum
--     without self, excluded -> index 0, scatter) + Xattention_prefill's
--     tril/eye selects from the estimator's block scores;
--   * in both, the same pipeline with a score-blind selector (first blocks by
--     index) disagrees with the method: the comparison has the power to
--     catch a wrong estimator;
--   * eval --save-mask bits (sparselab.savemask): attention computed here in
--     float64 over exactly the saved bits reproduces each method's output
--     (sliding_window: one mask head for four query heads; vertical_slash: a
--     composite mask; xattention; dense non-causal), a flipped bit does not,
--     and sizes above 2^28 elements are refused in one line.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local savemask = require "sparselab.savemask"
local test, eq, truthy = H.test, H.eq, H.truthy

local function problem(n, seed, causal)
  local q, k, v = sl.synthetic{heads = 4, kv_heads = 2, n = n, d = 16, seed = seed}
  return sl.problem{q = q, k = k, v = v, causal = causal ~= false}, q:totable(), k:totable(), v:totable()
end

local function dot(a, b)
  local s = 0
  for i = 1, #a do s = s + a[i] * b[i] end
  return s
end

local function softmax(x)
  local m = -math.huge
  for i = 1, #x do if x[i] > m then m = x[i] end end
  local s, out = 0, {}
  for i = 1, #x do out[i] = math.exp(x[i] - m); s = s + out[i] end
  for i = 1, #x do out[i] = out[i] / s end
  return out
end

-- Mean of rows a..b (1-based, inclusive) of a matrix, times scale.
local function mean_rows(m, a, b, scale)
  local d = #m[1]
  local out = {}
  for t = 1, d do
    local s = 0
    for i = a, b do s = s + m[i][t] end
    out[t] = s / (b - a + 1) * (scale or 1)
  end
  return out
end

-- Indices of the k largest of x (1-based), lower index first on ties.
local function topk(x, k)
  local idx = {}
  for i = 1, #x do idx[i] = i end
  table.sort(idx, function(a, b) if x[a] ~= x[b] then return x[a] > x[b] end return a < b end)
  local out = {}
  for i = 1, math.min(k, #idx) do out[i] = idx[i] end
  return out
end

-- Block keep [H][nb][nb] (1 = kept) of a method's executed mask: block (r, c), c <= r, is kept when the bit at the
-- block's last row and first column is set.
local function kept_blocks(mask, n, bs)
  local t = sl.mask.as_block(mask):to_bits()
  local nb = (n + bs - 1) // bs
  local out = {}
  for h = 1, t:shape()[1] do
    local bits = {[h] = t:narrow(1, h, 1):totable()[1]}
    out[h] = {}
    for r = 1, nb do
      out[h][r] = {}
      for c = 1, r do out[h][r][c] = bits[h][math.min(r * bs, n)][(c - 1) * bs + 1] end
    end
  end
  return out
end

local function same_blocks(a, b, nb)
  for h = 1, #a do
    for r = 1, nb do
      for c = 1, r do
        if (a[h][r][c] or 0) ~= (b[h][r][c] or 0) then return false, string.format("head %d block (%d, %d): %d vs %d",
          h, r - 1, c - 1, a[h][r][c] or 0, b[h][r][c] or 0) end
      end
    end
  end
  return true
end

-- ---- flexprefill: get_active_blocks, re-implemented ---------------------------------------

-- blind = true: the same counts, but the first blocks by index instead of the top scores (a score-blind selector).
local function flex_reference(q, k, o, blind)
  local hq, n, d = #q, #q[1], #q[1][1]
  local g = hq // #k
  local bs, gamma, tau = o.block, o.gamma, o.tau
  local nb = math.ceil(n / bs)
  local min_b, max_b = math.ceil(o.min_budget / bs), nb
  local sc = 1 / math.sqrt(d)
  local keep = {}
  for h = 1, hq do
    local K = k[(h - 1) // g + 1]
    local Q = q[h]
    -- 1. the probe: last bs queries / sqrt(d), causal on the final corner, softmax
    local v, s = {}, {}
    for j = 1, n do v[j] = 0 end
    for t = 0, n - 1 do s[t] = 0 end -- s[t]: sum_all_diagonal_matrix index t (offset n-1-t)
    for i = 1, bs do
      local pos = n - bs + i
      local x = {}
      for j = 1, pos do x[j] = dot(Q[pos], K[j]) * sc end
      local a = softmax(x)
      for j = 1, pos do
        v[j] = v[j] + a[j] / bs
        local off = pos - j
        s[n - 1 - off] = s[n - 1 - off] + a[j] / bs
      end
    end
    -- 2. score_cover_topk(x, γ) // 128 + 1, clamped
    local function cover(x, lo, hi)
      local sorted = {}
      for i = lo, hi do sorted[#sorted + 1] = x[i] end
      table.sort(sorted, function(a, b) return a > b end)
      local cum, cnt = 0, 0
      for i = 1, #sorted do cum = cum + sorted[i]; if cum <= gamma then cnt = cnt + 1 end end
      return math.min(math.max((cnt + 1) // 128 + 1, min_b), max_b)
    end
    local nv, ns = cover(v, 1, n), cover(s, 0, n - 1)
    -- 3. block sum pools
    local vb, sb = {}, {}
    for c = 1, nb do vb[c], sb[c] = 0, 0 end
    for j = 1, n do vb[(j - 1) // bs + 1] = vb[(j - 1) // bs + 1] + v[j] end
    for t = 0, n - 1 do sb[t // bs + 1] = sb[t // bs + 1] + s[t] end
    -- 4. sqrt-JSD of softmax(mean probe query · block-mean keys) and the vertical block sums
    local qm = mean_rows(Q, n - bs + 1, n, sc)
    local kbar = {}
    for c = 1, nb do kbar[c] = mean_rows(K, (c - 1) * bs + 1, math.min(c * bs, n)) end
    local logits = {}
    for c = 1, nb do logits[c] = dot(qm, kbar[c]) end
    local avg = softmax(logits)
    local js = 0
    for c = 1, nb do
      local m = (avg[c] + vb[c]) / 2
      js = js + 0.5 * avg[c] * math.log(avg[c] / m) + 0.5 * vb[c] * math.log(vb[c] / m)
    end
    local qa = math.sqrt(js) < tau
    if qa then nv, ns = min_b, min_b end
    -- 5. vertical[:1] = inf, slash[-1:] = inf; top n; slash index t block -> offset block nb-1-t
    local K2 = {}
    for r = 1, nb do K2[r] = {} end
    local vsc, ssc = {}, {}
    for c = 1, nb do vsc[c], ssc[c] = vb[c], sb[c] end
    vsc[1], ssc[nb] = math.huge, math.huge
    local cols, tops
    if blind then
      cols, tops = {}, {}
      for i = 1, nv do cols[i] = i end
      for i = 1, ns do tops[i] = nb - i + 1 end
    else
      cols, tops = topk(vsc, nv), topk(ssc, ns)
    end
    for _, c in ipairs(cols) do for r = c, nb do K2[r][c] = 1 end end
    for _, tb in ipairs(tops) do
      local off = nb - tb -- offset block (0-based)
      for r = off + 1, nb do K2[r][r - off] = 1 end
    end
    -- 6. query-aware: block estimate over the causal block matrix, score_cover_idx(γ · nb)
    if qa then
      local flat = {}
      for r = 1, nb do
        local qbar = mean_rows(Q, (r - 1) * bs + 1, math.min(r * bs, n), sc)
        local lg = {}
        for c = 1, r do lg[c] = dot(qbar, kbar[c]) end
        local pr = softmax(lg)
        for c = 1, r do flat[#flat + 1] = {pr[c], r, c} end
      end
      if blind then
        table.sort(flat, function(a, b) if a[2] ~= b[2] then return a[2] < b[2] end return a[3] < b[3] end)
      else
        table.sort(flat, function(a, b) return a[1] > b[1] end)
      end
      local cum = 0
      for _, e in ipairs(flat) do
        cum = cum + e[1]
        if cum <= gamma * nb then K2[e[2]][e[3]] = 1 end
      end
    end
    keep[h] = K2
  end
  return keep, nb
end

test("flexprefill reference = true: exactly get_active_blocks' blocks on every head (VS, QA, mixed)", function()
  local n, bs = 640, 16
  local prob, q, k = problem(n, 5)
  local qa_seen, vs_seen = 0, 0
  for _, tau in ipairs{0, 1, 0.12} do
    local o = {gamma = 0.9, tau = tau, block = bs, min_budget = 32, reference = true}
    local est = sl.methods.get("flexprefill").estimate(prob, sl.registry.resolve(sl.methods.get("flexprefill"), o))
    local got = kept_blocks(est.mask, n, bs)
    local want, nb = flex_reference(q, k, o)
    local ok, why = same_blocks(got, want, nb)
    truthy(ok, "τ = " .. tau .. ": " .. tostring(why))
    qa_seen = qa_seen + est.extra.query_aware_heads
    vs_seen = vs_seen + (4 - est.extra.query_aware_heads)
    -- power: the score-blind selector with the same counts is told apart
    local blind = flex_reference(q, k, o, true)
    truthy(not same_blocks(got, blind, nb), "τ = " .. tau .. ": a score-blind selector differs")
  end
  truthy(qa_seen >= 4 and vs_seen >= 4, "both head kinds compared")
end)

test("flexprefill: the default keeps the paper's crossing block that reference = true leaves out", function()
  local n, bs = 640, 16
  local prob = problem(n, 5)
  local m = sl.methods.get("flexprefill")
  local ref = m.estimate(prob, sl.registry.resolve(m, {gamma = 0.9, tau = 1, block = bs, min_budget = 32, reference = true}))
  local def = m.estimate(prob, sl.registry.resolve(m, {gamma = 0.9, tau = 1, block = bs, min_budget = 32, fixed_div = true}))
  local a, b = kept_blocks(ref.mask, n, bs), kept_blocks(def.mask, n, bs)
  local nb = n // bs
  for h = 1, 4 do
    local na, nb2, sub = 0, 0, true
    for r = 1, nb do
      for c = 1, r do
        na, nb2 = na + (a[h][r][c] or 0), nb2 + (b[h][r][c] or 0)
        if (a[h][r][c] or 0) == 1 and (b[h][r][c] or 0) ~= 1 then sub = false end
      end
    end
    truthy(sub, "head " .. h .. ": the reference's blocks are inside the default's")
    truthy(nb2 - na <= 1, "head " .. h .. ": at most the one crossing block more")
  end
end)

-- ---- xattention: find_blocks_chunked, a literal port -------------------------------------

-- rows: block scores [nb][nb]; returns keep [nb][nb]. blind: the scores replaced by index order.
local function find_blocks_chunked(rows, tau, nb, blind)
  local keep = {}
  for r = 1, nb do
    local x = {}
    for c = 1, nb do
      x[c] = c <= r and rows[r][c] or 0
      if blind then x[c] = c <= r and (nb - c + 1) or 0 end
    end
    local total = 0
    for c = 1, nb do total = total + x[c] end
    local required = total * tau
    -- mask[:, :, :, 0] = 1; mask[..., current_index : current_index + chunk_num] = eye (current_index 0)
    local mask = {}
    for c = 1, nb do mask[c] = false end
    mask[1] = true
    for c = 1, nb do mask[c] = (c == r) end
    local other = {}
    for c = 1, nb do other[c] = mask[c] and 0 or x[c] end
    local sorted = {}
    for c = 1, nb do sorted[c] = other[c] end
    table.sort(sorted, function(a, b) return a > b end)
    local forced_sum = 0
    for c = 1, nb do if mask[c] then forced_sum = forced_sum + x[c] end end
    local sv = {0, forced_sum}
    for i = 1, nb - 2 do sv[#sv + 1] = sorted[i] end
    local key, index = {}, {}
    for c = 1, nb do key[c] = mask[c] and 100000 * (1 + x[c]) or x[c]; index[c] = c end
    table.sort(index, function(a, b) if key[a] ~= key[b] then return key[a] > key[b] end return a < b end)
    local cws = {0}
    for i = 2, nb do cws[i] = cws[i - 1] + sv[i - 1] end
    local out = {}
    for c = 1, nb do out[c] = mask[c] and 1 or 0 end
    for t = 1, nb do
      local idx = cws[t] < required and index[t] or 1
      out[idx] = 1
    end
    -- Xattention_prefill: tril, then the diagonal
    for c = r + 1, nb do out[c] = 0 end
    out[r] = 1
    keep[r] = out
  end
  return keep
end

test("xattention reference = true: exactly find_blocks_chunked's selection (single-chunk prefill)", function()
  local n, bs = 256, 16
  local prob = problem(n, 9)
  local m = sl.methods.get("xattention")
  local differs_blind, differs_card = false, false
  for _, tau in ipairs{0, 0.5, 0.9, 0.97} do
    local p = sl.registry.resolve(m, {threshold = tau, stride = 4, block = bs, reference = true})
    local est = m.estimate(prob, p)
    local A = est.scores:totable()
    local got = kept_blocks(est.mask, n, bs)
    local want, blind = {}, {}
    for h = 1, #A do
      want[h] = find_blocks_chunked(A[h], tau, n // bs)
      blind[h] = find_blocks_chunked(A[h], tau, n // bs, true)
    end
    local ok, why = same_blocks(got, want, n // bs)
    truthy(ok, "τ = " .. tau .. ": " .. tostring(why))
    if not same_blocks(got, blind, n // bs) then differs_blind = true end
    local card = kept_blocks(m.estimate(prob, sl.registry.resolve(m, {threshold = tau, stride = 4, block = bs})).mask, n, bs)
    if not same_blocks(card, got, n // bs) then differs_card = true end
  end
  truthy(differs_blind, "a score-blind selector is told apart")
  truthy(differs_card, "the card's rule (default) and the reference's differ on these inputs")
end)

-- ---- issue 20 defects -----------------------------------------------------------------

test("unisparse on a non-causal problem: the forced block is the diagonal, not the last key block", function()
  local n, S = 96, 16
  local prob = problem(n, 31, false)
  local m = sl.methods.get("unisparse")
  -- tau = 0: nothing but the forced block; each block row r keeps exactly block r
  local got = sl.mask.as_block(m.mask(prob, sl.registry.resolve(m, {bq = S, bk = S, c_q = 4, c_k = 4, tau = 0})))
  local bits = got:to_bits():totable()
  for h = 1, #bits do
    for r = 1, n // S do
      local row = bits[h][(r - 1) * S + 1]
      for c = 1, n // S do
        eq(row[(c - 1) * S + 1], c == r and 1 or 0, string.format("head %d block row %d key block %d", h, r, c))
      end
    end
  end
end)

test("seer_attention: the oracle has an id of its own; seer_attention without a gate file is refused", function()
  local prob = problem(64, 41)
  local r = sl.eval("seer_attention_oracle", prob, {params = {bq = 16, bk = 16}})
  eq(r.method, "seer_attention_oracle", "the oracle's results carry its id")
  H.raises(function() sl.eval("seer_attention", prob, {params = {bq = 16, bk = 16}}) end, "needs gate=FILE")
  eq(sl.methods.get("seer_attention").params.gate ~= nil, true, "seer_attention has the gate parameter")
  eq(sl.methods.get("seer_attention_oracle").params.gate, nil, "the oracle has none")
end)

test("biformer reference_scale: token attention at 1/sqrt(heads·head_dim), as bra_legacy.py's q_pix * self.scale", function()
  local n = 32
  local prob, q, k, v = problem(n, 51, false)
  local m = sl.methods.get("biformer")
  -- every region routed: the mask is full, so the output is dense attention at the chosen scale
  local r = sl.eval(m, prob, {params = {bq = 8, bk = 8, topk = 4, reference_scale = true}})
  local d, hq = #q[1][1], #q
  local worst, O = 0, r.o:totable()
  for h = 1, hq do
    local K, V = k[(h - 1) // 2 + 1], v[(h - 1) // 2 + 1]
    for i = 1, n do
      local x = {}
      for j = 1, n do x[j] = dot(q[h][i], K[j]) / math.sqrt(hq * d) end
      local p = softmax(x)
      local o = O[h][i]
      for t = 1, d do
        local s = 0
        for j = 1, n do s = s + p[j] * V[j][t] end
        worst = math.max(worst, math.abs(s - o[t]))
      end
    end
  end
  truthy(worst < 1e-5, "max |o - float64 attention at 1/sqrt(heads·d)| = " .. worst)
  local r0 = sl.eval(m, prob, {params = {bq = 8, bk = 8, topk = 4}})
  truthy(sl.metric.max_abs(r0.o, r.o) > 1e-3, "the default (per-head scale) differs")
end)

-- ---- eval --save-mask ------------------------------------------------------------------

-- o [H][n][d] of attention over exactly the bits [H][n][n] (float64; GQA: head h reads KV head h / (H / Hkv)).
local function masked_attention(q, k, v, bits)
  local hq, n, d = #q, #q[1], #q[1][1]
  local g = hq // #k
  local out = {}
  for h = 1, hq do
    local K, V = k[(h - 1) // g + 1], v[(h - 1) // g + 1]
    out[h] = {}
    for i = 1, n do
      local x, idx = {}, {}
      for j = 1, #K do
        if bits[h][i][j] ~= 0 then
          x[#x + 1] = dot(q[h][i], K[j]) / math.sqrt(d)
          idx[#idx + 1] = j
        end
      end
      local p = softmax(x)
      local o = {}
      for t = 1, d do o[t] = 0 end
      for a, j in ipairs(idx) do for t = 1, d do o[t] = o[t] + p[a] * V[j][t] end end
      out[h][i] = o
    end
  end
  return out
end

local function max_diff(a, b)
  local m = 0
  for h = 1, #a do for i = 1, #a[h] do for t = 1, #a[h][i] do
    m = math.max(m, math.abs(a[h][i][t] - b[h][i][t]))
  end end end
  return m
end

test("--save-mask: attention over exactly the saved bits reproduces each method's output", function()
  local n = 64
  local cases = {
    {"sliding_window", {bq = 16, bk = 16}, 32, true},
    {"vertical_slash", {bq = 16, bk = 16}, nil, true},
    {"xattention", {block = 16, stride = 4, threshold = 0.6}, nil, true},
    {"dense", {}, nil, false},
  }
  for _, c in ipairs(cases) do
    local prob, q, k, v = problem(n, 21, c[4])
    local m = sl.methods.get(c[1])
    local r = sl.eval(m, prob, {params = c[2], budget = c[3]})
    local bits = savemask.bits(r, m, c[4])
    eq(bits:dtype(), "u8", c[1] .. ": u8")
    local s = bits:shape()
    eq(s[1] * 1000000 + s[2] * 1000 + s[3], 4 * 1000000 + n * 1000 + n, c[1] .. ": [H, n_q, n_k]")
    local b = bits:totable()
    local got = masked_attention(q, k, v, b)
    local d = max_diff(got, r.o:totable())
    truthy(d < 2e-4, string.format("%s: max |o - attention over the bits| = %.3g", c[1], d))
    if c[1] ~= "dense" then
      -- power: one kept pair removed (not a row's only one) changes the output
      for i = n, 1, -1 do
        local cnt, last = 0, nil
        for j = 1, n do if b[2][i][j] ~= 0 then cnt, last = cnt + 1, j end end
        if cnt > 1 then b[2][i][last] = 0; break end
      end
      truthy(max_diff(masked_attention(q, k, v, b), r.o:totable()) > 1e-4, c[1] .. ": a flipped bit is seen")
    end
  end
  H.raises(function() savemask.check(8, 16384, 16384) end, "above 2^28")
  savemask.check(1, 16384, 16384)
end)

H.done()
