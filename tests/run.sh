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
# One line per suite: "ok NAME  N s", then its distinct SKIP lines once each; a failing suite's line
# is followed by the last 60 lines of its output. VERBOSE=1 prints every suite's whole output.
LOG=$(mktemp /tmp/slrun.XXXXXX)
trap 'rm -f "$LOG" "$LOG.rc"' EXIT
run() {
    name=$1; shift
    t0=$(date +%s)
    if [ "${VERBOSE:-0}" = 1 ]; then
        echo "== $name"
        { "$@"; echo $? >"$LOG.rc"; } 2>&1 | tee "$LOG"
        rc=$(cat "$LOG.rc")
    else
        "$@" >"$LOG" 2>&1
        rc=$?
    fi
    secs=$(( $(date +%s) - t0 ))
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1))
        printf 'ok    %-34s %4d s\n' "$name" "$secs"
    else
        failed=$((failed + 1))
        printf 'FAIL  %-34s %4d s (exit %d)\n' "$name" "$secs" "$rc"
        tail -n 60 "$LOG" | sed 's/^/      /'
    fi
    grep '^SKIP' "$LOG" | sort -u | sed 's/^/      /'
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
run test_viz.sh sh tests/cli/test_viz.sh
# Peak memory is measured on the plain build only: under the sanitizers RSS is mostly
# shadow memory and the allocator's quarantine of freed blocks, not the program's own.
if [ -n "$preload" ]; then
    echo "== mem_sweep: skipped in a sanitised build (its RSS is ASan's shadow and quarantine; make test measures memory)"
else
    run mem_sweep sh tests/tools/mem_sweep.sh "$BUILD"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" = 0 ]
