/* cpu/attn_lines.h — attn.lines on the CPU (attn_lines.c, issue 19): the
 * kernel (also declared with every kernel in cpu.h) and its scratch size,
 * which the attn family's scratch function (attn.c) asks for. */
#ifndef SL_CPU_ATTN_LINES_H
#define SL_CPU_ATTN_LINES_H

#include "../internal.h"

sl_status sl__cpu_attn_lines(const sl__kargs *a);
/* Scratch bytes of attn.lines on n_threads threads. */
size_t sl__cpu_attn_lines_scratch(const sl_tensor *in, int n_threads);

#endif
