/* fuzz_calibration.c — a calibration file (JSON) through sl.calibrate.load,
 * and a config that loads given to vertical_slash's per-head sizes on a tiny
 * problem; the JSON codec on the same bytes (decode, encode, decode again). */
#include "fuzz_lua.h"

static const char CODE[] =
    "local path, bytes = ...\n"
    "local json = require 'sparselab.json'\n"
    "local ok, doc = pcall(json.decode, bytes, 'fuzz')\n"
    "if ok then\n"
    "  local ok2, text = pcall(sl.json_encode, doc)\n"
    "  if ok2 then json.decode(text, 'fuzz again') end\n"
    "end\n"
    "local C = require 'sparselab.calibrate'\n"
    "local lok, cfg = pcall(C.load, path)\n"
    "if lok and type(cfg) == 'table' then\n"
    "  local q, k, v = sl.randn({2, 24, 8}, {seed = 1}), sl.randn({1, 24, 8}, {seed = 2}), sl.randn({1, 24, 8}, {seed = 3})\n"
    "  pcall(sl.eval, 'vertical_slash', sl.problem{q = q, k = k, v = v}, {params = {config = cfg, bq = 8, bk = 8}})\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128];
    fuzz_path(path, sizeof path, "calib.json");
    fuzz_write(path, data, size);
    fuzz_lua_run(CODE, path, data, size, 5000000, (size_t)256 << 20);
    return 0;
}
