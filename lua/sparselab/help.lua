-- sparselab.help — the REPL's `?` over the whole sl.* API (issue 18): functions with their
-- parameters and one-line docs (sparselab/api.lua; a Lua function's parameter names read from
-- the function), namespaces with their functions, then (in sl.help) methods and ops.
local sl = require "sparselab"

local H = {}

local function api() return require "sparselab.api" end

-- the value at "sl.a.b" (nil when absent)
local function lookup(path)
  local v = sl
  for part in path:gmatch("[^.]+") do
    if part == "sl" and v == sl then goto continue end
    if type(v) ~= "table" then return nil end
    v = rawget(v, part) or (getmetatable(v) == nil and nil) or v[part]
    if v == nil then return nil end
    ::continue::
  end
  return v
end
H.lookup = lookup

--- "(a, b, ...)" of a Lua function, or the documented arguments of a C one.
function H.signature(name, f)
  local e = api()[name]
  if type(e) == "table" then return e[1] end
  if type(f) ~= "function" then return "" end
  local info = debug.getinfo(f, "u")
  if debug.getinfo(f, "S").what == "C" then return "(...)" end
  local p = {}
  for i = 1, info.nparams do p[i] = debug.getlocal(f, i) or ("arg" .. i) end
  if info.isvararg then p[#p + 1] = "..." end
  -- a method table's first parameter is the object
  if p[1] == "self" then table.remove(p, 1); return ":(" .. table.concat(p, ", ") .. ")" end
  return "(" .. table.concat(p, ", ") .. ")"
end

function H.doc(name)
  local e = api()[name]
  if type(e) == "table" then return e[2] end
  return e
end

local function is_op(name)
  for _, o in ipairs(sl.ops()) do
    if o.name == name or "sl." .. o.name == name then return o end
  end
  return nil
end

-- the functions of a namespace table, sorted: {{name, f}...}
local function members(prefix, t)
  local out = {}
  for k, v in pairs(t) do
    if type(k) == "string" and not k:match("^_") then
      if type(v) == "function" then out[#out + 1] = {prefix .. "." .. k, v}
      elseif type(v) == "table" and k:match("^%u") then -- a class (Model, Pattern): its methods
        for k2, v2 in pairs(v) do
          if type(k2) == "string" and type(v2) == "function" and not k2:match("^_") then
            out[#out + 1] = {prefix .. "." .. k .. "." .. k2, v2}
          end
        end
      end
    end
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end
H.members = members

local function line(name, f)
  local d = H.doc(name)
  if not d then
    local op = is_op(name:gsub("^sl%.", ""))
    d = op and op.doc or "(undocumented)"
  end
  return string.format("%s%s  %s", name, H.signature(name, f), d)
end

--- The namespaces of sl (tables holding functions), sorted.
function H.namespaces()
  local out = {}
  for k, v in pairs(sl) do
    if type(k) == "string" and type(v) == "table" and not k:match("^_") and not k:match("_c$") then
      for _, x in pairs(v) do
        if type(x) == "function" then out[#out + 1] = k; break end
      end
    end
  end
  table.sort(out)
  return out
end

--- Prints help for name when it is a function or namespace of sl (true), else false.
function H.show(name, out)
  out = out or io.write
  if name == nil or name == "" then
    out("sl.methods.ids()   methods: ", table.concat(sl.methods.ids(), ", "), "\n")
    local ops = {}
    for _, o in ipairs(sl.ops()) do ops[#ops + 1] = o.name end
    out("sl.ops()           ops: ", table.concat(ops, ", "), "\n")
    out("sl.eval(id, sl.problem{q=, k=, v=}, {budget=})   evaluate a method against dense\n")
    out("sl.mask.window(w) + sl.mask.sink(s)               compose mask patterns\n")
    local top = {}
    for k, v in pairs(sl) do
      if type(k) == "string" and type(v) == "function" and not k:match("^_") then top[#top + 1] = k end
    end
    table.sort(top)
    out("functions: sl.", table.concat(top, ", sl."), "\n")
    out("namespaces: sl.", table.concat(H.namespaces(), ", sl."), "\n")
    out("?NAME: a function (?sl.mask.window or ?mask.window), a namespace (?sl.mask), a method or an op\n")
    return true
  end
  local full = name:match("^sl%.") and name or ("sl." .. name)
  if is_op(full:sub(4)) then return false end
  local v = lookup(full)
  if type(v) == "function" then
    out(line(full, v), "\n")
    return true
  end
  if type(v) == "table" and full ~= "sl" and not sl.mask.is_pattern(v) then
    local ms = members(full, v)
    if #ms > 0 then
      for _, m in ipairs(ms) do out("  ", line(m[1], m[2]), "\n") end
      return true
    end
  end
  -- a bare or partial name: the API functions whose name ends with it (when it is not a method id)
  if not pcall(sl.methods.get, name) then
    local found = {}
    for key in pairs(api()) do
      if key:match("%." .. name:gsub("%p", "%%%0") .. "$") then found[#found + 1] = key end
    end
    table.sort(found)
    if #found == 1 then
      out(line(found[1], lookup(found[1])), "\n")
      return true
    elseif #found > 1 then
      out(name, " is ", table.concat(found, ", "), "\n")
      return true
    end
  end
  return false
end

return H
