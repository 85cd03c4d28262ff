#!/usr/bin/env bash
# Session 8 (helper q2s) mode-2 split-role round (bench/NOTES.md "Session 8 (helper q2s)"): the split kernel
# (config exchange 7) against the stream kernel's default at M = 8192, round_scale 1, N = 2048 and 7168.
#   measure: the in-process sweep (tests/gpu/rms_norm_block_quant_split_measure_test.cpp: one process, interleaved
#            rounds, L2 flushed; split outputs checked bit-exact against the stream kernel with the same blocks an item)
#   sweep:   the same configs through `kiln bench` (forced by a one-entry tuning file, one process a config)
#   ncu:     Nsight Compute of the split kernel (R7 + EP) at both N: duration, registers, instructions, issue, stalls
#   src:     per-SASS-line executed instructions and stall samples (SourceCounters, csv) of split CB 2 at N = 2048
# Logs go to $OUT.
#   q2s_round.sh [measure] [sweep] [ncu] [src]      (measure ncu when no argument)
set -u
out=${OUT:-/tmp}
kiln=${KILN_BIN:-./build-gpu/tools/kiln}
what=${*:-measure ncu}
tests=${KILN_GPU_TESTS:-./build-gpu/tests/kiln_gpu_tests}
stream="warps=16,col_blocks=2,prefetch=1,stages=4,overlap=3,exchange=3"  # the default (stream LEAN R4)
split2="warps=16,col_blocks=2,prefetch=1,stages=6,overlap=1,exchange=7"  # split, two blocks an item
split1="warps=16,col_blocks=1,prefetch=1,stages=3,overlap=1,exchange=7"  # split, one block an item
r7ep="warps=16,col_blocks=2,prefetch=1,stages=7,overlap=193,exchange=7"  # split R7 + EP (7 slots, early polls)
p2048=N=2048,mode=2,round_scale=1,w_f32=0
p7168=N=7168,mode=2,round_scale=1,w_f32=0

if [[ $what == *measure* ]]; then
  "$tests" --gtest_filter='SplitRoleMeasure.*' > "$out/q2s-measure.txt" 2>&1
  grep -E "^\[|^  |FAILED|OK \]|Failure|differing" "$out/q2s-measure.txt" | head -120
fi

if [[ $what == *sweep* ]]; then
  FORCED_BASE=- bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile $p2048 'M=8192 N=2048 mode=2 round_scale=1' \
    "$stream" "$split2" "$r7ep" | tee "$out/q2s-sweep-2048.txt"
  FORCED_BASE=- bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile $p7168 'M=8192 N=7168 mode=2 round_scale=1' \
    "$stream" "$split2" "$r7ep" | tee "$out/q2s-sweep-7168.txt"
fi

db="$out/q2s-forced.json"
force() { python3 bench/sweeps/forced_config.py - rms_norm_block_quant tile 8192 "$1" "$2" "$db" > /dev/null; }
if [[ $what == *ncu* ]]; then
  sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats
            --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis)
  prof() {  # NAME PARAMS CONFIG FILTER
    force "$2" "$3"
    KILN_TUNING_DB="$db" ncu --clock-control none -k regex:rms_norm_block_quant_split -c 1 "${sections[@]}" \
      --print-details all "$kiln" bench --repeats 1 --filter "$4" > "$out/q2s-ncu-$1.txt" 2>&1
    grep -E "Duration|Registers Per|Executed Instructions  |Issued Warp Per Scheduler|No Eligible|DRAM Throughput|Bank Conflicts|Stall" \
      "$out/q2s-ncu-$1.txt" | sed "s/^/$1: /" | head -40
  }
  prof r7ep-2048 $p2048 "$r7ep" 'M=8192 N=2048 mode=2 round_scale=1'
  prof r7ep-7168 $p7168 "$r7ep" 'M=8192 N=7168 mode=2 round_scale=1'
fi
if [[ $what == *src* ]]; then  # per-SASS-instruction executed counts and stall samples of split CB 2 at N = 2048
  force $p2048 "$split2"
  KILN_TUNING_DB="$db" ncu --clock-control none -k regex:rms_norm_block_quant_split -c 1 --section SourceCounters \
    --page source --print-source sass --csv "$kiln" bench --repeats 1 --filter 'M=8192 N=2048 mode=2 round_scale=1' \
    > "$out/q2s-ncu-src-split2-2048.csv" 2>&1 || true
  head -c 300 "$out/q2s-ncu-src-split2-2048.csv"; echo
fi
