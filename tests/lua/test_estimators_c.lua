-- test_estimators_c.lua — estimator loops moved from Lua to C (issue 20,
-- session 4) against the Lua paths they replaced, which stay in the
-- recipes as options for this comparison only: the selections must be the
-- same (the executed mask arrays, or the index lists) on fresh seeded
-- shapes (GQA, ragged n, several budgets). The recipes' own tests (named
-- "<id>: ...", in the mutation harness's files) check the selections against
-- independent computations and fail under the score-blind mutation; these
-- tests only pin the C path to the old one.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy = H.test, H.eq, H.truthy

local arrays, same = H.mask_arrays, H.same

local function same_mask(x, y, what)
  local a, b = arrays(x), arrays(y)
  for i, name in ipairs({"row_ptr", "col_idx", "part", "bits"}) do same(a[i], b[i], what .. ": " .. name) end
end

-- c.nq < c.n: the last nq query rows (a decode offset)
local function problem(c)
  local q, k, v = sl.synthetic{heads = c.hq, kv_heads = c.hkv, n = c.n, d = c.d or 16, seed = c.seed}
  if c.nq then q = sl.tensor(q:narrow(2, c.n - c.nq + 1, c.nq):totable()) end
  return sl.problem{q = q, k = k, v = v}
end

test("estimators in C: elastic_attention's router (reduce.far) and mask (patterns, keep rows) equal the Lua loops", function()
  local m = sl.methods.get("elastic_attention")
  local cases = {
    {n = 1024, hq = 8, hkv = 4, seed = 3, p = {block = 64, sink = 64, local_window = 128}},
    {n = 1100, hq = 4, hkv = 4, seed = 5, p = {block = 32, sink = 40, local_window = 100, sa_ratio = 0.75}},
    {n = 777, hq = 6, hkv = 3, seed = 7, p = {block = 16, sink = 0, local_window = 16, window_q = 50, sa_ratio = 0.34}},
    {n = 900, hq = 4, hkv = 2, seed = 9, p = {block = 64, sink = 130, local_window = 200, window_q = 100}},
    {n = 1000, nq = 300, hq = 4, hkv = 2, seed = 5, p = {block = 32, sink = 40, local_window = 100, window_q = 50}},
  }
  local sa_seen = 0
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    local mc, ic = m.estimate(prob, p)
    local ml, il = m.estimate(prob, p, false, {lua_router = true, lua_keep = true})
    eq(ic.stats.sa_heads, il.stats.sa_heads, "case " .. ci .. ": SA heads")
    for g = 1, prob.k:shape()[1] do
      truthy(math.abs(ic.loss[g] - il.loss[g]) <= 1e-12 * math.max(1, il.loss[g]),
        string.format("case %d: lost mass of KV head %d: %.17g, Lua %.17g", ci, g, ic.loss[g], il.loss[g]))
    end
    eq(ic.keep ~= nil, c.nq ~= nil, "case " .. ci .. ": prefill builds patterns, an offset keep rows")
    if ic.keep then same(ic.keep, il.keep, "case " .. ci .. ": keep") end
    same_mask(mc, ml, "case " .. ci)
    sa_seen = sa_seen + ic.stats.sa_heads
    mc:close(); ml:close()
  end
  truthy(sa_seen > 0, "some heads are routed to streaming")
end)

