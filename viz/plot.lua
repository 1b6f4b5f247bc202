-- viz.plot — charts from a results database through gnuplot (DESIGN: viz/ reads only the
-- database). One function draws any chart: series of (x, y) points read from v_result (x, y,
-- by are SQL expressions over v_result, with the wp./p./m. shorthands of sparselab.fit_db:
-- workload parameter, method parameter, any recorded metric), optionally a fitted law from
-- the `fit` table with its confidence band, written as SVG, PNG or PDF (by the file's
-- extension) by gnuplot (Debian gnuplot-nox: its svg, pngcairo and pdfcairo terminals).
--
--   viz.plot(db, {x =, y =, by =, where =, logx =, logy =, fit = ID or {ID...}, out =,
--                 title =, xlabel =, ylabel =, style = "points"|"linespoints"|"lines",
--                 aggregate = EXPR (average x and y per (series, EXPR)), hline = Y,
--                 series = {{name =, points = {{x, y}...}, style =}...} (extra, precomputed)})
--   → {out = path, series = {{name =, points = {...}}...}, fits = {...}}
--
-- The confidence band of a fit: the fit's points are read again with the selection stored
-- with it (sparselab.fit_db.select), resampled with replacement (seeded by the fit's seed,
-- the fit's number of bootstrap resamples, at most 200) and refitted; the band is the
-- pointwise (1 − level)/2 and 1 − (1 − level)/2 quantiles of the refitted laws' predictions
-- on a grid of the plotted variable (a pointwise percentile band), the curve the stored
-- fit's prediction. A law of several variables (loglinear over L and C) is drawn along its
-- last variable, one curve per value of the others found in the data.
local sl = require "sparselab"
local fit = require "sparselab.fit"
local fit_db = require "sparselab.fit_db"
local stats = require "sparselab.stats"

local P = {}

local function fail(fmt, ...) sl.fail("plot: " .. fmt, ...) end

--- The database handle for db (a path or an open store), opened read-only.
function P.open(db)
  if type(db) ~= "string" then return db, false end
  local f = io.open(db, "rb")
  if not f then fail("%s: no such database", db) end
  f:close()
  return sl.store.open(db, {read_only = true}), true
end

local function query(db, sql, ...)
  local ok, rows = pcall(db.query, db, sql, ...)
  if not ok then fail("%s", (tostring(rows):gsub("\n", " "))) end
  return rows
end
P.query = query

-- ---- gnuplot -----------------------------------------------------------------------------

local TERMINALS = {
  svg = "set terminal svg size %d,%d font 'DejaVu Sans,12' background rgb 'white'",
  png = "set terminal pngcairo size %d,%d font 'DejaVu Sans,10' background rgb 'white'",
  pdf = "set terminal pdfcairo size %g,%g font 'DejaVu Sans,9'",
}
-- Okabe–Ito colours (distinguishable under the common colour-vision deficiencies)
local COLOURS = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"}

--- The gnuplot program, or nil and why.
function P.gnuplot()
  local p = io.popen("command -v gnuplot 2>/dev/null")
  local path = p and p:read("l")
  if p then p:close() end
  if not path or path == "" then
    return nil, "gnuplot is not installed (Debian: apt-get install gnuplot-nox; make deps installs it)"
  end
  return path
end

local function gq(s) return "'" .. tostring(s):gsub("'", "''") .. "'" end
local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function num(x) return string.format("%.17g", x) end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  sl.mkdir(d)
  return d
end

-- Runs a gnuplot script; fails with gnuplot's first error line.
local function run_gnuplot(dir, script)
  local gp, why = P.gnuplot()
  if not gp then fail("%s", why) end
  local sp = dir .. "/plot.gp"
  local f = assert(io.open(sp, "w"))
  f:write(script)
  f:close()
  local errf = dir .. "/err.txt"
  -- gnuplot is not ours: a sanitizer runtime preloaded for our module (make asan) stays out of it
  local ok = os.execute(string.format("env -u LD_PRELOAD %s %s 2>%s", shq(gp), shq(sp), shq(errf)))
  local e = io.open(errf)
  local msg = e and e:read("a") or ""
  if e then e:close() end
  if not ok then
    local line = msg:match("([^\n]*error[^\n]*)") or msg:match("([^\n]+)%s*$") or "failed"
    fail("gnuplot: %s", line)
  end
end

local function rmtree(d)
  for _, name in ipairs(sl.listdir(d) or {}) do os.remove(d .. "/" .. name) end
  os.remove(d)
end

-- ---- data ----------------------------------------------------------------------------------

local function series_of(rows, has_by)
  local list, by = {}, {}
  for _, r in ipairs(rows) do
    local name = has_by and (r.g == nil and "(none)" or tostring(r.g)) or "all"
    if type(r.g) == "number" then name = string.format("%.6g", r.g) end
    local s = by[name]
    if not s then
      s = {name = name, points = {}}
      by[name] = s
      list[#list + 1] = s
    end
    s.points[#s.points + 1] = {r.x, r.y}
  end
  for _, s in ipairs(list) do table.sort(s.points, function(a, b) return a[1] < b[1] end) end
  return list
end

--- Reads the series of a chart: rows of v_result where x and y are numbers.
function P.read(db, o)
  if not o.x or not o.y then fail("give --x COL and --y COL (SQL expressions over v_result)") end
  local cols = {fit_db.expand(o.x) .. " AS x", fit_db.expand(o.y) .. " AS y"}
  if o.by then cols[#cols + 1] = fit_db.expand(o.by) .. " AS g" end
  local where = "status = 'ok'" .. (o.where and (" AND (" .. fit_db.expand(o.where) .. ")") or "")
  local inner = "SELECT " .. table.concat(cols, ", ") .. " FROM v_result WHERE " .. where
  local sql
  if o.aggregate then
    sql = "SELECT avg(x) AS x, avg(y) AS y" .. (o.by and ", g" or "") .. " FROM (SELECT " ..
      table.concat(cols, ", ") .. ", " .. fit_db.expand(o.aggregate) .. " AS bucket FROM v_result WHERE " ..
      where .. ") WHERE x IS NOT NULL AND y IS NOT NULL GROUP BY " .. (o.by and "g, " or "") .. "bucket"
  else
    sql = "SELECT * FROM (" .. inner .. ") WHERE x IS NOT NULL AND y IS NOT NULL"
  end
  local rows = query(db, sql)
  local kept, dropped = {}, 0
  for _, r in ipairs(rows) do
    if type(r.x) == "number" and type(r.y) == "number" and r.x == r.x and r.y == r.y
        and (not o.logx or r.x > 0) and (not o.logy or r.y > 0) then
      kept[#kept + 1] = r
    else
      dropped = dropped + 1
    end
  end
  return series_of(kept, o.by ~= nil), dropped, sql
end

-- ---- fits ----------------------------------------------------------------------------------

--- A stored fit: {id, law, link, params, level, seed, n_bootstrap, selection, ...}.
function P.load_fit(db, id)
  local rows = query(db, "SELECT * FROM fit WHERE id = ?", math.tointeger(tonumber(id)) or -1)
  if #rows == 0 then
    local ids = query(db, "SELECT group_concat(id, ', ') AS ids FROM fit")[1].ids
    fail("no fit %s in the database (fits: %s)", tostring(id), ids or "none; sparselab fit DB --law ... makes one")
  end
  local r = rows[1]
  return {id = r.id, law = r.law, link = r.link, params = sl.json_decode(r.params_json),
    ci = r.ci_json and sl.json_decode(r.ci_json), level = r.ci_level or 0.95, seed = r.seed or 1,
    n_bootstrap = r.n_bootstrap or 0, selection = sl.json_decode(r.selection_json), r2 = r.r2,
    n_points = r.n_points}
end

-- A short name of a fit for a legend: its method when its WHERE names one.
function P.fit_label(f)
  local w = f.selection.where or ""
  local m = w:match("method%s*=%s*'([^']+)'")
  local extra = w:match("n_k%s*=%s*(%d+)")
  return string.format("fit %d %s%s%s", f.id, f.law, m and (" " .. m) or "", extra and (" L=" .. extra) or "")
end

--- Points, curve(s) and band of a stored fit. → {label, var, y, points = series list,
--- curves = {{name, grid = {{x, yhat, lo, hi}...}}}}
function P.fit_curves(db, f, opts)
  opts = opts or {}
  local sel = f.selection
  local x = sel.x
  if type(x) == "table" and #x == 0 then x = nil end
  local sopts = {law = f.law, x = x, where = sel.where, columns = sel.columns}
  local rows = fit_db.select(db, sopts)
  if #rows == 0 then fail("fit %d: its selection reads no points now", f.id) end
  local vars = fit.vars(f.law, sopts)
  local main = vars[#vars - 1] -- the last variable before y
  local others = {}
  for i = 1, #vars - 2 do others[#others + 1] = vars[i] end
  -- the training part: a held-out axis above the cutoff is left out of the refits
  local train = {}
  local h = sel.heldout
  for _, r in ipairs(rows) do
    if not (h and h.axis and h.cutoff and r[h.axis] and r[h.axis] > h.cutoff) then train[#train + 1] = r end
  end
  local fopts = {law = f.law, x = x, link = f.link, offset = sel.offset, bootstrap = 0}
  local base = fit.fit(train, fopts)
  for k, v in pairs(f.params) do base.params[k] = v end -- the stored estimate draws the curve
  -- bootstrap refits
  local B = math.min(f.n_bootstrap > 0 and f.n_bootstrap or 200, opts.bootstrap or 200)
  local rng = stats.rng(f.seed or 1)
  local refits = {}
  for _ = 1, B do
    local sample = {}
    for i = 1, #train do sample[i] = train[rng(#train)] end
    local ok, fb = pcall(fit.fit, sample, fopts)
    if ok and fb.solver.converged ~= false then refits[#refits + 1] = fb end
  end
  -- the curves: one per combination of the other variables
  local combos, seen = {}, {}
  for _, r in ipairs(rows) do
    local key = {}
    for i, v in ipairs(others) do key[i] = string.format("%.10g", r[v]) end
    local k = table.concat(key, ",")
    if not seen[k] then
      seen[k] = true
      local c = {}
      for _, v in ipairs(others) do c[v] = r[v] end
      combos[#combos + 1] = {key = k, values = c}
    end
  end
  table.sort(combos, function(a, b)
    for _, v in ipairs(others) do
      if a.values[v] ~= b.values[v] then return a.values[v] < b.values[v] end
    end
    return false
  end)
  local lo, hi = math.huge, -math.huge
  for _, r in ipairs(rows) do lo, hi = math.min(lo, r[main]), math.max(hi, r[main]) end
  local logx = opts.logx or lo > 0
  local G = 48
  local level = f.level or 0.95
  local label = P.fit_label(f)
  local out = {label = label, var = main, y = sel.columns and sel.columns.y or "y", points = {}, curves = {}}
  for ci, c in ipairs(combos) do
    local name = label
    if #others > 0 then
      local parts = {}
      for _, v in ipairs(others) do parts[#parts + 1] = v .. "=" .. string.format("%.6g", c.values[v]) end
      name = name .. " " .. table.concat(parts, " ")
    end
    local pts = {}
    for _, r in ipairs(rows) do
      local match = true
      for _, v in ipairs(others) do if r[v] ~= c.values[v] then match = false end end
      if match then pts[#pts + 1] = {r[main], r.y} end
    end
    table.sort(pts, function(a, b) return a[1] < b[1] end)
    out.points[ci] = {name = name, points = pts}
    local grid = {}
    for g = 0, G do
      local t = g / G
      local xv = logx and math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo))) or lo + t * (hi - lo)
      local row = {}
      for k, v in pairs(c.values) do row[k] = v end
      row[main] = xv
      local yhat = fit.predict(base, row)
      local preds = {}
      for _, fb in ipairs(refits) do
        local ok, yb = pcall(fit.predict, fb, row)
        if ok and yb == yb then preds[#preds + 1] = yb end
      end
      local blo, bhi
      if #preds >= 2 then
        blo = stats.quantile(preds, (1 - level) / 2)
        bhi = stats.quantile(preds, 1 - (1 - level) / 2)
      end
      grid[#grid + 1] = {xv, yhat, blo, bhi}
    end
    out.curves[ci] = {name = name, grid = grid}
  end
  out.level, out.n_refits, out.n_resamples = level, #refits, B
  return out
end

-- ---- drawing -------------------------------------------------------------------------------

local function write_points(path, pts)
  local f = assert(io.open(path, "w"))
  for _, p in ipairs(pts) do f:write(num(p[1]), " ", num(p[2]), "\n") end
  f:close()
end

--- Draws a chart from already read series (the core of P.plot; the report uses it too).
--- spec: {out, title, xlabel, ylabel, logx, logy, style, series = {{name, points, style}},
---        fits = {P.fit_curves results}, hline = y}
function P.draw(spec)
  local out = spec.out
  if not out then fail("give -o FILE.svg|png|pdf") end
  local ext = out:match("%.(%w+)$")
  ext = ext and ext:lower()
  if not TERMINALS[ext] then fail("-o %s: expected a file ending in .svg, .png or .pdf", out) end
  local npts = 0
  for _, s in ipairs(spec.series or {}) do npts = npts + #s.points end
  for _, fc in ipairs(spec.fits or {}) do for _, s in ipairs(fc.points) do npts = npts + #s.points end end
  if npts == 0 then fail("nothing to plot: no result has both values%s", spec.why_empty or "") end
  local dir = tmpdir()
  local L = {}
  local w, h = spec.width or 880, spec.height or 480
  L[#L + 1] = ext == "pdf" and string.format(TERMINALS.pdf, w / 144, h / 144) or string.format(TERMINALS[ext], w, h)
  L[#L + 1] = "set output " .. gq(out)
  L[#L + 1] = "set encoding utf8"
  L[#L + 1] = "set termoption noenhanced"
  if spec.title then L[#L + 1] = "set title " .. gq(spec.title) end
  L[#L + 1] = "set xlabel " .. gq(spec.xlabel or "")
  L[#L + 1] = "set ylabel " .. gq(spec.ylabel or "")
  L[#L + 1] = "set grid lc rgb '#dddddd'"
  L[#L + 1] = "set key outside right top box opaque"
  L[#L + 1] = "set border 3"
  L[#L + 1] = "set tics nomirror"
  if spec.logx then L[#L + 1] = "set logscale x" end
  if spec.logy then L[#L + 1] = "set logscale y" end
  local items = {}
  local colour = 0
  local function next_colour()
    colour = colour + 1
    return COLOURS[(colour - 1) % #COLOURS + 1]
  end
  local nfile = 0
  local function file(pts)
    nfile = nfile + 1
    local p = string.format("%s/d%d.dat", dir, nfile)
    write_points(p, pts)
    return p
  end
  local band_titled = false
  for _, fc in ipairs(spec.fits or {}) do
    for i, cv in ipairs(fc.curves) do
      local c = next_colour()
      local band = {}
      for _, g in ipairs(cv.grid) do if g[3] and g[4] then band[#band + 1] = g end end
      if #band > 1 then
        nfile = nfile + 1
        local p = string.format("%s/d%d.dat", dir, nfile)
        local f = assert(io.open(p, "w"))
        for _, g in ipairs(band) do f:write(num(g[1]), " ", num(g[3]), " ", num(g[4]), "\n") end
        f:close()
        items[#items + 1] = string.format("%s using 1:2:3 with filledcurves fc rgb %s fs transparent solid 0.18 " ..
          "noborder %s", gq(p), gq(c), band_titled and "notitle" or
          ("title " .. gq(string.format("%g%% bootstrap band", 100 * fc.level))))
        band_titled = true
      end
      local line = {}
      for _, g in ipairs(cv.grid) do if g[2] == g[2] then line[#line + 1] = {g[1], g[2]} end end
      items[#items + 1] = string.format("%s using 1:2 with lines lw 2 lc rgb %s title %s", gq(file(line)), gq(c),
        gq(cv.name))
      local pts = fc.points[i] and fc.points[i].points or {}
      if #pts > 0 then
        items[#items + 1] = string.format("%s using 1:2 with points pt 7 ps 0.7 lc rgb %s notitle", gq(file(pts)),
          gq(c))
      end
    end
  end
  local PT = {7, 5, 9, 11, 13}
  for _, s in ipairs(spec.series or {}) do
    if #s.points > 0 then
      local c = s.colour or next_colour()
      local pt = PT[((colour - 1) // #COLOURS) % #PT + 1]
      local style = s.style or spec.style or "linespoints"
      local with = style == "points" and ("points pt %d ps 0.8"):format(pt) or style == "lines" and "lines lw 2" or
        style == "steps" and "steps lw 2 dt 2" or ("linespoints pt %d ps 0.7 lw 1.5"):format(pt)
      items[#items + 1] = string.format("%s using 1:2 with %s lc rgb %s title %s", gq(file(s.points)), with, gq(c),
        gq(s.name))
    end
  end
  if spec.hline then
    items[#items + 1] = string.format("%s with lines dt 3 lc rgb '#777777' title %s", num(spec.hline),
      gq(spec.hline_title or string.format("y = %g", spec.hline)))
  end
  L[#L + 1] = "plot " .. table.concat(items, ", \\\n     ")
  L[#L + 1] = "unset output"
  local ok, err = pcall(run_gnuplot, dir, table.concat(L, "\n") .. "\n")
  rmtree(dir)
  if not ok then error(err, 0) end
  return out
end

--- The generic chart (sparselab plot DB --x --y ...).
function P.plot(db, o)
  local handle, owned = P.open(db)
  local ok, res = pcall(function()
    local series, dropped = {}, 0
    if o.x or o.y then series, dropped = P.read(handle, o) end
    local fits = {}
    local ids = o.fit
    if ids and type(ids) ~= "table" then ids = {ids} end
    for _, id in ipairs(ids or {}) do
      fits[#fits + 1] = P.fit_curves(handle, P.load_fit(handle, id), {logx = o.logx})
    end
    for _, s in ipairs(o.series or {}) do series[#series + 1] = s end
    local xlabel, ylabel = o.xlabel or o.x, o.ylabel or o.y
    if #fits > 0 then
      xlabel = xlabel or fits[1].var
      ylabel = ylabel or fits[1].y
    end
    P.draw{out = o.out, title = o.title, xlabel = xlabel, ylabel = ylabel, logx = o.logx, logy = o.logy,
      style = o.style, series = series, fits = fits, hline = o.hline, hline_title = o.hline_title,
      why_empty = o.where and (" (with --where " .. o.where .. ")") or ""}
    return {out = o.out, series = series, fits = fits, dropped = dropped}
  end)
  if owned then handle:close() end
  if not ok then error(res, 0) end
  return res
end

return P
