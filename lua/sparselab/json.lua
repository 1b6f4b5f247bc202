-- sparselab.json — JSON for the Lua side: a thin wrapper over the binding's
-- cJSON codec (lua/bind/l_json.c). decode: objects become tables with string
-- keys, arrays sequences, null a sentinel (json.null), numbers Lua numbers
-- (integers when integral and within ±2^53). encode is sl.json_encode (sorted
-- keys, shortest round-trip numbers; see l_json.c). Errors say where:
-- "<where>: invalid JSON at byte N near '...'".
local sl = require "sparselab"

local J = {}

J.null = setmetatable({}, {__tostring = function() return "null" end})

--- Decodes text; returns the value or raises "<where>: ... at byte N".
function J.decode(text, where)
  return sl.json_decode_c(text, where or "json", J.null)
end

J.encode = sl.json_encode

return J
