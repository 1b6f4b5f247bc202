-- sparselab.fit — scaling-law fits (DESIGN §9): the Sparse Frontier log-linear law (card
-- sparse_frontier, step 7), power laws of error against compression and general log-linear laws,
-- fitted with GSL's trust-region nonlinear least squares (sl.fit_c.nls), with held-out
-- extrapolation error and seeded bootstrap confidence intervals. Reading rows from a store and
-- writing the fit table is sparselab.fit_db.
--
-- Rows are tables of named variables: N (parameters), L (sequence length), C (compression,
-- 1/(1 − sparsity)), task, y (the response), or any names a loglinear law lists. Laws:
--   sparse_frontier  link(y) = eps + delta[task] + alpha·log N + beta·log L + gamma·log C
--                    (natural logs; the reference task has delta = 0; link defaults to logit, as
--                    the card infers; an axis with one value in the data has its term dropped)
--   power            y = a·C^b + c   (offset = false: y = a·C^b)
--   loglinear        link(y) = a + Σ_i b[x_i]·log x_i   (x = {"C"} unless given)
local sl = require "sparselab"
local stats = require "sparselab.stats"

local F = {}

-- ---- links -----------------------------------------------------------------------------

local LINKS = {
  identity = {fwd = function(y) return y end, inv = function(v) return v end},
  logit = {
    fwd = function(y)
      if not (y > 0 and y < 1) then return nil end
      return math.log(y / (1 - y))
    end,
    inv = function(v) return 1 / (1 + math.exp(-v)) end,
  },
}

-- ---- laws ------------------------------------------------------------------------------

