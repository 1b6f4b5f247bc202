-- sparselab.sweep_testing — test-only methods for the sweep runner's tests,
-- registered by sparselab.sweep only when SPARSELAB_TEST_METHODS=1 (so they
-- never show in `sparselab methods` otherwise): test_crash dies of a real
-- SIGSEGV, test_sleep sleeps `seconds` and then computes dense attention,
-- test_error raises an ordinary error. The C hooks they call (sl.__test_crash,
-- sl.__test_sleep, in runner.c) exist only under the same variable.
local sl = require "sparselab"

local dense = sl.methods.get("dense")

local function base(id, title)
  return {id = id, title = title, family = "test", phase = "both", params = {}, ops = {"attn.dense"},
    summary = "test-only (SPARSELAB_TEST_METHODS=1)"}
end

local crash = base("test_crash", "test-only: segfaults (a crashing kernel)")
crash.run = function() sl.__test_crash() end
sl.methods.register(crash)

local sleep = base("test_sleep", "test-only: sleeps, then dense attention (a hanging kernel)")
sleep.knob = "seconds"
sleep.params = {seconds = {default = 1, min = 0, max = 3600, doc = "how long to sleep"}}
sleep.run = function(prob, p)
  sl.__test_sleep(p.seconds)
  return dense.run(prob, {})
end
sl.methods.register(sleep)

local fail = base("test_error", "test-only: raises an error")
fail.run = function() error("test_error: this method always fails", 0) end
sl.methods.register(fail)

return true
