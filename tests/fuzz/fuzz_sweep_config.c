/* fuzz_sweep_config.c — a sweep config's text evaluated as the loader does
 * (a chunk in an environment of math, string and table copies; here under
 * an instruction budget and a memory cap in place of the loader's child
 * process), its table through S.encode and S.decode (the worker protocol),
 * S.check_config and S.expand; and the bytes themselves through S.decode
 * (a worker's reply line). */
#include "fuzz_lua.h"

static const char CODE[] =
    "local path, bytes = ...\n"
    "local S = require 'sparselab.sweep'\n"
    "pcall(S.decode, bytes)\n"
    "local function copy(t) local o = {} for k, v in pairs(t) do o[k] = v end return o end\n"
    "local env = {math = copy(math), string = copy(string), table = copy(table)}\n"
    "local libs = {math = env.math, string = env.string, table = env.table}\n"
    "local chunk = load(bytes, '@' .. path, 't', env)\n"
    "if not chunk then return end\n"
    "local ok, cfg = pcall(chunk)\n"
    "if not ok then return end\n"
    "if cfg == nil then cfg = {} for k, v in pairs(env) do if libs[k] ~= v then cfg[k] = v end end end\n"
    "if type(cfg) ~= 'table' then return end\n"
    "local eok, line = pcall(S.encode, cfg)\n"
    "if not eok then return end\n"
    "local cok, c = pcall(function() return S.check_config(S.decode(line), path) end)\n"
    "if cok then pcall(S.expand, c, path) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128];
    fuzz_path(path, sizeof path, "sweep.lua");
    fuzz_write(path, data, size);
    fuzz_lua_run(CODE, path, data, size, 2000000, (size_t)256 << 20);
    return 0;
}
