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
from torch import nn

from coun_fast.data.dataset import ImageDataset
from coun_fast.data.recipes import Normalization
from coun_fast.train import TrainConfig, TrainResult


@dataclasses.dataclass(frozen=True)
class RetainData:
    """The training split, the retain indices into it, and the normalization of its images."""

    train: ImageDataset
    retain: np.ndarray
    normalization: Normalization


@dataclasses.dataclass(frozen=True)
class ForgetData(RetainData):
    """:class:`RetainData` plus the forget indices, for methods that use the forget set."""

    forget: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


@dataclasses.dataclass
class Plan:
    """What a method trains: ``model`` (already prepared, never the Original itself), the per-batch
    ``objective`` and the training ``indices`` it iterates (None: the method does not train; the
    model is the result)."""

    model: nn.Module
    objective: object | None = None
    indices: np.ndarray | None = None


@dataclasses.dataclass
class UnlearnResult:
    """The unlearned model and how it was obtained."""

    model: nn.Module
    method: str
    hparams: dict
    train: TrainResult | None


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
    """

    name: str
    plan: Callable[..., Plan]
    uses_forget: bool
    defaults: dict
    search: dict
    summary: str


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
    """``method``'s defaults updated with ``given``; an unknown name is an error naming the known ones."""
    unknown = sorted(set(given) - set(method.defaults))
    if unknown:
        known = ", ".join(sorted(method.defaults)) or "none"
        raise ValueError(f"method {method.name!r} has no hyperparameter {', '.join(unknown)}; it takes: {known}")
    return {**method.defaults, **given}


class ForgetStream:
    """Forget batches on demand, for objectives that pair each retain batch with a forget batch.

    Iterates an :class:`~coun_fast.data.loader.AugmentedLoader` over ``data.forget`` epoch after
    epoch (seeded by ``config.seed + seed_offset``, so independent of the retain order), on the
    training device. Its position is not checkpointed: a resumed run restarts it at its first
    batch, so resuming such a method is not bit-identical to an uninterrupted run.
    """

    def __init__(self, data: "ForgetData", config: TrainConfig, recipe: str = "train", *,
                 batch_size: int | None = None, seed_offset: int = 1) -> None:
        from coun_fast.data.loader import AugmentedLoader
        from coun_fast.train import resolve_device

        if len(data.forget) == 0:
            raise ValueError("the forget set is empty: there is nothing to stream")
        self.loader = AugmentedLoader(
            data.train, recipe, batch_size=batch_size or config.batch_size, indices=data.forget,
            backend=config.augment_backend, device=resolve_device(config.device), seed=config.seed + seed_offset,
            normalization=data.normalization,
        )
        self._batches = iter(())

    def next(self):
        """The next forget :class:`~coun_fast.data.loader.Batch` (a new epoch begins when one ends)."""
        batch = next(self._batches, None)
        if batch is None:
            self._batches = iter(self.loader)
            batch = next(self._batches)
        return batch


def non_negative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


__all__ = [
    "ForgetData", "ForgetStream", "METHODS", "Method", "Plan", "RetainData", "TrainConfig", "UnlearnResult",
    "get_method", "hyperparameters", "non_negative", "positive", "register",
]
