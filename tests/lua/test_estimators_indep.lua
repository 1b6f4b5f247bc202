-- test_estimators_indep.lua — estimator checks for the dynamic methods
-- whose tests survived the score-blind mutation (tests/lua/test_mutation.lua):
-- each method's selection (or, for pbs_attn, its permutation) against a
-- float64 re-computation written here from the card's steps, on structured
-- synthetic inputs where the selection is far from trivial:
--   * minference_block_sparse: mean-pooled blocks, q̄·k̄ ranking, top-k per
--     query block (causal);
--   * sample_attention: strided sampled rows' exact softmax, column mass,
--     the smallest set of largest columns holding alpha of it, ∪ the local
--     window (r_w < 1, so the estimator decides);
--   * loopserve: windows of exact softmax rows, column and diagonal mass,
--     top-p lines of each kind ∪ the diagonal;
--   * pbs_attn: the segment-local key permutation from the last-block probe;
--   * anchor_attention: the stripes of a middle θ (its other tests check
--     θ = ±inf, where any selector that keeps all or nothing passes).
-- Names start with the method's id, so the mutation harness runs them.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy = H.test, H.eq, H.truthy

local HQ = 4

local function problem(n, seed)
  local q, k, v = sl.synthetic{heads = HQ, kv_heads = 2, n = n, d = 16, seed = seed}
  return sl.problem{q = q, k = k, v = v}, q:totable(), k:totable()
end

local function dot(a, b)
  local s = 0
  for i = 1, #a do s = s + a[i] * b[i] end
  return s
end

-- Exact softmax of row i (1-based) of head h over keys 1..last, scale 1/sqrt(d).
local function softmax_row(Q, K, i, last)
  local d = #Q[i]
  local x, m = {}, -math.huge
  for j = 1, last do x[j] = dot(Q[i], K[j]) / math.sqrt(d); if x[j] > m then m = x[j] end end
  local z = 0
  for j = 1, last do x[j] = math.exp(x[j] - m); z = z + x[j] end
  for j = 1, last do x[j] = x[j] / z end
  return x
end

