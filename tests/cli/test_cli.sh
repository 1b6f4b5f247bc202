#!/bin/sh
# test_cli.sh — the `sparselab` program as a user runs it: listings, eval
# against an independent float64 checker (tests/tools/attn_check.c), --out,
# --db and query, exit codes and one-line errors for bad input files, the
# bench, `run` and the REPL fed from a pipe. Closes with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
SL="$BUILD/sparselab"
CHECK="$BUILD/tests/tools/attn_check"
T=$(mktemp -d /tmp/slcli.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL $*" >&2; }
# expect_rc RC DESC CMD... : runs CMD, captures stdout/stderr in $T/out $T/err
expect_rc() {
    want=$1; desc=$2; shift 2
    "$@" >"$T/out" 2>"$T/err"
    got=$?
    if [ "$got" = "$want" ]; then ok; else bad "$desc: exit $got, expected $want; stderr: $(head -c 300 "$T/err")"; fi
}
# jget KEY: the value of "KEY" in the one-line JSON object in $T/out
jget() { sed -n "s/.*[{,]\"$1\":\([^,}]*\).*/\1/p" "$T/out"; }
one_line_err() {
    n=$(wc -l <"$T/err")
    if [ "$n" = 1 ] && grep -q "$1" "$T/err"; then ok; else bad "$2: expected one stderr line containing '$1', got $n: $(cat "$T/err")"; fi
}

# listings
expect_rc 0 "methods --json" "$SL" methods --json
for id in dense sliding_window streaming_llm; do
    grep -q "\"id\":\"$id\"" "$T/out" && ok || bad "methods --json lacks $id"
done
for id in s2_attention power_attention triangle_mix masformer blindsight neighborhood_attention \
    videoxl2_chunk_prefill lserve; do
    grep "\"id\":\"$id\"" "$T/out" | grep -q '"backends":\[[^]]*"cpu"' && ok || bad "methods --json: $id without a cpu backend"
done
# methods ID (issue 18): parameters and the block-size names
expect_rc 0 "methods sale" "$SL" methods sale
grep -q "block sizes: aliases: block = bq and bk, block_k = bk, block_q = bq; defaults (bq, bk) relative" "$T/out" &&
    ok || bad "methods sale: no block-size line: $(cat "$T/out")"
grep -q "^theta " "$T/out" && ok || bad "methods sale: no parameter table"
expect_rc 0 "methods xattention --json" "$SL" methods xattention --json
grep -q '"block_sizes":"defaults (block) relative' "$T/out" && ok || bad "methods --json ID: no block_sizes"
expect_rc 1 "methods unknown" "$SL" methods no_such_method
expect_rc 0 "ops --json" "$SL" ops --json
grep -q '"op":"attn.block_sparse"' "$T/out" && ok || bad "ops --json lacks attn.block_sparse"
grep '"op":"attn.dense"' "$T/out" | grep -q '"dtypes":{[^}]*"cpu":\["f32"\]' && ok || bad "ops --json: attn.dense without its dtypes"

# eval --out against the independent checker (8 heads x 1000 tokens x 64, GQA 8:2)
"$CHECK" make "$T/qkv.safetensors" 8 2 1000 64 7 && ok || bad "make qkv"
expect_rc 0 "eval dense --out" "$SL" eval dense --qkv "$T/qkv.safetensors" --out "$T/dense.safetensors"
expect_rc 0 "dense vs independent reference" "$CHECK" check "$T/qkv.safetensors" "$T/dense.safetensors" 1e-5
cat "$T/out"
expect_rc 0 "eval sliding_window --out" "$SL" eval sliding_window --qkv "$T/qkv.safetensors" --budget 100 \
    --out "$T/sw.safetensors" --json
grep -q '"method":"sliding_window"' "$T/out" && ok || bad "eval --json output"
expect_rc 0 "sliding_window vs hand-applied window" "$CHECK" check "$T/qkv.safetensors" "$T/sw.safetensors" 1e-5 100
cat "$T/out"
expect_rc 0 "eval streaming_llm --out" "$SL" eval streaming_llm --qkv "$T/qkv.safetensors" --budget 64 \
    --param n_init=5 --out "$T/st.safetensors"
expect_rc 0 "streaming_llm vs hand-applied sinks+window" "$CHECK" check "$T/qkv.safetensors" "$T/st.safetensors" 1e-5 64 5
cat "$T/out"
# corrections: streaming_llm + delta_attention with gamma = 1 is dense (every row sampled)
expect_rc 0 "eval --correct delta:gamma=1" "$SL" eval streaming_llm --qkv "$T/qkv.safetensors" --budget 64 \
    --correct delta:gamma=1,tail=0 --out "$T/dc.safetensors" --json
grep -q '"method":"streaming_llm+delta_attention"' "$T/out" && grep -q '"correction_flops":' "$T/out" && ok \
    || bad "eval --correct output: $(head -c 300 "$T/out")"
expect_rc 0 "delta gamma=1 vs independent dense" "$CHECK" check "$T/qkv.safetensors" "$T/dc.safetensors" 1e-5
expect_rc 0 "eval --correct delta:gamma=16" "$SL" eval streaming_llm --qkv "$T/qkv.safetensors" --budget 64 \
    --correct delta:gamma=16 --out "$T/dc16.safetensors"
expect_rc 1 "delta gamma=16 is not dense (the checker notices)" "$CHECK" check "$T/qkv.safetensors" "$T/dc16.safetensors" 1e-5
expect_rc 0 "eval base+corr id, repeated --correct, --db" "$SL" eval streaming_llm+delta --qkv "$T/qkv.safetensors" \
    --budget 64 --correct delta_attention:gamma=32,smooth=true --db "$T/c.db" --json
grep -q '"method":"streaming_llm+delta_attention+delta_attention"' "$T/out" && ok || bad "stacked id: $(head -c 300 "$T/out")"
expect_rc 0 "corrected method recorded" "$SL" query "$T/c.db" \
    "SELECT method, json_extract(params_json, '$.gamma') AS g, json_extract(params_json, '$.\"delta_attention.gamma\"') AS g2 FROM result" --csv
grep -q "^streaming_llm+delta_attention+delta_attention,64,32" "$T/out" && ok || bad "recorded params: $(cat "$T/out")"
expect_rc 1 "unknown correction" "$SL" eval dense --workload synthetic,n=64 --correct nosuch
one_line_err "unknown correction 'nosuch'" "unknown correction"
expect_rc 1 "--correct without K=V" "$SL" eval dense --workload synthetic,n=64 --correct delta:gamma
one_line_err "expected K=V" "--correct without K=V"
expect_rc 1 "--correct unknown parameter" "$SL" eval dense --workload synthetic,n=64 --correct delta:gama=2
one_line_err "unknown parameter 'gama'" "--correct unknown parameter"
expect_rc 0 "methods --json lists corrections" "$SL" methods --json
for id in delta_attention rectified_spaattn top_theta_compensation smooth_k lepe; do
    grep "\"id\":\"$id\"" "$T/out" | grep -q '"kind":"correction"' && ok || bad "methods --json: no $id correction"
done
for spec in rectify compensate:sdc_scale=0.5,vmc=false smooth_k lepe:kernel=3,alpha=0.5; do
    expect_rc 0 "eval --correct $spec" "$SL" eval streaming_llm --workload synthetic,n=256,heads=4,kv_heads=2 \
        --budget 32 --param bq=16 --param bk=16 --correct "$spec" --json
    grep -q '"correction_flops":' "$T/out" && ok || bad "eval --correct $spec: $(head -c 200 "$T/out")"
done
# the checker itself must notice a wrong window
expect_rc 1 "checker rejects a mismatched window" "$CHECK" check "$T/qkv.safetensors" "$T/sw.safetensors" 1e-5 90

# a directory of .npy files is a --qkv input too
mkdir "$T/npy"
printf 'local sl = require "sparselab"\nlocal t = sl.load(arg[1])\nfor _, n in ipairs{"q","k","v"} do sl.save(arg[2] .. "/" .. n .. ".npy", t[n]) end\n' >"$T/split.lua"
expect_rc 0 "run a script" "$SL" run "$T/split.lua" "$T/qkv.safetensors" "$T/npy"
expect_rc 0 "eval from npy dir" "$SL" eval dense --qkv "$T/npy" --out "$T/dense2.safetensors"
expect_rc 0 "npy dir result" "$CHECK" check "$T/qkv.safetensors" "$T/dense2.safetensors" 1e-5

# --save-mask: the executed selection beside o and lse (u8 [H, n_q, n_k]); refused without --out and above 2^28
expect_rc 0 "eval --save-mask" "$SL" eval vertical_slash --workload synthetic,n=128,heads=4,kv_heads=2,d=16 \
    --param bq=16 --param bk=16 --out "$T/vsm.safetensors" --save-mask
printf 'local sl = require "sparselab"\nlocal t = sl.load(arg[1])\nprint(t.mask:dtype(), table.concat(t.mask:shape(), "x"), t.o ~= nil, t.lse ~= nil)\n' >"$T/mask.lua"
expect_rc 0 "read the saved mask" "$SL" run "$T/mask.lua" "$T/vsm.safetensors"
grep -q "^u8	4x128x128	true	true" "$T/out" && ok || bad "saved mask: $(cat "$T/out")"
expect_rc 1 "--save-mask without --out" "$SL" eval dense --workload synthetic,n=64 --save-mask
one_line_err "give --out FILE too" "--save-mask without --out"
expect_rc 1 "--save-mask above 2^28" "$SL" eval dense --workload synthetic,n=16384,heads=2,kv_heads=1,d=16 \
    --out "$T/big.safetensors" --save-mask
one_line_err "above 2^28" "--save-mask above 2^28"

# --db and query
expect_rc 0 "eval --db" "$SL" eval sliding_window --workload synthetic,n=256,heads=4,kv_heads=2 --budget 32 --db "$T/r.db"
expect_rc 0 "query --csv" "$SL" query "$T/r.db" "SELECT method, budget FROM v_result" --csv
grep -q "^sliding_window,32" "$T/out" && ok || bad "query result: $(cat "$T/out")"
expect_rc 0 "query --json" "$SL" query "$T/r.db" "SELECT git_rev, host, build_flags FROM run" --json
grep -q '"host"' "$T/out" && ok || bad "provenance in run: $(cat "$T/out")"

# --density solves the knob: the smallest window whose mask keeps >= D of the causal pairs
expect_rc 0 "eval --density" "$SL" eval sliding_window --workload synthetic,n=512,heads=2,kv_heads=1 --density 0.25 --json
d=$(tr ',' '\n' <"$T/out" | sed -n 's/^"density"://p'); w=$(tr ',' '\n' <"$T/out" | sed -n 's/^"budget"://p')
# independent count: a window of w keeps sum_i min(i+1, w) of n(n+1)/2 pairs
awk -v n=512 -v w="$w" -v d="$d" 'BEGIN { k = 0; k1 = 0; for (i = 0; i < n; i++) { k += (i + 1 < w ? i + 1 : w); k1 += (i + 1 < w - 1 ? i + 1 : w - 1) }
    t = n * (n + 1) / 2; exit !(k / t >= 0.25 && k1 / t < 0.25 && (d - k / t) < 1e-9 && (k / t - d) < 1e-9) }' && ok || bad "--density $d at w=$w"
