#!/bin/sh
# test_sweep.sh — `sparselab sweep` and `sparselab merge` as a user runs them:
# a 224-point sweep with 2 workers (each point key exactly once, keys equal to
# what db:record computes from the stored row), a parent killed with SIGKILL
# midway and resumed (workers exit, every point exactly once), a crashing, a
# failing and a hanging point recorded as failed with their signal while the
# others succeed, --resume retrying failed points without duplicating them,
# shards 1/2 + 2/2 merged equal to the unsharded key set, Ctrl-C (exit 130,
# work committed), two concurrent sweeps of one config on one database (each
# point once, both exit 0, the second reports the points it skipped as claimed),
# configs that loop, backtrack, tail-call forever or exhaust memory while they
# evaluate (exit 1 within --config-timeout / --config-memory, one line naming
# the file and the limit), and one-line errors for bad configs and options.
# Closes with "sweep: N passed, N failed".
set -u
BUILD=${BUILD:-build}
SL="$BUILD/sparselab"
D=tests/cli/sweeps
T=$(mktemp -d /tmp/slsweep.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL $*" >&2; }
expect_rc() {
    want=$1; desc=$2; shift 2
    "$@" >"$T/out" 2>"$T/err"
    got=$?
    if [ "$got" = "$want" ]; then ok; else bad "$desc: exit $got, expected $want; stderr: $(head -c 400 "$T/err")"; fi
}
one_line_err() {
    n=$(wc -l <"$T/err")
    if [ "$n" = 1 ] && grep -q "$1" "$T/err"; then ok; else bad "$2: expected one stderr line containing '$1', got $n: $(cat "$T/err")"; fi
}
q() { "$SL" query "$1" "$2" --csv | tail -n +2; }
# eq DESC GOT WANT
eq() { if [ "$2" = "$3" ]; then ok; else bad "$1: got '$2', expected '$3'"; fi; }
now() { date +%s.%N; }
# The key of every stored row, recomputed from its columns, equals point_key.
cat >"$T/keys.lua" <<'EOF'
local sl = require "sparselab"
local db = sl.store.open(arg[1])
local n, bad = 0, 0
for _, r in ipairs(db:query("SELECT * FROM result WHERE params_json NOT LIKE '%@target%'")) do
  local k = sl.store.point_key{method = r.method, params = r.params_json, workload = r.workload,
    workload_params = r.workload_params_json, phase = r.phase, layer = r.layer, head = r.head, n_q = r.n_q,
    n_k = r.n_k, head_dim = r.head_dim, heads = r.heads, kv_heads = r.kv_heads, backend = r.backend, budget = r.budget}
  n = n + 1
  if k ~= r.point_key then bad = bad + 1 end
end
print(n .. " " .. bad)
EOF

# ---- 224 points, 2 workers ----
expect_rc 0 "dry run" "$SL" sweep $D/big.lua --db "$T/dry.db" --dry-run
eq "dry run lists every point" "$(grep -c '^[0-9a-f]\{64\} ' "$T/out")" 224
t0=$(now)
expect_rc 0 "224-point sweep" "$SL" sweep $D/big.lua --db "$T/big.db" --workers 2
t1=$(now)
echo "224 points, 2 workers: $(echo "$t1 - $t0" | bc) s"
grep -q "224 ok, 0 failed" "$T/out" && ok || bad "sweep summary: $(cat "$T/out")"
grep -q "sweep: 224/224 (100%)" "$T/err" && ok || bad "plain progress lines: $(cat "$T/err")"
grep -q "warning" "$T/err" && bad "workers ended badly: $(grep warning "$T/err")" || ok
eq "each key once" "$(q "$T/big.db" "SELECT count(*), count(DISTINCT point_key), sum(status = 'ok') FROM result")" "224,224,224"
eq "metrics recorded" "$(q "$T/big.db" "SELECT count(*) FROM v_result WHERE rel_l2 IS NULL OR density IS NULL")" 0
eq "run finished ok" "$(q "$T/big.db" "SELECT status FROM run")" ok
expect_rc 0 "keys recomputed from rows" "$SL" run "$T/keys.lua" "$T/big.db"
eq "stored keys = point_key of the row" "$(cat "$T/out")" "224 0"
expect_rc 0 "second run skips everything" "$SL" sweep $D/big.lua --db "$T/big.db" --workers 2
grep -q "nothing to do" "$T/out" && ok || bad "rerun: $(cat "$T/out")"
eq "rerun adds nothing" "$(q "$T/big.db" "SELECT count(*) FROM result")" 224

# ---- shards 1/2 and 2/2, merged, equal the unsharded key set ----
expect_rc 0 "shard 1/2" "$SL" sweep $D/big.lua --db "$T/s1.db" --workers 2 --shard 1/2
expect_rc 0 "shard 2/2" "$SL" sweep $D/big.lua --db "$T/s2.db" --workers 2 --shard 2/2
n1=$(q "$T/s1.db" "SELECT count(*) FROM result")
n2=$(q "$T/s2.db" "SELECT count(*) FROM result")
echo "shards: $n1 + $n2 points"
[ "$n1" -gt 0 ] && [ "$n2" -gt 0 ] && [ $((n1 + n2)) = 224 ] && ok || bad "shard sizes $n1 + $n2"
expect_rc 0 "merge shards" "$SL" merge "$T/merged.db" "$T/s1.db" "$T/s2.db"
q "$T/merged.db" "SELECT point_key FROM result ORDER BY 1" >"$T/k_merged"
q "$T/big.db" "SELECT point_key FROM result ORDER BY 1" >"$T/k_big"
cmp -s "$T/k_merged" "$T/k_big" && ok || bad "merged shard keys differ from the unsharded sweep's"
eq "merged metrics" "$(q "$T/merged.db" "SELECT count(*) FROM metric")" "$(q "$T/big.db" "SELECT count(*) FROM metric")"
eq "merged runs" "$(q "$T/merged.db" "SELECT count(*) FROM run")" 2
expect_rc 0 "merge again (no duplicates)" "$SL" merge "$T/merged.db" "$T/s1.db" "$T/s2.db" "$T/big.db"
eq "merge is a union" "$(q "$T/merged.db" "SELECT count(*), count(DISTINCT point_key) FROM result")" "224,224"
eq "no run copied twice" "$(q "$T/merged.db" "SELECT count(*) FROM run")" 2

# ---- SIGKILL the parent midway, then --resume ----
export SPARSELAB_TEST_METHODS=1
"$SL" sweep $D/slow.lua --db "$T/kill.db" --workers 2 >"$T/kill.out" 2>"$T/kill.err" &
parent=$!
got=0
i=0
while [ $i -lt 100 ]; do # up to 10 s for the first committed batch
    sleep 0.1
    got=$(q "$T/kill.db" "SELECT count(*) FROM result" 2>/dev/null || echo 0)
    [ -n "$got" ] && [ "$got" -gt 0 ] && break
    i=$((i + 1))
done
workers=$(pgrep -P $parent | tr '\n' ' ')
kill -KILL $parent
wait $parent 2>/dev/null
before=$(q "$T/kill.db" "SELECT count(*) FROM result")
echo "killed the parent with $before of 240 points committed; workers: $workers"
[ "$before" -gt 0 ] && [ "$before" -lt 240 ] && ok || bad "kill midway: $before points committed"
[ -n "$workers" ] && ok || bad "no workers seen"
# Orphaned workers exit once their stdin closes (an exited one may linger as a
# zombie where nothing reaps it).
i=0
while [ $i -lt 50 ]; do
    alive=""
    for w in $workers; do
        st=$(ps -o stat= -p "$w" 2>/dev/null | cut -c1)
        [ -n "$st" ] && [ "$st" != Z ] && alive="$alive $w"
    done
    [ -z "$alive" ] && break
    sleep 0.1
    i=$((i + 1))
done
[ -z "$alive" ] && ok || bad "orphaned workers still running:$alive"
expect_rc 0 "resume after SIGKILL" "$SL" sweep $D/slow.lua --db "$T/kill.db" --workers 2 --resume
echo "resume: $(head -1 "$T/out")"
grep -q "$before already in" "$T/out" && ok || bad "resume skipped: $(cat "$T/out")"
eq "after resume: each point once, all present" \
    "$(q "$T/kill.db" "SELECT count(*), count(DISTINCT point_key), sum(status = 'ok') FROM result")" "240,240,240"
eq "runs: the killed one and the resumed one" "$(q "$T/kill.db" "SELECT group_concat(status, ' ') FROM run")" "running ok"

# ---- a crash, an error and a hang among points that succeed ----
t0=$(now)
expect_rc 0 "faults sweep" "$SL" sweep $D/faults.lua --db "$T/f.db" --workers 2 --timeout 1
t1=$(now)
echo "faults sweep (2 hanging points, --timeout 1): $(echo "$t1 - $t0" | bc) s"
grep -q "6 ok, 6 failed" "$T/out" && ok || bad "faults summary: $(cat "$T/out")"
eq "crash recorded with its signal" "$(q "$T/f.db" "SELECT count(*) FROM v_result r JOIN metric m ON m.result_id = r.result_id AND m.name = 'signal' WHERE r.method = 'test_crash' AND r.status = 'failed' AND r.error = 'killed by signal 11 (SIGSEGV)' AND m.value = 11")" 2
eq "error recorded" "$(q "$T/f.db" "SELECT count(*) FROM result WHERE method = 'test_error' AND status = 'failed' AND error LIKE 'test_error: this method always fails%'")" 2
eq "timeout recorded" "$(q "$T/f.db" "SELECT count(*) FROM result r JOIN metric m ON m.result_id = r.id AND m.name = 'signal' WHERE r.method = 'test_sleep' AND r.status = 'failed' AND r.error LIKE 'timeout after 1 s%' AND m.value = 9")" 2
eq "the others succeed" "$(q "$T/f.db" "SELECT group_concat(method, ' ') FROM (SELECT DISTINCT method FROM result WHERE status = 'ok' ORDER BY method)")" "dense sliding_window"
expect_rc 0 "rerun without --resume keeps failed points" "$SL" sweep $D/faults.lua --db "$T/f.db" --workers 2 --timeout 1
grep -q "nothing to do" "$T/out" && ok || bad "rerun: $(cat "$T/out")"
expect_rc 0 "--resume retries failed points" "$SL" sweep $D/faults.lua --db "$T/f.db" --workers 2 --timeout 1 --resume
grep -q "running 6 with" "$T/out" && ok || bad "resume faults: $(cat "$T/out")"
eq "retried points replace their failed rows" "$(q "$T/f.db" "SELECT count(*), count(DISTINCT point_key), sum(status = 'failed') FROM result")" "12,12,6"
eq "no orphan metrics" "$(q "$T/f.db" "SELECT count(*) FROM metric WHERE result_id NOT IN (SELECT id FROM result)")" 0
expect_rc 0 "merge prefers ok over failed" "$SL" merge "$T/fm.db" "$T/f.db" "$T/big.db"
# faults.lua's 2 dense points are big.lua's too: 12 + 224 - 2 keys
eq "merged faults + big" "$(q "$T/fm.db" "SELECT count(*), count(DISTINCT point_key), sum(status = 'failed') FROM result")" "234,234,6"

# ---- Ctrl-C: exit 130, what finished is committed ----
"$SL" sweep $D/slow.lua --db "$T/int.db" --workers 2 >"$T/out" 2>"$T/err" &
parent=$!
sleep 1
kill -INT $parent
wait $parent
rc=$?
eq "SIGINT exit status" $rc 130
grep -q "sweep interrupted (SIGINT)" "$T/err" && ok || bad "interrupt message: $(cat "$T/err")"
n=$(q "$T/int.db" "SELECT count(*) FROM result")
grep -q "$n of 240 points recorded" "$T/err" && ok || bad "interrupted: $n in db; $(cat "$T/err")"
eq "interrupted run" "$(q "$T/int.db" "SELECT status FROM run")" interrupted
unset SPARSELAB_TEST_METHODS

# ---- test methods stay hidden without the variable ----
expect_rc 0 "methods" "$SL" methods
grep -q test_crash "$T/out" && bad "test_crash listed" || ok
expect_rc 1 "test method without the variable" "$SL" sweep $D/faults.lua --db "$T/x.db"
one_line_err "unknown method 'test_crash'" "test method without the variable"

# ---- bad configs and options: exit 1, one line ----
printf 'methods = {"dense"}\nsizez = {64}\n' >"$T/typo.lua"
expect_rc 1 "unknown key" "$SL" sweep "$T/typo.lua" --db "$T/x.db"
one_line_err "unknown key 'sizez'" "unknown key"
printf 'return {methods = {{id = "dense", budgts = {1}}}}\n' >"$T/typo2.lua"
expect_rc 1 "unknown method key" "$SL" sweep "$T/typo2.lua" --db "$T/x.db"
one_line_err "methods\[1\]: unknown key 'budgts'" "unknown method key"
printf 'return {methods = {"nope"}}\n' >"$T/nope.lua"
expect_rc 1 "unknown method" "$SL" sweep "$T/nope.lua" --db "$T/x.db"
one_line_err "unknown method 'nope'" "unknown method"
printf 'return {methods = {{id = "sliding_window", budgets = {0}}}}\n' >"$T/range.lua"
expect_rc 1 "budget out of range" "$SL" sweep "$T/range.lua" --db "$T/x.db"
one_line_err "outside" "budget out of range"
expect_rc 1 "missing config" "$SL" sweep "$T/none.lua" --db "$T/x.db"
one_line_err "none.lua" "missing config"
printf 'return {methods = {"dense"}\n' >"$T/syntax.lua"
expect_rc 1 "syntax error" "$SL" sweep "$T/syntax.lua" --db "$T/x.db"
one_line_err "syntax.lua" "syntax error"
printf 'os.exit(3)\n' >"$T/os.lua"
expect_rc 1 "configs see no os" "$SL" sweep "$T/os.lua" --db "$T/x.db"
one_line_err "os.lua:1:" "configs see no os"
expect_rc 1 "no --db" "$SL" sweep $D/big.lua
one_line_err "\-\-db FILE is required" "no --db"
expect_rc 1 "bad --shard" "$SL" sweep $D/big.lua --db "$T/x.db" --shard 3/2
one_line_err "shard expects I/N" "bad --shard"
expect_rc 1 "bad --workers" "$SL" sweep $D/big.lua --db "$T/x.db" --workers 0
one_line_err "workers expects a positive integer" "bad --workers"
[ ! -e "$T/x.db" ] && ok || bad "a failed config check created the database"
expect_rc 1 "merge a missing input" "$SL" merge "$T/m.db" "$T/none.db"
one_line_err "none.db: no such file" "merge a missing input"
printf 'not a database' >"$T/junk.db"
expect_rc 1 "merge a non-database" "$SL" merge "$T/m.db" "$T/junk.db"
one_line_err "junk.db: not a sparselab database" "merge a non-database"
[ ! -e "$T/m.db" ] && ok || bad "a failed merge check created the output"
expect_rc 1 "merge into itself" "$SL" merge "$T/big.db" "$T/big.db"
one_line_err "is the output database itself" "merge into itself"

# ---- two sweeps of one config on one database at once: each point once ----
"$SL" sweep configs/sweeps/smoke.lua --db "$T/two.db" --workers 2 >"$T/two1.out" 2>"$T/two1.err" &
p1=$!
"$SL" sweep configs/sweeps/smoke.lua --db "$T/two.db" --workers 2 >"$T/two2.out" 2>"$T/two2.err"
rc2=$?
wait $p1
rc1=$?
eq "two concurrent sweeps: exit statuses" "$rc1 $rc2" "0 0"
eq "two concurrent sweeps: each point once" \
    "$(q "$T/two.db" "SELECT count(*), count(DISTINCT point_key), sum(status = 'ok') FROM result")" "36,36,36"
cat "$T/two1.out" "$T/two2.out" | grep -q "claimed by another running sweep" && ok ||
    bad "the second sweep does not say it skipped claimed points: $(cat "$T/two1.out" "$T/two2.out")"
eq "no claims left" "$(q "$T/two.db" "SELECT count(*) FROM claim")" "0"

# ---- a config's own evaluation is limited in time and memory ----
printf 'while true do end\n' >"$T/spin.lua"
printf 'local s = string.rep("a", 1e4):match(string.rep(".-", 30) .. "b")\nreturn {methods = {"dense"}}\n' >"$T/match.lua"
printf 'local function f() return f() end\nf()\n' >"$T/tail.lua"
for c in spin match tail; do
    t0=$(now)
    expect_rc 1 "$c.lua: config timeout" timeout 20 "$SL" sweep "$T/$c.lua" --db "$T/x.db" --config-timeout 2
    t1=$(now)
    echo "$c.lua: exit status 1 after $(echo "$t1 - $t0" | bc) s (--config-timeout 2)"
    [ "$(echo "$t1 - $t0 < 5" | bc)" = 1 ] && ok || bad "$c.lua: took $(echo "$t1 - $t0" | bc) s"
    one_line_err "$c.lua: the config took more than 2 s to evaluate (--config-timeout)" "$c.lua: config timeout"
done
printf 'local t = {}\nwhile true do t[#t + 1] = string.rep("x", 1e6) end\n' >"$T/bomb.lua"
t0=$(now)
expect_rc 1 "bomb.lua: config memory" timeout 20 "$SL" sweep "$T/bomb.lua" --db "$T/x.db" --config-memory 64
t1=$(now)
echo "bomb.lua: exit status 1 after $(echo "$t1 - $t0" | bc) s (--config-memory 64)"
one_line_err "bomb.lua: the config used more than 64 MiB of memory to evaluate (--config-memory)" "bomb.lua: config memory"
expect_rc 0 "a config within its limits" "$SL" sweep configs/sweeps/smoke.lua --db "$T/lim.db" --dry-run --config-timeout 2 --config-memory 64
[ ! -e "$T/x.db" ] && ok || bad "a config over its limits created the database"

echo "sweep: $pass passed, $fail failed"
[ "$fail" = 0 ]
