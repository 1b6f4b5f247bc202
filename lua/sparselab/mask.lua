-- sparselab.mask — lazy mask patterns: every static pattern of DESIGN.md §4
-- (causal, window, sink, strided, block_diag, power, triangle, neighborhood,
-- document, segment_sink, global_tokens, dense_rows, dense_cols, vertical,
-- slash, drop) as constructors taking a table (sl.mask.window{w = 512}; an
-- unknown key is an error naming it), composed with `+` (union), `*`
-- (intersect) and `-` (difference), per-head `assign`, and materialised into
-- block masks at a size (p:materialize{n_q=, n_k=, bq=, bk=, n_heads=}).
-- Materialised masks are C objects (l_mask.c) with the same operators; a
-- pattern beside a mask is materialised like the mask. The rules, exactly,
-- are the pattern table in core/sparselab.h. Positions (columns, rows,
-- segment starts, permutations) are 0-based token positions; lists may be
-- Lua tables or i32 tensors, and a table of tables gives one list per head.
-- Every pattern keeps only j <= i (query position i, key j) unless it says
-- otherwise: `causal = false` drops that for any pattern; full and
-- neighborhood are not causal unless `causal = true`.
local sl = require "sparselab"

local M = {}
local Pattern = {}
Pattern.__index = Pattern

local function is_pattern(x) return getmetatable(x) == Pattern end
local function is_mask(x) return sl.mask_c.is_mask(x) end

-- ---- arguments ---------------------------------------------------------------

local function fail(fname, msg) error("sl.mask." .. fname .. ": " .. msg, 0) end

--- Checks the keys of args against the allowed list (unknown keys are errors).
local function check_keys(fname, args, allowed)
  if type(args) ~= "table" then fail(fname, "expected a table of parameters, found " .. type(args)) end
  local ok = {}
  for _, k in ipairs(allowed) do ok[k] = true end
  for k in pairs(args) do
    if not ok[k] then
      fail(fname, string.format("unknown key '%s' (expected one of: %s)", tostring(k), table.concat(allowed, ", ")))
    end
  end
end

local function int(fname, key, x, min, default)
  if x == nil then
    if default == nil then fail(fname, key .. " is required") end
    return default
  end
  local v = math.tointeger(x)
  if v == nil then fail(fname, string.format("%s must be an integer, found %s", key, tostring(x))) end
  if min and v < min then fail(fname, string.format("%s = %d is below %d", key, v, min)) end
  return v
end

local function causal_flag(fname, v)
  if v == nil then return 0 end
  if type(v) ~= "boolean" then fail(fname, "causal must be a boolean, found " .. type(v)) end
  return v and 1 or -1
end

