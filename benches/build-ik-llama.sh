#!/usr/bin/env bash
# Builds ik_llama.cpp's llama-bench (the second peer of benches/compare_llama_cpp.sh) from a
# source tree or a bare git snapshot of github.com/ikawrakow/ik_llama.cpp, and prints the folder
# of the binary (use it as IK_LLAMA_BIN):
#
#   bash benches/build-ik-llama.sh SOURCE [BUILD_DIR]   (default BUILD_DIR: ~/.cache/r1-peer-ik)
#
# Only what llama-bench needs is built (ggml with its iqk kernels, llama, common), natively for
# this CPU like the llama.cpp peer, and without the flash-attention kernels for every pair of
# cache quantizations (GGML_IQK_FA_ALL_QUANTS: llama-bench runs f16 caches). About 13 minutes on
# 2 cores (Ice Lake, 2026-12-07).
set -euo pipefail
src=${1:?usage: build-ik-llama.sh SOURCE [BUILD_DIR]}
out=${2:-$HOME/.cache/r1-peer-ik}
if [ -x "$out/build/bin/llama-bench" ]; then echo "$out/build/bin"; exit 0; fi
mkdir -p "$out"
if [ -f "$src/HEAD" ] && [ ! -f "$src/CMakeLists.txt" ]; then
  # A bare snapshot: take out the parts the build reads.
  rm -rf "$out/src" && mkdir -p "$out/src"
  git --git-dir="$src" archive HEAD -- CMakeLists.txt cmake common ggml include src vendor \
    examples/llama-bench | tar -x -C "$out/src"
  src="$out/src"
  echo 'add_subdirectory(llama-bench)' > "$src/examples/CMakeLists.txt"
  sed -i 's|^    add_subdirectory(pocs)|    # pocs: not in this build|' "$src/CMakeLists.txt"
fi
cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_CURL=OFF \
  -DGGML_IQK_FA_ALL_QUANTS=OFF >&2
cmake --build "$out/build" --target llama-bench -j "$(nproc)" >&2
echo "$out/build/bin"