test("estimators in C: token_sparse_attention's importance sums (reduce.columns64) keep the Lua loop's lists", function()
  local m = sl.methods.get("token_sparse_attention")
  local cases = {
    {n = 1400, hq = 4, hkv = 2, seed = 3, p = {m_min = 256, window = 64, coverage = 0.05}},
    {n = 1100, hq = 3, hkv = 3, seed = 5, p = {m_min = 128, window = 100, coverage = 0.2, ks = 5}},
    {n = 900, hq = 2, hkv = 1, seed = 7, p = {m_min = 64, window = 33, coverage = 0.5, ks = 1}},
    {n = 2000, hq = 2, hkv = 2, seed = 11, p = {m_min = 512, window = 128, coverage = 0.02}},
  }
  local selected = 0
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    local a = m.select(prob, p, false)
    local b = m.select(prob, p, false, {lua_sums = true})
    eq(a == nil, b == nil, "case " .. ci .. ": identity in both")
    if a then
      selected = selected + 1
      same(a, b, "case " .. ci .. ": kept positions")
    end
  end
  -- ties: every key written twice (positions 2i, 2i+1 equal), so with ks = 1
  -- the importances come in equal pairs and the cut splits some of them
  local st = 12345
  local function u() st = (st * 1103515245 + 12345) % 2147483648; return st / 2147483648 - 0.5 end
  local n, d, hq = 640, 8, 2
  local qt, kt, vt = {}, {}, {}
  for h = 1, hq do
    qt[h], kt[h], vt[h] = {}, {}, {}
    for i = 1, n do
      qt[h][i], vt[h][i] = {}, {}
      for e = 1, d do qt[h][i][e], vt[h][i][e] = 3 * u(), u() end
    end
    for i = 1, n, 2 do
      local row = {}
      for e = 1, d do row[e] = 3 * u() end
      kt[h][i], kt[h][i + 1] = row, {table.unpack(row)}
    end
  end
  local prob = sl.problem{q = sl.tensor(qt), k = sl.tensor(kt), v = sl.tensor(vt)}
  local p = sl.registry.resolve(m, {m_min = 501, window = 64, coverage = 0.3, ks = 1})
  local a = m.select(prob, p, false)
  local b = m.select(prob, p, false, {lua_sums = true})
  truthy(a ~= nil, "the tie case selects")
  same(a, b, "ties: kept positions")
  local odd = 0
  for _, j in ipairs(a[1]) do if j < n - 64 then odd = odd + 1 end end
  eq(odd, 501, "ties: B = m_min kept prefix keys (576 - 501 = 75 dropped: an odd count splits a pair)")
  local kept, split = {}, 0
  for _, j in ipairs(a[1]) do kept[j] = true end
  for j = 0, n - 66, 2 do if (kept[j] or false) ~= (kept[j + 1] or false) then split = split + 1 end end
  eq(split, 1, "ties: exactly one equal pair is split by the cut")
  truthy(kept[0] or not kept[1], "ties: the earlier of a split pair is kept")
  selected = selected + 1
  truthy(selected >= 3, "the cases select (not the identity)")
end)

test("estimators in C: token_sparse_attention's steps 1-4 in one op (select.token_budget) equal both Lua paths",
  function()
  local m = sl.methods.get("token_sparse_attention")
  local cases = {
    {n = 1400, hq = 4, hkv = 2, seed = 31, p = {m_min = 256, window = 64, coverage = 0.05}},
    {n = 1100, hq = 3, hkv = 3, seed = 32, p = {m_min = 128, window = 100, coverage = 0.2, ks = 4}},
    {n = 900, hq = 2, hkv = 1, seed = 33, p = {m_min = 0, window = 33, coverage = 0.9, ks = 1}},
    {n = 2000, hq = 1, hkv = 1, seed = 34, p = {m_min = 512, window = 128, coverage = 0.005}},
    {n = 1500, hq = 2, hkv = 2, seed = 35, p = {m_min = 1300, window = 128, coverage = 0.3, ks = 9}},
    {n = 700, hq = 2, hkv = 2, seed = 36, p = {m_min = 100, window = 50, coverage = 1e-6}},
  }
  local selected, identity = 0, 0
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    for _, blind in ipairs({false, true}) do
      local a, ea = m.select(prob, p, blind)
      local b = m.select(prob, p, blind, {lua_top = true})
      local o = m.select(prob, p, blind, {lua_sums = true})
      local what = string.format("case %d blind %s", ci, tostring(blind))
      eq(a == nil, b == nil, what .. ": identity as lua_top")
      eq(a == nil, o == nil, what .. ": identity as lua_sums")
      truthy(ea > 0, what .. ": estimator FLOPs counted")
      if a then
        same(a, b, what .. ": kept positions (lua_top)")
        same(a, o, what .. ": kept positions (lua_sums)")
        if not blind then selected = selected + 1 end
      elseif not blind then
        identity = identity + 1
      end
    end
  end
  truthy(selected >= 4, "most cases select")
  truthy(identity >= 1, "a coverage below the smallest entry is the identity")
end)

