"""Where one contrastive-loss call spends its time: the GPU time of each kernel (torch.profiler)
and the host time by Python function (cProfile), for the fused loss as a user calls it.

    python benchmarks/profile_losses.py                     # CoUn's 256 x 512 and NT-Xent 32768 x 128
    python benchmarks/profile_losses.py --cases coun --calls 500
    python benchmarks/profile_losses.py --once              # one call per case: for ncu (see below)

``--once`` runs each case once after one warm-up call, for Nsight Compute to profile the kernels:

    ncu --kernel-name regex:"prepare_kernel|forward_kernel|backward_|finish_kernel" \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python benchmarks/profile_losses.py --once

Cases use bench_losses' problems (seeded features, its temperatures). Prints tables only; the
timing benchmark with ratios and result files is bench_losses.py.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from functools import partial

import torch

import bench_losses

CASES = {  # name: (loss, M, D)
    "tiny": ("nt_xent", 4, 8),  # host overhead: the kernels take nothing here
    "coun": ("cross_view_info_nce", 256, 512),
    "nt_xent_32k": ("nt_xent", 32768, 128),
    "nt_xent_32k_512": ("nt_xent", 32768, 512),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["coun", "nt_xent_32k"])
    parser.add_argument("--dtype", choices=sorted(bench_losses.DTYPES), default="bfloat16")
    parser.add_argument("--provider", choices=bench_losses.PROVIDERS, default="fused")
    parser.add_argument("--calls", type=int, default=200, help="profiled forward+backward calls per case (200)")
    parser.add_argument("--once", action="store_true", help="one warm-up and one call per case, nothing printed "
                        "but the case names (for ncu)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls must be >= 1; got {args.calls}")
    return args


def call_of(case: str, args: argparse.Namespace):
    """One forward+backward call of ``case``, the inputs' gradients cleared first (as a training
    step's zero_grad does: the backward writes them instead of accumulating)."""
    loss, m, d = CASES[case]
    inputs = bench_losses.make_inputs(loss, m, d, bench_losses.DTYPES[args.dtype], torch.device(args.device))
    full = partial(bench_losses._backward, bench_losses.make_call(args.provider, loss), inputs)

    def call() -> None:
        bench_losses._clear_grads(inputs)
        full()

    return call


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def kernel_table(fn, calls: int, device: str) -> str:
    """GPU (or CPU op) time per call of each kernel, from torch.profiler."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    sort = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=70)


def host_table(fn, calls: int, device: str) -> str:
    """Host time by function over ``calls`` calls (cProfile, sorted by own time)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    synchronize(device)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
    return stream.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for case in args.cases:
        fn = call_of(case, args)
        fn()  # warm-up: workspace, autotuning, lazy initialization
        synchronize(args.device)
        if args.once:
            print(f"case {case}: one call", flush=True)
            fn()
            synchronize(args.device)
            continue
        for _ in range(5):
            fn()
        print(f"=== {case} {CASES[case]} {args.dtype} {args.provider}: kernels over {args.calls} calls")
        print(kernel_table(fn, args.calls, args.device))
        print(f"=== {case}: host time by function over {args.calls} calls")
        print(host_table(fn, args.calls, args.device), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
