-- sparselab.layout — token layouts of video diffusion transformers (issue 15).
--
-- layout.video{frames =, height =, width =, text = 0, text_first = false}
-- names where each of n = frames·height·width + text tokens sits: video
-- token t (0-based, frame-major) is (f, y, x) with t = f·H·W + y·W + x; the
-- text tokens come after the video tokens (text_first: before them). A
-- problem carries it as prob.layout (sl.problem checks that its n matches).
--
-- Orders: a layout builds permutations of its tokens (0-based lists, new
-- position p holds old token order[p]) that keep the text tokens where they
-- are and reorder the video tokens:
--   "fyx" (frame-major, the identity), "yxf" (token-major: a position's
--   tokens over all frames are consecutive, what temporal heads want), and
--   any other order of the three axis letters (outermost first);
--   "tiles" (opts tf, th, tw): regions of tf×th×tw tokens, tile-major, each
--   tile frame-major inside (ragged edge tiles);
--   "gilbert": the generalized Hilbert ("Gilbert") curve over the F×H×W box
--   (any sizes; written here from the curve's definition: split the longest
--   axis, recurse with the sub-boxes' axes rotated so each piece ends next to
--   where the next one starts).
-- layout.permute(x, perm) and layout.unpermute(y, perm) apply an i32 [P, n]
-- order tensor (layout:perm_tensor) with the perm.apply op on x's backend
-- path (ref / cpu / cuda through sl.perm.apply); unpermute(permute(x)) is x
-- bit for bit. A list that is not a bijection is refused by the op.
local sl = require "sparselab"

local L = {}

local Layout = {}
Layout.__index = Layout

local function posint(v, what, zero_ok)
  local i = math.tointeger(v)
  if not i or i < (zero_ok and 0 or 1) then
    sl.fail("layout.video: %s must be a %s integer, found %s", what, zero_ok and "non-negative" or "positive",
      tostring(v))
  end
  return i
end

--- A video layout: {frames, height, width, text = 0, text_first = false}.
function L.video(t)
  if type(t) ~= "table" then sl.fail("layout.video: expected a table {frames=, height=, width=, text=}") end
  for key in pairs(t) do
    if key ~= "frames" and key ~= "height" and key ~= "width" and key ~= "text" and key ~= "text_first" then
      sl.fail("layout.video: unknown key '%s' (expected frames, height, width, text, text_first)", tostring(key))
    end
  end
  local lay = setmetatable({kind = "video", frames = posint(t.frames, "frames"), height = posint(t.height, "height"),
    width = posint(t.width, "width"), text = posint(t.text or 0, "text", true), text_first = t.text_first == true},
    Layout)
  lay.n_video = lay.frames * lay.height * lay.width
  lay.n = lay.n_video + lay.text
  lay.video0 = lay.text_first and lay.text or 0
  return lay
end

--- Parses "video,frames=F,height=H,width=W,text=T" (the --layout flag).
function L.parse(spec)
  local name, rest = tostring(spec):match("^([%w_]+),?(.*)$")
  if name ~= "video" then sl.fail("unknown layout '%s' (expected video,frames=F,height=H,width=W[,text=T])", spec) end
  local t = {}
  for kv in rest:gmatch("[^,]+") do
    local k, v = kv:match("^([%w_]+)=(.+)$")
    if not k then sl.fail("layout option '%s' is not KEY=VALUE", kv) end
    if k == "text_first" then t[k] = v == "1" or v == "true" else t[k] = tonumber(v) end
  end
  return L.video(t)
end

function L.is_layout(x) return getmetatable(x) == Layout end

function Layout:describe()
  return string.format("video %d frames x %d x %d + %d text = %d tokens", self.frames, self.height, self.width,
    self.text, self.n)
end

--- One-line error unless the layout orders exactly n tokens.
function Layout:check(n, what)
  if n ~= self.n then
    sl.fail("%s: layout %s, but the problem has %d tokens%s", what or "layout", self:describe(), n,
      (self.text > 0 and n > self.text) and string.format(" (%d after the %d text tokens)", n - self.text, self.text) or "")
  end
  return self
end