# eval reports the time split, recall's worst row, estimator FLOPs; methods --json the knob direction
grep -q '"estimate_ms":0,' "$T/out" && grep -q '"execute_ms":' "$T/out" && grep -q '"estimator_flops":0,' "$T/out" \
    && grep -q '"recall_min":' "$T/out" && grep -q '"target_density":0.25' "$T/out" && ok || bad "eval --json fields: $(cat "$T/out")"
expect_rc 0 "methods --json" "$SL" methods --json
grep '"id":"sliding_window"' "$T/out" | grep -q '"knob_direction":1' && ok || bad "methods --json lacks knob_direction"
# --flops / --kv-bytes: the smallest window reaching the target, checked against the window one key smaller
for tgt in "flops 2.5e7 flops" "kv-bytes 1e6 kv_bytes"; do
    set -- $tgt
    expect_rc 0 "eval --$1" "$SL" eval sliding_window --workload synthetic,n=512,heads=4,kv_heads=2 --$1 $2 --param bq=32 --param bk=32 --json
    a=$(jget achieved_$3); w=$(jget budget); m=$(jget $3)
    expect_rc 0 "eval w-1" "$SL" eval sliding_window --workload synthetic,n=512,heads=4,kv_heads=2 --budget $((w - 1)) --param bq=32 --param bk=32 --json
    b=$(jget $3)
    awk -v a="$a" -v b="$b" -v m="$m" -v t="$2" 'BEGIN { exit !(a >= t && b < t && a == m) }' && ok || bad "--$1 $2: achieved $a at w=$w ($m recorded), w-1 gives $b"
