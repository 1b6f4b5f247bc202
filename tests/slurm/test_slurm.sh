#!/bin/sh
# test_slurm.sh — `make test-slurm`: a sweep as a Slurm job array against a
# real Slurm (issue 21). Installs Debian's slurm-wlm and munge when missing
# (needs root), writes a single-host slurm.conf on loopback in a temporary
# directory and starts munged, slurmctld and slurmd as this test's own
# processes (ports derived from its PID), then:
#   1. `sparselab sweep tests/slurm/sweep.lua --slurm --array 4 --submit`:
#      waits for the 4 tasks, `slurm status` says 4 done, `merge` of the
#      shards holds exactly the unsharded sweep's point keys, all 'ok';
#   2. a fresh submission in which one array index is cancelled (scancel
#      JOB_I) while it runs: status says that shard failed and no other,
#      `slurm resubmit` submits that shard alone, and the merge again equals
#      the unsharded keys;
#   3. a task whose config changed since the script was written refuses to
#      run; merge refuses a shard of another config hash; without sbatch on
#      PATH, --slurm writes the script and --submit fails in one line.
# Stops the daemons it started (by their PIDs) and removes its files. Where
# the daemons cannot start it says why and fails.
set -u
BUILD=${BUILD:-build}
SL="$(pwd)/$BUILD/sparselab"
CFG="$(pwd)/tests/slurm/sweep.lua"
export SPARSELAB_TEST_METHODS=1 # test_sleep: a shard runs long enough to be cancelled
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
die() { echo "test_slurm: $*"; exit 1; }
eq() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got '$2', expected '$3'"; fi; }

[ -x "$SL" ] || die "$SL not built (make all)"
need_install=""
for c in munged slurmctld slurmd sbatch squeue scancel sinfo; do
    command -v "$c" >/dev/null 2>&1 || need_install=1
done
if [ -n "$need_install" ]; then
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: apt-get install slurm-wlm munge"
    echo "test_slurm: installing slurm-wlm and munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm slurmctld slurmd \
        slurm-client munge >/dev/null || die "apt-get install slurm-wlm munge failed"
fi
[ "$(id -u)" = 0 ] || die "slurmd must run as root to start jobs (this test starts its own; run it as root)"

