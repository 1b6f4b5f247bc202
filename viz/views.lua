-- viz.views — the standard charts of a results database, each a viz.plot call with
-- sensible defaults (sparselab plot DB frontier|pareto|scaling|break_even|bench):
--
--   frontier    accuracy against executed density: rel_l2 (log scale) per method, averaged per
--               matched target (target_density, else the density rounded to 0.01)
--   recall      the same with recall_mean (linear scale)
--   pareto      rel_l2 against cost relative to dense ((flops + estimator_flops) / dense_flops),
--               every result per method, and the Pareto front of v_pareto (the workload with
--               the most results unless --where picks one)
--   scaling     every stored power-law fit (else every fit) with its points, its fitted law
--               and its bootstrap confidence band, against compression C = 1/density
--   break_even  speedup over dense against density per method, the line speedup = 1
--   bench       bench databases (sparselab bench --db): measured speedup of each benchmarked kernel
--               over dense against its density, per kernel, pattern and length, with the ideal 1/density
-- Each view returns nil when the database has nothing for it (the report leaves it out).
local sl = require "sparselab"
local P = require "viz.plot"

local V = {}

V.NAMES = {"frontier", "recall", "pareto", "scaling", "break_even", "bench"}


local BUCKET = "coalesce(target_density, round(density, 2))"

local function sq(s) return "'" .. tostring(s):gsub("'", "''") .. "'" end

--- Inputs (workload and length) with results of a condition, most results first:
--- {{workload =, n_k =, n =, where = SQL, name = text}...}.
function V.workloads(db, cond)
  local rows = P.query(db, "SELECT workload, n_k, count(*) AS n FROM v_result WHERE status = 'ok' AND " ..
    "method <> 'dense' " .. (cond and ("AND " .. cond .. " ") or "") ..
    "GROUP BY workload, n_k ORDER BY n DESC, workload, n_k")
  for _, r in ipairs(rows) do
    r.where = "workload IS " .. (r.workload and sq(r.workload) or "NULL") .. " AND n_k IS " ..
      (r.n_k and tostring(math.tointeger(r.n_k) or r.n_k) or "NULL")
    r.name = tostring(r.workload) .. (r.n_k and string.format(", n = %d", r.n_k) or "")
  end
  return rows
end

-- o.where, else the input (workload, length) with the most results of cond, and its name.
local function one_workload(db, o, cond)
  if o.where then return o.where, nil end
  local w = V.workloads(db, cond)
  if #w == 0 then return nil end
  return w[1].where, w[1].name
end

function V.frontier(db, o)
  local where, wl = one_workload(db, o, "density IS NOT NULL AND rel_l2 > 0")
  if not where then return nil end
  return P.plot(db, {x = "density", y = "rel_l2", by = o.by or "method",
    where = "(" .. where .. ") AND method <> 'dense' AND density IS NOT NULL", aggregate = BUCKET,
    logy = o.logy ~= false, logx = o.logx, out = o.out,
    title = o.title or ("Accuracy against executed density (mean per target)" .. (wl and (": " .. wl) or "")),
    xlabel = "executed density (kept / causal pairs)", ylabel = "rel_l2 vs dense (lower is better)",
    style = "linespoints", fit = o.fit})
end

function V.recall(db, o)
  local where, wl = one_workload(db, o, "density IS NOT NULL AND recall_mean IS NOT NULL")
  if not where then return nil end
  return P.plot(db, {x = "density", y = "recall_mean", by = o.by or "method",
    where = "(" .. where .. ") AND method <> 'dense'", aggregate = BUCKET, logx = o.logx, logy = o.logy,
    out = o.out, title = o.title or ("Attention recall against executed density (mean per target)" ..
    (wl and (": " .. wl) or "")),
    xlabel = "executed density (kept / causal pairs)", ylabel = "recall_mean (higher is better)",
    style = "linespoints", fit = o.fit})
end

local COST = "(coalesce(flops, 0) + coalesce(estimator_flops, 0)) / m.dense_flops"

