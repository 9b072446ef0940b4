"""The one training loop: Original, Retrain and every unlearning method run through :func:`fit`.

A method is an :class:`Objective`: the augmentation recipe its batches need and a per-batch
``(model, batch) -> (loss, parts)``. :func:`fit` owns everything else: the loader, SGD with the
configured schedule (the fused implementation), mixed precision, ``torch.compile``, the step itself
(eager, or captured in a CUDA graph: :mod:`coun_fast.step`), progress bars, per-epoch evaluation
hooks, and atomic checkpoints from which ``resume=True`` continues a killed run. Within an epoch
nothing waits for the device: metrics accumulate there and are read at the end of the epoch (and
at most twice a second for the progress bar). Batches, augmentations and the torch RNG of every
epoch are functions of ``(seed, epoch)``, so a resumed run on the CPU is bit-identical to an
uninterrupted one with the same number of threads. On the CPU, :func:`fit` chooses that number
once, at its start (:mod:`coun_fast.threads`: from the free cores and the size of one batch's
forward pass, unless ``COUN_FAST_THREADS``, ``--threads`` or ``OMP_NUM_THREADS`` pins it), and
restores torch's count at its end; a resumed run keeps the count its checkpoint recorded unless a
count is pinned (a resume with another count is logged, as its result differs in the last bits).
A checkpoint is resumed only by a run of the same configuration and the same record (what the
caller says the run is: its data set, model, method...); any difference is refused with an error
that names it.

Under ``torchrun`` (a ``torch.distributed`` process group of K > 1 ranks, which the caller has
initialized: the ``coun-fast`` command does it from the environment), :func:`fit` trains with
DistributedDataParallel. ``batch_size`` is the global batch (divisible by K); each rank takes its
B/K rows of every global batch (:class:`~coun_fast.data.loader.AugmentedLoader`'s ``ranks``), so
the K ranks visit the samples and draw the views of one process. All ranks start from rank 0's
weights; DDP averages the gradients, so a step equals the one-process step of the global batch
for any loss that is a mean over the batch computed across ranks (CoUn's ``cl_scope="global"``);
BatchNorm layers normalize over each rank's rows unless ``sync_batchnorm=True``. The epoch's
metrics are summed over the ranks once per epoch; ``on_epoch_end`` (evaluation) runs on rank 0
while the others wait; rank 0 alone writes the checkpoint (the state of the run is global, so a
run may resume with another K). A method's stopping rule (``should_stop``) runs on rank 0 too,
its decision sent to every rank; when any of this work of rank 0 fails, the other ranks raise
instead of waiting. Objectives with a ``start_epoch`` hook are refused unless they declare
``start_epoch_synchronized`` (the hook only sets values for the epoch, or its passes step through
:func:`forward_loss` on each rank's rows of global batches, so DDP averages their gradients too).
The step is eager (a CUDA-graph step under DDP has not been verified).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Callable, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast import checkpoint, distributed, threads
from coun_fast.data.backends import BACKENDS, resolve_backend
from coun_fast.data.dataset import ImageDataset
from coun_fast.data.loader import AugmentedLoader, Batch, check_global_batch
from coun_fast.models import forward_flops
from coun_fast.identity import describe_differences
from coun_fast.step import graph_unsupported, make_step

record_function = torch.profiler.record_function
PHASES_RECORDED = ("data", "forward", "loss", "backward", "optimizer")
"""The profiler ranges of a step (fit: data; coun_fast.step: forward, backward, optimizer; the
objectives: loss, nested in forward)."""

SCHEDULES = ("multistep", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_TYPES = ("cpu", "cuda")
NOT_RECIPE = ("progress", "cuda_graph", "checkpoint_every")
"""TrainConfig fields that do not change the trained model: a run resumes whatever they are."""
log = logging.getLogger("coun_fast.train")
OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass
class TrainConfig:
    """How to train. The defaults are the paper's Original/Retrain recipe (see :data:`PRESETS`).

    Attributes:
        epochs: passes over the training indices.
        batch_size: samples per step; under ``torchrun``, the global batch (all ranks together),
            divisible by the number of ranks.
        optimizer: ``sgd`` (with ``momentum`` and ``nesterov``) or ``adam`` (torch's defaults for
            the betas; ``momentum`` and ``nesterov`` unused); ``lr`` and ``weight_decay`` for both.
        schedule: per-epoch learning rate: ``multistep`` (x ``gamma`` at each of ``milestones``,
            fractions of ``epochs``), ``cosine`` (from ``lr`` down to ``min_lr`` at the end) or
            ``constant``.
        warmup_epochs: linear warm-up from lr / warmup_epochs to lr over these first epochs.
        seed: order, augmentation, dropout: the whole run follows from it.
        precision: ``auto`` (bf16 autocast on a GPU, fp32 on the CPU), ``fp32``, ``bf16``, ``fp16``.
        channels_last: channels-last images and weights; ``None`` = on a GPU only.
        compile: ``torch.compile`` the model's ``forward_features`` and ``forward_head``.
        cuda_graph: capture the training step (forward, loss, backward, optimizer) in a CUDA graph
            and replay it for every batch of the same shape (:mod:`coun_fast.step`). ``None`` (the
            default): on a GPU whenever the step can be captured (an objective that declares
            ``graph_capturable``, such as Original/Retrain, FT and CoUn; SGD; no ``compile``), else
            eager; ``True``: required (an error says why it cannot); ``False``: eager.
        augment_backend: ``auto`` | ``dali`` | ``torch`` | ``cpu`` (see ``coun_fast.data``).
        device: ``cpu``, ``cuda``, ``cuda:1``...; ``None`` = a GPU when there is one. Under
            ``torchrun`` on GPUs, ``None`` or ``cuda`` (each rank's current GPU, cuda:LOCAL_RANK).
        sync_batchnorm: in a distributed run (``torchrun``, K > 1 ranks), BatchNorm layers
            normalize with the statistics of the global batch (all ranks' rows; the one-process
            statistics) instead of each rank's B/K rows; the model keeps its plain BatchNorm layers
            (they are swapped for the run only). No effect in one process.
        progress: show a progress bar per epoch.
        checkpoint_every: seconds of wall time between two checkpoints of a run that has a run
            folder: ``checkpoint.pt`` is written after the first epoch that ends at least this long
            after the last one was written (or after the run began), and after the last epoch; 0
            writes it after every epoch. A killed run resumes from the last one written, so at most
            about this much work is lost; each write costs a fraction of a second (ResNet-18 with
            its SGD momentum: 90 MB), which after every epoch of a short GPU epoch is a large share.
    """

    epochs: int = 182
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: int = 0
    seed: int = 0
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    cuda_graph: bool | None = None
    augment_backend: str = "auto"
    device: str | None = None
    sync_batchnorm: bool = False
    progress: bool = True
    checkpoint_every: float = 60.0

    def __post_init__(self) -> None:
        try:
            self.milestones = tuple(float(m) for m in self.milestones)
        except (TypeError, ValueError):
            raise ValueError(f"milestones must be fractions of the epochs in (0, 1]; got {self.milestones!r}") from None
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if not (isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs):
            raise ValueError(f"warmup_epochs must be an integer >= 0; got {self.warmup_epochs!r}")
        for name in ("lr", "momentum", "weight_decay", "min_lr", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}; got {self.schedule!r}")
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones must be fractions of the epochs in (0, 1]; got {self.milestones}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {self.precision!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {self.seed!r}")
        for name in ("nesterov", "compile", "sync_batchnorm", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        if (isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, (int, float))
                or not math.isfinite(self.checkpoint_every) or self.checkpoint_every < 0):
            raise ValueError(f"checkpoint_every must be a finite number of seconds >= 0; got {self.checkpoint_every!r}")
        if self.cuda_graph is not None and not isinstance(self.cuda_graph, bool):
            raise ValueError(f"cuda_graph must be true, false or null (wherever the step allows it); "
                             f"got {self.cuda_graph!r}")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be true, false or null (on a GPU only); got {self.channels_last!r}")
        if self.augment_backend not in BACKENDS:
            raise ValueError(f"augment_backend must be one of {', '.join(map(repr, BACKENDS))}; "
                             f"got {self.augment_backend!r}")
        if self.device is not None:
            parse_device(self.device)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, TrainConfig] = {
    # Original / Retrain in the paper (after NoT, SalUn, l1-sparse): SGD 0.1, momentum 0.9, wd 5e-4,
    # batch 256, 182 epochs, lr x0.1 at 50% and 75%.
    "paper": TrainConfig(),
    # The paper's unlearning optimiser: 50 epochs, cosine decay to 1e-4 (lr tuned in [0.01, 0.1]).
    "paper_unlearn": TrainConfig(epochs=50, lr=0.05, schedule="cosine", min_lr=1e-4),
}


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) divided by ``config.lr``."""
    if config.warmup_epochs and epoch < config.warmup_epochs:
        return (epoch + 1) / config.warmup_epochs
    if config.schedule == "multistep":
        passed = sum(epoch >= int(m * config.epochs) for m in config.milestones)  # as the anchors: 91, 136
        return config.gamma**passed
    if config.schedule == "cosine":
        span = max(1, config.epochs - config.warmup_epochs)
        progress = (epoch - config.warmup_epochs) / span
        low = config.min_lr / config.lr
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


# -- objectives ----------------------------------------------------------------------------------
class Objective(Protocol):
    """A method's per-batch loss.

    Attributes:
        recipe: the augmentation recipe of its batches (``train``, ``two_view``, ...).
        extra_forward_views: forward-only passes per sample beyond the trained one, for the
            paper's cost count (CoUn's second view: 1).
    Calling it returns ``(loss, parts)``: the scalar loss to minimize and named detached scalars
    for the log; ``parts["logits"]``, when given, are the trained view's logits, for accuracy.

    Optional hooks, called by :func:`fit` when the objective defines them:
    ``start_epoch(model, optimizer, epoch)`` before an epoch's first batch, the model in train
    mode and under the run's autocast (e.g. a pass of extra steps over other data, or a penalty
    that depends on the epoch); ``before_step(model)`` after the backward pass, before the
    optimizer step (e.g. to edit gradients); ``after_step(model, optimizer)`` after the step (e.g.
    to restore weights a mask froze, whatever weight decay and momentum did);
    ``should_stop(epoch, row) -> bool`` after each epoch's history row (a method's stopping rule;
    the run ends after that epoch). Under ``torchrun`` a ``start_epoch`` hook is refused (its
    passes could leave the ranks apart) unless the objective sets ``start_epoch_synchronized =
    True``: the hook only sets values for the epoch (e.g. a penalty weight), or every step it takes
    computes its loss with :func:`forward_loss` (``model`` is then the DistributedDataParallel
    module of the run, which averages the step's gradients over the ranks; :func:`plain_model` is
    the model itself) on this rank's rows of global batches (a loader with ``ranks``), the same
    number of steps on every rank. ``should_stop`` runs on rank 0 alone; its decision (and the
    values it put in the row) reach every rank.

    Optional loop settings: ``shuffle`` (default True; False serves the indices in their order every
    epoch) and ``steps_per_batch`` (default 1; k > 1 takes k optimizer steps on each batch in a row,
    each a fresh call of the objective, e.g. CU's omega steps per forget batch).

    ``graph_capturable`` (default False; :class:`GraphCapturable` sets it): the step depends on the
    batch alone, so :func:`fit` may capture it in a CUDA graph.

    Optional counters, for the cost: ``side_trained_images`` and ``side_forward_images``, running
    totals of images the objective trained on (forward and backward) or only ran forward, beyond
    its loop's batches and ``extra_forward_views`` (forget batches drawn beside retain batches,
    the passes of ``start_epoch``...). :func:`fit` adds their growth over each epoch to the cost.
    """

    recipe: str
    extra_forward_views: int

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]: ...


