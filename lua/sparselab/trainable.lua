-- sparselab.trainable — what the trainable-architecture recipes (issue 14:
-- nsa, moba, ...) share: loading a weights file against a documented list of
-- tensors with one-line errors, the provenance string `params_source`, and
-- the Adam optimiser of `sparselab fit-params`.
local sl = require "sparselab"

local T = {}

local FLOAT = {f32 = true, f16 = true, bf16 = true}
local INT = {i32 = true, i64 = true}

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

--- A safetensors file whose I64 tensors are read as i32 (the reader has no
--- 64-bit integer dtype; PyTorch writes index tensors as int64): the file is
--- rewritten with those tensors narrowed to I32 into a temporary file and
--- loaded from there. allowed(name) says which tensors may be integers; an
--- I64 tensor that may not, or a value outside the i32 range, is a one-line
--- error naming method, file and tensor.
local function load_i64(method, path, allowed)
  local f = io.open(path, "rb")
  if not f then sl.fail("%s: weights %s: cannot open", method, path) end
  local bytes = f:read("a")
  f:close()
  local hlen = #bytes >= 8 and string.unpack("<I8", bytes) or -1
  if hlen < 0 or 8 + hlen > #bytes then sl.fail("%s: weights %s: expected a safetensors file", method, path) end
  local header = sl.json_decode(bytes:sub(9, 8 + hlen))
  local data0 = 8 + hlen -- byte offset before the data section
  local names = {}
  for name in pairs(header) do if name ~= "__metadata__" then names[#names + 1] = name end end
  table.sort(names, function(x, y) return header[x].data_offsets[1] < header[y].data_offsets[1] end)
  local parts, at, out = {}, 0, {}
  for _, name in ipairs(names) do
    local e = header[name]
    local b, en = e.data_offsets[1], e.data_offsets[2]
    local chunk = bytes:sub(data0 + b + 1, data0 + en)
    if e.dtype == "I64" then
      if not allowed(name) then
        sl.fail("%s: weights %s: tensor '%s' is i64; expected a float tensor (f32, f16 or bf16)", method, path, name)
      end
      local vals = {}
      for i = 1, #chunk // 8 do
        local v = string.unpack("<i8", chunk, 8 * i - 7)
        if v < -2147483648 or v > 2147483647 then
          sl.fail("%s: weights %s: tensor '%s' holds %d at flat index %d; expected values that fit in i32", method, path,
            name, v, i - 1)
        end
        vals[i] = string.pack("<i4", v)
      end
      chunk = table.concat(vals)
    end
    out[name] = {dtype = e.dtype == "I64" and "I32" or e.dtype, shape = e.shape, data_offsets = {at, at + #chunk}}
    parts[#parts + 1] = chunk
    at = at + #chunk
  end
  if #names == 0 then out = header end
  local text = sl.json_encode(out)
  text = text .. string.rep(" ", (8 - #text % 8) % 8)
  local tmp = os.tmpname()
  local w = io.open(tmp, "wb")
  w:write(string.pack("<I8", #text), text, table.concat(parts))
  w:close()
  local ok, ws = pcall(sl.load, tmp)
  os.remove(tmp)
  if not ok then sl.fail("%s: weights %s: %s", method, path, tostring(ws)) end
  return ws
end

--- Loads and checks a weights file. spec = list of {name =, shape = {...},
--- dims = "what the dims are", range = {lo, hi} (optional), group = "x"
--- (tensors of one group come together or not at all), int = true (an
--- integer tensor, i32 or i64, is accepted too; i64 is narrowed to i32)}. Every tensor of the
--- file must be in spec; a group is all present or all absent; float dtype
--- (f32, f16, bf16); exact shape; values inside range. NaN is rejected by the
--- reader. Returns {name = tensor} of the present ones.
function T.load_weights(method, path, spec)
  local by_name, names, any_int = {}, {}, false
  for _, e in ipairs(spec) do by_name[e.name] = e; names[#names + 1] = e.name; any_int = any_int or e.int end
  local ok, ws = pcall(sl.load, path)
  if not ok and any_int and tostring(ws):find("found 'I64'", 1, true) then
    ws = load_i64(method, path, function(name) return not by_name[name] or by_name[name].int end)
  elseif not ok then
    sl.fail("%s: weights %s", method, tostring(ws))
  end
  if type(ws) ~= "table" then sl.fail("%s: weights %s: expected a safetensors file, found a single tensor", method, path) end
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
      if not FLOAT[t:dtype()] and not (e.int and INT[t:dtype()]) then
        sl.fail("%s: weights %s: tensor '%s' is %s; expected a %s %s %s", method, path, e.name, t:dtype(),
          e.int and "float or integer tensor (f32, f16, bf16, i32 or i64)" or "float tensor (f32, f16 or bf16)",
          shape_str(e.shape), e.dims)
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

-- ---- issue 14, second half: shared ridge regression ----

--- The ridge objective J(w) = Σ_j (x_j·w - y_j)² + lambda·|w|² and its
--- gradient 2 Σ_j (x_j·w - y_j) x_j + 2 lambda w.
function T.ridge_loss_grad(X, Y, w, lambda)
  local n, J, g = #w, 0, {}
  for i = 1, n do g[i] = 2 * lambda * w[i]; J = J + lambda * w[i] * w[i] end
  for j = 1, #X do
    local x, r = X[j], -Y[j]
    for i = 1, n do r = r + x[i] * w[i] end
    J = J + r * r
    for i = 1, n do g[i] = g[i] + 2 * r * x[i] end
  end
  return J, g
end

--- Solves A w = b (n x n, A modified) by Gaussian elimination with partial pivoting.
function T.solve(A, b)
  local n = #b
  for c = 1, n do
    local piv = c
    for r = c + 1, n do if math.abs(A[r][c]) > math.abs(A[piv][c]) then piv = r end end
    A[c], A[piv], b[c], b[piv] = A[piv], A[c], b[piv], b[c]
    for r = c + 1, n do
      local f = A[r][c] / A[c][c]
      for k = c, n do A[r][k] = A[r][k] - f * A[c][k] end
      b[r] = b[r] - f * b[c]
    end
  end
  local w = {}
  for r = n, 1, -1 do
    local s = b[r]
    for k = r + 1, n do s = s - A[r][k] * w[k] end
    w[r] = s / A[r][r]
  end
  return w
end

--- Exact attention over per-row key lists (row_ptr[h]: each query row's
--- offsets into col, col: 0-based key indices), one entry per row, by
--- attn.token_sparse: o, lse and its FLOPs.
function T.token_sparse(prob, row_ptr, col)
  local args = {rows_per_entry = 1, backend = prob.backend}
  local rpt, ct = sl.tensor(row_ptr, "i32"), sl.tensor(#col > 0 and col or {0}, "i32")
  if #col == 0 then ct = ct:narrow(1, 1, 0) end
  local o, lse = sl.attn.token_sparse(prob.q, prob.k, prob.v, rpt, ct, args)
  return o, lse, sl.op_flops("attn.token_sparse", prob.q, prob.k, prob.v, rpt, ct, args)
end

--- Closed-form ridge regression of Y on the rows X (lambda per row): w, the
--- mean objective at w = 0 and at the fit.
function T.ridge(X, Y, lambda_per_row)
  local n, lambda = #X[1], lambda_per_row * #X
  local A, b = {}, {}
  for i = 1, n do A[i] = {}; b[i] = 0; for k = 1, n do A[i][k] = i == k and lambda or 0 end end
  for j = 1, #X do
    local x = X[j]
    for i = 1, n do
      b[i] = b[i] + x[i] * Y[j]
      for k = 1, n do A[i][k] = A[i][k] + x[i] * x[k] end
    end
  end
  local w = T.solve(A, b)
  local zero = {}
  for i = 1, n do zero[i] = 0 end
  return w, T.ridge_loss_grad(X, Y, zero, lambda) / #X, T.ridge_loss_grad(X, Y, w, lambda) / #X
end

--- Eigen-decomposition of a symmetric n x n matrix (Lua table, not
--- modified) by cyclic Jacobi rotations: values (descending) and the
--- matching unit eigenvectors as columns vec[i][c].
function T.sym_eig(A0)
  local n = #A0
  local A, V = {}, {}
  for i = 1, n do
    A[i], V[i] = {}, {}
    for j = 1, n do A[i][j] = A0[i][j]; V[i][j] = i == j and 1 or 0 end
  end
  for _ = 1, 100 do
    local off = 0
    for i = 1, n do for j = i + 1, n do off = off + A[i][j] * A[i][j] end end
    if off < 1e-30 then break end
    for p = 1, n - 1 do
      for q = p + 1, n do
        if math.abs(A[p][q]) > 1e-300 then
          local theta = (A[q][q] - A[p][p]) / (2 * A[p][q])
          local t = (theta >= 0 and 1 or -1) / (math.abs(theta) + math.sqrt(theta * theta + 1))
          local c = 1 / math.sqrt(t * t + 1)
          local s = t * c
          for k = 1, n do
            local akp, akq = A[k][p], A[k][q]
            A[k][p], A[k][q] = c * akp - s * akq, s * akp + c * akq
          end
          for k = 1, n do
            local apk, aqk = A[p][k], A[q][k]
            A[p][k], A[q][k] = c * apk - s * aqk, s * apk + c * aqk
          end
          for k = 1, n do
            local vkp, vkq = V[k][p], V[k][q]
            V[k][p], V[k][q] = c * vkp - s * vkq, s * vkp + c * vkq
          end
        end
      end
    end
  end
  local order = {}
  for i = 1, n do order[i] = i end
  table.sort(order, function(a, b) if A[a][a] ~= A[b][b] then return A[a][a] > A[b][b] end return a < b end)
  local vals, vecs = {}, {}
  for i = 1, n do vecs[i] = {} end
  for c, i in ipairs(order) do
    vals[c] = A[i][i]
    for k = 1, n do vecs[k][c] = V[k][i] end
  end
  return vals, vecs
end


-- ---- C selections (issue 14, session 3) ----

--- trainable.select: index lists (row_ptr [Hq, Nq+1], col narrowed to its
--- used length) of the low-rank / split-channel score selection; args are
--- the op's params plus wq, wk ([Hq, D, r] tensors, both or neither) and
--- backend. Returns row_ptr, col and the number of listed pairs.
function T.select(prob, args)
  args.backend = args.backend or prob.backend
  local rp, col = sl.trainable.select(prob.q, prob.k, args)
  local hq, nq = rp:shape()[1], rp:shape()[2] - 1
  local total = hq > 0 and math.tointeger(rp:get(hq, nq + 1)) or 0
  return rp, col:narrow(1, 1, total), total
end

--- attn.token_sparse on index-list tensors (one entry per row): o, lse and its FLOPs.
function T.token_sparse_t(prob, rp, col)
  local args = {rows_per_entry = 1, backend = prob.backend}
  local o, lse = sl.attn.token_sparse(prob.q, prob.k, prob.v, rp, col, args)
  return o, lse, sl.op_flops("attn.token_sparse", prob.q, prob.k, prob.v, rp, col, args)
end

return T
