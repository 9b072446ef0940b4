"""What every unlearning method shares: its inputs, its result, and the registry of methods.

A method gets the Original model and the data it is allowed to see. Methods that declare
``uses_forget=False`` (CoUn, FT, Retrain) are handed a :class:`RetainData`, which has no forget
indices at all: they cannot read the forget set even by mistake. The others get a
:class:`ForgetData`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from coun_fast import distributed
from coun_fast.data.dataset import ImageDataset
from coun_fast.data.recipes import Normalization
from coun_fast.train import TrainConfig, TrainResult, forward_loss, plain_model


@dataclasses.dataclass(frozen=True)
class RetainData:
    """The training split, the retain indices into it, and the normalization of its images."""

    train: ImageDataset
    retain: np.ndarray
    normalization: Normalization


@dataclasses.dataclass(frozen=True)
class ForgetData(RetainData):
    """:class:`RetainData` plus the forget indices, for methods that use the forget set.

    ``test`` (the test split, or None) and ``forget_classes`` (the forgotten classes of a
    class-wise split, else empty) serve methods whose stopping rule reads test accuracy (CU).
    """

    forget: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    test: ImageDataset | None = None
    forget_classes: tuple[int, ...] = ()


LOOPS = ("retain", "forget", "mixed")
"""What a method's training loop iterates: retain samples only, forget samples only, or both."""


@dataclasses.dataclass
class Plan:
    """What a method trains.

    Attributes:
        model: already prepared, never the Original itself.
        objective: the per-batch loss (:class:`coun_fast.train.Objective`); None when the method
            does not train (then ``model`` is the result).
        indices: the training indices its loop iterates.
        loop: what those indices are (:data:`LOOPS`): ``"retain"``; ``"forget"`` (then the CL
            plug-in draws its own retain batches); ``"mixed"`` (retain and forget samples in one
            batch; then the objective has ``retain_rows(batch) -> bool tensor`` and the CL
            plug-in uses those rows only).
        prepared_images: images that went through a forward and a backward pass while the
            method prepared the model (SalUn's saliency pass, SSD's importances), for the cost;
            :func:`coun_fast.unlearn.unlearn` also adds the preparation's wall time.
    """

    model: nn.Module
    objective: object | None = None
    indices: np.ndarray | None = None
    loop: str = "retain"
    prepared_images: int = 0

    def __post_init__(self) -> None:
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(map(repr, LOOPS))}; got {self.loop!r}")
        if self.loop == "mixed" and self.objective is not None and not hasattr(self.objective, "retain_rows"):
            raise TypeError("a 'mixed' loop's objective must define retain_rows(batch)")