class GraphCapturable:
    """Mixed into an objective whose step depends on the batch alone (no side batches, no Python
    state read per step), so that :func:`fit` may capture it in a CUDA graph (:mod:`coun_fast.step`)."""

    graph_capturable: ClassVar[bool] = True


@dataclasses.dataclass
class CrossEntropy(GraphCapturable):
    """Plain supervised training (Original, Retrain): cross-entropy on one augmented view."""

    recipe: str = "train"
    extra_forward_views: int = 0

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(batch.inputs)
        with torch.profiler.record_function("loss"):
            loss = F.cross_entropy(logits, batch.labels)
        return loss, {"ce": loss.detach(), "logits": logits.detach()}


# -- the loop ------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    """What :func:`fit` did: per-epoch history rows (on the CPU with the epoch's thread count,
    ``threads``), wall time and images processed."""

    history: list[dict]
    seconds: float
    trained_images: int
    extra_forward_images: int
    resumed_from_epoch: int = 0


def parse_device(device) -> torch.device:
    """``device`` (text or torch.device) as a torch.device of a type coun_fast runs on (cpu,
    cuda, cuda:N); ValueError otherwise. Does not look for the hardware."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise ValueError(f"device must be cpu, cuda or cuda:N (e.g. cuda:1); got {device!r}")
    return parsed


