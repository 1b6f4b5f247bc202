#!/bin/sh
# test_viz.sh — the program's help, plots, report and mask pictures as a user runs them
# (issue 18): every subcommand answers --help and -h with exit 0 and its usage line;
# `sparselab --help`, `help`, `help COMMAND`; query refuses a write without --write; plot
# writes svg/png/pdf from a database (views and --fit included); report writes its pages and
# the page passes a headless Chromium check (loads, every image rendered, no console errors;
# skipped with a message where Chromium or node is missing); eval --mask-png.
# Closes with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
SL="$BUILD/sparselab"
T=$(mktemp -d /tmp/slviz.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL $*" >&2; }
expect_rc() {
    want=$1; desc=$2; shift 2
    "$@" >"$T/out" 2>"$T/err"
    got=$?
    if [ "$got" = "$want" ]; then ok; else bad "$desc: exit $got, expected $want; stderr: $(head -c 300 "$T/err")"; fi
}

# ---- help ----------------------------------------------------------------------------------
for a in --help -h help; do
    expect_rc 0 "sparselab $a" "$SL" $a
    grep -q "^commands:" "$T/out" && ok || bad "sparselab $a: no command list"
done
cmds=$(sed -n 's/^  \([a-z_]*\)  .*/\1/p' "$T/out")
[ "$(echo "$cmds" | wc -w)" -ge 15 ] && ok || bad "command list too short: $cmds"
for c in $cmds; do
    for h in --help -h; do
        expect_rc 0 "$c $h" "$SL" "$c" $h
        grep -q "^usage: sparselab $c" "$T/out" && ok || bad "$c $h: no usage line: $(head -2 "$T/out")"
        [ ! -s "$T/err" ] && ok || bad "$c $h wrote to stderr: $(cat "$T/err")"
    done
    expect_rc 0 "help $c" "$SL" help "$c"
    grep -q "^usage: sparselab $c" "$T/out" && ok || bad "help $c: no usage line"
done
expect_rc 0 "eval --help" "$SL" eval --help
grep -q -- "--mask-png FILE.png" "$T/out" && ok || bad "eval --help lacks --mask-png"
expect_rc 1 "help of an unknown command" "$SL" help nope
grep -q "unknown command 'nope'" "$T/err" && ok || bad "help nope: $(cat "$T/err")"
expect_rc 1 "unknown option" "$SL" methods --nope
grep -q "methods --help" "$T/err" && ok || bad "unknown option message: $(cat "$T/err")"

# ---- a database --------------------------------------------------------------------------
expect_rc 0 "test database" "$SL" run tests/cli/viz_db.lua "$T/v.db"

# ---- query: read-only unless --write --------------------------------------------------------
n0=$("$SL" query "$T/v.db" "SELECT count(*) AS n FROM result" --csv | tail -1)
expect_rc 1 "query write without --write" "$SL" query "$T/v.db" "DELETE FROM result"
grep -q "give --write" "$T/err" && ok || bad "write refusal message: $(cat "$T/err")"
n1=$("$SL" query "$T/v.db" "SELECT count(*) AS n FROM result" --csv | tail -1)
[ "$n0" = "$n1" ] && [ "$n0" -gt 0 ] && ok || bad "query without --write changed the database: $n0 -> $n1"
cp "$T/v.db" "$T/w.db"
expect_rc 0 "query --write" "$SL" query "$T/w.db" "DELETE FROM claim" --write

# ---- compare: reruns count once unless --all-runs; --by target_density ----------------------------
for i in 1 2; do
    expect_rc 0 "eval --db run $i" "$SL" eval sliding_window --workload synthetic,n=256,heads=2,kv_heads=1,d=16 \
        --budget 64 --param bq=16 --param bk=16 --db "$T/c.db"
done
expect_rc 0 "compare latest" "$SL" compare "$T/c.db" --csv
grep -q "^sliding_window,64,1," "$T/out" && ok || bad "compare counted a rerun twice: $(cat "$T/out")"
expect_rc 0 "compare --all-runs" "$SL" compare "$T/c.db" --all-runs --csv
grep -q "^sliding_window,64,2," "$T/out" && ok || bad "compare --all-runs: $(cat "$T/out")"
expect_rc 0 "compare --by target_density" "$SL" compare "$T/v.db" --by target_density --csv
grep -q "^0.2[0-9]*,streaming_llm,2," "$T/out" && ok || bad "compare --by target_density: $(cat "$T/out")"

# ---- plot ----------------------------------------------------------------------------------
for ext in svg png pdf; do
    expect_rc 0 "plot .$ext" "$SL" plot "$T/v.db" --x density --y rel_l2 --by method --where "method <> 'dense'" \
        --logy -o "$T/p.$ext"
done
head -c 600 "$T/p.svg" | grep -q "<svg" && ok || bad "p.svg is not SVG"
[ "$(head -c 4 "$T/p.png" | tail -c 3)" = "PNG" ] && ok || bad "p.png is not PNG"
[ "$(head -c 5 "$T/p.pdf")" = "%PDF-" ] && ok || bad "p.pdf is not PDF"
for v in frontier recall pareto scaling break_even; do
    expect_rc 0 "plot view $v" "$SL" plot "$T/v.db" "$v" -o "$T/$v.svg"
    grep -q "<svg" "$T/$v.svg" && ok || bad "view $v: no SVG"
done
expect_rc 0 "bench database" "$SL" bench --quick --no-estimators --no-decode --no-sgemm --n 256 --d 16 --heads 2 \
    --reps 1 --densities 0.1,0.3 --db "$T/bench.db"
expect_rc 0 "plot view bench" "$SL" plot "$T/bench.db" bench -o "$T/bench.svg"
grep -q "ideal 1/density" "$T/bench.svg" && ok || bad "bench view lacks the ideal line"
expect_rc 1 "bench view of a database without bench rows" "$SL" plot "$T/v.db" bench -o "$T/x.svg"
grep -q "no results for the bench view" "$T/err" && ok || bad "empty bench view: $(cat "$T/err")"
expect_rc 0 "plot --fit" "$SL" plot "$T/v.db" --fit 1 --fit 2 --logx --logy -o "$T/fit.png"
expect_rc 1 "plot without -o" "$SL" plot "$T/v.db" frontier
grep -q "give -o" "$T/err" && ok || bad "plot without -o: $(cat "$T/err")"
expect_rc 1 "plot of an unknown view" "$SL" plot "$T/v.db" nope -o "$T/x.svg"
grep -q "unknown view 'nope'" "$T/err" && ok || bad "unknown view: $(cat "$T/err")"
expect_rc 1 "plot of a missing fit" "$SL" plot "$T/v.db" --fit 99 -o "$T/x.svg"
grep -q "no fit 99" "$T/err" && ok || bad "missing fit: $(cat "$T/err")"
expect_rc 1 "plot of a missing database" "$SL" plot "$T/none.db" frontier -o "$T/x.svg"

# ---- report and the browser check ------------------------------------------------------------
expect_rc 0 "report" "$SL" report "$T/v.db" -o "$T/rep"
for f in index.html report.md tables.tex frontier_1.svg frontier_2.svg pareto.svg scaling.svg; do
    [ -s "$T/rep/$f" ] && ok || bad "report lacks $f"
done
CHROME=""
for c in chromium chromium-browser google-chrome; do
    command -v "$c" >/dev/null 2>&1 && { CHROME=$c; break; }
done
if [ -z "$CHROME" ]; then
    echo "SKIP browser check of the report: Chromium is not installed (Debian: apt-get install chromium)"
elif ! command -v node >/dev/null 2>&1; then
    echo "SKIP browser check of the report: node is not installed (Debian: apt-get install nodejs)"
else
    timeout 30 node tests/tools/browser_check.js "$CHROME" "$T/rep/index.html" "$T/profile" >"$T/out" 2>"$T/err"
    rc=$?
    if [ "$rc" = 3 ]; then
        echo "SKIP browser check of the report: $CHROME did not start ($(head -c 200 "$T/err"))"
    elif [ "$rc" = 0 ]; then
        ok
        cat "$T/out"
    else
        bad "browser check of the report (exit $rc): $(cat "$T/out")"
    fi
    # the check itself sees a broken page
    printf '<!DOCTYPE html><html><head><title>t</title></head><body><img src="none.svg"></body></html>' >"$T/rep/broken.html"
    timeout 30 node tests/tools/browser_check.js "$CHROME" "$T/rep/broken.html" "$T/profile2" >"$T/out" 2>"$T/err"
    rc=$?
    if [ "$rc" = 1 ] && grep -q "none.svg" "$T/out"; then ok; elif [ "$rc" = 3 ]; then :; else
        bad "browser check missed a broken image (exit $rc): $(cat "$T/out")"; fi
fi

# ---- mask pictures -----------------------------------------------------------------------------
expect_rc 0 "eval --mask-png" "$SL" eval streaming_llm --workload synthetic,n=256,heads=2,kv_heads=1,d=16 \
    --budget 64 --param bq=16 --param bk=16 --mask-png "$T/m.png"
[ "$(head -c 4 "$T/m.png" | tail -c 3)" = "PNG" ] && ok || bad "m.png is not PNG"
expect_rc 1 "eval --mask-png of dense" "$SL" eval dense --workload synthetic,n=128 --mask-png "$T/d.png"
grep -q "no block mask" "$T/err" && ok || bad "dense --mask-png: $(cat "$T/err")"

# ---- --qkv as PyTorch has it: [B, H, N, D], query_states names, --names ----------------------
cat >"$T/mk.lua" <<'LUA'
local sl = require "sparselab"
local d = arg[1]
local q = sl.randn({2, 4, 64, 16}, {seed = 1})
local k = sl.randn({2, 2, 64, 16}, {seed = 2})
local v = sl.randn({2, 2, 64, 16}, {seed = 3})
sl.save(d .. "/b2.safetensors", {query_states = q, key_states = k, value_states = v})
-- batch element 1 (0-based) as a plain [H, N, D] file under other names
sl.save(d .. "/e1.safetensors", {Qx = q:narrow(1, 2, 1):to(), Kx = k:narrow(1, 2, 1):to(), Vx = v:narrow(1, 2, 1):to()})
sl.save(d .. "/bad.safetensors", {q = sl.randn({64, 16}, {seed = 1}), k = k, v = v})
LUA
expect_rc 0 "make qkv files" "$SL" run "$T/mk.lua" "$T"
expect_rc 0 "eval of a batch of 2" "$SL" eval sliding_window --qkv "$T/b2.safetensors" --budget 16 --param bq=16 \
    --param bk=16 --json --db "$T/b.db" --out "$T/o.safetensors"
[ "$(wc -l <"$T/out")" = 2 ] && ok || bad "batch of 2: expected 2 JSON lines, found $(wc -l <"$T/out")"
sed -n 2p "$T/out" | sed 's/"[a-z_]*time_ms":[^,]*,//g; s/"[a-z_]*_ms":[^,]*,//g; s/"speedup":[^,]*,//g; s/"workload":"[^"]*"//' >"$T/b1.json"
[ -s "$T/o_b0.safetensors" ] && [ -s "$T/o_b1.safetensors" ] && ok || bad "batch outputs o_b0/o_b1 missing"
expect_rc 0 "batch rows recorded" "$SL" query "$T/b.db" "SELECT json_extract(workload_params_json, '\$.batch') AS b FROM v_result ORDER BY b" --csv
[ "$(tr '\n' ' ' <"$T/out")" = "b 0 1 " ] && ok || bad "batch rows: $(cat "$T/out")"
expect_rc 0 "eval with --names" "$SL" eval sliding_window --qkv "$T/e1.safetensors" --names q=Qx,k=Kx,v=Vx \
    --budget 16 --param bq=16 --param bk=16 --json
sed 's/"[a-z_]*time_ms":[^,]*,//g; s/"[a-z_]*_ms":[^,]*,//g; s/"speedup":[^,]*,//g; s/"workload":"[^"]*"//' "$T/out" >"$T/e1.json"
cmp -s "$T/b1.json" "$T/e1.json" && ok || bad "batch element 1 differs from the same tensors as [H, N, D]"
expect_rc 1 "eval without the names" "$SL" eval dense --qkv "$T/e1.safetensors"
grep -q "query_states" "$T/err" && grep -q -- "--names" "$T/err" && ok || bad "missing names message: $(cat "$T/err")"
expect_rc 1 "eval of a bad layout" "$SL" eval dense --qkv "$T/bad.safetensors"
grep -q "expected q, k, v as \[heads, tokens, head_dim\] or \[batch, heads, tokens, head_dim\]" "$T/err" && ok ||
    bad "layout message: $(cat "$T/err")"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
