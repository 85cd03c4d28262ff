#!/usr/bin/env bash
# Session 13 helper topk6: the default 17326075 (GRP5 + DRANK) against 16801787 (GRP5), 16785403 (LEAN4), 16781307
# (rounds B–D measured the candidates; this now re-checks the default)
# (bench/NOTES.md "Session 13 (helper topk6)"). Run from the repo root on the GPU machine after the build, as a round
# fragment: $O (output folder), $T (build-gpu/tests/kiln_gpu_tests). ≤ ≈ 60 s (timeouts 65 + 30).
#   1. bit-exactness against the CPU reference (LeanSelection: the candidates first), 2. the same-process A/B (Ablation:
#   31 rounds × 10 calls, every row's paired difference against 17326075).
set -u
O=${O:?set O}
T=${T:-./build-gpu/tests/kiln_gpu_tests}
s0=$(date +%s)
timeout 65 stdbuf -oL $T --gtest_filter='MoeRoutingTest.LeanSelection' > "$O/tests.txt" 2>&1
echo "tests rc=$? ($(( $(date +%s) - s0 )) s) $(grep -E '^\[  (PASSED|FAILED)' "$O/tests.txt" | tr '\n' ' ')"
grep -E "Failure|load [0-9]+$" "$O/tests.txt" | head -4 | cut -c1-150
timeout 30 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Ablation' > "$O/measure.txt" 2>&1
echo "ablation rc=$? ($(( $(date +%s) - s0 )) s)"
grep -E "FAILED|Failure|differing" "$O/measure.txt" | head -2
grep -E "^\s+map: " "$O/measure.txt" | head -1 | sed 's/  */ /g' | cut -c1-90
grep -E "\[vs default\]" "$O/measure.txt" | grep -vE "4091|no tail|no prob" | sed 's/  */ /g' | cut -c1-110