-- A list of integers: a Lua table, an i32 tensor (1-D shared, 2-D one row
-- per head) or a table of tables (one list per head). Returns idx, idx_ptr
-- (nil when shared) and the number of heads (nil when shared).
local function list(fname, key, v)
  if v == nil then fail(fname, key .. " is required") end
  if type(v) == "userdata" and v.totable then v = v:totable() end
  if type(v) ~= "table" then fail(fname, key .. " must be a table of integers, found " .. type(v)) end
  local function ints(t, where)
    local out = {}
    for i = 1, #t do
      local x = math.tointeger(t[i])
      if x == nil then fail(fname, string.format("%s: entry %d must be an integer, found %s", where, i, tostring(t[i]))) end
      out[i] = x
    end
    return out
  end
  if type(v[1]) ~= "table" then return ints(v, key), nil, nil end
  local idx, ptr = {}, {0}
  for h = 1, #v do
    if type(v[h]) ~= "table" then fail(fname, string.format("%s: head %d's list must be a table", key, h)) end
    for _, x in ipairs(ints(v[h], key .. "[" .. h .. "]")) do idx[#idx + 1] = x end
    ptr[#ptr + 1] = #idx
  end
  return idx, ptr, #v
end

-- Up to 3 per-dimension integers from a number (every dim) or a table.
local function dims(fname, key, v, nd, min, default)
  local out = {}
  if v == nil then
    for d = 1, nd do out[d] = default end
  elseif type(v) == "number" then
    for d = 1, nd do out[d] = int(fname, key, v, min) end
  elseif type(v) == "table" then
    if #v ~= nd then fail(fname, string.format("%s has %d entries, the grid %d dimensions", key, #v, nd)) end
    for d = 1, nd do out[d] = int(fname, key .. "[" .. d .. "]", v[d], min) end
  else
    fail(fname, key .. " must be a number or a table, found " .. type(v))
  end
  return out
end

local function leaf(term, label, heads)
  return setmetatable({terms = {term}, label = label, heads = heads}, Pattern)
end

-- A constructor that takes a table, or a number for its main key.
local function ctor(fname, main, allowed, build)
  return function(args)
    if args == nil then args = {} end
    if type(args) == "number" and main then args = {[main] = args} end
    check_keys(fname, args, allowed)
    return build(args)
  end
end

local function kv(args, keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = args[k]
    if v ~= nil then
      if type(v) == "table" then v = "{...}" end
      parts[#parts + 1] = k .. "=" .. tostring(v)
    end
  end
  return table.concat(parts, ", ")
end

-- ---- the patterns ----------------------------------------------------------------

--- Every pair (not causal unless causal = true).
M.full = ctor("full", nil, {"causal"}, function(a)
  return leaf({kind = "full", causal = causal_flag("full", a.causal)}, "full")
end)

--- Key j visible to query i iff j <= i.
M.causal = ctor("causal", nil, {}, function()
  return leaf({kind = "causal"}, "causal")
end)

--- Sliding window (card sliding_window): 0 <= I - J < w (w counts the query
--- itself), optional dilation (every dilation-th unit, w of them) and block
--- (the window in units of block tokens; token causal inside the diagonal).
M.window = ctor("window", "w", {"w", "dilation", "block", "causal"}, function(a)
  local w = int("window", "w", a.w, 1)
  return leaf({kind = "window", a = w, b = int("window", "dilation", a.dilation, 1, 1),
    unit = int("window", "block", a.block, 1, 1), causal = causal_flag("window", a.causal)},
    "window(" .. kv(a, {"w", "dilation", "block"}) .. ")")
end)

--- Sink tokens (card streaming_llm): J < s, in units of block tokens.
M.sink = ctor("sink", "s", {"s", "block", "causal"}, function(a)
  local s = int("sink", "s", a.s, 0)
  return leaf({kind = "sink", a = s, unit = int("sink", "block", a.block, 1, 1),
    causal = causal_flag("sink", a.causal)}, "sink(" .. kv(a, {"s", "block"}) .. ")")
end)

--- Strided columns (card s2_attention): (J + o_h) % stride == 0 with
--- o_h = offset + h·head_step, or offsets[h + 1] per head; relative = true
--- uses (I - J + o_h) instead (Sparse-Transformer diagonals).
M.strided = ctor("strided", "stride", {"stride", "offset", "head_step", "offsets", "relative", "block", "causal"},
  function(a)
    local t = {kind = "strided", a = int("strided", "stride", a.stride, 1), b = a.relative and 1 or 0,
      offset = int("strided", "offset", a.offset, nil, 0), head_step = int("strided", "head_step", a.head_step, nil, 0),
      unit = int("strided", "block", a.block, 1, 1), causal = causal_flag("strided", a.causal)}
    local heads
    if a.offsets ~= nil then
      local idx, ptr = list("strided", "offsets", a.offsets)
      if ptr then fail("strided", "offsets is one integer per head") end
      t.idx, heads = idx, #idx
    end
    return leaf(t, "strided(" .. kv(a, {"stride", "offset", "head_step", "offsets", "relative", "block"}) .. ")", heads)
  end)

--- Block-diagonal chunks of size tokens: floor(i/size) == floor(j/size).
M.block_diag = ctor("block_diag", "size", {"size", "causal"}, function(a)
  return leaf({kind = "block_diag", a = int("block_diag", "size", a.size, 1), causal = causal_flag("block_diag", a.causal)},
    "block_diag(" .. kv(a, {"size"}) .. ")")
end)

--- PowerAttention (card power_attention): I - J is 0 or a power of two, in
--- units of block tokens.
M.power = ctor("power", "block", {"block", "causal"}, function(a)
  return leaf({kind = "power", unit = int("power", "block", a.block, 1, 1), causal = causal_flag("power", a.causal)},
    "power(" .. kv(a, {"block"}) .. ")")
end)

--- TriangleMix's triangle (card triangle_mix): sinks j < n_init, window
--- i - j < n_local, and the last n_last query positions see every key.
M.triangle = ctor("triangle", nil, {"n_init", "n_local", "n_last", "causal"}, function(a)
  return leaf({kind = "triangle", a = int("triangle", "n_init", a.n_init, 0), b = int("triangle", "n_local", a.n_local, 0),
    c = int("triangle", "n_last", a.n_last, 0), causal = causal_flag("triangle", a.causal)},
    "triangle(" .. kv(a, {"n_init", "n_local", "n_last"}) .. ")")
end)

--- Generalized Neighborhood Attention (card neighborhood_attention): tokens
--- on a grid (frames × height × width, row-major; default 1-D over all
--- keys), kernel, stride, dilation and is_causal per dimension (a number or
--- boolean applies to every dimension).
M.neighborhood = ctor("neighborhood", nil, {"grid", "kernel", "stride", "dilation", "is_causal", "causal"}, function(a)
  local grid = a.grid
  if grid == nil then grid = {0} elseif type(grid) == "number" then grid = {grid} end
  if type(grid) ~= "table" or #grid < 1 or #grid > 3 then fail("neighborhood", "grid must have 1 to 3 dimensions") end
  local nd = #grid
  local g = {}
  for d = 1, nd do g[d] = int("neighborhood", "grid[" .. d .. "]", grid[d], a.grid == nil and 0 or 1) end
  local ic = a.is_causal
  local dc = {}
  for d = 1, nd do
    local v = ic
    if type(ic) == "table" then
      if #ic ~= nd then fail("neighborhood", string.format("is_causal has %d entries, the grid %d dimensions", #ic, nd)) end
      v = ic[d]
    end
    if v ~= nil and type(v) ~= "boolean" then fail("neighborhood", "is_causal must be booleans") end
    dc[d] = v and 1 or 0
  end
  if a.kernel == nil then fail("neighborhood", "kernel is required") end
  return leaf({kind = "neighborhood", n_dims = nd, grid = g, kernel = dims("neighborhood", "kernel", a.kernel, nd, 1),
    stride = dims("neighborhood", "stride", a.stride, nd, 1, 1),
    dilation = dims("neighborhood", "dilation", a.dilation, nd, 1, 1), dim_causal = dc,
    causal = causal_flag("neighborhood", a.causal)},
    "neighborhood(" .. kv(a, {"grid", "kernel", "stride", "dilation", "is_causal"}) .. ")")
end)

--- Document mask (card blindsight): segments are the start positions of
--- segments (strictly increasing); positions before the first start form
--- segment 0; prev earlier segments are also visible (videoxl2 chunks).
M.document = ctor("document", nil, {"segments", "prev", "causal"}, function(a)
  local idx, ptr, heads = list("document", "segments", a.segments)
  return leaf({kind = "document", idx = idx, idx_ptr = ptr, b = int("document", "prev", a.prev, 0, 0),
    causal = causal_flag("document", a.causal)}, "document(" .. kv(a, {"segments", "prev"}) .. ")", heads)
end)

--- The first k tokens of every segment (segment starts as for document).
M.segment_sink = ctor("segment_sink", nil, {"segments", "k", "causal"}, function(a)
  local idx, ptr, heads = list("segment_sink", "segments", a.segments)
  return leaf({kind = "segment_sink", idx = idx, idx_ptr = ptr, a = int("segment_sink", "k", a.k, 0),
    causal = causal_flag("segment_sink", a.causal)}, "segment_sink(" .. kv(a, {"segments", "k"}) .. ")", heads)
end)

--- Global tokens: their rows and their columns are on.
M.global_tokens = ctor("global_tokens", nil, {"tokens", "causal"}, function(a)
  local idx, ptr, heads = list("global_tokens", "tokens", a.tokens)
  return leaf({kind = "global_tokens", idx = idx, idx_ptr = ptr, causal = causal_flag("global_tokens", a.causal)},
    "global_tokens(" .. kv(a, {"tokens"}) .. ")", heads)
end)

local function rows_or_cols(fname, key)
  return ctor(fname, nil, {key, "first", "last", "causal"}, function(a)
    local idx, ptr, heads = {}, nil, nil
    if a[key] ~= nil then idx, ptr, heads = list(fname, key, a[key]) end
    if a[key] == nil and a.first == nil and a.last == nil then fail(fname, "give " .. key .. ", first or last") end
    return leaf({kind = fname, idx = idx, idx_ptr = ptr, a = int(fname, "last", a.last, 0, 0),
      b = int(fname, "first", a.first, 0, 0), causal = causal_flag(fname, a.causal)},
      fname .. "(" .. kv(a, {key, "first", "last"}) .. ")", heads)
  end)
end

--- Dense rows: the listed query positions, the first `first` and the last
--- `last` positions see every key (TriangleMix's last rows, question rows).
M.dense_rows = rows_or_cols("dense_rows", "rows")
--- Dense columns: the listed key positions (and first / last ones) are seen
--- by every query (Video-XL-2's prefix).
M.dense_cols = rows_or_cols("dense_cols", "cols")

--- Vertical lines (card vertical_slash): key columns, usually one list per head.
M.vertical = ctor("vertical", nil, {"cols", "causal"}, function(a)
  local idx, ptr, heads = list("vertical", "cols", a.cols)
  return leaf({kind = "vertical", idx = idx, idx_ptr = ptr, causal = causal_flag("vertical", a.causal)},
    "vertical(" .. kv(a, {"cols"}) .. ")", heads)
end)

--- Slash lines (card vertical_slash): diagonals o <= i - j < o + width.
M.slash = ctor("slash", nil, {"offsets", "width", "causal"}, function(a)
  local idx, ptr, heads = list("slash", "offsets", a.offsets)
  return leaf({kind = "slash", idx = idx, idx_ptr = ptr, a = int("slash", "width", a.width, 1, 1),
    causal = causal_flag("slash", a.causal)}, "slash(" .. kv(a, {"offsets", "width"}) .. ")", heads)
end)

--- Random key / query dropping (card sparse_flash_attention): each key is
--- dropped with probability rate and each query with q_rate, drawn per head
--- from seed (shared = true: one draw for every head).
M.drop = ctor("drop", nil, {"rate", "q_rate", "seed", "shared", "causal"}, function(a)
  local function prob(key, v)
    if v == nil then return 0 end
    if type(v) ~= "number" or v < 0 or v > 1 then fail("drop", key .. " must be a number in [0, 1]") end
    return v
  end
  local rate, q_rate = prob("rate", a.rate), prob("q_rate", a.q_rate)
  return leaf({kind = "drop", rate = rate, q_rate = q_rate, seed = int("drop", "seed", a.seed, nil, 0),
    a = a.shared and 1 or 0, causal = causal_flag("drop", a.causal)},
    -- Heads 0: a draw per head, for however many heads it is materialised.
    "drop(" .. kv(a, {"rate", "q_rate", "seed", "shared"}) .. ")", (not a.shared) and 0 or nil)
end)

-- ---- composition -------------------------------------------------------------------

local function heads_of(a, b)
  if a and b and a ~= b and a ~= 0 and b ~= 0 then
    error(string.format("mask patterns: %d and %d per-head lists do not fit together", a, b), 3)
  end
  if a == 0 or a == nil then return b end
  return a
end

local function node(op, a, b)
  return setmetatable({op = op, a = a, b = b, label = "(" .. a.label .. ") " .. op .. " (" .. b.label .. ")",
    heads = heads_of(a.heads, b.heads)}, Pattern)
end

--- Applies the mask operator op to a pattern and a mask (either order):
--- the pattern is materialised at the mask's sizes.
local function mixed(op, a, b)
  if is_pattern(a) then a = a:materialize_like(b) end
  if is_pattern(b) then b = b:materialize_like(a) end
  if op == "+" then return a + b elseif op == "*" then return a * b end
  return a - b
end

function Pattern.__add(a, b)
  if is_pattern(a) and is_pattern(b) then
    if a.terms and b.terms then
      local terms = {}
      for _, t in ipairs(a.terms) do terms[#terms + 1] = t end
      for _, t in ipairs(b.terms) do terms[#terms + 1] = t end
      return setmetatable({terms = terms, label = a.label .. " + " .. b.label, heads = heads_of(a.heads, b.heads)},
        Pattern)
    end
    return node("+", a, b)
  end
  return mixed("+", a, b)
end

function Pattern.__mul(a, b)
  if is_pattern(a) and is_pattern(b) then return node("*", a, b) end
  return mixed("*", a, b)
end

function Pattern.__sub(a, b)
  if is_pattern(a) and is_pattern(b) then return node("-", a, b) end
  return mixed("-", a, b)
end

--- Per-head assignment: head h of the result is items[h] (a pattern or a
--- mask; a multi-head item gives several heads). All patterns: a lazy
--- pattern; with a mask among them, a mask (patterns materialised like it).
function M.assign(items)
  if type(items) ~= "table" or #items == 0 then error("sl.mask.assign: expected a list of masks or patterns", 2) end
  for k in pairs(items) do
    if math.type(k) ~= "integer" or k < 1 or k > #items then
      error("sl.mask.assign: unknown key '" .. tostring(k) .. "' (expected a list of masks or patterns)", 2)
    end
  end
  local first_mask
  for i, x in ipairs(items) do
    if is_mask(x) then first_mask = first_mask or x
    elseif not is_pattern(x) then error(string.format("sl.mask.assign: entry %d is neither a mask nor a pattern", i), 2) end
  end
  if not first_mask then
    local labels, total = {}, 0
    for i, x in ipairs(items) do
      labels[i] = x.label
      total = total + ((x.heads and x.heads > 0) and x.heads or 1)
    end
    return setmetatable({op = "assign", items = items, label = "assign{" .. table.concat(labels, ", ") .. "}",
      heads = total}, Pattern)
  end
  local ms = {}
  for i, x in ipairs(items) do
    ms[i] = is_pattern(x) and x:materialize_like(first_mask, 1) or x
  end
  return sl.mask_c.assign(ms)
end

--- A method's semantic mask beside the mask its kernel executes:
--- {density_semantic, density_executed, recall (of semantic pairs kept),
--- extra (density executed but not asked for), kept_*}. opts.causal
--- (default true) picks the density denominator.
function M.align(semantic, executed, opts)
  if opts ~= nil then
    if type(opts) ~= "table" then error("sl.mask.align: options must be a table {causal=}", 2) end
    for k in pairs(opts) do
      if k ~= "causal" then error("sl.mask.align: unknown key '" .. tostring(k) .. "' (expected one of: causal)", 2) end
    end
  end
  if is_pattern(semantic) and is_pattern(executed) then
    error("sl.mask.align: materialise one of the two first (two patterns have no size)", 2)
  end
  if is_pattern(semantic) then semantic = semantic:materialize_like(executed) end
  if is_pattern(executed) then executed = executed:materialize_like(semantic) end
  local causal = true
  if opts and opts.causal ~= nil then causal = opts.causal end
  return sl.mask_c.align(semantic, executed, causal)
end

--- A block mask from dense bits (u8 tensor [H, n_q, n_k] or [n_q, n_k]).
--- A method's executed mask as one block mask: a block mask as it is; a
--- composite mask (e.g. the vertical-slash block part + gathered columns)
--- through its exact materialize(); nil for anything else.
function M.as_block(mask)
  if mask == nil then return nil end
  if is_mask(mask) then return mask end
  local ok, m = pcall(function() return mask:materialize() end)
  if ok and is_mask(m) then return m end
  return nil
end

function M.from_bits(bits, bq, bk) return sl.mask_c.from_bits(bits, bq or 64, bk or 64) end

--- A block mask (with token bits) from index lists (what m:to_index returns).
function M.from_index(idx, bq, bk) return sl.mask_c.from_index(idx, bq or 64, bk or 64) end

-- Masks from selections (select.* outputs; see sparselab.h for the rules).
-- sl.mask.from_blocks(keep_u8 [H, n_qb, n_kb], {n_q=, n_k=, bq=64, bk=64, causal=true}) -> block mask
-- (or i32 lists [H, n_qb, L]: each query block's kept key blocks ascending, -1 padded)
function M.from_blocks(keep, opts) return sl.mask_c.from_blocks(keep, opts or {}) end
-- sl.mask.block_lists(keep_u8 [H, R, C], L [, into, row]) -> i32 [H, R, L]: each row's kept columns ascending,
-- -1 padded (with into, an i32 [H, R', L]: written to its rows row .. row + R - 1, 1-based, and returned)
function M.block_lists(keep, len, into, row) return sl.mask_c.block_lists(keep, len, into, row) end
-- sl.mask.index_from_columns(cols_i32 [H, c], {n_q=, n_k=, rows_per_entry=64, causal=true, strict=false})
-- (strict: an entry lists only columns up to its FIRST row, so no row of it sees a future key)
-- -> index lists {row_ptr=, col=, rows_per_entry=, ...} for attn.token_sparse / attn.vs_mixed
function M.index_from_columns(cols, opts) return sl.mask_c.index_from_columns(cols, opts or {}) end
-- sl.mask.from_slashes(offsets_i32 [H, s], {n_q=, n_k=, bq=64, bk=64, widen=true}) -> block mask:
-- widen=true is what MInference executes (slash lines widened to tiles), widen=false the exact diagonals
function M.from_slashes(offsets, opts) return sl.mask_c.from_slashes(offsets, opts or {}) end
-- sl.mask.columns_in_block(cols_i32 [H, c] (-1 padded) or keep u8 [H, n], {n=, bq=64, bk=64}) -> block mask of
-- the pairs (i, j), j listed, in row i's own query block and j <= i (issue 20: was a Lua loop in dynamic.lua)
function M.columns_in_block(cols, opts) return sl.mask_c.columns_in_block(cols, opts or {}) end
-- sl.mask.index_overlap(m, idx) -> the (row, listed key) pairs of index lists idx (rows_per_entry = m's bq) that
-- block mask m keeps (issue 20: was a Lua loop in dynamic.lua)
function M.index_overlap(m, idx) return sl.mask_c.index_overlap(m, idx) end

-- ---- materialising ------------------------------------------------------------------

function Pattern.__tostring(p)
  return "pattern " .. p.label .. " (materialise with :materialize{n_q=, n_k=, bq=, bk=, n_heads=})"
end

local SIZE_KEYS = {n_q = true, n_k = true, bq = true, bk = true, n_heads = true}

--- Materialises at sizes: {n_q =, n_k = (default n_q), bq = 64, bk = 64,
--- n_heads = (default: the pattern's per-head lists, else 1)}.
function Pattern:materialize(o)
  if type(o) ~= "table" then error("materialize: expected a table {n_q=, n_k=, bq=, bk=, n_heads=}", 2) end
  for k in pairs(o) do
    if not SIZE_KEYS[k] then
      error("materialize: unknown key '" .. tostring(k) .. "' (expected n_q, n_k, bq, bk, n_heads)", 2)
    end
  end
  local n_q = o.n_q or o.n_k
  if not n_q then error("materialize: n_q or n_k is required", 2) end
  local size = {n_q = n_q, n_k = o.n_k or n_q, bq = o.bq or 64, bk = o.bk or 64, n_heads = o.n_heads}
  return self:_build(size)
end

function Pattern:_build(size)
  local heads = size.n_heads
  if heads == nil or heads == 1 then heads = (self.heads and self.heads > 0) and self.heads or heads or 1 end
  if self.terms then
    return sl.mask_c.pattern(self.terms, size.n_q, size.n_k, size.bq, size.bk, heads)
  end
  if self.op == "assign" then
    if size.n_heads and size.n_heads ~= 1 and size.n_heads ~= self.heads then
      error(string.format("materialize: an assign of %d heads asked for %d heads", self.heads, size.n_heads), 3)
    end
    local ms = {}
    for i, x in ipairs(self.items) do
      ms[i] = x:_build{n_q = size.n_q, n_k = size.n_k, bq = size.bq, bk = size.bk}
    end
    local m = sl.mask_c.assign(ms)
    for _, x in ipairs(ms) do x:close() end
    return m
  end
  local sub = {n_q = size.n_q, n_k = size.n_k, bq = size.bq, bk = size.bk, n_heads = heads}
  local a, b = self.a:_build(sub), self.b:_build(sub)
  local m
  if self.op == "+" then m = a + b elseif self.op == "*" then m = a * b else m = a - b end
  a:close()
  b:close()
  return m
end

--- Materialises at the sizes of a mask (its heads too, unless n_heads is given).
function Pattern:materialize_like(mask, n_heads)
  local i = mask:info()
  local h = n_heads or i.n_heads
  if self.heads and self.heads > 0 and h == 1 then h = self.heads end
  return self:_build{n_q = i.n_q, n_k = i.n_k, bq = i.bq, bk = i.bk, n_heads = h}
end

--- Density of the pattern at a size (kept pairs / causal pairs).
function Pattern:density(o)
  local m <close> = self:materialize(o)
  return m:density(true)
end

M.Pattern = Pattern
--- sl.mask.save(mask, "m.safetensors" [, {bits = false}]): the block mask in FlexAttention's
--- BlockMask layout (kv_num_blocks, kv_indices, full_kv_*) plus the dense bits
--- (sparselab/mask_export.lua; issue 18).
function M.save(mask, path, opts) return require("sparselab.mask_export").save(mask, path, opts) end

M.is_pattern = is_pattern
M.is_mask = is_mask

return M
