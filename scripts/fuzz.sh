#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets) for SECONDS each, from the committed seeds
# (fuzz/seeds/<target>) plus a growing corpus in target/fuzz-corpus/<target>, and prints one
# line per target: executions, executions per second, coverage, corpus size. Any crash, panic,
# leak, timeout or allocation over the ceiling fails the run (the input is in fuzz/artifacts).
#
#   bash scripts/fuzz.sh SECONDS [TARGET...]      (default: every target, one after another)
#
# R1_FUZZ_MALLOC_MB (default 1024) is the ceiling on one allocation and R1_FUZZ_RSS_MB (default
# 2560) on the process: a hostile count must meet r1's own bounds, not the machine's memory,
# so an allocation past the ceiling is a finding. R1_FUZZ_JOBS=2 runs two targets at a time.
# R1_FUZZ_SANITIZER (default address) is cargo-fuzz's -s: CI's 30-second smoke runs take `none`,
# which builds in about 4 minutes instead of 6.5.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(gguf safetensors config_json chat_template trace_parser c_abi)
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
san=${R1_FUZZ_SANITIZER:-address}
cargo +nightly fuzz build -O -s "$san"
mkdir -p target/fuzz-logs

run_one() {
  local t=$1 corpus=target/fuzz-corpus/$1 log=target/fuzz-logs/$1.log
  mkdir -p "$corpus"
  if ! cargo +nightly fuzz run -O -s "$san" "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -max_len=65536 -timeout=10 \
      -malloc_limit_mb="${R1_FUZZ_MALLOC_MB:-1024}" -rss_limit_mb="${R1_FUZZ_RSS_MB:-2560}" \
      -print_final_stats=1 >"$log" 2>&1; then
    echo "!!! $t failed; the end of its log ($log):"
    tail -n 40 "$log"
    return 1
  fi
  local execs rate cov ft corp rss
  execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log")
  rate=$(awk '/stat::average_exec_per_sec:/ {print $2}' "$log")
  rss=$(awk '/stat::peak_rss_mb:/ {print $2}' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | awk '{print $2}')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | awk '{print $2}')
  corp=$(grep -o 'corp: [0-9]*' "$log" | tail -n 1 | awk '{print $2}')
  printf '| %s | %s s | %s | %s | %s | %s | %s | %s MB | 0 |\n' "$t" "$seconds" "$execs" "$rate" "$cov" "$ft" "$corp" "$rss"
}

echo "| target | time | executions | exec/s | coverage (edges) | features | corpus | peak RSS | crashes |"
echo "|---|---|---|---|---|---|---|---|---|"
status=0
if [ "${R1_FUZZ_JOBS:-1}" = 2 ]; then
  for ((i = 0; i < ${#targets[@]}; i += 2)); do
    run_one "${targets[i]}" > "target/fuzz-logs/row-a" & a=$!
    if [ $((i + 1)) -lt ${#targets[@]} ]; then
      run_one "${targets[i+1]}" > "target/fuzz-logs/row-b" || status=1
      cat target/fuzz-logs/row-b
    fi
    wait $a || status=1
    cat target/fuzz-logs/row-a
  done
else
  for t in "${targets[@]}"; do
    run_one "$t" || status=1
  done
fi
exit $status
