#!/bin/sh
# test_durability.sh — the durability loop of issue 19: a sweep (480 short
# points, 2 workers) whose parent is killed with SIGKILL at random moments,
# KILLS times (default 20; every kill lands on a live parent), each time
# started again with --resume; then one last run to the end. After every
# kill: PRAGMA integrity_check is ok, each point key is recorded at most
# once, and every row committed before the kill is still there, unchanged
# (key, status and metrics). At the end: all 480 points, each exactly once.
# SEED (default 19) fixes the kill moments. Closes with "durability: N passed, N failed".
set -u
BUILD=${BUILD:-build}
SL="$BUILD/sparselab"
KILLS=${KILLS:-20}
SEED=${SEED:-19}
T=$(mktemp -d /tmp/sldur.XXXXXX)
trap 'rm -rf "$T"' EXIT
export SPARSELAB_TEST_METHODS=1
DB=$T/d.db
CFG=tests/cli/sweeps/durable.lua
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL $*" >&2; }
q() { "$SL" query "$DB" "$1" --csv | tail -n +2; }
# Every recorded row as one line: key, status, its metrics in name order.
snapshot() {
    q "SELECT r.point_key || ' ' || r.status || ' ' || coalesce((SELECT group_concat(name || '=' || value, ' ')
         FROM (SELECT name, value FROM metric m WHERE m.result_id = r.id ORDER BY name)), '')
       FROM result r ORDER BY r.point_key" >"$1"
}
: >"$T/prev"
kills=0
tries=0
while [ "$kills" -lt "$KILLS" ] && [ "$tries" -lt $((KILLS * 3)) ]; do
    tries=$((tries + 1))
    "$SL" sweep "$CFG" --db "$DB" --workers 2 --resume >"$T/out" 2>"$T/err" &
    parent=$!
    # a moment in 50 .. 650 ms, from the seed and the try
    ms=$(awk -v s="$SEED" -v t="$tries" 'BEGIN { srand(s * 1000 + t); printf "%d", 50 + 600 * rand() }')
    sleep "$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')"
    if kill -KILL "$parent" 2>/dev/null; then
        kills=$((kills + 1))
    fi
    wait "$parent" 2>/dev/null
    ic=$(q "PRAGMA integrity_check")
    [ "$ic" = ok ] && ok || bad "kill $kills: integrity_check: $ic"
    dup=$(q "SELECT count(*) - count(DISTINCT point_key) FROM result")
    [ "$dup" = 0 ] && ok || bad "kill $kills: $dup point keys recorded twice"
    snapshot "$T/now"
    missing=$(comm -23 "$T/prev" "$T/now" | wc -l)
    [ "$missing" = 0 ] && ok || bad "kill $kills: $missing committed rows changed or lost: $(comm -23 "$T/prev" "$T/now" | head -2)"
    mv "$T/now" "$T/prev"
done
[ "$kills" -ge "$KILLS" ] && ok || bad "only $kills kills landed on a live parent in $tries tries"
before=$(wc -l <"$T/prev")
"$SL" sweep "$CFG" --db "$DB" --workers 2 --resume >"$T/out" 2>"$T/err"
rc=$?
[ "$rc" = 0 ] && ok || bad "final run: exit $rc: $(head -c 300 "$T/err")"
snapshot "$T/now"
[ "$(comm -23 "$T/prev" "$T/now" | wc -l)" = 0 ] && ok || bad "final run changed committed rows"
got=$(q "SELECT count(*), count(DISTINCT point_key), sum(status = 'ok') FROM result")
[ "$got" = "480,480,480" ] && ok || bad "final: count, distinct keys, ok = $got, expected 480,480,480"
[ "$(q "PRAGMA integrity_check")" = ok ] && ok || bad "final integrity_check"
echo "durability: $kills kills ($before of 480 points committed by then), then the rest; $pass passed, $fail failed"
[ "$fail" = 0 ]