--- (f, y, x) of 0-based token t, or nil for a text token.
function Layout:coord(t)
  local v = t - self.video0
  if v < 0 or v >= self.n_video then return nil end
  local hw = self.height * self.width
  return v // hw, (v % hw) // self.width, v % self.width
end

--- 0-based token of (f, y, x).
function Layout:index(f, y, x)
  return self.video0 + (f * self.height + y) * self.width + x
end

--- Is 0-based token t a text token?
function Layout:is_text(t)
  local v = t - self.video0
  return v < 0 or v >= self.n_video
end

-- The 3-D Gilbert curve: calls emit(x, y, z) for every point of the box
-- spanned from (x, y, z) by the vectors a (major), b and c, in curve order.
local function sgn(v) return v > 0 and 1 or (v < 0 and -1 or 0) end

local function gilbert(x, y, z, ax, ay, az, bx, by, bz, cx, cy, cz, emit)
  local w, h, d = math.abs(ax + ay + az), math.abs(bx + by + bz), math.abs(cx + cy + cz)
  local dax, day, daz = sgn(ax), sgn(ay), sgn(az)
  local dbx, dby, dbz = sgn(bx), sgn(by), sgn(bz)
  local dcx, dcy, dcz = sgn(cx), sgn(cy), sgn(cz)
  if h == 1 and d == 1 then
    for _ = 1, w do emit(x, y, z); x, y, z = x + dax, y + day, z + daz end
    return
  elseif w == 1 and d == 1 then
    for _ = 1, h do emit(x, y, z); x, y, z = x + dbx, y + dby, z + dbz end
    return
  elseif w == 1 and h == 1 then
    for _ = 1, d do emit(x, y, z); x, y, z = x + dcx, y + dcy, z + dcz end
    return
  end
  -- halves, rounded so that each piece's length along its major axis stays even where possible
  local ax2, ay2, az2 = ax // 2, ay // 2, az // 2
  local bx2, by2, bz2 = bx // 2, by // 2, bz // 2
  local cx2, cy2, cz2 = cx // 2, cy // 2, cz // 2
  -- (floor division, as in the curve's definition)
  local w2, h2, d2 = math.abs(ax2 + ay2 + az2), math.abs(bx2 + by2 + bz2), math.abs(cx2 + cy2 + cz2)
  if w2 % 2 == 1 and w > 2 then ax2, ay2, az2 = ax2 + dax, ay2 + day, az2 + daz end
  if h2 % 2 == 1 and h > 2 then bx2, by2, bz2 = bx2 + dbx, by2 + dby, bz2 + dbz end
  if d2 % 2 == 1 and d > 2 then cx2, cy2, cz2 = cx2 + dcx, cy2 + dcy, cz2 + dcz end
  if 2 * w > 3 * h and 2 * w > 3 * d then
    -- long along a: two halves along a
    gilbert(x, y, z, ax2, ay2, az2, bx, by, bz, cx, cy, cz, emit)
    gilbert(x + ax2, y + ay2, z + az2, ax - ax2, ay - ay2, az - az2, bx, by, bz, cx, cy, cz, emit)
  elseif 3 * h > 4 * d then
    -- c too short to split: three pieces in the a-b plane
    gilbert(x, y, z, bx2, by2, bz2, cx, cy, cz, ax2, ay2, az2, emit)
    gilbert(x + bx2, y + by2, z + bz2, ax, ay, az, bx - bx2, by - by2, bz - bz2, cx, cy, cz, emit)
    gilbert(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), z + (az - daz) + (bz2 - dbz),
      -bx2, -by2, -bz2, cx, cy, cz, -(ax - ax2), -(ay - ay2), -(az - az2), emit)
  elseif 3 * d > 4 * h then
    -- b too short to split: three pieces in the a-c plane
    gilbert(x, y, z, cx2, cy2, cz2, ax2, ay2, az2, bx, by, bz, emit)
    gilbert(x + cx2, y + cy2, z + cz2, ax, ay, az, bx, by, bz, cx - cx2, cy - cy2, cz - cz2, emit)
    gilbert(x + (ax - dax) + (cx2 - dcx), y + (ay - day) + (cy2 - dcy), z + (az - daz) + (cz2 - dcz),
      -cx2, -cy2, -cz2, -(ax - ax2), -(ay - ay2), -(az - az2), bx, by, bz, emit)
  else
    -- all three split: five pieces
    gilbert(x, y, z, bx2, by2, bz2, cx2, cy2, cz2, ax2, ay2, az2, emit)
    gilbert(x + bx2, y + by2, z + bz2, cx, cy, cz, ax2, ay2, az2, bx - bx2, by - by2, bz - bz2, emit)
    gilbert(x + (bx2 - dbx) + (cx - dcx), y + (by2 - dby) + (cy - dcy), z + (bz2 - dbz) + (cz - dcz),
      ax, ay, az, -bx2, -by2, -bz2, -(cx - cx2), -(cy - cy2), -(cz - cz2), emit)
    gilbert(x + (ax - dax) + bx2 + (cx - dcx), y + (ay - day) + by2 + (cy - dcy), z + (az - daz) + bz2 + (cz - dcz),
      -cx, -cy, -cz, -(ax - ax2), -(ay - ay2), -(az - az2), bx - bx2, by - by2, bz - bz2, emit)
    gilbert(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), z + (az - daz) + (bz2 - dbz),
      -bx2, -by2, -bz2, cx2, cy2, cz2, -(ax - ax2), -(ay - ay2), -(az - az2), emit)
  end
