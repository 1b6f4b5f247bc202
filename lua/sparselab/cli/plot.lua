-- sparselab.cli.plot — `sparselab plot DB [VIEW] [--x COL --y COL] [--by COL] [--where SQL]
-- [--logx] [--logy] [--fit ID]... [--aggregate EXPR] [--title T] -o FILE.svg|png|pdf`: a chart
-- from a results database through gnuplot (viz/plot.lua; the views in viz/views.lua).
local sl = require "sparselab"

return function(argv, parse, out)
  local o, pos = parse(argv, 2, "plot")
  local path, view = pos[1], pos[2]
  local usage = require("sparselab.cli.commands").usage("plot")
  if not path then sl.fail("%s (sparselab plot --help)", usage) end
  if not o.out then sl.fail("plot: give -o FILE.svg|png|pdf") end
  local viz = require "viz"
  local res
  if view then
    if o.x or o.y then sl.fail("plot: give a view (%s) or --x and --y, not both", view) end
    res = viz.view(path, view, {out = o.out, where = o.where, by = o.by, logx = o.logx or nil,
      logy = o.logy or nil, fit = o.fit, title = o.title})
    if not res then sl.fail("plot: %s has no results for the %s view", path, view) end
  else
    if not o.fit and (not o.x or not o.y) then
      sl.fail("plot: give --x COL and --y COL, a view (%s), or --fit ID", table.concat(viz.views(), ", "))
    end
    res = viz.plot(path, {x = o.x, y = o.y, by = o.by, where = o.where, logx = o.logx, logy = o.logy, fit = o.fit,
      aggregate = o.aggregate, title = o.title, out = o.out, style = o.by and "linespoints" or "points"})
  end
  local n, s = 0, 0
  for _, se in ipairs(res.series or {}) do n = n + #se.points; s = s + 1 end
  for _, f in ipairs(res.fits or {}) do for _, se in ipairs(f.points) do n = n + #se.points; s = s + 1 end end
  out(string.format("plot: %s (%d points in %d series%s)", o.out, n, s,
    (res.dropped or 0) > 0 and string.format("; %d rows left out: not numbers, or not positive on a log axis",
    res.dropped) or ""))
end
