/* test_op_dispatch.c — the dispatcher's own suite: every op of core/ops.def
 * has a ref and a cpu kernel and is found by its name; an unknown name is
 * not. */

#include "opsutil.h"

START_TEST(test_every_op_has_ref_and_cpu)
{
    for (int op = 0; op < SL_OP__COUNT; op++) {
        ck_assert_msg(sl_backend_supports(SL_BACKEND_REF, (sl_op)op), "%s lacks ref", sl_op_info_get((sl_op)op)->name);
        ck_assert_msg(sl_backend_supports(SL_BACKEND_CPU, (sl_op)op), "%s lacks cpu", sl_op_info_get((sl_op)op)->name);
        ck_assert_int_eq(sl_op_find(sl_op_info_get((sl_op)op)->name), op);
    }
    ck_assert_int_eq(sl_op_find("attn.nonexistent"), SL_OP__COUNT);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_every_op_has_ref_and_cpu);
}

int main(void) { return run_op_suite("op_dispatch", add_tests); }
