/* tok_spm.h — a C face for Debian's libsentencepiece (a C++ library), so that
 * the core stays C11: tok_spm.cc is the only C++ file and the only one that
 * includes sentencepiece_processor.h. Every function catches what the library
 * throws; failures come back as 0 with a one-line message in err[0, en). The
 * shim allocates with malloc; what it hands out is released with free(). */
#ifndef SL_TOK_SPM_H
#define SL_TOK_SPM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sl__spm sl__spm;

/* Loads a SentencePiece model file (tokenizer.model). 1 on success. */
int sl__spm_load(const char *path, sl__spm **out, char *err, size_t en);
void sl__spm_free(sl__spm *p);
/* Number of ids, and the BOS / EOS ids (-1 when the model has none). */
int32_t sl__spm_size(const sl__spm *p);
int32_t sl__spm_bos(const sl__spm *p);
int32_t sl__spm_eos(const sl__spm *p);
/* Encodes text[0, len) with the model's normaliser and dummy prefix; *ids is
 * malloc'ed (*n ids; NULL when *n is 0). 1 on success. */
int sl__spm_encode(const sl__spm *p, const char *text, size_t len, int32_t **ids, size_t *n, char *err, size_t en);
/* Decodes ids[0, n) as SentencePiece does (dummy prefix removed, byte pieces
 * joined, control ids give nothing); *text is malloc'ed and NUL-terminated
 * (*len bytes before the NUL). 1 on success. */
int sl__spm_decode(const sl__spm *p, const int32_t *ids, size_t n, char **text, size_t *len, char *err, size_t en);
/* The bytes of one id decoded on its own, without removing a dummy prefix:
 * U+2581 becomes a space, <0xNN> the byte, control and unknown ids nothing.
 * Writes at most bn - 1 bytes and a NUL; returns the full length. */
size_t sl__spm_piece(const sl__spm *p, int32_t id, char *buf, size_t bn);

#ifdef __cplusplus
}
#endif

#endif
