-- static_ref.lua — the independent float64 reference the static-pattern method
-- tests share (test_methods_static.lua in-process, test_methods_eval.lua
-- through the CLI): each card's mask written from its own definition as a
-- predicate keep(h, i, j) (0-based query head, query and key positions; no
-- mask code under test), softmax attention over the kept keys with plain
-- loops, relative L2 and the brute-force kept-pair density.
-- A problem table t holds q, k, v as nested Lua tables (tensor:totable()),
-- n (tokens, n_q = n_k), d, hq and hkv.
local R = {}

-- o [hq][n][d] and lse [hq][n] of softmax attention over the kept keys, in
-- float64; a row that keeps nothing gets o = 0, lse = -inf.
function R.reference(t, keep)
  local o, lse = {}, {}
  local group = t.hq // t.hkv
  local scale = 1 / math.sqrt(t.d)
  for h = 0, t.hq - 1 do
    local g = h // group
    local Q, K, V = t.q[h + 1], t.k[g + 1], t.v[g + 1]
    o[h + 1], lse[h + 1] = {}, {}
    for i = 0, t.n - 1 do
      local s, mx = {}, -math.huge
      for j = 0, t.n - 1 do
        if keep(h, i, j) then
          local dot = 0
          for c = 1, t.d do dot = dot + Q[i + 1][c] * K[j + 1][c] end
          s[j] = dot * scale
          if s[j] > mx then mx = s[j] end
        end
      end
      local z, acc = 0, {}
      for c = 1, t.d do acc[c] = 0 end
      for j, x in pairs(s) do
        local w = math.exp(x - mx)
        z = z + w
        for c = 1, t.d do acc[c] = acc[c] + w * V[j + 1][c] end
      end
      for c = 1, t.d do acc[c] = z > 0 and acc[c] / z or 0 end
      o[h + 1][i + 1] = acc
      lse[h + 1][i + 1] = z > 0 and mx + math.log(z) or -math.huge
    end
  end
  return o, lse
end

