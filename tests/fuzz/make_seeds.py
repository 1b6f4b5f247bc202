#!/usr/bin/env python3
"""make_seeds.py — writes the seed corpora of tests/fuzz (small valid files
of every format the targets read, plus a few near misses), deterministic.
Run from the repository root: python3 tests/fuzz/make_seeds.py"""
import json, os, random, struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
rng = random.Random(19)

def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def f32s(n, scale=0.1):
    return struct.pack("<%df" % n, *[rng.gauss(0, scale) for _ in range(n)])

# ---- npy ----
def npy(descr, shape, payload, version=1):
    hdr = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, "".join("%d, " % s for s in shape) if len(shape) != 1 else "%d," % shape[0])
    pad = 64 - (10 + len(hdr) + 1) % 64
    hdr = hdr + " " * pad + "\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<H", len(hdr)) + hdr.encode() + payload

put("npy", "f32_2x3", npy("<f4", (2, 3), f32s(6)))
put("npy", "f64_4", npy("<f8", (4,), struct.pack("<4d", 1, 2, 3, 4)))
put("npy", "f16_2x2", npy("<f2", (2, 2), struct.pack("<4e", 1, -2, 0.5, 3)))
put("npy", "i32_3", npy("<i4", (3,), struct.pack("<3i", 1, -7, 9)))
put("npy", "u8_1x2x2", npy("|u1", (1, 2, 2), bytes([1, 0, 255, 3])))
put("npy", "scalar", npy("<f4", (), f32s(1)))
put("npy", "truncated", npy("<f4", (4, 4), f32s(3)))

# ---- safetensors ----
def safetensors(tensors, meta=None):
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob

put("safetensors", "qkv", safetensors({"q": ("F32", (2, 4, 2), f32s(16)), "k": ("F32", (1, 4, 2), f32s(8)),
                                       "v": ("F32", (1, 4, 2), f32s(8))}, {"format": "pt"}))
put("safetensors", "dtypes", safetensors({"a": ("F16", (2,), struct.pack("<2e", 1, 2)),
                                          "b": ("BF16", (2,), b"\x80\x3f\x00\x40"),
                                          "c": ("I32", (1,), struct.pack("<i", 5)),
                                          "d": ("U8", (3,), b"\x01\x02\x03"),
                                          "e": ("F64", (1,), struct.pack("<d", 2.5))}))
put("safetensors", "empty", safetensors({}))

# ---- llama2.c checkpoint ----
def llama2c(dim=8, hidden=16, layers=1, heads=2, kv_heads=1, vocab=16, seq=8, shared=True):
    hd, kvd = dim // heads, (dim // heads) * kv_heads
    out = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq)
    n = vocab * dim + layers * (dim + dim * dim + 2 * dim * kvd + dim * dim + dim + 3 * dim * hidden) + dim
    n += seq * hd  # freq_cis_real and freq_cis_imag: seq * hd/2 each
    if not shared:
        n += vocab * dim
    return out + f32s(n)

put("llama2c", "tiny_shared", llama2c())
put("llama2c", "tiny_cls", llama2c(shared=False, layers=2, heads=2, kv_heads=2))
put("llama2c", "header_only", struct.pack("<7i", 8, 16, 1, 2, 1, 16, 8))

# ---- tokenizer (first two bytes: vocab_size - 1, little-endian) ----
def tokenizer(pieces, max_len=None):
    max_len = max_len or max(len(p) for p in pieces)
    out = struct.pack("<i", max_len)
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i), len(p)) + p
    return struct.pack("<H", len(pieces) - 1) + out

pieces = [b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % i for i in range(256)] + [b" ", b"e", b"l", b"o", b"H", b"ll", b" w", b"rl", b"d"]
put("tokenizer", "bytes_fallback", tokenizer(pieces))
put("tokenizer", "small", tokenizer([b"<unk>", b"<s>", b"</s>", b"a", b"b", b"ab", b" "]))

