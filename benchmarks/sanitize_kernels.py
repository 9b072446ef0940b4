"""Forward and backward of every fused loss on small, odd shapes, on the CUDA paths: the workload
benchmarks/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck). Shapes are no multiple
of any tile (64 columns, 64 / 128 rows, 64 features) and cover the split sweep, both backward
variants, plain tiles and both softmax modes. Exits 1 if a result is not finite.

    compute-sanitizer --tool memcheck python benchmarks/sanitize_kernels.py [--paths tc occupancy exact]
"""

from __future__ import annotations

import argparse
import sys

import torch

from coun_fast import functional as F
from coun_fast.ops import backend as backends

# (pairs N, feature dim D, temperature): D=65, 200 and 129 take the resident backward (200 rows:
# plain tiles too), D=300 the streamed one; tau 0.02 takes the online softmax.
SHAPES = [(33, 65, 0.1), (200, 64, 0.1), (130, 300, 0.02), (70, 129, 0.5)]
# The CUDA paths by name: backend.tensor_cores' setting for each.
PATHS = {"tc": True, "occupancy": "occupancy", "exact": False}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def losses(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    n = z1.shape[0]
    labels = torch.arange(2 * n, device=z1.device) % 5
    index = torch.randperm(n, device=z1.device)
    return {
        "nt_xent": F.nt_xent(z1, z2, tau, backend="fused"),
        "cross_view": F.cross_view_info_nce(z1, z2, tau, backend="fused"),
        "sup_con": F.sup_con(torch.cat([z1, z2]), labels, tau, backend="fused"),
        "index_symmetric": F.info_nce(z1, z2, tau, positive_index=index, symmetric=True, backend="fused"),
        "labels_none": F.info_nce(z1, z2[: n - 3], tau, anchor_labels=labels[:n], candidate_labels=labels[: n - 3],
                                  reduction="none", backend="fused").sum(),
        "memory_bank": F.info_nce(z1[: n // 2], z2, tau, paired_candidates=n // 2, backend="fused"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                        help="the CUDA paths to run, in this order (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 inputs take TF32 on the tensor-core path
    failures = 0
    for path in args.paths:
        with backends.tensor_cores(PATHS[path]):
            for n, d, tau in SHAPES:
                for dtype in DTYPES:
                    z1 = torch.randn(n, d, device="cuda", dtype=dtype, requires_grad=True)
                    z2 = torch.randn(n, d, device="cuda", dtype=dtype, requires_grad=True)
                    for name, loss in losses(z1, z2, tau).items():
                        g1, g2 = torch.autograd.grad(loss, (z1, z2), allow_unused=True)
                        values = [loss] + [g for g in (g1, g2) if g is not None]
                        ok = all(bool(torch.isfinite(v).all()) for v in values)
                        failures += not ok
                        print(f"{path:<9} N={n:<4} D={d:<4} {str(dtype):<15} "
                              f"{name:<16} loss={float(loss):.4f} {'ok' if ok else 'NOT FINITE'}", flush=True)
    torch.cuda.synchronize()
    print("sanitize workload:", "ok" if failures == 0 else f"{failures} non-finite results")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
