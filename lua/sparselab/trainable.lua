-- sparselab.trainable — what the trainable-architecture recipes (issue 14:
-- nsa, moba, ...) share: loading a weights file against a documented list of
-- tensors with one-line errors, the provenance string `params_source`, and
-- the Adam optimiser of `sparselab fit-params`.
local sl = require "sparselab"

local T = {}

local FLOAT = {f32 = true, f16 = true, bf16 = true}

--- Heads, query rows, head_dim, kv heads and keys of a problem.
function T.dims(prob)
  local qs, ks = prob.q:shape(), prob.k:shape()
  return qs[1], qs[2], qs[3], ks[1], ks[2]
end

--- Density of a per-(kv head, row) count of attended keys (i32 [Hkv, Nq]):
--- Σ count / Σ causal keys (row t sees Nk - Nq + t + 1 keys).
function T.count_density(prob, count)
  local _, nq, _, _, nk = T.dims(prob)
  local c = count:totable()
  local kept, causal = 0, 0
  for kv = 1, #c do
    for t = 1, nq do kept = kept + c[kv][t]; causal = causal + nk - nq + t end
  end
  return kept / causal
end

--- The provenance of a weights file: "sha256:<hex>" of its bytes.
function T.file_source(path)
  local f = io.open(path, "rb")
  if not f then sl.fail("%s: cannot open (no such file or directory)", path) end
  local s = f:read("a")
  f:close()
  return "sha256:" .. sl.sha256(s)
end

local function shape_str(s)
  local parts = {}
  for i, x in ipairs(s) do parts[i] = tostring(x) end
  return "[" .. table.concat(parts, ", ") .. "]"
end
T.shape_str = shape_str

--- Loads and checks a weights file. spec = list of {name =, shape = {...},
--- dims = "what the dims are", range = {lo, hi} (optional), group = "x"
--- (tensors of one group come together or not at all)}. Every tensor of the
--- file must be in spec; a group is all present or all absent; float dtype
--- (f32, f16, bf16); exact shape; values inside range. NaN is rejected by the
--- reader. Returns {name = tensor} of the present ones.
function T.load_weights(method, path, spec)
  local ok, ws = pcall(sl.load, path)
  if not ok then sl.fail("%s: weights %s", method, tostring(ws)) end
  if type(ws) ~= "table" then sl.fail("%s: weights %s: expected a safetensors file, found a single tensor", method, path) end
  local by_name, names = {}, {}
  for _, e in ipairs(spec) do by_name[e.name] = e; names[#names + 1] = e.name end
  local found = {}
  for name in pairs(ws) do found[#found + 1] = name end
  table.sort(found)
  for _, name in ipairs(found) do
    if not by_name[name] then
      sl.fail("%s: weights %s: tensor '%s' is not one of %s's weights (expected some of: %s)", method, path, name, method,
        table.concat(names, ", "))
    end
  end
  local groups = {}
  for _, e in ipairs(spec) do
    local g = e.group or e.name
    groups[g] = groups[g] or {present = {}, absent = {}}
    table.insert(ws[e.name] and groups[g].present or groups[g].absent, e.name)
  end
  for _, e in ipairs(spec) do
    local g = groups[e.group or e.name]
    if not ws[e.name] and #g.present > 0 then
      sl.fail("%s: weights %s: tensor '%s' is missing: expected %s %s beside %s", method, path, e.name,
        shape_str(e.shape), e.dims, table.concat(g.present, ", "))
    end
    if not ws[e.name] and e.required then
      sl.fail("%s: weights %s: tensor '%s' is missing: expected %s %s", method, path, e.name, shape_str(e.shape), e.dims)
    end
  end
  for _, e in ipairs(spec) do
    local t = ws[e.name]
    if t then
      if not FLOAT[t:dtype()] then
        sl.fail("%s: weights %s: tensor '%s' is %s; expected a float tensor (f32, f16 or bf16) %s %s", method, path,
          e.name, t:dtype(), shape_str(e.shape), e.dims)
      end
      local s = t:shape()
      local same = #s == #e.shape
      for i = 1, #e.shape do same = same and s[i] == e.shape[i] end
      if not same then
        sl.fail("%s: weights %s: tensor '%s' is %s; expected %s %s", method, path, e.name, shape_str(s),
          shape_str(e.shape), e.dims)
      end
      if e.range then
        local _, mn, mx = t:stats()
        if mn < e.range[1] or mx > e.range[2] then
          sl.fail("%s: weights %s: tensor '%s' holds values in [%g, %g]; expected [%g, %g] (%s)", method, path, e.name,
            mn, mx, e.range[1], e.range[2], e.range_why or "its range")
        end
      end
    end
  end
  return ws
end

--- Adam (Kingma & Ba 2015) over a flat parameter array x (Lua numbers) with
--- its gradient grad(x) -> (loss, g): lr, beta1 = 0.9, beta2 = 0.999,
--- eps = 1e-8, `steps` steps. Returns x, the loss before the first step and
--- the loss at the end.
function T.adam(x, grad, o)
  local lr, b1, b2, eps = o.lr or 0.05, 0.9, 0.999, 1e-8
  local m, v = {}, {}
  for i = 1, #x do m[i], v[i] = 0, 0 end
  local first, last
  for step = 1, o.steps do
    local loss, g = grad(x)
    first = first or loss
    last = loss
    for i = 1, #x do
      m[i] = b1 * m[i] + (1 - b1) * g[i]
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
      local mh, vh = m[i] / (1 - b1 ^ step), v[i] / (1 - b2 ^ step)
      x[i] = x[i] - lr * mh / (math.sqrt(vh) + eps)
    end
  end
  last = grad(x)
  return x, first, last
end

return T
