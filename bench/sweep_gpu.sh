#!/usr/bin/env bash
# GPU tests as separate processes (ctest), a crash backtrace, and a col_blocks sweep of the fused RMSNorm+quant kernel.
set -o pipefail
OUT=${OUT:-$PWD/logs}; mkdir -p "$OUT"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$PWD/.deps/usr" 2>&1 | tail -1
cmake --build build-gpu -j16 2>&1 | tail -1 || exit 1
(cd build-gpu && ctest -L gpu -j12 --timeout 300 2>&1 | tail -15 | tee "$OUT/ctest-gpu.log")
cuda-gdb -batch -ex run -ex bt --args ./build-gpu/tests/kiln_gpu_tests --gtest_brief=1 \
  --gtest_filter='RmsNormBlockQuantTest.*:RmsNormTest.FwdRmsInvIsOptional' 2>&1 | grep -vE "^\[(New|Thread)" | tail -25 > "$OUT/gdb.log"
cat "$OUT/gdb.log"
for cb in 0 1 2 4; do
  echo "== col_blocks $cb"; KILN_RMSQ_COL_BLOCKS=$cb ./build-gpu/tools/kiln bench --filter "N=2048 mode=" 2>&1 | grep -E "^rms"
done | tee "$OUT/sweep2048.log"
for cb in 4 7 8; do
  echo "== col_blocks $cb"; KILN_RMSQ_COL_BLOCKS=$cb ./build-gpu/tools/kiln bench --filter "N=7168 mode=2" 2>&1 | grep -E "^rms"
done | tee "$OUT/sweep7168.log"
./build-gpu/tools/kiln bench --filter rms_norm_ 2>&1 | grep -E "^rms_norm_(fwd|bwd)|device" | tee "$OUT/norm.log"
