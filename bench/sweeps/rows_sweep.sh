#!/usr/bin/env bash
# Forced-config sweep of one bench case (bench/NOTES.md): for each config override, a one-entry tuning file
# (bench/sweeps/forced_config.py) and `kiln bench` of the case with it; prints "override → the bench line".
#   rows_sweep.sh FAMILY KERNEL PARAMS 'BENCH FILTER' OVERRIDE...
# e.g. rows_sweep.sh rms_norm_block_quant row N=2048,mode=0,round_scale=1 'M=8192 N=2048 mode=0 round_scale=1' \
#        overlap=0 overlap=1 overlap=1,warps=16
set -u
family=$1 kernel=$2 params=$3 filter=$4
shift 4
kiln=${KILN_BIN:-./build-gpu/tools/kiln}
# FORCED_BASE=- builds each entry from PARAMS (every param) and the override (every config field) instead.
base=${FORCED_BASE:-tuner/configs/h100-ling-mini-2.0.json}
tmp=$(mktemp -d)
for o in "$@"; do
  python3 bench/sweeps/forced_config.py "$base" "$family" "$kernel" 8192 "$params" "$o" \
    "$tmp/f.json" > /dev/null || continue
  KILN_TUNING_DB="$tmp/f.json" "$kiln" bench --filter "$filter" > "$tmp/log" 2>&1
  line=$(grep -F "$filter" "$tmp/log" | head -1)
  echo "$o → ${line:-$(tail -2 "$tmp/log" | tr '\n' ' ')}"
done
rm -rf "$tmp"
