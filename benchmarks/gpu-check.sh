#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA GPU (sized to finish within 10 minutes on one GPU):
#   1. selfcheck --gpu: estimate vs max_memory_allocated for the smoke suite's BERT runs and Table 5's
#      BERT runs (goal: within 3%), then the cuda trackers' step-time overhead (goal: at most 1%);
#   2. two smoke runs in cuda mode with NVML figures and allocator snapshots;
#   3. the cuda benchmark (pytest-benchmark JSON);
#   4. an HTML report of the cuda results;
#   5. the allocator replay against the real caching allocator (benchmarks/allocator_check.py): the GPU's own
#      recorded trace replayed segment by segment, and the estimate's predicted max_memory_reserved beside
#      the measured one, for the same BERT runs as selfcheck (a table for docs/gpu-calibration.md);
#   6. `compare` in cuda mode (each asked shape and every probed batch measured on the GPU) beside the same
#      comparison in estimate mode, with its page: the measured peaks and largest batches against the curves'.
# Everything lands in OUTPUT_DIR (default gpu-check/); the exit status is non-zero if any step failed.
# Usage: bash benchmarks/gpu-check.sh [OUTPUT_DIR]     (PYTHON=... to use another interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
py="${PYTHON:-.venv/bin/python}"
mkdir -p "$out"
failed=()
step() {  # step NAME COMMAND...: run, keep its output in $out/NAME.txt, remember a failure
  local name="$1"; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.txt"
  local status="${PIPESTATUS[0]}"
  [ "$status" = 0 ] || failed+=("$name (exit $status)")
}

step gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step selfcheck "$py" -m unipt_bench.cli selfcheck --gpu --out "$out/results"
step smoke-cuda "$py" -m unipt_bench.cli run --suite smoke --mode cuda --methods adapter,unipt --memory-snapshot \
  --out "$out/results"
step smoke-cuda-results "$py" -m unipt_bench.cli results --suite smoke --out "$out/results" --format markdown
step benchmark "$py" -m pytest benchmarks --benchmark-only -k cuda -s -p no:cacheprovider \
  --benchmark-json "$out/benchmark.json"
step allocator "$py" benchmarks/allocator_check.py "$out/allocator"
compare_args=(--model tiny-bert --task classification --batch 32 --seq-len 32 --budget 64MiB --methods lora,unipt)
step compare-estimate "$py" -m unipt_bench.cli compare "${compare_args[@]}" --mode estimate --format json
step compare-cuda "$py" -m unipt_bench.cli compare "${compare_args[@]}" --mode cuda --report "$out/compare-cuda.html"
step report "$py" -m unipt_bench.cli report --suite flickr30k --results "$out/results" --out "$out/flickr30k-cuda.html"

if [ "${#failed[@]}" -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all GPU checks ran; figures in $out/"