-- Entries of x (a table indexed from lo to hi) forming the smallest set of largest values holding
-- alpha of their sum (ties: lower index first): a set {index = true}.
local function top_p(x, lo, hi, alpha)
  local idx, total = {}, 0
  for i = lo, hi do idx[#idx + 1] = i; total = total + x[i] end
  table.sort(idx, function(a, b) if x[a] ~= x[b] then return x[a] > x[b] end return a < b end)
  local set, cum = {}, 0
  for _, i in ipairs(idx) do
    if cum >= alpha * total then break end
    set[i] = true
    cum = cum + x[i]
  end
  return set
end

-- The executed mask's bits per head ([h][i][j], 1-based).
local function bits_of(mask)
  return sl.mask.as_block(mask):to_bits():totable()
end

-- Compares token bits with want(h, i, j) -> bool over the causal triangle; returns the first mismatch.
local function compare_bits(bits, n, want)
  for h = 1, HQ do
    local b = bits[#bits == 1 and 1 or h]
    for i = 1, n do
      for j = 1, i do
        if (b[i][j] ~= 0) ~= want(h, i, j) then
          return string.format("head %d pair (%d, %d): executed %d", h, i - 1, j - 1, b[i][j])
        end
      end
    end
  end
  return nil
end

local function est(id, prob, p)
  local m = sl.methods.get(id)
  return m.estimate(prob, sl.registry.resolve(m, p))
end

test("minference_block_sparse: the kept blocks are the top-k of mean-pooled q̄·k̄ per query block", function()
  local n, b, topk = 128, 16, 3
  local prob, q, k = problem(n, 201)
  local e = est("minference_block_sparse", prob, {bq = b, bk = b, topk = topk})
  local bits = bits_of(e.mask)
  local nb = n // b
  local function mean(M, blk)
    local out = {}
    for t = 1, #M[1] do
      local s = 0
      for i = (blk - 1) * b + 1, blk * b do s = s + M[i][t] end
      out[t] = s / b
    end
    return out
  end
  local keep = {}
  for h = 1, HQ do
    local Q, K = q[h], k[(h - 1) // 2 + 1]
    keep[h] = {}
    for r = 1, nb do
      local qm, sc = mean(Q, r), {}
      for c = 1, r do sc[c] = dot(qm, mean(K, c)) end
      local order = {}
      for c = 1, r do order[c] = c end
      table.sort(order, function(x, y) if sc[x] ~= sc[y] then return sc[x] > sc[y] end return x < y end)
      keep[h][r] = {}
      for t = 1, math.min(topk, r) do keep[h][r][order[t]] = true end
    end
  end
  local why = compare_bits(bits, n, function(h, i, j)
    return keep[h][(i - 1) // b + 1][(j - 1) // b + 1] == true
  end)
  truthy(why == nil, tostring(why))
end)

test("sample_attention: window ∪ the top-p columns of the sampled rows' exact softmax mass", function()
  local n, alpha, r_w, r_row = 128, 0.6, 0.05, 0.1
  local prob, q, k = problem(n, 211)
  local e = est("sample_attention", prob, {alpha = alpha, r_w = r_w, r_row = r_row, bq = 16, bk = 16})
  local w = math.ceil(r_w * n)
  local R = math.ceil(r_row * n)
  local cols = {}
  for h = 1, HQ do
    local Q, K = q[h], k[(h - 1) // 2 + 1]
    local c = {}
    for j = 1, n do c[j] = 0 end
    for t = 0, R - 1 do
      local i = (t + 1) * n // R -- 1-based row of 0-based (t + 1)·n/R - 1
      local a = softmax_row(Q, K, i, i)
      for j = 1, i do c[j] = c[j] + a[j] end
    end
    cols[h] = top_p(c, 1, n, alpha)
  end
  local n_cols = 0
  for _ in pairs(cols[1]) do n_cols = n_cols + 1 end
  truthy(n_cols > 0 and n_cols < n - w, "a non-trivial column set (" .. n_cols .. ")")
  local why = compare_bits(bits_of(e.mask), n, function(h, i, j) return i - j < w or cols[h][j] == true end)
  truthy(why == nil, tostring(why))
end)

test("loopserve: top-p vertical and slash lines of the sampled windows' exact softmax mass, ∪ the diagonal", function()
  local n, alpha, rows, windows = 128, 0.6, 8, 4
  local prob, q, k = problem(n, 221)
  local e = est("loopserve", prob, {alpha = alpha, rows = rows, windows = windows, bq = 16, bk = 16})
  local cols, offs = {}, {}
  for h = 1, HQ do
    local Q, K = q[h], k[(h - 1) // 2 + 1]
    local c, s = {}, {}
    for j = 1, n do c[j] = 0 end
    for o = 0, n - 1 do s[o] = 0 end
    for t = 0, windows - 1 do
      local st = ((n - rows) * t) // (windows - 1)
      for i = st + 1, st + rows do
        local a = softmax_row(Q, K, i, i)
        for j = 1, i do c[j] = c[j] + a[j]; s[i - j] = s[i - j] + a[j] end
      end
    end
    cols[h], offs[h] = top_p(c, 1, n, alpha), top_p(s, 0, n - 1, alpha)
    offs[h][0] = true
  end
  local why = compare_bits(bits_of(e.mask), n, function(h, i, j) return cols[h][j] == true or offs[h][i - j] == true end)
  truthy(why == nil, tostring(why))
end)

test("pbs_attn: the key permutation sorts each complete segment by the last-block probe's key mass", function()
  local n, B, S = 256, 16, 64
  local prob, q, k = problem(n, 231)
  local m = sl.methods.get("pbs_attn")
  local p = sl.registry.resolve(m, {block = B, segment = S, threshold = 0.9})
  local perms = m.permutations(prob, p, n)
  local n_c = (n // S) * S
  local moved = 0
  for h = 1, HQ do
    local Q, K = q[h], k[(h - 1) // 2 + 1]
    local score = {}
    for j = 1, n_c do score[j] = 0 end
    for i = n - B + 1, n do
      local a = softmax_row(Q, K, i, n_c) -- no causal mask: the probe sees every complete-segment key
      for j = 1, n_c do score[j] = score[j] + a[j] end
    end
    local want = {}
    for s0 = 0, n_c - 1, S do
      local seg = {}
      for j = s0, s0 + S - 1 do seg[#seg + 1] = j end
      table.sort(seg, function(x, y)
        if score[x + 1] ~= score[y + 1] then return score[x + 1] > score[y + 1] end
        return x < y
      end)
      for _, j in ipairs(seg) do want[#want + 1] = j end
    end
    for j = n_c, n - 1 do want[#want + 1] = j end
    eq(#perms[h], n, "head " .. h .. ": permutation length")
    for t = 1, n do
      eq(perms[h][t], want[t], string.format("head %d slot %d", h, t - 1))
      if want[t] ~= t - 1 then moved = moved + 1 end
    end
  end
  truthy(moved > n, "the permutation moves keys (" .. moved .. " slots differ from the identity)")
end)

test("anchor_attention: the middle-region stripes at a finite θ equal the pooled-query vs mean-anchor rule", function()
  local n, B, step = 170, 8, 4
  local G = B * step
  local prob, q, k = problem(n, 241)
  local m = sl.methods.get("anchor_attention")
  local kept_total, considered = 0, 0
  for _, theta in ipairs{0.5, 2} do
    local mask = m.mask(prob, sl.registry.resolve(m, {theta = theta, block = B, step = step}))
    local bits = bits_of(mask)
    for h = 1, HQ do
      local Q, K = q[h], k[(h - 1) // 2 + 1]
      local sc = 1 / math.sqrt(#Q[1])
      for b = 1, (n - 1) // G do -- big blocks with a middle region (b >= 1, 0-based)
        local r0, r1 = b * G, math.min((b + 1) * G, n) - 1
        -- anchors: the max scaled score over the init keys [0, G) and the local keys [bG, i]
        local x = {}
        for i = r0, r1 do
          local best = -math.huge
          for j = 0, i do
            if j < G or j >= b * G then best = math.max(best, sc * dot(Q[i + 1], K[j + 1])) end
          end
          x[i] = best
        end
        -- per B-row sub-block: mean query and mean anchor; stripe j when some sub-block clears it
        local subs = {}
        for t0 = r0, r1, B do
          local t1 = math.min(t0 + B - 1, r1)
          local qm = {}
          for c = 1, #Q[1] do
            local acc = 0
            for i = t0, t1 do acc = acc + Q[i + 1][c] end
            qm[c] = acc / (t1 - t0 + 1)
          end
          local xm = 0
          for i = t0, t1 do xm = xm + x[i] end
          subs[#subs + 1] = {qm, xm / (t1 - t0 + 1)}
        end
        for j = G, b * G - 1 do
          local want = false
          for _, st in ipairs(subs) do
            if sc * dot(st[1], K[j + 1]) + theta >= st[2] then want = true; break end
          end
          considered = considered + 1
          if want then kept_total = kept_total + 1 end
          for i = r0, r1, 5 do
            eq(bits[h][i + 1][j + 1] == 1, want, string.format("θ %g head %d row %d key %d", theta, h, i, j))
          end
        end
      end
    end
  end
  truthy(kept_total > 0 and kept_total < considered, string.format("a partial stripe set (%d of %d)", kept_total,
    considered))
end)

H.done()
