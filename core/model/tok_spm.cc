// tok_spm.cc — the C face of libsentencepiece declared in tok_spm.h. The only
// C++ in the core: compiled on its own (Makefile rule for core/**.cc) and
// linked with -lstdc++. No state outside the sl__spm objects.
#include "tok_spm.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

struct sl__spm {
    sentencepiece::SentencePieceProcessor sp;
};

static void set_err(char *err, size_t en, const char *fmt, const char *a, const char *b)
{
    if (err && en)
        std::snprintf(err, en, fmt, a, b);
}

extern "C" int sl__spm_load(const char *path, sl__spm **out, char *err, size_t en)
{
    *out = nullptr;
    sl__spm *p = new (std::nothrow) sl__spm;
    if (!p) {
        set_err(err, en, "%s%s: out of memory loading a SentencePiece model", path, "");
        return 0;
    }
    try {
        auto st = p->sp.Load(path);
        if (!st.ok()) {
            set_err(err, en, "%s: not a SentencePiece model (libsentencepiece: %s)", path, st.ToString().c_str());
            delete p;
            return 0;
        }
    } catch (const std::exception &e) {
        set_err(err, en, "%s: not a SentencePiece model (libsentencepiece: %s)", path, e.what());
        delete p;
        return 0;
    }
    *out = p;
    return 1;
}

extern "C" void sl__spm_free(sl__spm *p) { delete p; }

extern "C" int32_t sl__spm_size(const sl__spm *p) { return (int32_t)p->sp.GetPieceSize(); }
extern "C" int32_t sl__spm_bos(const sl__spm *p) { return (int32_t)p->sp.bos_id(); }
extern "C" int32_t sl__spm_eos(const sl__spm *p) { return (int32_t)p->sp.eos_id(); }

extern "C" int sl__spm_encode(const sl__spm *p, const char *text, size_t len, int32_t **ids, size_t *n, char *err,
                              size_t en)
{
    *ids = nullptr;
    *n = 0;
    try {
        std::vector<int> v;
        auto st = p->sp.Encode(std::string(text, len), &v);
        if (!st.ok()) {
            set_err(err, en, "SentencePiece encode failed: %s%s", st.ToString().c_str(), "");
            return 0;
        }
        if (!v.empty()) {
            *ids = static_cast<int32_t *>(std::malloc(v.size() * sizeof(int32_t)));
            if (!*ids) {
                set_err(err, en, "SentencePiece encode: out of memory%s%s", "", "");
                return 0;
            }
            for (size_t i = 0; i < v.size(); i++)
                (*ids)[i] = (int32_t)v[i];
        }
        *n = v.size();
        return 1;
    } catch (const std::exception &e) {
        set_err(err, en, "SentencePiece encode failed: %s%s", e.what(), "");
        return 0;
    }
}

extern "C" int sl__spm_decode(const sl__spm *p, const int32_t *ids, size_t n, char **text, size_t *len, char *err,
                              size_t en)
{
    *text = nullptr;
    *len = 0;
    try {
        std::vector<int> v(ids, ids + n);
        std::string s;
        auto st = p->sp.Decode(v, &s);
        if (!st.ok()) {
            set_err(err, en, "SentencePiece decode failed: %s%s", st.ToString().c_str(), "");
            return 0;
        }
        *text = static_cast<char *>(std::malloc(s.size() + 1));
        if (!*text) {
            set_err(err, en, "SentencePiece decode: out of memory%s%s", "", "");
            return 0;
        }
        std::memcpy(*text, s.data(), s.size());
        (*text)[s.size()] = '\0';
        *len = s.size();
        return 1;
    } catch (const std::exception &e) {
        set_err(err, en, "SentencePiece decode failed: %s%s", e.what(), "");
        return 0;
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

extern "C" size_t sl__spm_piece(const sl__spm *p, int32_t id, char *buf, size_t bn)
{
    std::string out;
    try {
        if (id >= 0 && id < p->sp.GetPieceSize() && !p->sp.IsControl(id) && !p->sp.IsUnknown(id)) {
            const std::string &s = p->sp.IdToPiece(id);
            if (p->sp.IsByte(id) && s.size() == 6 && hexval(s[3]) >= 0 && hexval(s[4]) >= 0) {
                out.push_back((char)(hexval(s[3]) << 4 | hexval(s[4])));
            } else {
                static const char kSpace[] = "\xe2\x96\x81"; // U+2581, SentencePiece's space
                for (size_t i = 0; i < s.size();) {
                    if (s.compare(i, 3, kSpace) == 0) {
                        out.push_back(' ');
                        i += 3;
                    } else
                        out.push_back(s[i++]);
                }
            }
        }
    } catch (const std::exception &) {
        out.clear();
    }
    if (buf && bn) {
        size_t w = out.size() < bn - 1 ? out.size() : bn - 1;
        std::memcpy(buf, out.data(), w);
        buf[w] = '\0';
    }
    return out.size();
}
