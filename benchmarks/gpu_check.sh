#!/usr/bin/env bash
# The one-call GPU check: build for the local GPU, run the CUDA tests, compute-sanitizer (memcheck
# and racecheck) on small odd shapes, and the kernel benchmark's --gpu-quick mode, all under one
# global deadline, every step under its own `timeout`, everything appended to one log file.
#
#   benchmarks/gpu_check.sh [LOG]        (from the repository root, on the machine with the GPU)
#
# LOG defaults to $OUT/gpu_check.log when $OUT is set, else ./gpu_check.log. GPU_CHECK_DEADLINE_S
# (default 540) bounds the whole run; a step that would start with less than 10 s left is skipped.
# Result files of the benchmark are copied next to the log. The exit code is the number of failed
# steps. benchmarks/README.md says how to run it in a single remote call.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-.}"
log="${1:-$out_dir/gpu_check.log}"
deadline_s="${GPU_CHECK_DEADLINE_S:-540}"
python="${PYTHON:-python3}"
start_s=$(date +%s)
failed=0
export PYTHONUNBUFFERED=1

remaining() { echo $(( deadline_s - ($(date +%s) - start_s) )); }

# step NAME LIMIT_S COMMAND...: runs COMMAND with at most LIMIT_S (or what is left) seconds.
step() {
  local name="$1" limit="$2"
  shift 2
  local left
  left=$(remaining)
  if (( left < 10 )); then
    echo "=== SKIPPED $name: ${left}s left before the deadline" | tee -a "$log"
    failed=$((failed + 1))
    return
  fi
  (( limit > left )) && limit=$left
  echo "=== $name (limit ${limit}s, $(date -u +%H:%M:%S))" | tee -a "$log"
  local t0=$(date +%s)
  timeout --signal=KILL "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$log"
  if (( rc != 0 )); then failed=$((failed + 1)); fi
}

echo "gpu_check $(git rev-parse --short HEAD 2>/dev/null) $(date -u)" >"$log"
step "environment" 30 bash -c "nvidia-smi; nvcc --version | tail -2; $python -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
step "build (sm_${arch})" 240 env COUN_FAST_CUDA_ARCHS="$arch" COUN_FAST_CUDA=1 \
  "$python" -m pip install --no-build-isolation --no-deps -e .
step "info" 30 "$python" -m coun_fast.info
step "CUDA tests" 240 "$python" -m pytest -q -m cuda --runslow -n 8 -p no:cacheprovider tests
step "compute-sanitizer memcheck" 150 compute-sanitizer --tool memcheck --error-exitcode 1 \
  --kernel-regex kns=coun_fast "$python" benchmarks/sanitize_kernels.py
step "compute-sanitizer racecheck" 150 compute-sanitizer --tool racecheck --error-exitcode 1 \
  --racecheck-report hazard --kernel-regex kns=coun_fast "$python" benchmarks/sanitize_kernels.py
step "kernel benchmark --gpu-quick" 150 "$python" benchmarks/bench_losses.py --gpu-quick --out "$out_dir"
echo "gpu_check: $failed failed or skipped step(s), $(( $(date +%s) - start_s ))s in all" | tee -a "$log"
exit "$failed"
