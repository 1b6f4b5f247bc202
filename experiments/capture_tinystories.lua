-- capture_tinystories.lua — Question: what do the real attention inputs of a
-- trained model look like? Runs the shipped TinyStories 260K model
-- (experiments/data/tinystories260k, 5 layers, 8 query / 4 KV heads,
-- head_dim 8) densely over each shipped text and writes, per text and layer,
-- a safetensors file with the post-RoPE q, k, v and the dense lse — the
-- `--qkv` format, so `sparselab eval METHOD --qkv FILE` replays them.
--   sparselab run experiments/capture_tinystories.lua [OUT_DIR (default qkv)]
local sl = require "sparselab"

local data = "experiments/data/tinystories260k"
local out = arg and arg[1] or "qkv"
sl.mkdir(out)
local m = sl.model.load(data .. "/model.bin")
local n_files = 0
for _, name in ipairs(sl.listdir(data .. "/texts")) do
  local stem = name:match("^(.*)%.txt$")
  if stem then
    local f = assert(io.open(data .. "/texts/" .. name, "rb"))
    local text = f:read("a")
    f:close()
    local files = m:capture{text = text, out = out, name = stem}
    n_files = n_files + #files
    print(string.format("%-16s %d tokens -> %d files (%s ...)", stem, #m:encode(text), #files, files[1]))
  end
end
print(string.format("%d files in %s/", n_files, out))
