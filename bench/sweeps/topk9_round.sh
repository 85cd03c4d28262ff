#!/usr/bin/env bash
# moe_route_run_kernel's tail rounds (bench/NOTES.md "Session 15 (helper topk9)" and "Session 16 (helper topk10)": the
# tail after the grid-wide spin; session 16 ran stage B for its candidates). Run from the repo root on the GPU machine
# after the build, as a round fragment: $O (output folder), $T (build-gpu/tests/kiln_gpu_tests). Stage by the first
# argument:
#   A  (fact-finding, ≤ ≈ 70 s; session 15 round A ran it on 17326075 with the count-row probes, deleted since): the
#      Ablation (21 rounds, one process) of the default against the rows named "probe" and no tail, then the Timeline of
#      the default and the probes (p50 / max of the tail's stamps).
#   B  (candidates, ≤ ≈ 90 s): LeanSelection of $LOADS (bit-exact against the CPU reference), then the Ablation of
#      $ONLY (paired against the default, one process, $ROUNDS rounds), then the Timeline of $TL_ONLY.
set -u
O=${O:?set O}
T=${T:-./build-gpu/tests/kiln_gpu_tests}
s0=$(date +%s)
el() { echo "$(( $(date +%s) - s0 )) s"; }
tl_summary() {  # rep 0 of each traced config: the loop barrier and the tail's stamps, p50 / max (µs after the first CTA's entry)
  awk '/\[route timeline\]/ { rep0 = ($0 ~ /rep 0:/); if (rep0) { n = $0; sub(/^\[route timeline\] /, "", n);
         sub(/ rep 0:.*/, "", n); printf "%s |", substr(n, 1, 34) } next }
       rep0 && /^  (loop barrier|counted|spin passed|bases loaded|scan done|bases|routed put|end) / && $(NF - 5) ~ /^[0-9]+$/ {
         k = $1; if ($1 == "bases" && $2 == "loaded") k = "loaded"; else if ($1 == "routed") k = "put";
         printf " %s %s/%s", k, $(NF - 2), $NF; if ($1 == "end") printf "\n" }' "$1"
}
case "${1:-B}" in
A)
  KILN_ROUTE_ONLY='no tail,probe' KILN_ROUTE_ABLATION_ROUNDS=${ROUNDS:-21} timeout 50 stdbuf -oL $T \
    --gtest_filter='MoeRouteMeasure.Ablation' > "$O/measure.txt" 2>&1
  echo "ablation rc=$? ($(el))"
  grep -E "FAILED|Failure|differing" "$O/measure.txt" | head -2
  grep -E "^\s+map: load [0-9]+ \(default\)" "$O/measure.txt" | head -1 | sed 's/  */ /g' | cut -c1-90
  grep -E "\[vs default\]" "$O/measure.txt" | sed 's/  */ /g; s/\[vs default\] map: 17326075 - //' | cut -c1-100
  KILN_ROUTE_ONLY='probe' timeout 45 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Timeline' > "$O/timeline.txt" 2>&1
  echo "timeline rc=$? ($(el))"
  tl_summary "$O/timeline.txt" | cut -c1-160
  ;;
B)
  KILN_LEAN_FIRST=${LOADS:-} timeout 50 stdbuf -oL $T --gtest_filter='MoeRoutingTest.LeanSelection' > "$O/tests.txt" 2>&1
  echo "tests rc=$? ($(el)) $(grep -E '^\[  (PASSED|FAILED)' "$O/tests.txt" | tr '\n' ' ')"
  grep -E "Failure" -A3 "$O/tests.txt" | head -6 | cut -c1-150
  KILN_ROUTE_ONLY=${ONLY:-} KILN_ROUTE_ABLATION_ROUNDS=${ROUNDS:-41} timeout 45 stdbuf -oL $T \
    --gtest_filter='MoeRouteMeasure.Ablation' > "$O/measure.txt" 2>&1
  echo "ablation rc=$? ($(el))"
  grep -E "FAILED|Failure|differing" "$O/measure.txt" | head -2
  grep -E "^\s+map: load [0-9]+ \(default\)" "$O/measure.txt" | head -1 | sed 's/  */ /g' | cut -c1-90
  grep -E "\[vs default\]" "$O/measure.txt" | sed 's/  */ /g; s/\[vs default\] map: //' | cut -c1-100
  if [ -n "${TL_ONLY:-}" ] && [ $(( $(date +%s) - s0 )) -lt 75 ]; then
    KILN_ROUTE_ONLY=$TL_ONLY timeout 30 stdbuf -oL $T --gtest_filter='MoeRouteMeasure.Timeline' > "$O/timeline.txt" 2>&1
    echo "timeline rc=$? ($(el))"
    tl_summary "$O/timeline.txt" | cut -c1-170
  fi
  ;;
esac
