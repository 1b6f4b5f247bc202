-- sparselab.stats — paired tests of a method against dense over the same inputs (sign test,
-- Wilcoxon signed-rank, paired bootstrap), the Sparse Frontier's "maximum compression that
-- statistically preserves accuracy" (card sparse_frontier, step 6), a seeded random number
-- generator and percentiles. Differences are oriented so that d > 0 means the method is better
-- than dense (d = method − dense for a higher-is-better metric, dense − method otherwise).
local sl = require "sparselab"

local S = {}

-- ---- random numbers and summaries -------------------------------------------------------

--- A seeded generator (splitmix64) with no shared state: r() → float in [0, 1), r(n) → integer
--- in [1, n]. The same seed gives the same stream on every platform with Lua 5.4.
function S.rng(seed)
  local s = math.tointeger(seed)
  if not s then sl.fail("stats.rng: seed must be an integer, found %s", tostring(seed)) end
  return function(n)
    s = s + 0x9E3779B97F4A7C15
    local z = s
    z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ~ (z >> 27)) * 0x94D049BB133111EB
    z = z ~ (z >> 31)
    local u = (z >> 11) * 2.0 ^ -53
    if n then return math.floor(u * n) + 1 end
    return u
  end
end

--- Standard normal deviate from r (Box-Muller; one of the pair).
function S.gauss(r)
  local u = r()
  while u == 0 do u = r() end
  return math.sqrt(-2 * math.log(u)) * math.cos(2 * math.pi * r())
end

function S.mean(v)
  local s = 0
  for _, x in ipairs(v) do s = s + x end
  return #v > 0 and s / #v or 0 / 0
end

