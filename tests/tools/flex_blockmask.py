#!/usr/bin/python3
"""flex_blockmask.py — an independent reader of sl.mask.save files (issue 18).

  flex_blockmask.py FILE.safetensors [RULE ...]

Reads the safetensors file with numpy only (8-byte little-endian header length,
JSON header, raw little-endian arrays; written from the safetensors format
description, not from sparselab's writer) and rebuilds the dense mask from the
BlockMask arrays by FlexAttention's documented semantics
(torch.nn.attention.flex_attention.BlockMask):

  * query block qb covers rows [qb*Q_BLOCK, (qb+1)*Q_BLOCK), kv block kb keys
    [kb*KV_BLOCK, (kb+1)*KV_BLOCK), clipped to seq_lengths;
  * full_kv_indices[b, h, qb, :full_kv_num_blocks[b, h, qb]] are computed
    without mask_mod: every pair kept;
  * kv_indices[b, h, qb, :kv_num_blocks[b, h, qb]] are computed with mask_mod:
    a pair is kept when mask_mod(b, h, q, kv) is true;
  * every other block is skipped: no pair kept;
  * a head dimension of 1 broadcasts over the heads.

It checks (exit 1 with a message on the first failure):
  1. the file's arrays have the documented dtypes and shapes, counts within
     0..n_kb, listed indices in range and not repeated, no block both full and
     partial;
  2. the rebuild with mask_mod = the stored bits equals the bits (so full
     blocks hold only kept pairs and skipped blocks none);
  3. for each RULE given (one per head, or one for all heads), the rebuild with
     mask_mod = that rule, computed here, equals the rule: the block lists
     cover every kept pair and mark full only blocks whose pairs are all kept.
     RULE is window:W[,sink:S] (kept: 0 <= q-kv < W, or kv < S and kv <= q).
Prints one line "ok H=.. n_q=.. blocks=.. full=.. partial=..".
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"I32": "<i4", "U8": "u1", "I64": "<i8", "F32": "<f4", "BOOL": "u1"}


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype=DTYPES[meta["dtype"]])
        out[name] = (meta["dtype"], arr.reshape(meta["shape"]))
    return out


def fail(msg):
    print("flex_blockmask: " + msg)
    sys.exit(1)


def rule_fn(spec):
    kw = dict(p.split(":") for p in spec.split(","))
    w, s = int(kw.get("window", 0)), int(kw.get("sink", 0))
    def f(q, kv):
        d = q - kv
        return ((d >= 0) & (d < w)) | ((kv < s) & (kv <= q))
    return f


def rebuild(t, mask_mod, n_heads):
    bq, bk = (int(x) for x in t["block_size"][1])
    n_q, n_k = (int(x) for x in t["seq_lengths"][1])
    kvn, kvi = t["kv_num_blocks"][1], t["kv_indices"][1]
    fn, fi = t["full_kv_num_blocks"][1], t["full_kv_indices"][1]
    dense = np.zeros((n_heads, n_q, n_k), dtype=bool)
    for h in range(n_heads):
        hh = h if kvn.shape[1] > 1 else 0
        for qb in range(kvn.shape[2]):
            q0, q1 = qb * bq, min((qb + 1) * bq, n_q)
            qs = np.arange(q0, q1)[:, None]
            for kb in fi[0, hh, qb, :fn[0, hh, qb]]:
                dense[h, q0:q1, kb * bk:min((kb + 1) * bk, n_k)] = True
            for kb in kvi[0, hh, qb, :kvn[0, hh, qb]]:
                k0, k1 = kb * bk, min((kb + 1) * bk, n_k)
                ks = np.arange(k0, k1)[None, :]
                dense[h, q0:q1, k0:k1] = mask_mod(h, qs, ks)
    return dense


def main(argv):
    t = load(argv[1])
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "block_size", "seq_lengths"):
        if name not in t:
            fail("missing tensor " + name)
        if t[name][0] != "I32":
            fail("%s: expected I32, found %s" % (name, t[name][0]))
    bq, bk = (int(x) for x in t["block_size"][1])
    n_q, n_k = (int(x) for x in t["seq_lengths"][1])
    n_qb, n_kb = -(-n_q // bq), -(-n_k // bk)
    kvn, kvi = t["kv_num_blocks"][1], t["kv_indices"][1]
    fn, fi = t["full_kv_num_blocks"][1], t["full_kv_indices"][1]
    H = kvn.shape[1]
    if kvn.shape != (1, H, n_qb) or fn.shape != (1, H, n_qb):
        fail("num_blocks shape %s / %s, expected (1, %d, %d)" % (kvn.shape, fn.shape, H, n_qb))
    if kvi.shape != (1, H, n_qb, n_kb) or fi.shape != (1, H, n_qb, n_kb):
        fail("indices shape %s / %s, expected (1, %d, %d, %d)" % (kvi.shape, fi.shape, H, n_qb, n_kb))
    n_full = n_part = 0
    for h in range(H):
        for qb in range(n_qb):
            p = list(kvi[0, h, qb, :kvn[0, h, qb]])
            f = list(fi[0, h, qb, :fn[0, h, qb]])
            if not (0 <= kvn[0, h, qb] <= n_kb and 0 <= fn[0, h, qb] <= n_kb):
                fail("head %d q block %d: counts %d, %d outside 0..%d" % (h, qb, kvn[0, h, qb], fn[0, h, qb], n_kb))
            if len(set(p)) != len(p) or len(set(f)) != len(f) or set(p) & set(f):
                fail("head %d q block %d: repeated or both full and partial: %s / %s" % (h, qb, p, f))
            if any(not 0 <= x < n_kb for x in p + f):
                fail("head %d q block %d: index outside 0..%d" % (h, qb, n_kb - 1))
            n_full += len(f)
            n_part += len(p)
    if "bits" in t:
        bits = t["bits"][1].astype(bool)
        heads = bits.shape[0]
        got = rebuild(t, lambda h, q, kv: bits[h, q, kv], heads)
        if not np.array_equal(got, bits):
            h, q, kv = np.argwhere(got != bits)[0]
            fail("rebuild with mask_mod = bits differs from bits at head %d (q %d, kv %d): %d vs %d"
                 % (h, q, kv, got[h, q, kv], bits[h, q, kv]))
    rules = [rule_fn(s) for s in argv[2:]]
    if rules:
        heads = max(H, len(rules))
        mod = lambda h, q, kv: rules[h if len(rules) > 1 else 0](q, kv)
        got = rebuild(t, mod, heads)
        qq, kk = np.meshgrid(np.arange(n_q), np.arange(n_k), indexing="ij")
        for h in range(heads):
            want = mod(h, qq, kk)
            if not np.array_equal(got[h], want):
                q, kv = np.argwhere(got[h] != want)[0]
                fail("rebuild with mask_mod = rule %s differs at head %d (q %d, kv %d): %d vs %d"
                     % (argv[2 + (h if len(rules) > 1 else 0)], h, q, kv, got[h, q, kv], want[q, kv]))
    print("ok H=%d n_q=%d n_k=%d blocks=%dx%d full=%d partial=%d" % (H, n_q, n_k, bq, bk, n_full, n_part))


if __name__ == "__main__":
    main(sys.argv)
