#!/usr/bin/env bash
# tests/gpu/run.sh — the one-shot device script (issue 12), on a machine with an NVIDIA GPU, in under
# 8 minutes (BUDGET_S, default 470 s; every step has a timeout cut to what is left):
#   1. build with CUDA=1 for CUDA_ARCH (default sm_90), run every op suite (tests/test_<family>_ops.c and
#      tests/test_op_dispatch.c) on ref,cpu,cuda;
#   2. compute-sanitizer memcheck and racecheck on build-cuda/tests/test_attn_ops (SL_TEST_BACKENDS=ref,cuda);
#   3. the peers, tests/gpu/cudnn_sdpa.cu (cuDNN 9 fused SDPA through the backend graph API, cudaMemcpy D2D,
#      the staging our backend does), then `sparselab bench --backend cuda` at the issue's sizes, and one
#      table, ours / peer / ratio (tests/gpu/table.lua), printed whatever failed before it.
#   usage (from the repo root): tests/gpu/run.sh        CUDA_ARCH=sm_80 tests/gpu/run.sh
#   GPU_N=8192,32768 GPU_DENSITIES=0.05,0.1,0.25,0.5 GPU_PATTERNS=random_blocks GPU_REPS=3 change the bench.
# Exits non-zero when the build fails, an op suite fails, the cuda backend is unavailable, a case of a
# kernel the cuda backend has (vs_mixed, pv_skip, ...) was skipped on cuda as unsupported, or a sanitizer
# reports errors; a missing sanitizer, a failed peer or bench is a row of the summary, not a failure.
set -eu

