-- sparselab.qkv — q, k, v as PyTorch code has them (issue 18), for eval/calibrate --qkv and
-- sl.qkv.load from Lua:
--   * names: q/k/v, or PyTorch's query_states/key_states/value_states (also query/key/value,
--     queries/keys/values, xq/xk/xv), or an explicit map "q=NAME,k=NAME,v=NAME" (--names);
--   * layouts: [heads, tokens, head_dim], or [batch, heads, tokens, head_dim] (the layout of
--     query_states after .transpose(1, 2) in Hugging Face attention code): batch 1 is read as
--     [heads, tokens, head_dim]; a larger batch gives one problem per element (views, no copy).
-- Shapes that fit neither say which layout was expected and what was found.
local sl = require "sparselab"

local Q = {}

Q.ALIASES = {
  q = {"q", "query_states", "query", "queries", "xq"},
  k = {"k", "key_states", "key", "keys", "xk"},
  v = {"v", "value_states", "value", "values", "xv"},
}

--- "q=a,k=b,v=c" → {q = "a", k = "b", v = "c"} (any subset).
function Q.parse_names(spec)
  local names = {}
  if spec == nil then return names end
  for item in spec:gmatch("[^,]+") do
    local role, name = item:match("^%s*([qkv])%s*=%s*(.-)%s*$")
    if not role or name == "" then sl.fail("--names expects q=NAME,k=NAME,v=NAME, found '%s'", spec) end
    names[role] = name
  end
  return names
end

local function shape_str(t)
  return "[" .. table.concat(t:shape(), ", ") .. "]"
end

--- Loads path (a safetensors file or a folder of .npy files). names: a table or a --names
--- string. → list of {q =, k =, v =, batch = b or nil}, one per batch element.
function Q.load(path, names)
  if type(names) == "string" or names == nil then names = Q.parse_names(names) end
  local t = sl.load(path)
  if type(t) ~= "table" then sl.fail("%s: expected a safetensors file or a directory with q, k, v", path) end
  local found = {}
  for n in pairs(t) do found[#found + 1] = n end
  table.sort(found)
  local got, missing = {}, {}
  for _, role in ipairs{"q", "k", "v"} do
    if names[role] then
      got[role] = t[names[role]]
      if not got[role] then
        sl.fail("%s: --names %s=%s: no tensor '%s' (found: %s)", path, role, names[role], names[role],
          #found > 0 and table.concat(found, ", ") or "nothing")
      end
    else
      for _, a in ipairs(Q.ALIASES[role]) do
        if t[a] then got[role] = t[a]; break end
      end
      if not got[role] then missing[#missing + 1] = role end
    end
  end
  if #missing > 0 then
    local tried = {}
    for _, r in ipairs(missing) do tried[#tried + 1] = table.concat(Q.ALIASES[r], "/") end
    sl.fail("%s: expected tensors q, k, v; missing %s (tried %s; found: %s; --names q=NAME,k=NAME,v=NAME " ..
      "names them)", path, table.concat(missing, ", "), table.concat(tried, ", "),
      #found > 0 and table.concat(found, ", ") or "nothing")
  end
  local q, k, v = got.q, got.k, got.v
  local nq, nk, nv = #q:shape(), #k:shape(), #v:shape()
  local function bad()
    sl.fail("%s: expected q, k, v as [heads, tokens, head_dim] or [batch, heads, tokens, head_dim] (PyTorch's " ..
      "query_states after transpose(1, 2)), found q %s, k %s, v %s", path, shape_str(q), shape_str(k), shape_str(v))
  end
  if nq == 3 and nk == 3 and nv == 3 then return {{q = q, k = k, v = v}} end
  if nq ~= 4 or nk ~= 4 or nv ~= 4 then bad() end
  local B = q:shape()[1]
  if k:shape()[1] ~= B or v:shape()[1] ~= B then
    sl.fail("%s: batch sizes differ: q %s, k %s, v %s (expected [batch, heads, tokens, head_dim] each)", path,
      shape_str(q), shape_str(k), shape_str(v))
  end
  local out = {}
  for b = 1, B do
    local function one(x) return sl.squeeze(x:narrow(1, b, 1), 1) end
    out[b] = {q = one(q), k = one(k), v = one(v), batch = B > 1 and (b - 1) or nil}
  end
  return out
end

return Q