--- Sample standard deviation (n − 1); NaN for fewer than two values.
function S.sd(v)
  if #v < 2 then return 0 / 0 end
  local m, s = S.mean(v), 0
  for _, x in ipairs(v) do s = s + (x - m) ^ 2 end
  return math.sqrt(s / (#v - 1))
end

--- The p-quantile of the values (linear interpolation between order statistics, "type 7").
function S.quantile(v, p)
  local t = {}
  for i, x in ipairs(v) do t[i] = x end
  table.sort(t)
  local n = #t
  if n == 0 then return 0 / 0 end
  local h = (n - 1) * p + 1
  local lo = math.floor(h)
  if lo >= n then return t[n] end
  return t[lo] + (h - lo) * (t[lo + 1] - t[lo])
end

function S.median(v) return S.quantile(v, 0.5) end

-- ---- one-sample tests on differences ------------------------------------------------------

local ALTERNATIVES = {greater = true, less = true, two_sided = true}

local function check_alt(alt, what)
  alt = alt or "two_sided"
  if not ALTERNATIVES[alt] then
    sl.fail("%s: alternative must be 'greater', 'less' or 'two_sided', found '%s'", what, tostring(alt))
  end
  return alt
end

-- The p-value for alt from the one-sided p-values of "less" and "greater".
local function tails(p_less, p_greater, alt)
  if alt == "greater" then return p_greater elseif alt == "less" then return p_less end
  return math.min(1, 2 * math.min(p_less, p_greater))
end

--- P(X ≤ k) and P(X ≥ k) for X ~ Binomial(n, 1/2), summed in log space.
local function binom_half_tails(n, k)
  local lf = {[0] = 0}
  for i = 1, n do lf[i] = lf[i - 1] + math.log(i) end
  local le, ge = 0, 0
  for j = 0, n do
    local pj = math.exp(lf[n] - lf[j] - lf[n - j] - n * math.log(2))
    if j <= k then le = le + pj end
    if j >= k then ge = ge + pj end
  end
  return math.min(1, le), math.min(1, ge)
end

--- Sign test of the differences d (zeros dropped). alternative "greater": the differences tend
--- to be positive. → {n, n_pos, n_neg, n_zero, p}
function S.sign_test(d, opts)
  opts = opts or {}
  local alt = check_alt(opts.alternative, "stats.sign_test")
  local pos, neg, zero = 0, 0, 0
  for _, x in ipairs(d) do
    if x > 0 then pos = pos + 1 elseif x < 0 then neg = neg + 1 else zero = zero + 1 end
  end
  local n = pos + neg
  local p = 1
  if n > 0 then
    local le, ge = binom_half_tails(n, pos)
    p = tails(le, ge, alt)
  end
  return {test = "sign", n = n, n_pos = pos, n_neg = neg, n_zero = zero, p = p, alternative = alt}
end

--- Midranks of |d| for the non-zero d: returns ranks (parallel to the kept values), the kept
--- values, and Σ(t³ − t) over tie groups.
local function signed_ranks(d)
  local kept = {}
  for _, x in ipairs(d) do if x ~= 0 then kept[#kept + 1] = x end end
  local order = {}
  for i = 1, #kept do order[i] = i end
  table.sort(order, function(a, b) return math.abs(kept[a]) < math.abs(kept[b]) end)
  local ranks, ties = {}, 0
  local i = 1
  while i <= #order do
    local j = i
    while j < #order and math.abs(kept[order[j + 1]]) == math.abs(kept[order[i]]) do j = j + 1 end
    local t = j - i + 1
    for q = i, j do ranks[order[q]] = (i + j) / 2 end
    ties = ties + t * t * t - t
    i = j + 1
  end
  return ranks, kept, ties
end

--- Wilcoxon signed-rank test of the differences d (zeros dropped, ties get midranks). Exact
--- null distribution (every assignment of signs to the ranks, midranks included) for n ≤
--- opts.exact_max (default 50); otherwise the normal approximation with the tie correction of
--- the variance and a continuity correction of 1/2. → {n, w_plus, w_minus, p, exact, z}
function S.wilcoxon(d, opts)
  opts = opts or {}
  local alt = check_alt(opts.alternative, "stats.wilcoxon")
  local ranks, kept, ties = signed_ranks(d)
  local n = #kept
  local wp, wm = 0, 0
  for i = 1, n do
    if kept[i] > 0 then wp = wp + ranks[i] else wm = wm + ranks[i] end
  end
  local r = {test = "wilcoxon", n = n, n_zero = #d - n, w_plus = wp, w_minus = wm, alternative = alt}
  if n == 0 then
    r.p, r.exact = 1, true
    return r
  end
  if n <= (opts.exact_max or 50) then
    -- Counts of sign assignments by twice the positive rank sum (midranks are halves).
    local count, top = {[0] = 1}, 0
    for i = 1, n do
      local r2 = math.tointeger(2 * ranks[i])
      for s = top, 0, -1 do
        if count[s] then count[s + r2] = (count[s + r2] or 0) + count[s] end
      end
      top = top + r2
    end
    local w2 = math.tointeger(2 * wp)
    local le, ge, total = 0, 0, 2.0 ^ n
    for s = 0, top do
      local c = count[s]
      if c then
        if s <= w2 then le = le + c end
        if s >= w2 then ge = ge + c end
      end
    end
    r.p, r.exact = tails(le / total, ge / total, alt), true
    return r
  end
  local mean = n * (n + 1) / 4
  local sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - ties / 48)
  local fit_c = sl.fit_c
  local z
  if sd == 0 then
    r.p = 1
  elseif alt == "greater" then
    z = (wp - mean - 0.5) / sd
    r.p = fit_c.norm_q(z)
  elseif alt == "less" then
    z = (wp - mean + 0.5) / sd
    r.p = fit_c.norm_p(z)
  else
    z = math.max(0, math.abs(wp - mean) - 0.5) / sd
    r.p = math.min(1, 2 * fit_c.norm_q(z))
  end
  r.z, r.exact = z, false
  return r
end

--- Paired bootstrap of the mean difference: B resamples (default 2000, seeded). The p-value
--- for "greater" is (1 + #{mean* ≤ 0}) / (B + 1) (the level at which the percentile interval
--- first excludes 0), and the mirror for "less". → {n, mean, ci = {lo, hi}, p}
function S.bootstrap_mean(d, opts)
  opts = opts or {}
  local alt = check_alt(opts.alternative, "stats.bootstrap_mean")
  local B = opts.B or 2000
  local r = S.rng(opts.seed or 1)
  local n = #d
  local res = {test = "bootstrap", n = n, mean = S.mean(d), B = B, alternative = alt}
  if n == 0 then
    res.p = 1
    return res
  end
  local means, le, ge = {}, 0, 0
  for b = 1, B do
    local s = 0
    for _ = 1, n do s = s + d[r(n)] end
    local m = s / n
    means[b] = m
    if m <= 0 then le = le + 1 end
    if m >= 0 then ge = ge + 1 end
  end
  local level = opts.level or 0.95
  res.ci = {S.quantile(means, (1 - level) / 2), S.quantile(means, 1 - (1 - level) / 2)}
  -- "less" is supported by resamples whose mean stays below 0, "greater" by those above.
  local p_less, p_greater = (1 + ge) / (B + 1), (1 + le) / (B + 1)
  res.p = tails(p_less, p_greater, alt)
  return res
end

-- ---- a method against dense -------------------------------------------------------------

local TESTS = {wilcoxon = S.wilcoxon, sign = S.sign_test, bootstrap = S.bootstrap_mean}

--- Paired comparison of method values a[i] with dense values b[i] on the same inputs.
--- opts: test ("wilcoxon" default, "sign", "bootstrap"), margin δ ≥ 0 (default 0),
--- higher_is_better (default true), alpha (default 0.05), B, seed.
--- With d oriented (d > 0: method better) and e = d + δ:
---   p_worse: H1 "the method is worse than dense by more than δ" (e tends negative);
---            preserved = p_worse ≥ alpha (the card's "not significantly below dense").
---   p_noninferior: H1 "the method is not worse than dense by more than δ" (e tends positive);
---            noninferior = p_noninferior < alpha (a non-inferiority claim with evidence).
local PAIRED_KEYS = {test = true, margin = true, higher_is_better = true, alpha = true, B = true, seed = true,
  exact_max = true, dense = true}

function S.paired(a, b, opts)
  opts = opts or {}
  for k in pairs(opts) do
    if not PAIRED_KEYS[k] then sl.fail("stats.paired: unknown option '%s'", tostring(k)) end
  end
  if #a ~= #b then sl.fail("stats.paired: %d method values and %d dense values", #a, #b) end
  local test = opts.test or "wilcoxon"
  local f = TESTS[test]
  if not f then sl.fail("stats.paired: test must be 'wilcoxon', 'sign' or 'bootstrap', found '%s'", tostring(test)) end
  local margin = opts.margin or 0
  if not (margin >= 0) then sl.fail("stats.paired: margin must be >= 0, found %s", tostring(margin)) end
  local alpha = opts.alpha or 0.05
  if not (alpha > 0 and alpha < 1) then sl.fail("stats.paired: alpha must be in (0, 1), found %s", tostring(alpha)) end
  local hib = opts.higher_is_better ~= false
  local d, e = {}, {}
  for i = 1, #a do
    d[i] = hib and a[i] - b[i] or b[i] - a[i]
    e[i] = d[i] + margin
  end
  local common = {B = opts.B, seed = opts.seed, exact_max = opts.exact_max}
  local function run(alt)
    local o = {alternative = alt}
    for k, v in pairs(common) do o[k] = v end
    return f(e, o)
  end
  local worse, better = run("less"), run("greater")
  -- The smallest one-sided p-value the test can give with these pairs: when it is not below
  -- alpha, "preserved" says only that there were too few pairs to tell.
  local min_p = test == "bootstrap" and 1 / ((opts.B or 2000) + 1) or 0.5 ^ worse.n
  return {test = test, n = #d, n_used = worse.n, mean_diff = S.mean(d), median_diff = S.median(d), margin = margin,
    alpha = alpha, p_worse = worse.p, p_noninferior = better.p, preserved = worse.p >= alpha,
    noninferior = better.p < alpha, min_p = min_p, underpowered = min_p >= alpha, detail = worse}
end

-- Mean of the values per key (repeats of one input are averaged).
local function by_key(rows)
  local sum, cnt, keys = {}, {}, {}
  for _, r in ipairs(rows) do
    if sum[r.key] == nil then
      keys[#keys + 1] = r.key
      sum[r.key], cnt[r.key] = 0, 0
    end
    sum[r.key] = sum[r.key] + r.value
    cnt[r.key] = cnt[r.key] + 1
  end
  local m = {}
  for _, k in ipairs(keys) do m[k] = sum[k] / cnt[k] end
  return m, keys
end

--- Per-budget paired tests of `method` against dense and the largest compression that
--- statistically preserves the metric (card sparse_frontier, step 6).
--- rows: {method =, key = (pairs an input across methods), C = compression, value =,
---        group = (optional; the budget — defaults to C)}; dense rows have method opts.dense
---        (default "dense"). Each group of the method is paired with dense by key (repeats of a
---        key averaged); its C is the median C of its rows.
--- → {method, max_c, max_c_any, groups = {{group, C, n, mean_diff, p_worse, p_noninferior,
---    preserved, noninferior, underpowered}, ... by C}}. max_c is the largest C such that every
---    group up to it is preserved (1 when the first is not: dense itself); max_c_any ignores the
---    gaps; both are nil when no row has a C. A group with too few pairs to ever reject counts as
---    preserved and is marked underpowered.
function S.max_compression(rows, method, alpha, opts)
  opts = opts or {}
  local dense_id = opts.dense or "dense"
  local dense_rows, groups, order = {}, {}, {}
  for _, r in ipairs(rows) do
    if r.value ~= nil and r.key ~= nil then
      if r.method == dense_id then
        dense_rows[#dense_rows + 1] = r
      elseif r.method == method then
        local g = r.group
        if g == nil then g = r.C end
        if g ~= nil then
          if not groups[g] then
            groups[g] = {}
            order[#order + 1] = g
          end
          table.insert(groups[g], r)
        end
      end
    end
  end
  local dense = by_key(dense_rows)
  local popts = {}
  for k, v in pairs(opts) do popts[k] = v end
  popts.alpha = alpha or 0.05
  local out = {method = method, groups = {}, n_dense = #dense_rows}
  for _, g in ipairs(order) do
    local m, keys = by_key(groups[g])
    local a, b, cs = {}, {}, {}
    for _, k in ipairs(keys) do
      if dense[k] ~= nil then
        a[#a + 1], b[#b + 1] = m[k], dense[k]
      end
    end
    for _, r in ipairs(groups[g]) do if r.C then cs[#cs + 1] = r.C end end
    local t = {group = g, C = #cs > 0 and S.median(cs) or nil, n = #a, n_unpaired = #keys - #a}
    if #a > 0 then
      local p = S.paired(a, b, popts)
      t.mean_diff, t.p_worse, t.p_noninferior = p.mean_diff, p.p_worse, p.p_noninferior
      t.preserved, t.noninferior, t.underpowered = p.preserved, p.noninferior, p.underpowered
    end
    out.groups[#out.groups + 1] = t
  end
  table.sort(out.groups, function(x, y)
    local cx, cy = x.C or math.huge, y.C or math.huge
    if cx ~= cy then return cx < cy end
    return tostring(x.group) < tostring(y.group)
  end)
  local max_c, any, broken, known = 1, nil, false, false
  for _, t in ipairs(out.groups) do
    known = known or t.C ~= nil
    if t.C and t.n > 0 then
      if t.preserved then
        if not broken then max_c = math.max(max_c, t.C) end
        any = math.max(any or 1, t.C)
      else
        broken = true
      end
    end
  end
  -- Without any group's compression there is nothing to report.
  if known then out.max_c, out.max_c_any = max_c, any or 1 end
  return out
end

--- max_compression for each value of row.per (e.g. a task): → {per → result} and a summary
--- {n, mean, sd} of max_c across them (the card reports mean ± std across tasks).
function S.max_compression_per(rows, method, alpha, opts)
  local parts, order = {}, {}
  for _, r in ipairs(rows) do
    local p = r.per
    if p == nil then p = "" end
    if not parts[p] then
      parts[p] = {}
      order[#order + 1] = p
    end
    table.insert(parts[p], r)
  end
  table.sort(order, function(x, y) return tostring(x) < tostring(y) end)
  local res, values = {}, {}
  for _, p in ipairs(order) do
    res[p] = S.max_compression(parts[p], method, alpha, opts)
    values[#values + 1] = res[p].max_c -- nil (no C known) leaves it out
  end
  return res, {n = #values, mean = S.mean(values), sd = S.sd(values), order = order}
end

return S