def resolve_device(device) -> torch.device:
    """The device to run on: ``device`` checked against the hardware, or a GPU when None and there
    is one. ValueError for a malformed name, a missing GPU or a GPU index beyond the count."""
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = parse_device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was requested but no CUDA GPU is available to torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} was requested but torch sees {torch.cuda.device_count()} GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def check_runnable(config: TrainConfig) -> torch.device:
    """What :func:`fit` would refuse on this machine, checked before any work: the device, the
    augmentation backend for it and a CUDA-graph step off a GPU. Returns the device."""
    device = resolve_device(config.device)
    try:
        resolve_backend(config.augment_backend, device)
    except RuntimeError as error:
        raise ValueError(str(error)) from None
    if config.cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; this run is on {device.type}")
    check_distributed(config)
    return device


def check_distributed(config: TrainConfig) -> None:
    """What a distributed run (K > 1 ranks) refuses, checked before any work: a global batch size
    that K does not divide, and a CUDA-graph step."""
    _, size = distributed.world()
    if size == 1:
        return
    check_global_batch(config.batch_size, size)
    if config.cuda_graph:
        raise ValueError("cuda_graph=True: a captured step under DistributedDataParallel (torchrun) has not been "
                         "verified; train with cuda_graph=False (the default under torchrun)")


