#!/usr/bin/env bash
# The whole test suite, what CI runs after fmt and clippy: the Rust tests (which also build and
# run the C API's C and C++ programs and the examples' interfaces), the C programs under
# valgrind and AddressSanitizer, then the Python wheel's pytest suite.
#
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# The C tests link the shared library, which `cargo test` does not build by itself.
cargo build --release -p r1-ffi
cargo test --workspace --release
# r1 picks its SIMD code at run time; the kernels, the logits against transformers and the
# quantized models once more on each lower path this CPU can be asked to take.
for simd in avx2 baseline; do
  echo "== R1_SIMD=$simd"
  R1_SIMD=$simd cargo test --release -p r1-core --lib
  R1_SIMD=$simd cargo test --release --test fixtures_match_transformers --test quantization
done
bash scripts/c-memcheck.sh
bash scripts/test-python.sh