T=$(mktemp -d /tmp/slurmtest.XXXXXX)
chmod 755 "$T"
PIDS=""
cleanup() {
    if [ -n "$PIDS" ]; then
        scancel --quiet --user="$(id -un)" >/dev/null 2>&1
        sleep 1
        for p in $PIDS; do kill "$p" 2>/dev/null; done
        for p in $PIDS; do
            i=0
            while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
            kill -9 "$p" 2>/dev/null
        done
    fi
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the cluster: munged, slurmctld, slurmd on loopback ----
mkdir -p "$T/state" "$T/spool" "$T/log" "$T/run"
dd if=/dev/urandom of="$T/munge.key" bs=1024 count=1 2>/dev/null
chmod 400 "$T/munge.key"
HOST=$(hostname -s)
BASE=$((20000 + $$ % 20000))
CPUS=$(nproc)
export SLURM_CONF="$T/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=sparselabtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$BASE
SlurmdPort=$((BASE + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/run/munge.sock
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=300
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=sltest Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
munged -F --force --socket="$T/run/munge.sock" --key-file="$T/munge.key" --log-file="$T/log/munged.log" \
    --pid-file="$T/run/munged.pid" --seed-file="$T/run/munge.seed" >"$T/log/munged.out" 2>&1 &
PIDS="$!"
i=0
while [ ! -S "$T/run/munge.sock" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -S "$T/run/munge.sock" ] || die "munged did not start: $(tail -n 3 "$T/log/munged.out" | tr '\n' ' ')"
slurmctld -D -f "$SLURM_CONF" >"$T/log/slurmctld.out" 2>&1 &
PIDS="$! $PIDS"
CTLD=$!
slurmd -D -f "$SLURM_CONF" -N "$HOST" >"$T/log/slurmd.out" 2>&1 &
PIDS="$! $PIDS"
SLURMD=$!
i=0
state=""
while [ $i -lt 60 ]; do
    kill -0 $CTLD 2>/dev/null || die "slurmctld exited: $(grep -i 'error\|fatal' "$T/log/slurmctld.out" | tail -n 3 | tr '\n' ' ')"
    kill -0 $SLURMD 2>/dev/null || die "slurmd exited: $(grep -i 'error\|fatal' "$T/log/slurmd.out" | tail -n 3 | tr '\n' ' ')"
    state=$(sinfo -h -o '%T' 2>/dev/null)
    [ "$state" = idle ] && break
    sleep 0.5
    i=$((i + 1))
done
[ "$state" = idle ] || die "the node did not come up idle in 30 s (sinfo: '$state'); slurmd log: $(tail -n 3 "$T/log/slurmd.out" | tr '\n' ' ')"
echo "test_slurm: munged, slurmctld, slurmd running (pids $PIDS), node $HOST idle with $CPUS CPUs"

# Waits until job $1 has no pending or running task (at most $2 seconds).
wait_job() {
    w=0
    while [ -n "$(squeue -h -r -j "$1" -o '%K' 2>/dev/null)" ]; do
        [ $w -ge $(($2 * 5)) ] && { bad "job $1 still running after $2 s"; return 1; }
        sleep 0.2
        w=$((w + 1))
    done
}
keys() { "$SL" query "$1" "SELECT point_key FROM result WHERE status = 'ok' ORDER BY point_key" --csv | tail -n +2; }
nrows() { "$SL" query "$1" "SELECT count(*) || ' ' || count(DISTINCT point_key) FROM result" --csv | tail -n +2; }

# ---- the unsharded sweep: the keys every merge must reproduce ----
"$SL" sweep "$CFG" --db "$T/full.db" --workers "$CPUS" >"$T/full.out" 2>&1 || die "unsharded sweep failed: $(tail -n 2 "$T/full.out")"
keys "$T/full.db" >"$T/full.keys"
NPTS=$(wc -l <"$T/full.keys")
echo "test_slurm: unsharded sweep: $NPTS points ok"

# ---- 1. a 4-task array ----
t0=$(date +%s)
"$SL" sweep "$CFG" --slurm --array 4 --cpus-per-task 1 --time 10:00 --dir "$T/a" --submit >"$T/submit.out" 2>&1
rc=$?
cat "$T/submit.out"
eq "sweep --slurm --submit exits 0" "$rc" 0
JOB=$(grep -E '^[0-9]+$' "$T/submit.out" | tail -n 1)
[ -n "$JOB" ] || die "no job id printed"
grep -q "config sha256: [0-9a-f]\{64\}" "$T/a/sweep.sbatch" && ok "the script records the config hash" || bad "no config hash in the script"
wait_job "$JOB" 180
echo "test_slurm: job $JOB ended after $(($(date +%s) - t0)) s"
"$SL" slurm status "$T/a" | tee "$T/status1"
eq "status: 4 shards done" "$(grep -c '^shard [0-9]/4  done' "$T/status1")" 4
grep -q "running [0-9]* with 1 worker," "$T/a/shard_1.out" && ok "a task uses the 1 CPU Slurm gave it (SLURM_CPUS_PER_TASK): $(grep -o 'running [0-9]* with 1 worker' "$T/a/shard_1.out")" || bad "task 1 did not run with 1 worker: $(head -n 1 "$T/a/shard_1.out")"
"$SL" merge "$T/m1.db" "$T"/a/shard_*.db | tail -n 1
keys "$T/m1.db" >"$T/m1.keys"
if cmp -s "$T/full.keys" "$T/m1.keys"; then ok "merged keys = unsharded keys ($NPTS, status ok)"; else bad "merged keys differ from the unsharded ones"; fi
eq "merged: one result per key" "$(nrows "$T/m1.db")" "$NPTS $NPTS"

# ---- 2. one array index cancelled midway, then resubmitted ----
# the shard with the most test_sleep points (the longest) is the one cancelled
K=1
best=-1
for s in 1 2 3 4; do
    n=$("$SL" sweep "$CFG" --db "$T/dry.db" --shard $s/4 --dry-run 2>/dev/null | grep -c ' test_sleep ')
    [ "$n" -gt "$best" ] && { best=$n; K=$s; }
done
"$SL" sweep "$CFG" --slurm --array 4 --cpus-per-task 1 --dir "$T/b" --submit >"$T/submit2.out" 2>&1 || die "second submission failed: $(cat "$T/submit2.out")"
JOB2=$(grep -E '^[0-9]+$' "$T/submit2.out" | tail -n 1)
echo "test_slurm: job $JOB2 submitted; cancelling task $K once it has recorded a point"
w=0
while [ $w -lt 600 ]; do
    st=$(squeue -h -r -j "$JOB2" -o '%K %T' 2>/dev/null | awk -v k="$K" '$1 == k {print $2}')
    done_pts=0
    [ -f "$T/b/shard_$K.db" ] && done_pts=$("$SL" query "$T/b/shard_$K.db" "SELECT count(*) FROM result" --csv 2>/dev/null | tail -n 1)
    [ "$st" = RUNNING ] && [ "${done_pts:-0}" -ge 1 ] && break
    [ -z "$st" ] && break
    sleep 0.1
    w=$((w + 1))
done
[ "$st" = RUNNING ] || die "task ${JOB2}_$K was not seen running with a recorded point (state '$st'): cannot test the cancellation"
scancel "${JOB2}_$K"
echo "test_slurm: scancel ${JOB2}_$K after $done_pts of its points"
wait_job "$JOB2" 180
"$SL" slurm status "$T/b" | tee "$T/status2"
eq "status: the cancelled shard failed" "$(grep -c "^shard $K/4  failed" "$T/status2")" 1
eq "status: the other 3 done" "$(grep -c '^shard [0-9]/4  done' "$T/status2")" 3
"$SL" slurm resubmit "$T/b" | tee "$T/resub.out"
JOB3=$(grep -E '^[0-9]+$' "$T/resub.out" | tail -n 1)
grep -q "resubmitted shard $K as job" "$T/resub.out" && ok "resubmit: shard $K alone" || bad "resubmit did not submit shard $K alone"
[ -n "$JOB3" ] && wait_job "$JOB3" 180
"$SL" slurm status "$T/b" | tee "$T/status3"
eq "status after resubmission: 4 done" "$(grep -c '^shard [0-9]/4  done' "$T/status3")" 4
"$SL" slurm resubmit "$T/b" | grep -q "nothing to resubmit" && ok "resubmit with nothing failed does nothing" || bad "resubmit resubmitted a done sweep"
"$SL" merge "$T/m2.db" "$T"/b/shard_*.db | tail -n 1
keys "$T/m2.db" >"$T/m2.keys"
if cmp -s "$T/full.keys" "$T/m2.keys"; then ok "merged keys after the resubmission = unsharded keys ($NPTS, status ok)"; else bad "merged keys after the resubmission differ"; fi
eq "merged after resubmission: one result per key" "$(nrows "$T/m2.db")" "$NPTS $NPTS"

# ---- 3. a changed config; a shard of another config; no sbatch ----
cp "$CFG" "$T/c.lua"
"$SL" sweep "$T/c.lua" --slurm --array 2 --dir "$T/c" >/dev/null 2>&1
sed -i 's/seeds = {1, 2}/seeds = {1, 2, 3}/' "$T/c.lua"
SLURM_ARRAY_TASK_ID=1 sh "$T/c/sweep.sbatch" >"$T/c.out" 2>"$T/c.err"
rc=$?
if [ $rc = 1 ] && [ "$(wc -l <"$T/c.err")" = 1 ] && grep -q "changed since the Slurm script was written" "$T/c.err"; then
    ok "a task refuses a config changed since the script: $(cat "$T/c.err")"
else bad "changed config: exit $rc, stderr $(cat "$T/c.err")"; fi
"$SL" sweep "$T/c.lua" --slurm --array 2 --dir "$T/c" >/dev/null 2>&1
SLURM_ARRAY_TASK_ID=2 sh "$T/c/sweep.sbatch" >/dev/null 2>&1 || bad "the rewritten script's task 2 failed"
"$SL" merge "$T/m3.db" "$T/a/shard_1.db" "$T/c/shard_2.db" >"$T/m3.out" 2>"$T/m3.err"
rc=$?
if [ $rc = 1 ] && [ "$(wc -l <"$T/m3.err")" = 1 ] && grep -q "another config" "$T/m3.err" && [ ! -f "$T/m3.db" ]; then
    ok "merge refuses a shard of another config hash: $(cat "$T/m3.err")"
else bad "merge of two configs: exit $rc, $(cat "$T/m3.err")"; fi
"$SL" merge "$T/m1.db" "$T/c/shard_2.db" >/dev/null 2>"$T/m4.err" && bad "merge into a database of another config hash went through" || ok "merge refuses adding another config's shard to a merged database"
mkdir -p "$T/bin"
for c in readlink mkdir pwd; do ln -s "$(command -v $c)" "$T/bin/$c"; done
PATH="$T/bin" "$SL" sweep "$CFG" --slurm --dir "$T/d" >"$T/d.out" 2>&1 && grep -q "sbatch is not installed here" "$T/d.out" &&
    [ -f "$T/d/sweep.sbatch" ] && ok "without sbatch: the script written, and how to submit it" || bad "without sbatch: $(cat "$T/d.out")"
PATH="$T/bin" "$SL" sweep "$CFG" --slurm --dir "$T/d" --submit >"$T/e.out" 2>"$T/e.err"
rc=$?
if [ $rc = 1 ] && [ "$(wc -l <"$T/e.err")" = 1 ] && grep -q "sbatch: not found" "$T/e.err"; then
    ok "without sbatch, --submit fails in one line: $(cat "$T/e.err")"
else bad "without sbatch --submit: exit $rc, $(cat "$T/e.err")"; fi

echo "slurm: $pass passed, $fail failed"
[ "$fail" = 0 ]
