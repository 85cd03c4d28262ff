#!/usr/bin/env bash
# Session 12 helper topk5's candidate LEAN4 (load 16785403 = the default 16781307 + 4096), unmeasured when written:
# the next session's first round (bench/NOTES.md, "Session 12 (helper topk5, unmeasured)"). Run from the repo root on
# the GPU machine after the build, as a round fragment: $O (output folder), $T (build-gpu/tests/kiln_gpu_tests).
#   stage 1 (default, ≤ ≈ 100 s): bit-exactness against the CPU reference, then the same-process A/B (Ablation).
#   stage 2 (`bash bench/sweeps/topk5_round.sh ncu`, ≤ 180 s): ncu source counters of one T = 8192 launch of each
#   (the warp instructions a token of the selection: 16781307 ≈ 273 expected as 4091's, 16785403 ≈ 50–60 fewer).
set -u
O=${O:?set O}
T=${T:-./build-gpu/tests/kiln_gpu_tests}
s0=$(date +%s)
if [ "${1:-}" != ncu ]; then
  # LeanSelection runs 16785403 first (then 16781307, 4091, 3451; non-finite-bias patterns 4 / 5 for the first two).
  timeout 60 stdbuf -oL $T --gtest_filter='MoeRoutingTest.LeanSelection' > "$O/tests.txt" 2>&1
  echo "tests rc=$? ($(( $(date +%s) - s0 )) s) $(grep -E '^\[  (PASSED|FAILED)' "$O/tests.txt" | tr '\n' ' ')"
  grep -E "Failure|load [0-9]+|pattern=[45]" "$O/tests.txt" | head -6 | cut -c1-160
  # Ablation: 21 rounds x 10 calls in one process; 16785403's outputs must equal 16781307's bit for bit.
  timeout 45 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Ablation' > "$O/measure.txt" 2>&1
  echo "ablation rc=$? ($(( $(date +%s) - s0 )) s)"
  grep -E "FAILED|Failure|differing" "$O/measure.txt" | head -2
  grep -E "^\s+map: " "$O/measure.txt" | head -6 | cut -c1-110
else
  # One launch at T = 8192 of each kernel instance (mangled name: V = 2038895680 for 16781307, 2038903872 for
  # 16785403): LeanSelection's 6th launch of each (T = 1, 7, 33, 4096, 8191, 8192 — if run_case launches more than
  # once a case, the grid in the LaunchStats section is not 256 CTAs: adjust --launch-skip).
  for v in 2038895680 2038903872; do
    timeout 90 ncu --clock-control none --kernel-name-base mangled -k "regex:moe_route_run_kernel.*Li${v}E" \
      --launch-skip 5 -c 1 --section SourceCounters --section LaunchStats --section SchedulerStats \
      --page source --print-source sass --csv \
      $T --gtest_filter='MoeRoutingTest.LeanSelection' > "$O/ncu-source-$v.csv" 2>&1
    echo "ncu $v rc=$? ($(( $(date +%s) - s0 )) s) $(wc -l < "$O/ncu-source-$v.csv") lines"
  done
fi
