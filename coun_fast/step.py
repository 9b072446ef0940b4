"""One training step of :func:`coun_fast.train.fit`: forward (with the objective's loss),
backward and the optimizer step, run eagerly or replayed from a CUDA graph.

:class:`EagerStep` is the reference: every step runs the Python of the model, the objective and the
optimizer. :class:`GraphStep` captures that same step once in a CUDA graph and replays it for every
later batch of the same shape, so a step costs one graph launch instead of hundreds of kernel
launches from Python; the batch is copied into the graph's static input tensors first. It needs a
CUDA device, batches of one shape (a final smaller batch runs eagerly, on the same weights and
optimizer state), an objective that declares ``graph_capturable = True`` (its step depends on the
batch alone: no side batches, no Python state read per step, no per-step hooks ``before_step``,
``after_step``) and SGD, whose learning rate is held in a device tensor so that the schedule can
change it between replays. A replay repeats the captured work exactly, so an objective that drew a
side batch or read a Python number per step would silently repeat its first one: that is why
objectives opt in. The step's outputs (the loss and the objective's detached parts) are the graph's
static tensors, valid until the next step.

Both write profiler ranges named ``data`` (by :func:`fit`), ``forward``, ``backward`` and
``optimizer``; objectives may nest a ``loss`` range in ``forward``.

Under a process group of more than one rank (``torchrun``) the step is eager: a captured step with
DistributedDataParallel's gradient all-reduce has not been verified (:func:`graph_unsupported`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coun_fast import distributed
from coun_fast.data.loader import Batch

record = torch.profiler.record_function


class EagerStep:
    """``step(batch) -> (loss, parts)``: one optimisation step, eagerly."""

    def __init__(self, model: nn.Module, objective, optimizer: torch.optim.Optimizer, autocast) -> None:
        self.model, self.objective, self.optimizer, self.autocast = model, objective, optimizer, autocast
        self.before_step = getattr(objective, "before_step", None)
        self.after_step = getattr(objective, "after_step", None)
        self.trained_model = model  # what the hooks see (the uncompiled model)

    def __call__(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        with record("forward"), self.autocast:
            loss, parts = self.objective(self.model, batch)
        with record("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record("optimizer"):
            if self.before_step is not None:
                self.before_step(self.trained_model)
            self.optimizer.step()
            if self.after_step is not None:
                self.after_step(self.trained_model, self.optimizer)
        return loss.detach(), parts

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def graph_unsupported(objective, device: torch.device, optimizer: str = "sgd") -> str | None:
    """Why a step of ``objective`` on ``device`` with ``optimizer`` (``sgd``, ``adam``) cannot be
    captured; None when it can."""
    if device.type != "cuda":
        return f"CUDA-graph steps need a CUDA device, not {device.type}"
    if distributed.active():
        return ("a captured step under DistributedDataParallel (torchrun) has not been verified; the step runs "
                "eagerly in a distributed run")
    hooks = [name for name in ("before_step", "after_step") if getattr(objective, name, None) is not None]
    if hooks:
        return f"the objective has per-step hooks ({', '.join(hooks)}), which run Python between steps"
    if not getattr(objective, "graph_capturable", False):
        return (f"{type(objective).__name__} does not declare graph_capturable = True (its step may draw side "
                "batches or read Python state, which a replay would repeat unchanged)")
    if optimizer != "sgd":
        return f"the captured step holds SGD's learning rate on the device; the optimizer is {optimizer}"
    return None


class GraphStep(EagerStep):
    """The eager step, captured in a CUDA graph after ``warmup`` eager steps (on a side stream, as
    capture requires) and replayed for every batch of the captured shape."""

    def __init__(self, model: nn.Module, objective, optimizer: torch.optim.Optimizer, autocast,
                 warmup: int = 3) -> None:
        super().__init__(model, objective, optimizer, autocast)
        self.warmup = warmup
        self.steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: Batch | None = None
        self.outputs: tuple[Tensor, dict[str, Tensor]] | None = None
        device = next(model.parameters()).device
        # The learning rate lives on the device so that replays read the schedule's current value.
        self.lr = torch.tensor(float(optimizer.param_groups[0]["lr"]), device=device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        self.side = torch.cuda.Stream(device)

    def set_lr(self, lr: float) -> None:
        self.lr.fill_(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def _shape(self, batch: Batch) -> tuple:
        inputs = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
        return tuple(x.shape for x in inputs), batch.labels.shape

    def _capture(self, batch: Batch) -> None:
        self.static = Batch(tuple(x.clone() for x in batch.inputs) if isinstance(batch.inputs, tuple)
                            else batch.inputs.clone(), batch.labels.clone(), batch.indices)
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            with self.autocast:
                loss, parts = self.objective(self.model, self.static)
            loss.backward()
            self.optimizer.step()
        self.outputs = (loss.detach(), parts)

    def _copy_in(self, batch: Batch) -> None:
        if isinstance(batch.inputs, tuple):
            for target, source in zip(self.static.inputs, batch.inputs):
                target.copy_(source)
        else:
            self.static.inputs.copy_(batch.inputs)
        self.static.labels.copy_(batch.labels)

    def __call__(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        self.steps += 1
        if self.graph is not None and self._shape(batch) == self._shape(self.static):
            with record("forward"):  # forward, backward and optimizer are one replay
                self._copy_in(batch)
                self.graph.replay()
            return self.outputs
        if self.graph is not None or self.steps <= self.warmup:
            # Warm-up steps (and a last batch of another shape) run eagerly, on the side stream
            # during warm-up as capture requires.
            stream = self.side if self.graph is None else torch.cuda.current_stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                result = super().__call__(batch)
            torch.cuda.current_stream().wait_stream(stream)
            return result
        self._capture(batch)
        with record("forward"):
            self._copy_in(batch)
            self.graph.replay()
        return self.outputs


def make_step(model: nn.Module, objective, optimizer: torch.optim.Optimizer, autocast, *, cuda_graph: bool,
              device: torch.device) -> EagerStep:
    """The step of :func:`coun_fast.train.fit`: a :class:`GraphStep` when ``cuda_graph``, else eager.

    Raises:
        ValueError: ``cuda_graph`` where a step cannot be captured (the message says why).
    """
    if not cuda_graph:
        return EagerStep(model, objective, optimizer, autocast)
    reason = graph_unsupported(objective, device, "sgd" if isinstance(optimizer, torch.optim.SGD) else
                               type(optimizer).__name__.lower())
    if reason is not None:
        raise ValueError(f"cuda_graph=True: {reason}; train with cuda_graph=False")
    return GraphStep(model, objective, optimizer, autocast)