function V.pareto(db, o)
  local where = o.where
  if not where then
    -- one input: the (workload, parameters, layer, head) group of v_pareto with the most results
    local rows = P.query(db, "SELECT workload, workload_params_json AS wp, layer, head, count(*) AS n " ..
      "FROM v_result WHERE status = 'ok' AND rel_l2 > 0 AND flops IS NOT NULL AND method <> 'dense' " ..
      "GROUP BY workload, workload_params_json, layer, head ORDER BY n DESC, workload LIMIT 1")
    if #rows == 0 then return nil end
    local r = rows[1]
    where = string.format("workload = %s AND workload_params_json = %s AND layer IS %s AND head IS %s",
      sq(r.workload), sq(r.wp), r.layer and tostring(math.tointeger(r.layer)) or "NULL",
      r.head and tostring(math.tointeger(r.head)) or "NULL")
  end
  local front = P.query(db, "SELECT " .. require("sparselab.fit_db").expand(COST) .. " AS x, rel_l2 AS y " ..
    "FROM v_pareto AS v_result WHERE (" .. where .. ") AND rel_l2 > 0 ORDER BY x")
  local pts = {}
  for _, r in ipairs(front) do
    if type(r.x) == "number" and r.x > 0 and type(r.y) == "number" then pts[#pts + 1] = {r.x, r.y} end
  end
  local title = o.title or ("Pareto front: error against cost" ..
    (o.where and "" or (" (" .. (where:match("workload = '([^']*)'") or "") ..
    (where:match("layer IS (%d+)") and (" layer " .. where:match("layer IS (%d+)")) or "") .. ")")))
  return P.plot(db, {x = COST, y = "rel_l2", by = o.by or "method",
    where = "(" .. where .. ") AND rel_l2 > 0 AND m.dense_flops > 0", logx = o.logx ~= false, logy = o.logy ~= false,
    out = o.out, title = title, xlabel = "cost / dense cost ((flops + estimator flops) / dense flops)",
    ylabel = "rel_l2 vs dense", style = "points",
    series = {{name = "Pareto front", points = pts, style = "steps", colour = "#444444"}}})
end

function V.scaling(db, o)
  local ids = o.fit
  if not ids then
    local rows = P.query(db, "SELECT id FROM fit WHERE law = 'power' ORDER BY id")
    if #rows == 0 then rows = P.query(db, "SELECT id FROM fit ORDER BY id") end
    if #rows == 0 then return nil end
    ids = {}
    for _, r in ipairs(rows) do ids[#ids + 1] = r.id end
  end
  if type(ids) ~= "table" then ids = {ids} end
  local fits = {}
  for _, id in ipairs(ids) do fits[#fits + 1] = P.load_fit(db, id) end
  local f1 = fits[1]
  local yexpr = f1.selection.columns and f1.selection.columns.y or "y"
  local xvar = f1.selection.x
  xvar = type(xvar) == "table" and xvar[#xvar] or "C"
  return P.plot(db, {fit = ids, out = o.out, logx = o.logx ~= false, logy = o.logy ~= false and not
    yexpr:match("^ln%(") and not yexpr:match("^log%("),
    title = o.title or string.format("Scaling: fitted laws with %g%% bootstrap bands", 100 * (f1.level or 0.95)),
    xlabel = xvar == "C" and "compression C = 1 / density" or xvar, ylabel = yexpr})
end

function V.break_even(db, o)
  local where, wl = one_workload(db, o, "speedup IS NOT NULL AND density IS NOT NULL")
  if not where then return nil end
  return P.plot(db, {x = "density", y = "speedup", by = o.by or "method",
    where = "(" .. where .. ") AND method <> 'dense'", aggregate = BUCKET, logy = o.logy ~= false, logx = o.logx,
    out = o.out, title = o.title or ("Speedup over dense against density (break-even at 1)" ..
    (wl and (": " .. wl) or "")),
    xlabel = "executed density", ylabel = "speedup over dense (time)", style = "linespoints", hline = 1,
    hline_title = "break-even"})
end

function V.bench(db, o)
  local where = "workload = 'bench' AND speedup > 0 AND density > 0" .. (o.where and (" AND (" .. o.where .. ")") or "")
  local rows = P.query(db, "SELECT min(density) AS lo, max(density) AS hi FROM v_result WHERE status = 'ok' AND " .. where)
  if not rows[1] or not rows[1].lo then return nil end
  local ideal = {}
  local lo, hi = rows[1].lo, rows[1].hi
  for i = 0, 40 do
    local x = lo * (hi / lo) ^ (i / 40)
    ideal[#ideal + 1] = {x, 1 / x}
  end
  return P.plot(db, {x = "density", y = "speedup", by = o.by or
    "method || coalesce(' ' || p.pattern, '') || ' n=' || n_k", where = where, logx = o.logx, logy = o.logy ~= false,
    out = o.out, title = o.title or "Kernel speedup over dense against density (sparselab bench)",
    xlabel = "density (kept / causal pairs)", ylabel = "speedup over dense (time)", style = "linespoints",
    hline = 1, hline_title = "dense", series = {{name = "ideal 1/density", points = ideal, style = "lines",
      colour = "#999999"}}})
end

--- Draws view `name` (one of V.NAMES); o: out, where, by, logx, logy, fit, title.
--- → the plot result, or nil when the database has nothing for this view.
function V.draw(db, name, o)
  local f = V[name]
  if type(f) ~= "function" or name == "draw" then
    sl.fail("plot: unknown view '%s' (expected one of: %s)", tostring(name), table.concat(V.NAMES, ", "))
  end
  local handle, owned = P.open(db)
  local ok, res = pcall(f, handle, o or {})
  if owned then handle:close() end
  if not ok then error(res, 0) end
  return res
end

return V
