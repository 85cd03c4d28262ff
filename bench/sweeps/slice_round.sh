#!/usr/bin/env bash
# Slice-kernel rounds (bench/NOTES.md, "Session 7 (helper q2w)"): forced-config bench rows of rms_norm_block_quant
# mode 2 at M = 8192 against the stream kernel (alternated), and an Nsight Compute profile. (Rounds 1–2 measured the
# removed cluster variant, exchange 7, and the first version of exchange 8.)
# Run from the repo root after the build; logs go to $OUT (default /tmp).
#   slice_round.sh [sweep] [ncu]     (both when no argument)
set -u
out=${OUT:-/tmp}
kiln=${KILN_BIN:-./build-gpu/tools/kiln}
what=${*:-sweep ncu}
stream="warps=16,col_blocks=2,prefetch=1,stages=4,overlap=1,exchange=3"  # the stream kernel (the N ≥ 2048 default)
# slice kernel (exchange 8): SB blocks an item, R slots, [2: EARLY partial-sum loads], [1: two CTAs an SM]
sg() { echo "warps=16,col_blocks=$1,prefetch=${4:-0},stages=$2,overlap=${3:-0},exchange=8"; }

if [[ $what == *sweep* ]]; then
  # Round 3: N = 2048 rs1 now defaults to exchange 8 (2 blocks, 5 slots): A/B against the stream kernel, alternated
  # three times, with the EARLY partial-sum loads (overlap 2) and two CTAs an SM (prefetch 1); rs0; one 7168 check.
  FORCED_BASE=- timeout 170 bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile N=2048,mode=2,round_scale=1,w_f32=0 \
    'M=8192 N=2048 mode=2 round_scale=1' "$stream" "$(sg 2 5)" "$(sg 2 5 2)" "$(sg 1 2 0 1)" "$stream" "$(sg 2 5)" \
    "$(sg 2 5 2)" "$stream" "$(sg 2 5)" "$(sg 2 5 2)" | tee "$out/slice-sweep-2048.txt"
  FORCED_BASE=- timeout 90 bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile N=2048,mode=2,round_scale=0,w_f32=0 \
    'M=8192 N=2048 mode=2 round_scale=0' "$stream" "$(sg 2 5)" "$(sg 2 5 2)" "$stream" | tee "$out/slice-sweep-2048-rs0.txt"
  FORCED_BASE=- timeout 90 bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile N=7168,mode=2,round_scale=1,w_f32=0 \
    'M=8192 N=7168 mode=2 round_scale=1' "$stream" "$(sg 2 5 2)" "$(sg 2 5)" | tee "$out/slice-sweep-7168.txt"
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
      "${sections[@]}" --print-details all "$kiln" bench --repeats 1 --filter "M=8192 $2 mode=2 round_scale=1" \
      > "$out/slice-ncu-$1.txt" 2>&1
    grep -E "Duration|Registers Per|Achieved Occupancy|Issued Warp Per Scheduler|DRAM Throughput|Executed Instructions  " \
      "$out/slice-ncu-$1.txt" | sed "s/^/$1: /"
  }
  prof global-2048-early N=2048 "$(sg 2 5 2)"
fi
