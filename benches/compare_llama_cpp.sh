#!/usr/bin/env bash
# r1 beside llama.cpp on the same GGUF files, run alternately in one go (the machine drifts by
# up to 20% between runs; only ratios taken within one run count).
#
#   bash benches/compare_llama_cpp.sh [ROUNDS] [CONTEXT] [THREADS...]
#     ROUNDS: rounds per model and thread count (default 3)
#     CONTEXT: 0 (default) = prefill 128 tokens, decode 64; N = prefill N tokens, then decode 32 at
#              a context of N (llama-bench: -p N, and -n 32 -d N)
#     THREADS: thread counts (default 1 2)
#
# Builds the peer once (../shared/tools/build-llama-cpp.sh, or $LLAMA_CPP_BIN), fetches the models
# (scripts/fetch-models.sh), and prints a markdown table: prefill (128 tokens) and decode (64
# tokens) tokens/s, medians over the rounds, and r1 / llama.cpp. r1's load time and peak RSS
# come from the same runs.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
ctx=${2:-0}
threads=("${@:3}")
[ ${#threads[@]} -gt 0 ] || threads=(1 2)
if [ "$ctx" -gt 0 ]; then np=$ctx; ng=32; depth=(-d "$ctx"); else np=128; ng=64; depth=(); fi
models=$(scripts/fetch-models.sh all)
bin=${LLAMA_CPP_BIN:-$(bash ../shared/tools/build-llama-cpp.sh)}
cargo build --release --example bench >&2
r1=target/release/examples/bench

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.1f}")' "$@"; }

echo "context $ctx: prefill $np tokens, decode $ng tokens"
echo ""
echo "| model | file MB | threads | r1 load s | r1 peak RSS MB | prefill r1 | prefill llama.cpp | ratio | decode r1 | decode llama.cpp | ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for file in SmolLM2-135M-Instruct.Q4_1.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; do
  path="$models/$file"
  size_mb=$(( $(stat -c %s "$path") / 1000000 ))
  for t in "${threads[@]}"; do
    rp=(); rd=(); lp=(); ld=(); loads=(); rss=()
    for _ in $(seq "$rounds"); do
      out=$("$r1" --model "$path" --prompt-tokens "$np" --gen-tokens "$ng" --threads "$t")
      rp+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prefill_tokens_per_s"])')")
      rd+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_s"])')")
      loads+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["load_s"])')")
      rss+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["peak_rss_kib"]/1024)')")
      lb=$("$bin/llama-bench" -m "$path" -p "$np" -n 0 -t "$t" -r 1 -o json 2>/dev/null)
      lp+=("$(echo "$lb" | python3 -c 'import json,sys; print([r["avg_ts"] for r in json.load(sys.stdin) if r["n_prompt"]>0][0])')")
      lb=$("$bin/llama-bench" -m "$path" -p 0 -n "$ng" "${depth[@]}" -t "$t" -r 1 -o json 2>/dev/null)
      ld+=("$(echo "$lb" | python3 -c 'import json,sys; print([r["avg_ts"] for r in json.load(sys.stdin) if r["n_gen"]>0][0])')")
    done
    mrp=$(median "${rp[@]}"); mlp=$(median "${lp[@]}"); mrd=$(median "${rd[@]}"); mld=$(median "${ld[@]}")
    echo "| ${file%.gguf} | $size_mb | $t | $(median "${loads[@]}") | $(median "${rss[@]}") | $mrp | $mlp | $(python3 -c "print(f'{$mrp/$mlp:.2f}')") | $mrd | $mld | $(python3 -c "print(f'{$mrd/$mld:.2f}')") |"
  done
done
