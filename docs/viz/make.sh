#!/bin/sh
# make.sh — regenerates the example pictures and the example report in docs/ from a results
# database made with small settings (about 2 minutes on 2 cores):
#   the prefill frontier (experiments/prefill_frontier.lua --quick --n 2048: every dynamic
#   prefill method at matched densities 0.05-0.3 on TinyStories Q/K/V and a 2048-token
#   synthetic input), the scaling sweep (experiments/scaling_sweep.lua: sliding_window and
#   streaming_llm over compression and length, with its fits), the TinyStories Q/K/V of
#   experiments/capture_tinystories.lua for the mask pictures, and a small `sparselab bench`.
#   sh docs/viz/make.sh [WORK_DIR (default /tmp/sparselab-docs)]
# Run from the repository root after `make`. Everything but the pictures and the report goes
# to WORK_DIR, outside the repository.
set -eu
SL=build/sparselab
W=${1:-/tmp/sparselab-docs}
mkdir -p "$W"
rm -f "$W/docs.db"
$SL run experiments/prefill_frontier.lua "$W/docs.db" --quick --n 2048 >"$W/frontier.log"
$SL run experiments/scaling_sweep.lua "$W/docs.db" 2 >"$W/scaling.log"
$SL run experiments/capture_tinystories.lua "$W/qkv" >/dev/null
O=docs/viz
$SL plot "$W/docs.db" frontier -o $O/frontier_tinystories.svg
$SL plot "$W/docs.db" frontier --where "workload = 'synthetic' AND n_k = 2048 AND script LIKE '%prefill_frontier%'" \
    --title "Accuracy against executed density: synthetic, n = 2048" -o $O/frontier_synthetic.svg
$SL plot "$W/docs.db" recall -o $O/recall_tinystories.svg
$SL plot "$W/docs.db" pareto -o $O/pareto.svg
$SL plot "$W/docs.db" scaling -o $O/scaling_power.svg
# the log-linear fits in L and C (fits 1 and 3 of scaling_sweep.lua), one curve per length
$SL plot "$W/docs.db" --fit 1 --logx --title "sliding_window: ln(rel_l2) = a + b_L ln L + b_C ln C (fit on L <= 2048)" \
    -o $O/scaling_loglinear_sliding_window.svg
$SL plot "$W/docs.db" --fit 3 --logx --title "streaming_llm: ln(rel_l2) = a + b_L ln L + b_C ln C (fit on L <= 2048)" \
    -o $O/scaling_loglinear_streaming_llm.svg
$SL plot "$W/docs.db" break_even --where "script LIKE '%scaling%' AND n_k = 4096" \
    --title "Speedup over dense, synthetic n = 4096 (2 cores, cpu backend)" -o $O/break_even.svg
$SL plot "$W/docs.db" --x "1.0/density" --y rel_l2 --by "method || ' L=' || n_k" \
    --where "script LIKE '%scaling%' AND method <> 'dense'" --aggregate target_density --logx --logy \
    --title "rel_l2 against compression by method and length (mean of 2 seeds)" -o $O/custom_compression.png
# kernel speedups of the cpu backend (sparselab bench, small settings) in a database of their own
rm -f "$W/bench.db"
$SL bench --quick --no-estimators --no-decode --n 2048 --densities 0.05,0.1,0.2,0.4 --reps 3 --db "$W/bench.db" >/dev/null
$SL plot "$W/bench.db" bench --title "Block-sparse kernel speedup over dense, n = 2048 (cpu backend, 2 shared cores)" \
    -o $O/bench.svg
# mask pictures on real Q/K/V (TinyStories layer 2, 489 tokens, 16-token blocks)
Q="$W/qkv/01_red_kite_layer2.safetensors"
$SL eval xattention --qkv "$Q" --density 0.3 --param block=16 --mask-png $O/mask_xattention.png >/dev/null
$SL eval minference_block_sparse --qkv "$Q" --density 0.3 --param bq=16 --param bk=16 \
    --mask-png $O/mask_minference_block_sparse.png >/dev/null
$SL eval vertical_slash --qkv "$Q" --density 0.5 --param bq=16 --param bk=16 --mask-png $O/mask_vertical_slash.png >/dev/null
$SL eval streaming_llm --qkv "$Q" --budget 64 --param bq=16 --param bk=16 --mask-png $O/mask_streaming_llm.png >/dev/null
rm -rf docs/report
$SL report "$W/docs.db" -o docs/report --title "sparselab example report: prefill frontier and scaling (small settings)"
echo "docs: pictures in $O, report in docs/report (database $W/docs.db)"