def recipe_dict(config: TrainConfig) -> dict:
    """``config`` as a dict without :data:`NOT_RECIPE` (what a resumed run must match)."""
    return {k: v for k, v in config.to_dict().items() if k not in NOT_RECIPE}


def check_resumable(path: str | Path, config: TrainConfig, record: dict | None, state: dict | None = None) -> dict:
    """The checkpoint at ``path`` (``state`` when already read) when it continues this very run:
    the same configuration (but for :data:`NOT_RECIPE`) and the same ``record``; else ValueError
    saying what differs."""
    state = checkpoint.load(path) if state is None else state
    stored = {k: v for k, v in (state.get("config") or {}).items() if k not in NOT_RECIPE}
    reason = None
    if stored != recipe_dict(config):
        reason = f"it was written with another configuration ({describe_differences(stored, recipe_dict(config))})"
    elif (state.get("record") or {}) != (record or {}):
        reason = f"it was written for another run ({describe_differences(state.get('record') or {}, record or {})})"
    if reason is not None:
        raise ValueError(f"cannot resume from {str(path)!r}: {reason}; start over with --overwrite or use "
                         "another run folder")
    return state


def effective_precision(precision: str, device: torch.device) -> str:
    """``precision`` with ``auto`` resolved for ``device``: bf16 on a GPU, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def precision_autocast(config: TrainConfig, device: torch.device):
    """The autocast context of ``config.precision`` on ``device`` (a null context for fp32)."""
    precision = effective_precision(config.precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def channels_last_for(config: TrainConfig, device: torch.device) -> bool:
    """Whether images and weights use the channels-last memory format (default: on a GPU)."""
    return device.type == "cuda" if config.channels_last is None else config.channels_last


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``model``'s parameters with ``config``'s settings (SGD: lr,
    momentum, weight decay, nesterov; Adam: lr, weight decay, torch's betas), the fused
    implementation (one kernel for all parameters) where torch has it for their device, else the
    multi-tensor one."""
    if config.optimizer == "adam":
        kind, options = torch.optim.Adam, dict(lr=config.lr, weight_decay=config.weight_decay)
    else:
        kind, options = torch.optim.SGD, dict(lr=config.lr, momentum=config.momentum,
                                              weight_decay=config.weight_decay, nesterov=config.nesterov)
    try:
        return kind(model.parameters(), fused=True, **options)
    except (RuntimeError, ValueError, TypeError):  # no fused implementation for this device or torch
        return kind(model.parameters(), foreach=True, **options)


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The torch seed of ``epoch`` (dropout...); rank r > 0 of a distributed run gets its own stream."""
    entropy = [seed, epoch, 0x70C4] + ([rank] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU), so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Meter:
    """Running sums of one epoch, read without a device sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.correct: Tensor | None = None
        self.samples = 0

    def update(self, parts: dict[str, Tensor], labels: Tensor) -> None:
        n = len(labels)
        self.samples += n
        for name, value in parts.items():
            if name == "logits":
                hits = (value.argmax(1) == labels).sum()
                self.correct = hits if self.correct is None else self.correct + hits
            else:
                self.sums[name] = self.sums.get(name, 0) + value.float() * n

    def over_ranks(self, device: torch.device) -> "_Meter":
        """The sums of all ranks' meters (one all-reduce); this meter outside a distributed job."""
        if not distributed.active():
            return self
        values = {f"sum:{name}": total for name, total in self.sums.items()}
        values["samples"] = float(self.samples)
        if self.correct is not None:
            values["correct"] = self.correct
        totals = distributed.sum_over_ranks(values, device)
        total = _Meter()
        total.sums = {name[4:]: value for name, value in totals.items() if name.startswith("sum:")}
        total.samples = int(round(totals["samples"]))
        total.correct = totals.get("correct")
        return total

    def means(self) -> dict[str, float]:
        out = {name: float(total) / max(1, self.samples) for name, total in self.sums.items()}
        if self.correct is not None:
            out["acc"] = 100.0 * float(self.correct) / max(1, self.samples)
        return out