@dataclasses.dataclass
class UnlearnResult:
    """The unlearned model and how it was obtained: ``train`` holds the history and the cost
    (seconds and images, the method's preparation included; a method that does not train has an
    empty history and its preparation's cost)."""

    model: nn.Module
    method: str
    hparams: dict
    train: TrainResult


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered unlearning method.

    Attributes:
        name: its registry name (``coun``, ``ft``, ``retrain``...).
        plan: ``(original, data, config, hparams) -> Plan``; must not modify ``original``.
        uses_forget: whether it reads the forget set (then ``data`` is a :class:`ForgetData`).
        defaults: default hyperparameters.
        search: the paper's search range of each hyperparameter, as text (for --help and docs).
        summary: one line for listings.
        checks: per hyperparameter, ``(value, name) -> value``: the value checked (ValueError
            naming it) and normalized. :func:`hyperparameters` runs them before any work, so a
            bad value never costs a run.
        cl_refused: why ``NAME+cl`` does not exist, or None when it does (the method trains
            with one-view ``train`` batches the CL plug-in adds views to; SSD does not train,
            and CoUn has the term already).
        protocol: the optimiser protocol of the method's authors' code, as TrainConfig fields
            (empty when coun_fast knows none); :func:`method_config` applies it with
            ``protocol="authors"``. By default every method trains under the run's own
            configuration (the CoUn protocol, under which the CoUn paper re-ran its baselines).
        protocol_source: where ``protocol`` comes from (repository, file, lines).
        distributed: whether the method is correct under ``torchrun`` (several ranks), checked for
            each such method against one process: its loop and side batches are global batches
            whose rows the ranks share (:class:`BatchStream`, :func:`run_loader` with ``ranks``),
            its passes beside the loop step through DistributedDataParallel
            (:func:`extra_steps`), its sums over a data set are split by whole batches and summed
            over the ranks (:func:`this_rank_batches`), and whatever else it draws (random
            labels, a random teacher) is the same on every rank. Other methods are refused in a
            distributed run (:func:`check_distributed_method`).
        global_batches: hyperparameters that are batch sizes of passes whose batches the ranks
            share (global batches, as ``batch_size``): under ``torchrun`` they must be divisible
            by the number of ranks (:func:`check_global_batches`).
        mixes_rows: ``(hparams, dataset name) -> bool``: whether the method's loop mixes retain
            and forget rows in one batch (a "mixed" :class:`Plan`) for these checked
            hyperparameters on that data set; None when it never does. (The CL plug-in on such a
            loop does not run under ``torchrun`` yet: refused before any work.)
    """

    name: str
    plan: Callable[..., Plan]
    uses_forget: bool
    defaults: dict
    search: dict
    summary: str
    checks: dict = dataclasses.field(default_factory=dict)
    cl_refused: str | None = None
    protocol: dict = dataclasses.field(default_factory=dict)
    protocol_source: str = ""
    distributed: bool = False
    global_batches: tuple[str, ...] = ()
    mixes_rows: Callable[[dict, str], bool] | None = None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"an unlearning method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def hyperparameters(method: Method, given: dict) -> dict:
    """``method``'s defaults updated with ``given``, each value checked (``method.checks``); an
    unknown name is an error naming the known ones, a bad value one naming the hyperparameter."""
    unknown = sorted(set(given) - set(method.defaults))
    if unknown:
        known = ", ".join(sorted(method.defaults)) or "none"
        raise ValueError(f"method {method.name!r} has no hyperparameter {', '.join(unknown)}; it takes: {known}")
    values = {**method.defaults, **given}
    for name, check in method.checks.items():
        values[name] = check(values[name], name)
    return values


def distributed_method_names() -> list[str]:
    """The registered methods that run under ``torchrun`` (:attr:`Method.distributed`), sorted."""
    return sorted(m.name for m in METHODS.values() if m.distributed)


def check_distributed_method(method: Method, name: str) -> None:
    """ValueError, before any work, when a process group of several ranks is running (``torchrun``)
    and ``method`` is not one that runs correctly there (:attr:`Method.distributed`; its ``+cl`` form
    then runs too: the CL plug-in's term is gathered over the ranks)."""
    if not distributed.active():
        return
    if not method.distributed:
        supported = ", ".join(distributed_method_names())
        raise ValueError(f"method {name!r} is not yet supported under torchrun (several ranks); methods that are: "
                         f"{supported} (and their +cl forms); run {name!r} in one process")


def check_global_batches(method: Method, values: dict, ranks: int | None = None) -> None:
    """ValueError naming the hyperparameter when one of ``method.global_batches`` in ``values`` is
    not divisible by ``ranks`` (default: the running process group's size; nothing for one rank)."""
    ranks = distributed.world()[1] if ranks is None else ranks
    for name in method.global_batches if ranks > 1 else ():
        if values[name] % ranks:
            raise ValueError(f"{name} {values[name]} is a global batch (all ranks together) and must be divisible by "
                             f"the number of ranks K={ranks}; choose a multiple of {ranks}")


OPTML_PROTOCOL = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256,
                  "epochs": 10, "schedule": "constant"}
"""The unlearning defaults of the OPTML code (SalUn, l1-sparse): ``Classification/arg_parser.py`` of
OPTML-Group/Unlearn-Saliency (``--unlearn_lr 0.01``, ``--unlearn_epochs 10``, ``--batch_size 256``,
momentum 0.9, weight decay 5e-4; its MultiStepLR at epochs 91 and 136 never fires within 10 epochs)."""
OPTML_SOURCE = ("OPTML-Group/Unlearn-Saliency Classification/arg_parser.py L69-78, L116-122 (unlearn_lr 0.01, "
                "unlearn_epochs 10, batch_size 256, momentum 0.9, weight_decay 5e-4, decreasing_lr 91,136)")

