/* json.h — JSON files (the safetensors header, config.json) parsed by cJSON
 * (Debian libcjson), with the checks cJSON leaves to its caller. */
#ifndef SL_JSON_H
#define SL_JSON_H

#include "internal.h"

#include <cJSON.h>

/* Parses text[0, len) (not NUL-terminated) as one JSON value followed only
 * by white space (space, tab, LF, CR). base is the text's offset in its file:
 * messages give byte offsets in the file, counted from 0. Beyond cJSON's own
 * grammar it refuses a byte-order mark, control bytes other than tab, LF and
 * CR (cJSON takes them for white space), the escape \u0000 (strings here are
 * C strings; cJSON would cut them there), numbers outside double range and
 * containers nested deeper than max_depth (the top value counts as 1).
 * A syntax error is one line, SL_EFORMAT: "<path>: invalid JSON at byte N
 * near '<up to 16 bytes>'". On success *root is the tree (cJSON_Delete it). */
sl_status sl__json_parse(sl_ctx *ctx, const char *path, const char *text, size_t len, size_t base, int max_depth,
                         cJSON **root);

/* The text of the regular file path, at most max bytes, into *text (NUL-
 * terminated, *n its length; sl_ctx_dealloc it with *n + 1). On failure
 * *text is NULL and the message names the path: cannot open, not a regular
 * file, "expected at most <max> bytes of JSON", or a short read. */
sl_status sl__json_read_file(sl_ctx *ctx, const char *path, long long max, char **text, size_t *n);

/* A short text of v for a message: 12, "F32" (quoted, control bytes as '?'),
 * true, null, [0, 24, 24], {...}; cut with "..." to fit n bytes. */
void sl__json_describe(const cJSON *v, char *buf, size_t n);

/* 1 when v is a number with an integral value in [lo, hi]. */
int sl__json_integral(const cJSON *v, double lo, double hi);

#endif
