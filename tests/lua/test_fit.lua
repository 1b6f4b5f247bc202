-- test_fit.lua — scaling-law fits (sparselab.fit, sl.fit_c, `sparselab fit`): the GSL binding
-- against closed-form least squares, callback models and their errors; the Sparse Frontier law
-- recovered from data generated with the card's published prefill held-out-L coefficients (every
-- true coefficient inside its bootstrap CI, held-out error reported), bootstrap coverage over
-- many seeds, power and log-linear laws, and the CLI writing the fit table.
-- Run from the repository root with build/sparselab.so on package.cpath.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local fit = require "sparselab.fit"
local F = sl.fit_c

-- The test's own noise: Lua's generator, seeded here (independent of sparselab.stats.rng).
local function gauss()
  return math.sqrt(-2 * math.log(1 - math.random())) * math.cos(2 * math.pi * math.random())
end

-- ---- the GSL binding ---------------------------------------------------------------------

-- Straight line y = a + b·x by the textbook formulas, with s² = RSS/(n − 2).
local function line_by_hand(xs, ys)
  local n, mx, my = #xs, 0, 0
  for i = 1, n do mx, my = mx + xs[i] / n, my + ys[i] / n end
  local sxx, sxy = 0, 0
  for i = 1, n do sxx, sxy = sxx + (xs[i] - mx) ^ 2, sxy + (xs[i] - mx) * (ys[i] - my) end
  local b = sxy / sxx
  local a = my - b * mx
  local rss = 0
  for i = 1, n do rss = rss + (ys[i] - a - b * xs[i]) ^ 2 end
  local s2 = rss / (n - 2)
  return a, b, s2 * (1 / n + mx * mx / sxx), s2 / sxx, rss
end

H.test("linear and nls against closed-form least squares", function()
  math.randomseed(11)
  local xs, ys, X, W = {}, {}, {}, {}
  for i = 1, 40 do
    xs[i] = i / 4
    ys[i] = 3 - 0.7 * xs[i] + 0.3 * gauss()
    X[i], W[i] = {1, xs[i]}, 1
  end
  local a, b, va, vb, rss = line_by_hand(xs, ys)
  for _, r in ipairs{F.linear{x = X, y = ys}, F.linear{x = X, y = ys, weights = W},
                     F.nls{x = X, y = ys, model = "linear", p0 = {0, 0}}} do
    H.near(r.params[1], a, 1e-8, "intercept")
    H.near(r.params[2], b, 1e-8, "slope")
    H.near(r.cov[1][1], va, 1e-9, "var(intercept)")
    H.near(r.cov[2][2], vb, 1e-10, "var(slope)")
    H.near(r.rss, rss, 1e-8, "rss")
    H.eq(r.dof, 38)
    H.near(r.fitted[7], a + b * xs[7], 1e-8, "fitted")
  end
end)

H.test("power model: exact recovery, analytic and finite-difference Jacobians agree", function()
  local X, Y = {}, {}
  for i = 1, 25 do
    X[i] = {i * 0.8}
    Y[i] = 2.5 * (i * 0.8) ^ -0.6 + 0.1
  end
  local r = F.nls{x = X, y = Y, model = "power", p0 = {1, -1, 0}}
  H.eq(r.status, "ok")
  H.truthy(r.converged and r.iterations > 0, "converged")
  H.near(r.params[1], 2.5, 1e-7, "a")
  H.near(r.params[2], -0.6, 1e-7, "b")
  H.near(r.params[3], 0.1, 1e-7, "c")
  -- with noise, a Lua callback model gives the same estimates and covariance
  math.randomseed(12)
  for i = 1, 25 do Y[i] = Y[i] + 0.01 * gauss() end
  local built = F.nls{x = X, y = Y, model = "power", p0 = {1, -1, 0}}
  local calls = 0
  local lua = F.nls{x = X, y = Y, p0 = {1, -1, 0},
    model = function(p, row) calls = calls + 1; return p[1] * row[1] ^ p[2] + p[3] end}
  H.truthy(calls > 25, "the callback ran")
  for j = 1, 3 do
    H.near(lua.params[j], built.params[j], 1e-6, "param " .. j)
    H.near(lua.cov[j][j], built.cov[j][j], 1e-6 * built.cov[j][j] + 1e-12, "var " .. j)
  end
  -- power0 (no offset) on exact data
  for i = 1, 25 do Y[i] = 0.04 * X[i][1] ^ 0.9 end
  local r0 = F.nls{x = X, y = Y, model = "power0", p0 = {1, 0}}
  H.near(r0.params[1], 0.04, 1e-9, "a (power0)")
  H.near(r0.params[2], 0.9, 1e-7, "b (power0)")
end)

