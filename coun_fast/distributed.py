"""Contrastive losses across the ranks of a ``torch.distributed`` job (``gather_distributed=True``).

Every rank compares its own anchors with the candidates of all ranks: the candidates (and their
labels) are all-gathered, with gradient, and the loss is reduced over the anchors of all ranks.
The contract, for K ranks holding batches b_1 .. b_K:

* the value returned on every rank is the single-process loss of the concatenated batch
  cat(b_1, .., b_K) (up to float rounding: the order of the sums differs);
* the gradient that reaches a rank's inputs is K times the single-process gradient of its rows.
  DistributedDataParallel averages parameter gradients over the K ranks, so the parameters receive
  exactly the single-process gradient; this is the convention of every per-rank loss under DDP
  (each rank's mean over its own batch) and of lightly's ``gather_distributed``.

The gather puts this rank's rows first (``[own rows, other ranks' rows in rank order]``), so that
an index into the local candidates (``positive_index``, candidate i excluded from anchor i) keeps
its meaning among the gathered candidates. Ranks may hold different numbers of rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) outside a distributed job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def active() -> bool:
    """Whether a process group of more than one rank is running."""
    return world()[1] > 1


def _row_counts(rows: int, device: torch.device) -> list[int]:
    """Every rank's number of rows (one small all-gather; a host synchronization)."""
    _, size = world()
    mine = torch.tensor([rows], dtype=torch.int64, device=device)
    counts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(counts, mine)
    return [int(c.item()) for c in counts]


def _gather_rows(x: Tensor, counts: list[int]) -> list[Tensor]:
    """Every rank's rows of ``x`` (padded to the largest count for the collective, then cut)."""
    largest = max(counts)
    padded = x if x.shape[0] == largest else torch.cat([x, x.new_zeros((largest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return [part[:count] for part, count in zip(parts, counts)]


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows in rank order; the backward sums every rank's gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int]) -> Tensor:
        rank, _ = world()
        ctx.rows = (sum(counts[:rank]), counts[rank])
        return torch.cat(_gather_rows(x, counts))

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, rows = ctx.rows
        return grad[start: start + rows], None


def gather_own_first(x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None, int]:
    """All ranks' rows of ``x`` with this rank's first, differentiable, and the labels the same way.

    Returns ``(rows, labels, total)``; outside a distributed job, ``(x, labels, len(x))``.
    """
    if not active():
        return x, labels, x.shape[0]
    rank, _ = world()
    counts = _row_counts(x.shape[0], x.device)
    gathered = _GatherWithGrad.apply(x, counts)
    start, stop = sum(counts[:rank]), sum(counts[: rank + 1])
    rows = torch.cat([x, gathered[:start], gathered[stop:]])  # own rows enter directly (their own gradient)
    if labels is not None:
        parts = _gather_rows(labels, counts)
        labels = torch.cat([labels, *parts[:rank], *parts[rank + 1:]])
    return rows, labels, sum(counts)


def all_gather_rows(x: Tensor) -> Tensor:
    """All ranks' rows of ``x`` in rank order, without gradient; ``x`` outside a distributed job."""
    if not active():
        return x
    return torch.cat(_gather_rows(x.detach(), _row_counts(x.shape[0], x.device)))


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum over ranks of a (small, detached) tensor; itself outside a distributed job."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def reduce_rows(rows: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """Reduce one direction's per-anchor losses of this rank over all ranks' anchors ("mean" over
    the anchors that have a positive, or "sum"): the value is the all-rank reduction; the gradient
    is K times this rank's part of it (see the module's contract)."""
    _, size = world()
    local_sum = rows.sum()
    total = all_reduce_sum(local_sum)
    if reduction == "mean":
        count = all_reduce_sum(valid.sum().to(rows.dtype)).clamp_min(1)
        total, local_sum = total / count, local_sum / count
    scaled = local_sum * size
    return total + (scaled - scaled.detach())
