#!/usr/bin/env bash
# Launch-shape sweep of the softmax cross-entropy kernels at M=8192 V=157184 bf16 (issue 8 targets: fwd ≤ 840 µs,
# bwd ≤ 1780 µs, fused ≤ 1870 µs). KILN_CE_{FWD,FUSED,BWD}="<CTAs per row>x<threads>[x<loads in flight per thread>]"
# override the heuristic.
# Run after bench/run_gpu.sh has built build-gpu: bash bench/sweep_loss.sh
set -o pipefail
OUT=${OUT:-$PWD/logs}; mkdir -p "$OUT"
export KILN_CACHE_DIR=${KILN_CACHE_DIR:-$PWD/build-gpu/kiln-cache}
K=./build-gpu/tools/kiln
{
for c in 1x1024 2x512 2x1024 4x256 4x512 8x256 8x512 2x512x8 4x256x8 4x512x8; do
  echo "== fwd $c"; KILN_CE_FWD=$c $K bench --filter "softmax_cross_entropy_fwd M=8192 V=157184" 2>&1 | grep -E "^softmax"
done
for c in 2x512 4x512 5x256 5x512 8x256 8x512 10x512 16x256 5x256x8 10x256x8 5x512x2; do
  echo "== bwd $c"; KILN_CE_BWD=$c $K bench --filter "softmax_cross_entropy_bwd" 2>&1 | grep -E "^softmax"
done
for c in 4x256 4x512 8x128 8x256 8x512 16x128 16x256; do
  echo "== fused $c"; KILN_CE_FUSED=$c $K bench --filter "softmax_cross_entropy_fused" 2>&1 | grep -E "^softmax"
done
} | tee "$OUT/sweep_loss.log"
