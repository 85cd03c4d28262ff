#!/usr/bin/env bash
# Session 7 (helper q2) mode-2 stream-kernel round (bench/NOTES.md "Session 7 (helper q2)"): the stream kernel's
# variants (overlap bits) at M = 8192, round_scale 1, N = 2048 and 7168 — measure: the in-process sweep and per-CTA
# timeline (tests/gpu/rms_norm_block_quant_stream_measure_test.cpp: one process, one compile a variant); sweep: the
# same through `kiln bench` (one process a config); ncu / src: Nsight Compute profiles and per-SASS-line counts.
# Logs go to $OUT.
#   q2_round.sh [measure] [sweep] [ncu] [src]      (measure ncu src when no argument)
set -u
out=${OUT:-/tmp}
kiln=${KILN_BIN:-./build-gpu/tools/kiln}
what=${*:-measure ncu src}
tests=${KILN_GPU_TESTS:-./build-gpu/tests/kiln_gpu_tests}
old="warps=16,col_blocks=2,prefetch=1,stages=4,overlap=1,exchange=3"   # the default (session 6)
lean="warps=16,col_blocks=2,prefetch=1,stages=4,overlap=3,exchange=3"  # LEAN
lean1="warps=16,col_blocks=1,prefetch=1,stages=2,overlap=3,exchange=3" # LEAN, one block an item
lean6="warps=16,col_blocks=2,prefetch=1,stages=6,overlap=3,exchange=3" # LEAN, slots for three items
p2048=N=2048,mode=2,round_scale=1,w_f32=0
p7168=N=7168,mode=2,round_scale=1,w_f32=0

if [[ $what == *measure* ]]; then
  "$tests" --gtest_filter='RmsqStreamMeasure.*' > "$out/q2-measure.txt" 2>&1
  grep -E "^\[|^  |FAILED|OK \]" "$out/q2-measure.txt" | head -80
fi

if [[ $what == *sweep* ]]; then
  FORCED_BASE=- bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile $p2048 'M=8192 N=2048 mode=2 round_scale=1' \
    "$old" "$lean" "$lean6" "$old" "$lean" "$lean6" | tee "$out/q2-sweep-2048.txt"
  FORCED_BASE=- bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile $p7168 'M=8192 N=7168 mode=2 round_scale=1' \
    "$old" "$lean" "$lean6" | tee "$out/q2-sweep-7168.txt"
fi

db="$out/q2-forced.json"
force() { python3 bench/sweeps/forced_config.py - rms_norm_block_quant tile 8192 "$1" "$2" "$db" > /dev/null; }
if [[ $what == *ncu* ]]; then
  sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats
            --section WarpStateStats --section InstructionStats --section SourceCounters)
  prof() {  # NAME PARAMS CONFIG FILTER
    force "$2" "$3"
    KILN_TUNING_DB="$db" ncu --clock-control none -k regex:rms_norm_block_quant_stream -c 1 "${sections[@]}" \
      --print-details all "$kiln" bench --repeats 1 --filter "$4" > "$out/q2-ncu-$1.txt" 2>&1
    grep -E "Duration|Registers Per|Executed Instructions  |Issued Warp Per Scheduler|No Eligible|DRAM Throughput" \
      "$out/q2-ncu-$1.txt" | sed "s/^/$1: /"
  }
  prof lean6-2048 $p2048 "$lean6" 'M=8192 N=2048 mode=2 round_scale=1'
  prof lean6-7168 $p7168 "$lean6" 'M=8192 N=7168 mode=2 round_scale=1'
fi
if [[ $what == *src* ]]; then  # per-SASS-instruction executed counts and stall samples of LEAN R6 at N = 2048
  force $p2048 "$lean6"
  KILN_TUNING_DB="$db" ncu --clock-control none -k regex:rms_norm_block_quant_stream -c 1 --section SourceCounters \
    --page source --print-source sass --csv "$kiln" bench --repeats 1 --filter 'M=8192 N=2048 mode=2 round_scale=1' \
    > "$out/q2-ncu-src-lean6-2048.csv" 2>&1 || true
  head -c 300 "$out/q2-ncu-src-lean6-2048.csv"; echo
fi
