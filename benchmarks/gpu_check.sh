#!/usr/bin/env bash
# The one-call GPU check: build for the local GPU, run the CUDA tests, compute-sanitizer (memcheck
# and racecheck) on small odd shapes, the kernel benchmark's --gpu-quick mode, the end-to-end
# unlearning benchmark and a timed paper-protocol run on CIFAR-10, all under one global deadline,
# every step under its own `timeout`, everything appended to one log file.
#
#   benchmarks/gpu_check.sh [LOG]        (from the repository root, on the machine with the GPU)
#
# LOG defaults to $OUT/gpu_check.log when $OUT is set, else ./gpu_check.log. GPU_CHECK_DEADLINE_S
# (default 540) bounds the whole run; a step that would start with less than 10 s left is skipped.
# GPU_CHECK_STEPS picks the step groups and their order (default "build tests sanitize kernels
# unlearning protocol large_data"; build always runs first); GPU_CHECK_UNLEARNING_ARGS adds options
# to bench_unlearning.py (default "--variants exact eager exact+eager"), GPU_CHECK_KERNEL_ARGS to
# bench_losses.py --gpu-quick, GPU_CHECK_TEST_ARGS replaces pytest's "tests" (a selection, with -k
# or files, for a rerun), GPU_CHECK_PROTOCOL_PRECISION the protocol's precision (default bf16; the
# experiment file's is fp32); CIFAR10 names the CIFAR-10 file
# (default .data/cifar10_jpeg.npz; the unlearning and protocol steps are skipped without it). Result files are written next to the log.
# The step groups memcheck (compute-sanitizer memcheck alone) and profile (not in the default list)
# serve reruns after a kernel change: profile prints each kernel's GPU time and the host time by
# function (benchmarks/profile_losses.py; also for the tensor-core path's opt-in occupancy
# variant), then Nsight Compute's speed-of-light, occupancy, warp state and pipe sections of the
# tensor-core kernels of one call of CoUn's 256 x 512 problem and of NT-Xent at 32768 x 128 (the
# latter also with the occupancy variant).
# The step group torchrun (not in the default list: GPU_CHECK_STEPS="torchrun", or add it) runs
# `coun-fast train` (1 epoch) and `coun-fast unlearn --method coun --sync-batchnorm` (1 epoch) under
# `torchrun --standalone --nproc_per_node=G`, G the number of GPUs (with G = 1 it checks the
# launcher path only: one rank makes no process group), on the CIFAR-10 file when it is there, else
# on the embedded digits, into $OUT/torchrun/.
# The exit code is the number of failed or skipped steps. benchmarks/README.md says how to run it
# through the device tool.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-.}"
log="${1:-$out_dir/gpu_check.log}"
deadline_s="${GPU_CHECK_DEADLINE_S:-540}"
steps="${GPU_CHECK_STEPS:-build tests sanitize kernels unlearning protocol large_data}"
unlearning_args="${GPU_CHECK_UNLEARNING_ARGS:---variants exact eager exact+eager}"
test_args="${GPU_CHECK_TEST_ARGS:-tests}"
kernel_args="${GPU_CHECK_KERNEL_ARGS:-}"
protocol_precision="${GPU_CHECK_PROTOCOL_PRECISION:-bf16}"
cifar10="${CIFAR10:-.data/cifar10_jpeg.npz}"
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
group_tests() {
  # shellcheck disable=SC2086
  step "CUDA tests" 240 "$python" -m pytest -q -m cuda --runslow -n 8 -p no:cacheprovider $test_args
}
group_memcheck() {
  step "compute-sanitizer memcheck" 150 compute-sanitizer --tool memcheck --error-exitcode 1 \
    --kernel-name kns=coun_fast "$python" benchmarks/sanitize_kernels.py
}
group_sanitize() {
  group_memcheck
  # The tensor-core kernels, the occupancy variant's first (its staged columns are the newest
  # shared-memory exchange between warps); racecheck ran out of its 150 s on both paths before.
  step "compute-sanitizer racecheck" 200 compute-sanitizer --tool racecheck --error-exitcode 1 \
    --racecheck-report hazard --kernel-name kns=coun_fast "$python" benchmarks/sanitize_kernels.py \
    --paths occupancy tc
}
group_kernels() {
  # shellcheck disable=SC2086
  step "kernel benchmark --gpu-quick" 150 "$python" benchmarks/bench_losses.py --gpu-quick --out "$out_dir" $kernel_args
  # The tensor-core path's opt-in occupancy variant against the default, in one run.
  step "kernel benchmark: occupancy variant" 120 "$python" benchmarks/bench_losses.py --gpu-quick \
    --providers fused+tc fused+tc-occupancy --out "$out_dir"
}
group_profile() {
  step "profile: kernel and host times" 120 "$python" benchmarks/profile_losses.py --calls 50 \
    --cases coun nt_xent_32k nt_xent_32k_512
  step "profile: the occupancy variant's kernel times" 90 "$python" benchmarks/profile_losses.py --calls 50 \
    --provider fused+tc-occupancy --cases nt_xent_32k nt_xent_32k_512
  local run case provider
  # the second call's four kernels (the first is a warm-up)
  for run in coun:fused nt_xent_32k:fused nt_xent_32k:fused+tc-occupancy; do
    case="${run%%:*}" provider="${run#*:}"
    step "ncu $case $provider" 120 ncu --kernel-name regex:"prepare_kernel|forward_kernel|backward_|finish_kernel" \
      --launch-skip 4 --launch-count 4 --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section ComputeWorkloadAnalysis \
      "$python" benchmarks/profile_losses.py --once --cases "$case" --provider "$provider"
  done
}
have_cifar10() {
  [[ -f "$cifar10" ]] && return 0
  echo "=== SKIPPED $1: no CIFAR-10 file at $cifar10 (set CIFAR10)" | tee -a "$log"
  failed=$((failed + 1))
  return 1
}
group_unlearning() {
  # coun_fast's default training step, the same with each GPU switch off beside it (--variants), the
  # paper-style loop and the model-only ceiling, measured in one process.
  have_cifar10 unlearning || return
  # shellcheck disable=SC2086
  step "unlearning benchmark (CIFAR-10, ResNet-18)" 300 "$python" benchmarks/bench_unlearning.py \
    --data "$cifar10" --out "$out_dir" $unlearning_args
}
group_protocol() {
  # The paper's protocol for one seed (Original, Retrain, FT, CoUn) in bf16 autocast, the fast path
  # the time target is about (GPU_CHECK_PROTOCOL_PRECISION=fp32 runs the file's fp32, the authors'
  # setting); the runner prints each stage's time and the total. Whatever the deadline leaves; an
  # unfinished run says how far it got. The run folders (models of 45 MB) stay outside $OUT; its
  # results.md and results.json come back as protocol_results.*, results.md in the log too.
  have_cifar10 protocol || return
  local dir=/tmp/coun_fast_protocol
  step "paper protocol, seed 0, $protocol_precision" 600 coun-fast run cifar10_resnet18_random10 --data "$cifar10" \
    --seeds 0 --methods retrain ft coun --precision "$protocol_precision" --output "$dir" \
    --cache /tmp/coun_fast_cache --no-progress --no-curves
  local kind
  for kind in md json; do
    [[ -f "$dir/results.$kind" ]] && cp "$dir/results.$kind" "$out_dir/protocol_results.$kind"
  done
  [[ -f "$dir/results.md" ]] && cat "$dir/results.md" >>"$log"
}
group_large_data() {
  # 3000 generated 256-px JPEGs, packed; two-view 224-px batches: DALI (nvjpeg), torchvision's GPU
  # decoder (or its Pillow-worker fallback) and the cpu path against the per-sample PIL DataLoader.
  step "large-data benchmark (GPU decoding)" 240 "$python" benchmarks/bench_large_data.py --quick \
    --num-images 3000 --batch-size 128 --batches 4 --reps 2 --data-dir /tmp/coun_fast_large_data --out "$out_dir"
}
group_torchrun() {
  local gpus batch data_args dir="$out_dir/torchrun"
  gpus=$(nvidia-smi -L | wc -l)
  batch=$(( 256 / gpus * gpus ))  # the global batch must be divisible by the number of ranks
  if [[ -f "$cifar10" ]]; then data_args=(--dataset cifar10 --data "$cifar10"); else data_args=(--dataset digits); fi
  local launch=("$python" -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m coun_fast)
  step "torchrun train ($gpus GPU, ${data_args[1]})" 240 "${launch[@]}" train "${data_args[@]}" --model resnet18 \
    --epochs 1 --batch-size "$batch" --out "$dir/original" --overwrite --no-progress
  step "torchrun unlearn coun ($gpus GPU, --sync-batchnorm)" 240 "${launch[@]}" unlearn --method coun \
    --original "$dir/original" --epochs 1 --batch-size "$batch" --sync-batchnorm --out "$dir/coun" --overwrite \
    --no-progress
}
for group in $steps; do
  case "$group" in
    build) ;;
    tests | memcheck | sanitize | kernels | profile | unlearning | protocol | large_data | torchrun) "group_$group" ;;
    *) echo "=== SKIPPED unknown step group '$group'" | tee -a "$log"; failed=$((failed + 1)) ;;
  esac
done
echo "gpu_check: $failed failed or skipped step(s), $(( $(date +%s) - start_s ))s in all" | tee -a "$log"
exit "$failed"