test("estimators in C: top_theta's calibration quantiles (reduce.kth) equal the Lua sort's", function()
  local m = sl.methods.get("top_theta")
  local cases = {
    {n = 1024, hq = 4, hkv = 2, seed = 3, p = {k = 64}},
    {n = 777, hq = 2, hkv = 1, seed = 5, p = {k = 7, sample_frac = 0.05, sigma = 0.5}},
    {n = 1500, hq = 3, hkv = 3, seed = 7, p = {k = 300, max_rows = 20}},
  }
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    local a = m.thresholds(prob, p):totable()
    local b = m.thresholds(prob, p, {lua_sort = true}):totable()
    same(a, b, "case " .. ci .. ": thresholds")
    local finite = 0
    for _, row in ipairs(a) do for _, x in ipairs(row) do if x > -1e29 then finite = finite + 1 end end end
    truthy(finite > 0, "case " .. ci .. ": calibrated rows")
  end
end)

test("estimators in C: top_theta's per-row lookup (select.theta_rows) equals the Lua lookup", function()
  local m = sl.methods.get("top_theta")
  local cases = {
    {n = 1024, hq = 4, hkv = 2, seed = 41, p = {k = 64}},
    {n = 900, nq = 300, hq = 2, hkv = 1, seed = 42, p = {k = 7, sample_frac = 0.05, sigma = 0.5}},
    {n = 1500, hq = 3, hkv = 3, seed = 43, p = {k = 300, max_rows = 20}},
    {n = 600, hq = 2, hkv = 2, seed = 44, p = {k = 1000}},
  }
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    local a = m.thresholds(prob, p):totable()
    local b = m.thresholds(prob, p, {lua_lookup = true}):totable()
    same(a, b, "case " .. ci .. ": thresholds")
  end
  -- hand-made tables: heads with different lengths, one head absent, rows between two lengths (ties: the
  -- shorter), rows past the last length, a decode offset and a problem that is not causal
  local cfg = {k = 5, sigma = 0, tables = {Lany = {
    {{10, 0.5}, {20, 1.5}, {40, -2.25}, {400, 3}},
    {{300, 7.5}},
    {},
  }}}
  local probs = {problem{n = 500, hq = 3, hkv = 3, seed = 45}, problem{n = 500, nq = 120, hq = 3, hkv = 1, seed = 46}}
  local q, k, v = sl.synthetic{heads = 3, kv_heads = 3, n = 64, d = 16, seed = 47}
  probs[3] = sl.problem{q = q, k = k, v = v, causal = false}
  local distinct = {}
  for pi, prob in ipairs(probs) do
    local p = sl.registry.resolve(m, {k = 5})
    p.config_table = cfg
    local a = m.thresholds(prob, p):totable()
    local b = m.thresholds(prob, p, {lua_lookup = true}):totable()
    same(a, b, "table " .. pi .. ": thresholds")
    for _, row in ipairs(a) do for _, x in ipairs(row) do distinct[x] = true end end
  end
  local nd = 0
  for _ in pairs(distinct) do nd = nd + 1 end
  truthy(nd >= 5, "the lookups take every table value and -1e30")
end)

test("estimators in C: dhsa's token lists built in order equal the sorted Lua lists", function()
  local m = sl.methods.get("dhsa")
  local cases = {
    {n = 1024, hq = 4, hkv = 2, seed = 3, p = {bq = 32, bk = 32, topk_tokens = 300, local_tokens = 40, global_tokens = 16, chunk = 24}},
    {n = 1100, hq = 2, hkv = 1, seed = 5, p = {bq = 64, bk = 64, topk_tokens = 500, splice = 1, global_tokens = 20}},
    {n = 900, hq = 3, hkv = 3, seed = 7, p = {bq = 16, bk = 16, topk_tokens = 200, local_tokens = 0, bounds = "0,5,90,91,300,512,700", norm = 0}},
    {n = 777, hq = 2, hkv = 2, seed = 9, p = {bq = 32, bk = 32, topk_tokens = 129, instruction_tokens = 100, chunk = 7}},
  }
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    local a, b = m.mask(prob, p), m.mask(prob, p, {lua_sort = true})
    same_mask(a, b, "case " .. ci)
    truthy(a:density(true) < 0.9, "case " .. ci .. ": sparse")
    a:close(); b:close()
  end
end)