# ---- HF config + safetensors (two bytes: config length) ----
def hf(dim=8, hidden=16, layers=1, heads=2, kv_heads=1, vocab=16, tie=True, extra=None):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": dim,
           "intermediate_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "max_position_embeddings": 8, "tie_word_embeddings": tie, "rope_scaling": None}
    cfg.update(extra or {})
    hd = dim // heads
    t = {"model.embed_tokens.weight": ("F32", (vocab, dim), f32s(vocab * dim)), "model.norm.weight": ("F32", (dim,), f32s(dim))}
    for l in range(layers):
        p = "model.layers.%d." % l
        t[p + "self_attn.q_proj.weight"] = ("F32", (dim, dim), f32s(dim * dim))
        t[p + "self_attn.k_proj.weight"] = ("F32", (kv_heads * hd, dim), f32s(kv_heads * hd * dim))
        t[p + "self_attn.v_proj.weight"] = ("F32", (kv_heads * hd, dim), f32s(kv_heads * hd * dim))
        t[p + "self_attn.o_proj.weight"] = ("F32", (dim, dim), f32s(dim * dim))
        t[p + "mlp.gate_proj.weight"] = ("F32", (hidden, dim), f32s(hidden * dim))
        t[p + "mlp.up_proj.weight"] = ("F32", (hidden, dim), f32s(hidden * dim))
        t[p + "mlp.down_proj.weight"] = ("F32", (dim, hidden), f32s(hidden * dim))
        t[p + "input_layernorm.weight"] = ("F32", (dim,), f32s(dim))
        t[p + "post_attention_layernorm.weight"] = ("F32", (dim,), f32s(dim))
    if not tie:
        t["lm_head.weight"] = ("F32", (vocab, dim), f32s(vocab * dim))
    c = json.dumps(cfg).encode()
    return struct.pack("<H", len(c)) + c + safetensors(t)

put("hf", "tiny_tied", hf())
put("hf", "tiny_head", hf(tie=False, layers=2, kv_heads=2))
put("hf", "mistral", hf(extra={"model_type": "mistral", "sliding_window": 4}))
# the vocabulary of tokenizer/bytes_fallback (268 pieces): test_mutate.sh runs it with that tokenizer
put("hf", "vocab268", hf(vocab=268, extra={"max_position_embeddings": 64}))

# ---- tokenizer.json (byte-level BPE; fuzz_tokenizer_json) ----
def b2u():
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    m, n = {}, 0
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(256 + n)
            n += 1
    return m

def bpe_json(gpt2=False):
    B = b2u()
    mp = lambda s: "".join(B[c] for c in s.encode())
    vocab = {B[b]: b for b in range(256)}
    merges = []
    for i, (a, b) in enumerate([("h", "e"), (" ", "t"), (" t", "he"), ("i", "n"), ("in", "g")]):
        merges.append(mp(a) + " " + mp(b))
        vocab[mp(a + b)] = 256 + i
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    pre = ({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True} if gpt2 else
           {"type": "Sequence", "pretokenizers": [
               {"type": "Split", "pattern": {"Regex": llama3}, "behavior": "Isolated", "invert": False},
               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]})
    t = {"version": "1.0",
         "added_tokens": [{"id": 261, "content": "<|bos|>", "special": True}],
         "normalizer": None, "pre_tokenizer": pre,
         "post_processor": {"type": "TemplateProcessing",
                            "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}}],
                            "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [261], "tokens": ["<|bos|>"]}}},
         "decoder": {"type": "ByteLevel"},
         "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False, "byte_fallback": False,
                   "ignore_merges": False, "vocab": vocab, "merges": merges}}
    return json.dumps(t, ensure_ascii=False)

put("tokenizer_json", "llama3_split", bpe_json())
put("tokenizer_json", "gpt2_bytelevel", bpe_json(gpt2=True))

# ---- calibration JSON ----
cal = {"format": "sparselab-calibration", "version": 1, "method": "vertical_slash", "card": "vertical_slash",
       "created": "2026-01-01T00:00:00Z", "params": {"from_row": 12},
       "config": {"layers": [[{"type": "vertical_and_slash", "vertical_size": 4, "slash_size": 6, "score": 0.9},
                              {"type": "vertical_and_slash", "vertical_size": 2, "slash_size": 3, "score": 0.8}]],
                  "from_row": 12}}
put("calibration", "vs", json.dumps(cal))
put("calibration", "wrong_version", json.dumps(dict(cal, version=2)))
put("calibration", "json_kinds", '{"a": [1, 2.5e-3, -0, true, false, null, "\\u00e9\\n"], "b": {"c": {}}}')
