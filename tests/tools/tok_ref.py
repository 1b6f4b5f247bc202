#!/usr/bin/python3
"""tok_ref.py — reference tokenizations for tests/lua/test_tokenizers.lua (issue 18).

  tok_ref.py spm OUTDIR SEED TEXT...
      trains two small SentencePiece models on the texts with Debian's
      python3-sentencepiece (unigram without byte fallback, BPE with byte
      fallback), draws test strings (sentences and windows of the texts, and
      random strings with characters the models never saw), and writes
      OUTDIR/spm_ref.json: {"models": {name: path}, "cases": [{"model", "text",
      "ids", "decoded"}]} with the library's own encode and decode.

  tok_ref.py bpe TOKENIZER_JSON OUT SEED N
      reads a byte-level BPE tokenizer.json and encodes N random strings (and
      the fixed ones below) with the implementation in this file, written from
      the GPT-2 description (bytes_to_unicode, merge every occurrence of the
      lowest-ranked bigram until none is left) and the `regex` module (Debian
      python3-regex) for the pre-tokenizer patterns; writes {"cases": [{"text",
      "ids", "bos"}]}. Shares no code with core/model/tok_bpe.c.
"""
import json
import os
import random
import sys


def spm_mode(outdir, seed, texts):
    import sentencepiece as spm

    rng = random.Random(seed)
    corpus = os.path.join(outdir, "corpus.txt")
    lines = []
    for t in texts:
        with open(t, encoding="utf-8") as f:
            lines += [l.strip() for l in f.read().split("\n") if l.strip()]
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    models = {}
    for name, kw in (("unigram", dict(model_type="unigram", vocab_size=300)),
                     ("bpe_bytes", dict(model_type="bpe", vocab_size=420, byte_fallback=True))):
        prefix = os.path.join(outdir, "spm_" + name)
        spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, character_coverage=1.0,
                                       minloglevel=2, num_threads=1, seed_sentencepiece_size=20000, **kw)
        models[name] = prefix + ".model"
    joined = " ".join(lines)
    odd = ["é", "ß", "中", "文", "😀", "\t", "  ", "\n", "0", "7", "!", "'", "-", "Ω", "ñ"]
    strings = ["", " ", "Hello world", "  leading and trailing  ", "Tom's cat\tran.\nThe end."]
    strings += rng.sample(lines, min(60, len(lines)))
    for _ in range(60):
        a = rng.randrange(len(joined) - 80)
        strings.append(joined[a:a + rng.randrange(1, 80)])
    for _ in range(60):
        s = []
        for _ in range(rng.randrange(1, 25)):
            s.append(rng.choice(odd) if rng.random() < 0.3 else rng.choice(joined))
        strings.append("".join(s))
    cases = []
    for name, path in models.items():
        sp = spm.SentencePieceProcessor(model_file=path)
        for s in strings:
            ids = sp.encode(s)
            cases.append({"model": name, "text": s, "ids": ids, "decoded": sp.decode(ids)})
        meta = {"bos": sp.bos_id(), "eos": sp.eos_id(), "size": sp.get_piece_size()}
        cases.append({"model": name, "meta": meta})
    with open(os.path.join(outdir, "spm_ref.json"), "w", encoding="utf-8") as f:
        json.dump({"models": models, "cases": cases}, f, ensure_ascii=False)


# ---- byte-level BPE, independent --------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class RefBPE:
    def __init__(self, tj):
        import regex
        m = tj["model"]
        self.vocab = m["vocab"]
        self.ignore_merges = bool(m.get("ignore_merges"))
        self.ranks = {}
        for i, mg in enumerate(m.get("merges") or []):
            pair = tuple(mg.split(" ")) if isinstance(mg, str) else tuple(mg)
            self.ranks.setdefault(pair, i)
        self.added = {a["content"]: a["id"] for a in tj.get("added_tokens") or []}
        self.b2u = bytes_to_unicode()
        self.steps = []

        def walk(p):
            if p["type"] == "Sequence":
                for q in p["pretokenizers"]:
                    walk(q)
            elif p["type"] == "Split":
                self.steps.append(("re", regex.compile(p["pattern"]["Regex"]), False))
            elif p["type"] == "ByteLevel":
                pat = regex.compile(GPT2) if p.get("use_regex", True) else None
                self.steps.append(("bl", pat, bool(p.get("add_prefix_space"))))
            else:
                raise ValueError(p["type"])

        walk(tj["pre_tokenizer"])
        self.bos = None
        pp = tj.get("post_processor")
        if pp and pp["type"] == "TemplateProcessing":
            first = pp["single"][0]
            if "SpecialToken" in first:
                self.bos = pp["special_tokens"][first["SpecialToken"]["id"]]["ids"][0]

    @staticmethod
    def isolate(pat, s):
        out, pos = [], 0
        for mt in pat.finditer(s):
            if mt.start() == mt.end():
                continue
            out += [s[pos:mt.start()], mt.group(0)]
            pos = mt.end()
        out.append(s[pos:])
        return [x for x in out if x]

    def bpe(self, word):
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        parts = list(word)
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.vocab[p] for p in parts]

    def encode(self, text, bos):
        segs, pos, i = [], 0, 0
        while i < len(text):
            hit = max((a for a in self.added if text.startswith(a, i)), key=len, default=None)
            if hit is None:
                i += 1
                continue
            segs += [(text[pos:i], None), (hit, self.added[hit])]
            i += len(hit)
            pos = i
        segs.append((text[pos:], None))
        pieces = [s for s in segs if s[0]]
        for kind, pat, prefix in self.steps:
            nxt = []
            for s, aid in pieces:
                if aid is not None:
                    nxt.append((s, aid))
                    continue
                if kind == "bl" and prefix and not s.startswith(" "):
                    s = " " + s
                nxt += [(x, None) for x in (self.isolate(pat, s) if pat else [s])]
            pieces = nxt
        ids = [self.bos] if bos and self.bos is not None else []
        for s, aid in pieces:
            if aid is not None:
                ids.append(aid)
            else:
                ids += self.bpe("".join(self.b2u[b] for b in s.encode("utf-8")))
        return ids


def bpe_mode(tokjson, out, seed, n):
    with open(tokjson, encoding="utf-8") as f:
        tj = json.load(f)
    ref = RefBPE(tj)
    rng = random.Random(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyzHELOT0123456789 '.,!?-") + \
        [" ", " ", "  ", "\n", "\r\n", "\t", "é", "ß", "中", "😀", "'s", "'LL", "'ve", "hello", " the", "ing"]
    alphabet += list(ref.added)
    strings = ["hello the", "shell", "ring  in", "a<|eot|>b", "héllo", "  ", "HELLO's", "", " ", "\n\n  x"]
    for _ in range(n):
        strings.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30))))
    cases = []
    for s in strings:
        for bos in (False, True):
            cases.append({"text": s, "bos": bos, "ids": ref.encode(s, bos)})
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"cases": cases}, f, ensure_ascii=False)


if __name__ == "__main__":
    if sys.argv[1] == "spm":
        spm_mode(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif sys.argv[1] == "bpe":
        bpe_mode(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: tok_ref.py spm OUTDIR SEED TEXT... | bpe TOKENIZER_JSON OUT SEED N")
