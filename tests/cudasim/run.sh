#!/bin/sh
# tests/cudasim/run.sh BUILD SUITE... — the simulator's self-test, then each
# op suite with SL_TEST_BACKENDS=ref,cpu,cuda in every order of
# $CUDASIM_ORDERS (default "normal reverse"; the orders run side by side).
# Fails on any failure and on any SKIP of the cuda backend.
set -u
build=$1
shift
orders=${CUDASIM_ORDERS:-normal reverse}
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
status=0

for o in $orders; do
    if SL_CUDASIM_ORDER=$o "$build/tests/cudasim/selftest" >"$log/selftest.$o" 2>&1; then
        echo "== cudasim selftest ($o): $(tail -n 1 "$log/selftest.$o")"
    else
        echo "== cudasim selftest ($o): FAILED"
        cat "$log/selftest.$o"
        status=1
    fi
done

run_order() {
    for t in "$@"; do
        s=$(date +%s)
        SL_CUDASIM_ORDER=$o SL_TEST_BACKENDS=ref,cpu,cuda "$build/tests/$t" >"$log/$t.$o" 2>&1
        echo $? >"$log/$t.$o.rc"
        echo $(($(date +%s) - s)) >"$log/$t.$o.s"
    done
}
for o in $orders; do
    run_order "$@" &
done
wait

for t in "$@"; do
    for o in $orders; do
        rc=$(cat "$log/$t.$o.rc")
        checks=$(grep -E '^[0-9]+%: Checks' "$log/$t.$o" | tail -n 1)
        skips=$(grep -E '^SKIP .*cuda' "$log/$t.$o")
        if [ "$rc" != 0 ] || [ -n "$skips" ] || [ -z "$checks" ]; then
            echo "== $t (cuda, $o order): FAILED (exit $rc)"
            cat "$log/$t.$o"
            status=1
        else
            echo "== $t (cuda, $o order): $checks ($(cat "$log/$t.$o.s") s)"
        fi
    done
done
exit $status
