#!/usr/bin/env bash
# Resident-slice kernel round (bench/NOTES.md, "Session 7 (helper q2w)"): forced-config bench rows of
# rms_norm_block_quant mode 2 at M = 8192 round_scale 1 (the slice kernel, exchange 7, against the stream kernel's
# default, alternated), the slice kernel's resident clusters (debug log), and an Nsight Compute profile of it.
# Run from the repo root after the build; logs go to $OUT (default /tmp).
#   slice_round.sh [sweep] [ncu]     (both when no argument)
set -u
out=${OUT:-/tmp}
kiln=${KILN_BIN:-./build-gpu/tools/kiln}
what=${*:-sweep ncu}
stream="warps=16,col_blocks=2,prefetch=1,stages=4,overlap=1,exchange=3"  # the stream kernel (the N ≥ 2048 default)
# SB blocks a CTA, R slots, [1: x loaded evict-first], [1: Σx² on the tensor cores]
slice() { echo "warps=16,col_blocks=$1,prefetch=${4:-0},stages=$2,overlap=${3:-0},exchange=7"; }

if [[ $what == *sweep* ]]; then
  FORCED_BASE=- timeout 120 bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile N=7168,mode=2,round_scale=1,w_f32=0 \
    'M=8192 N=7168 mode=2 round_scale=1' "$stream" "$(slice 4 5)" "$(slice 4 5 1)" "$(slice 4 5 0 1)" "$stream" \
    "$(slice 4 5)" "$(slice 4 5 1)" "$(slice 4 5 1 1)" | tee "$out/slice-sweep-7168.txt"
  FORCED_BASE=- timeout 180 bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile N=2048,mode=2,round_scale=1,w_f32=0 \
    'M=8192 N=2048 mode=2 round_scale=1' "$stream" "$(slice 4 5)" "$(slice 4 5 1)" "$(slice 4 5 0 1)" "$(slice 2 3)" \
    "$(slice 2 3 1)" "$(slice 1 2)" "$(slice 2 2)" "$stream" "$(slice 4 5)" | tee "$out/slice-sweep-2048.txt"
  # Clusters resident at once (ring_groups' debug line) for the two target points.
  for p in "N=7168 $(slice 4 5)" "N=2048 $(slice 4 5)" "N=2048 $(slice 2 3)" "N=2048 $(slice 2 2)"; do
    n=${p%% *} cfg=${p#* }
    python3 bench/sweeps/forced_config.py - rms_norm_block_quant tile 8192 "$n,mode=2,round_scale=1,w_f32=0" "$cfg" \
      "$out/slice-forced.json" > /dev/null
    KILN_LOG_LEVEL=debug KILN_TUNING_DB="$out/slice-forced.json" timeout 60 "$kiln" bench --repeats 1 \
      --filter "M=8192 $n mode=2 round_scale=1" 2>&1 | grep -E "resident at once" | sed "s/^/$n $cfg: /"
  done | tee "$out/slice-occupancy.txt"
fi

if [[ $what == *ncu* ]]; then
  sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats
            --section WarpStateStats --section SourceCounters --section MemoryWorkloadAnalysis
            --section MemoryWorkloadAnalysis_Tables --section ComputeWorkloadAnalysis --section InstructionStats)
  db="$out/slice-forced.json"
  prof() {  # NAME N=… CONFIG
    python3 bench/sweeps/forced_config.py - rms_norm_block_quant tile 8192 "$2,mode=2,round_scale=1,w_f32=0" "$3" "$db" \
      > /dev/null
    KILN_TUNING_DB="$db" timeout 120 ncu --clock-control none -k "regex:rms_norm_block_quant_slice" -c 1 \
      "${sections[@]}" --print-details all "$kiln" bench --repeats 1 --filter "M=8192 ${2/,/ } mode=2 round_scale=1" \
      > "$out/slice-ncu-$1.txt" 2>&1
    grep -E "Duration|Registers Per|Achieved Occupancy|Issued Warp Per Scheduler|DRAM Throughput|Executed Instructions  " \
      "$out/slice-ncu-$1.txt" | sed "s/^/$1: /"
  }
  prof 7168 N=7168 "$(slice 4 5)"
fi