H.test("nls: model errors become clean failures; bad arguments are named", function()
  local X, Y = {}, {}
  for i = 1, 10 do X[i], Y[i] = {i}, 2 * i end
  local n = 0
  H.raises(function()
    F.nls{x = X, y = Y, p0 = {1},
      model = function(p, row) n = n + 1; if n > 30 then error("boom") end return p[1] * row[1] end}
  end, "sl.fit_c.nls: model: ")
  H.raises(function() F.nls{x = X, y = Y, p0 = {1}, model = function() error("boom", 0) end} end, "model: boom")
  H.raises(function() F.nls{x = X, y = Y, p0 = {1}, model = function() return "x" end} end, "returned string")
  H.raises(function() F.nls{x = X, y = Y, p0 = {1}, model = function() return nil end} end, "returned nil")
  -- the state is fine afterwards
  local ok = F.nls{x = X, y = Y, p0 = {1}, model = function(p, row) return p[1] * row[1] end}
  H.near(ok.params[1], 2, 1e-9, "fit after failures")
  H.raises(function() F.nls{x = X, y = Y, p0 = {1}, model = "linear", wieghts = {}} end, "unknown key 'wieghts'")
  H.raises(function() F.nls{x = X, y = Y, p0 = {1, 2, 3}, model = "linear"} end, "p0 has 3")
  H.raises(function() F.nls{x = {{1}}, y = {1}, p0 = {1, 1, 1}, model = "power"} end, "cannot determine")
  H.raises(function() F.nls{x = {{0}, {1}, {2}}, y = {1, 2, 3}, p0 = {1, 1, 1}, model = "power"} end, "x > 0")
  H.raises(function() F.nls{x = X, y = Y, p0 = {1}, model = "cubic"} end, "unknown model 'cubic'")
  H.raises(function() F.linear{x = X, y = {1, 2}} end, "x has 10 rows")
  H.raises(function() F.linear{x = X, y = Y, weights = {1}} end, "weights has 1")
  H.raises(function() F.linear{x = {{1}, {0 / 0}}, y = {1, 2}} end, "x[2][1] must be a finite number")
  H.raises(function() F.linear{x = {{1}, {2}}, y = {1, math.huge}} end, "y[2] is not finite")
  H.raises(function() F.linear{x = {{1}, {2, 3}}, y = {1, 2}} end, "x[2] must be a row of 1 numbers")
end)

H.test("distribution functions", function()
  H.near(F.norm_p(1.959963984540054), 0.975, 1e-12, "Phi(1.96)")
  H.near(F.norm_q(3), 0.0013498980316301, 1e-14, "upper tail at 3")
  H.near(F.norm_pinv(0.975), 1.959963984540054, 1e-10, "probit")
end)

-- ---- the Sparse Frontier law --------------------------------------------------------------

-- Card sparse_frontier, Table 3, prefill, held-out L (QuALITY is the reference task).
local TRUTH = {eps = -16.92, alpha = 1.31, beta = -1.15, gamma = -1.00,
  ["delta[squad]"] = 0.27, ["delta[toefl]"] = 0.80, ["delta[cwe]"] = 0.76, ["delta[niah]"] = 14.67,
  ["delta[vt]"] = -1.60, ["delta[filt]"] = -3.55, ["delta[mult]"] = -3.21, ["delta[retr]"] = 1.43}
