"""Losses across ranks (gather_distributed=True) against one process with the whole batch.

K = 2 and 3 gloo ranks on the CPU, spawned as subprocesses, hold uneven shares of one batch. On
every rank the loss must equal the single-process loss of the concatenated batch, and the gradient
of the rank's inputs must be K times the single-process gradient of its rows (the convention that
DistributedDataParallel's averaging turns into the single-process parameter gradient); a loss with
reduction="none" returns the rank's rows, whose gradients sum over the ranks without a factor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from coun_fast import functional as F
from distributed_losses_cases import (CASES, SECOND_ORDER_CASES, global_direction, global_inputs,
                                      hessian_vector_product, projection, rows_of)
from helpers import assert_close_verbose, run_ranks

WORKER = Path(__file__).resolve().parent / "distributed_losses_worker.py"
TOLERANCE = dict(rtol=1e-5, atol=1e-6)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module", params=[2, 3], ids=lambda k: f"K{k}")
def ranks(request, tmp_path_factory):
    world = request.param
    return world, run_ranks(WORKER, world, tmp_path_factory.mktemp(f"gloo{world}"))


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("name", list(CASES))
def test_gathered_loss_equals_one_process_over_the_whole_batch(ranks, name, backend):
    world, results = ranks
    case = CASES[name]
    inputs, options = global_inputs(name, world)
    leaves = {key: value.clone().requires_grad_() for key, value in inputs.items() if value.is_floating_point()}
    expected = case.loss({**inputs, **leaves}, options, backend, False)
    expected.backward()
    for rank, result in enumerate(results):
        loss, grads = result[(name, backend)]
        rows = rows_of(name, rank, world)
        if case.reduced:
            assert_close_verbose(f"rank {rank} loss", loss, expected.detach(), **TOLERANCE)
        factor = world if case.reduced else 1
        for key, grad in grads.items():
            if grad is None or key == "weights":
                continue
            assert_close_verbose(f"rank {rank} grad[{key}] / {factor}", grad / factor,
                                 leaves[key].grad[rows[key]], **TOLERANCE)
    if not case.reduced:  # the ranks' rows, in rank order, are the single-process rows
        weighted = torch.stack([result[(name, backend)][0] for result in results]).sum()
        assert_close_verbose("sum of the ranks' weighted rows", weighted, expected.detach(), **TOLERANCE)


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("name", SECOND_ORDER_CASES)
def test_gathered_double_backward_equals_one_process(ranks, name, backend):
    """create_graph=True across ranks: the gradient of <d loss / d x, v> on each rank is K times the
    single-process Hessian-vector product of its rows (the first-order convention, once more), so a
    gradient penalty keeps the terms that reach the other ranks' rows."""
    world, results = ranks
    inputs, options = global_inputs(name, world)
    expected = hessian_vector_product(name, inputs, options, global_direction(name, world), backend, False)
    for rank, result in enumerate(results):
        rows = rows_of(name, rank, world)
        for key, grad in result[("second order", name, backend)].items():
            assert_close_verbose(f"rank {rank} second order[{key}] / {world}", grad / world, expected[key][rows[key]],
                                 **TOLERANCE)


def test_ddp_parameter_gradient_equals_one_process(ranks):
    """Under DistributedDataParallel (which averages over ranks) the parameters receive exactly the
    single-process gradient: no factor of K either way."""
    world, results = ranks
    model = projection()
    inputs, _ = global_inputs("nt_xent", world)
    F.nt_xent(model(inputs["z1"]), model(inputs["z2"]), 0.3).backward()
    for rank, result in enumerate(results):
        assert_close_verbose(f"rank {rank} weight grad", result["ddp"], model.weight.grad, **TOLERANCE)


def test_memory_bank_enqueues_every_rank_rows(ranks):
    world, results = ranks
    inputs, _ = global_inputs("nt_xent", world)
    total = inputs["z2"].shape[0]
    expected = torch.nn.functional.normalize(inputs["z2"], dim=1)
    for rank, result in enumerate(results):
        assert_close_verbose(f"rank {rank} bank", result["bank"][:total], expected, **TOLERANCE)


def test_gather_is_a_no_op_outside_a_distributed_job():
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.equal(F.nt_xent(z1, z2, gather_distributed=True), F.nt_xent(z1, z2))
