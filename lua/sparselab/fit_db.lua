-- sparselab.fit_db — the store side of the scaling-law fits: reading a fit's points from
-- v_result (a WHERE clause and a mapping of the law's variables to SQL expressions) and writing
-- fits to the `fit` table (store/migrations/002_fit.sql).
--
-- Column mapping: each variable is an SQL expression over v_result, in which three shorthands
-- are expanded: wp.KEY → json_extract(workload_params_json, '$.KEY'), p.KEY →
-- json_extract(params_json, '$.KEY') and m.NAME → the value of metric NAME of the result (any
-- metric, not only the ones v_result has as columns). The defaults:
--   N    wp.N                                      model parameters, from the workload parameters
--   L    coalesce(wp.L, n_k)                       sequence length
--   C    coalesce(m.compression, 1.0 / density)    compression: a recorded 'compression' metric,
--                                                  else 1/density (density = 1 − sparsity)
--   task coalesce(wp.task, workload)
--   y    score (sparse_frontier, loglinear) or rel_l2 (power)
-- and any other variable name (a loglinear --x) is the v_result column of that name. Only
-- results with status 'ok' are read; a row in which a variable is NULL is skipped and counted.
local sl = require "sparselab"
local fit = require "sparselab.fit"

local D = {}

D.DEFAULT_COLUMNS = {
  N = "wp.N",
  L = "coalesce(wp.L, n_k)",
  C = "coalesce(m.compression, 1.0 / density)",
  task = "coalesce(wp.task, workload)",
}
D.DEFAULT_Y = {sparse_frontier = "score", loglinear = "score", power = "rel_l2"}

local function sql_string(s) return "'" .. s:gsub("'", "''") .. "'" end

--- Expands the wp./p./m. shorthands of an SQL expression over v_result.
function D.expand(expr)
  local function sub(prefix, f) expr = expr:gsub("%f[%w_.]" .. prefix .. "%.([%a_][%w_]*)", f) end
  sub("wp", function(k) return "json_extract(workload_params_json, " .. sql_string("$." .. k) .. ")" end)
  sub("p", function(k) return "json_extract(params_json, " .. sql_string("$." .. k) .. ")" end)
  sub("m", function(k)
    return "(SELECT value FROM metric WHERE metric.result_id = v_result.result_id AND metric.name = " ..
      sql_string(k) .. ")"
  end)
  return expr
end

local function query(db, sql, ...)
  local ok, rows = pcall(db.query, db, sql, ...)
  if not ok then sl.fail("fit: %s", (tostring(rows):gsub("\n", " "))) end
  return rows
end

--- Reads the points of a fit. opts: law, x (loglinear/power variables), where (SQL over
--- v_result), y (expression), columns (variable → expression overrides).
--- → rows (variables by name, plus result_id), selection {law, where, columns, sql, n_read,
---   n_skipped, data_sha256}.
function D.select(db, opts)
  local law = opts.law or "sparse_frontier"
  local vars = fit.vars(law, opts)
  local cols = {}
  local items = {"result_id"}
  for _, v in ipairs(vars) do
    if not v:match("^[%a_][%w_]*$") then sl.fail("fit: variable name '%s' is not an identifier", v) end
    local e = (opts.columns or {})[v]
    if e == nil and v == "y" then e = opts.y or D.DEFAULT_Y[law] end
    if e == nil then e = D.DEFAULT_COLUMNS[v] or v end
    cols[v] = e
    items[#items + 1] = D.expand(e) .. ' AS "' .. v .. '"'
  end
  local sql = "SELECT " .. table.concat(items, ", ") .. " FROM v_result WHERE status = 'ok'" ..
    (opts.where and (" AND (" .. opts.where .. ")") or "") .. " ORDER BY result_id"
  local got = query(db, sql)
  local rows, skipped = {}, 0
  local data = {}
  for _, r in ipairs(got) do
    local complete = true
    for _, v in ipairs(vars) do if r[v] == nil then complete = false end end
    if complete then
      rows[#rows + 1] = r
      local d = {}
      for i, v in ipairs(vars) do d[i] = r[v] end
      data[#data + 1] = d
    else
      skipped = skipped + 1
    end
  end
  return rows, {law = law, where = opts.where, columns = cols, sql = sql, n_read = #got, n_skipped = skipped,
    data_sha256 = sl.store.sha256(sl.json_encode(data))}
end

--- A copy of t without NaN numbers (JSON has none), nested tables included.
local function clean(t)
  if type(t) == "number" then return t == t and t or nil end
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = clean(v) end
  return c
end
D.clean = clean

local function json_or_nil(t)
  if t == nil then return nil end
  return sl.json_encode(clean(t))
end

--- Writes a fit (sparselab.fit.fit's result) with the selection it was read with; → fit id.
--- opts.run_id links it to a run.
function D.store(db, f, selection, opts)
  opts = opts or {}
  local sel = {law = f.law, where = selection and selection.where, columns = selection and selection.columns,
    link = f.link, ref_task = f.ref_task, x = opts.x, offset = opts.offset, heldout = f.heldout and
    {axis = f.heldout.axis, cutoff = f.heldout.cutoff} or nil, dropped = f.dropped, tasks = f.tasks}
  local rows = query(db, [[
    INSERT INTO fit (run_id, law, link, selection_json, selection_sql, data_sha256, n_points, params_json,
                     se_json, ci_json, ci_level, n_bootstrap, seed, r2, rmse, heldout_json, solver_json,
                     sparselab_version)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id]],
    opts.run_id, f.law, f.link, json_or_nil(sel), selection and selection.sql, selection and selection.data_sha256,
    f.n_points, json_or_nil(f.params), json_or_nil(f.se), json_or_nil(f.ci), f.level, f.n_bootstrap,
    math.tointeger(f.seed), clean(f.r2), clean(f.rmse), json_or_nil(f.heldout), json_or_nil(f.solver), sl.version)
  return rows[1].id
end

return D
