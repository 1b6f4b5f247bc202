-- sparselab.cli.fit — `sparselab fit DB --law sparse_frontier|power|loglinear [...]`: fits a
-- scaling law to results in a store (sparselab.fit, sparselab.fit_db), prints the coefficients
-- with standard errors and bootstrap confidence intervals, the in-sample R² and the held-out
-- extrapolation error, and writes the fit to the store's `fit` table.
local sl = require "sparselab"
local fit = require "sparselab.fit"
local fit_db = require "sparselab.fit_db"
local report = require "sparselab.report"

local USAGE = "usage: sparselab fit DB --law sparse_frontier|power|loglinear [--where SQL] [--y EXPR] " ..
  "[--x VAR,...] [--col VAR=EXPR]... [--link identity|logit] [--ref-task T] [--no-offset] " ..
  "[--heldout AXIS[:CUTOFF]] [--bootstrap B] [--seed S] [--level P] [--solver nls|linear] [--no-store] [--json]"

local FORMULA = {
  sparse_frontier = "%s = eps + delta[task] + alpha*log N + beta*log L + gamma*log C",
  loglinear = "%s = a + sum_i b[x_i]*log x_i",
  power = "%s = a*C^b + c",
}

local function number(s, what, integer) return report.number("fit", s, what, integer) end

local function g(v) return report.g(v, 5) end

return function(argv, parse, out)
  local o, pos = parse(argv, 2, "fit")
  local path = pos[1]
  if not path or not o.law then sl.fail("%s", USAGE) end
  local f = io.open(path, "rb")
  if not f then sl.fail("%s: no such database", path) end
  f:close()

  local opts = {law = o.law, where = o.where, y = o.y, link = o.link, ref_task = o["ref-task"],
    offset = not o["no-offset"], solver = o.solver, columns = {}}
  fit.vars(o.law, {}) -- an unknown law fails here, before the database is touched
  if o.x then
    opts.x = {}
    for v in o.x:gmatch("[^,]+") do opts.x[#opts.x + 1] = v end
  end
  for _, kv in ipairs(o.col or {}) do
    local k, v = kv:match("^([%a_][%w_]*)=(.+)$")
    if not k then sl.fail("fit: --col expects VAR=EXPR, found '%s'", kv) end
    opts.columns[k] = v
  end
  if o.heldout then
    local axis, cut = o.heldout:match("^([%a_][%w_]*):(.+)$")
    axis = axis or o.heldout:match("^([%a_][%w_]*)$")
    if not axis then sl.fail("fit: --heldout expects AXIS or AXIS:CUTOFF, found '%s'", o.heldout) end
    opts.heldout = {axis = axis, cutoff = cut and number(cut, "--heldout's cutoff")}
  end
  opts.bootstrap = o.bootstrap and number(o.bootstrap, "--bootstrap", true) or 200
  if opts.bootstrap < 0 then sl.fail("fit: --bootstrap must be >= 0") end
  opts.seed = o.seed and number(o.seed, "--seed", true) or 1
  opts.level = o.level and number(o.level, "--level") or 0.95

  local db <close> = sl.store.open(path)
  local rows, sel = fit_db.select(db, opts)
  if #rows == 0 then
    sl.fail("fit: no results with %s in %s%s", table.concat(fit.vars(o.law, opts), ", "), path,
      o.where and (" where " .. o.where) or "")
  end
  local r = fit.fit(rows, opts)
  local id
  if not o["no-store"] then id = fit_db.store(db, r, sel, {x = opts.x, offset = opts.offset}) end

  if o.json then
    local t = fit.summary(r)
    t.fit_id, t.n_read, t.n_skipped, t.where, t.columns = id, sel.n_read, sel.n_skipped, sel.where, sel.columns
    out(sl.json_encode(fit_db.clean(t)))
    return
  end
  local yname = r.link == "identity" and sel.columns.y or (r.link .. "(" .. sel.columns.y .. ")")
  local formula = FORMULA[r.law]
  if r.law == "power" and o["no-offset"] then formula = "%s = a*C^b" end
  out(string.format(formula, yname))
  out(string.format("%d points fitted of %d read%s%s; solver %s: %s after %s iterations", r.n_points, sel.n_read,
    sel.n_skipped > 0 and string.format(" (%d skipped: a variable was NULL)", sel.n_skipped) or "",
    r.ref_task and ("; reference task " .. r.ref_task) or "", r.solver.name, r.solver.status,
    tostring(r.solver.iterations)))
  for _, d in ipairs(r.dropped or {}) do out("dropped term: " .. d) end
  local ci_col = string.format("%g%% CI (bootstrap %d)", r.level * 100, r.n_bootstrap)
  local tab = {}
  for _, n in ipairs(r.names) do
    local ci = r.ci[n]
    tab[#tab + 1] = {param = n, estimate = g(r.params[n]), se = g(r.se[n]),
      [ci_col] = ci and string.format("[%s, %s]", g(ci[1]), g(ci[2])) or ""}
  end
  out(report.table(tab, {"param", "estimate", "se", ci_col}))
  if r.n_bootstrap_failed > 0 then
    out(string.format("%d bootstrap resamples failed (a task drawn no times or no convergence) and were left out",
      r.n_bootstrap_failed))
  end
  out(string.format("in-sample: R2 %s, RMSE %s (%s scale)", g(r.r2), g(r.rmse), r.link))
  local h = r.heldout
  if h then
    out(string.format("held-out %s > %s: %d points (fitted on %d), RMSE %s, MAE %s, bias %s, R2 %s (%s scale)%s",
      h.axis, g(h.cutoff), h.n, h.n_train, g(h.rmse), g(h.mae), g(h.bias), g(h.r2), r.link,
      r.link ~= "identity" and string.format("; RMSE %s on %s", g(h.rmse_y), sel.columns.y) or ""))
  end
  if id then out(string.format("stored as fit %d in %s", id, path)) end
end