function R.flat(x, out)
  out = out or {}
  if type(x) == "table" then for _, y in ipairs(x) do R.flat(y, out) end else out[#out + 1] = x end
  return out
end

-- ||got - want|| / ||want|| over all elements (nested tables of numbers).
function R.rel_l2(got, want)
  local a, b = R.flat(got), R.flat(want)
  assert(#a == #b, string.format("sizes differ: %d vs %d", #a, #b))
  local num, den = 0, 0
  for i = 1, #a do
    local x, y = a[i], b[i]
    if x ~= y then num = num + (x - y) ^ 2 end  -- equal infinities (-inf lse) add nothing
    if y > -math.huge and y < math.huge then den = den + y ^ 2 end
  end
  return math.sqrt(num / den)
end

-- Kept pairs over all pairs (causal: over the causal pairs), every query head.
function R.brute_density(t, keep, causal)
  local kept, total = 0, 0
  for h = 0, t.hq - 1 do
    for i = 0, t.n - 1 do
      for j = 0, t.n - 1 do
        if keep(h, i, j) then kept = kept + 1 end
        if not causal or j <= i then total = total + 1 end
      end
    end
  end
  return kept / total
end

local function pow2(d) return d > 0 and d & (d - 1) == 0 end
R.pow2 = pow2

-- ---- the cards' masks -------------------------------------------------------

-- sliding_window: 0 <= i - j < w.
function R.window_keep(w)
  return function(_, i, j) return j <= i and i - j < w end
end

-- streaming_llm: j <= i and (i - j < n_local or j < n_init).
function R.streaming_keep(n_init, n_local)
  return function(_, i, j) return j <= i and (i - j < n_local or j < n_init) end
end

-- s2_attention: per KV head g, local blocks plus vertical stripes offset by g·step;
-- the last num_dense_heads KV heads dense.
function R.s2_keep(p, hq, hkv)
  local step = p.head_step or math.max(1, p.vert_stride // hkv)
  return function(h, i, j)
    if j > i then return false end
    local g = h // (hq // hkv)
    if g >= hkv - (p.num_dense_heads or 0) then return true end
    local r, c = i // p.block, j // p.block
    return r - c < p.local_blocks or (c + g * step + (p.offset or 0)) % p.vert_stride == 0
  end
end

-- power_attention: block distance 0 or a power of two, within the window, or a sink block.
function R.power_keep(P)
  return function(_, i, j)
    if j > i then return false end
    local d = i // P.block - j // P.block
    return d == 0 or pow2(d) or d < P.window or j // P.block < P.sink
  end
end

-- triangle_mix: A-shape (n_init sinks, n_local window) plus the last n_last rows dense.
function R.triangle_keep(p, n)
  local last = math.min(p.n_last, n - 1)
  return function(_, i, j)
    return j <= i and (j < p.n_init or i - j < p.n_local or i >= n - last)
  end
end

-- blindsight: per head category over image segments (images = {{start, stop}, ...}).
function R.blindsight_keep(images, n, k, cats)
  local img, bounds = {}, {[0] = true}
  for m, r in ipairs(images) do
    for p = r[1], r[2] - 1 do img[p] = m end
    bounds[r[1]] = true
    if r[2] < n then bounds[r[2]] = true end
  end
  local segstart, s = {}, 0
  for p = 0, n - 1 do
    if bounds[p] then s = p end
    segstart[p] = s
  end
  return function(h, i, j)
    if j > i then return false end
    local cat = cats[h + 1]
    if cat == "dense" or not img[i] then return true end
    if img[j] == img[i] then return true end
    if cat == "sink" then return j < k end
    if cat == "intra_sink" then return j - segstart[j] < k end
    return false
  end
end

-- NATTEN's 1-D rule from the card's text.
local function na1d(x, y, X, k, s, dil, causal)
  if x % dil ~= y % dil then return false end
  local xp, yp = x // dil, y // dil
  local Xp = (X - x % dil + dil - 1) // dil
  local gs = (xp // s) * s
  if causal then
    local leader = math.min(gs + s - 1, Xp - 1)
    return yp <= xp and leader - yp < k
  end
  local leader = math.min(gs + s // 2, Xp - 1)
  local left = k // 2
  local right = k // 2 + k % 2 - 1
  local c = math.min(math.max(leader, left), Xp - 1 - right)
  return c - left <= yp and yp <= c + right
end

-- neighborhood_attention on a row-major token grid: the 1-D rule in every dimension.
function R.na_keep(grid, k, s, dil, causal)
  return function(_, i, j)
    local xi, xj = {}, {}
    local a, b = i, j
    for d = #grid, 1, -1 do xi[d] = a % grid[d]; a = a // grid[d]; xj[d] = b % grid[d]; b = b // grid[d] end
    for d = 1, #grid do
      if not na1d(xi[d], xj[d], grid[d], k, s, dil, causal) then return false end
    end
    return true
  end
end

-- videoxl2_chunk_prefill: prefix/suffix/timestamps dense, visual chunks see
-- their own and prev_blocks_num earlier chunks.
function R.vxl_keep(n, p)
  local pre = math.min(p.prefix_len, n)
  local suf = math.max(pre, n - p.suffix_len)
  local group = p.ts_len + p.group_tokens
  local function visual(x) return x >= pre and x < suf end
  local function ts(x) return visual(x) and (x - pre) % group < p.ts_len end
  local function chunk(x) return ((x - pre) // group) // p.block_size end
  return function(_, i, j)
    if j > i then return false end
    if i >= suf or j < pre or ts(i) or ts(j) then return true end
    if visual(i) and visual(j) then
      local dc = chunk(i) - chunk(j)
      return dc >= 0 and dc <= p.prev_blocks_num
    end
    return false
  end
end

-- lserve (static part): the first n_stream KV heads stream (sinks + window), the rest dense causal.
function R.lserve_keep(n_stream, sink, window, group)
  return function(h, i, j)
    if j > i then return false end
    if h // group < n_stream then return j < sink or i - j < window end
    return true
  end
end

return R