end

--- The points of the W×H×D box in Gilbert order: emit(x, y, z).
function L.gilbert3d(W, H, D, emit)
  if W >= H and W >= D then
    gilbert(0, 0, 0, W, 0, 0, 0, H, 0, 0, 0, D, emit)
  elseif H >= W and H >= D then
    gilbert(0, 0, 0, 0, H, 0, W, 0, 0, 0, 0, D, emit)
  else
    gilbert(0, 0, 0, 0, 0, D, W, 0, 0, 0, H, 0, emit)
  end
end

local AXES = {f = "frames", y = "height", x = "width"}

--- The order `name` (see the header) as a 0-based list of n tokens.
function Layout:order(name, opts)
  opts = opts or {}
  local out, p = {}, 0
  local function push(t) p = p + 1; out[p] = t end
  -- text tokens before the video ones stay first
  if self.text_first then for t = 0, self.text - 1 do push(t) end end
  local F, H, W = self.frames, self.height, self.width
  if name == "gilbert" then
    L.gilbert3d(W, H, F, function(x, y, f) push(self:index(f, y, x)) end)
  elseif name == "tiles" then
    local tf, th, tw = opts.tf or 1, opts.th or 1, opts.tw or 1
    for _, v in ipairs{tf, th, tw} do
      if not math.tointeger(v) or v < 1 then sl.fail("layout order tiles: tf, th, tw must be positive integers") end
    end
    for f0 = 0, F - 1, tf do for y0 = 0, H - 1, th do for x0 = 0, W - 1, tw do
      for f = f0, math.min(f0 + tf, F) - 1 do for y = y0, math.min(y0 + th, H) - 1 do
        for x = x0, math.min(x0 + tw, W) - 1 do push(self:index(f, y, x)) end
      end end
    end end end
  elseif type(name) == "string" and #name == 3 and AXES[name:sub(1, 1)] and AXES[name:sub(2, 2)] and
      AXES[name:sub(3, 3)] and name:sub(1, 1) ~= name:sub(2, 2) and name:sub(1, 1) ~= name:sub(3, 3) and
      name:sub(2, 2) ~= name:sub(3, 3) then
    local size = {f = F, y = H, x = W}
    local a1, a2, a3 = name:sub(1, 1), name:sub(2, 2), name:sub(3, 3)
    local c = {}
    for i1 = 0, size[a1] - 1 do
      c[a1] = i1
      for i2 = 0, size[a2] - 1 do
        c[a2] = i2
        for i3 = 0, size[a3] - 1 do
          c[a3] = i3
          push(self:index(c.f, c.y, c.x))
        end
      end
    end
  else
    sl.fail("layout order '%s' is unknown (expected an axis order such as fyx or yxf, tiles or gilbert)",
      tostring(name))
  end
  if not self.text_first then for t = self.n_video, self.n - 1 do push(t) end end
  return out
