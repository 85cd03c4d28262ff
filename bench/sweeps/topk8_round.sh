#!/usr/bin/env bash
# Session 14 helper topk8 (bench/NOTES.md "Session 14 (helper topk8)"): moe_route_run_kernel's rounds. Run from the
# repo root on the GPU machine after the build, as a round fragment: $O (output folder), $K (the kiln CLI), $T
# (build-gpu/tests/kiln_gpu_tests). Stage by the first argument:
#   A  (fact-finding on the default 17326075, ≤ ≈ 95 s): a fresh Timeline (the default, the candidates: TRACE
#      stamps), the Ablation (21 rounds; the candidates' bits against the default's), then ncu of one default launch
#      of the bench case: the SASS source page (per-instruction executions and stall reasons, sampled every 32 cycles).
#   B  (candidates): LeanSelection (bit-exact against the CPU reference), then the Ablation (paired, one process).
set -u
O=${O:?set O}
K=${K:-./build-gpu/tools/kiln}
T=${T:-./build-gpu/tests/kiln_gpu_tests}
s0=$(date +%s)
el() { echo "$(( $(date +%s) - s0 )) s"; }
CASE='moe_topk_routing_fwd T=8192 E=256 k=8 sigmoid groups=8/4 bias map'
case "${1:-B}" in
A)
  timeout 50 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Timeline' > "$O/timeline.txt" 2>&1
  echo "timeline rc=$? ($(el))"
  grep -E "route timeline\]|loop barrier|last rows |counted |spin passed|  end  " "$O/timeline.txt" | head -12 |
    sed 's/  */ /g' | cut -c1-110
  KILN_ROUTE_ABLATION_ROUNDS=21 timeout 35 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Ablation' > "$O/measure.txt" 2>&1
  echo "ablation rc=$? ($(el))"
  grep -E "FAILED|Failure|differing" "$O/measure.txt" | head -2
  grep -E "\[vs default\]" "$O/measure.txt" | sed 's/  */ /g' | cut -c1-110
  python3 bench/sweeps/forced_config.py tuner/configs/h100-ling-mini-2.0.json moe_routing route 8192 map=1 \
    "load=17326075,fill=4,warps=16,tokens_per_warp=2,tpt=16" "$O/forced.json" > /dev/null
  KILN_TUNING_DB="$O/forced.json" timeout 45 ncu --clock-control none -k 'regex:moe_route_run_kernel' -c 1 \
    --section SourceCounters --warp-sampling-interval 0 --page source --print-source sass --csv $K bench --repeats 1 --filter "$CASE" \
    > "$O/ncu-source.csv" 2>&1
  echo "ncu source rc=$? ($(el)) $(wc -l < "$O/ncu-source.csv") lines"
  ;;
B)
  # Bit-exactness first (LeanSelection: the candidates against the CPU reference, T = 1 … 8192, ties, NaN, huge and
  # non-finite biases, E = 128), then the paired A/B (Ablation, 41 rounds × 10 calls, one process), the Timeline of the
  # default and the candidates, and ncu's source page of the default (stall reasons by SASS, sampled every 32 cycles).
  KILN_LEAN_FIRST=${LEAN_FIRST:-12} timeout 60 stdbuf -oL $T --gtest_filter='MoeRoutingTest.LeanSelection' \
    > "$O/tests.txt" 2>&1
  echo "tests rc=$? ($(el)) $(grep -E '^\[  (PASSED|FAILED)' "$O/tests.txt" | tr '\n' ' ')"
  grep -E "Failure|load [0-9]+$" "$O/tests.txt" | head -4 | cut -c1-150
  echo "lean loads run: $(grep -c '^\[lean\]' "$O/tests.txt")"
  KILN_ROUTE_ABLATION_ROUNDS=${ROUNDS:-41} timeout 40 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Ablation' \
    > "$O/measure.txt" 2>&1
  echo "ablation rc=$? ($(el))"
  grep -E "FAILED|Failure|differing" "$O/measure.txt" | head -2
  grep -E "^\s+map: " "$O/measure.txt" | head -1 | sed 's/  */ /g' | cut -c1-90
  grep -E "\[vs default\]" "$O/measure.txt" | sed 's/  */ /g' | cut -c1-110
  timeout 40 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Timeline' > "$O/timeline.txt" 2>&1
  echo "timeline rc=$? ($(el))"
  grep -E "route timeline\]| last rows | spin passed" "$O/timeline.txt" | sed 's/  */ /g' | cut -c1-80 | head -12 > "$O/timeline-short.txt"
  python3 bench/sweeps/forced_config.py tuner/configs/h100-ling-mini-2.0.json moe_routing route 8192 map=1 \
    "load=17326075,fill=4,warps=16,tokens_per_warp=2,tpt=16" "$O/forced.json" > /dev/null
  [ -z "${NO_NCU:-}" ] && [ $(( $(date +%s) - s0 )) -lt 75 ] && KILN_TUNING_DB="$O/forced.json" timeout 25 ncu --clock-control none \
    -k 'regex:moe_route_run_kernel' -c 1 --section SourceCounters --warp-sampling-interval 0 --page source \
    --print-source sass --csv $K bench --repeats 1 --filter "$CASE" > "$O/ncu-source.csv" 2>&1
  [ -f "$O/ncu-source.csv" ] && echo "ncu source ($(el)) $(wc -l < "$O/ncu-source.csv") lines"
  ;;
esac
