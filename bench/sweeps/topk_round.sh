#!/usr/bin/env bash
# A GPU round's measurement of the MoE routing forward (bench/NOTES.md, "Session 6 (helper topk)"): the tuner's table
# of the moe_routing family at 8192 tokens (every route config: warps × tokens per warp × fill × select), and an ncu
# profile of the route kernel at a forced config (default select 2, fill 4, 8 × 4; ROUTE_SET overrides it).
# Usage (repo root, after the build): OUT=dir bash bench/sweeps/topk_round.sh
set -u
OUT=${OUT:?set OUT}
K=./build-gpu/tools/kiln
SET=${ROUTE_SET:-select=2,fill=4,warps=8,tokens_per_warp=4}
CASE='moe_topk_routing_fwd T=8192 E=256 k=8 sigmoid groups=8/4 bias map'
$K tune --model ling-mini-2.0 --tokens 8192 --families moe_routing --out "$OUT/topk-tune.json" > "$OUT/topk-tune.log" 2>&1
python3 bench/sweeps/forced_config.py tuner/configs/h100-ling-mini-2.0.json moe_routing route 8192 map=1 "$SET" \
  "$OUT/topk-forced.json"
KILN_TUNING_DB="$OUT/topk-forced.json" ncu --clock-control none -k regex:moe_route_kernel -c 1 --section SpeedOfLight \
  --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats --section InstructionStats \
  --metrics sm__ctas_launched.min,sm__ctas_launched.max,sm__cycles_active.min,sm__cycles_active.max,sm__cycles_active.avg,sm__warps_active.avg.per_cycle_active,smsp__inst_executed.sum \
  $K bench --repeats 1 --filter "$CASE" > "$OUT/topk-ncu.txt" 2>&1
grep -vE "^\s*$" "$OUT/topk-tune.log" | tail -70
grep -E "Duration|Executed Ipc A|SM Active|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Executed Instructions  |Issue Slots Busy|No Eligible|sm__|smsp__inst" "$OUT/topk-ncu.txt" | head -30
