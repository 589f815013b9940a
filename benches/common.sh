# Shared by the scripts that run r1 beside llama.cpp (compare_llama_cpp.sh, batched_bench.sh):
# sourced from the repository root. Sets `models` (the folder of the GGUF files) and `bin`
# (llama.cpp's build/bin), builds r1's bench example, and defines the helpers below.
models=$(scripts/fetch-models.sh all)
bin=${LLAMA_CPP_BIN:-$(bash ../shared/tools/build-llama-cpp.sh)}
cargo build --release --example bench >&2
r1=target/release/examples/bench

# The GGUF file of a model's short name.
file_of() {
  case "$1" in
    smollm2) echo SmolLM2-135M-Instruct.Q4_1.gguf ;;
    qwen) echo qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ;;
    moe) echo deepseek-moe.Q4_K_M.gguf ;;
    dense) echo dense-twin.Q4_K_M.gguf ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

# Makes the MoE and its dense twin (benches/make_moe.sh) when one of the named models is missing.
ensure_models() {
  local m
  for m in "$@"; do
    if [ ! -f "$models/$(file_of "$m")" ]; then LLAMA_CPP_BIN="$bin" bash benches/make_moe.sh >&2; fi
  done
}

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.1f}")' "$@"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
