-- viz — plots, mask pictures and reports from a results database (DESIGN: the top-level
-- viz/ folder; charts through gnuplot, mask pictures through libpng). Embedded in the
-- program and the module like the Lua library; in Lua it is sl.viz:
--   sl.viz.plot(db, {x =, y =, by =, where =, logx =, logy =, fit =, out =})   viz/plot.lua
--   sl.viz.view(db, "frontier"|"recall"|"pareto"|"scaling"|"break_even", {out =, ...})
--   sl.viz.mask(mask, "m.png", {mass =, executed =, scale =})                   viz/mask.lua
--   sl.viz.report(db, dir)                                                      viz/report.lua
local V = {}

V.plot = function(db, o) return require("viz.plot").plot(db, o) end
V.view = function(db, name, o) return require("viz.views").draw(db, name, o) end
V.views = function() return require("viz.views").NAMES end
V.mask = function(mask, path, o) return require("viz.mask").draw(mask, path, o) end
V.report = function(db, dir, o) return require("viz.report").write(db, dir, o) end
V.gnuplot = function() return require("viz.plot").gnuplot() end

return V