end

--- An i32 [P, n] order tensor from P order names (or 0-based lists), for
--- perm.apply: one row for every head (P = 1) or one per head group.
function Layout:perm_tensor(orders, opts)
  if type(orders) ~= "table" or type(orders[1]) == "number" then orders = {orders} end
  local rows = {}
  for i, o in ipairs(orders) do
    rows[i] = type(o) == "table" and o or self:order(o, opts)
    if #rows[i] ~= self.n then sl.fail("layout: order %d lists %d tokens, expected %d", i, #rows[i], self.n) end
  end
  return sl.tensor(rows, "i32")
end

--- Q, K or V [H, n, d] in the new order (backend: "ref", "cpu" (default) or "cuda").
function L.permute(x, perm, backend)
  return sl.perm.apply(x, perm, {backend = backend or "cpu"})
end

--- Undoes L.permute (exactly).
function L.unpermute(y, perm, backend)
  return sl.perm.apply(y, perm, {inverse = true, backend = backend or "cpu"})
end

-- The synthetic video workload's knobs (sl.synthetic_video; sl_workload_video
-- in sparselab.h says what each one plants), with their defaults.
L.WORKLOAD_KNOBS = {
  {"frames", 4, "frames F"}, {"height", 8, "tokens per column H"}, {"width", 8, "tokens per row W"},
  {"text", 0, "text tokens after the F.H.W video tokens"}, {"heads", 4, "attention heads (all MHA)"},
  {"d", 64, "head dim"}, {"seed", 1, "structure seed (head kinds, features)"},
  {"step", 0, "denoising step: the noise drifts by about drift.pi/40 per step"},
  {"spatial_frac", 0.5, "probability that a head is spatial (else temporal)"},
  {"spatial", 6.0, "logit boost between tokens of one frame at distance 0 (spatial heads)"},
  {"spatial_len", 2.0, "length scale (tokens) of the spatial boost's Gaussian in y/x"},
  {"temporal", 6.0, "logit boost between tokens at one (y, x) in any frames (temporal heads)"},
  {"temporal_len", 0.5, "length scale (tokens) of the temporal boost in y/x"},
  {"text_strength", 3.0, "logit boost of every video query towards every text key"},
  {"drift", 0.3, "scale of the step-to-step drift fields"},
}
local INT_KNOBS = {frames = true, height = true, width = true, text = true, heads = true, d = true, seed = true,
  step = true}

--- The video workload from a table of knobs (defaults above): q, k, v,
--- the knobs used, the layout, kinds (i32 [heads], 0 spatial 1 temporal).
function L.video_workload(t)
  if type(t) == "string" then
    local parsed = {}
    for kv in t:gmatch("[^,]+") do
      local key, val = kv:match("^([%w_]+)=(.+)$")
      if not key then sl.fail("workload option '%s' is not KEY=VALUE", kv) end
      parsed[key] = tonumber(val)
      if parsed[key] == nil then sl.fail("workload option %s expects a number, found '%s'", key, val) end
    end
    t = parsed
  end
  local known, p = {}, {}
  for _, knob in ipairs(L.WORKLOAD_KNOBS) do
    known[knob[1]] = true
    p[knob[1]] = t[knob[1]] == nil and knob[2] or t[knob[1]]
    if INT_KNOBS[knob[1]] and not math.tointeger(p[knob[1]]) then
      sl.fail("video workload: %s expects an integer, found %s", knob[1], tostring(p[knob[1]]))
    end
    if INT_KNOBS[knob[1]] then p[knob[1]] = math.tointeger(p[knob[1]]) end
  end
  for key in pairs(t) do
    if not known[key] then
      local names = {}
      for _, knob in ipairs(L.WORKLOAD_KNOBS) do names[#names + 1] = knob[1] end
      sl.fail("video workload: unknown option '%s' (expected %s)", tostring(key), table.concat(names, ", "))
    end
  end
  local q, k, v, kinds = sl.synthetic_video(p)
  local lay = L.video{frames = p.frames, height = p.height, width = p.width, text = p.text}
  return q, k, v, p, lay, kinds
end

return L