test("estimators in C: vertical_slash's forced lines set in the keep give the Lua unions", function()
  local m = sl.methods.get("vertical_slash")
  local cases = {
    {n = 1024, hq = 4, hkv = 2, seed = 3, p = {}},
    {n = 1100, hq = 2, hkv = 1, seed = 5, p = {sinks = 7, ["local"] = 33, last_q = 32, bq = 32, bk = 32}},
    {n = 700, hq = 3, hkv = 3, seed = 7, p = {sinks = 0, ["local"] = 1, widen = true}},
  }
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    local a, b = m.estimate(prob, p), m.estimate(prob, p, {lua_union = true})
    same(a.cols, b.cols, "case " .. ci .. ": columns")
    same(a.offs, b.offs, "case " .. ci .. ": offsets")
    eq(a.semantic_density, b.semantic_density, "case " .. ci .. ": density")
    truthy(#a.cols[1] > (c.p.sinks or 0), "case " .. ci .. ": selected columns beyond the sinks")
  end
end)


-- issue 20, session 4b (branch s4-est2)
test("estimators in C: xattention's per-row selection (select.row_cover) equals the Lua rows, card rule and reference",
  function()
  local m = sl.methods.get("xattention")
  local cases = {
    {n = 1024, hq = 4, hkv = 2, seed = 11, p = {block = 16, stride = 4}},
    {n = 1000, hq = 2, hkv = 1, seed = 12, p = {block = 32, stride = 8}},
    {n = 777, hq = 3, hkv = 3, seed = 13, p = {block = 16, stride = 8, norm = 2}},
    {n = 600, hq = 4, hkv = 2, seed = 14, p = {block = 8, stride = 4, thresholds = {0.5, 0.9, 1.2, 0.97}}},
  }
  local kept = {}
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    for _, ref in ipairs({false, true}) do
      for _, tau in ipairs({0, 0.3, 0.9, 0.95, 1, 1.5}) do
        local pp = {}
        for key, val in pairs(c.p) do pp[key] = val end
        pp.threshold, pp.reference = tau, ref
        local p = sl.registry.resolve(m, pp)
        local ec = m.estimate(prob, p)
        local el = m.estimate(prob, p, {lua_rows = true})
        local what = string.format("case %d reference %s τ %g", ci, tostring(ref), tau)
        same_mask(ec.mask, el.mask, what)
        eq(ec.mask:density(), el.mask:density(), what .. ": density")
        kept[#kept + 1] = ec.mask:density()
        ec.mask:close(); el.mask:close(); ec.scores:close(); el.scores:close()
      end
    end
  end
  -- the cases select different amounts (not all dense, not all minimal)
  table.sort(kept)
  truthy(kept[1] < kept[#kept], "densities differ across τ")
end)

test("estimators in C: flexprefill's slash pooling (reduce.segments64) equals the Lua loop, default and reference",
  function()
  local m = sl.methods.get("flexprefill")
  local cases = {
    {n = 1024, hq = 4, hkv = 2, seed = 21, p = {tau = 0}},
    {n = 1100, hq = 2, hkv = 1, seed = 22, p = {tau = 0, block = 64, min_budget = 64}},
    {n = 1100, hq = 2, hkv = 1, seed = 22, p = {tau = 0, block = 64, min_budget = 64, reference = true}},
    {n = 777, hq = 3, hkv = 3, seed = 23, p = {tau = 0.3, block = 32, min_budget = 32, reference = true}},
    {n = 650, hq = 2, hkv = 2, seed = 24, p = {block = 16, min_budget = 16, gamma = 0.5}},
  }
  local differ = 0
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    local p = sl.registry.resolve(m, c.p)
    local ec = m.estimate(prob, p)
    local el = m.estimate(prob, p, {lua_pool = true, lua_cover = true})
    local what = "case " .. ci
    for h = 1, c.hq do
      local a, b = ec.detail[h].sb, el.detail[h].sb
      eq(#a, #b, what .. ": offset blocks")
      for ob = 1, #b do eq(a[ob], b[ob], what .. string.format(": head %d offset block %d", h, ob)) end
      eq(ec.detail[h].ns, el.detail[h].ns, what .. ": n_s")
      -- the pooled blocks are not all equal (the comparison sees real profiles)
      if a[1] ~= a[#a] then differ = differ + 1 end
    end
    same_mask(ec.mask, el.mask, what)
    ec.mask:close(); el.mask:close()
  end
  truthy(differ > 0, "pooled slash profiles vary")
end)


-- issue 20, session 5c: sparge_attn's keep built without the per-row Lua
-- tables of every forced row (one shared all-ones row; an all-ones u8 keep
-- made in C with the few zeros set, or the table conversion when zeros are
-- many), the logits read only for heads with a selected row, and the order
-- by a plain numeric sort with E.mark_largest (no comparator): the executed
-- masks must equal the former Lua path's. θ spans mostly forced (0.6 on
-- sl.synthetic), a mix of forced rows and forced key blocks (0.5-0.6) and
-- none forced (-1); ragged n, GQA, a decode offset,
-- non-causal, the cdf rule, τ = 1, top-k (visible and topk_all), the sink.
test("estimators in C: sparge_attn's selection and keep equal the former Lua path (seeds, shapes, options)", function()
  local m = sl.methods.get("sparge_attn")
  local cases = {
    {n = 1000, hq = 4, hkv = 2, seed = 11, p = {bq = 64, bk = 32}},
    {n = 777, hq = 6, hkv = 3, seed = 12, p = {bq = 32, bk = 16, simthreshd1 = 0.55, cdfthreshd = 0.7}},
    {n = 901, hq = 4, hkv = 2, seed = 13, p = {bq = 48, bk = 20, simthreshd1 = -1, cdfthreshd = 0.9}},
    {n = 650, hq = 4, hkv = 1, seed = 14, p = {bq = 32, bk = 32, simthreshd1 = 0.5, cdfthreshd = 0.5, attention_sink = 1}},
    {n = 1024, hq = 4, hkv = 2, seed = 15, p = {bq = 64, bk = 16, simthreshd1 = -1, topk = 0.3}},
    {n = 999, hq = 4, hkv = 2, seed = 16, p = {bq = 40, bk = 24, simthreshd1 = 0.6, topk = 0.25, topk_all = true}},
    {n = 800, hq = 4, hkv = 2, seed = 17, p = {bq = 32, bk = 16, simthreshd1 = -1, cdfthreshd = 1}},
    {n = 1000, nq = 300, hq = 4, hkv = 2, seed = 18, p = {bq = 32, bk = 16, simthreshd1 = 0.6, cdfthreshd = 0.8}},
    {n = 700, hq = 4, hkv = 2, seed = 19, causal = false, p = {bq = 32, bk = 16, simthreshd1 = 0.55, cdfthreshd = 0.6}},
    {n = 700, hq = 4, hkv = 2, seed = 20, causal = false, p = {bq = 64, bk = 32, simthreshd1 = -1, topk = 0.2, topk_all = true}},
  }
  local forced_seen, selected_seen = 0, 0
  for ci, c in ipairs(cases) do
    local prob = problem(c)
    if c.causal == false then prob.causal = false end
    local p = sl.registry.resolve(m, c.p)
    local mc, ic = m.estimate(prob, p)
    local ml, il = m.estimate(prob, p, {lua_select = true})
    eq(ic.stats.forced_rows, il.stats.forced_rows, "case " .. ci .. ": forced rows")
    eq(ic.pv_skip, il.pv_skip, "case " .. ci .. ": pv skip")
    same_mask(mc, ml, "case " .. ci)
    local nqb = (prob.q:shape()[2] + c.p.bq - 1) // c.p.bq
    forced_seen = forced_seen + ic.stats.forced_rows
    selected_seen = selected_seen + c.hq * nqb - ic.stats.forced_rows
    mc:close(); ml:close()
  end
  truthy(forced_seen > 0 and selected_seen > 0, "both forced and selected rows were compared")
end)

H.done()
