-- deps_check.lua — the include graph of core/, store/ and lua/ must have no
-- circle and no include that crosses a layer.
--
--   lua5.4 tests/tools/deps_check.lua [ROOT]       checks the tree at ROOT (default .)
--   lua5.4 tests/tools/deps_check.lua --selftest   plants a circle and a layer breach
--                                                  in a temporary tree and expects both
--
-- Modules: a source file (.c, .cu, .cc) is a module; a header is owned by the
-- source of the same name in the same folder (op_check.h by op_check.c) and
-- stands for it. A header without an owner (sparselab.h, internal.h: types
-- and inline helpers) is looked through: its own includes count as the
-- includer's. Module A depends on module B when A (or a header A owns)
-- includes a header B owns, or a header without an owner that declares a
-- function B defines (the public API header sparselab.h excepted: it is the
-- library's face, not a module). A circle among modules is an error, and so is
-- any include, owned or not, from a folder to a folder its layer may not
-- see (LAYERS below).

local LAYERS = {
  -- {from prefix, to prefix, why}
  {"core/", "lua/", "the core library knows no Lua"},
  {"core/", "store/", "the core library knows no store"},
  {"store/", "core/", "the store knows no tensors (it has its own status type)"},
  {"core/cpu/", "core/ref/", "ref is the independent oracle of the cpu kernels"},
  {"core/ref/", "core/cpu/", "ref is the independent oracle of the cpu kernels"},
  {"core/cuda/", "core/ref/", "ref is the independent oracle of the cuda kernels"},
  {"core/cpu/", "core/cuda/", "backends are independent of each other"},
  {"core/cuda/", "core/cpu/", "backends are independent of each other"},
  {"core/model/", "core/cpu/", "the model runner reaches kernels through ops and threads through the context"},
  {"core/model/", "core/ref/", "the model runner reaches kernels through ops"},
  {"core/model/", "core/cuda/", "the model runner reaches kernels through ops"},
  {"lua/bind/", "lua/prog/", "bindings sit below the program"},
  {"lua/runner/", "lua/bind/", "the runner sits below the bindings"},
  {"lua/runner/", "lua/prog/", "the runner sits below the program"},
}
local DIRS = {"core", "store", "lua"}
local SOURCE_EXT = {c = true, cu = true, cc = true}
local HEADER_EXT = {h = true, cuh = true}

local function list_files(root)
  local files = {}
  for _, d in ipairs(DIRS) do
    local p = io.popen(string.format("cd '%s' && find %s -type f \\( -name '*.c' -o -name '*.h' -o -name '*.cu' " ..
      "-o -name '*.cuh' -o -name '*.cc' \\) 2>/dev/null | sort", root, d))
    for line in p:lines() do files[#files + 1] = line end
    p:close()
  end
  return files
end

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end
local function stem(path) return path:match("^(.*)%.[^./]+$") or path end
local function ext(path) return path:match("%.([^./]+)$") or "" end

-- a/b/../c -> a/c
local function normalise(path)
  local parts = {}
  for seg in path:gmatch("[^/]+") do
    if seg == ".." and #parts > 0 and parts[#parts] ~= ".." then parts[#parts] = nil
    elseif seg ~= "." then parts[#parts + 1] = seg end
  end
  return table.concat(parts, "/")
end

local function check(root)
  local files = list_files(root)
  local exists = {}
  for _, f in ipairs(files) do exists[f] = true end
  -- include roots: the Makefile's -I core -I store -I lua, and lua's layer folders
  local roots = {"core", "store", "lua", "lua/bind", "lua/runner", "lua/prog"}
  local includes = {}
  for _, f in ipairs(files) do
    local list = {}
    local fh = assert(io.open(root .. "/" .. f))
    for line in fh:lines() do
      local inc = line:match('^%s*#%s*include%s+"([^"]+)"')
      if inc then
        local found = normalise(dirname(f) .. "/" .. inc)
        if not exists[found] then
          found = nil
          for _, r in ipairs(roots) do
            local cand = normalise(r .. "/" .. inc)
            if exists[cand] then found = cand break end
          end
        end
        if found then list[#list + 1] = found end
      end
    end
    fh:close()
    includes[f] = list
  end
  local owner = {}
  for _, f in ipairs(files) do
    if HEADER_EXT[ext(f)] then
      for e in pairs(SOURCE_EXT) do
        if exists[stem(f) .. "." .. e] then owner[f] = stem(f) end
      end
    end
  end
  local function module_of(f) return SOURCE_EXT[ext(f)] and stem(f) or owner[f] end
  -- functions defined by each module, and declared by each ownerless header
  local defined_in, declares = {}, {}
  for _, f in ipairs(files) do
    local fh = assert(io.open(root .. "/" .. f))
    local text = "\n" .. fh:read("a")
    fh:close()
    if SOURCE_EXT[ext(f)] then
      for name in text:gmatch("\n[%w_][%w_ %*]-[%s%*]([%w_]+)%([^;{]-%)%s*\n?{") do
        if not text:match("\nstatic[^\n]-[%s%*]" .. name .. "%(") then defined_in[name] = stem(f) end
      end
    elseif not owner[f] and not f:match("sparselab%.h$") then
      local list = {}
      for name in text:gmatch("\n[%w_][%w_ %*]-[%s%*]([%w_]+)%([^;{]-%);") do
        if not text:match("\nstatic[^\n]-[%s%*]" .. name .. "%(") then list[#list + 1] = name end
      end
      declares[f] = list
    end
  end

  local errors = {}
  -- layer rules, on every resolved include
  for _, f in ipairs(files) do
    for _, inc in ipairs(includes[f]) do
      for _, rule in ipairs(LAYERS) do
        if f:sub(1, #rule[1]) == rule[1] and inc:sub(1, #rule[2]) == rule[2] then
          errors[#errors + 1] = string.format("layer: %s includes %s (%s)", f, inc, rule[3])
        end
      end
    end
  end
  -- module edges, looking through ownerless headers
  local edges = {}
  local function add_edges(m, f, seen)
    for _, inc in ipairs(includes[f]) do
      local target = owner[inc] or (SOURCE_EXT[ext(inc)] and stem(inc))
      if target then
        if target ~= m then edges[m] = edges[m] or {}; edges[m][target] = inc end
      elseif not seen[inc] then
        seen[inc] = true
        for _, name in ipairs(declares[inc] or {}) do
          local t = defined_in[name]
          if t and t ~= m then edges[m] = edges[m] or {}; edges[m][t] = inc end
        end
        add_edges(m, inc, seen)
      end
    end
  end
  local modules = {}
  for _, f in ipairs(files) do
    local m = module_of(f)
    if m then
      if not modules[m] then modules[m] = true end
      add_edges(m, f, {})
    end
  end
  -- circles: the strongly connected components of more than one module (Tarjan)
  local names = {}
  for m in pairs(modules) do names[#names + 1] = m end
  table.sort(names)
  local index, low, on_stack, stack, next_index = {}, {}, {}, {}, 0
  local function strong(m)
    index[m], low[m] = next_index, next_index
    next_index = next_index + 1
    stack[#stack + 1] = m
    on_stack[m] = true
    local targets = {}
    for t in pairs(edges[m] or {}) do if modules[t] then targets[#targets + 1] = t end end
    table.sort(targets)
    for _, t in ipairs(targets) do
      if not index[t] then
        strong(t)
        low[m] = math.min(low[m], low[t])
      elseif on_stack[t] then
        low[m] = math.min(low[m], index[t])
      end
    end
    if low[m] == index[m] then
      local comp = {}
      repeat
        local t = table.remove(stack)
        on_stack[t] = nil
        comp[#comp + 1] = t
      until t == m
      if #comp > 1 then
        table.sort(comp)
        local why = {}
        for _, a in ipairs(comp) do
          for _, b2 in ipairs(comp) do
            if edges[a] and edges[a][b2] then why[#why + 1] = a .. " -> " .. b2 .. " (" .. edges[a][b2] .. ")" end
          end
        end
        errors[#errors + 1] = "circle among " .. table.concat(comp, ", ") .. ": " .. table.concat(why, "; ")
      end
    end
  end
  for _, m in ipairs(names) do if not index[m] then strong(m) end end
  local n_edges = 0
  for _, t in pairs(edges) do for _ in pairs(t) do n_edges = n_edges + 1 end end
  return errors, #names, n_edges, #files
end

local function run_check(root)
  local errors, n_mod, n_edges, n_files = check(root)
  for _, e in ipairs(errors) do print(e) end
  print(string.format("deps: %d files, %d modules, %d dependencies, %d problems", n_files, n_mod, n_edges, #errors))
  return #errors
end

local function selftest()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir .. "/core/cpu " .. dir .. "/core/ref " .. dir .. "/store " .. dir .. "/lua"))
  local function put(path, text)
    local f = assert(io.open(dir .. "/" .. path, "w")); f:write(text); f:close()
  end
  local passed, failed = 0, 0
  local function expect(what, cond)
    if cond then passed = passed + 1 else failed = failed + 1; print("FAIL " .. what) end
  end
  -- a clean tree: a.c -> b.h (b.c), through an ownerless header
  put("core/types.h", '#include "b.h"\n')
  put("core/a.c", '#include "types.h"\n')
  put("core/b.h", "")
  put("core/b.c", '#include "b.h"\n')
  local e = check(dir)
  expect("a clean tree passes", #e == 0)
  -- a circle through the ownerless header: b.c -> a.h (a.c) -> types.h -> b.h (b.c)
  put("core/a.h", "")
  put("core/b.c", '#include "b.h"\n#include "a.h"\n')
  e = check(dir)
  local found = false
  for _, m in ipairs(e) do if m:match("^circle among ") and m:match("core/a") and m:match("core/b") then found = true end end
  expect("a circle through an ownerless header is found", found)
  put("core/b.c", '#include "b.h"\n')
  -- a circle through declarations: shared.h (no owner) declares x() of x.c and
  -- y() of y.c, and both include it
  put("core/shared.h", "int x_fn(void);\nint y_fn(void);\n")
  put("core/x.c", '#include "shared.h"\nint x_fn(void)\n{\n    return 1;\n}\n')
  put("core/y.c", '#include "shared.h"\nint y_fn(void)\n{\n    return 2;\n}\n')
  e = check(dir)
  found = false
  for _, m in ipairs(e) do if m:match("^circle among ") and m:match("core/x") and m:match("core/y") then found = true end end
  expect("a circle through an ownerless header's declarations is found", found)
  os.remove(dir .. "/core/y.c")
  -- layer breaches: cpu -> ref, store -> core
  put("core/ref/ref.h", "")
  put("core/cpu/k.c", '#include "../ref/ref.h"\n')
  put("store/s.c", '#include "../core/types.h"\n')
  e = check(dir)
  local cpu_ref, store_core = false, false
  for _, m in ipairs(e) do
    if m:match("^layer: core/cpu/k.c includes core/ref/ref.h") then cpu_ref = true end
    if m:match("^layer: store/s.c includes core/types.h") then store_core = true end
  end
  expect("cpu -> ref is a layer breach", cpu_ref)
  expect("store -> core is a layer breach", store_core)
  os.execute("rm -rf " .. dir)
  print(string.format("%d passed, %d failed", passed, failed))
  return failed
end

if arg[1] == "--selftest" then
  os.exit(selftest() == 0)
else
  os.exit(run_check(arg[1] or ".") == 0)
end