done
expect_rc 1 "eval --flops out of reach" "$SL" eval sliding_window --workload synthetic,n=256,heads=2,kv_heads=1 --flops 1e15
one_line_err "cannot reach flops" "eval --flops out of reach"
expect_rc 1 "eval two budgets" "$SL" eval sliding_window --workload synthetic,n=64 --density 0.5 --budget 3
one_line_err "give one of --budget, --density" "eval two budgets"
expect_rc 0 "eval --help" "$SL" eval --help
grep -q "K/V bytes = for every" "$T/out" && ok || bad "eval --help lacks the kv_bytes definition"
# calibrate: a method without calibration, a missing --out, and a fake method through the same command
expect_rc 1 "calibrate a static method" "$SL" calibrate sliding_window --qkv "$T/qkv.safetensors" --out "$T/c.json"
one_line_err "needs no calibration" "calibrate a static method"
expect_rc 1 "calibrate without --out" "$SL" calibrate sliding_window --qkv "$T/qkv.safetensors"
one_line_err "usage: sparselab calibrate" "calibrate without --out"
cat >"$T/cal.lua" <<'EOF2'
local sl = require "sparselab"
sl.methods.register{id = "fake_cal", title = "t", family = "test-estimate", phase = "prefill", params = {},
  run = function() end, calibrate = function(probs) return {n = #probs, heads = probs[1].q:shape()[1]} end}
require("sparselab.cli").calibrate{"calibrate", "fake_cal", "--qkv", arg[1], "--qkv", arg[1], "--out", arg[2]}
local cfg, doc = sl.calibrate.load(arg[2], "fake_cal")
assert(cfg.n == 2 and cfg.heads == 8 and doc.inputs[1].source == arg[1], "calibrate round trip")
EOF2
expect_rc 0 "calibrate a fake method through the CLI" "$SL" run "$T/cal.lua" "$T/qkv.safetensors" "$T/cal.json"
grep -q '"method":"fake_cal"' "$T/cal.json" && ok || bad "calibration file: $(cat "$T/cal.json")"
for bad_args in "--workload synthetic,n=abc" "--workload synthetic,n=64 --reps 2.5" "--workload synthetic,n=64 --density 2"; do
    expect_rc 1 "eval dense $bad_args" "$SL" eval sliding_window $bad_args
done
expect_rc 1 "huge budget" "$SL" eval sliding_window --workload synthetic,n=64 --budget 1e400
one_line_err "must be an integer" "huge budget"
# list values of --param (the must-show of each method through the CLI is tests/lua/test_methods_eval.lua)
expect_rc 0 "--param list value" "$SL" eval blindsight --workload synthetic,n=64,heads=4,kv_heads=2 \
    --param 'images={{8,30},{40,60}}' --param 'categories={sink,intra,intra_sink,dense}' --json
grep -q '"images":\[\[8,30\],\[40,60\]\]' "$T/out" && ok || bad "--param images not read as a list: $(head -c 300 "$T/out")"
expect_rc 1 "--param unclosed list" "$SL" eval blindsight --workload synthetic,n=64 --param 'images={{8,30},'
one_line_err "expected a number, a word or '{' at character 9" "unclosed list"

# compare: one row per method and budget, averaged; bad grouping is a user error
"$SL" eval streaming_llm --workload synthetic,n=256,heads=4,kv_heads=2 --budget 32 --db "$T/r.db" >/dev/null 2>&1
expect_rc 0 "compare" "$SL" compare "$T/r.db" --csv
grep -q "^sliding_window,32,1," "$T/out" && grep -q "^streaming_llm,32,1," "$T/out" && ok || bad "compare: $(cat "$T/out")"
expect_rc 0 "compare --where" "$SL" compare "$T/r.db" --where "method = 'streaming_llm'" --csv
[ "$(grep -c sliding_window "$T/out")" = 0 ] && ok || bad "compare --where did not filter"
expect_rc 1 "compare --by bad" "$SL" compare "$T/r.db" --by nonsense
one_line_err "not a grouping column" "compare --by bad"
expect_rc 0 "views exist" "$SL" query "$T/r.db" "SELECT count(*) AS n FROM v_break_even" --csv

# bad input files: exit 1, one line, no core dump
head -c 100 "$T/qkv.safetensors" >"$T/trunc.safetensors"
expect_rc 1 "truncated file" "$SL" eval dense --qkv "$T/trunc.safetensors"
one_line_err "trunc.safetensors" "truncated file"
printf 'not a safetensors file at all' >"$T/junk.safetensors"
expect_rc 1 "junk file" "$SL" eval dense --qkv "$T/junk.safetensors"
one_line_err "junk.safetensors" "junk file"
cp "$T/qkv.safetensors" "$T/nan.safetensors"
# overwrite the first float of the data section of tensor 'k' with a NaN
hl=$(od -An -tu4 -N4 "$T/nan.safetensors" | tr -d ' ')
printf '\000\000\300\177' | dd of="$T/nan.safetensors" bs=1 seek=$((8 + hl)) conv=notrunc 2>/dev/null
expect_rc 1 "NaN in input" "$SL" eval dense --qkv "$T/nan.safetensors"
one_line_err "NaN" "NaN in input"
expect_rc 1 "missing file" "$SL" eval dense --qkv "$T/none.safetensors"
one_line_err "none.safetensors" "missing file"
expect_rc 1 "unknown method" "$SL" eval nope --workload synthetic
one_line_err "unknown method 'nope'" "unknown method"
expect_rc 1 "budget out of range" "$SL" eval sliding_window --workload synthetic,n=64 --budget 0
one_line_err "outside" "budget out of range"
expect_rc 1 "unknown option" "$SL" eval dense --qkvv x
one_line_err "unknown option --qkvv" "unknown option"
expect_rc 1 "shape mismatch" "$SL" eval dense --qkv "$T/bad_shape.safetensors" 2>/dev/null
printf 'local sl = require "sparselab"\nsl.save(arg[1], {q = sl.randn({4, 8, 16}), k = sl.randn({3, 8, 16}), v = sl.randn({3, 8, 16})})\n' >"$T/bad.lua"
"$SL" run "$T/bad.lua" "$T/bad_shape.safetensors" && ok || bad "writing a bad-shape file"
expect_rc 1 "GQA mismatch" "$SL" eval dense --qkv "$T/bad_shape.safetensors"
one_line_err "multiple (GQA)" "GQA mismatch"
expect_rc 1 "query of a non-database" "$SL" query "$T/junk.safetensors" "SELECT 1"
one_line_err "junk.safetensors" "query of a non-database"

# query of a store the user cannot write, in a directory they cannot write
# (root writes anyway: as root the query runs as nobody through setpriv)
mkdir "$T/ro" && cp "$T/r.db" "$T/ro/r.db" && chmod 444 "$T/ro/r.db" && chmod 555 "$T/ro"
if [ "$(id -u)" = 0 ]; then
    if command -v setpriv >/dev/null 2>&1; then
        chmod 711 "$T"
        expect_rc 0 "query of a read-only store" setpriv --reuid=65534 --regid=65534 --clear-groups \
            "$SL" query "$T/ro/r.db" "SELECT count(*) AS n FROM v_result" --csv
        grep -q "^[1-9]" "$T/out" && ok || bad "read-only query result: $(cat "$T/out")"
        chmod 700 "$T"
    else
        echo "SKIP query of a read-only store: root without setpriv"
    fi
else
    expect_rc 0 "query of a read-only store" "$SL" query "$T/ro/r.db" "SELECT count(*) AS n FROM v_result" --csv
    grep -q "^[1-9]" "$T/out" && ok || bad "read-only query result: $(cat "$T/out")"
fi
[ ! -e "$T/ro/r.db-wal" ] && ok || bad "read-only query left a -wal file"
chmod 755 "$T/ro"

# a text file named as the tensors: what it is not, not its bytes as a number
printf 'hello world, this is text\n' >"$T/x.txt"
expect_rc 1 "text file as --qkv" "$SL" eval dense --qkv "$T/x.txt"
one_line_err "x.txt: not a safetensors file (the first 8 bytes are not a plausible header length)" "text file as --qkv"

# the model runner: dense perplexity of a shipped text (README: 4.0401), a
# sparse method recorded in the database, captured Q/K/V replayed by eval
M=experiments/data/tinystories260k
expect_rc 0 "model dense --json" "$SL" model $M/model.bin --text $M/texts/01_red_kite.txt --method dense --json --gen 8
grep -q '"ppl_dense":4.040' "$T/out" && grep -q '"kl":0' "$T/out" && ok || bad "model dense output: $(cat "$T/out")"
for w in 32 128; do
    expect_rc 0 "model sliding_window $w" "$SL" model $M/model.bin --text $M/texts/02_lost_mitten.txt \
        --method sliding_window --budget $w --param bq=16 --param bk=16 --json --db "$T/m.db" --gen 8
done
expect_rc 0 "model streaming_llm" "$SL" model $M/model.bin --text $M/texts/02_lost_mitten.txt \
    --method streaming_llm --budget 32 --param n_init=4 --json --db "$T/m.db" --gen 8
expect_rc 0 "model results in db" "$SL" query "$T/m.db" \
    "SELECT r.method, r.budget, m.value FROM result r JOIN metric m ON m.result_id = r.id AND m.name = 'kl' ORDER BY r.budget" --csv
[ "$(grep -c '^sliding_window\|^streaming_llm' "$T/out")" = 3 ] && ok || bad "model rows: $(cat "$T/out")"
expect_rc 1 "model without --text" "$SL" model $M/model.bin
one_line_err "usage" "model without --text"
head -c 5000 $M/model.bin >"$T/trunc.bin"
expect_rc 1 "truncated checkpoint" "$SL" model "$T/trunc.bin" --text $M/texts/01_red_kite.txt
one_line_err "trunc.bin" "truncated checkpoint"
expect_rc 0 "capture experiment" "$SL" run experiments/capture_tinystories.lua "$T/qkv"
[ "$(ls "$T/qkv" | wc -l)" = 40 ] && ok || bad "capture wrote $(ls "$T/qkv" | wc -l) files, expected 40"
expect_rc 0 "eval on captured qkv" "$SL" eval streaming_llm --qkv "$T/qkv/06_little_seed_layer2.safetensors" \
    --budget 64 --param bq=16 --param bk=16 --out "$T/cap.safetensors"
expect_rc 0 "captured qkv vs independent reference" "$CHECK" check "$T/qkv/06_little_seed_layer2.safetensors" \
    "$T/cap.safetensors" 1e-5 64 4

# a script's own error is a user error; the REPL survives errors on a pipe
printf 'local sl = require "sparselab"\nlocal db = sl.experiment{db = arg[1]}\nerror("boom")\n' >"$T/boom.lua"
expect_rc 1 "failing script" "$SL" run "$T/boom.lua" "$T/boom.db"
one_line_err "boom" "failing script"
expect_rc 0 "failed run recorded" "$SL" query "$T/boom.db" "SELECT status FROM run" --csv
[ "$(tail -n 1 "$T/out")" = failed ] && ok || bad "failing script's run status: $(cat "$T/out")"
printf 'x = 1 +\nprint(sl.attn.dense)\n' | "$SL" >"$T/out" 2>"$T/err"
[ $? = 1 ] && ok || bad "syntax error from stdin exits 1"

# the bench reports both rates and their ratio from one run
expect_rc 0 "bench --quick --json" "$SL" bench --quick --json --db "$T/b.db" --no-estimators
grep -q '"ratio_to_sgemm"' "$T/out" && grep -q '"name":"sgemm"' "$T/out" && ok || bad "bench output: $(cat "$T/out")"
expect_rc 0 "bench recorded" "$SL" query "$T/b.db" "SELECT count(*) AS n FROM v_result WHERE method = 'attn.dense'" --csv
[ "$(tail -n 1 "$T/out")" -ge 1 ] 2>/dev/null && ok || bad "bench rows in db"

# experiments/corrections.lua --quick: every correction on four bases, table read back from the db
expect_rc 0 "corrections experiment --quick" "$SL" run experiments/corrections.lua --quick "$T/corr.db"
grep -q "rel_l2 before->after" "$T/out" && grep -q "re_ttention" "$T/out" && grep -q "delta_attention, gamma = 64" "$T/out" \
    && ok || bad "corrections experiment output: $(head -c 300 "$T/out")"
expect_rc 0 "corrections recorded" "$SL" query "$T/corr.db" \
    "SELECT count(*) AS n FROM v_result WHERE method LIKE '%+flashblock' AND status = 'ok'" --csv
[ "$(tail -n 1 "$T/out")" -ge 4 ] 2>/dev/null && ok || bad "corrections rows in db: $(cat "$T/out")"

# estimator overhead: mask time over dense time on the same inputs, recorded beside the other ratios
expect_rc 0 "bench --only-estimators" "$SL" bench --only-estimators --methods sliding_window --n 512 --json --db "$T/b.db"
awk -v e="$(jget estimate_ms)" -v d="$(jget dense_time_ms)" -v o="$(jget overhead)" \
    'BEGIN { r = e / d - o; exit !(e > 0 && d > 0 && r < 1e-12 && r > -1e-12) }' && ok || bad "estimator overhead: $(cat "$T/out")"
expect_rc 0 "estimator bench recorded" "$SL" query "$T/b.db" "SELECT count(*) FROM result WHERE method = 'estimate:sliding_window' AND n_k = 512" --csv
[ "$(tail -n 1 "$T/out")" = 1 ] && ok || bad "estimator rows in db: $(cat "$T/out")"
expect_rc 1 "bench --methods unknown" "$SL" bench --only-estimators --methods nope
one_line_err "unknown method 'nope'" "bench --methods unknown"

# the prefill frontier experiment, quick, on a static method (reaches every density) and lserve (half
# its KV heads dense: no density below 0.5 is reachable, so it is listed as skipped with the reason)
expect_rc 0 "prefill_frontier --quick" "$SL" run experiments/prefill_frontier.lua "$T/pf.db" --quick --methods sliding_window,lserve
grep -q "recall_05" "$T/out" && grep -q "cannot go down to density 0.05" "$T/out" && ok || bad "prefill_frontier output: $(head -c 600 "$T/out")"
expect_rc 0 "prefill_frontier results" "$SL" query "$T/pf.db" "SELECT method, status, count(*) AS n,
    sum(abs(density - target_density) <= 0.02 * target_density) AS matched FROM v_result GROUP BY method, status ORDER BY method" --csv
grep -q "^lserve,failed,12," "$T/out" && grep -q "^sliding_window,ok,12,12$" "$T/out" && ok || bad "prefill_frontier rows: $(cat "$T/out")"

# fit-params (issue 14): nsa's gates fitted on one input; the file loads back through --param weights and
# its SHA-256 is the result's params_source; moba has nothing to fit; a Q/K/V file is no nsa weights file
"$CHECK" make "$T/fit.safetensors" 4 2 96 8 11 && ok || bad "make fit qkv"
NSA_P="--param bs=16 --param n=4 --param window=16 --param l=8 --param s=4"
expect_rc 0 "fit-params nsa" "$SL" fit-params nsa --qkv "$T/fit.safetensors" --out "$T/w.safetensors" --steps 5 $NSA_P --json
sha=$(sha256sum "$T/w.safetensors" | cut -d' ' -f1)
grep -q "\"params_source\":\"sha256:$sha\"" "$T/out" && ok || bad "fit-params params_source: $(cat "$T/out")"
expect_rc 0 "eval nsa with fitted weights" "$SL" eval nsa --qkv "$T/fit.safetensors" $NSA_P --param "weights=$T/w.safetensors" --json
grep -q "\"params_source\":\"sha256:$sha\"" "$T/out" && ok || bad "eval params_source: $(head -c 400 "$T/out")"
# issue 14 session 4: the fitted file (MLP phi + gates) decodes through the decode runtime (eval --steps)
expect_rc 0 "eval nsa --steps" "$SL" eval nsa --qkv "$T/fit.safetensors" $NSA_P --param "weights=$T/w.safetensors" --steps 8 --json
grep -q '"per_step"' "$T/out" && grep -q '"cmp_tokens"' "$T/out" && grep -q "\"params_source\":\"sha256:$sha\"" "$T/out" && ok || bad "nsa decode: $(head -c 400 "$T/out")"
expect_rc 1 "fit-params moba" "$SL" fit-params moba --qkv "$T/fit.safetensors" --out "$T/m.safetensors"
one_line_err "nothing to fit" "fit-params moba"
# issue 14, second half: dsv's closed-form predictor loads back with its SHA-256; sea has nothing small to fit
expect_rc 0 "fit-params dsv" "$SL" fit-params dsv --qkv "$T/fit.safetensors" --out "$T/d.safetensors" --param rank=2 --json
dsha=$(sha256sum "$T/d.safetensors" | cut -d' ' -f1)
expect_rc 0 "eval dsv with fitted weights" "$SL" eval dsv --qkv "$T/fit.safetensors" --param k=8 --param "weights=$T/d.safetensors" --json
grep -q "\"params_source\":\"sha256:$dsha\"" "$T/out" && ok || bad "dsv eval params_source: $(head -c 400 "$T/out")"
expect_rc 1 "fit-params sea" "$SL" fit-params sea --qkv "$T/fit.safetensors" --out "$T/s.safetensors"
one_line_err "nothing to fit" "fit-params sea"
expect_rc 1 "eval nsa with a qkv file as weights" "$SL" eval nsa --qkv "$T/fit.safetensors" $NSA_P --param "weights=$T/fit.safetensors"
one_line_err "tensor 'k' is not one of nsa's weights" "nsa bad weights file"

# issue 14, session 4: experiments/trainable.lua --smoke (kernel-level on TinyStories and synthetic, model-level
# ppl/KL); a fitted row's params_source is the SHA-256 of the per-layer file written beside the database
expect_rc 0 "trainable experiment --smoke" "$SL" run experiments/trainable.lua "$T/tr.db" --smoke
grep -q "^Model level" "$T/out" && grep -q "sha256 (fitted files, per layer)" "$T/out" && ok || bad "trainable output: $(head -c 600 "$T/out")"
# (session 5: nsa is fitted at the stand-in's matched n, one file per n: tinystories_layer2_n<n>)
tsha=$(sha256sum "$T"/tr.db.tinystories_layer2_n*.nsa.safetensors | cut -d' ' -f1)
expect_rc 0 "trainable fitted params_source" "$SL" query "$T/tr.db" "SELECT count(*) AS n FROM v_result WHERE method = 'nsa'
    AND layer = 2 AND status = 'ok' AND json_extract(params_json, '$.params_source') = 'sha256:$tsha'" --csv
grep -q "^1$" "$T/out" && ok || bad "trainable fitted rows: $(cat "$T/out")"

# issue 13, session 4c: eval --steps hands the prefix's queries to snapkv, ada_snapkv and sparsemm (their
# observation window); every step row has step, recall in (0, 1] (1e-6 float slack), rel_l2, tokens_read, kv_bytes
cat >"$T/steps.lua" <<'LUA'
local sl = require "sparselab"
local f = assert(io.open(arg[1])); local r = sl.json_decode(f:read("a")); f:close()
local want = tonumber(arg[2])
assert(type(r.per_step) == "table" and #r.per_step == want, "per_step rows: expected " .. want)
local below = 0
for i, s in ipairs(r.per_step) do
  assert(s.step == i, "step " .. i .. ": step field " .. tostring(s.step))
  for _, key in ipairs{"recall", "rel_l2", "tokens_read", "kv_bytes"} do
    assert(type(s[key]) == "number", "step " .. i .. ": no number '" .. key .. "'")
  end
  assert(s.recall > 0 and s.recall <= 1 + 1e-6, "step " .. i .. ": recall " .. s.recall .. " outside (0, 1]")
  assert(s.tokens_read > 0 and s.kv_bytes > 0, "step " .. i .. ": nothing read")
  if s.recall < 0.999 then below = below + 1 end
end
assert(below > 0, "every step has recall ~1: the budget did not make the run sparse")
LUA
for spec in "snapkv --param obs_window=16 --param local=16" "ada_snapkv --param obs_window=16 --param local=16" \
        "sparsemm --param window=16"; do
    # shellcheck disable=SC2086
    expect_rc 0 "eval $spec --steps" "$SL" eval $spec --workload synthetic,n=256,heads=4,kv_heads=2 --budget 48 --steps 5 --json
    cp "$T/out" "$T/steps.json"
    expect_rc 0 "per-step fields of $spec" "$SL" run "$T/steps.lua" "$T/steps.json" 5
done

echo "cli: $pass passed, $fail failed"
[ "$fail" = 0 ]
