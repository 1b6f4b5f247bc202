#!/bin/sh
# test_mutate.sh — seeded mutants of valid files of every format the CLI reads
# (issue 19): Q/K/V safetensors and .npy, a llama2.c checkpoint and its
# tokenizer, a Hugging Face config.json and model.safetensors, a calibration
# file, a sweep config and a results database, each through the command that
# reads it. Every run must exit 0, or 1 with a one-line message: never 2 (an
# internal error), a signal or a hang (TIMEOUT_S). MUTANTS per format
# (default 30) and SEED (default 19) choose the mutants (tests/cli/mutate.lua).
# Closes with "mutate: N runs, N bad".
set -u
BUILD=${BUILD:-build}
SL="$BUILD/sparselab"
N=${MUTANTS:-30}
SEED=${SEED:-19}
TO=${TIMEOUT_S:-30}
T=$(mktemp -d /tmp/slmut.XXXXXX)
trap 'rm -rf "$T"' EXIT
runs=0
badn=0
MD=experiments/data/tinystories260k
printf 'Once upon a time there was a little dog.\n' >"$T/text.txt"

# ---- valid files ----
cat >"$T/gen.lua" <<'LUA'
local dir = ...
local q, k, v = sl.randn({2, 48, 16}, {seed = 1}), sl.randn({1, 48, 16}, {seed = 2}), sl.randn({1, 48, 16}, {seed = 3})
sl.save(dir .. "/qkv.safetensors", {q = q, k = k, v = v})
os.execute("mkdir -p " .. dir .. "/npy")
sl.save(dir .. "/npy/q.npy", q); sl.save(dir .. "/npy/k.npy", k); sl.save(dir .. "/npy/v.npy", v)
-- the HF seed of the fuzz corpus: two bytes of config length, config.json, model.safetensors;
-- its tokenizer (268 pieces) from the tokenizer corpus (two bytes of vocab size first)
local f = assert(io.open("tests/fuzz/corpus/hf/vocab268", "rb"))
local s = f:read("a"); f:close()
local n = string.unpack("<I2", s)
os.execute("mkdir -p " .. dir .. "/hf")
f = assert(io.open(dir .. "/hf/config.json", "wb")); f:write(s:sub(3, 2 + n)); f:close()
f = assert(io.open(dir .. "/hf/model.safetensors", "wb")); f:write(s:sub(3 + n)); f:close()
f = assert(io.open("tests/fuzz/corpus/tokenizer/bytes_fallback", "rb"))
s = f:read("a"); f:close()
f = assert(io.open(dir .. "/hf/tokenizer.bin", "wb")); f:write(s:sub(3)); f:close()
LUA
"$SL" run "$T/gen.lua" "$T/v" 2>"$T/err" || { mkdir -p "$T/v"; "$SL" run "$T/gen.lua" "$T/v" || exit 1; }
"$SL" eval sliding_window --workload synthetic,n=64,heads=2,kv_heads=1 --budget 16 --db "$T/v/results.db" \
    >/dev/null || exit 1

# check NAME CMD...: runs CMD under the timeout and judges its exit and stderr.
check() {
    name=$1; shift
    runs=$((runs + 1))
    timeout -s KILL "$TO" "$@" >"$T/out" 2>"$T/err"
    rc=$?
    lines=$(wc -l <"$T/err")
    if [ "$rc" = 0 ]; then
        return
    elif [ "$rc" = 1 ] && [ "$lines" = 1 ] && [ -s "$T/err" ]; then
        return
    fi
    badn=$((badn + 1))
    why="exit $rc"
    [ "$rc" = 137 ] && why="killed after ${TO}s (hang) or signal 9"
    [ "$rc" -gt 128 ] && [ "$rc" != 137 ] && why="signal $((rc - 128))"
    [ "$rc" = 1 ] && why="exit 1 with $lines stderr lines"
    echo "FAIL mutate $name: $why: $(head -c 300 "$T/err")" >&2
    cp "$MUT" "$T/../slmut-fail-$name-$(basename "$MUT")" 2>/dev/null
}

# mutants FORMAT SRC DST CMD...: N mutants of SRC at DST, each run through CMD.
mutants() {
    fmt=$1; src=$2; MUT=$3; shift 3
    i=1
    while [ "$i" -le "$N" ]; do
        lua5.4 tests/cli/mutate.lua "$src" "$MUT" $((SEED * 1000 + i)) || exit 1
        check "$fmt-$i" "$@"
        i=$((i + 1))
    done
}

V=$T/v
M=$T/m
mkdir -p "$M/npy" "$M/ll" "$M/hf"
mutants safetensors "$V/qkv.safetensors" "$M/qkv.safetensors" "$SL" eval sliding_window --qkv "$M/qkv.safetensors" --budget 16
cp "$V/npy/k.npy" "$V/npy/v.npy" "$M/npy/"
mutants npy "$V/npy/q.npy" "$M/npy/q.npy" "$SL" eval sliding_window --qkv "$M/npy" --budget 16
cp "$MD/tok512.bin" "$M/ll/"
mutants llama2c "$MD/model.bin" "$M/ll/model.bin" "$SL" model "$M/ll/model.bin" --text "$T/text.txt"
cp "$MD/model.bin" "$M/ll/"
mutants tokenizer "$MD/tok512.bin" "$M/ll/tok512.bin" "$SL" model "$M/ll/model.bin" --text "$T/text.txt"
cp "$V/hf/model.safetensors" "$V/hf/tokenizer.bin" "$M/hf/"
mutants hf_config "$V/hf/config.json" "$M/hf/config.json" "$SL" model "$M/hf" --text "$T/text.txt"
cp "$V/hf/config.json" "$M/hf/"
mutants hf_weights "$V/hf/model.safetensors" "$M/hf/model.safetensors" "$SL" model "$M/hf" --text "$T/text.txt"
mutants calibration tests/fuzz/corpus/calibration/vs "$M/cal.json" "$SL" eval vertical_slash \
    --workload synthetic,n=96,heads=2,kv_heads=1 --param config="$M/cal.json" --param bq=16 --param bk=16
mutants sweep_config configs/sweeps/smoke.lua "$M/sweep.lua" "$SL" sweep "$M/sweep.lua" --db "$M/sweep.db" --dry-run
mutants db_query "$V/results.db" "$M/r.db" "$SL" query "$M/r.db" "SELECT count(*), sum(status = 'ok') FROM result"
rm -f "$M/merged.db"
mutants db_merge "$V/results.db" "$M/r.db" sh -c 'rm -f "$1"; exec "$2" merge "$1" "$3"' merge "$M/merged.db" "$SL" "$M/r.db"
echo "mutate: $runs runs, $badn bad"
[ "$badn" = 0 ]
