#!/bin/sh
# run.sh — every test that needs no GPU: the Check suites, the Lua module
# tests from a plain lua5.4, the include-graph check (no circles, no layer
# breaches), the REPL test and the CLI tests. Prints a closing
# "N passed, N failed" (suites, not checks) and exits non-zero on any failure.
set -u
BUILD=${BUILD:-build}
export BUILD
passed=0
failed=0
run() {
    name=$1; shift
    echo "== $name"
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "== $name FAILED"; fi
}
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] && run "$(basename "$t")" "$t"
done
# A sanitised module loads into the plain interpreter only with its runtime first.
preload=$(ldd "$BUILD/sparselab.so" 2>/dev/null | awk '/libasan|libubsan/ {print $3}' | tr '\n' ':')
for t in tests/lua/test_*.lua; do
    run "$(basename "$t")" env LD_PRELOAD="$preload" LUA_CPATH="$BUILD/?.so" lua5.4 "$t"
done
run deps_check_selftest lua5.4 tests/tools/deps_check.lua --selftest
run deps_check lua5.4 tests/tools/deps_check.lua
run readme_status env LD_PRELOAD="$preload" LUA_CPATH="$BUILD/?.so" lua5.4 tests/tools/readme_status.lua --check README.md
run test_cli.sh sh tests/cli/test_cli.sh
run test_sweep.sh sh tests/cli/test_sweep.sh
run mem_sweep sh tests/tools/mem_sweep.sh "$BUILD"
echo "suites: $passed passed, $failed failed"
[ "$failed" = 0 ]
