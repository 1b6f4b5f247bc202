-- viz.report — the report of a results database (sparselab report DB -o DIR): one folder with
--   index.html   the page: provenance of every run, the comparison tables, every standard plot
--   report.md    the same tables and plots in Markdown
--   tables.tex   the tables as LaTeX (booktabs: \toprule, \midrule, \bottomrule; needs
--                \usepackage{booktabs} in the paper), one table environment each
--   *.svg        the plots (viz/views.lua), read by both pages
-- Everything is read from the database (opened read-only); nothing else is consulted.
--
-- Tables: runs (provenance: script, arguments, git revision and dirty flag, host, CPU, GPU,
-- build flags, version, seed, status, results ok / failed); summary per method (results,
-- mean density, rel_l2, recall, cosine, speedup); matched targets per workload (method x
-- target density: rel_l2 and recall, the latest run of each point only); unreachable or failed
-- points (method, target, the reason's first words); fits (law, where, parameters with their
-- confidence intervals, R², held-out error).
local sl = require "sparselab"
local P = require "viz.plot"
local V = require "viz.views"

local R = {}

local function g(v, d)
  if v == nil then return "" end
  if type(v) == "number" then
    if v ~= v then return "nan" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%." .. (d or 4) .. "g", v)
  end
  return tostring(v)
end