def _clock() -> float:
    """Seconds on a monotonic clock: when a checkpoint is due (tests replace it)."""
    return time.monotonic()


def fit(
    model: nn.Module,
    dataset: ImageDataset,
    objective: Objective,
    config: TrainConfig,
    *,
    indices=None,
    normalization=None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    record: dict | None = None,
    on_epoch_end: Callable[[nn.Module, int], dict] | None = None,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place on ``dataset[indices]`` with ``objective`` under ``config``.

    Args:
        model: a timm-style classifier (``forward_features``, ``forward_head``); moved to the device.
        dataset: the training split; ``indices`` picks the samples (e.g. the retain set).
        objective: the per-batch loss (:class:`Objective`).
        config: optimiser, schedule, precision, device, seed.
        normalization: ``(mean, std)`` for the images; default the statistics of ``dataset``.
        run_dir: where ``checkpoint.pt`` is written (atomically; after the epochs that
            ``config.checkpoint_every`` says); None = nowhere.
        resume: continue from ``run_dir/checkpoint.pt`` when it exists; it must have been written
            with the same config (but for :data:`NOT_RECIPE`) and the same ``record``, else
            ValueError saying what differs.
        record: the run's identity, plain JSON-safe values stored in the checkpoint (data set,
            model, method, split...): what a resumed run must match.
        on_epoch_end: ``(model, epoch) -> dict`` of metrics added to that epoch's history row
            (e.g. forget and retain accuracy); the model is handed over in eval mode.
        description: the progress bar's label.

    Returns:
        :class:`TrainResult`; the trained weights are in ``model``.
    """
    device = resolve_device(config.device)
    rank, world_size = distributed.world()
    if world_size > 1:
        check_distributed(config)
        if getattr(objective, "start_epoch", None) is not None and not getattr(objective, "start_epoch_synchronized",
                                                                               False):
            raise ValueError(f"{type(objective).__name__} runs passes beside its loop (start_epoch), which are not "
                             "synchronized across ranks: it is not supported under torchrun")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    main = rank == 0
    graph_reason = graph_unsupported(objective, device, config.optimizer)
    if config.cuda_graph and graph_reason is not None:
        raise ValueError(f"cuda_graph=True: {graph_reason}; train with cuda_graph=False")
    cuda_graph = config.cuda_graph if config.cuda_graph is not None else graph_reason is None and not config.compile
    if device.type == "cuda":
        log.info("training step: %s", "captured in a CUDA graph" if cuda_graph else
                 f"eager ({'cuda_graph=False' if config.cuda_graph is False else graph_reason or 'compile=True'})")
    channels_last = channels_last_for(config, device)
    model.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    loader = AugmentedLoader(
        dataset, objective.recipe, batch_size=config.batch_size, indices=indices, backend=config.augment_backend,
        device=device, seed=config.seed, normalization=normalization, channels_last=channels_last,
        shuffle=getattr(objective, "shuffle", True), ranks=(rank, world_size),
    )
    steps_per_batch = int(getattr(objective, "steps_per_batch", 1))
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(config, epoch))

    history: list[dict] = []
    start_epoch, spent, trained, extra = 0, 0.0, 0, 0
    path = Path(run_dir) / "checkpoint.pt" if run_dir is not None else None

    def read_checkpoint() -> dict | None:
        if not (resume and path is not None and path.is_file()):
            return None
        # Under torchrun rank 0 reads it and sends it to the others, on the CPU (they may be on other nodes).
        return check_resumable(path, config, record, checkpoint.load(path, map_location="cpu" if world_size > 1
                                                                     else device))

    state = distributed.on_main(read_checkpoint, "read the checkpoint to resume")
    began_with = (state.get("environment") or {}).get("threads") if state is not None else None
    cpu_threads = cpu_thread_choice(model, loader, began_with) if device.type == "cpu" else None
    used_threads = cpu_threads.threads if cpu_threads is not None else torch.get_num_threads()
    if began_with is not None and began_with != used_threads:
        log.warning("resuming with %d threads a run that began with %d: the result will differ in the last bits "
                    "from an uninterrupted run (set COUN_FAST_THREADS=%d for a bit-identical resume)",
                    used_threads, began_with, began_with)
    if state is not None:
        if state.get("world_size", 1) != world_size:
            log.info("resuming with %d rank(s) a run that was checkpointed with %d", world_size,
                     state.get("world_size", 1))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"]
        spent, trained, extra = state["seconds"], state["trained_images"], state["extra_forward_images"]
    resumed_from = start_epoch
    last_written = _clock()  # rank 0's clock decides when a checkpoint is due

    def save_if_due(epoch: int, final: bool) -> None:
        """The checkpoint after ``epoch`` when ``final`` or ``config.checkpoint_every`` has passed."""
        nonlocal last_written
        if not final and _clock() - last_written < config.checkpoint_every:
            return
        checkpoint.save(path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "config": config.to_dict(),
            "history": history, "seconds": spent, "trained_images": trained, "extra_forward_images": extra,
            "record": record or {}, "environment": checkpoint.environment(device), "world_size": world_size,
        })
        last_written = _clock()

    restore_batchnorm = (distributed.convert_sync_batchnorm(model, device) if config.sync_batchnorm and world_size > 1
                         else lambda: None)
    thread_count = contextlib.ExitStack()  # the CPU thread count of the run, torch's restored at the end
    if cpu_threads is not None:
        thread_count.enter_context(threads.using(cpu_threads, description))
    try:
        step_model = _compiled(model) if config.compile else model
        autocast = precision_autocast(config, device)
        if world_size > 1:
            step_model = _ddp(step_model, objective, device)  # start_epoch's passes step through it too
            step = make_step(step_model, _ThroughDDP(objective), optimizer, autocast, cuda_graph=False, device=device)
        else:
            step = make_step(step_model, objective, optimizer, autocast, cuda_graph=cuda_graph, device=device)
        step.trained_model = model
        bar = _progress(loader, start_epoch, config, description) if main else None
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(_epoch_seed(config.seed, epoch, rank))
            model.train()
            meter = _Meter()
            side_before = _side_images(objective)
            synchronize(device)
            started = time.perf_counter()
            start_epoch = getattr(objective, "start_epoch", None)
            if start_epoch is not None:
                with autocast:
                    start_epoch(step_model, optimizer, epoch)
                model.train()
            step.set_lr(optimizer.param_groups[0]["lr"])
            batches = loader.iterate(epoch)
            while True:
                with record_function("data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                for _ in range(steps_per_batch):
                    loss, parts = step(batch)
                    meter.update({"loss": loss, **parts}, batch.labels)
                if bar is not None:
                    bar.update(len(batch.labels) * world_size)
                    if _due(bar):  # reading the running loss syncs the device: at most twice a second
                        _show(bar, epoch, meter, time.perf_counter() - started, world_size)
            synchronize(device)
            seconds = time.perf_counter() - started
            meter = meter.over_ranks(device)
            if bar is not None:
                _show(bar, epoch, meter, seconds)
            lr = float(optimizer.param_groups[0]["lr"])
            scheduler.step()
            spent += seconds
            side = _side_images(objective)
            side = distributed.sum_over_ranks({"trained": side[0] - side_before[0],
                                               "forward": side[1] - side_before[1]}, device)
            trained += meter.samples + int(side["trained"])
            extra += meter.samples * objective.extra_forward_views + int(side["forward"])
            row = {"epoch": epoch + 1, "lr": lr, **meter.means(), "seconds": seconds,
                   "images_per_s": meter.samples / seconds,
                   **({"threads": cpu_threads.threads} if cpu_threads is not None else {})}
            # Evaluation, the stopping rule and the checkpoint: rank 0's work, which the other ranks wait
            # for; they raise when it fails there (distributed.on_main) instead of waiting for ever.
            if on_epoch_end is not None:
                row.update(distributed.on_main(partial(_evaluated, on_epoch_end, model, epoch),
                                               f"evaluate epoch {epoch + 1}"))
            history.append(row)
            should_stop = getattr(objective, "should_stop", None)
            stop = False
            if should_stop is not None:
                stop, decided = distributed.on_main(partial(_decided, should_stop, epoch, row),
                                                    f"apply the stopping rule after epoch {epoch + 1}")
                row.update(decided)
            if stop:
                row["stopped"] = "the method's stopping rule"
            if path is not None:
                final = stop or epoch + 1 == config.epochs
                distributed.on_main(partial(save_if_due, epoch, final), f"write the checkpoint {str(path)!r}")
            if stop:
                break
        if bar is not None:
            bar.close()
    finally:
        step = step_model = None  # releases DistributedDataParallel (and its gradient hooks on the parameters)
        restore_batchnorm()
        thread_count.close()
    model.eval()
    return TrainResult(history, spent, trained, extra, resumed_from)


def cpu_thread_choice(model: nn.Module, loader: AugmentedLoader, began_with: int | None = None) -> threads.Choice:
    """The thread count of a run on the CPU: :func:`coun_fast.threads.choose` for the multiply-adds
    of one batch's forward pass; a resumed run that began with ``began_with`` threads keeps that
    count (so that it stays bit-identical to an uninterrupted run) unless a count is pinned or the
    count exceeds the usable cores."""
    if began_with is not None and threads.pinned() is None and began_with <= threads.usable_cores():
        return threads.Choice(began_with, "the count the resumed run began with (a bit-identical resume)")
    work = batch_multiply_adds(model, loader.image_size, loader.batch_size) if threads.pinned() is None else None
    return threads.choose(work)


def batch_multiply_adds(model: nn.Module, image_size: tuple[int, int], batch_size: int) -> float | None:
    """Multiply-adds of ``model``'s forward pass of a batch of ``batch_size`` images of
    ``image_size`` (:func:`coun_fast.models.forward_flops`, the same count as the run's cost, cached
    per architecture; the model's mode is kept); None where the model cannot be counted."""
    try:
        return forward_flops(model, (3, *image_size)) / 2 * batch_size
    except Exception:  # noqa: BLE001 - an estimate only: an unknown size caps nothing
        return None


def _evaluated(on_epoch_end: Callable[[nn.Module, int], dict], model: nn.Module, epoch: int) -> dict:
    model.eval()
    return on_epoch_end(model, epoch)


def _decided(should_stop: Callable[[int, dict], bool], epoch: int, row: dict) -> tuple[bool, dict]:
    """``(stop, row)``: the stopping rule's decision and the row with the values it added."""
    return bool(should_stop(epoch, row)), row


class _ObjectiveForward(nn.Module):
    """The model and an objective as one module whose ``forward(batch)`` is the objective's whole
    forward (every view, ``forward_features``/``forward_head`` calls and the loss), so that
    DistributedDataParallel sees one forward per backward whatever the objective calls;
    ``forward(batch, loss)`` runs ``loss(model, batch)`` instead (a pass beside the loop)."""

    def __init__(self, model: nn.Module, objective) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "objective", objective)  # not a submodule: DDP synchronizes the model only

    def forward(self, batch: Batch, loss: Callable | None = None):
        return (self.objective if loss is None else loss)(self.model, batch)


