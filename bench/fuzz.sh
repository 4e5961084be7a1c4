#!/usr/bin/env bash
# A libFuzzer campaign over every harness of tests/fuzz: per harness the executions, coverage (edges) and
# crashes. Usage: bench/fuzz.sh [SECONDS_PER_HARNESS=60] [BUILD=build-fuzz]
# The build: CC=clang cmake -S . -B build-fuzz -DDPM_FUZZ=ON && cmake --build build-fuzz -j2
# Corpora grow in BUILD/tests/fuzz_corpus/<harness> (seeds: tests/fuzz/corpus/<harness>, read only);
# crashing inputs are written to BUILD/fuzz_artifacts/.
set -u
secs=${1:-60}
build=${2:-build-fuzz}
src=$(cd "$(dirname "$0")/.." && pwd)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$build/fuzz_artifacts"
printf '%-12s %12s %8s %8s\n' harness executions edges crashes
for exe in "$build"/tests/fuzz_*; do
  [ -x "$exe" ] && [ -f "$exe" ] || continue
  h=$(basename "$exe"); h=${h#fuzz_}
  mkdir -p "$build/tests/fuzz_corpus/$h"
  log="$build/fuzz_artifacts/$h.log"
  "$exe" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$build/fuzz_artifacts/$h-" "$build/tests/fuzz_corpus/$h" "$src/tests/fuzz/corpus/$h" >"$log" 2>&1
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  crashes=$(ls "$build/fuzz_artifacts/$h-"crash-* "$build/fuzz_artifacts/$h-"leak-* "$build/fuzz_artifacts/$h-"timeout-* 2>/dev/null | wc -l)
  printf '%-12s %12s %8s %8s\n' "$h" "${execs:-?}" "${cov:-?}" "$crashes"
done
