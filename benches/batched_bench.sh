#!/usr/bin/env bash
# r1's batched decode beside llama.cpp's llama-batched-bench on the same GGUF file, alternately
# in one run (the machine drifts between runs, so only ratios taken within one run count).
#
#   bash benches/batched_bench.sh [ROUNDS] [BATCHES...]
#     ROUNDS: rounds per model and batch size (default 3); the table shows medians
#     BATCHES: sequences decoded together (default 1 2 4 8 16)
#   environment:
#     MODELS: which files (default: qwen moe); THREADS (default 2)
#     PROMPT, GEN: tokens per sequence prefilled and decoded (default 64 and 32)
#     LLAMA_CPP_BIN: llama.cpp's build/bin (default: built by ../shared/tools/build-llama-cpp.sh,
#       then its llama-batched-bench target)
#
# Both sides: N sequences of PROMPT tokens each, prefilled, then GEN tokens each decoded
# together; the figure is the aggregate decode speed (tokens of all sequences per second):
# r1's `examples/bench --batch N` decode_tokens_per_s, llama-batched-bench's speed_tg.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
batches=("${@:2}")
[ ${#batches[@]} -gt 0 ] || batches=(1 2 4 8 16)
read -r -a which <<<"${MODELS:-qwen moe}"
threads=${THREADS:-2}
np=${PROMPT:-64}
ng=${GEN:-32}
# shellcheck source=benches/common.sh
source benches/common.sh
if [ ! -x "$bin/llama-batched-bench" ]; then
  cmake --build "$bin/.." -j"$(nproc)" --target llama-batched-bench >&2
fi
ensure_models "${which[@]}"

# llama-batched-bench's aggregate decode tokens/s for one batch size.
peer() {
  "$bin/llama-batched-bench" -m "$1" -t "$threads" -tb "$threads" -c $(($2 * (np + ng) + 16)) \
    -b 2048 -ub 512 -npp "$np" -ntg "$ng" -npl "$2" --output-format jsonl 2>/dev/null \
    | python3 -c 'import json,sys; rows=[json.loads(l) for l in sys.stdin if l.startswith("{")]; print(rows[-1]["speed_tg"])'
}
ours() {
  "$r1" --model "$1" --threads "$threads" --prompt-tokens "$np" --gen-tokens "$ng" --batch "$2" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_s"])'
}

echo "| model | batch | r1 decode tok/s (all sequences) | llama.cpp | r1 / llama.cpp | r1 × its batch 1 |"
echo "|---|---|---|---|---|---|"
for m in "${which[@]}"; do
  path="$models/$(file_of "$m")"
  one=""
  for b in "${batches[@]}"; do
    r=() p=()
    for _ in $(seq "$rounds"); do
      p+=("$(peer "$path" "$b")")
      r+=("$(ours "$path" "$b")")
    done
    rm=$(median "${r[@]}") pm=$(median "${p[@]}")
    [ -n "$one" ] || one=$rm
    echo "| $m | $b | $rm | $pm | $(ratio "$rm" "$pm") | $(ratio "$rm" "$one") |"
  done
done
