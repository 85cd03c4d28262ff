#!/usr/bin/env bash
# Measurement sweeps of knobs that the tuner does not cover yet (run after bench/run_gpu.sh built build-gpu/):
# col_blocks of the fused RMSNorm+quant tile kernel and the staged tiles of the RMSNorm backward.
set -o pipefail
OUT=${OUT:-$PWD/logs}; mkdir -p "$OUT"
export KILN_CACHE_DIR=$PWD/build-gpu/kiln-cache
K=./build-gpu/tools/kiln
for cb in 1 2 4 8; do
  echo "== N=2048 col_blocks $cb"; KILN_RMSQ_COL_BLOCKS=$cb $K bench --filter "N=2048 mode=2" 2>&1 | grep -E "^rms"
done | tee "$OUT/sweep2048.log"
for cb in 2 4; do
  echo "== N=2048 staged col_blocks $cb"; KILN_RMSQ_STAGE=1 KILN_RMSQ_COL_BLOCKS=$cb $K bench --filter "N=2048 mode=2" 2>&1 | grep -E "^rms"
done | tee -a "$OUT/sweep2048.log"
echo "== N=7168 staged col_blocks 4"; KILN_RMSQ_STAGE=1 KILN_RMSQ_COL_BLOCKS=4 $K bench --filter "N=7168 mode=2" 2>&1 \
  | grep -E "^rms" | tee "$OUT/sweep7168-staged.log"
for cb in 4 7 8 14 28; do
  echo "== N=7168 col_blocks $cb"; KILN_RMSQ_COL_BLOCKS=$cb $K bench --filter "N=7168 mode=2" 2>&1 | grep -E "^rms"
done | tee "$OUT/sweep7168.log"
for st in 1 2; do
  echo "== bwd stages $st"; KILN_RMS_BWD_STAGES=$st $K bench --filter "rms_norm_bwd" 2>&1 | grep -E "^rms"
done | tee "$OUT/sweep-bwd.log"
# Correctness of the non-default variants (the GPU tests run the defaults).
for cb in 2 4 8; do
  KILN_RMSQ_COL_BLOCKS=$cb ./build-gpu/tests/kiln_gpu_tests --gtest_brief=1 --gtest_filter='RmsNormBlockQuant*' 2>&1 \
    | tail -2 | sed "s/^/col_blocks $cb: /"
done | tee "$OUT/variants.log"
for cb in 2 4; do
  KILN_RMSQ_STAGE=1 KILN_RMSQ_COL_BLOCKS=$cb ./build-gpu/tests/kiln_gpu_tests --gtest_brief=1 \
    --gtest_filter='RmsNormBlockQuant*' 2>&1 | tail -2 | sed "s/^/staged col_blocks $cb: /"
done | tee -a "$OUT/variants.log"
KILN_RMS_BWD_STAGES=2 ./build-gpu/tests/kiln_gpu_tests --gtest_brief=1 --gtest_filter='RmsNorm*Bwd*:RmsNormTest.*' 2>&1 \
  | tail -2 | sed "s/^/bwd stages 2: /" | tee -a "$OUT/variants.log"