PROTOCOLS = ("coun", "authors")
"""Optimiser protocols a method can run under: ``coun`` (the run's configuration as given: the CoUn
protocol of the experiment or preset) or ``authors`` (the method's :attr:`Method.protocol`)."""


def method_config(method: Method, config: TrainConfig, protocol: str = "coun", overrides: dict | None = None
                  ) -> TrainConfig:
    """The TrainConfig ``method`` runs with: ``config`` under ``protocol`` (:data:`PROTOCOLS`), then
    ``overrides`` (explicit settings, which win over the authors' protocol)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(map(repr, PROTOCOLS))}; got {protocol!r}")
    if protocol == "authors":
        if not method.protocol:
            having = ", ".join(sorted(m.name for m in METHODS.values() if m.protocol))
            raise ValueError(f"method {method.name!r} has no authors' protocol in coun_fast (methods with one: "
                             f"{having}); use protocol 'coun'")
        config = config.replace(**method.protocol)
    return config.replace(**(overrides or {}))


def augment_recipe(augment: object) -> str:
    """The recipe of a method's training batches: ``train`` (crop + flip) when ``augment`` is true,
    ``eval`` (normalisation only) when false; ValueError unless it is a bool."""
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be true or false; got {augment!r}")
    return "train" if augment else "eval"


def choice(value: object, name: str, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``, else a ValueError naming ``name``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def one_of(options: tuple[str, ...]):
    """A :attr:`Method.checks` entry: the value must be one of ``options``."""
    return lambda value, name: choice(value, name, options)


@torch.no_grad()
def accuracy_on(model: nn.Module, dataset: ImageDataset, indices: np.ndarray, normalization: Normalization,
                config: TrainConfig) -> float:
    """Top-1 accuracy (%) of ``model`` (put in eval mode) on ``indices`` of ``dataset`` without
    augmentation, in batches of ``config.batch_size`` on its device (a method's own stopping check)."""
    model.eval()
    correct = 0
    for batch in run_loader(dataset, indices, normalization, config, "eval", shuffle=False):
        correct += int((model(batch.inputs).argmax(1) == batch.labels).sum())
    return 100.0 * correct / len(indices)


def run_loader(train: ImageDataset, indices: np.ndarray, normalization: Normalization, config: TrainConfig,
               recipe: str = "train", *, shuffle: bool = True, seed_offset: int = 0, batch_size: int | None = None,
               ranks: tuple[int, int] = (0, 1)):
    """An :class:`~coun_fast.data.loader.AugmentedLoader` over ``indices`` of ``train`` with the run's
    batch size (unless ``batch_size`` is given), augmentation backend and device, seeded by
    ``config.seed + seed_offset``: the loader of a method's passes beside the training loop.
    ``ranks``: ``(rank, world size)`` to serve this rank's rows of every global batch."""
    from coun_fast.data.loader import AugmentedLoader
    from coun_fast.train import resolve_device

    return AugmentedLoader(
        train, recipe, batch_size=batch_size or config.batch_size, indices=indices, shuffle=shuffle,
        backend=config.augment_backend, device=resolve_device(config.device), seed=config.seed + seed_offset,
        normalization=normalization, ranks=ranks,
    )


class BatchStream:
    """Batches of some indices on demand, for objectives that draw a second kind of batch beside
    their loop's (a forget batch with each retain batch, retain views for the CL plug-in...).

    Iterates an :class:`~coun_fast.data.loader.AugmentedLoader` over ``indices`` of ``train``
    epoch after epoch (seeded by ``config.seed + seed_offset``, so independent of the loop's
    order), on the training device. Its position is not checkpointed: a resumed run restarts it
    at its first batch, so resuming such a method is not bit-identical to an uninterrupted run.
    Under ``torchrun`` the batch size is global: each rank draws its rows of every global batch
    (:class:`~coun_fast.data.loader.AugmentedLoader`'s ``ranks``), as the training loop does.
    """

    def __init__(self, train: ImageDataset, indices: np.ndarray, normalization: Normalization,
                 config: TrainConfig, recipe: str = "train", *, batch_size: int | None = None,
                 seed_offset: int = 1) -> None:
        if len(indices) == 0:
            raise ValueError("the stream's index set is empty: there is nothing to draw batches from")
        self.loader = run_loader(train, indices, normalization, config, recipe, seed_offset=seed_offset,
                                 batch_size=batch_size, ranks=distributed.world())
        self._batches = iter(())

    def next(self):
        """The next :class:`~coun_fast.data.loader.Batch` (a new epoch begins when one ends)."""
        batch = next(self._batches, None)
        if batch is None:
            self._batches = iter(self.loader)
            batch = next(self._batches)
        return batch


def this_rank_batches(loader, epoch: int = 0):
    """The batches of ``loader``'s ``epoch`` that this rank takes in a pass whose result is a sum
    over the batches (SalUn's saliency, SSD's importances): steps rank, rank + K, ... of a loader
    built for one process (``ranks=(0, 1)``), each the whole one-process batch, so a sum over them
    summed over the ranks (:func:`coun_fast.distributed.sum_tensors_over_ranks`) is the one-process
    sum; every batch outside a distributed job."""
    rank, size = distributed.world()
    return loader.iterate(epoch, start=rank, every=size)


def extra_steps(objective, model: nn.Module, optimizer: torch.optim.Optimizer, batches, loss: Callable) -> int:
    """One optimizer step per batch of ``batches`` minimising ``loss(model, batch)``, with
    ``objective``'s ``before_step(model)`` and ``after_step(model, optimizer)`` hooks when it has
    them (a pass a method runs beside its loop, from ``start_epoch``); returns the images trained.

    ``model`` is what :func:`coun_fast.train.fit` hands ``start_epoch``: under ``torchrun`` the
    run's DistributedDataParallel module, through which each loss is computed
    (:func:`coun_fast.train.forward_loss`), so the ranks' gradients are averaged as in the loop;
    ``batches`` must then be this rank's rows of global batches (:func:`run_loader` with
    ``ranks=distributed.world()``), so every rank takes the same number of steps. Counts this
    rank's images (:func:`coun_fast.train.fit` sums the counts over the ranks)."""
    before, after = getattr(objective, "before_step", None), getattr(objective, "after_step", None)
    plain = plain_model(model)
    images = 0
    for batch in batches:
        value = forward_loss(model, loss, batch)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if before is not None:
            before(plain)
        optimizer.step()
        if after is not None:
            after(plain, optimizer)
        images += len(batch.labels)
    return images


def forget_stream(data: "ForgetData", config: TrainConfig, recipe: str = "train", *,
                  batch_size: int | None = None, seed_offset: int = 1) -> BatchStream:
    """A :class:`BatchStream` over the forget set of ``data``."""
    if len(data.forget) == 0:
        raise ValueError("the forget set is empty: there is nothing to stream")
    return BatchStream(data.train, data.forget, data.normalization, config, recipe,
                       batch_size=batch_size, seed_offset=seed_offset)


def is_member(indices: Tensor, members: np.ndarray) -> Tensor:
    """Boolean tensor: which of ``indices`` (a batch's sample indices) are in ``members``."""
    return torch.isin(indices, torch.tensor(np.array(members, dtype=np.int64), device=indices.device))


def non_negative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def fraction(value: object, name: str) -> float:
    """``value`` as a float in (0, 1], or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1]; got {value!r}")
    return float(value)


def boolean(value: object, name: str) -> bool:
    """``value`` when it is True or False, or a ValueError naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}")
    return value


def at_least_one(value: object, name: str) -> int:
    """:func:`whole` with a minimum of 1."""
    return whole(value, name, minimum=1)


def whole(value: object, name: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
        raise ValueError(f"{name} must be a whole number >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}; got {value!r}")
    return int(value)


__all__ = [
    "LOOPS", "OPTML_PROTOCOL", "OPTML_SOURCE", "PROTOCOLS", "BatchStream", "ForgetData", "METHODS", "Method", "Plan",
    "RetainData", "TrainConfig", "UnlearnResult", "accuracy_on", "at_least_one", "augment_recipe", "boolean", "choice",
    "check_distributed_method", "check_global_batches", "distributed_method_names", "extra_steps", "forget_stream",
    "fraction", "get_method", "hyperparameters", "is_member", "method_config", "non_negative", "one_of", "positive",
    "register", "run_loader", "this_rank_batches", "whole",
]
