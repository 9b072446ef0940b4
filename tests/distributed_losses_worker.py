"""One rank of tests/test_distributed_losses.py: ``python distributed_losses_worker.py RANK WORLD DIR``.

Joins a gloo process group (file rendezvous in DIR), computes every case's loss with
``gather_distributed=True`` on this rank's share of a batch that all ranks draw alike, and saves the
loss and the gradients of this rank's inputs to DIR/rank{RANK}.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed_losses_cases import (CASES, SECOND_ORDER_CASES, global_direction, hessian_vector_product,  # noqa: E402
                                      local_inputs, projection, rows_of)
from helpers import rank_of_group  # noqa: E402


def ddp_gradient(rank: int, world: int) -> torch.Tensor:
    """A linear projection under DistributedDataParallel trained one step on the gathered NT-Xent:
    its (averaged) weight gradient."""
    model = torch.nn.parallel.DistributedDataParallel(projection())
    inputs, _ = local_inputs("nt_xent", rank, world)
    from coun_fast import functional as F

    F.nt_xent(model(inputs["z1"]), model(inputs["z2"]), 0.3, gather_distributed=True).backward()
    return model.module.weight.grad


def bank_after_one_step(rank: int, world: int) -> torch.Tensor:
    """lightly's rule: with gather_distributed, every rank enqueues all ranks' out1 rows."""
    from coun_fast import losses

    torch.manual_seed(0)
    loss_fn = losses.NTXentLoss(0.5, memory_bank_size=(16, 6), gather_distributed=True)
    inputs, _ = local_inputs("nt_xent", rank, world)
    loss_fn(inputs["z1"].requires_grad_(), inputs["z2"]).backward()
    return loss_fn.bank


def main() -> None:
    with rank_of_group(sys.argv[1:]) as (rank, world, directory):
        results = {}
        for name, case in CASES.items():
            for backend in ("fused", "reference"):
                inputs, options = local_inputs(name, rank, world)
                leaves = {key: value.clone().requires_grad_() for key, value in inputs.items()
                          if value.is_floating_point()}
                loss = case.loss({**inputs, **leaves}, options, backend, True)
                loss.backward()
                results[(name, backend)] = (loss.detach(), {key: leaf.grad for key, leaf in leaves.items()})
        for name in SECOND_ORDER_CASES:
            rows = rows_of(name, rank, world)
            direction = {key: value[rows[key]] for key, value in global_direction(name, world).items()}
            for backend in ("fused", "reference"):
                inputs, options = local_inputs(name, rank, world)
                results[("second order", name, backend)] = hessian_vector_product(name, inputs, options, direction,
                                                                                  backend, True)
        results["ddp"] = ddp_gradient(rank, world)
        results["bank"] = bank_after_one_step(rank, world)
        torch.save(results, directory / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
