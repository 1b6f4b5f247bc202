#!/bin/sh
# eval_identity.sh — records the output of `sparselab eval` for every method and
# correction on fixed seeded inputs, or compares a new build with a record.
#   tests/tools/eval_identity.sh record DIR [BUILD]   writes DIR/<case>.json and .sha
#   tests/tools/eval_identity.sh compare DIR [BUILD]  re-runs every case; prints one
#                                                    line per case and "N same, N differ"
# Each case runs `eval` at a matched density 0.25 (the method's defaults where
# budget matching does not apply) on synthetic n = 1024, 4/2 heads, seed 7,
# with --out; timings (time_ms, *_ms, speedup) are dropped from the JSON and the
# output tensor file is hashed, so a case is "same" when every reported number
# and every output bit are equal.
set -u
mode=${1:?usage: eval_identity.sh record|compare DIR [BUILD]}
dir=${2:?usage: eval_identity.sh record|compare DIR [BUILD]}
build=${3:-build}
sl=$build/sparselab
wl=synthetic,n=1024,heads=4,kv_heads=2,seed=7
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
strip() { sed -e 's/"[a-z_]*_ms":[-0-9.e+]*,\{0,1\}//g' -e 's/"speedup":[-0-9.e+]*,\{0,1\}//g' -e 's/,}/}/g'; }
run_case() {  # name, eval arguments...
    name=$1; shift
    out=$tmp/$name.safetensors
    if "$sl" eval "$@" --workload "$wl" --json --out "$out" >"$tmp/$name.raw" 2>"$tmp/$name.err"; then
        strip <"$tmp/$name.raw" >"$tmp/$name.json"
        sha256sum <"$out" | cut -d' ' -f1 >"$tmp/$name.sha"
    else
        cp "$tmp/$name.err" "$tmp/$name.json"
        echo failed >"$tmp/$name.sha"
    fi
}
cases=$("$sl" methods --json | sed -n 's/.*"id":"\([a-z0-9_]*\)","kind":"\([a-z]*\)".*/\2 \1/p' | sort -u)
same=0; differ=0
echo "$cases" | while read -r kind id; do
    if [ "$kind" = method ]; then
        run_case "m_$id" "$id" --density 0.25 || true
        [ -s "$tmp/m_$id.sha" ] && grep -q failed "$tmp/m_$id.sha" && run_case "m_$id" "$id"
        name=m_$id
    else
        run_case "c_$id" sliding_window --density 0.25 --correct "$id"
        name=c_$id
    fi
    if [ "$mode" = record ]; then
        cp "$tmp/$name.json" "$tmp/$name.sha" "$dir/"
        echo "recorded $name ($(cat "$dir/$name.sha" | cut -c1-12))"
    elif cmp -s "$tmp/$name.json" "$dir/$name.json" && cmp -s "$tmp/$name.sha" "$dir/$name.sha"; then
        echo "same     $name"
    else
        echo "DIFFERS  $name"; diff "$dir/$name.json" "$tmp/$name.json" | head -4
    fi
done | tee "$tmp/log"
if [ "$mode" = compare ]; then
    s=$(grep -c '^same' "$tmp/log"); d=$(grep -c '^DIFFERS' "$tmp/log")
    echo "eval identity: $s same, $d differ"
    [ "$d" = 0 ]
fi
