-- test_stats.lua — paired tests (sparselab.stats) against p-values computed here independently:
-- brute-force enumeration of all 2^n sign assignments for the sign and Wilcoxon signed-rank
-- tests (ties and zeros included), Darwin's Zea mays data (a textbook Wilcoxon example), the
-- normal approximation against the exact distribution; the paired bootstrap, margins, the
-- maximum compression that preserves a metric, and `sparselab stats` on a store.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local stats = require "sparselab.stats"

-- ---- independent references ----------------------------------------------------------------

-- Midranks of |d| over the non-zero d, by counting (O(n²)).
local function midranks(d)
  local kept, ranks = {}, {}
  for _, x in ipairs(d) do if x ~= 0 then kept[#kept + 1] = x end end
  for i, x in ipairs(kept) do
    local below, equal = 0, 0
    for _, y in ipairs(kept) do
      if math.abs(y) < math.abs(x) then below = below + 1 elseif math.abs(y) == math.abs(x) then equal = equal + 1 end
    end
    ranks[i] = below + (equal + 1) / 2
  end
  return kept, ranks
end

-- One-sided p-values P(T ≤ t_obs) and P(T ≥ t_obs) by enumerating all 2^n sign vectors, where
-- T = Σ score_i over the positive signs.
local function enumerate(scores, observed)
  local n, le, ge = #scores, 0, 0
  for mask = 0, (1 << n) - 1 do
    local t = 0
    for i = 1, n do if mask & (1 << (i - 1)) ~= 0 then t = t + scores[i] end end
    if t <= observed + 1e-9 then le = le + 1 end
    if t >= observed - 1e-9 then ge = ge + 1 end
  end
  return le / (1 << n), ge / (1 << n)
end

local function wilcoxon_by_enumeration(d)
  local kept, ranks = midranks(d)
  local w = 0
  for i, x in ipairs(kept) do if x > 0 then w = w + ranks[i] end end
  return enumerate(ranks, w)
end

local function sign_by_enumeration(d)
  local kept = midranks(d)
  local ones, pos = {}, 0
  for i, x in ipairs(kept) do
    ones[i] = 1
    if x > 0 then pos = pos + 1 end
  end
  return enumerate(ones, pos)
end

local function two_sided(le, ge) return math.min(1, 2 * math.min(le, ge)) end

-- ---- tests ---------------------------------------------------------------------------------

H.test("Wilcoxon: Darwin's Zea mays differences (textbook example)", function()
  -- Cross- minus self-fertilised heights (eighths of an inch), Fisher (1935); W- = 24 with
  -- exact two-sided p = 0.04126 and one-sided ("greater") p = 0.02063.
  local d = {6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75}
  local g = stats.wilcoxon(d, {alternative = "greater"})
  H.eq(g.w_minus, 24)
  H.eq(g.w_plus, 96)
  H.truthy(g.exact, "exact for n = 15")
  H.near(g.p, 676 / 32768, 1e-12, "one-sided p (enumeration: 676 of 2^15 sign vectors)")
  H.near(g.p, 0.0206298828125, 1e-12, "published one-sided p")
  H.near(stats.wilcoxon(d).p, 0.041259765625, 1e-12, "published two-sided p")
  local le, ge = wilcoxon_by_enumeration(d)
  H.near(ge, g.p, 1e-12, "enumeration agrees")
  H.near(stats.wilcoxon(d, {alternative = "less"}).p, le, 1e-12, "less")
end)

H.test("Wilcoxon and sign tests against enumeration, with ties and zeros", function()
  math.randomseed(99)
  for trial = 1, 60 do
    local n = math.random(1, 14)
    local d = {}
    for i = 1, n do
      -- small integers: plenty of ties and zeros
      d[i] = math.random(-4, 5) * (trial % 3 == 0 and 0.25 or 1)
    end
    local le, ge = wilcoxon_by_enumeration(d)
    local sle, sge = sign_by_enumeration(d)
    H.near(stats.wilcoxon(d, {alternative = "less"}).p, le, 1e-12, "wilcoxon less, trial " .. trial)
    H.near(stats.wilcoxon(d, {alternative = "greater"}).p, ge, 1e-12, "wilcoxon greater, trial " .. trial)
    H.near(stats.wilcoxon(d).p, two_sided(le, ge), 1e-12, "wilcoxon two-sided, trial " .. trial)
    H.near(stats.sign_test(d, {alternative = "less"}).p, sle, 1e-12, "sign less, trial " .. trial)
    H.near(stats.sign_test(d, {alternative = "greater"}).p, sge, 1e-12, "sign greater, trial " .. trial)
    H.near(stats.sign_test(d).p, two_sided(sle, sge), 1e-12, "sign two-sided, trial " .. trial)
  end
  H.eq(stats.wilcoxon({0, 0, 0}).p, 1)
  H.eq(stats.sign_test({}).p, 1)
  H.raises(function() stats.wilcoxon({1}, {alternative = "bigger"}) end, "alternative")
end)

H.test("Wilcoxon normal approximation: hand formula and closeness to the exact p", function()
  -- d_i = ±i for i = 1..59, negative for i ≤ 19: no ties, rank i, W+ = Σ_{i=20}^{59} i = 1580.
  local d = {}
  for i = 1, 59 do d[i] = i <= 19 and -i or i end
  local n = 59
  local wp = 1580
  local mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
  local z = (wp - mean - 0.5) / sd
  local approx = stats.wilcoxon(d, {alternative = "greater"})
  H.eq(approx.exact, false)
  H.eq(approx.w_plus, wp)
  H.near(approx.z, z, 1e-12, "z with continuity correction")
  H.near(approx.p, sl.fit_c.norm_q(z), 1e-15, "p = upper normal tail")
  local exact = stats.wilcoxon(d, {alternative = "greater", exact_max = 100})
  H.eq(exact.exact, true)
  H.truthy(math.abs(exact.p - approx.p) < 0.002, string.format("exact %g vs normal %g", exact.p, approx.p))
  -- with ties the variance shrinks by Σ(t³ − t)/48
  local t = {}
  for i = 1, 70 do t[i] = (i % 7) - 2 end -- values −2..4, each tied ten times
  local r = stats.wilcoxon(t, {alternative = "two_sided"})
  local kept, ranks = midranks(t)
  local w, mult, ties = 0, {}, 0
  for i, x in ipairs(kept) do
    if x > 0 then w = w + ranks[i] end
    mult[math.abs(x)] = (mult[math.abs(x)] or 0) + 1
  end
  for _, c in pairs(mult) do ties = ties + c ^ 3 - c end
  H.eq(ties, (20 ^ 3 - 20) * 2 + (10 ^ 3 - 10) * 2, "tie groups |d| = 1, 2 (20 each), 3, 4 (10 each)")
  local m = #kept
  local sdt = math.sqrt(m * (m + 1) * (2 * m + 1) / 24 - ties / 48)
  local zt = math.max(0, math.abs(w - m * (m + 1) / 4) - 0.5) / sdt
  H.near(r.p, 2 * sl.fit_c.norm_q(zt), 1e-12, "two-sided p with ties")
end)

H.test("paired bootstrap: seeded, sensible p-values and CI", function()
  local d = {}
  for i = 1, 30 do d[i] = 0.1 + 0.05 * math.sin(i) end
  local a = stats.bootstrap_mean(d, {alternative = "greater", B = 999, seed = 4})
  local b = stats.bootstrap_mean(d, {alternative = "greater", B = 999, seed = 4})
  H.eq(a.p, b.p, "same seed, same p")
  H.near(a.p, 1 / 1000, 1e-12, "every resample mean is above 0")
  H.truthy(a.ci[1] < stats.mean(d) and stats.mean(d) < a.ci[2], "CI holds the mean")
  H.near(stats.bootstrap_mean(d, {alternative = "less", B = 999, seed = 4}).p, 1, 1e-12, "less")
  local sym = {-1, 1, -2, 2, -3, 3, -4, 4}
  local p = stats.bootstrap_mean(sym, {B = 2000, seed = 1}).p
  H.truthy(p > 0.5, "symmetric differences: large two-sided p " .. p)
end)

H.test("paired: margins, orientation, and preserved versus non-inferior", function()
  local dense, worse = {}, {}
  for i = 1, 20 do
    dense[i] = 0.5 + 0.01 * i
    worse[i] = dense[i] - 0.01 -- uniformly worse by 0.01
  end
  local r = stats.paired(worse, dense, {margin = 0})
  H.near(r.p_worse, 0.5 ^ 20, 1e-18, "all 20 differences negative")
  H.eq(r.preserved, false)
  H.near(r.mean_diff, -0.01, 1e-12)
  local m = stats.paired(worse, dense, {margin = 0.02})
  H.near(m.p_noninferior, 0.5 ^ 20, 1e-18, "within the margin every time")
  H.eq(m.noninferior, true)
  H.eq(m.preserved, true)
  -- lower is better: the same numbers read as an error metric make the method better
  local l = stats.paired(worse, dense, {higher_is_better = false})
  H.eq(l.preserved, true)
  H.near(l.p_noninferior, 0.5 ^ 20, 1e-18)
  -- the sign test and the bootstrap give the same verdicts here
  H.eq(stats.paired(worse, dense, {test = "sign"}).preserved, false)
  H.eq(stats.paired(worse, dense, {test = "bootstrap", B = 500}).preserved, false)
  -- too few pairs can never reject at 0.05
  local few = stats.paired({0, 0, 0, 0}, {1, 1, 1, 1})
  H.eq(few.preserved, true)
  H.eq(few.underpowered, true)
  H.raises(function() stats.paired({1}, {1, 2}) end, "1 method values and 2 dense")
  H.raises(function() stats.paired({1}, {1}, {test = "t"}) end, "test must be")
  H.raises(function() stats.paired({1}, {1}, {margni = 1}) end, "unknown option 'margni'")
end)

-- Rows for max_compression: 40 inputs, dense scores, and a method whose loss at each C is given.
local function mc_rows(loss)
  math.randomseed(8)
  local rows = {}
  for i = 1, 40 do
    local base = 0.3 + 0.6 * math.random()
    rows[#rows + 1] = {method = "dense", key = "in" .. i, C = 1, value = base}
    local cs = {}
    for C in pairs(loss) do cs[#cs + 1] = C end
    table.sort(cs)
    for _, C in ipairs(cs) do
      local l = loss[C]
      local noise = (math.random() - 0.5) * 0.02
      rows[#rows + 1] = {method = "m", key = "in" .. i, C = C, group = C * 10, value = base - l + noise}
    end
  end
  return rows
end

H.test("max_compression: the largest C not significantly below dense", function()
  local r = stats.max_compression(mc_rows{[2] = 0, [5] = 0, [10] = 0.05, [20] = 0.2}, "m", 0.05)
  H.eq(r.max_c, 5)
  H.eq(#r.groups, 4)
  H.eq(r.groups[1].C, 2)
  H.eq(r.groups[1].group, 20)
  H.eq(r.groups[3].preserved, false)
  H.truthy(r.groups[4].p_worse < 1e-6, "C = 20 clearly worse")
  H.eq(r.groups[1].n, 40)
  -- a failure at 5 stops max_c there even if 10 passes again
  local g = stats.max_compression(mc_rows{[2] = 0, [5] = 0.05, [10] = 0}, "m", 0.05)
  H.eq(g.max_c, 2)
  H.eq(g.max_c_any, 10)
  -- the first budget failing leaves dense (C = 1)
  H.eq(stats.max_compression(mc_rows{[2] = 0.1}, "m", 0.05).max_c, 1)
  -- without any compression there is no max_c
  local noc = {}
  for _, r in ipairs(mc_rows{[2] = 0}) do
    noc[#noc + 1] = {method = r.method, key = r.key, value = r.value, group = r.method == "m" and "b1" or nil}
  end
  local nr = stats.max_compression(noc, "m", 0.05)
  H.eq(nr.max_c, nil)
  H.eq(nr.groups[1].n, 40)
  -- per task
  local rows = {}
  for _, r in ipairs(mc_rows{[2] = 0, [5] = 0.1}) do r.per = "a"; rows[#rows + 1] = r end
  for _, r in ipairs(mc_rows{[2] = 0, [5] = 0, [10] = 0.1}) do r.per = "b"; rows[#rows + 1] = r end
  local per, summary = stats.max_compression_per(rows, "m", 0.05)
  H.eq(per.a.max_c, 2)
  H.eq(per.b.max_c, 5)
  H.near(summary.mean, 3.5, 1e-12)
  H.near(summary.sd, math.sqrt(((2 - 3.5) ^ 2 + (5 - 3.5) ^ 2) / 1), 1e-12)
end)

H.test("rng and quantiles", function()
  local a, b = stats.rng(5), stats.rng(5)
  for _ = 1, 100 do H.eq(a(), b()) end
  local r, lo, hi, sum = stats.rng(1), 1, 0, 0
  for _ = 1, 10000 do
    local u = r()
    lo, hi, sum = math.min(lo, u), math.max(hi, u), sum + u
    local k = r(7)
    H.truthy(k >= 1 and k <= 7 and math.type(k) == "integer", "integer in range")
  end
  H.truthy(lo >= 0 and hi < 1, "in [0, 1)")
  H.near(sum / 10000, 0.5, 0.02, "uniform mean")
  H.near(stats.quantile({1, 2, 3, 4}, 0.5), 2.5, 1e-12)
  H.near(stats.quantile({10, 0, 5}, 0.25), 2.5, 1e-12)
  H.near(stats.quantile({3}, 0.975), 3, 1e-12)
end)

-- ---- the CLI -------------------------------------------------------------------------------

H.test("sparselab stats: per-budget tests against dense and the max compression", function()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local path = dir .. "/st.db"
  do
    local db <close> = sl.store.open(path)
    local run_id = db:begin_run{script = "test_stats.lua"}
    db:begin()
    for _, r in ipairs(mc_rows{[2] = 0, [5] = 0, [10] = 0.05, [20] = 0.2}) do
      db:record{run_id = run_id, method = r.method == "m" and "quest" or "dense", workload = "task",
        workload_params = {sample = r.key}, budget = r.method == "m" and r.C or nil,
        metrics = {score = r.value, density = 1 / r.C}}
    end
    db:commit()
    db:finish_run(run_id)
  end
  local function run(args)
    local p = io.popen(BUILD .. "/sparselab stats " .. path .. " " .. args .. " 2>&1")
    local text = p:read("a")
    local _, _, code = p:close()
    return code, text
  end
  local code, text = run("--method quest")
  io.write(text)
  H.eq(code, 0)
  H.truthy(text:find("max compression preserving score: 5", 1, true), "max compression line")
  code, text = run("--method quest --json")
  H.eq(code, 0)
  H.truthy(text:find('"max_c":5', 1, true), "json max_c")
  H.truthy(text:find('"budget":20', 1, true), "json budget")
  code, text = run("--method quest --margin 0.1 --test sign")
  H.eq(code, 0)
  H.truthy(text:find("max compression preserving score: 10", 1, true), "a margin of 0.1 tolerates the loss of 0.05")
  code, text = run("--method nosuch")
  H.eq(code, 1)
  H.truthy(text:find("no ok results of method 'nosuch'", 1, true), text)
  code, text = run("")
  H.eq(code, 1)
  H.truthy(text:find("usage: sparselab stats", 1, true), text)
  os.execute("rm -rf '" .. dir .. "'")
end)

H.done()
