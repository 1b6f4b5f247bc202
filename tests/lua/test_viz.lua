-- test_viz.lua — viz/ (issue 18): mask pictures against an independent block rule and an
-- independent PNG header reader, plots through gnuplot (files of the right kind, fitted
-- curves equal to the stored law, bands around them), the report's pages and LaTeX tables.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, eq, near, truthy, raises = H.test, H.eq, H.near, H.truthy, H.raises

local T = os.tmpname()
os.remove(T)
sl.mkdir(T)

local function slurp(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- PNG width and height read from the file's IHDR chunk by hand (PNG spec §11.2.2)
local function png_size(p)
  local s = slurp(p)
  eq(s:sub(1, 8), "\137PNG\r\n\26\n", "PNG signature")
  eq(s:sub(13, 16), "IHDR", "first chunk")
  local w = string.unpack(">I4", s, 17)
  local h = string.unpack(">I4", s, 21)
  return w, h, s:byte(25), s:byte(26) -- bit depth, colour type
end

-- ---- mask pictures ---------------------------------------------------------------------------

test("mask picture: every block coloured by the window rule, computed independently", function()
  local n, b, w = 128, 16, 40
  local m = sl.mask.window(w):materialize{n_q = n, bq = b, bk = b}
  local p = T .. "/w.png"
  local res = sl.viz.mask(m, p, {scale = 3})
  local nb = n // b
  local W, Hh, depth, ctype = png_size(p)
  eq(W, nb * 3 + 2 * 2, "width: one panel of 8 blocks x 3 px and two 2-px borders")
  eq(Hh, nb * 3 + 2 * 2, "height")
  eq(depth, 8, "bit depth")
  eq(ctype, 2, "colour type RGB")
  eq(res.width, W, "reported width")
  local pw, ph, pix = sl.png_c.read(p)
  eq(pw, W, "decoded width")
  local function px(x, y)
    local o = (y * pw + x) * 3
    return pix:byte(o + 1), pix:byte(o + 2), pix:byte(o + 3)
  end
  for r = 0, nb - 1 do
    for c = 0, nb - 1 do
      -- kept: some pair (i, j) of the blocks with 0 <= i - j < w
      local kept, future = false, true
      for i = r * b, r * b + b - 1 do
        for j = c * b, c * b + b - 1 do
          if i - j >= 0 and i - j < w then kept = true end
          if j <= i then future = false end
        end
      end
      local R, G, B = px(2 + c * 3 + 1, 2 + r * 3 + 1)
      if kept then
        truthy(B > R + 20, string.format("block (%d,%d) kept: blue expected, found %d,%d,%d", r, c, R, G, B))
      elseif future then
        truthy(R == G and G == B and R < 250 and R > 200, string.format("block (%d,%d) in the future: grey", r, c))
      else
        truthy(R == 255 and G == 255 and B == 255, string.format("block (%d,%d) dropped, no mass: white, found %d,%d,%d",
          r, c, R, G, B))
      end
    end
  end
end)

test("mask picture: mass shading, per head panels, executed beside semantic", function()
  local q, k = sl.synthetic{heads = 2, kv_heads = 1, n = 128, d = 16, seed = 5}
  local m = sl.mask.window(32):materialize{n_q = 128, bq = 32, bk = 32}
  local full = sl.mask.causal():materialize{n_q = 128, bq = 32, bk = 32}
  local mass = sl.score.exact(q, k, {bq = 32, bk = 32})
  local p = T .. "/m.png"
  local res = sl.viz.mask(m, p, {mass = mass, executed = full, scale = 2})
  eq(res.heads, 2, "heads from the mass")
  eq(res.panels, 4, "two panels per head")
  local W = png_size(p)
  eq(W, 4 * 4 * 2 + 5 * 2, "four panels of 4 blocks x 2 px")
  -- a dropped block that holds mass is orange (red above blue); in the executed (full
  -- causal) panel beside it the same block is blue
  local pw, _, pix = sl.png_c.read(p)
  local function px(x, y)
    local o = (y * pw + x) * 3
    return pix:byte(o + 1), pix:byte(o + 2), pix:byte(o + 3)
  end
  local r, c = 3, 0 -- query block 3, key block 0: outside the 32-token window
  local R, _, B = px(2 + c * 2, 2 + r * 2)
  truthy(R > B, "dropped block with mass: orange")
  local R2, _, B2 = px(2 + 8 + 2 + c * 2, 2 + r * 2)
  truthy(B2 > R2, "same block kept in the executed panel: blue")
  raises(function() sl.viz.mask(m, T .. "/x.png", {mass = sl.score.exact(q, k, {bq = 16, bk = 16})}) end,
    "mass must be [H, 4, 4]", "mass in other blocks")
  raises(function() sl.viz.mask(m, T .. "/x.svg") end, "ending in .png", "not a png name")
  raises(function() sl.viz.mask(m, T .. "/x.png", {colour = 1}) end, "unknown option 'colour'", "unknown option")
end)

test("png_c: round trip and a one-line error for a non-PNG file", function()
  local p = T .. "/rt.png"
  local pix = string.char(255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30)
  sl.png_c.write(p, 2, 2, pix)
  local w, h, back = sl.png_c.read(p)
  eq(w, 2, "w"); eq(h, 2, "h"); eq(back, pix, "pixels")
  raises(function() sl.png_c.write(p, 2, 2, "abc") end, "expected 12 bytes", "short pixels")
  local f = io.open(T .. "/no.png", "w"); f:write("not a png"); f:close()
  raises(function() sl.png_c.read(T .. "/no.png") end, "not a readable PNG", "junk file")
end)

-- ---- plots and the report ----------------------------------------------------------------------

local db = T .. "/v.db"
do
  -- the test database (tests/cli/viz_db.lua), built through the library as the program would
  local chunk = assert(loadfile("tests/cli/viz_db.lua"))
  local saved = _G.arg
  _G.arg = {[0] = "viz_db.lua", db}
  local stdout = io.stdout
  io.stdout = assert(io.open(T .. "/fit.txt", "w")) -- the fits' printed tables
  local ok, err = pcall(chunk, db)
  io.stdout:close()
  io.stdout = stdout
  assert(ok, err)
  _G.arg = saved
end

local have_gnuplot = sl.viz.gnuplot() ~= nil
if not have_gnuplot then io.stderr:write("SKIP plots: gnuplot is not installed (make deps)\n") end

if have_gnuplot then
  test("plot: svg, png and pdf files of the right kind", function()
    for _, ext in ipairs{"svg", "png", "pdf"} do
      local p = T .. "/a." .. ext
      local r = sl.viz.plot(db, {x = "density", y = "rel_l2", by = "method", where = "method <> 'dense'", logy = true,
        out = p})
      eq(#r.series, 2, "two methods")
      local s = slurp(p)
      if ext == "svg" then truthy(s:find("<svg", 1, true), "svg file")
      elseif ext == "png" then eq(s:sub(2, 4), "PNG", "png file")
      else eq(s:sub(1, 5), "%PDF-", "pdf file") end
    end
    raises(function() sl.viz.plot(db, {x = "density", y = "rel_l2", out = T .. "/a.jpg"}) end, "svg, .png or .pdf",
      "jpg")
    raises(function() sl.viz.plot(db, {x = "density", y = "rel_l2", where = "method = 'nope'", out = T .. "/e.svg"}) end,
      "nothing to plot", "empty")
    raises(function() sl.viz.plot(db, {x = "no_such_col", y = "rel_l2", out = T .. "/e.svg"}) end, "no_such_col",
      "bad column")
    raises(function() sl.viz.view(db, "nope", {out = T .. "/e.svg"}) end, "unknown view 'nope'", "bad view")
  end)

  test("plot: a series holds the mean per target density", function()
    local r = sl.viz.plot(db, {x = "density", y = "rel_l2", by = "method", where = "method = 'sliding_window'",
      aggregate = "target_density", out = T .. "/g.svg"})
    eq(#r.series[1].points, 3, "three targets")
    local h = sl.store.open(db, {read_only = true})
    local rows = h:query("SELECT avg(density) AS x, avg(rel_l2) AS y FROM v_result WHERE method = 'sliding_window' " ..
      "AND status = 'ok' AND target_density = 0.2")
    h:close()
    local found = false
    for _, pt in ipairs(r.series[1].points) do
      if math.abs(pt[1] - rows[1].x) < 1e-12 then near(pt[2], rows[1].y, 1e-12, "mean rel_l2"); found = true end
    end
    truthy(found, "the 0.2 target's mean point")
  end)

  test("plot --fit: the curve is the stored law, the band holds it", function()
    local P = require "viz.plot"
    local h = sl.store.open(db, {read_only = true})
    local f = P.load_fit(h, 1)
    local fc = P.fit_curves(h, f, {bootstrap = 60})
    h:close()
    eq(f.law, "power", "law")
    local a, b = f.params.a, f.params.b
    local inside = 0
    for _, g in ipairs(fc.curves[1].grid) do
      near(g[2], a * g[1] ^ b, 1e-9 * math.abs(g[2]), "curve = a C^b")
      if g[3] and g[3] <= g[2] + 1e-12 and g[2] <= g[4] + 1e-12 then inside = inside + 1 end
    end
    truthy(inside >= #fc.curves[1].grid - 2, string.format("band holds the curve at %d of %d points", inside,
      #fc.curves[1].grid))
    truthy(fc.n_resamples >= 30 and fc.n_refits >= 0.8 * fc.n_resamples,
      string.format("refits converged: %d of %d", fc.n_refits, fc.n_resamples))
    local pts = fc.points[1].points
    eq(#pts, 6, "the fit's points (3 targets x 2 lengths)")
    local r = sl.viz.view(db, "scaling", {out = T .. "/s.svg"})
    eq(#r.fits, 2, "both fits drawn")
  end)

  test("report: pages, plots and booktabs tables", function()
    local r = sl.viz.report(db, T .. "/rep")
    truthy(#r.plots >= 4, "plots drawn: " .. #r.plots)
    local html = slurp(T .. "/rep/index.html")
    for _, p in ipairs(r.plots) do
      truthy(html:find('src="' .. p.file .. '"', 1, true), "page shows " .. p.file)
      truthy(slurp(T .. "/rep/" .. p.file):find("<svg", 1, true), p.file .. " is SVG")
    end
    truthy(html:find("cannot go down to density 0.001", 1, true), "failed point listed with its reason")
    local md = slurp(T .. "/rep/report.md")
    truthy(md:find("| sliding_window |", 1, true), "markdown table row")
    local tex = slurp(T .. "/rep/tables.tex")
    truthy(tex:find("\\toprule", 1, true) and tex:find("\\midrule", 1, true) and tex:find("\\bottomrule", 1, true),
      "booktabs rules")
    truthy(tex:find("sliding\\_window", 1, true), "underscores escaped")
    truthy(not tex:find("[^\\]_"), "no bare underscore")
  end)
end

test("LaTeX escaping", function()
  local R = require "viz.report"
  eq(R.tex_escape("a_b & 50% $x$ #1 {y} ~ ^ \\"), "a\\_b \\& 50\\% \\$x\\$ \\#1 \\{y\\} \\textasciitilde{} " ..
    "\\textasciicircum{} \\textbackslash{}", "escaped")
end)

test("progress: plain lines at each tenth, an ETA, a bar on a terminal", function()
  local lines = {}
  local p = sl.progress{label = "x", total = 20, tty = false, out = function(s) lines[#lines + 1] = s end}
  for i = 1, 20 do p:step("item " .. i) end
  eq(#lines, 10, "one line per tenth")
  truthy(lines[10]:find("^x 20/20 100%%  ETA 0:00  item 20\n$"), "last line: " .. lines[10])
  truthy(not table.concat(lines):find("nil", 1, true), "no nil in the lines")
  local t = {}
  local q = sl.progress{label = "y", total = 4, tty = true, out = function(s) t[#t + 1] = s end}
  q:step()
  truthy(t[1]:find("^\r\27%[Ky %[######%.+%] 1/4  25%%  ETA "), "tty line: " .. t[1])
  eq(sl.progress.format_eta(3725), "1:02:05", "ETA format")
  eq(sl.progress.format_eta(65), "1:05", "ETA format")
end)

os.execute("rm -rf '" .. T .. "'")
H.done()
