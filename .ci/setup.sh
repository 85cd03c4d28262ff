#!/usr/bin/env bash
# .ci/setup.sh prewarm|test — the README's two set-up commands.
#
# Installs the Debian packages kiln builds with (only those missing; sudo only when not root), configures and
# builds kiln in build/ (Ninja, Release), then
#   prewarm   compiles every kernel ling-mini-2.0 needs for sm_90a into the cubin cache (no GPU needed);
#   test      runs the whole test suite (GPU tests, label "gpu", skip without a GPU).
# The CUDA toolkit (NVRTC and headers, /usr/local/cuda or $CUDA_HOME) is not a Debian package here: see README.md.
set -euo pipefail

mode=${1:-}
if [[ $mode != prewarm && $mode != test ]]; then
  echo "usage: .ci/setup.sh prewarm|test" >&2
  exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(cmake ninja-build g++ libfmt-dev nlohmann-json3-dev libxxhash-dev libgtest-dev libbenchmark-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  echo "installing: ${missing[*]}"
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

jobs=$(nproc)
configure=(cmake -S . -B build -DCMAKE_BUILD_TYPE=Release)
[[ -f build/CMakeCache.txt ]] || configure+=(-G Ninja)  # an existing build/ keeps its generator
"${configure[@]}"

if [[ $mode == prewarm ]]; then
  cmake --build build -j "$jobs" --target kiln_cli
  ./build/tools/kiln prewarm --model ling-mini-2.0 --arch sm_90a
else
  cmake --build build -j "$jobs"
  ctest --test-dir build --output-on-failure -j "$jobs"
fi
