#!/bin/sh
# run.sh — runs every libFuzzer target of tests/fuzz (built by `make
# fuzz-build` into BUILD/tests/fuzz/) for SECONDS each, starting from the
# committed seeds (tests/fuzz/corpus/<name>/) and growing a working corpus
# in BUILD/fuzz-corpus/<name>/; then replays the seeds and the working
# corpus once (-runs=0 over every file). A crash, leak, sanitizer report or
# timeout fails the run and leaves its input as BUILD/fuzz-crashes/<name>/*.
#   tests/fuzz/run.sh [BUILD] [SECONDS] [TARGETS]
# Prints per target: executions, corpus size, and the outcome.
set -u
build=${1:-build-fuzz}
secs=${2:-20}
targets=${3:-$(ls tests/fuzz/fuzz_*.c | sed 's|tests/fuzz/fuzz_\(.*\)\.c|\1|')}
fail=0
for t in $(echo "$targets" | tr ',' ' '); do
    bin=$build/tests/fuzz/fuzz_$t
    seeds=tests/fuzz/corpus/$t
    work=$build/fuzz-corpus/$t
    crashes=$build/fuzz-crashes/$t
    mkdir -p "$work" "$crashes"
    log=$build/fuzz-$t.log
    # -timeout: one input; -rss_limit_mb: a file that makes a loader allocate
    # past this is a finding; -max_len: the seeds' sizes and some room.
    "$bin" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2560 -max_len=16384 -print_final_stats=1 \
        -artifact_prefix="$crashes/" "$work" "$seeds" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    "$bin" -runs=0 -timeout=25 -rss_limit_mb=2560 "$seeds" "$work" >"$log.replay" 2>&1
    rrc=$?
    n=$(ls "$work" | wc -l)
    if [ "$rc" = 0 ] && [ "$rrc" = 0 ]; then
        echo "fuzz $t: ${execs:-0} executions in ${secs}s, corpus $n files, replay ok"
    else
        echo "fuzz $t: FAILED (run $rc, replay $rrc) after ${execs:-?} executions; see $log and $crashes"
        grep -m3 "ERROR\|SUMMARY\|==ERROR\|deadly\|timeout" "$log" "$log.replay" | head -5
        fail=1
    fi
done
exit $fail
