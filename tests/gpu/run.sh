#!/usr/bin/env bash
# tests/gpu/run.sh — on a machine with an NVIDIA GPU: build with CUDA=1, run every op suite (tests/test_<family>_ops.c and tests/test_op_dispatch.c) with the cuda backend, then the quick benchmark if the program has one.
#   usage (from the repo root): tests/gpu/run.sh        CUDA_ARCH=sm_80 tests/gpu/run.sh
# Exits non-zero when the build fails, an op suite fails, the cuda backend is unavailable, or a
# case of a kernel the cuda backend has (vs_mixed, pv_skip, ...) was skipped on cuda as unsupported.
set -eu

ARCH=${CUDA_ARCH:-sm_90}
JOBS=${JOBS:-16}
BUILD=${BUILD:-build-cuda}
LOG=$(mktemp -d "${TMPDIR:-/tmp}/sl-gpu.XXXXXX")
rows=()
row() { rows+=("$(printf '%-28s %-5s %s' "$1" "$2" "$3")"); }
summary() {
    echo
    printf '%-28s %-5s %s\n' step result detail
    for r in "${rows[@]}"; do echo "$r"; done
    echo "logs: $LOG"
}
fail() { row "$1" FAIL "$2"; summary; exit 1; }

[ -f Makefile ] && [ -d core/cuda ] || { echo "run.sh: run me from the sparselab repo root" >&2; exit 2; }

if command -v nvidia-smi >/dev/null 2>&1; then
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)
    row "gpu" info "${gpu:-nvidia-smi gave nothing}"
else
    row "gpu" info "no nvidia-smi"
fi

# Objects of a build without CUDA=1 (or for another arch) would be reused by
# make, and ar would keep the stand-in cuda/none.o in the archive: start clean.
if [ "$(cat "$BUILD/.cuda_arch" 2>/dev/null || true)" != "$ARCH" ]; then
    rm -rf "$BUILD"
fi

# Every op suite: one per op family (tests/test_<family>_ops.c) and the dispatcher's.
SUITES=$(cd tests && ls test_*_ops.c test_op_dispatch.c | sed 's/\.c$//')
t0=$SECONDS
if ! make CUDA=1 BUILD="$BUILD" CUDA_ARCH="$ARCH" -j"$JOBS" all $(for s in $SUITES; do printf '%s ' "$BUILD/tests/$s"; done) >"$LOG/build.txt" 2>&1; then
    tail -30 "$LOG/build.txt"
    fail "build CUDA=1 $ARCH" "see $LOG/build.txt"
fi
echo "$ARCH" >"$BUILD/.cuda_arch"
row "build CUDA=1 $ARCH" ok "$((SECONDS - t0)) s"

for suite in $SUITES; do
    t0=$SECONDS
    set +e
    SL_TEST_BACKENDS=ref,cpu,cuda "$BUILD/tests/$suite" >"$LOG/$suite.txt" 2>&1
    rc=$?
    set -e
    cat "$LOG/$suite.txt"
    checks=$(grep -E '^[0-9]+%: Checks' "$LOG/$suite.txt" | tail -1 || true)
    if grep -q '^SKIP backend cuda' "$LOG/$suite.txt"; then
        fail "$suite ref,cpu,cuda" "cuda skipped: $(grep -m1 '^SKIP backend cuda' "$LOG/$suite.txt" | sed 's/^SKIP backend cuda: //')"
    fi
    [ "$rc" -eq 0 ] || fail "$suite ref,cpu,cuda" "exit $rc; ${checks:-no summary}"
    # The suites let a backend other than cpu answer "unsupported" for a case
    # (it prints SKIP ... on cuda); every op and option they test has a cuda
    # kernel (vs_mixed and pv_skip included), so a skip is a failure.
    skipped=$(grep -m1 -E '^SKIP .* on cuda' "$LOG/$suite.txt" || true)
    [ -z "$skipped" ] || fail "$suite ref,cpu,cuda" "unsupported on cuda: $skipped"
    row "$suite ref,cpu,cuda" ok "${checks:-} ($((SECONDS - t0)) s)"
done

# The benchmark is optional: a program without `bench` (or without --backend)
# is reported, not failed.
if [ -x "$BUILD/sparselab" ]; then
    t0=$SECONDS
    if "$BUILD/sparselab" bench --quick --backend cuda >"$LOG/bench.txt" 2>&1; then
        cat "$LOG/bench.txt"
        row "bench --quick --backend cuda" ok "$((SECONDS - t0)) s"
    else
        row "bench --quick --backend cuda" skip "$(tail -1 "$LOG/bench.txt" | cut -c1-80)"
    fi
else
    row "bench --quick --backend cuda" skip "no $BUILD/sparselab"
fi

summary