local function distinct(rows, var)
  local seen, out = {}, {}
  for _, r in ipairs(rows) do
    local v = r[var]
    if v ~= nil and not seen[v] then
      seen[v] = true
      out[#out + 1] = v
    end
  end
  table.sort(out, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  return out
end

local function positive(rows, var, law)
  for i, r in ipairs(rows) do
    if type(r[var]) ~= "number" or not (r[var] > 0) then
      sl.fail("fit %s: %s must be a positive number, row %d has %s", law, var, i, tostring(r[var]))
    end
  end
end

-- Each law: vars (what rows must hold), link (default), prepare(train, opts) → spec with
-- names, model ("linear"|"power"|"power0"), design(row) → predictor row, predict(p, row) → value
-- on the link scale (p: name → value), starts(X, Y) → list of p0.

local SF_AXES = {{var = "N", name = "alpha"}, {var = "L", name = "beta"}, {var = "C", name = "gamma"}}

local function linear_starts(spec) return function()
  local p0 = {}
  for j = 1, #spec.names do p0[j] = 0 end
  return {p0}
end end

F.LAWS = {}

F.LAWS.sparse_frontier = {
  vars = {"N", "L", "C", "task", "y"},
  link = "logit",
  prepare = function(train, opts)
    local tasks = {}
    for _, t in ipairs(distinct(train, "task")) do tasks[#tasks + 1] = tostring(t) end
    local ref = opts.ref_task
    if ref == nil then
      ref = tasks[1]
      for _, t in ipairs(tasks) do if t:lower() == "quality" then ref = t end end
    end
    local known = {}
    for _, t in ipairs(tasks) do known[t] = true end
    if not known[tostring(ref)] then
      sl.fail("fit sparse_frontier: reference task '%s' is not in the data (tasks: %s)", tostring(ref),
        table.concat(tasks, ", "))
    end
    ref = tostring(ref)
    local spec = {names = {"eps"}, model = "linear", ref_task = ref, tasks = tasks, dropped = {}, axes = {}}
    local others = {}
    for _, t in ipairs(tasks) do
      if t ~= ref then
        others[#others + 1] = t
        spec.names[#spec.names + 1] = "delta[" .. t .. "]"
      end
    end
    for _, ax in ipairs(SF_AXES) do
      positive(train, ax.var, "sparse_frontier")
      if #distinct(train, ax.var) > 1 then
        spec.axes[#spec.axes + 1] = ax
        spec.names[#spec.names + 1] = ax.name
      else
        spec.dropped[#spec.dropped + 1] = ax.name .. " (" .. ax.var .. " takes one value)"
      end
    end
    spec.design = function(r)
      local x = {1}
      local t = tostring(r.task)
      for _, o in ipairs(others) do x[#x + 1] = t == o and 1 or 0 end
      for _, ax in ipairs(spec.axes) do x[#x + 1] = math.log(r[ax.var]) end
      return x
    end
    spec.predict = function(p, r)
      local t = tostring(r.task)
      local v = p.eps
      if t ~= ref then
        local d = p["delta[" .. t .. "]"]
        if d == nil then sl.fail("fit sparse_frontier: task '%s' was not in the fitted data", t) end
        v = v + d
      end
      for _, ax in ipairs(spec.axes) do v = v + p[ax.name] * math.log(r[ax.var]) end
      return v
    end
    spec.starts = linear_starts(spec)
    return spec
  end,
}

F.LAWS.loglinear = {
  vars = function(opts)
    local v = {}
    for i, x in ipairs(opts.x or {"C"}) do v[i] = x end
    v[#v + 1] = "y"
    return v
  end,
  link = "identity",
  prepare = function(train, opts)
    local xs = opts.x or {"C"}
    local spec = {names = {"a"}, model = "linear", dropped = {}}
    for _, x in ipairs(xs) do
      positive(train, x, "loglinear")
      spec.names[#spec.names + 1] = "b[" .. x .. "]"
    end
    spec.design = function(r)
      local row = {1}
      for _, x in ipairs(xs) do row[#row + 1] = math.log(r[x]) end
      return row
    end
    spec.predict = function(p, r)
      local v = p.a
      for _, x in ipairs(xs) do v = v + p["b[" .. x .. "]"] * math.log(r[x]) end
      return v
    end
    spec.starts = linear_starts(spec)
    return spec
  end,
}

F.LAWS.power = {
  vars = function(opts) return {opts.x and opts.x[1] or "C", "y"} end,
  link = "identity",
  prepare = function(train, opts)
    local xv = opts.x and opts.x[1] or "C"
    positive(train, xv, "power")
    local offset = opts.offset ~= false
    local spec = {names = offset and {"a", "b", "c"} or {"a", "b"}, model = offset and "power" or "power0",
      dropped = {}}
    spec.design = function(r) return {r[xv]} end
    spec.predict = function(p, r) return p.a * r[xv] ^ p.b + (p.c or 0) end
    -- Starting points: a straight line through log(y − c0) against log x for a few offsets c0
    -- below the smallest y; the fit keeps the best converged one.
    spec.starts = function(X, Y)
      local lo, hi = math.huge, -math.huge
      for _, y in ipairs(Y) do lo, hi = math.min(lo, y), math.max(hi, y) end
      local range = hi - lo > 0 and hi - lo or math.max(math.abs(lo), 1)
      local c0s = offset and {lo - 0.5 * range, lo - 0.05 * range} or {0}
      if offset and lo > 0 then c0s[#c0s + 1] = 0; c0s[#c0s + 1] = 0.5 * lo end
      local starts = {}
      for _, c0 in ipairs(c0s) do
        local lx, ly, ok = {}, {}, true
        for i = 1, #Y do
          if Y[i] - c0 <= 0 then ok = false break end
          lx[i], ly[i] = {1, math.log(X[i][1])}, math.log(Y[i] - c0)
        end
        if ok then
          local lin = sl.fit_c.linear{x = lx, y = ly}
          local p0 = {math.exp(lin.params[1]), lin.params[2]}
          if offset then p0[3] = c0 end
          starts[#starts + 1] = p0
        end
      end
      if #starts == 0 then starts[1] = offset and {1, -0.5, lo} or {1, -0.5} end
      return starts
    end
    return spec
  end,
}

-- The variables a law needs for these options.
function F.vars(law, opts)
  local L = F.LAWS[law]
  if not L then
    local names = {}
    for k in pairs(F.LAWS) do names[#names + 1] = k end
    table.sort(names)
    sl.fail("fit: unknown law '%s' (expected one of: %s)", tostring(law), table.concat(names, ", "))
  end
  return type(L.vars) == "function" and L.vars(opts or {}) or L.vars
end

-- ---- fitting ---------------------------------------------------------------------------

local SOLVERS = {nls = true, linear = true}

-- One least-squares fit of Y on the design rows X: the best of the starting points.
local function solve(spec, X, Y, starts, solver)
  if solver == "linear" then
    if spec.model ~= "linear" then sl.fail("fit: solver 'linear' needs a law linear in its parameters") end
    local r = sl.fit_c.linear{x = X, y = Y}
    r.status, r.converged, r.iterations = r.rank == #spec.names and "ok" or "rank_deficient", r.rank == #spec.names, 0
    return r
  end
  local best
  for _, p0 in ipairs(starts) do
    local r = sl.fit_c.nls{x = X, y = Y, model = spec.model, p0 = p0}
    if not best or (r.converged and not best.converged) or (r.converged == best.converged and r.rss < best.rss) then
      best = r
    end
  end
  return best
end

local function named(spec, v)
  local t = {}
  for j, n in ipairs(spec.names) do t[n] = v[j] end
  return t
end

-- Errors of predictions on the link scale (and on y's scale when the link is not identity).
local function errors(spec, p, rows, link)
  local n, se, ae, bias, sy, sy2, sey = #rows, 0, 0, 0, 0, 0, 0
  for _, r in ipairs(rows) do
    local pred = spec.predict(p, r)
    local e = pred - r.Y
    se, ae, bias = se + e * e, ae + math.abs(e), bias + e
    sy, sy2 = sy + r.Y, sy2 + r.Y * r.Y
    local ey = link.inv(pred) - r.y
    sey = sey + ey * ey
  end
  local sst = sy2 - sy * sy / n
  return {n = n, rmse = math.sqrt(se / n), mae = ae / n, bias = bias / n, r2 = sst > 0 and 1 - se / sst or nil,
    rmse_y = math.sqrt(sey / n)}
end

-- Heldout split: rows with axis ≤ cutoff train, the rest test; no cutoff holds out the largest value.
local function split(rows, heldout)
  local axis = heldout.axis
  local cutoff = heldout.cutoff
  local values = distinct(rows, axis)
  for _, v in ipairs(values) do
    if type(v) ~= "number" then sl.fail("fit: held-out axis %s must be numeric, found '%s'", axis, tostring(v)) end
  end
  if #values < 2 then sl.fail("fit: held-out axis %s takes %d value(s); nothing to extrapolate to", axis, #values) end
  if cutoff == nil then cutoff = values[#values - 1] end
  local train, test = {}, {}
  for _, r in ipairs(rows) do
    if r[axis] == nil then sl.fail("fit: held-out axis %s is not a variable of the rows", axis) end
    if r[axis] <= cutoff then train[#train + 1] = r else test[#test + 1] = r end
  end
  if #train == 0 or #test == 0 then
    sl.fail("fit: held-out %s > %s leaves %d training and %d held-out rows", axis, tostring(cutoff), #train, #test)
  end
  return train, test, cutoff
end

--- Fits a law to rows. opts: law, link, ref_task, x (loglinear/power variables), offset (power),
--- heldout = {axis =, cutoff =} (fit on axis ≤ cutoff, report the error on the rest; no cutoff:
--- hold out the largest value), bootstrap (B, default 200; 0 for none), seed (default 1),
--- level (default 0.95), solver ("nls" default, or "linear" for laws linear in their parameters).
--- → {law, link, names, estimates (array), params, se, ci (name → {lo, hi}), level, r2, rmse,
---    n_points, n_bootstrap, n_bootstrap_failed, seed, solver = {name, status, iterations,
---    converged}, heldout = {axis, cutoff, n, rmse, mae, bias, r2, rmse_y}, dropped, ref_task,
---    tasks}; params/se/ci are keyed by parameter name.
-- Options of F.fit; the selection's (where, y, columns) are accepted so one table can drive
-- sparselab.fit_db.select and F.fit.
local FIT_KEYS = {law = true, link = true, ref_task = true, x = true, offset = true, heldout = true, bootstrap = true,
  seed = true, level = true, solver = true, where = true, y = true, columns = true}

function F.fit(rows, opts)
  opts = opts or {}
  for k in pairs(opts) do
    if not FIT_KEYS[k] then
      local names = {}
      for n in pairs(FIT_KEYS) do names[#names + 1] = n end
      table.sort(names)
      sl.fail("fit: unknown option '%s' (expected one of: %s)", tostring(k), table.concat(names, ", "))
    end
  end
  local lawname = opts.law or "sparse_frontier"
  local vars = F.vars(lawname, opts)
  local law = F.LAWS[lawname]
  local linkname = opts.link or law.link
  local link = LINKS[linkname]
  if not link then sl.fail("fit: unknown link '%s' (expected identity or logit)", tostring(linkname)) end
  local solver = opts.solver or "nls"
  if not SOLVERS[solver] then sl.fail("fit: unknown solver '%s' (expected nls or linear)", tostring(solver)) end
  local B = opts.bootstrap or 200
  local seed = opts.seed or 1
  local level = opts.level or 0.95
  if not (level > 0 and level < 1) then sl.fail("fit: level must be in (0, 1), found %s", tostring(level)) end

  local all = {}
  for i, r in ipairs(rows) do
    for _, v in ipairs(vars) do
      if r[v] == nil then sl.fail("fit %s: row %d has no %s", lawname, i, v) end
    end
    local Y = link.fwd(r.y)
    if type(r.y) ~= "number" or Y == nil or Y ~= Y then
      sl.fail("fit %s: y = %s of row %d is outside the %s link's domain%s", lawname, tostring(r.y), i, linkname,
        linkname == "logit" and " (0 < y < 1; use the identity link or clip the data)" or "")
    end
    local c = {Y = Y}
    for k, v in pairs(r) do c[k] = v end
    c.Y = Y
    all[i] = c
  end
  local train, test, cutoff = all, nil, nil
  if opts.heldout then train, test, cutoff = split(all, opts.heldout) end

  local spec = law.prepare(train, opts)
  local p = #spec.names
  if #train < p then sl.fail("fit %s: %d points cannot determine %d parameters", lawname, #train, p) end
  local X, Y = {}, {}
  for i, r in ipairs(train) do X[i], Y[i] = spec.design(r), r.Y end
  local best = solve(spec, X, Y, spec.starts(X, Y), solver)
  local est = best.params
  local params = named(spec, est)

  local res = {law = lawname, link = linkname, names = spec.names, estimates = est, params = params, se = {},
    ci = {}, level = level, n_points = #train, n_bootstrap = 0, n_bootstrap_failed = 0, seed = seed,
    solver = {name = solver, status = best.status, iterations = best.iterations, converged = best.converged},
    dropped = spec.dropped, ref_task = spec.ref_task, tasks = spec.tasks}
  for j, n in ipairs(spec.names) do
    local v = best.cov[j][j]
    res.se[n] = v >= 0 and math.sqrt(v) or nil
  end
  local fitstat = errors(spec, params, train, link)
  res.r2, res.rmse = fitstat.r2, fitstat.rmse

  -- Bootstrap: resample training rows with replacement and refit from the point estimate. A
  -- resample in which a design column is all zeros (a task drawn no times) or whose fit does not
  -- converge is counted as failed and left out.
  if B > 0 then
    local r = stats.rng(seed)
    local draws = {}
    for j = 1, p do draws[j] = {} end
    local n = #train
    for _ = 1, B do
      local Xb, Yb, nonzero = {}, {}, {}
      for i = 1, n do
        local k = r(n)
        Xb[i], Yb[i] = X[k], Y[k]
        for j = 1, p do if X[k][j] ~= 0 then nonzero[j] = true end end
      end
      local ok = true
      for j = 1, p do if not nonzero[j] then ok = false end end
      local fb = ok and solve(spec, Xb, Yb, {est}, solver)
      if fb and fb.converged then
        for j = 1, p do table.insert(draws[j], fb.params[j]) end
        res.n_bootstrap = res.n_bootstrap + 1
      else
        res.n_bootstrap_failed = res.n_bootstrap_failed + 1
      end
    end
    if res.n_bootstrap > 0 then
      for j, nm in ipairs(spec.names) do
        res.ci[nm] = {stats.quantile(draws[j], (1 - level) / 2), stats.quantile(draws[j], 1 - (1 - level) / 2)}
      end
    end
  end

  if test then
    local h = errors(spec, params, test, link)
    h.axis, h.cutoff, h.n_train = opts.heldout.axis, cutoff, #train
    res.heldout = h
  end
  res.spec = spec
  return res
end

--- The law's prediction for a row (on y's scale, the link inverted).
function F.predict(fit, row)
  return LINKS[fit.link].inv(fit.spec.predict(fit.params, row))
end

--- The fields of a fit that are data (no functions), for JSON.
function F.summary(fit)
  local t = {}
  for k, v in pairs(fit) do if k ~= "spec" then t[k] = v end end
  return t
end

return F
