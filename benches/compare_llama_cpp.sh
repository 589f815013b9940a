#!/usr/bin/env bash
# r1 beside llama.cpp (and ik_llama.cpp, when built) on the same GGUF files, run alternately in
# one go: the machine drifts by up to 20% between runs, so only ratios taken within one run count.
#
#   bash benches/compare_llama_cpp.sh [ROUNDS] [CONTEXT] [THREADS...]
#     ROUNDS: rounds per model and thread count (default 3); the table shows medians
#     CONTEXT: 0 (default) = prefill 128 tokens, decode 64; N = prefill N tokens, then decode 32 at
#              a context of N (llama-bench: -p N, and -n 32 -d N)
#     THREADS: thread counts (default 1 2)
#   environment:
#     MODELS: which files (default: smollm2 qwen moe dense)
#     NATIVE=0: leave out r1 built with target-cpu=native (default: shown beside the portable one)
#     LLAMA_CPP_BIN: llama.cpp's build/bin (default: built by ../shared/tools/build-llama-cpp.sh)
#     IK_LLAMA_BIN: ik_llama.cpp's build/bin, for a second peer column (run with -rtr 1;
#                   benches/build-ik-llama.sh builds it)
#
# r1 is measured as users get it: built with cargo's defaults (`portable`: run-time SIMD dispatch,
# what a dependent crate and the wheel get), and with target-cpu=native into target/native. The
# MoE and its dense twin are made by benches/make_moe.sh when missing. The ratio columns are the
# portable r1 over llama.cpp; r1's load time and peak RSS come from the portable runs.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
ctx=${2:-0}
threads=("${@:3}")
[ ${#threads[@]} -gt 0 ] || threads=(1 2)
read -r -a which <<<"${MODELS:-smollm2 qwen moe dense}"
if [ "$ctx" -gt 0 ]; then np=$ctx; ng=32; depth=(-d "$ctx"); else np=128; ng=64; depth=(); fi
# shellcheck source=benches/common.sh
source benches/common.sh
ik=${IK_LLAMA_BIN:-}
if [ "${NATIVE:-1}" != 0 ]; then
  RUSTFLAGS="-C target-cpu=native" cargo build --release --example bench --target-dir target/native >&2
fi
ensure_models "${which[@]}"

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
# llama-bench's tokens/s for one prefill (-p) or decode (-n, at depth) run.
peer() {
  local exe=$1 path=$2 t=$3 kind=$4; shift 4
  local args=(-m "$path" -t "$t" -r 1 -o json "$@")
  if [ "$kind" = prefill ]; then
    args+=(-p "$np" -n 0)
  elif [ "$exe" = "$ik" ] && [ "$ctx" -gt 0 ]; then
    args+=(-p 0 -n 0 -gp "$ctx,$ng")  # ik_llama.cpp's llama-bench has -gp (tg at pp) for -d
  else
    args+=(-p 0 -n "$ng" "${depth[@]}")
  fi
  "$exe/llama-bench" "${args[@]}" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}

echo "context $ctx: prefill $np tokens, decode $ng tokens; tokens/s, medians of $rounds"
echo ""
head="| model | file MB | threads | r1 load s | r1 peak RSS MB | prefill r1 |"
rule="|---|---|---|---|---|---|"
[ "${NATIVE:-1}" != 0 ] && { head+=" r1 native |"; rule+="---|"; }
head+=" llama.cpp | ratio |"; rule+="---|---|"
[ -n "$ik" ] && { head+=" ik_llama | r1/ik |"; rule+="---|---|"; }
head+=" decode r1 |"; rule+="---|"
[ "${NATIVE:-1}" != 0 ] && { head+=" r1 native |"; rule+="---|"; }
head+=" llama.cpp | ratio |"; rule+="---|---|"
[ -n "$ik" ] && { head+=" ik_llama | r1/ik |"; rule+="---|---|"; }
echo "$head"; echo "$rule"
for m in "${which[@]}"; do
  file=$(file_of "$m")
  path="$models/$file"
  size_mb=$(( $(stat -c %s "$path") / 1000000 ))
  for t in "${threads[@]}"; do
    rp=(); rd=(); np_=(); nd=(); lp=(); ld=(); ip=(); id=(); loads=(); rss=()
    for _ in $(seq "$rounds"); do
      out=$("$r1" --model "$path" --prompt-tokens "$np" --gen-tokens "$ng" --threads "$t")
      rp+=("$(field "$out" prefill_tokens_per_s)"); rd+=("$(field "$out" decode_tokens_per_s)")
      loads+=("$(field "$out" load_s)"); rss+=("$(python3 -c "print($(field "$out" peak_rss_kib)/1024)")")
      if [ "${NATIVE:-1}" != 0 ]; then
        out=$(target/native/release/examples/bench --model "$path" --prompt-tokens "$np" --gen-tokens "$ng" --threads "$t")
        np_+=("$(field "$out" prefill_tokens_per_s)"); nd+=("$(field "$out" decode_tokens_per_s)")
      fi
      lp+=("$(peer "$bin" "$path" "$t" prefill)"); ld+=("$(peer "$bin" "$path" "$t" decode)")
      if [ -n "$ik" ]; then
        ip+=("$(peer "$ik" "$path" "$t" prefill -rtr 1)"); id+=("$(peer "$ik" "$path" "$t" decode -rtr 1)")
      fi
    done
    mrp=$(median "${rp[@]}"); mlp=$(median "${lp[@]}"); mrd=$(median "${rd[@]}"); mld=$(median "${ld[@]}")
    row="| ${file%.gguf} | $size_mb | $t | $(median "${loads[@]}") | $(median "${rss[@]}") | $mrp |"
    [ "${NATIVE:-1}" != 0 ] && row+=" $(median "${np_[@]}") |"
    row+=" $mlp | $(ratio "$mrp" "$mlp") |"
    [ -n "$ik" ] && { mip=$(median "${ip[@]}"); row+=" $mip | $(ratio "$mrp" "$mip") |"; }
    row+=" $mrd |"
    [ "${NATIVE:-1}" != 0 ] && row+=" $(median "${nd[@]}") |"
    row+=" $mld | $(ratio "$mrd" "$mld") |"
    [ -n "$ik" ] && { mid=$(median "${id[@]}"); row+=" $mid | $(ratio "$mrd" "$mid") |"; }
    echo "$row"
  done
done
