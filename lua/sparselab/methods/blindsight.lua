-- BlindSight: Harnessing Sparsity for Efficient VLMs — card: blindsight.
-- Card steps implemented:
--   1. per-head categories (given, not calibrated): "dense", "sink",
--      "intra" (document mask) and "intra_sink" (hybrid document-sink);
--   2. text rows (every row outside an image) keep dense causal attention;
--   3. mask of a head = causal ∩ category mask built from the segment list:
--      segments start at every image start and every image end (the text
--      after it); image rows see
--        intra:      their own image;
--        sink:       their own image + the first k tokens of the prompt;
--        intra_sink: their own image + the first k tokens of every earlier
--                    segment (image or text; segment 0 starts at 0);
--        dense:      every earlier key;
--   4. executor: attn.block_sparse over the per-head mask.
-- Not here: the offline head categorisation (step 1's calibration).
-- Unknowns chosen: sink tokens per segment k = 4 (the knob); "sink" reads
-- the paper's "sink-only" category as own image + global prompt sinks, and
-- "intra_sink" as own image + per-segment sinks (the card describes the two
-- alike); the default category is intra_sink for every head.
-- Template: params.images = {{start, stop}, ...} 0-based token ranges (stop
-- exclusive, sorted, disjoint); params.categories = {[h] = category} per query
-- head (1-based list of Hq entries) overrides params.category.
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local CATS = {dense = true, sink = true, intra = true, intra_sink = true}

local function template(prob, p)
  local n = prob.k:shape()[2]
  if type(p.images) ~= "table" or #p.images == 0 then
    sl.fail("blindsight: give params.images = {{start, stop}, ...} (the image token ranges of the template)")
  end
  local starts, in_image, prev = {}, {}, 0
  for i, r in ipairs(p.images) do
    local a, b = math.tointeger(r[1]), math.tointeger(r[2])
    if not a or not b or a < prev or b <= a or b > n then
      sl.fail("blindsight: images[%d] = {%s, %s} must be sorted, disjoint, 0 <= start < stop <= %d", i,
        tostring(r[1]), tostring(r[2]), n)
    end
    if a > 0 and starts[#starts] ~= a then starts[#starts + 1] = a end
    if b < n then starts[#starts + 1] = b end
    for t = a, b - 1 do in_image[t] = true end
    prev = b
  end
  local text = {}
  for t = 0, n - 1 do if not in_image[t] then text[#text + 1] = t end end
  return starts, text
end

local function head_pattern(cat, starts, text, k)
  if not CATS[cat] then sl.fail("blindsight: unknown category '%s' (dense, sink, intra, intra_sink)", tostring(cat)) end
  if cat == "dense" then return sl.mask.causal() end
  local pat = #starts > 0 and sl.mask.document{segments = starts} or sl.mask.causal()
  if #text > 0 then pat = pat + sl.mask.dense_rows{rows = text} end
  if k > 0 and cat == "sink" then pat = pat + sl.mask.sink{s = k} end
  if k > 0 and cat == "intra_sink" then
    local segs = {0}
    for _, s in ipairs(starts) do segs[#segs + 1] = s end
    pat = pat + sl.mask.segment_sink{segments = segs, k = k}
  end
  return pat
end

local function mask_for(prob, p)
  local starts, text = template(prob, p)
  if p.categories then
    local hq = prob.q:shape()[1]
    if #p.categories ~= hq then sl.fail("blindsight: categories has %d entries, q %d heads", #p.categories, hq) end
    local items = {}
    for h = 1, hq do items[h] = head_pattern(p.categories[h], starts, text, p.k) end
    return recipe.materialize(sl.mask.assign(items), prob, p, hq)
  end
  return recipe.materialize(head_pattern(p.category, starts, text, p.k), prob, p)
end

return {
  id = "blindsight",
  card = "blindsight",
  title = "BlindSight: Harnessing Sparsity for Efficient VLMs",
  family = "static-pattern",
  phase = "prefill",
  causal_only = true,
  summary = "Template-aware per-head masks: image rows see their own image (+ sinks); text rows stay dense.",
  knob = "k",
  params = recipe.block_params{
    k = {default = 4, min = 0, int = true, doc = "sink tokens at the start of each segment (or of the prompt)"},
    category = {default = "intra_sink", doc = "category of every head: dense, sink, intra, intra_sink"},
    categories = {default = nil, doc = "per query head categories (a list of Hq), overriding category"},
    images = {default = nil, doc = "image token ranges {{start, stop}, ...} (0-based, stop exclusive)"},
  },
  ops = {"attn.block_sparse"},
  checks = {"output and density equal an independent reference", "category dense equals dense",
    "single image: intra equals dense on the image rows when the image starts the prompt",
    "every category's mask is within causal", "text rows equal dense rows"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
}
