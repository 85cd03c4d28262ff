#!/usr/bin/env bash
# A GPU round's measurement of the MoE routing forward (bench/NOTES.md, "Session 7 (helper topk)"): the tuner's table
# of the moe_routing family at 1024, 4096 and 8192 tokens (every route config: warps × tokens per warp × fill × load × tpt), and ncu
# profiles of the route kernel (with the map) at three forced configs: ROUTE_SET (default: the CTA-run kernel, tpt 16,
# 16 warps, −1 rows after the arrival: the default with the map), ROUTE_BASE (default: the warp kernel, 16 × 2 fill 3) and
# ROUTE_WIDE (default: tpt 16, 16 warps, −1 rows at the start), with the per-SM spread of CTAs and active cycles,
# DRAM throughput and the stall reasons, plus ROUTE_SET's per-instruction execution counts (source page, SASS).
# Usage (repo root, after the build): OUT=dir bash bench/sweeps/topk_round.sh
set -u
OUT=${OUT:?set OUT}
K=./build-gpu/tools/kiln
SET=${ROUTE_SET:-tpt=16,load=0,fill=4,warps=16,tokens_per_warp=2}
BASE=${ROUTE_BASE:-tpt=0,load=0,fill=3,warps=16,tokens_per_warp=2}
WIDE=${ROUTE_WIDE:-tpt=16,load=0,fill=3,warps=16,tokens_per_warp=2}
KREGEX='regex:moe_route_(run_)?kernel'

CASE='moe_topk_routing_fwd T=8192 E=256 k=8 sigmoid groups=8/4 bias map'
$K tune --model ling-mini-2.0 --tokens ${TOKENS:-1024,4096,8192} --families moe_routing --out "$OUT/topk-tune.json" --json \
  > "$OUT/topk-tune-table.json" 2> "$OUT/topk-tune.log"
python3 bench/tune_table.py "$OUT/topk-tune-table.json" > "$OUT/topk-tune-table.txt" 2>&1
METRICS='sm__ctas_launched.min,sm__ctas_launched.max,sm__cycles_active.min,sm__cycles_active.max,sm__cycles_active.avg,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
for v in set base wide; do
  case $v in set) S=$SET ;; base) S=$BASE ;; wide) S=$WIDE ;; esac
  python3 bench/sweeps/forced_config.py tuner/configs/h100-ling-mini-2.0.json moe_routing route 8192 map=1 "$S" \
    "$OUT/topk-forced-$v.json"
  KILN_TUNING_DB="$OUT/topk-forced-$v.json" ncu --clock-control none -k "$KREGEX" -c 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats \
    --section InstructionStats --metrics "$METRICS" $K bench --repeats 1 --filter "$CASE" > "$OUT/topk-ncu-$v.txt" 2>&1
done
KILN_TUNING_DB="$OUT/topk-forced-set.json" ncu --clock-control none -k "$KREGEX" -c 1 \
  --section SourceCounters --page source --print-source sass --csv $K bench --repeats 1 --filter "$CASE" \
  > "$OUT/topk-ncu-source.csv" 2>&1
cat "$OUT/topk-tune-table.txt"
for v in set base wide; do
  echo "== ncu $v"
  grep -E "moe_route_(run_)?kernel<|Duration|DRAM Throughput|Executed Ipc A|SM Active|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Executed Instructions  |No Eligible|sm__" "$OUT/topk-ncu-$v.txt" | head -20
  grep -E "issue_stalled" "$OUT/topk-ncu-$v.txt" | awk '$NF+0 > 0.2' | head -12
done
wc -l "$OUT/topk-ncu-source.csv"
