#!/usr/bin/env bash
# Profile one kernel of one bench case with Nsight Compute: stall reasons and the hottest SASS lines.
# Usage: bash bench/ncu_gpu.sh <kernel regex> <bench filter>
set -o pipefail
OUT=${OUT:-$PWD/logs}; mkdir -p "$OUT"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$PWD/.deps/usr" 2>&1 | tail -1
cmake --build build-gpu -j16 2>&1 | tail -1 || exit 1
ncu --clock-control none -k regex:"$1" -c 1 --section SpeedOfLight --section WarpStateStats --section SourceCounters \
  --section Occupancy --section SchedulerStats ./build-gpu/tools/kiln bench --repeats 1 --filter "$2" > "$OUT/ncu-$1.txt" 2>&1
grep -E "Duration|Throughput|Stall|stall|Issued|Eligible|Active Warps|Warp Cycles|smsp__pcsamp|Theoretical" "$OUT/ncu-$1.txt" | head -40
