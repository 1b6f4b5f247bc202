-- sparselab.json — a strict JSON reader (RFC 8259) for the files the
-- workbench writes itself with sl.json_encode (calibration configs). Objects
-- become tables with string keys, arrays sequences, null a sentinel
-- (json.null), numbers Lua numbers (integers when written without a
-- fraction or exponent and in range). Errors say where: "at byte N".
local J = {}

J.null = setmetatable({}, {__tostring = function() return "null" end})

local ESC = {['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t'}

local function utf8_of(cp) return utf8.char(cp) end

--- Decodes text; returns the value or raises "json: ... at byte N".
function J.decode(text, where)
  where = where or "json"
  if type(text) ~= "string" then error(where .. ": expected a string, found " .. type(text), 0) end
  local pos = 1
  local function fail(msg) error(string.format("%s: %s at byte %d", where, msg, pos), 0) end
  local function ws() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local value
  local function str()
    pos = pos + 1 -- opening quote
    local parts = {}
    while true do
      local c = text:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1; break end
      if c == "\\" then
        local e = text:sub(pos + 1, pos + 1)
        if e == "u" then
          local hex = text:match("^%x%x%x%x", pos + 2)
          if not hex then fail("bad \\u escape") end
          local cp = tonumber(hex, 16)
          pos = pos + 6
          if cp >= 0xD800 and cp <= 0xDBFF then
            local lo = text:match("^\\u(%x%x%x%x)", pos)
            if not lo then fail("lone surrogate") end
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (tonumber(lo, 16) - 0xDC00)
            pos = pos + 6
          end
          parts[#parts + 1] = utf8_of(cp)
        elseif ESC[e] then
          parts[#parts + 1] = ESC[e]
          pos = pos + 2
        else
          fail("bad escape")
        end
      elseif c:byte() < 32 then
        fail("control character in string")
      else
        local run = text:match('^[^"\\\0-\31]+', pos)
        parts[#parts + 1] = run
        pos = pos + #run
      end
    end
    return table.concat(parts)
  end
  function value()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local t = {}
      ws()
      if text:sub(pos, pos) == "}" then pos = pos + 1; return t end
      while true do
        ws()
        if text:sub(pos, pos) ~= '"' then fail("expected a string key") end
        local k = str()
        ws()
        if text:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        t[k] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return t end
        if d ~= "," then pos = pos - 1; fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      pos = pos + 1
      local t = {}
      ws()
      if text:sub(pos, pos) == "]" then pos = pos + 1; return t end
      while true do
        t[#t + 1] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return t end
        if d ~= "," then pos = pos - 1; fail("expected ',' or ']'") end
      end
    elseif c == '"' then
      return str()
    elseif text:find("^true", pos) then
      pos = pos + 4; return true
    elseif text:find("^false", pos) then
      pos = pos + 5; return false
    elseif text:find("^null", pos) then
      pos = pos + 4; return J.null
    else
      local num = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" or num == "-" then fail("unexpected " .. (c == "" and "end of text" or "'" .. c .. "'")) end
      if not num:match("^-?0[%.eE]") and num:match("^-?0%d") then fail("leading zero") end
      local v = (num:find("[%.eE]") and tonumber(num)) or math.tointeger(tonumber(num)) or tonumber(num)
      if v == nil then fail("bad number '" .. num .. "'") end
      pos = pos + #num
      return v
    end
  end
  local v = value()
  ws()
  if pos <= #text then fail("trailing text") end
  return v
end

return J
