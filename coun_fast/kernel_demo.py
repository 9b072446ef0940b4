"""``coun-fast kernels``: the fused contrastive losses next to the pure-PyTorch reference.

For each loss, the same random features go through backend="fused" and backend="reference"
(float64, the oracle); the demo prints both losses, the largest gradient difference, and the
median forward+backward time of the fused kernel and of the eager reference in float32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from coun_fast import functional
from coun_fast.capabilities import info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=2048,
                        help="N, the number of samples (rows per view); NT-Xent compares 2N rows (default 2048)")
    parser.add_argument("--dim", type=int, default=128, help="feature dimension D (default 128)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement; the median is shown")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the features")


def _losses(labels: torch.Tensor) -> dict:
    return {
        "nt_xent (tau=0.5)": lambda z1, z2, backend: functional.nt_xent(z1, z2, 0.5, backend=backend),
        "cross_view_info_nce (tau=0.1)": lambda z1, z2, backend: functional.cross_view_info_nce(
            z1, z2, 0.1, backend=backend),
        "sup_con (tau=0.1)": lambda z1, z2, backend: functional.sup_con(
            torch.cat([z1, z2]), torch.cat([labels, labels]), 0.1, backend=backend),
    }


def _forward_backward(loss_fn, z1: torch.Tensor, z2: torch.Tensor, backend: str):
    z1 = z1.detach().requires_grad_()
    z2 = z2.detach().requires_grad_()
    loss = loss_fn(z1, z2, backend)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up, not timed
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    report = info()
    print(f"coun_fast {report['version']} | torch {report['torch_version']} | fused CPU kernels: "
          f"{report['cpu_kernels']} | CUDA kernels compiled: {report['cuda_compiled']} "
          f"{report['cuda_archs']} | GPU: {report['gpu'] or 'none'}")
    print(f"features: N={args.pairs} pairs, D={args.dim}, device={device}, {torch.get_num_threads()} CPU threads\n")
    generator = torch.Generator().manual_seed(args.seed)
    z1 = torch.randn(args.pairs, args.dim, generator=generator).to(device)
    z2 = (z1.cpu() + 0.5 * torch.randn(args.pairs, args.dim, generator=generator)).to(device)
    labels = torch.randint(0, 10, (args.pairs,), generator=generator).to(device)

    header = f"{'loss':<31} {'fused':>10} {'reference':>10} {'max|dgrad|':>11} {'fused ms':>9} {'eager ms':>9} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name, loss_fn in _losses(labels).items():
        fused = _forward_backward(loss_fn, z1, z2, "fused")
        exact = _forward_backward(loss_fn, z1.double(), z2.double(), "reference")
        grad_error = max(float((f.double() - e).abs().max()) for f, e in zip(fused[1:], exact[1:]))
        fused_s = _median_seconds(lambda: _forward_backward(loss_fn, z1, z2, "fused"), args.repeats, device)
        eager_s = _median_seconds(lambda: _forward_backward(loss_fn, z1, z2, "reference"), args.repeats, device)
        print(f"{name:<31} {float(fused[0]):>10.6f} {float(exact[0]):>10.6f} {grad_error:>11.2e} "
              f"{fused_s * 1e3:>9.1f} {eager_s * 1e3:>9.1f} {eager_s / fused_s:>8.1f}x")
    print("\nreference = the pure-PyTorch oracle (float64 for the values, float32 eager for the times).")
    return 0
