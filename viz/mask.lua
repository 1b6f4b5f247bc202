-- viz.mask — a block mask as a PNG picture (libpng through sl.png_c): query blocks down,
-- key blocks across, one panel per head (heads left to right, wrapped into rows of `cols`
-- heads), and with `executed` a second panel beside each (semantic | executed).
--
--   viz.mask(mask, "m.png", {mass =, executed =, scale =, cols =})
--     mask      a block mask (or anything sl.mask.as_block turns into one: a pattern is
--               materialised by the caller, a method's mask object by its materialize())
--     mass      optional f32 tensor [H, n_qb, n_kb]: attention mass per block, as
--               sl.score.exact(q, k, {bq =, bk =}) returns it (each row's probabilities summed
--               over the block: a query block's entries sum to its number of rows)
--     executed  optional second mask of the same size and blocks (the mask the kernel ran)
--     scale     pixels per block (default: the largest that keeps a panel within 320 pixels)
--     cols      heads per picture row (default 4)
--   → {width, height, heads, panels}
--
-- Colours: a kept block is blue, from light (no mass) to dark (the whole query block's mass);
-- a block that is not kept is white, shading to orange by the mass it loses; a partial block
-- (token bits) mixes the two by its share of kept pairs (of the block's causal pairs) (at least a quarter blue); without
-- mass the blue's depth is the share of kept pairs; blocks wholly after the causal
-- diagonal are light grey. Panels are separated by 2 grey pixels. Mass is the block's share
-- of its query block's mass (sqrt-scaled, so small shares stay visible).
local sl = require "sparselab"

local M = {}

local function fail(fmt, ...) sl.fail("viz.mask: " .. fmt, ...) end

-- Elements of a 1-D tensor as a Lua list, read in slices (totable's limit).
local function read_all(t)
  local n, out = t:shape()[1], {}
  if n == 0 then return out end
  local step = 500000
  for s = 1, n, step do
    local part = t:narrow(1, s, math.min(step, n - s + 1)):totable()
    for i = 1, #part do out[#out + 1] = part[i] end
  end
  return out
end

--- The block grid of a mask: {info, heads = {[h] = {[r] = {[c] = kept fraction}}}}
--- (h, r, c 1-based; a missing entry is not kept).
function M.grid(mask)
  local m = sl.mask.as_block(mask)
  if not m then fail("expected a block mask (or a mask object with :materialize()), found %s", tostring(mask)) end
  local info = m:info()
  local row_ptr, col_idx, part, bits = m:arrays()
  local rp = row_ptr:totable()
  if type(rp[1]) == "number" then rp = {rp} end
  local ci, pa = read_all(col_idx), read_all(part)
  -- kept pairs of each partial block (bits [n_part, bq, bk])
  local ones = {}
  if info.n_part > 0 then
    if info.n_part * info.bq * info.bk <= 8e6 then
      local per = math.max(1, 400000 // (info.bq * info.bk))
      for s = 1, info.n_part, per do
        local len = math.min(per, info.n_part - s + 1)
        local t = bits:narrow(1, s, len):totable()
        for i = 1, len do
          local n = 0
          for _, row in ipairs(t[i]) do for _, b in ipairs(row) do n = n + b end end
          ones[s + i - 2] = n -- part index, 0-based
        end
      end
    end
  end
  local heads = {}
  for h = 1, info.n_heads do
    local t, g = rp[h], {}
    for r = 1, info.n_qb do
      local rows = math.min(info.bq, info.n_q - (r - 1) * info.bq)
      local row = {}
      for e = t[r] + 1, t[r + 1] do
        local c = ci[e]
        local width = math.min(info.bk, info.n_k - c * info.bk)
        local p = pa[e]
        local frac = 0.5
        if p < 0 then
          frac = 1
        elseif ones[p] then
          -- share of the block's causal pairs (row r0 + i sits at position n_k - n_q + r0 + i)
          local causal = 0
          for i = 0, rows - 1 do
            local pos = info.n_k - info.n_q + (r - 1) * info.bq + i
            causal = causal + math.max(0, math.min(width, pos - c * info.bk + 1))
          end
          frac = ones[p] / ((ones[p] <= causal and causal > 0) and causal or rows * width)
        end
        row[c + 1] = frac
      end
      g[r] = row
    end
    heads[h] = g
  end
  for _, t in ipairs{row_ptr, col_idx, part, bits} do t:close() end
  if m ~= mask then m:close() end
  return {info = info, heads = heads}
end

local function clamp(x) return x < 0 and 0 or (x > 255 and 255 or math.floor(x + 0.5)) end

local function mix(a, b, t) -- colours {r, g, b}, t in [0, 1]
  return {a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t, a[3] + (b[3] - a[3]) * t}
end

local WHITE, GREY, SEP = {255, 255, 255}, {232, 232, 232}, {150, 150, 150}
local KEPT_LO, KEPT_HI = {198, 219, 239}, {8, 48, 107}
local LOST_HI = {230, 85, 13}

--- Draws the picture; see the header.
function M.draw(mask, path, opts)
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "mass" and k ~= "executed" and k ~= "scale" and k ~= "cols" then
      fail("unknown option '%s' (expected mass, executed, scale, cols)", tostring(k))
    end
  end
  if type(path) ~= "string" or not path:lower():match("%.png$") then
    fail("expected a file name ending in .png, found %s", tostring(path))
  end
  local sem = M.grid(mask)
  local info = sem.info
  local exe = opts.executed and M.grid(opts.executed)
  if exe and (exe.info.n_qb ~= info.n_qb or exe.info.n_kb ~= info.n_kb) then
    fail("executed mask has %d x %d blocks, the mask %d x %d: give both in the same blocks",
      exe.info.n_qb, exe.info.n_kb, info.n_qb, info.n_kb)
  end
  local mass
  if opts.mass then
    local s = opts.mass:shape()
    if #s ~= 3 or s[2] ~= info.n_qb or s[3] ~= info.n_kb then
      fail("mass must be [H, %d, %d] (the mask's query x key blocks), found [%s]", info.n_qb, info.n_kb,
        table.concat(s, ", "))
    end
    mass = opts.mass:totable()
  end
  local H = math.max(info.n_heads, exe and exe.info.n_heads or 1, mass and #mass or 1)
  local function head_of(n, h) return math.min(n, (h - 1) // (H // n) + 1) end
  for _, n in ipairs{info.n_heads, exe and exe.info.n_heads or 1, mass and #mass or 1} do
    if H % n ~= 0 then fail("head counts do not divide each other (mask %d, executed %s, mass %s)", info.n_heads,
      exe and exe.info.n_heads or "-", mass and #mass or "-") end
  end
  local nq, nk = info.n_qb, info.n_kb
  local scale = opts.scale or math.max(1, math.min(16, 320 // math.max(nq, nk)))
  local per = exe and 2 or 1
  local cols = math.min(opts.cols or 4, H)
  local prow = (H + cols - 1) // cols
  local pw, ph = nk * scale, nq * scale
  local width = cols * per * pw + (cols * per + 1) * 2
  local height = prow * ph + (prow + 1) * 2
  if width > 65535 or height > 65535 then fail("picture of %d x %d pixels is too large: give a smaller scale", width, height) end
  -- the colour of each block of one panel, as 3-byte strings
  local function cell(g, h, r, c)
    local keptf = g[head_of(#g, h)][r][c]
    local share
    if mass then
      local rows = math.min(info.bq, info.n_q - (r - 1) * info.bq)
      share = math.max(0, math.min(1, mass[head_of(#mass, h)][r][c] / rows))
      share = math.sqrt(share)
    end
    -- row r sits at position n_k - n_q + row: a block wholly after the diagonal is future
    local last_row = info.n_k - info.n_q + math.min(r * info.bq, info.n_q) - 1
    local future = (c - 1) * info.bk > last_row
    local col
    if keptf and share then
      -- a partial block mixes the kept colour with the lost one by its share of kept pairs
      local kept = mix(KEPT_LO, KEPT_HI, 0.15 + 0.85 * share)
      col = mix(mix(WHITE, LOST_HI, share), kept, math.max(0.25, keptf))
    elseif keptf then
      col = mix(KEPT_LO, KEPT_HI, 0.15 + 0.85 * keptf)
    elseif future then
      col = GREY
    else
      col = mix(WHITE, LOST_HI, share or 0)
    end
    return string.char(clamp(col[1]), clamp(col[2]), clamp(col[3]))
  end
  local sep = string.char(SEP[1], SEP[2], SEP[3])
  local sep2 = sep:rep(2)
  local full_sep = sep:rep(width)
  local lines = {}
  local function add(s) lines[#lines + 1] = s end
  for pr = 1, prow do
    add(full_sep); add(full_sep)
    -- every panel's rows of blocks, each row of blocks as one pixel row string
    local rowstrs = {}
    for pc = 1, cols do
      local h = (pr - 1) * cols + pc
      for k = 1, per do
        local g = (k == 1) and sem.heads or exe.heads
        local rs = {}
        for r = 1, nq do
          local parts = {}
          for c = 1, nk do
            parts[c] = h <= H and cell(g, h, r, c):rep(scale) or string.rep("\255\255\255", scale)
          end
          rs[r] = table.concat(parts)
        end
        rowstrs[#rowstrs + 1] = rs
      end
    end
    for r = 1, nq do
      local parts = {sep2}
      for p = 1, #rowstrs do parts[#parts + 1] = rowstrs[p][r]; parts[#parts + 1] = sep2 end
      local line = table.concat(parts)
      for _ = 1, scale do add(line) end
    end
  end
  add(full_sep); add(full_sep)
  sl.png_c.write(path, width, height, table.concat(lines))
  return {width = width, height = height, heads = H, panels = H * per}
end

return M
