-- test_tokenizers.lua — tokenizers as models ship them (issue 18): tokenizer.model through
-- libsentencepiece and tokenizer.json byte-level BPE through libpcre2.
--   * SentencePiece: two small models trained here on the shipped TinyStories texts with Debian's
--     python3-sentencepiece (tests/tools/tok_ref.py); our encode and decode equal the Python
--     library's on ~180 strings per model (sentences, windows, random strings with unseen
--     characters: unk and byte fallback).
--   * Byte-level BPE: a tokenizer.json written here by hand (the 256 byte tokens, ten merges, two
--     added tokens, Llama 3's Split regex + ByteLevel, a BOS template); vectors worked out by hand
--     below; random strings against the independent Python BPE of tok_ref.py (GPT-2's algorithm,
--     the `regex` module); a GPT-2-style variant (ByteLevel use_regex + add_prefix_space); decode
--     round trips; refusals naming the key.
--   * The model loader finds tokenizer.model / tokenizer.json next to the weights.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local json = require "sparselab.json"
local test, eq, truthy, raises = H.test, H.eq, H.truthy, H.raises

local PY = "/usr/bin/python3"
local TMP = os.tmpname()
os.remove(TMP)
assert(os.execute("mkdir -p " .. TMP))

local function sh(cmd)
  local ok = os.execute("env -u LD_PRELOAD " .. cmd) -- no sanitizer runtime in python (make asan)
  if not ok then error("command failed: " .. cmd .. " (Debian packages python3-sentencepiece and python3-regex " ..
    "are required: sh tests/deps.sh)") end
end

local function read(path)
  local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb")); f:write(s); f:close()
end

local function ids_str(t)
  local out = {}
  for i, v in ipairs(t) do out[i] = tostring(math.tointeger(v) or v) end
  return "[" .. table.concat(out, ",") .. "]"
end

-- ---- SentencePiece ----------------------------------------------------------------------

test("sentencepiece: encode and decode equal python3-sentencepiece on trained models", function()
  local texts = {}
  for _, f in ipairs(sl.listdir("experiments/data/tinystories260k/texts")) do
    if f:match("%.txt$") then texts[#texts + 1] = "experiments/data/tinystories260k/texts/" .. f end
  end
  table.sort(texts)
  sh(string.format("%s tests/tools/tok_ref.py spm %s 20261207 %s", PY, TMP, table.concat(texts, " ")))
  local ref = json.decode(read(TMP .. "/spm_ref.json"))
  local toks, n, bytes_seen, unk_seen = {}, 0, 0, 0
  for name, path in pairs(ref.models) do toks[name] = sl.tokenizer_c.load(path) end
  for _, c in ipairs(ref.cases) do
    local tok = toks[c.model]
    if c.meta then
      eq(tok:vocab(), c.meta.size, c.model .. " vocab")
      local with = tok:encode("a b", true, true)
      eq(with[1], c.meta.bos, c.model .. " BOS id"); eq(with[#with], c.meta.eos, c.model .. " EOS id")
    else
      local got = tok:encode(c.text, false)
      if ids_str(got) ~= ids_str(c.ids) then
        error(string.format("%s: %q: ours %s, python %s", c.model, c.text, ids_str(got), ids_str(c.ids)))
      end
      eq(tok:decode(c.ids), c.decoded, c.model .. " decode of " .. string.format("%q", c.text))
      n = n + 1
      for _, id in ipairs(c.ids) do
        if c.model == "bpe_bytes" and id >= 3 and id < 259 then bytes_seen = bytes_seen + 1 end
        if c.model == "unigram" and id == 0 then unk_seen = unk_seen + 1 end
      end
    end
  end
  truthy(n >= 300, "at least 300 strings compared, found " .. n)
  truthy(bytes_seen > 0, "byte-fallback pieces exercised")
  truthy(unk_seen > 0, "unknown pieces exercised")
  -- decode after a previous token keeps the dummy prefix (the text continues)
  local tok = toks.unigram
  local a, b = tok:encode("Tom was", false), tok:encode(" happy", false)
  local whole = tok:decode(a)
  eq(tok:decode(b, a[#a]):sub(1, 1), " ", "continuation keeps its leading space")
  eq(whole, "Tom was", "decode without prev drops the dummy prefix")
  raises(function() tok:decode({tok:vocab()}) end, "outside", "id past the vocabulary")
  raises(function() sl.tokenizer_c.load(TMP .. "/spm_unigram.model", 100) end, "vocab_size", "model vocab smaller")
  write(TMP .. "/bad.model", "not a protobuf at all")
  raises(function() sl.tokenizer_c.load(TMP .. "/bad.model") end, "not a SentencePiece model", "bad file")
end)

-- ---- byte-level BPE ---------------------------------------------------------------------

-- GPT-2's byte-to-unicode table, written again here from its definition.
local function b2u()
  local keep, map, n = {}, {}, 0
  for b = 0x21, 0x7E do keep[b] = true end
  for b = 0xA1, 0xAC do keep[b] = true end
  for b = 0xAE, 0xFF do keep[b] = true end
  for b = 0, 255 do
    if keep[b] then map[b] = utf8.char(b) else map[b] = utf8.char(256 + n); n = n + 1 end
  end
  return map
end
local B2U = b2u()
local function mapped(s) return (s:gsub(".", function(c) return B2U[c:byte()] end)) end

local LLAMA3_RE = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
-- merges by rank; ids: byte b is id b, the merges' results 256.. in this order
local MERGES = {{"h", "e"}, {" ", "t"}, {" t", "he"}, {"i", "n"}, {"in", "g"}, {"l", "l"}, {"e", "ll"}, {"h", "ell"},
  {"hell", "o"}, {" ", " "}}

-- sl.json_encode has no null: a placeholder string is turned into one afterwards
local NULL = "__SL_NULL__"
local function tokenizer_json(opts)
  local vocab, merges, next_id = {}, {}, 256
  for b = 0, 255 do vocab[B2U[b]] = b end
  for i, m in ipairs(MERGES) do
    merges[i] = mapped(m[1]) .. " " .. mapped(m[2])
    vocab[mapped(m[1] .. m[2])] = next_id; next_id = next_id + 1
  end
  local pre = opts.gpt2 and {type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true}
    or {type = "Sequence", pretokenizers = {
      {type = "Split", pattern = {Regex = LLAMA3_RE}, behavior = "Isolated", invert = false},
      {type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = false}}}
  local t = {
    version = "1.0",
    added_tokens = {
      {id = 266, content = "<|bos|>", single_word = false, lstrip = false, rstrip = false, normalized = false, special = true},
      {id = 267, content = "<|eot|>", single_word = false, lstrip = false, rstrip = false, normalized = false, special = true}},
    normalizer = NULL,
    pre_tokenizer = pre,
    post_processor = {type = "TemplateProcessing",
      single = {{SpecialToken = {id = "<|bos|>", type_id = 0}}, {Sequence = {id = "A", type_id = 0}}},
      pair = {}, special_tokens = {["<|bos|>"] = {id = "<|bos|>", ids = {266}, tokens = {"<|bos|>"}}}},
    decoder = {type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true},
    model = {type = "BPE", dropout = NULL, unk_token = NULL, continuing_subword_prefix = NULL,
      end_of_word_suffix = NULL, fuse_unk = false, byte_fallback = false, ignore_merges = opts.ignore_merges or false,
      vocab = vocab, merges = merges},
  }
  for k, v in pairs(opts.override or {}) do t[k] = v end
  return (sl.json_encode(t):gsub('"__SL_NULL__"', "null"))
end

local function bpe_file(name, opts)
  local path = TMP .. "/" .. name
  write(path, tokenizer_json(opts or {}))
  return path
end

test("bpe: hand-worked vectors (Llama 3 style Split regex + ByteLevel)", function()
  local tok = sl.tokenizer_c.load(bpe_file("hand.json"))
  eq(tok:vocab(), 268, "ids 0..267")
  local cases = {
    -- "hello": h+e (rank 0) wins before l+l (rank 5), so "ell"/"hell"/"hello" never form
    {"hello the", {256, 261, 111, 258}},
    {"shell", {115, 256, 261}},
    -- "\s+(?!\S)" leaves one space before " in"; "ing" = (i n) then (in g)
    {"ring  in", {114, 260, 32, 32, 259}},
    {"a<|eot|>b", {97, 267, 98}},
    {"héllo", {104, 195, 169, 261, 111}},
    {"  ", {265}},
    {"HELLO's", {72, 69, 76, 76, 79, 39, 115}},
    {"", {}},
  }
  for _, c in ipairs(cases) do
    eq(ids_str(tok:encode(c[1], false)), ids_str(c[2]), string.format("%q", c[1]))
    eq(tok:decode(c[2]), c[1], "decode " .. string.format("%q", c[1]))
  end
  eq(ids_str(tok:encode("shell", true)), ids_str{266, 115, 256, 261}, "BOS from the template")
  eq(tok:decode{266, 258}, "<|bos|> the", "added tokens decode as their content")
  raises(function() tok:encode("x", false, true) end, "EOS", "no EOS in the template")
  raises(function() tok:encode("\xff\xfe", false) end, "UTF-8", "invalid UTF-8")
  -- ignore_merges: a piece that is itself a token is taken whole ("hello" is id 264)
  local im = sl.tokenizer_c.load(bpe_file("ignore.json", {ignore_merges = true}))
  eq(ids_str(im:encode("hello the", false)), ids_str{264, 258}, "ignore_merges takes the whole word")
end)

test("bpe: random strings equal the independent Python BPE (both pre-tokenizer styles)", function()
  for _, v in ipairs{{"hand.json", {}}, {"gpt2.json", {gpt2 = true}}, {"ignore.json", {ignore_merges = true}}} do
    local path = bpe_file(v[1], v[2])
    local out = TMP .. "/" .. v[1] .. ".ref.json"
    sh(string.format("%s tests/tools/tok_ref.py bpe %s %s 4242 300", PY, path, out))
    local tok, n = sl.tokenizer_c.load(path, 268), 0
    for _, c in ipairs(json.decode(read(out)).cases) do
      local got = tok:encode(c.text, c.bos)
      if ids_str(got) ~= ids_str(c.ids) then
        error(string.format("%s: %q: ours %s, python %s", v[1], c.text, ids_str(got), ids_str(c.ids)))
      end
      if not c.bos and not v[2].gpt2 then eq(tok:decode(got), c.text, "round trip") end
      n = n + 1
    end
    truthy(n >= 600, v[1] .. ": 600 cases, found " .. n)
  end
end)

test("bpe: refusals name the key", function()
  raises(function() sl.tokenizer_c.load(bpe_file("n.json", {override = {normalizer = {type = "NFC"}}})) end,
    "normalizer", "normalizer")
  raises(function() sl.tokenizer_c.load(bpe_file("d.json", {override = {decoder = {type = "Metaspace"}}})) end,
    "decoder", "decoder")
  raises(function() sl.tokenizer_c.load(bpe_file("p.json", {override = {pre_tokenizer = {type = "Whitespace"}}})) end,
    "pre_tokenizer", "pre-tokenizer")
  raises(function() sl.tokenizer_c.load(bpe_file("r.json", {override = {pre_tokenizer = {type = "Split",
    pattern = {Regex = "(unclosed"}, behavior = "Isolated", invert = false}}})) end, "libpcre2", "bad regex")
  raises(function() sl.tokenizer_c.load(bpe_file("v.json"), 100) end, "vocab_size", "model vocab smaller")
  write(TMP .. "/m.json", (tokenizer_json{}):gsub('"merges":%[', '"merges":["x' .. mapped("q") .. ' zz",', 1))
  raises(function() sl.tokenizer_c.load(TMP .. "/m.json") end, "merges[0]", "merge of unknown tokens")
  write(TMP .. "/bad.json", "{\"model\": ")
  raises(function() sl.tokenizer_c.load(TMP .. "/bad.json") end, "invalid JSON", "truncated JSON")
  -- found by fuzz_tokenizer_json: one id near 2^31 sized the id table at 32 GB
  local far, n_far = (tokenizer_json{}):gsub('"id":267', '"id":2000000000', 1)
  eq(n_far, 1, "the added token's id was rewritten")
  write(TMP .. "/far.json", far)
  raises(function() sl.tokenizer_c.load(TMP .. "/far.json") end, "token ids run to 2000000000", "id far past the count")
end)

test("model loader: tokenizer.model / tokenizer.json next to the weights", function()
  local dir = TMP .. "/model"
  sh("mkdir -p " .. dir .. " && cp experiments/data/tinystories260k/model.bin " .. dir .. "/model.bin")
  -- a SentencePiece tokenizer.model is picked up (vocab 300 < the model's 512)
  sh("cp " .. TMP .. "/spm_unigram.model " .. dir .. "/tokenizer.model")
  local m = sl.model.load(dir .. "/model.bin")
  local ref = sl.tokenizer_c.load(TMP .. "/spm_unigram.model")
  eq(ids_str(m:encode("Tom was happy")), ids_str(ref:encode("Tom was happy", true)), "tokenizer.model used")
  -- without it, tokenizer.json
  os.remove(dir .. "/tokenizer.model")
  write(dir .. "/tokenizer.json", tokenizer_json{})
  local m2 = sl.model.load(dir .. "/model.bin")
  eq(ids_str(m2:encode("hello the")), ids_str{266, 256, 261, 111, 258}, "tokenizer.json used, BOS from its template")
  eq(m2:decode{256, 261, 111}, "hello", "decode through the model")
end)

os.execute("rm -rf " .. TMP)
H.done()
