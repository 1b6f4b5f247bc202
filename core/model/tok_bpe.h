/* tok_bpe.h — byte-level BPE tokenizers as Hugging Face ships them in
 * tokenizer.json (GPT-2, Llama 3): model "BPE" over the byte-to-unicode
 * alphabet, pre-tokenizer Split(Regex, Isolated) and/or ByteLevel (its
 * GPT-2 regex when use_regex), added tokens split out of the text first, BOS /
 * EOS from a TemplateProcessing post-processor. Regexes run through libpcre2
 * (UTF + UCP), the JSON through cJSON. Everything else in tokenizer.json is
 * refused with a message naming the key. */
#ifndef SL_TOK_BPE_H
#define SL_TOK_BPE_H

#include "internal.h"

typedef struct sl__bpe sl__bpe;

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlongs,
 * surrogates or code points past U+10FFFF; at most avail bytes) and its code
 * point in *cp, or 0 when the byte starts none. */
size_t sl__utf8_next(const unsigned char *p, size_t avail, uint32_t *cp);

sl_status sl__bpe_load(sl_ctx *ctx, const char *path, sl__bpe **out);
void sl__bpe_free(sl_ctx *ctx, sl__bpe *b);
/* One past the largest id (vocabulary and added tokens). */
int32_t sl__bpe_size(const sl__bpe *b);
/* The template's BOS / EOS ids, -1 when the post-processor adds none. */
int32_t sl__bpe_bos(const sl__bpe *b);
int32_t sl__bpe_eos(const sl__bpe *b);
/* Encodes text[0, len) (valid UTF-8); ids becomes a new I32 tensor. */
sl_status sl__bpe_encode(sl_ctx *ctx, const sl__bpe *b, const char *text, size_t len, int bos, int eos, sl_tensor *ids);
/* The bytes of one id (added tokens: their content); at most bn - 1 written and
 * a NUL; returns the full length (0 for an id no token has). */
size_t sl__bpe_piece(const sl__bpe *b, int32_t id, char *buf, size_t bn);

#endif
