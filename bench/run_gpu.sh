#!/usr/bin/env bash
# Build, GPU tests and benchmarks in one go on the GPU machine (see ../shared/guide/h100.md). Logs go to $OUT (or
# ./logs). Usage: bash bench/run_gpu.sh [gtest filter] [bench filter]
set -o pipefail
OUT=${OUT:-$PWD/logs}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.deps/usr" 2>&1 | tail -3
cmake --build build-gpu -j16 2>&1 | tail -3 || exit 1
export KILN_CACHE_DIR=$PWD/build-gpu/kiln-cache
./build-gpu/tests/kiln_gpu_tests --gtest_brief=1 --gtest_filter="${1:-*}" 2>&1 | tee "$OUT/gpu-tests.log" | tail -30
./build-gpu/tools/kiln bench --json "$OUT/bench.json" ${2:+--filter "$2"} 2>&1 | tee "$OUT/bench.log"
[ -n "${KILN_SKIP_TORCH:-}" ] || python3 bench/torch_baseline.py --json "$OUT/torch.json" 2>&1 | tail -12 | tee "$OUT/torch.log"
