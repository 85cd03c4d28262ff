#!/usr/bin/env bash
# tests/install_consumer.sh BUILD_DIR SOURCE_DIR [GENERATOR] [CXX_COMPILER]
#
# The install tree works for a separate project: `cmake --install` kiln from BUILD_DIR into a temporary prefix,
# configure and build examples/consumer against it with find_package(kiln), and run it (exit 0 without a GPU).
# Also checks that README.md shows examples/consumer/main.cpp verbatim, and what it prints.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
generator=${3:-}
cxx=${4:-}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log" || { cat "$tmp/install.log"; exit 1; }

configure=(cmake -S "$src/examples/consumer" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release)
[[ -n $generator ]] && configure+=(-G "$generator")
[[ -n $cxx ]] && configure+=(-DCMAKE_CXX_COMPILER="$cxx")
"${configure[@]}"
cmake --build "$tmp/build" -j 2

# The consumer must find kiln's headers and library in the prefix, not in the source or build tree.
if grep -rqs -e "$src/include" -e "$build" "$tmp/build/CMakeFiles/app.dir/flags.make" "$tmp/build/build.ninja"; then
  echo "the consumer build refers to kiln's source or build tree instead of the install prefix" >&2
  exit 1
fi

# The cache goes to the temporary directory; the consumer must not need KILN_* settings from the caller.
env -u KILN_CACHE_DIR -u KILN_ARCH -u KILN_REQUIRE_PREWARMED "$tmp/build/app" "$tmp/cache" | tee "$tmp/app.out"
# The C ABI from a C program (exit 0: the header compiled as C, the call's error came back as a status + message).
env -u KILN_CACHE_DIR -u KILN_ARCH -u KILN_REQUIRE_PREWARMED KILN_CACHE_DIR="$tmp/cache" "$tmp/build/c_abi"

# README.md shows what it prints (the block after "What it prints without a GPU:", with the cache in /tmp/kiln-cache).
# The kernel count is left out of the comparison: it grows whenever a family enumerates another kernel.
awk '/^What it prints without a GPU:/ {want = 1; next}
     want && /^```/ {if (inside) exit; inside = 1; next}
     inside {print}' "$src/README.md" | sed -E 's/^prewarmed [0-9]+ kernels/prewarmed N kernels/' >"$tmp/readme_out.txt"
sed -E "s|$tmp/cache|/tmp/kiln-cache|g; s/^prewarmed [0-9]+ kernels/prewarmed N kernels/" "$tmp/app.out" >"$tmp/app_out.txt"
if ! diff -u "$tmp/readme_out.txt" "$tmp/app_out.txt"; then
  echo "README.md's \"What it prints without a GPU\" differs from what examples/consumer prints (update README.md)" >&2
  exit 1
fi

# README.md's C++ example is examples/consumer/main.cpp: the ```cpp block that follows the line naming the file.
awk '/^<!-- examples\/consumer\/main.cpp -->/ {want = 1; next}
     want && /^```cpp/ {inside = 1; next}
     inside && /^```/ {exit}
     inside {print}' "$src/README.md" >"$tmp/readme_main.cpp"
if ! diff -u "$src/examples/consumer/main.cpp" "$tmp/readme_main.cpp"; then
  echo "README.md's C++ example differs from examples/consumer/main.cpp (keep them identical)" >&2
  exit 1
fi
echo "InstallConsumer: ok"
