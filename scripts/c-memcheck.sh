#!/usr/bin/env bash
# The C API's programs (r1-ffi/tests/c_api.rs: tests/c/test_api.c and the C/C++ chat examples)
# under valgrind (no errors, no definite leaks) and under AddressSanitizer.
#
#   bash scripts/c-memcheck.sh
#
# The build is the portable one (no target-cpu flags): r1 picks its SIMD code at run time, and
# under valgrind, whose virtual CPU has no AVX-512, it takes the AVX2 paths.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "c-memcheck: valgrind is not installed" >&2; exit 1; }

echo "== valgrind"
cargo build --release -p r1-ffi >&2
R1_C_WRAPPER="valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=1" \
  cargo test --release -p r1-ffi --test c_api -- --test-threads=1 c_
echo "== AddressSanitizer"
R1_C_CFLAGS="-fsanitize=address -fno-omit-frame-pointer" ASAN_OPTIONS="detect_leaks=1" \
  cargo test --release -p r1-ffi --test c_api -- --test-threads=1 c_
