#!/usr/bin/env bash
# Mode-2 measurement round (bench/NOTES.md, "Session 6: mode 2"): forced-config sweeps of rms_norm_block_quant
# mode 2 at M = 8192 (round_scale 1, N = 7168 and 2048) and Nsight Compute profiles of the kernels. Run from the repo
# root after the build; logs go to $OUT (default /tmp).
#   mode2_round.sh [sweep] [ncu] [g1]     (sweep and ncu when no argument)
set -u
out=${OUT:-/tmp}
kiln=${KILN_BIN:-./build-gpu/tools/kiln}
what=${*:-sweep ncu}
z='prefetch=0,stages=0,overlap=0'
gx1="warps=0,col_blocks=1,$z,exchange=5"    # tile kernel, clusters of 8 + global exchange, one block a CTA
t512="warps=0,col_blocks=1,$z,exchange=6"   # the same grid and exchange, the stream kernel's block code (512 threads)
t512w="warps=0,col_blocks=1,prefetch=0,stages=0,overlap=1,exchange=6"  # tile512, clusters of up to 16 (14 / one a row)
t512b="warps=0,col_blocks=2,$z,exchange=6"  # tile512, two blocks a CTA (the second staged by cp.async)
stream="warps=16,col_blocks=2,prefetch=1,stages=4,overlap=1,exchange=3"  # the stream kernel (N ≥ 2048 default)
ring="warps=8,col_blocks=2,prefetch=0,stages=2,overlap=0,exchange=1"  # the ring kernel (N = 2048 rs1 default before)

if [[ $what == *g1* ]]; then  # round 3: ring vs stream at N = 2048 rs1, twice each, alternating (the stream kernel ran
  # 27.5–28.5 µs under ncu against the ring's 30.6–31.3; its op had ≈ 3 µs of scratch re-mapping on top)
  FORCED_BASE=- bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile N=2048,mode=2,round_scale=1,w_f32=0 \
    'M=8192 N=2048 mode=2 round_scale=1' "$ring" "$stream" "$ring" "$stream" | tee "$out/mode2-sweep-2048-g1.txt"
fi

if [[ $what == *sweep* ]]; then
  FORCED_BASE=- bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile N=7168,mode=2,round_scale=1,w_f32=0 \
    'M=8192 N=7168 mode=2 round_scale=1' "$gx1" "$t512" "$t512w" "$t512b" "$stream" | tee "$out/mode2-sweep-7168.txt"
  FORCED_BASE=- bash bench/sweeps/rows_sweep.sh rms_norm_block_quant tile N=2048,mode=2,round_scale=1,w_f32=0 \
    'M=8192 N=2048 mode=2 round_scale=1' "$gx1" "$t512" "$t512w" "$t512b" | tee "$out/mode2-sweep-2048.txt"
fi

if [[ $what == *ncu* ]]; then
  # Every section that names where the time goes (stalls by reason and by source line, memory tables).
  sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats
            --section WarpStateStats --section SourceCounters --section MemoryWorkloadAnalysis
            --section MemoryWorkloadAnalysis_Tables --section ComputeWorkloadAnalysis --section InstructionStats)
  db="$out/mode2-forced.json"
  # prof NAME KERNEL_REGEX BENCH_FILTER [N=…,… CONFIG]: one kernel launch of that case, the config forced if given.
  prof() {
    local env=()
    if [[ $# -ge 5 ]]; then
      python3 bench/sweeps/forced_config.py - rms_norm_block_quant tile 8192 "$4" "$5" "$db" > /dev/null
      env=(KILN_TUNING_DB="$db")
    fi
    env "${env[@]}" ncu --clock-control none -k "regex:$2" -c 1 "${sections[@]}" --print-details all \
      "$kiln" bench --repeats 1 --filter "$3" > "$out/mode2-ncu-$1.txt" 2>&1
    grep -E "Duration|Registers Per|Achieved Occupancy|Issued Warp Per Scheduler|DRAM Throughput" "$out/mode2-ncu-$1.txt" |
      sed "s/^/$1: /"
  }
  prof stream-7168 rms_norm_block_quant_stream 'M=8192 N=7168 mode=2 round_scale=1'
  prof ring-2048 rms_norm_block_quant_ring 'M=8192 N=2048 mode=2 round_scale=1'
  prof tile512-7168 rms_norm_block_quant_tile512 'M=8192 N=7168 mode=2 round_scale=1' N=7168,mode=2,round_scale=1,w_f32=0 \
    "$t512"
  prof stream-2048 rms_norm_block_quant_stream 'M=8192 N=2048 mode=2 round_scale=1' N=2048,mode=2,round_scale=1,w_f32=0 \
    "$stream"
fi