local function html(s)
  return (tostring(s):gsub("[&<>\"]", {["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;"}))
end

local TEX = {["\\"] = "\\textbackslash{}", ["&"] = "\\&", ["%"] = "\\%", ["$"] = "\\$", ["#"] = "\\#",
  ["_"] = "\\_", ["{"] = "\\{", ["}"] = "\\}", ["~"] = "\\textasciitilde{}", ["^"] = "\\textasciicircum{}"}
local function tex(s) return (tostring(s):gsub("[\\&%%$#_{}~^]", TEX)) end
R.tex_escape = tex

local function md(s) return (tostring(s):gsub("|", "\\|"):gsub("\n", " ")) end

-- A table: {id, title, caption, columns = {{key, label, numeric}}, rows}
local function cells(t, r)
  local out = {}
  for i, c in ipairs(t.columns) do out[i] = g(r[c[1]], c.digits) end
  return out
end

local function html_table(t)
  local L = {string.format('<table id="%s"><caption>%s</caption><thead><tr>', t.id, html(t.caption or t.title))}
  for _, c in ipairs(t.columns) do L[#L + 1] = string.format("<th>%s</th>", html(c[2])) end
  L[#L + 1] = "</tr></thead><tbody>"
  for _, r in ipairs(t.rows) do
    L[#L + 1] = "<tr>"
    for i, v in ipairs(cells(t, r)) do
      L[#L + 1] = string.format('<td%s>%s</td>', t.columns[i][3] and ' class="n"' or "", html(v))
    end
    L[#L + 1] = "</tr>"
  end
  L[#L + 1] = "</tbody></table>"
  return table.concat(L)
end

local function md_table(t)
  local L = {"**" .. md(t.caption or t.title) .. "**", ""}
  local head, sep = {}, {}
  for i, c in ipairs(t.columns) do head[i] = md(c[2]); sep[i] = c[3] and "---:" or "---" end
  L[#L + 1] = "| " .. table.concat(head, " | ") .. " |"
  L[#L + 1] = "| " .. table.concat(sep, " | ") .. " |"
  for _, r in ipairs(t.rows) do
    local cs = cells(t, r)
    for i, v in ipairs(cs) do cs[i] = md(v) end
    L[#L + 1] = "| " .. table.concat(cs, " | ") .. " |"
  end
  return table.concat(L, "\n")
end

local function tex_table(t)
  local spec = {}
  for i, c in ipairs(t.columns) do spec[i] = c[3] and "r" or "l" end
  local L = {"\\begin{table}[t]", "\\centering", "\\small",
    "\\caption{" .. tex(t.caption or t.title) .. "}", "\\label{tab:" .. t.id .. "}",
    "\\begin{tabular}{" .. table.concat(spec) .. "}", "\\toprule"}
  local head = {}
  for i, c in ipairs(t.columns) do head[i] = tex(c[2]) end
  L[#L + 1] = table.concat(head, " & ") .. " \\\\"
  L[#L + 1] = "\\midrule"
  for _, r in ipairs(t.rows) do
    local cs = cells(t, r)
    for i, v in ipairs(cs) do cs[i] = tex(v) end
    L[#L + 1] = table.concat(cs, " & ") .. " \\\\"
  end
  L[#L + 1] = "\\bottomrule"
  L[#L + 1] = "\\end{tabular}"
  L[#L + 1] = "\\end{table}"
  return table.concat(L, "\n")
end
R.tex_table = tex_table

-- ---- the tables ----------------------------------------------------------------------------

local function where_and(where, cond)
  if where then return "(" .. where .. ") AND " .. cond end
  return cond
end

-- the latest run of each point (method, params, workload and its parameters, layer, head, sizes,
-- target): reruns are not counted twice
local LATEST = [[result_id IN (SELECT max(result_id) FROM v_result GROUP BY method, params_json, workload,
  workload_params_json, layer, head, n_q, n_k, heads, kv_heads, head_dim, backend, target_density, target_flops,
  target_kv_bytes)]]

local function tables(db, where)
  local T = {}
  local runs = P.query(db, [[
    SELECT run.id AS id, started, finished, run.status AS status, script, argv, substr(git_rev, 1, 10) AS git,
           git_dirty, host, cpu, gpu, build_flags, sparselab_version AS version, run.seed AS seed,
           (SELECT count(*) FROM result WHERE result.run_id = run.id AND result.status = 'ok') AS ok,
           (SELECT count(*) FROM result WHERE result.run_id = run.id AND result.status <> 'ok') AS failed
      FROM run ORDER BY run.id]])
  for _, r in ipairs(runs) do
    if r.argv then
      local ok, a = pcall(sl.json_decode, r.argv)
      if ok and type(a) == "table" then r.argv = table.concat(a, " ") end
    end
    r.git = r.git and (r.git .. (r.git_dirty == 1 and " (dirty)" or "")) or ""
  end
  T[#T + 1] = {id = "runs", title = "Runs", caption = "Runs and their provenance", rows = runs, columns = {
    {"id", "run", true}, {"started", "started"}, {"status", "status"}, {"script", "script"}, {"argv", "arguments"},
    {"git", "git"}, {"host", "host"}, {"cpu", "CPU"}, {"gpu", "GPU"}, {"build_flags", "build"},
    {"version", "version"}, {"seed", "seed", true}, {"ok", "ok", true}, {"failed", "failed", true}}}

  local summary = P.query(db, [[
    SELECT method, count(*) AS n, avg(density) AS density, avg(rel_l2) AS rel_l2, avg(recall_mean) AS recall,
           min(recall_min) AS recall_min, avg(cosine_mean) AS cosine, avg(speedup) AS speedup,
           avg(estimate_ms) AS estimate_ms, avg(execute_ms) AS execute_ms
      FROM v_result WHERE ]] .. where_and(where, "status = 'ok' AND " .. LATEST) ..
    [[ GROUP BY method ORDER BY avg(rel_l2) IS NULL, avg(rel_l2), method]])
  T[#T + 1] = {id = "summary", title = "Summary per method",
    caption = "Mean over every result of each method (latest run of each point)", rows = summary, columns = {
    {"method", "method"}, {"n", "results", true}, {"density", "density", true}, {"rel_l2", "rel_l2", true},
    {"recall", "recall", true}, {"recall_min", "worst-row recall", true}, {"cosine", "cosine", true},
    {"speedup", "speedup", true}, {"estimate_ms", "estimate ms", true}, {"execute_ms", "execute ms", true}}}

  -- matched targets: per workload, method x target density
  local wls = P.query(db, "SELECT DISTINCT workload FROM v_result WHERE " ..
    where_and(where, "target_density IS NOT NULL") .. " ORDER BY workload")
  for i, w in ipairs(wls) do
    local rows = P.query(db, [[
      SELECT method, target_density AS target, count(*) AS n, avg(density) AS density, avg(rel_l2) AS rel_l2,
             avg(recall_mean) AS recall, min(recall_min) AS recall_min
        FROM v_result WHERE ]] .. where_and(where, "status = 'ok' AND target_density IS NOT NULL AND workload = ? AND "
      .. LATEST) .. " GROUP BY method, target_density ORDER BY method, target_density", w.workload)
    if #rows > 0 then
      T[#T + 1] = {id = "matched" .. i, title = "Matched density: " .. w.workload,
        caption = "Matched target density on " .. w.workload .. " (mean over inputs)", rows = rows, columns = {
        {"method", "method"}, {"target", "target density", true}, {"n", "inputs", true},
        {"density", "achieved", true}, {"rel_l2", "rel_l2", true}, {"recall", "recall", true},
        {"recall_min", "worst-row recall", true}}}
    end
  end

  local failed = P.query(db, [[
    SELECT method, workload, target_density AS target, count(*) AS n, substr(min(error), 1, 140) AS reason
      FROM v_result WHERE ]] .. where_and(where, "status <> 'ok' AND " .. LATEST) ..
    [[ GROUP BY method, workload, target_density ORDER BY method, workload, target_density]])
  if #failed > 0 then
    T[#T + 1] = {id = "failed", title = "Unreachable or failed points",
      caption = "Points recorded as failed (an unreachable target gives the reachable range)", rows = failed,
      columns = {{"method", "method"}, {"workload", "workload"}, {"target", "target density", true},
        {"n", "points", true}, {"reason", "reason (first)"}}}
  end

  local fits = P.query(db, "SELECT id, law, selection_json, params_json, ci_json, ci_level, r2, heldout_json, " ..
    "n_points FROM fit ORDER BY id")
  local frows = {}
  for _, f in ipairs(fits) do
    local sel = sl.json_decode(f.selection_json)
    local params = sl.json_decode(f.params_json)
    local ci = f.ci_json and sl.json_decode(f.ci_json) or {}
    local names = {}
    for k in pairs(params) do names[#names + 1] = k end
    table.sort(names)
    local parts = {}
    for _, k in ipairs(names) do
      local c = ci[k]
      parts[#parts + 1] = string.format("%s = %s%s", k, g(params[k]),
        c and string.format(" [%s, %s]", g(c[1]), g(c[2])) or "")
    end
    local h = f.heldout_json and sl.json_decode(f.heldout_json)
    frows[#frows + 1] = {id = f.id, law = f.law, where = sel.where or "", y = sel.columns and sel.columns.y or "",
      params = table.concat(parts, "; "), r2 = f.r2, n = f.n_points, heldout = h and h.rmse}
  end
  if #frows > 0 then
    T[#T + 1] = {id = "fits", title = "Fits", caption = "Stored fits (parameters with bootstrap confidence intervals)",
      rows = frows, columns = {{"id", "fit", true}, {"law", "law"}, {"y", "y"}, {"where", "where"},
        {"params", "parameters [CI]"}, {"n", "points", true}, {"r2", "R2", true}, {"heldout", "held-out RMSE", true}}}
  end
  return T
end

-- ---- plots ---------------------------------------------------------------------------------

local CAPTIONS = {
  frontier = "Accuracy against executed density: rel_l2 of each method's output against dense attention, mean " ..
    "over the inputs at each matched target density.",
  recall = "Attention recall (share of each row's dense probability mass kept) against executed density.",
  pareto = "Error against total cost (executor and estimator FLOPs relative to dense) for every result; the " ..
    "dashed steps are the Pareto front.",
  scaling = "Stored fits: points, fitted law and pointwise bootstrap confidence band.",
  break_even = "Speedup over dense attention (wall time) against density; above the dotted line the method is faster.",
  bench = "Measured kernel speedup over dense (sparselab bench) against density; the grey line is the ideal 1/density.",
}

local function plots(db, dir, where)
  local list = {}
  local function try(name, file, o, caption)
    o.out = dir .. "/" .. file
    o.where = o.where or where
    local ok, res = pcall(V[name], db, o)
    if ok and res then
      list[#list + 1] = {file = file, name = name, title = o.title_shown or name, caption = caption}
    elseif not ok then
      list[#list + 1] = {file = nil, name = name, title = name, caption = "not drawn: " .. tostring(res)}
    end
  end
  -- frontier and recall per workload with matched targets (at most 4), else the default one
  local wls = V.workloads(db, "density IS NOT NULL AND rel_l2 > 0" .. (where and (" AND (" .. where .. ")") or ""))
  if #wls > 1 then
    for i = 1, math.min(4, #wls) do
      local w = wls[i].where .. (where and (" AND (" .. where .. ")") or "")
      try("frontier", string.format("frontier_%d.svg", i), {where = w,
        title = "Accuracy against executed density: " .. wls[i].name}, CAPTIONS.frontier)
      try("recall", string.format("recall_%d.svg", i), {where = w,
        title = "Recall against executed density: " .. wls[i].name}, CAPTIONS.recall)
    end
  else
    try("frontier", "frontier.svg", {}, CAPTIONS.frontier)
    try("recall", "recall.svg", {}, CAPTIONS.recall)
  end
  try("pareto", "pareto.svg", {}, CAPTIONS.pareto)
  try("scaling", "scaling.svg", {}, CAPTIONS.scaling)
  try("break_even", "break_even.svg", {}, CAPTIONS.break_even)
  try("bench", "bench.svg", {}, CAPTIONS.bench)
  return list
end

-- ---- the page ------------------------------------------------------------------------------

local CSS = [[
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 78em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.4em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
thead th { border-top: 2px solid #333; border-bottom: 1px solid #333; }
tbody tr:last-child td { border-bottom: 2px solid #333; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; max-width: 60em; }
.meta { color: #666; font-size: 0.85em; }
]]

--- Writes the report of db into dir; opts: where (SQL over v_result), title.
--- → {dir, tables = {...}, plots = {{file, name, caption}...}}
function R.write(db, dir, opts)
  opts = opts or {}
  if type(dir) ~= "string" or dir == "" then sl.fail("report: give an output folder") end
  local handle, owned = P.open(db)
  local ok, res = pcall(function()
    sl.mkdir(dir)
    local T = tables(handle, opts.where)
    local pl = plots(handle, dir, opts.where)
    local title = opts.title or ("sparselab report: " .. (type(db) == "string" and db or "database"))
    local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
    local nres = P.query(handle, "SELECT count(*) AS n FROM result")[1].n
    -- HTML
    local H = {"<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      "<title>" .. html(title) .. "</title>", "<style>" .. CSS .. "</style></head><body>",
      "<h1>" .. html(title) .. "</h1>",
      string.format('<p class="meta">%d results in %d runs; written %s by sparselab %s from the database only.%s</p>',
        nres, #T[1].rows, now, html(sl.version), opts.where and (" Results: " .. html(opts.where)) or "")}
    local M = {"# " .. title, "", string.format("%d results in %d runs; written %s by sparselab %s.", nres, #T[1].rows,
      now, sl.version), ""}
    local TX = {"% sparselab report tables (booktabs): \\usepackage{booktabs}", "% written " .. now, ""}
    H[#H + 1] = "<h2>Plots</h2>"
    M[#M + 1] = "## Plots"
    M[#M + 1] = ""
    for _, p in ipairs(pl) do
      if p.file then
        H[#H + 1] = string.format('<figure><img src="%s" alt="%s"><figcaption>%s</figcaption></figure>', html(p.file),
          html(p.name), html(p.caption))
        M[#M + 1] = string.format("![%s](%s)", p.name, p.file)
        M[#M + 1] = ""
        M[#M + 1] = p.caption
        M[#M + 1] = ""
      else
        H[#H + 1] = string.format('<p class="meta">%s: %s</p>', html(p.name), html(p.caption))
      end
    end
    for _, t in ipairs(T) do
      H[#H + 1] = "<h2>" .. html(t.title) .. "</h2>"
      M[#M + 1] = "## " .. t.title
      M[#M + 1] = ""
      if #t.rows == 0 then
        H[#H + 1] = '<p class="meta">none</p>'
        M[#M + 1] = "none"
      else
        H[#H + 1] = html_table(t)
        M[#M + 1] = md_table(t)
        if t.id ~= "runs" then
          TX[#TX + 1] = tex_table(t)
          TX[#TX + 1] = ""
        end
      end
      M[#M + 1] = ""
    end
    H[#H + 1] = '<p class="meta">LaTeX versions of these tables: <a href="tables.tex">tables.tex</a>.</p>'
    H[#H + 1] = "</body></html>"
    for name, text in pairs{["index.html"] = table.concat(H, "\n"), ["report.md"] = table.concat(M, "\n"),
        ["tables.tex"] = table.concat(TX, "\n")} do
      local f, err = io.open(dir .. "/" .. name, "w")
      if not f then sl.fail("report: %s", err) end
      f:write(text, "\n")
      f:close()
    end
    local drawn = {}
    for _, p in ipairs(pl) do if p.file then drawn[#drawn + 1] = p end end
    return {dir = dir, tables = T, plots = drawn}
  end)
  if owned then handle:close() end
  if not ok then error(res, 0) end
  return res
end

return R