local TASKS = {"quality", "squad", "toefl", "cwe", "niah", "vt", "filt", "mult", "retr"}
local SIGMA = 0.5 -- noise on the logit scale

local function sparse_frontier_rows(seed)
  math.randomseed(seed)
  local rows = {}
  for _, t in ipairs(TASKS) do
    for _, N in ipairs{7e9, 14e9, 32e9, 72e9} do
      for _, L in ipairs{16384, 32768, 65536, 131072} do
        for _, C in ipairs{1, 1.43, 2, 5, 10, 20} do
          local Y = TRUTH.eps + (TRUTH["delta[" .. t .. "]"] or 0) + TRUTH.alpha * math.log(N) +
            TRUTH.beta * math.log(L) + TRUTH.gamma * math.log(C) + SIGMA * gauss()
          rows[#rows + 1] = {task = t, N = N, L = L, C = C, y = 1 / (1 + math.exp(-Y))}
        end
      end
    end
  end
  return rows
end

local function print_fit(f, title)
  io.write(title, "\n")
  local names = {}
  for _, n in ipairs(f.names) do names[#names + 1] = n end
  for _, n in ipairs(names) do
    io.write(string.format("  %-13s true %7.3f  est %8.4f  se %.4f  CI [%8.4f, %8.4f]\n", n, TRUTH[n] or 0 / 0,
      f.params[n], f.se[n], f.ci[n][1], f.ci[n][2]))
  end
  if f.heldout then
    local h = f.heldout
    io.write(string.format("  held-out %s > %g: n %d, RMSE %.4f (logit; noise sd %.2f), MAE %.4f, bias %.4f, " ..
      "R2 %.4f, RMSE %.4f on accuracy\n", h.axis, h.cutoff, h.n, h.rmse, SIGMA, h.mae, h.bias, h.r2, h.rmse_y))
  end
end

H.test("sparse_frontier: the card's coefficients recovered within bootstrap CIs; held-out L", function()
  local rows = sparse_frontier_rows(20250428)
  local f = fit.fit(rows, {law = "sparse_frontier", heldout = {axis = "L", cutoff = 65536}, bootstrap = 200,
    seed = 3})
  print_fit(f, "sparse_frontier fit on L <= 64K (648 points), predicting L = 128K:")
  H.eq(f.ref_task, "quality")
  H.eq(f.link, "logit")
  H.eq(#f.names, 12)
  H.eq(f.n_points, 9 * 4 * 3 * 6)
  H.eq(f.n_bootstrap, 200)
  H.eq(f.solver.status, "ok")
  for _, n in ipairs(f.names) do
    local truth, ci = TRUTH[n], f.ci[n]
    H.truthy(truth, "a true value for " .. n)
    H.truthy(ci[1] <= truth and truth <= ci[2],
      string.format("%s = %g inside its CI [%g, %g]", n, truth, ci[1], ci[2]))
    H.truthy(math.abs(f.params[n] - truth) < 4 * f.se[n],
      string.format("%s: estimate %g within 4 se (%g) of %g", n, f.params[n], f.se[n], truth))
    -- the bootstrap and asymptotic intervals agree in width (within 30%)
    local w = (ci[2] - ci[1]) / (2 * 1.96 * f.se[n])
    H.truthy(w > 0.7 and w < 1.3, n .. ": bootstrap / asymptotic CI width ratio " .. w)
  end
  local h = f.heldout
  H.eq(h.n, 216)
  H.eq(h.n_train, 648)
  H.truthy(h.rmse < SIGMA * 1.25, "held-out RMSE " .. h.rmse .. " close to the noise sd")
  H.truthy(math.abs(h.bias) < 0.25, "held-out bias " .. h.bias)
  H.truthy(h.r2 > 0.95, "held-out R2 " .. h.r2)
  H.truthy(f.r2 > 0.95, "in-sample R2")
  H.near(f.rmse, SIGMA, 0.06, "in-sample RMSE is the noise")
  -- a prediction at the card's worked example (7B, 32K, C = 10, QuALITY): sigma(-1.5) ~ 0.18
  local pred = fit.predict(f, {task = "quality", N = 7e9, L = 32768, C = 10})
  local want = 1 / (1 + math.exp(-(TRUTH.eps + TRUTH.alpha * math.log(7e9) + TRUTH.beta * math.log(32768) +
    TRUTH.gamma * math.log(10))))
  H.near(pred, want, 0.03, "predicted accuracy at the card's example")
end)

H.test("sparse_frontier: all points, the exact linear solver agrees with nls; axes with one value", function()
  local rows = sparse_frontier_rows(5)
  local a = fit.fit(rows, {law = "sparse_frontier", bootstrap = 0})
  local b = fit.fit(rows, {law = "sparse_frontier", bootstrap = 0, solver = "linear"})
  H.eq(a.n_points, 864)
  for _, n in ipairs(a.names) do
    H.near(a.params[n], b.params[n], 1e-6, n .. " nls vs linear")
    H.near(a.se[n], b.se[n], 1e-6, n .. " se nls vs linear")
    H.truthy(math.abs(a.params[n] - TRUTH[n]) < 4 * a.se[n], n .. " near the truth")
  end
  -- one model size only: alpha is dropped and reported
  local one = {}
  for _, r in ipairs(rows) do if r.N == 14e9 then one[#one + 1] = r end end
  local c = fit.fit(one, {law = "sparse_frontier", bootstrap = 20})
  H.eq(c.params.alpha, nil)
  H.truthy(c.dropped[1]:find("alpha", 1, true), "alpha reported dropped")
  H.eq(#c.names, 11)
end)

H.test("bootstrap coverage over 20 datasets is near the nominal 95%", function()
  local inside, total = 0, 0
  for s = 1, 20 do
    local f = fit.fit(sparse_frontier_rows(1000 + s), {law = "sparse_frontier", bootstrap = 100, seed = s})
    for _, n in ipairs(f.names) do
      total = total + 1
      if f.ci[n][1] <= TRUTH[n] and TRUTH[n] <= f.ci[n][2] then inside = inside + 1 end
    end
  end
  io.write(string.format("bootstrap coverage: %d of %d true coefficients inside their 95%% CIs (%.3f)\n", inside,
    total, inside / total))
  H.truthy(inside / total > 0.85 and inside / total <= 1, "coverage " .. inside / total)
end)

-- ---- power and log-linear laws ------------------------------------------------------------

local POWER = {a = 0.02, b = 0.8, c = 0.01} -- err = a·C^b + c, noise sd 0.002

local function power_rows(seed)
  math.randomseed(seed)
  local rows = {}
  for _, C in ipairs{1, 1.43, 1.67, 2, 2.5, 3.33, 5, 7.5, 10, 15, 20} do
    for _ = 1, 12 do rows[#rows + 1] = {C = C, y = POWER.a * C ^ POWER.b + POWER.c + 0.002 * gauss()} end
  end
  return rows
end

H.test("power law of error against compression: recovery, CIs, held-out C", function()
  local rows = power_rows(77)
  local f = fit.fit(rows, {law = "power", bootstrap = 200, seed = 9})
  io.write("power law y = a*C^b + c (one dataset):\n")
  for _, n in ipairs{"a", "b", "c"} do
    io.write(string.format("  %s true %.3f est %.5f se %.5f CI [%.5f, %.5f]\n", n, POWER[n], f.params[n], f.se[n],
      f.ci[n][1], f.ci[n][2]))
    H.truthy(math.abs(f.params[n] - POWER[n]) < 4 * f.se[n], n .. " within 4 se")
  end
  H.eq(f.solver.status, "ok")
  local h = fit.fit(rows, {law = "power", bootstrap = 0, heldout = {axis = "C"}}).heldout
  io.write(string.format("  held-out C = 20 from C <= 15: n %d, RMSE %.5f (noise sd 0.002), bias %.5f\n", h.n, h.rmse,
    h.bias))
  H.eq(h.cutoff, 15)
  H.eq(h.n, 12)
  H.truthy(h.rmse < 0.004, "held-out RMSE")
  -- Whether the truth falls inside one dataset's CIs is a coin with P ~ 0.95 per coefficient, so
  -- coverage is checked over many datasets (a percentile bootstrap of a nonlinear fit with B = 100
  -- covers a little under the nominal level).
  local inside, total = 0, 0
  for s = 1, 30 do
    local g = fit.fit(power_rows(500 + s), {law = "power", bootstrap = 100, seed = s})
    for _, n in ipairs{"a", "b", "c"} do
      total = total + 1
      if g.ci[n][1] <= POWER[n] and POWER[n] <= g.ci[n][2] then inside = inside + 1 end
    end
  end
  io.write(string.format("  coverage over 30 datasets: %d of %d inside their 95%% CIs (%.3f)\n", inside, total,
    inside / total))
  H.truthy(inside / total >= 0.8, "power-law CI coverage " .. inside / total)
  -- without the offset, on data without one
  local rows0 = {}
  for i, r in ipairs(rows) do rows0[i] = {C = r.C, y = 0.05 * r.C ^ -0.5 * math.exp(0.01 * gauss())} end
  local g = fit.fit(rows0, {law = "power", offset = false, bootstrap = 100})
  H.eq(#g.names, 2)
  H.near(g.params.a, 0.05, 0.002, "a (no offset)")
  H.near(g.params.b, -0.5, 0.02, "b (no offset)")
end)

H.test("loglinear law and input errors", function()
  math.randomseed(3)
  local rows = {}
  for i = 1, 200 do
    local x1, x2 = math.exp(math.random() * 4), math.exp(math.random() * 3)
    rows[i] = {n_k = x1, C = x2, y = 1 + 0.5 * math.log(x1) - 0.3 * math.log(x2) + 0.05 * gauss()}
  end
  local f = fit.fit(rows, {law = "loglinear", x = {"n_k", "C"}, bootstrap = 100})
  H.near(f.params.a, 1, 0.05, "a")
  H.near(f.params["b[n_k]"], 0.5, 0.02, "b[n_k]")
  H.near(f.params["b[C]"], -0.3, 0.02, "b[C]")
  H.raises(function() fit.fit(rows, {law = "cubic"}) end, "unknown law 'cubic'")
  H.raises(function() fit.fit(rows, {law = "loglinear", boostrap = 10}) end, "unknown option 'boostrap'")
  H.raises(function() fit.fit({{task = "a", N = 1, L = 2, C = 1, y = 1}}, {law = "sparse_frontier"}) end,
    "outside the logit link's domain")
  H.raises(function() fit.fit(rows, {law = "loglinear", x = {"n_k"}, heldout = {axis = "zz"}}) end, "zz")
  H.raises(function() fit.fit({{C = 0, y = 1}, {C = 1, y = 2}, {C = 2, y = 3}}, {law = "power"}) end,
    "C must be a positive number")
  H.raises(function() fit.fit({{C = 1}}, {law = "power"}) end, "row 1 has no y")
end)

-- ---- the CLI and the fit table -------------------------------------------------------------

local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p '" .. tmpdir .. "'"))

local function run(args)
  local p = io.popen(BUILD .. "/sparselab " .. args .. " 2>&1")
  local text = p:read("a")
  local _, _, code = p:close()
  return code, text
end

H.test("sparselab fit writes the fit table and reports held-out error", function()
  local path = tmpdir .. "/sf.db"
  do
    local db <close> = sl.store.open(path)
    local run_id = db:begin_run{script = "test_fit.lua"}
    db:begin()
    math.randomseed(4242)
    for _, r in ipairs(sparse_frontier_rows(4242)) do
      db:record{run_id = run_id, method = r.C == 1 and "dense" or "quest", workload = r.task, budget = r.C,
        workload_params = {N = r.N, L = r.L, task = r.task}, n_k = r.L,
        metrics = {score = r.y, density = 1 / r.C, err = 0.02 * r.C ^ 0.8 + 0.01 + 0.002 * gauss()}}
    end
    db:commit()
    db:finish_run(run_id)
  end
  local code, text = run("fit " .. path .. " --law sparse_frontier --heldout L:65536 --bootstrap 100 --seed 5")
  io.write(text)
  H.eq(code, 0, "exit status")
  H.truthy(text:find("logit(score) = eps", 1, true), "formula line")
  H.truthy(text:find("648 points fitted of 864 read", 1, true), "point counts")
  H.truthy(text:find("held-out L > 65536: 216 points", 1, true), "held-out line")
  H.truthy(text:find("stored as fit 1", 1, true), "stored")
  local db <close> = sl.store.open(path)
  local row = db:query("SELECT * FROM fit")[1]
  H.eq(row.law, "sparse_frontier")
  H.eq(row.n_points, 648)
  H.eq(row.n_bootstrap, 100)
  H.eq(row.seed, 5)
  H.truthy(row.selection_sql:find("FROM v_result", 1, true), "selection_sql")
  H.eq(#row.data_sha256, 64)
  local q = db:query([[SELECT json_extract(params_json, '$.gamma') AS g, json_extract(ci_json, '$.gamma[0]') AS lo,
    json_extract(ci_json, '$.gamma[1]') AS hi, json_extract(heldout_json, '$.n') AS hn,
    json_extract(heldout_json, '$.rmse') AS hr, json_extract(selection_json, '$.columns.C') AS cc FROM fit]])[1]
  H.truthy(q.lo <= -1 and -1 <= q.hi, "gamma's stored CI holds -1")
  H.near(q.g, -1, 0.1, "stored gamma")
  H.eq(q.hn, 216)
  H.truthy(q.hr < 0.7, "stored held-out RMSE")
  H.eq(q.cc, "coalesce(m.compression, 1.0 / density)")

  -- --json, a power law on a metric outside v_result's columns, --no-store
  code, text = run("fit " .. path .. " --law power --y m.err --bootstrap 50 --no-store --json")
  H.eq(code, 0, "power exit status: " .. text)
  local j = db:query("SELECT json_extract(?, '$.params.b') AS b, json_extract(?, '$.fit_id') AS id", text, text)[1]
  H.near(j.b, 0.8, 0.05, "power exponent from the CLI")
  H.eq(j.id, nil, "--no-store")
  H.eq(db:query("SELECT count(*) AS n FROM fit")[1].n, 1)

  -- errors: one line, exit 1
  for _, case in ipairs{{"fit " .. path .. " --law cubic", "unknown law 'cubic'"},
                        {"fit " .. path, "usage: sparselab fit"},
                        {"fit " .. tmpdir .. "/none.db --law power", "no such database"},
                        {"fit " .. path .. " --law power --heldout 'L:x'", "cutoff"},
                        {"fit " .. path .. " --law power --where 'nonsense('", "fit: "},
                        {"fit " .. path .. " --law sparse_frontier --where 'method = \"none\"'", "no results"}} do
    code, text = run(case[1])
    H.eq(code, 1, case[1])
    H.truthy(text:find(case[2], 1, true), case[1] .. ": message '" .. text .. "'")
    H.eq(select(2, text:gsub("\n", "")), 1, "one line")
  end
end)

os.execute("rm -rf '" .. tmpdir .. "'")
H.done()
