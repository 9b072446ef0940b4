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

The second part of the module serves a training run under ``torchrun``: joining the process group
that the environment describes (:func:`init_from_env`), which rank writes files (:func:`is_main`),
the few collectives of the training loop (:func:`barrier`, :func:`broadcast_object`,
:func:`on_main`, :func:`sum_over_ranks`), of the methods' side passes (:func:`sum_tensors_over_ranks`,
:func:`counts_of_ranks`, :func:`broadcast_module`) and BatchNorm over the ranks' global batch
(:class:`CpuSyncBatchNorm`, :func:`convert_sync_batchnorm`).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn


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


def counts_of_ranks(counts: list[int], device: torch.device) -> list[list[int]]:
    """Every rank's ``counts`` (a few whole numbers, the same length on every rank), in rank order
    (one small all-gather; a host synchronization); ``[counts]`` outside a distributed job."""
    if not active():
        return [list(counts)]
    _, size = world()
    mine = torch.tensor(counts, dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine)
    return [part.tolist() for part in parts]


def _gather_rows(x: Tensor, counts: list[int]) -> list[Tensor]:
    """Every rank's rows of ``x`` (padded to the largest count for the collective, then cut)."""
    largest = max(counts)
    padded = x if x.shape[0] == largest else torch.cat([x, x.new_zeros((largest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return [part[:count] for part, count in zip(parts, counts)]


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows in rank order; the backward sums every rank's gradient of this rank's rows
    (differentiable: under create_graph=True a gradient penalty's second order crosses the ranks too)."""

    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int]) -> Tensor:
        rank, _ = world()
        ctx.rows = (sum(counts[:rank]), counts[rank])
        return torch.cat(_gather_rows(x, counts))

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = _SumOverRanks.apply(grad)
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
    """The sum over ranks of ``x`` (a new, detached tensor); ``x`` itself outside a distributed job."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def sum_tensors_over_ranks(tensors: list[Tensor]) -> list[Tensor]:
    """Each of ``tensors`` summed over the ranks (new, detached tensors of the same shapes and
    dtypes), in one all-reduce of their flattened concatenation (per dtype); the tensors themselves
    outside a distributed job. Every rank receives the same bits: sums over a data set that the
    ranks split between them (SalUn's saliency, SSD's importances)."""
    if not active():
        return tensors
    out: list[Tensor | None] = [None] * len(tensors)
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        chosen = [i for i, t in enumerate(tensors) if t.dtype == dtype]
        flat = all_reduce_sum(torch.cat([tensors[i].detach().reshape(-1) for i in chosen]))
        for i, part in zip(chosen, flat.split([tensors[i].numel() for i in chosen])):
            out[i] = part.view_as(tensors[i])
    return out


def broadcast_module(module: nn.Module, src: int = 0) -> nn.Module:
    """``module``'s parameters and buffers replaced in place by those of rank ``src`` (one broadcast
    per tensor), so every rank holds the same weights (e.g. a randomly initialised teacher); nothing
    outside a distributed job. Returns ``module``."""
    if active():
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=src)
    return module


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


# -- the process group of a run (torchrun) ------------------------------------------------------------
# What :func:`coun_fast.train.fit`, the workflow and the ``coun-fast`` command need beside the losses:
# the process group itself, who writes files, and the collectives of the training loop.

ENV_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What ``torchrun`` sets in every worker's environment (:func:`init_from_env` reads them)."""


def launched_world_size() -> int:
    """``WORLD_SIZE`` of the environment (set by ``torchrun``), 1 when it is not set; ValueError
    when it is not a whole number >= 1."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"the environment variable WORLD_SIZE must be a whole number >= 1; got {text!r}")
    return size


def init_from_env(device_type: str) -> bool:
    """Join the default process group that ``torchrun`` describes in the environment, when
    ``WORLD_SIZE`` > 1 and no group is initialized yet; returns whether this call initialized one
    (the caller then ends the process with :func:`exit_process`).

    ``device_type`` is the device the run trains on: ``cuda`` selects NCCL and makes
    ``cuda:LOCAL_RANK`` this process's current GPU (``torch.cuda.set_device``); ``cpu`` selects gloo.
    """
    if launched_world_size() == 1 or (dist.is_available() and dist.is_initialized()):
        return False
    missing = [name for name in ENV_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                         "is not set: launch the command with torchrun (e.g. torchrun --nproc_per_node=2 ...)")
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 asks for a distributed run, but this torch has no torch.distributed")
    if device_type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} has no GPU: torch sees {torch.cuda.device_count()} GPU(s); "
                             "start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    """End the default process group (after :func:`init_from_env`); nothing when there is none.
    A process that trained under DistributedDataParallel should then end with
    :func:`exit_process`."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_status(error: BaseException) -> int:
    """The exit status the interpreter would give a process that ends with ``error``, with what it
    would print: SystemExit's code (None: 0; a message: printed, 1), else the traceback and 1."""
    if isinstance(error, SystemExit):
        if error.code is None or isinstance(error.code, int):
            return error.code or 0
        print(error.code, file=sys.stderr)
        return 1
    traceback.print_exception(error)
    return 1


def exit_process(code: int) -> NoReturn:
    """End a process of a distributed job at once with exit status ``code``: the default process
    group is ended (:func:`shutdown`), logging and the standard streams are flushed, and the
    process exits without the interpreter's finalization (``os._exit``; atexit handlers do not run).

    Why: after DistributedDataParallel, ``destroy_process_group`` does not free a gloo group (torch
    keeps a reference), so its worker threads outlive the interpreter's finalization; one that then
    releases the last tensors of a finished collective waits for the GIL, is killed there, and the
    whole process aborts ("terminate called without an active exception", SIGABRT), now and then,
    after the job's work is done. Seen with torch 2.13 on the CPU (gloo) in up to 4 of 10 two-rank
    runs on a busy 2-core machine, and in none of 16 such runs since the CLI exits this way."""
    try:
        shutdown()
    except Exception:  # the job's status stands; say why the group did not end cleanly
        traceback.print_exc()
        code = code or 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing more can be said there
            pass
    os._exit(code)


def is_main() -> bool:
    """Whether this process writes the run's files and prints its results: rank 0, or the only process."""
    return world()[0] == 0


def barrier() -> None:
    """Wait until every rank arrives here (nothing outside a distributed job)."""
    if active():
        dist.barrier()


def broadcast_object(value: object = None, src: int = 0) -> object:
    """``value`` of rank ``src`` on every rank (any picklable object, e.g. a checkpoint's state on
    the CPU); ``value`` itself outside a distributed job."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_over_ranks(values: dict[str, float | Tensor], device: torch.device) -> dict[str, float]:
    """Each of ``values`` summed over the ranks in one all-reduce (the per-epoch metric sums of
    :func:`coun_fast.train.fit`), as Python floats; the values themselves outside a distributed job."""
    if not values:
        return {}
    flat = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(())
                        for v in values.values()])
    flat = all_reduce_sum(flat).cpu()
    return {name: float(total) for name, total in zip(values, flat)}


def on_main(fn: Callable[[], object], what: str) -> object:
    """``fn()`` run on rank 0 alone, its result broadcast to every rank (``fn()`` itself outside a
    distributed job). When it raises on rank 0, the other ranks raise a ValueError with the same
    text instead of waiting for ever on a rank that will not come (rank 0 re-raises its own error);
    ``what`` names the work in that message."""
    if not active():
        return fn()
    if not is_main():
        status, result = broadcast_object()
        if status == "error":
            raise ValueError(f"rank 0 failed to {what}: {result}")
        return result
    try:
        result = fn()
    except BaseException as error:
        broadcast_object(("error", str(error) or type(error).__name__))
        raise
    broadcast_object(("ok", result))
    return result


# -- BatchNorm across ranks -------------------------------------------------------------------------
class _SumOverRanks(torch.autograd.Function):
    """The sum over ranks of a tensor, differentiable to any order: every rank's result depends on
    every rank's input, so the gradient of a rank's input is the sum of all ranks' gradients of the
    result (the same operation again)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return all_reduce_sum(x.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _SumOverRanks.apply(grad)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over all ranks' rows, on the CPU (gloo), which torch's SyncBatchNorm does not serve.

    In training mode under a process group of K > 1 ranks, the batch statistics (mean and biased
    variance per channel) are those of all ranks' rows together, from two differentiable
    all-reduces per layer (the sums, then the squared deviations from the global mean), so K ranks
    with a global batch B normalize as one process with batch B (up to float rounding); the
    running statistics are updated with them (unbiased variance, as BatchNorm). Outside a process
    group, and in eval mode, it is BatchNorm.
    """

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002 (torch's name)
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        if not (self.training and active()):
            return super().forward(input)
        all_reduce = _SumOverRanks.apply
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = float(all_reduce_sum(torch.tensor(float(input.numel() // input.shape[1]), dtype=torch.float64)))
        mean = all_reduce(input.sum(dims)) / count
        centred = input - mean.reshape(shape)
        var = all_reduce(centred.square().sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (count / max(count - 1, 1.0)), alpha=factor)
        return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Replace every BatchNorm layer of ``model`` (in place) with one that normalizes over all
    ranks' rows in training mode (torch's :class:`~torch.nn.SyncBatchNorm` on a GPU,
    :class:`CpuSyncBatchNorm` on the CPU), sharing its weights and running statistics; returns the
    function that puts the original layers back (they hold every update the synchronized ones
    made: the tensors are the same), so the model keeps its architecture and its ``state_dict``
    keys throughout."""
    kind = CpuSyncBatchNorm if device.type == "cpu" else nn.SyncBatchNorm
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                    child, (nn.SyncBatchNorm, CpuSyncBatchNorm)):
                sync = kind(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                sync.weight, sync.bias = child.weight, child.bias
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
                sync.train(child.training)
                setattr(parent, name, sync)
                swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in reversed(swapped):
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)
        swapped.clear()

    return restore
