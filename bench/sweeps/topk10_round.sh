#!/usr/bin/env bash
# Session 16 helper topk10 (bench/NOTES.md "Session 16 (helper topk10)"): moe_route_run_kernel's candidates (round A:
# VALROWS / VALNAP / VALFILL8, deleted; round B: EARLYREL). Run from the repo root on the GPU machine after the build,
# as a round fragment: $O (output folder), $T (build-gpu/tests/kiln_gpu_tests). ≤ ≈ 90 s:
#   LeanSelection of the first $LOADS loads of its list (bit-exact against the CPU reference),
#   then the Ablation of $ONLY (paired against the default, one process, $ROUNDS rounds), then the Timeline of $TL_ONLY.
set -u
O=${O:?set O}
T=${T:-./build-gpu/tests/kiln_gpu_tests}
s0=$(date +%s)
el() { echo "$(( $(date +%s) - s0 )) s"; }
tl_summary() {  # rep 0 of each traced config: the tail's stamps, p50 / max (µs after the first CTA's entry)
  awk '/\[route timeline\]/ { rep0 = ($0 ~ /rep 0:/); if (rep0) { n = $0; sub(/^\[route timeline\] /, "", n);
         sub(/ rep 0:.*/, "", n); printf "%s |", substr(n, 1, 26) } next }
       rep0 && /^  (loop barrier|counted|spin passed|bases|end) / && $(NF - 5) ~ /^[0-9]+$/ {
         k = $1; if ($1 == "spin") k = "valid/spin"; else if ($2 == "loaded") k = "loaded";
         printf " %s %s/%s", k, $(NF - 2), $NF; if ($1 == "end") printf "\n" }' "$1"
}
KILN_LEAN_FIRST=${LOADS:-2} timeout 50 stdbuf -oL $T --gtest_filter='MoeRoutingTest.LeanSelection' > "$O/tests.txt" 2>&1
echo "tests rc=$? ($(el)) $(grep -E '^\[  (PASSED|FAILED)' "$O/tests.txt" | tr '\n' ' ')"
grep -E "Failure" -A3 "$O/tests.txt" | head -6 | cut -c1-150
KILN_ROUTE_ONLY=${ONLY:-VALROWS,no tail} KILN_ROUTE_ABLATION_ROUNDS=${ROUNDS:-41} timeout 45 stdbuf -oL $T \
  --gtest_filter='MoeRouteMeasure.Ablation' > "$O/measure.txt" 2>&1
echo "ablation rc=$? ($(el))"
grep -E "FAILED|Failure|differing" "$O/measure.txt" | head -2
grep -E "^\s+map: load [0-9]+ \(default\)" "$O/measure.txt" | head -1 | sed 's/  */ /g' | cut -c1-90
grep -E "\[vs default\]" "$O/measure.txt" | sed 's/  */ /g; s/\[vs default\] map: //' | cut -c1-100
if [ $(( $(date +%s) - s0 )) -lt 75 ]; then
  KILN_ROUTE_ONLY=${TL_ONLY:-VALROWS} timeout 30 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Timeline' > "$O/timeline.txt" 2>&1
  echo "timeline rc=$? ($(el))"
  tl_summary "$O/timeline.txt" | cut -c1-170
fi