ARCH=${CUDA_ARCH:-sm_90}
JOBS=${JOBS:-16}
BUILD=${BUILD:-build-cuda}
BUDGET_S=${BUDGET_S:-470}
GPU_N=${GPU_N:-8192,32768}
GPU_DENSITIES=${GPU_DENSITIES:-0.05,0.1,0.25,0.5}
GPU_PATTERNS=${GPU_PATTERNS:-random_blocks}
GPU_REPS=${GPU_REPS:-3}
LOG=$(mktemp -d "${TMPDIR:-/tmp}/sl-gpu.XXXXXX")
START=$SECONDS
status=0
rows=()
row() { rows+=("$(printf '%-34s %-7s %s' "$1" "$2" "$3")"); }
summary() {
    echo
    printf '%-34s %-7s %s\n' step result detail
    for r in "${rows[@]}"; do echo "$r"; done
    echo "logs: $LOG ($((SECONDS - START)) s in all)"
}
# Seconds a step may take: its own cap, cut to what is left of the budget less a reserve for the table.
left() { local l=$((BUDGET_S - (SECONDS - START) - 15)); [ "$l" -lt "$1" ] && echo $((l > 5 ? l : 5)) || echo "$1"; }
fail() { row "$1" FAIL "$2"; status=1; }
# the table, with whichever program there is (the cuda build's, else the cpu build's)
table() {
    echo
    echo "== table (issue 12): ours / peer / ratio"
    local prog=
    for p in "$BUILD/sparselab" build/sparselab; do [ -x "$p" ] && { prog=$p; break; }; done
    if [ -n "$prog" ]; then
        timeout 30 "$prog" run tests/gpu/table.lua "$LOG" || echo "(table.lua failed; raw lines in $LOG/bench.jsonl, $LOG/peer.jsonl)"
    else
        echo "(no sparselab program to print the table with; raw lines:)"; cat "$LOG"/*.jsonl 2>/dev/null || true
    fi
}
finish() { table; summary; exit "$status"; }

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
built=1
if ! timeout "$(left 240)" make CUDA=1 BUILD="$BUILD" CUDA_ARCH="$ARCH" -j"$JOBS" all $(for s in $SUITES; do printf '%s ' "$BUILD/tests/$s"; done) >"$LOG/build.txt" 2>&1; then
    tail -30 "$LOG/build.txt"
    fail "build CUDA=1 $ARCH" "see $LOG/build.txt"
    built=0
else
    echo "$ARCH" >"$BUILD/.cuda_arch"
    row "build CUDA=1 $ARCH" ok "$((SECONDS - t0)) s"
fi

for suite in $SUITES; do
    [ "$built" = 1 ] || break
    t0=$SECONDS
    set +e
    SL_TEST_BACKENDS=ref,cpu,cuda timeout "$(left 90)" "$BUILD/tests/$suite" >"$LOG/$suite.txt" 2>&1
    rc=$?
    set -e
    tail -40 "$LOG/$suite.txt"
    checks=$(grep -E '^[0-9]+%: Checks' "$LOG/$suite.txt" | tail -1 || true)
    if grep -q '^SKIP backend cuda' "$LOG/$suite.txt"; then
        fail "$suite ref,cpu,cuda" "cuda skipped: $(grep -m1 '^SKIP backend cuda' "$LOG/$suite.txt" | sed 's/^SKIP backend cuda: //')"
        continue
    fi
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -eq 124 ] && fail "$suite ref,cpu,cuda" "timeout; ${checks:-no summary}" || fail "$suite ref,cpu,cuda" "exit $rc; ${checks:-no summary}"
        continue
    fi
    # The suites let a backend other than cpu answer "unsupported" for a case
    # (it prints SKIP ... on cuda); every op and option they test has a cuda
    # kernel (vs_mixed and pv_skip included), so a skip is a failure.
    skipped=$(grep -m1 -E '^SKIP .* on cuda' "$LOG/$suite.txt" || true)
    if [ -n "$skipped" ]; then fail "$suite ref,cpu,cuda" "unsupported on cuda: $skipped"; continue; fi
    row "$suite ref,cpu,cuda" ok "${checks:-} ($((SECONDS - t0)) s)"
done

# ---- 2. compute-sanitizer on the attention suite (ref and cuda only: cpu adds nothing under it) ----
SAN=
for c in "$(command -v compute-sanitizer 2>/dev/null || true)" /usr/local/cuda/bin/compute-sanitizer \
         /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -n "$c" ] && [ -x "$c" ] && { SAN=$c; break; }
done
for tool in memcheck racecheck; do
    name="sanitizer $tool test_attn_ops"
    if [ -z "$SAN" ]; then row "$name" skip "compute-sanitizer not on PATH nor under /usr/local/cuda"; continue; fi
    if [ ! -x "$BUILD/tests/test_attn_ops" ]; then row "$name" skip "no $BUILD/tests/test_attn_ops (build failed)"; continue; fi
    t0=$SECONDS
    set +e
    # CK_FORK=no: one process, so every kernel launch is under the tool
    CK_FORK=no SL_TEST_BACKENDS=ref,cuda timeout "$(left 100)" "$SAN" --tool "$tool" --error-exitcode 86 \
        --print-limit 20 "$BUILD/tests/test_attn_ops" >"$LOG/san_$tool.txt" 2>&1
    rc=$?
    set -e
    verdict=$(grep -E '(ERROR|RACECHECK) SUMMARY' "$LOG/san_$tool.txt" | tail -1 | sed 's/^========= //' || true)
    checks=$(grep -E '^[0-9]+%: Checks' "$LOG/san_$tool.txt" | tail -1 || true)
    case $rc in
        0) row "$name" ok "${verdict:-no summary}; ${checks:-} ($((SECONDS - t0)) s)" ;;
        86) tail -40 "$LOG/san_$tool.txt"; fail "$name" "${verdict:-errors}; see $LOG/san_$tool.txt" ;;
        124) row "$name" timeout "$(left 100) s cap hit; ${verdict:-no summary yet}; see $LOG/san_$tool.txt" ;;
        *) tail -20 "$LOG/san_$tool.txt"; fail "$name" "exit $rc; ${checks:-no summary}; ${verdict:-}" ;;
    esac
done

# ---- 3a. the peers: cuDNN SDPA, device memcpy, our staging (tests/gpu/cudnn_sdpa.cu) ----
NVCC_BIN=$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
inc=() lib=()
for d in "$CUDA_HOME/include" /usr/include /usr/include/x86_64-linux-gnu; do [ -f "$d/cudnn.h" ] && inc+=("-I$d"); done
for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" /usr/local/cuda-13.0/lib /usr/lib/x86_64-linux-gnu; do
    ls "$d"/libcudnn.so* >/dev/null 2>&1 && lib+=("-L$d" "-Xlinker" "-rpath=$d")
done
PEER=$BUILD/tests/gpu/cudnn_sdpa
mkdir -p "$(dirname "$PEER")"
: >"$LOG/peer.jsonl"
t0=$SECONDS
if [ ! -x "$NVCC_BIN" ] && ! command -v "$NVCC_BIN" >/dev/null 2>&1; then
    row "peer cudnn_sdpa build" skip "no nvcc"
elif ! timeout "$(left 120)" "$NVCC_BIN" -O2 -std=c++17 -arch="$ARCH" ${inc[@]+"${inc[@]}"} tests/gpu/cudnn_sdpa.cu -o "$PEER" \
        ${lib[@]+"${lib[@]}"} -lcudnn >"$LOG/peer_build.txt" 2>&1; then
    tail -15 "$LOG/peer_build.txt"
    row "peer cudnn_sdpa build" skip "nvcc/-lcudnn failed: $(grep -m1 -iE 'error|cannot find' "$LOG/peer_build.txt" | cut -c1-70)"
else
    row "peer cudnn_sdpa build" ok "$((SECONDS - t0)) s"
    t0=$SECONDS
    set +e
    timeout "$(left 90)" "$PEER" --n "$GPU_N" --heads 32 --d 128 --reps 5 --warmup 2 >"$LOG/peer.jsonl" 2>"$LOG/peer_err.txt"
    rc=$?
    set -e
    cat "$LOG/peer.jsonl"
    nerr=$(grep -c '"error"' "$LOG/peer.jsonl" || true)
    case $rc in
        0) row "peer cudnn_sdpa run" ok "$((SECONDS - t0)) s" ;;
        124) row "peer cudnn_sdpa run" timeout "partial lines kept ($((SECONDS - t0)) s)" ;;
        *) row "peer cudnn_sdpa run" partial "exit $rc, $nerr error line(s): $(grep -m1 -o '"error":"[^"]*' "$LOG/peer.jsonl" | cut -c10-80)" ;;
    esac
fi

# ---- 3b. ours: sparselab bench on cuda at the issue's sizes ----
: >"$LOG/bench.jsonl"
if [ -x "$BUILD/sparselab" ] && [ "$built" = 1 ]; then
    t0=$SECONDS
    set +e
    timeout "$(left 240)" "$BUILD/sparselab" bench --backend cuda --json --quick --no-estimators --no-sgemm \
        --n "$GPU_N" --d 128 --heads 32 --densities "$GPU_DENSITIES" --patterns "$GPU_PATTERNS" --reps "$GPU_REPS" \
        --dtypes f32,bf16 --decode-n 32768 --decode-keys 4096 --decode-nq 1 --decode-parts \
        >"$LOG/bench.jsonl" 2>"$LOG/bench_err.txt"
    rc=$?
    set -e
    cat "$LOG/bench.jsonl"
    case $rc in
        0) row "bench --backend cuda" ok "$(grep -c . "$LOG/bench.jsonl") rows ($((SECONDS - t0)) s)" ;;
        124) row "bench --backend cuda" timeout "$(grep -c . "$LOG/bench.jsonl") rows before the cap" ;;
        *) row "bench --backend cuda" skip "exit $rc: $(tail -1 "$LOG/bench_err.txt" | cut -c1-80)" ;;
    esac
else
    row "bench --backend cuda" skip "no $BUILD/sparselab from this run's build"
fi

# ---- 3c. mm.bitmap's cuSPARSE CSR path vs ref and vs its CUDA-core kernel (issue 17, session 3) ----
if [ -f "$BUILD/sparselab.so" ] && [ "$built" = 1 ]; then
    t0=$SECONDS
    set +e
    LUA_CPATH="$BUILD/?.so" timeout "$(left 90)" lua5.4 tests/gpu/cusparse_check.lua >"$LOG/cusparse.txt" 2>&1
    rc=$?
    set -e
    cat "$LOG/cusparse.txt"
    case $rc in
        0) row "mm.bitmap cuSPARSE CSR" ok "$(grep -c '^ok' "$LOG/cusparse.txt") checks ($((SECONDS - t0)) s)" ;;
        124) row "mm.bitmap cuSPARSE CSR" timeout "see $LOG/cusparse.txt" ;;
        *) fail "mm.bitmap cuSPARSE CSR" "exit $rc: $(grep -m1 -E '^FAIL|error' "$LOG/cusparse.txt" | cut -c1-80)" ;;
    esac
else
    row "mm.bitmap cuSPARSE CSR" skip "no $BUILD/sparselab.so from this run's build"
fi

finish
