-- sparselab.report — aligned text tables for the terminal (rows of
-- key/value tables, columns in a given order), CSV and JSON lines.
local sl = require "sparselab"

local R = {}

local function cell(v)
  if v == nil then return "" end
  if math.type(v) == "float" then
    if v ~= v then return "nan" end
    if v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
    return string.format("%.4g", v)
  end
  return tostring(v)
end
R.cell = cell

--- A number as %.<digits>g (4 by default), "" for nil, other values as text.
function R.g(v, digits)
  if v == nil then return "" end
  if type(v) == "number" then return string.format("%." .. (digits or 4) .. "g", v) end
  return tostring(v)
end

--- A command-line number: s parsed as a number (an integer when integer is
--- true); otherwise a user error "<cmd>: <what> expects ..., found '<s>'".
function R.number(cmd, s, what, integer)
  local v = tonumber(s)
  if v and integer then v = math.tointeger(v) end
  if v == nil then sl.fail("%s: %s expects %s, found '%s'", cmd, what, integer and "an integer" or "a number", s) end
  return v
end

--- Text table: rows (array of tables), columns (array of names).
function R.table(rows, columns)
  local width, lines = {}, {}
  for i, c in ipairs(columns) do width[i] = #c end
  local cells = {}
  for r, row in ipairs(rows) do
    cells[r] = {}
    for i, c in ipairs(columns) do
      cells[r][i] = cell(row[c])
      width[i] = math.max(width[i], #cells[r][i])
    end
  end
  local function line(vals)
    local out = {}
    for i, v in ipairs(vals) do
      local numeric = tonumber(v) ~= nil
      out[i] = numeric and string.rep(" ", width[i] - #v) .. v or v .. string.rep(" ", width[i] - #v)
    end
    return table.concat(out, "  ")
  end
  lines[1] = line(columns)
  local rule = {}
  for i = 1, #columns do rule[i] = string.rep("-", width[i]) end
  lines[2] = table.concat(rule, "  ")
  for r = 1, #rows do lines[#lines + 1] = line(cells[r]) end
  return table.concat(lines, "\n")
end

local function csv_field(s)
  if s:find('[,"\n]') then return '"' .. s:gsub('"', '""') .. '"' end
  return s
end

function R.csv(rows, columns)
  local lines = {}
  local head = {}
  for i, c in ipairs(columns) do head[i] = csv_field(c) end
  lines[1] = table.concat(head, ",")
  for _, row in ipairs(rows) do
    local vals = {}
    for i, c in ipairs(columns) do
      local v = row[c]
      vals[i] = csv_field(v == nil and "" or (math.type(v) == "float" and string.format("%.17g", v) or tostring(v)))
    end
    lines[#lines + 1] = table.concat(vals, ",")
  end
  return table.concat(lines, "\n")
end

--- One JSON object per row, keys in column order.
function R.json_lines(rows, columns)
  local lines = {}
  for _, row in ipairs(rows) do
    local t = {}
    for _, c in ipairs(columns) do t[c] = row[c] end
    lines[#lines + 1] = sl.json_encode(t)
  end
  return table.concat(lines, "\n")
end

--- Writes rows with out(): JSON lines with o.json, CSV with o.csv, else an aligned table.
function R.print(rows, columns, o, out)
  if o.json then
    if #rows > 0 then out(R.json_lines(rows, columns)) end
  elseif o.csv then
    out(R.csv(rows, columns))
  else
    out(R.table(rows, columns))
  end
end

return R
