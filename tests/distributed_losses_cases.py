"""The cases of tests/test_distributed_losses.py, shared by the test (single process, the whole
batch) and its workers (one rank, its share): each case draws one batch, split over the ranks in
uneven shares, and computes its loss from a dict of inputs."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import torch

from coun_fast import functional as F
from coun_fast import losses

SHARES = {1: [7], 2: [3, 5], 3: [2, 4, 3]}  # rows per rank (anchors; candidates get one more)
DIM = 6


@dataclass(frozen=True)
class Case:
    loss: Callable  # (inputs, options, backend, gather) -> loss, arguments by position
    reduced: bool = True  # a scalar over every rank's anchors (else this rank's rows)


def _info_nce(inputs, options, backend, gather):
    loss = F.info_nce(inputs["anchors"], inputs["candidates"], 0.2, backend=backend, gather_distributed=gather,
                      **options)
    return loss if "weights" not in inputs else (loss * inputs["weights"]).sum()


CASES = {
    "nt_xent": Case(lambda x, o, b, g: F.nt_xent(x["z1"], x["z2"], 0.3, backend=b, gather_distributed=g)),
    "cross_view": Case(lambda x, o, b, g: F.cross_view_info_nce(x["z1"], x["z2"], 0.1, backend=b,
                                                                gather_distributed=g)),
    "sup_con": Case(lambda x, o, b, g: F.sup_con(x["z1"], x["labels"], 0.2, backend=b, gather_distributed=g)),
    "index": Case(_info_nce),
    "index_symmetric_exclude_self": Case(_info_nce),
    "labels_sum": Case(_info_nce),
    "labels_none": Case(_info_nce, reduced=False),
    "pml_sup_con": Case(lambda x, o, b, g: losses.SupConLoss(0.1, gather_distributed=g, backend=b)(x["z1"],
                                                                                                   x["labels"])),
    "lightly_nt_xent": Case(lambda x, o, b, g: losses.NTXentLoss(0.5, gather_distributed=g, backend=b)(x["z1"],
                                                                                                      x["z2"])),
}


def projection() -> torch.nn.Linear:
    """The same small linear layer in every process."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Linear(DIM, 5)


def _shift_cycle(n: int) -> torch.Tensor:
    """A permutation of n >= 2 without fixed points."""
    return torch.arange(n).roll(1)


def _draw(name: str, world: int) -> list[tuple[dict, dict]]:
    """Every rank's (inputs, options): local tensors and local indices."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    shares = []
    for rows in SHARES[world]:
        m, n = rows, rows + 1
        z1, z2 = torch.randn(m, DIM, generator=generator), torch.randn(m, DIM, generator=generator)
        labels = torch.randint(0, 3, (m,), generator=generator)
        inputs, options = {"z1": z1, "z2": z2, "labels": labels}, {}
        if name == "index":
            inputs.update(anchors=z1, candidates=torch.randn(n, DIM, generator=generator))
            options = {"positive_index": torch.randint(0, n, (m,), generator=generator)}
        elif name == "index_symmetric_exclude_self":
            inputs.update(anchors=z1, candidates=z2)
            options = {"positive_index": _shift_cycle(m), "symmetric": True, "exclude_self": True}
        elif name.startswith("labels"):
            inputs.update(anchors=z1, candidates=torch.randn(n, DIM, generator=generator))
            options = {"anchor_labels": labels, "candidate_labels": torch.randint(0, 3, (n,), generator=generator),
                       "reduction": "sum" if name == "labels_sum" else "none"}
            if name == "labels_none":
                inputs["weights"] = torch.randn(m, generator=generator)
        shares.append((inputs, options))
    return shares


def local_inputs(name: str, rank: int, world: int) -> tuple[dict, dict]:
    return _draw(name, world)[rank]


def global_inputs(name: str, world: int) -> tuple[dict, dict]:
    """The concatenated batch, with indices made global (offset by the earlier ranks' candidates)."""
    shares = _draw(name, world)
    inputs = {key: torch.cat([share[0][key] for share in shares]) for key in shares[0][0]}
    options = dict(shares[0][1])
    for key in ("positive_index",):
        if key in options:
            offsets, parts = 0, []
            for share_inputs, share_options in shares:
                parts.append(share_options[key] + offsets)
                offsets += share_inputs["candidates"].shape[0]
            options[key] = torch.cat(parts)
    for key in ("anchor_labels", "candidate_labels"):
        if key in options:
            options[key] = torch.cat([share[1][key] for share in shares])
    return inputs, options


def rows_of(name: str, rank: int, world: int) -> dict[str, slice]:
    """Which rows of each global input belong to ``rank``."""
    shares = _draw(name, world)
    out = {}
    for key in shares[0][0]:
        start = sum(share[0][key].shape[0] for share in shares[:rank])
        out[key] = slice(start, start + shares[rank][0][key].shape[0])
    return out


SECOND_ORDER_CASES = ("nt_xent", "cross_view", "sup_con", "index")


def global_direction(name: str, world: int) -> dict[str, torch.Tensor]:
    """A direction for the Hessian-vector product of a case: one row per row of each feature input
    of the whole batch (a rank takes its rows, :func:`rows_of`)."""
    inputs, _ = global_inputs(name, world)
    generator = torch.Generator().manual_seed(zlib.crc32(f"direction {name}".encode()))
    return {key: torch.randn(value.shape, generator=generator) for key, value in inputs.items()
            if value.is_floating_point() and key != "weights"}


def hessian_vector_product(name: str, inputs: dict, options: dict, direction: dict, backend: str,
                           gather: bool) -> dict[str, torch.Tensor]:
    """The gradient of ``<d loss / d x, direction>`` with respect to every feature input x (the
    first-order gradient built with create_graph=True): a gradient penalty's second-order term
    (zeros for an input the case does not use)."""
    leaves = {key: inputs[key].clone().requires_grad_() for key in direction}
    loss = CASES[name].loss({**inputs, **leaves}, options, backend, gather)
    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
    inner = sum((g * direction[key]).sum() for key, g in zip(leaves, grads) if g is not None)
    second = torch.autograd.grad(inner, list(leaves.values()), allow_unused=True)
    return {key: torch.zeros_like(leaves[key]) if g is None else g for key, g in zip(leaves, second)}

