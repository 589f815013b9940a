#!/usr/bin/env bash
# The C API's programs (r1-ffi/tests/c_api.rs: tests/c/test_api.c and the C/C++ chat examples)
# under valgrind (no errors, no definite leaks) and under AddressSanitizer.
#
#   bash scripts/c-memcheck.sh
#
# valgrind cannot decode AVX-512, which target-cpu=native enables on this project's machines, so
# its libr1 is built for x86-64-v3 (AVX2/FMA) into target/memcheck.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "c-memcheck: valgrind is not installed" >&2; exit 1; }

echo "== libr1 for valgrind (x86-64-v3) into target/memcheck"
RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release -p r1-ffi --target-dir target/memcheck >&2
echo "== valgrind"
R1_C_LIB_DIR="$PWD/target/memcheck/release" \
R1_C_WRAPPER="valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=1" \
  cargo test --release -p r1-ffi --test c_api -- --test-threads=1 c_
echo "== AddressSanitizer"
R1_C_CFLAGS="-fsanitize=address -fno-omit-frame-pointer" ASAN_OPTIONS="detect_leaks=1" \
  cargo test --release -p r1-ffi --test c_api -- --test-threads=1 c_
