-- sparselab.progress — progress of a long loop on stderr (issue 18): on a terminal one line
-- redrawn in place, "label [#####.......] 12/40  30%  ETA 1:05  note"; elsewhere (a pipe, a
-- log file) a plain line at each tenth of the way and at the end. The ETA is the time per
-- finished step times the steps left.
--   local p = sl.progress{label = "prefill_frontier", total = N}
--   p:step("vertical_slash 0.1")   -- one step finished (the note says what comes or came)
--   p:done()
local sl = require "sparselab"

local P = {}
P.__index = P

local function clock() return sl.time and sl.time() or os.clock() end

local tty_cache
local function stderr_is_tty()
  if tty_cache == nil then
    local ok = os.execute("test -t 2")
    tty_cache = ok == true or ok == 0
  end
  return tty_cache
end

local function fmt_eta(s)
  if s == nil or s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%d:%02d:%02d", s // 3600, s % 3600 // 60, s % 60) end
  return string.format("%d:%02d", s // 60, s % 60)
end
P.format_eta = fmt_eta

--- New progress: o.label, o.total (steps), o.tty (default: whether stderr is a terminal),
--- o.out (a function(text) writing to stderr by default).
function P.new(o)
  local total = math.tointeger(o.total)
  if not total or total < 0 then sl.fail("sl.progress: total must be a non-negative integer, found %s", tostring(o.total)) end
  local self = setmetatable({label = o.label or "progress", total = total, done_n = 0, t0 = clock(),
    tty = o.tty == nil and stderr_is_tty() or o.tty, last_tenth = 0,
    out = o.out or function(s) io.stderr:write(s); io.stderr:flush() end}, P)
  return self
end

--- The line for the current state (without control characters).
function P:line(note)
  local pct = self.total > 0 and math.floor(100 * self.done_n / self.total) or 100
  local el = clock() - self.t0
  local eta = self.done_n > 0 and el / self.done_n * (self.total - self.done_n) or nil
  if self.done_n >= self.total then eta = 0 end
  local fill = self.total > 0 and math.floor(24 * self.done_n / self.total) or 24
  local bar = self.tty and (" [" .. string.rep("#", fill) .. string.rep(".", 24 - fill) .. "]") or ""
  return string.format("%s%s %d/%d %3d%%  ETA %s%s", self.label, bar, self.done_n, self.total, pct, fmt_eta(eta),
    note and note ~= "" and ("  " .. tostring(note)) or "")
end

--- One step finished; note (optional) is shown after the ETA.
function P:step(note)
  self.done_n = self.done_n + 1
  if self.tty then
    self.out("\r\27[K" .. self:line(note))
    if self.done_n >= self.total then self.out("\n") end
  else
    local tenth = self.total > 0 and (10 * self.done_n) // self.total or 10
    if tenth > self.last_tenth or self.done_n >= self.total then
      self.last_tenth = tenth
      self.out(self:line(note) .. "\n")
    end
  end
end

--- Ends the display (a newline on a terminal when the loop stopped early).
function P:done()
  if self.tty and self.done_n < self.total then self.out("\n") end
end

return setmetatable({new = P.new, format_eta = fmt_eta}, {__call = function(_, o) return P.new(o) end})
