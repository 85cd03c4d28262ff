#!/usr/bin/env bash
# Build, GPU tests and benchmarks in one go on the GPU machine (see ../shared/guide/h100.md). Logs go to $OUT (or
# ./logs). Usage: bash bench/run_gpu.sh [ctest regex] [bench filter 'a|b']
#   KILN_SKIP_TORCH=1 skips the torch baselines; KILN_TORCH_ONLY=mod1,mod2 runs only those bench/torch modules;
#   KILN_SKIP_ONE_PROCESS=1 skips the whole GPU test binary in one process; KILN_TUNE=1 also runs `kiln tune` on ling-mini-2.0 (writes $OUT/h100-ling-mini-2.0.json).
set -o pipefail
OUT=${OUT:-$PWD/logs}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$PWD/.deps/usr" 2>&1 | tail -1
cmake --build build-gpu -j16 > "$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
tail -1 "$OUT/build.log"
export KILN_CACHE_DIR=$PWD/build-gpu/kiln-cache
# GPU tests, one process per test (as CI's ctest runs them), then the whole binary in one process.
(cd build-gpu && ctest -L gpu -j12 --timeout 300 --output-on-failure ${1:+-R "$1"} > "$OUT/gpu-tests.log" 2>&1; grep -E "Failed|\*\*\*|tests passed" "$OUT/gpu-tests.log" | tail -40)
gzip -c build-gpu/Testing/Temporary/LastTest.log > "$OUT/LastTest.log.gz" 2>/dev/null
if [ -z "${KILN_SKIP_ONE_PROCESS:-}" ]; then
  ./build-gpu/tests/kiln_gpu_tests --gtest_brief=1 > "$OUT/gpu-tests-one-process.log" 2>&1
  echo "one-process run: rc=$? $(tail -2 "$OUT/gpu-tests-one-process.log" | tr '\n' ' ')"
fi
# KILN_TUNE=1: tune the Ling-mini-2.0 preset at three token counts; the file lands in $OUT (commit it as
# tuner/configs/h100-ling-mini-2.0.json) and in tuner/configs/ of this checkout.
if [ -n "${KILN_TUNE:-}" ]; then
  ./build-gpu/tools/kiln tune --model ling-mini-2.0 --tokens 1024,4096,8192 --out "$OUT/h100-ling-mini-2.0.json" 2>&1 | tee "$OUT/tune.log"
  mkdir -p tuner/configs && cp "$OUT/h100-ling-mini-2.0.json" tuner/configs/ 2>/dev/null
  ./build-gpu/tools/kiln tuning show "$OUT/h100-ling-mini-2.0.json" 2>&1 | tail -40
  # The bench cases again with the tuned file (ops pick its configs): the gain where it shows in a bench shape.
  KILN_TUNING_DB="$OUT/h100-ling-mini-2.0.json" ./build-gpu/tools/kiln bench ${2:+--filter "$2"} 2>&1 | tee "$OUT/bench-tuned.log"
fi
./build-gpu/tools/kiln bench --json "$OUT/bench.json" ${2:+--filter "$2"} 2>&1 | tee "$OUT/bench.log"
for f in $(find "$KILN_CACHE_DIR" -name cubin); do
  cuobjdump -res-usage "$f" 2>&1 | grep -A1 Function | tr '\n' ' ' | cut -c1-230; echo
done > "$OUT/resources.txt"
grep -o "Function [^ ]*\|REG:[0-9]*\|STACK:[0-9]*\|SHARED:[0-9]*\|LOCAL:[0-9]*" "$OUT/resources.txt" | paste - - - - - | sort -u | tail -20
if [ -n "${KILN_NCU:-}" ]; then
  ncu --clock-control none -k regex:"$KILN_NCU" -c 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section LaunchStats --section MemoryWorkloadAnalysis ./build-gpu/tools/kiln bench --repeats 1 --filter "$2" 2>&1 \
    | grep -vE "^==PROF==|^ *-+ *$" | tail -80 > "$OUT/ncu.txt"
  cat "$OUT/ncu.txt"
fi
[ -n "${KILN_SKIP_TORCH:-}" ] || python3 bench/torch_baseline.py --json "$OUT/torch.json" ${KILN_TORCH_ONLY:+--only "$KILN_TORCH_ONLY"} 2>&1 | tail -40 | tee "$OUT/torch.log"
