#!/usr/bin/env bash
# Makes the DeepSeek-shaped MoE benchmark model and its dense twin (benches/moe_gguf.py), both
# quantized to Q4_K_M by llama.cpp's llama-quantize, into ~/.cache/r1/models (or $R1_MODELS):
#
#   LLAMA_CPP_BIN=<llama.cpp build/bin> bash benches/make_moe.sh
#
# The gguf package comes from the llama.cpp tree that holds LLAMA_CPP_BIN (its gguf-py/), numpy
# from a venv in target/bench-venv. The tokenizer is SmolLM2's (scripts/fetch-models.sh smollm2).
# About 5 minutes on 2 cores; the files are 0.8 GB (MoE) and 0.2 GB (dense), and stay out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to the build/bin of llama.cpp (../shared/tools/build-llama-cpp.sh)}"
models="${R1_MODELS:-$HOME/.cache/r1/models}"
gguf_py="$(cd "$LLAMA_CPP_BIN/../.." && pwd)/gguf-py"
[ -d "$gguf_py/gguf" ] || { echo "make_moe: no gguf-py beside $LLAMA_CPP_BIN" >&2; exit 1; }
bash scripts/fetch-models.sh smollm2 >/dev/null

venv=target/bench-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import numpy, yaml, tqdm" 2>/dev/null || "$venv/bin/pip" -q install numpy pyyaml tqdm requests

work="$(mktemp -d "${TMPDIR:-/tmp}/r1-moe.XXXXXX")"
trap 'rm -rf "$work"' EXIT
PYTHONPATH="$gguf_py" "$venv/bin/python" benches/moe_gguf.py \
  --tokenizer "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$work"
for name in deepseek-moe dense-twin; do
  "$LLAMA_CPP_BIN/llama-quantize" "$work/$name.f16.gguf" "$models/$name.Q4_K_M.gguf" Q4_K_M >"$work/$name.log" 2>&1 \
    || { tail -20 "$work/$name.log" >&2; exit 1; }
  rm "$work/$name.f16.gguf"
  echo "$models/$name.Q4_K_M.gguf"
done
