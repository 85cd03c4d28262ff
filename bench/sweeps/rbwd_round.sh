#!/usr/bin/env bash
# Session 7 (helper rbwd) router_gemm backward rounds (bench/NOTES.md "Session 7 (helper rbwd)").
#   rbwd_round.sh [ncu [KERNELS]]     (ncu of dx_tma and dw_tma when no argument)
# ncu: the two TMA backward kernels inside the op at 8192 × 2048 → 256 (precision standard): is their main loop
# bound by shared-memory bandwidth (the roofline written before measuring: dx needs 160 B/cycle at the tensor rate,
# dw 112)? SpeedOfLight + memory workload (shared-memory pipe / bank utilisation) + compute workload (tensor pipe)
# + warp states (session 7 also profiled its co-tiled kernel, bwd_fused, since removed). Logs go to $OUT.
set -u
out=${OUT:-/tmp}
kiln=${KILN_BIN:-./build-gpu/tools/kiln}
what=${1:-ncu}
kernels=${2:-dx_tma dw_tma}
op='router_gemm_fp32_bwd T=8192 K=2048 E=256$'
if [[ $what == *ncu* ]]; then
  sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Chart
            --section MemoryWorkloadAnalysis_Tables --section ComputeWorkloadAnalysis --section WarpStateStats)
  for k in $kernels; do
    f=$op
    ncu --clock-control none -k regex:router_gemm_${k}_kernel -c 1 "${sections[@]}" --print-details all \
      "$kiln" bench --repeats 1 --filter "$f" > "$out/rbwd-ncu-$k.txt" 2>&1
    grep -E "Duration|Shared Memory|Shared|Tensor|Pipe|L1/TEX Cache Throughput|DRAM Throughput|Issue Slots|Warp Cycles Per Issued" \
      "$out/rbwd-ncu-$k.txt" | head -40 | sed "s/^/$k: /"
    # raw counters (a metric name this ncu does not know fails only this line)
    ncu --clock-control none -k regex:router_gemm_${k}_kernel -c 1 --metrics \
      l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_reads.avg.pct_of_peak_sustained_elapsed,l1tex__data_bank_writes.avg.pct_of_peak_sustained_elapsed,sm__inst_executed_pipe_tensor_op_gmma.sum,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed,sm__cycles_elapsed.avg \
      "$kiln" bench --repeats 1 --filter "$f" > "$out/rbwd-ncu-metrics-$k.txt" 2>&1 || true
    grep -E "l1tex|sm__" "$out/rbwd-ncu-metrics-$k.txt" | sed "s/^/$k: /"
  done
fi
