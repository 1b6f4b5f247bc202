-- test_methods_selectors.lua — the four prefill token selectors of issue 16
-- (hip_attention, top_theta, pq_code_match, token_sparse_attention): each
-- card's checks on small seeded inputs (GQA 4:2), budget = everything equals
-- dense, and each selector against a score-blind replacement of its scores
-- with the same budget: the blind one keeps less attention mass, so the
-- recall check below fails for it (shown here, not assumed). Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_methods_selectors.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local HQ, HKV = 4, 2

-- keys with a few strong directions, so that attention is concentrated and
-- a score-aware choice matters (random keys give flat rows)
local function problem(n, d, seed)
  local q = sl.randn({HQ, n, d}, {seed = seed, std = 1.5})
  local k = sl.randn({HKV, n, d}, {seed = seed + 1, std = 1.5})
  local v = sl.randn({HKV, n, d}, {seed = seed + 2})
  return sl.problem{q = q, k = k, v = v}
end

local function recall_of(lse, dense_lse) return (sl.metric.recall(lse, dense_lse)) end

-- per-row index lists (0-based keys) -> CSR tensors for attn.token_sparse
local function csr(rows)
  local rp, col, at = {}, {}, 0
  for h, hr in ipairs(rows) do
    rp[h] = {}
    for i, l in ipairs(hr) do
      rp[h][i] = at
      for _, j in ipairs(l) do col[#col + 1] = j; at = at + 1 end
    end
    rp[h][#hr + 1] = at
  end
  return sl.tensor(rp, "i32"), sl.tensor(col, "i32")
end

-- the same count per row, keys drawn by a seeded generator (score-blind)
local function blind_lists(counts, seed)
  local st = seed
  local function rnd(m) st = (st * 1103515245 + 12345) % 2147483648; return st % m end
  local rows = {}
  for h, hc in ipairs(counts) do
    rows[h] = {}
    for i, c in ipairs(hc) do
      local pool = {}
      for j = 0, i - 1 do pool[#pool + 1] = j end
      for t = #pool, 2, -1 do local u = rnd(t) + 1; pool[t], pool[u] = pool[u], pool[t] end
      local l = {}
      for t = 1, c do l[t] = pool[t] end
      table.sort(l)
      rows[h][i] = l
    end
  end
  return rows
end

test("hip_attention: budget >= n is dense; the tree keeps K_b unique sorted blocks; finds a planted needle", function()
  local prob = problem(160, 16, 1701)
  local r = sl.eval("hip_attention", prob, {budget = 160, params = {bq = 16, bk = 4, window = 16}})
  near(r.metrics.rel_l2, 0, 1e-5, "dense")
  near(r.metrics.recall_min, 1, 1e-5, "full recall")
  local m = sl.methods.get("hip_attention")
  for _, T in ipairs{7, 16, 33, 64} do
    for _, Kb in ipairs{1, 3, 4} do
      local sc = {}
      for c = 1, T do sc[c] = math.sin(c * 1.7) end
      local needle = (T * 2) // 3
      sc[needle] = 100
      local kept = m.tree(sc, T, Kb)
      eq(#kept, math.min(Kb, T), "K_b blocks")
      for i = 2, #kept do truthy(kept[i] > kept[i - 1], "sorted unique") end
      for _, c in ipairs(kept) do truthy(c >= 1 and c <= T, "inside [0, T)") end
      -- a needle at the start of an initial group is its half's representative
      -- at every level: the tree must find it (one elsewhere may be missed: the
      -- greedy tree sees representatives only, as the card warns)
      local g0 = Kb >= 2 and T > Kb and (T // Kb) + 1 or 1
      local sc2 = {}
      for c = 1, T do sc2[c] = (c == g0) and 100 or math.cos(c) end
      local found = false
      for _, c in ipairs(m.tree(sc2, T, Kb)) do if c == g0 then found = true end end
      truthy(found, "needle found (T " .. T .. ", K_b " .. Kb .. ")")
    end
  end
end)

test("hip_attention: tree over real scores beats a score-blind tree (same budget) on recall", function()
  local prob = problem(256, 16, 1702)
  local m = sl.methods.get("hip_attention")
  local p = sl.registry.resolve(m, {bq = 16, bk = 4, window = 16}, 48)
  local dense = sl.eval("dense", prob, {})
  local mk, mb = m.estimate(prob, p), m.estimate(prob, p, true)
  near(mk:density(true), mb:density(true), 1e-12, "same executed density")
  local _, lk = sl.attn.block_sparse(prob.q, prob.k, prob.v, mk)
  local _, lb = sl.attn.block_sparse(prob.q, prob.k, prob.v, mb)
  local rk, rb = recall_of(lk, dense.lse), recall_of(lb, dense.lse)
  truthy(rk > rb + 0.05, string.format("recall tree %.3f, score-blind %.3f", rk, rb))
end)

test("hip_attention: the C tree (select.hip_tree) keeps what the Lua tree keeps over the full tile-max map, scoring far fewer blocks", function()
  local prob = problem(384, 16, 1704)
  local m = sl.methods.get("hip_attention")
  for _, o in ipairs{{bq = 16, bk = 4, window = 16, budget = 24}, {bq = 8, bk = 2, window = 0, budget = 10}} do
    local pt = sl.registry.resolve(m, {bq = o.bq, bk = o.bk, window = o.window}, o.budget)
    local pl = sl.registry.resolve(m, {bq = o.bq, bk = o.bk, window = o.window, estimator = "lowbit"}, o.budget)
    local mt, it = m.estimate(prob, pt)
    local ml = m.estimate(prob, pl)
    near(mt:density(true), ml:density(true), 1e-12, "same density")
    local _, lt = sl.attn.block_sparse(prob.q, prob.k, prob.v, mt)
    local _, ll = sl.attn.block_sparse(prob.q, prob.k, prob.v, ml)
    local x, y = lt:totable(), ll:totable()
    for h = 1, HQ do for i = 1, 384 do eq(x[h][i], y[h][i], "same kept set (identical lse)") end end
    truthy(it.stats.tree_evaluations > 0, "the tree scored something")
  end
  -- cost: doubling n doubles the query blocks and adds one level (~2.4x the
  -- block scores), while the tile-max map grows 4x
  local function evals(n)
    local pr = problem(n, 16, 1705)
    local p = sl.registry.resolve(m, {bq = 16, bk = 4, window = 16}, 24)
    local _, info = m.estimate(pr, p)
    return info.stats.tree_evaluations
  end
  local e1, e2 = evals(512), evals(1024)
  truthy(e2 / e1 < 3 and e2 / e1 > 1.8, string.format("evaluations %d -> %d when n doubles", e1, e2))
end)

test("hip_attention: the row-block tree (select.hip_tree per block of query blocks, block lists) executes the whole-keep selection; its lists stay O(n)", function()
  local m = sl.methods.get("hip_attention")
  local function bits(mask) return mask:to_bits():totable() end
  -- shapes: ragged n, a prefix (n_q < n_k), qstride 2, no window, a budget above n
  local cases = {
    {n = 300, o = {bq = 16, bk = 4, window = 16}, budget = 24},
    {n = 257, o = {bq = 8, bk = 2, window = 0, qstride = 2}, budget = 10},
    {n = 200, nq = 72, o = {bq = 16, bk = 8, window = 24}, budget = 32},
    {n = 130, o = {bq = 16, bk = 4, window = 8}, budget = 512},
  }
  for ci, c in ipairs(cases) do
    local prob = problem(c.n, 16, 1710 + ci)
    if c.nq then
      prob = sl.problem{q = prob.q:narrow(2, c.n - c.nq + 1, c.nq):to("f32"), k = prob.k, v = prob.v}
    end
    local p = sl.registry.resolve(m, c.o, c.budget)
    local whole, wi = m.estimate(prob, p, false, 0)
    local want = bits(whole)
    for _, chunk in ipairs{1, 3, 1000} do
      local got, gi = m.estimate(prob, p, false, chunk)
      local b = bits(got)
      for h = 1, HQ do
        for i = 1, #want[h] do
          for j = 1, #want[h][i] do
            if b[h][i][j] ~= want[h][i][j] then
              error(string.format("case %d chunk %d: head %d row %d key %d differs", ci, chunk, h, i, j))
            end
          end
        end
      end
      eq(gi.stats.tree_evaluations, wi.stats.tree_evaluations, "same tree evaluations")
      eq(gi.estimator_flops, wi.estimator_flops, "same estimator flops")
    end
    -- the default (chunks of ~4 MiB of keep) too
    local def = bits((m.estimate(prob, p)))
    eq(#def, HQ, "heads")
    for h = 1, HQ do for i = 1, #want[h] do for j = 1, #want[h][i] do
      if def[h][i][j] ~= want[h][i][j] then error(string.format("case %d default: (%d, %d, %d) differs", ci, h, i, j)) end
    end end end
  end
end)

test("hip_attention: rep = minmax (the draft's grouped min/max representative) keeps what a float64 min/max tree keeps; dense at budget; a score-blind tree loses recall", function()
  local n, d, bq, bk, win = 192, 16, 16, 4, 16
  local prob = problem(n, d, 1706)
  local m = sl.methods.get("hip_attention")
  local p = sl.registry.resolve(m, {bq = bq, bk = bk, window = win, rep = "minmax"}, 24)
  local _, info = m.estimate(prob, p)
  local qt, kt = prob.q:totable(), prob.k:totable()
  local C, Kb = n // bk, 24 // bk
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    -- per block, channel-wise min and max keys (float64 here)
    local kmin, kmax = {}, {}
    for c = 1, C do
      kmin[c], kmax[c] = {}, {}
      for x = 1, d do
        local lo, hi = math.huge, -math.huge
        for j = (c - 1) * bk + 1, c * bk do lo = math.min(lo, kt[g][j][x]); hi = math.max(hi, kt[g][j][x]) end
        kmin[c][x], kmax[c][x] = lo, hi
      end
    end
    for r = 1, n // bq do
      local vis = ((r * bq) - 1) // bk + 1
      local w0 = math.max(0, ((r - 1) * bq - win) // bk)
      local T = math.min(w0, vis)
      local sc = {}
      for c = 1, T do
        local best = -math.huge
        for i = (r - 1) * bq + 1, r * bq do
          local a, b = 0, 0
          for x = 1, d do a = a + qt[h][i][x] * kmin[c][x]; b = b + qt[h][i][x] * kmax[c][x] end
          best = math.max(best, a, b)
        end
        sc[c] = best
      end
      local want = {}
      for _, c in ipairs((m.tree(sc, T, Kb))) do want[c] = true end
      for c = w0 + 1, vis do want[c] = true end
      for c = 1, C do
        eq(info.keep[h][r][c] == 1, want[c] == true, string.format("head %d block row %d key block %d", h, r, c))
      end
    end
  end
  local r = sl.eval("hip_attention", prob, {budget = n, params = {bq = bq, bk = bk, window = win, rep = "minmax"}})
  near(r.metrics.rel_l2, 0, 1e-5, "budget >= n is dense")
  -- recall on planted blocks (random keys make every block's min/max bound
  -- alike): per kv head five key blocks aligned with the group's queries
  local base = sl.randn({HKV, 1, d}, {seed = 1707}):totable()
  local qn = sl.randn({HQ, n, d}, {seed = 1708, std = 0.3}):totable()
  local kn = sl.randn({HKV, n, d}, {seed = 1709}):totable()
  local qq, kk = {}, {}
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    qq[h] = {}
    for i = 1, n do qq[h][i] = {}; for x = 1, d do qq[h][i][x] = base[g][1][x] + qn[h][i][x] end end
  end
  for g = 1, HKV do
    kk[g] = {}
    local hot = {}
    for i = 1, 5 do hot[(g * 11 + i * 7) % 30 + 3] = true end
    for j = 1, n do
      kk[g][j] = {}
      local c = (j - 1) // bk
      for x = 1, d do kk[g][j][x] = hot[c] and 1.5 * base[g][1][x] + 0.5 * kn[g][j][x] or kn[g][j][x] end
    end
  end
  local pp = sl.problem{q = sl.tensor(qq), k = sl.tensor(kk), v = prob.v}
  local dense = sl.eval("dense", pp, {})
  local mp = m.estimate(pp, p)
  local mb = m.estimate(pp, p, true)
  local _, lk = sl.attn.block_sparse(pp.q, pp.k, pp.v, mp)
  local _, lb = sl.attn.block_sparse(pp.q, pp.k, pp.v, mb)
  local rk, rb = recall_of(lk, dense.lse), recall_of(lb, dense.lse)
  truthy(rk > rb + 0.05, string.format("recall min/max tree %.3f, score-blind %.3f", rk, rb))
  H.raises(function() m.estimate(prob, sl.registry.resolve(m, {rep = "minmax", qstride = 2}, 24)) end, "qstride = 1", "minmax needs every row")
end)

test("top_theta: k >= n is dense; kept keys are those above θ; θ falls as k grows; blind choice loses recall", function()
  local prob = problem(200, 16, 1703)
  local m = sl.methods.get("top_theta")
  local r = sl.eval("top_theta", prob, {budget = 200})
  near(r.metrics.rel_l2, 0, 1e-5, "dense")
  local p16, p48 = sl.registry.resolve(m, {}, 16), sl.registry.resolve(m, {}, 48)
  local t16, t48 = m.thresholds(prob, p16), m.thresholds(prob, p48)
  local a, b = t16:totable(), t48:totable()
  local lower = 0
  for h = 1, HQ do for i = 60, 200 do if b[h][i] <= a[h][i] + 1e-9 then lower = lower + 1 end end end
  eq(lower, HQ * 141, "θ(k = 48) <= θ(k = 16) on every row past k")
  -- kept = #{scale q·k > θ} (float64 here), and about k on the sampled rows
  local out = m.run(prob, p16)
  local cnt, th = out.count:totable(), out.theta:totable()
  local q, k = prob.q:totable(), prob.k:totable()
  local mean_kept, rows = 0, 0
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    for i = 17, 200, 10 do
      local c = 0
      for j = 1, i do
        local s = 0
        for e = 1, 16 do s = s + q[h][i][e] * k[g][j][e] end
        if s / 4 > th[h][i] then c = c + 1 end
      end
      eq(cnt[h][i], c, "kept = above θ")
      mean_kept, rows = mean_kept + c, rows + 1
    end
  end
  mean_kept = mean_kept / rows
  truthy(math.abs(mean_kept - 16) < 4, "about k kept on calibration rows: " .. mean_kept)
  -- score-blind: the same count per row at random keys
  local dense = sl.eval("dense", prob, {})
  local counts = {}
  for h = 1, HQ do counts[h] = {}; for i = 1, 200 do counts[h][i] = cnt[h][i] end end
  local rp, col = csr(blind_lists(counts, 5))
  local _, lb = sl.attn.token_sparse(prob.q, prob.k, prob.v, rp, col, {rows_per_entry = 1})
  local rk, rb = recall_of(out.lse, dense.lse), recall_of(lb, dense.lse)
  truthy(rk > rb + 0.1, string.format("recall top-θ %.3f, score-blind %.3f", rk, rb))
end)

test("top_theta: held-out calibration (m.calibrate) drives the thresholds; a k mismatch is refused", function()
  local m = sl.methods.get("top_theta")
  local cal, test_prob = problem(200, 16, 1704), problem(200, 16, 1705)
  local cfg = m.calibrate({cal}, {params = {k = 24}})
  eq(cfg.k, 24, "calibrated k")
  local p = sl.registry.resolve(m, {}, 24)
  p.config_table = cfg
  local out = m.run(test_prob, p)
  eq(out.stats.calib_self, 0, "used the config")
  truthy(out.stats.density > 0.05 and out.stats.density < 0.6, "held-out density " .. out.stats.density)
  local p2 = sl.registry.resolve(m, {}, 30)
  p2.config_table = cfg
  H.raises(function() m.run(test_prob, p2) end, "calibrated for k = 24", "k mismatch")
end)

test("pq_code_match: coeff 1 is dense; lists valid; code matching beats score-blind lists of the same size", function()
  local prob = problem(192, 16, 1706)
  local r = sl.eval("pq_code_match", prob, {budget = 1})
  near(r.metrics.rel_l2, 0, 1e-5, "dense")
  local m = sl.methods.get("pq_code_match")
  local p = sl.registry.resolve(m, {}, 6)
  local out = m.run(prob, p)
  local rp, col = out.row_ptr:totable(), out.col:totable()
  local nnz = 192 // 6
  local counts = {}
  for h = 1, HQ do
    counts[h] = {}
    for i = 1, 192 do
      local a, b = rp[h][i], rp[h][i + 1]
      eq(b - a, math.min(i, nnz), "min(i+1, nnz) per row")
      for e = a + 1, b do
        truthy(col[e] <= i - 1, "causal")
        if e > a + 1 then truthy(col[e] > col[e - 1], "sorted unique") end
      end
      counts[h][i] = b - a
    end
  end
  local dense = sl.eval("dense", prob, {})
  local brp, bcol = csr(blind_lists(counts, 11))
  local _, lb = sl.attn.token_sparse(prob.q, prob.k, prob.v, brp, bcol, {rows_per_entry = 1})
  local rk, rb = recall_of(out.lse, dense.lse), recall_of(lb, dense.lse)
  truthy(rk > rb + 0.05, string.format("recall PQ %.3f, score-blind %.3f", rk, rb))
  -- held-out codebooks through m.calibrate
  local cfg = m.calibrate({problem(192, 16, 1707)}, {params = {}})
  local p2 = sl.registry.resolve(m, {}, 6)
  p2.config_table = cfg
  local o2 = m.run(prob, p2)
  eq(o2.stats.calib_self, 0, "codebook from the config")
end)

test("token_sparse_attention: identity cases; kept rows = dense over the kept set; dropped rows 0; blind loses", function()
  local prob = problem(200, 16, 1708)
  local m = sl.methods.get("token_sparse_attention")
  local dense = sl.eval("dense", prob, {})
  for _, params in ipairs{{coverage = 0, m_min = 8, window = 16}, {m_min = 190, window = 16}} do
    local r = sl.eval(m.id, prob, {params = params})
    near(r.metrics.rel_l2, 0, 1e-6, "identity")
  end
  local p = sl.registry.resolve(m, {m_min = 8, window = 16}, 0.2)
  local out = m.run(prob, p)
  local idx = out.index
  truthy(idx, "sparsified")
  local B = #idx[1]
  for h = 2, HQ do eq(#idx[h], B, "same budget per head") end
  local o, lse = out.o:totable(), out.lse:totable()
  -- kept rows against attn.token_sparse over the kept keys j <= i; dropped rows are 0
  local rows = {}
  for h = 1, HQ do
    local keep = {}
    for _, j in ipairs(idx[h]) do keep[j] = true end
    for j = 184, 199 do truthy(keep[j], "window kept") end
    rows[h] = {}
    for i = 0, 199 do
      local l = {}
      if keep[i] then for _, j in ipairs(idx[h]) do if j <= i then l[#l + 1] = j end end end
      rows[h][i + 1] = l
      if not keep[i] then
        for c = 1, 16 do eq(o[h][i + 1][c], 0.0, "dropped row output") end
        eq(lse[h][i + 1], -math.huge, "dropped row L")
      end
    end
  end
  local rp, col = csr(rows)
  local ot = sl.attn.token_sparse(prob.q, prob.k, prob.v, rp, col, {rows_per_entry = 1}):totable()
  for h = 1, HQ do for i = 1, 200 do for c = 1, 16 do near(o[h][i][c], ot[h][i][c], 1e-5, "kept rows") end end end
  -- the estimator targets the observation window's attention mass: compare the
  -- window rows' recall with a score-blind choice (the first B keys)
  local blind = m.run_with(prob, p, true)
  near(blind.stats.density, out.stats.density, 1e-12, "same budget")
  local dl, kl, bl = dense.lse:totable(), out.lse:totable(), blind.lse:totable()
  local rk, rb = 0, 0
  for h = 1, HQ do
    for i = 185, 200 do
      rk = rk + math.exp(kl[h][i] - dl[h][i]) / (HQ * 16)
      rb = rb + math.exp(bl[h][i] - dl[h][i]) / (HQ * 16)
    end
  end
  truthy(rk > rb + 0.05, string.format("window recall importance %.3f, score-blind %.3f", rk, rb))
end)

-- float64 softmax probabilities of query row i (0-based) of head h over its causal keys 0..i
local function probs64(q, k, h, g, i, d)
  local s, m = {}, -math.huge
  for j = 0, i do
    local x = 0
    for c = 1, d do x = x + q[h][i + 1][c] * k[g][j + 1][c] end
    x = x / math.sqrt(d)
    s[j] = x
    if x > m then m = x end
  end
  local z = 0
  for j = 0, i do s[j] = math.exp(s[j] - m); z = z + s[j] end
  for j = 0, i do s[j] = s[j] / z end
  return s
end

test("token_sparse_attention: the kept keys are the top-B of the card's importance recomputed in float64", function()
  local n, d, W, ks, cov, m_min = 200, 16, 16, 7, 0.2, 8
  local prob = problem(n, d, 1709)
  local m = sl.methods.get("token_sparse_attention")
  local p = sl.registry.resolve(m, {m_min = m_min, window = W, ks = ks}, cov)
  local out = m.run(prob, p)
  local idx = out.index
  truthy(idx, "sparsified")
  -- steps 1-2 in float64 from q and k: mean probability over the last W rows, avg-pool (zero pad, / ks), sum 1
  local q, k = prob.q:totable(), prob.k:totable()
  local npre = n - W
  local imp, g = {}, {}
  for j = 0, npre - 1 do g[j] = 0 end
  for h = 1, HQ do
    local kv = (h - 1) // (HQ // HKV) + 1
    local raw = {}
    for j = 0, npre - 1 do raw[j] = 0 end
    for i = npre, n - 1 do
      local P = probs64(q, k, h, kv, i, d)
      for j = 0, npre - 1 do raw[j] = raw[j] + P[j] / W end
    end
    local sm, tot = {}, 0
    for j = 0, npre - 1 do
      local s = 0
      for x = j - ks // 2, j + ks // 2 do if x >= 0 and x < npre then s = s + raw[x] end end
      sm[j] = s / ks
      tot = tot + sm[j]
    end
    for j = 0, npre - 1 do sm[j] = sm[j] / tot; g[j] = g[j] + sm[j] / HQ end
    imp[h] = sm
  end
  -- step 3: the budget from the head-mean importance
  local gs = {}
  for j = 0, npre - 1 do gs[#gs + 1] = g[j] end
  table.sort(gs)
  local cum, count, margin = 0, 0, math.huge
  for _, x in ipairs(gs) do
    cum = cum + x
    margin = math.min(margin, math.abs(cum - cov))
    if cum < cov then count = count + 1 else break end
  end
  truthy(count > 0 and margin > 1e-6, "the budget is not on a boundary: count " .. count .. ", margin " .. margin)
  local B = math.max(m_min, npre - (count + 1))
  truthy(B < npre, "some prefix key dropped")
  -- step 4: per head the kept prefix keys are B keys of the highest importance (float32 near-ties allowed)
  for h = 1, HQ do
    eq(#idx[h], B + W, "head " .. h .. " keeps B + W positions")
    local kept = {}
    for _, j in ipairs(idx[h]) do kept[j] = true end
    local lo_kept, hi_dropped = math.huge, -math.huge
    for j = 0, npre - 1 do
      if kept[j] then lo_kept = math.min(lo_kept, imp[h][j]) else hi_dropped = math.max(hi_dropped, imp[h][j]) end
    end
    for j = npre, n - 1 do truthy(kept[j], "window position " .. j .. " kept") end
    truthy(lo_kept >= hi_dropped - 1e-7, string.format("head %d: least kept importance %.9g, most dropped %.9g", h,
      lo_kept, hi_dropped))
  end
end)

H.done()
