-- sparselab.cli.report — `sparselab report DB -o DIR [--where SQL] [--title T]`: the HTML and
-- Markdown report of a results database (viz/report.lua).
local sl = require "sparselab"

return function(argv, parse, out)
  local o, pos = parse(argv, 2, "report")
  if not pos[1] then sl.fail("%s (sparselab report --help)", require("sparselab.cli.commands").usage("report")) end
  if not o.out then sl.fail("report: give -o DIR") end
  local r = require("viz").report(pos[1], o.out, {where = o.where, title = o.title})
  out(string.format("report: %s/index.html, %s/report.md, %s/tables.tex and %d plots", o.out, o.out, o.out,
    #r.plots))
end