def forward_loss(model: nn.Module, loss: Callable[[nn.Module, Batch], Tensor], batch: Batch) -> Tensor:
    """``loss(model, batch)``, where ``model`` is what :func:`fit` hands an objective's
    ``start_epoch``: under ``torchrun``, the run's DistributedDataParallel module, through whose
    forward the loss is computed, so that the backward pass averages the gradients over the ranks
    (every rank must then take the step, on its rows of the same global batch); the model itself
    in one process."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model(batch, loss)
    return loss(model, batch)


def plain_model(model: nn.Module) -> nn.Module:
    """The model itself, whether ``model`` is it or the DistributedDataParallel module that
    :func:`fit` hands ``start_epoch`` under ``torchrun`` (see :func:`forward_loss`)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module.model if isinstance(model, DistributedDataParallel) else model


def _ddp(model: nn.Module, objective, device: torch.device) -> nn.Module:
    """``model`` with ``objective`` under DistributedDataParallel (which broadcasts rank 0's weights
    and buffers now, and averages the gradients of every backward)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_ObjectiveForward(model, objective),
                                   device_ids=[device.index] if device.type == "cuda" else None)


class _ThroughDDP:
    """The step's objective under DDP: the wrapped module runs the real objective; its per-step
    hooks run on the plain model as in one process."""

    def __init__(self, objective) -> None:
        self.before_step = getattr(objective, "before_step", None)
        self.after_step = getattr(objective, "after_step", None)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return model(batch)


def _side_images(objective) -> tuple[int, int]:
    return int(getattr(objective, "side_trained_images", 0)), int(getattr(objective, "side_forward_images", 0))


def _compiled(model: nn.Module) -> nn.Module:
    """A view of ``model`` whose forward_features / forward_head / forward are compiled (same weights)."""

    class Compiled(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.forward_features = torch.compile(inner.forward_features)
            self.forward_head = torch.compile(inner.forward_head)

        def forward(self, x: Tensor) -> Tensor:
            return self.forward_head(self.forward_features(x))

    return Compiled(model)


def _progress(loader: AugmentedLoader, start_epoch: int, config: TrainConfig, description: str):
    """One bar for the whole run, counting images; None when progress is off."""
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=loader.num_samples * config.epochs, initial=loader.num_samples * start_epoch, desc=description,
                unit="img", unit_scale=True, dynamic_ncols=True, leave=False)


def _show(bar, epoch: int, meter: _Meter, seconds: float, ranks: int = 1) -> None:
    """The bar's text; within an epoch of a distributed run, loss and accuracy are rank 0's so far
    and the speed is rank 0's times the number of ranks."""
    shown = meter.means()
    bar.set_postfix_str(
        f"epoch {epoch + 1} loss {shown['loss']:.3f} acc {shown.get('acc', float('nan')):.1f}% "
        f"{meter.samples * ranks / max(seconds, 1e-9):.0f} img/s"
    )


def _due(bar) -> bool:
    now = time.monotonic()
    if now - getattr(bar, "_coun_last", 0.0) > 0.5:
        bar._coun_last = now
        return True
    return False
