"""RL (random labels): relabel the forget set at random and fine-tune on forget + retain.

Starting from a copy of the Original, minimise the cross-entropy where every forget sample's label
is replaced by one drawn uniformly from the C classes (the true label included, as in the authors'
code), fresh at every step:

    L = mean_i CE(h(f(x_i)), y~_i),   y~_i ~ U{0..C-1} if i in D_f else y_i

Two variants, as in the OPTML code (OPTML-Group/Unlearn-Saliency, ``Classification/unlearn/RL.py``),
which picks one by data set:

* ``forget_then_retain`` (their CIFAR-10/SVHN branch, RL.py L109-176): every epoch, one shuffled
  pass over D_f with random labels (a step per batch), then one shuffled pass over D_r with the
  true labels (the training loop itself);
* ``union`` (their CIFAR-100/TinyImageNet branch, RL.py L51-107): one shuffled pass over the union
  D_f ∪ D_r, batches mixing both.

``variant="auto"`` (default) takes ``forget_then_retain`` for a data set named ``cifar10`` or
``svhn`` and ``union`` for every other one (their code has no branch for other data sets). Both use
the ``train`` recipe (crop + flip), the run's batch size and optimiser. The draws use torch's global
generator on the batch's device, which :func:`coun_fast.train.fit` seeds at every epoch, so runs are
reproducible. ``retain_rows`` tells the CL plug-in which rows are retain samples.

Hyperparameters: ``variant`` (above). Optimiser: the run's (CoUn protocol: SGD, 50 epochs, cosine to
1e-4, lr in [0.01, 0.1]); ``protocol="authors"`` gives the OPTML defaults (``arg_parser.py``: SGD lr
0.01, momentum 0.9, weight decay 5e-4, batch 256, 10 epochs; their multistep decay at epochs 91 and
136 never fires in 10 epochs). :class:`RandomLabelObjective` is also SalUn's objective.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import AugmentedLoader, Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import (OPTML_PROTOCOL, OPTML_SOURCE, ForgetData, Method, Plan, choice, extra_steps,
                                    is_member, one_of, register, run_loader, whole)

VARIANTS = ("auto", "forget_then_retain", "union")
FORGET_FIRST_DATASETS = ("cifar10", "svhn")
"""Data sets whose RL/SalUn run the ``forget_then_retain`` variant under ``variant="auto"``."""

class RandomLabelObjective:
    """Cross-entropy with forget rows relabelled uniformly at random over ``num_classes``.

    With a ``forget_loader`` (the ``forget_then_retain`` variant) each epoch first runs a pass of
    steps over it, every label drawn at random (:meth:`start_epoch`); the loop then holds retain
    samples only. Parts: ``ce`` (on the labels trained on) and ``logits`` (accuracy is read against
    the true labels).
    """

    recipe = "train"
    extra_forward_views = 0

    def __init__(self, forget: np.ndarray, num_classes: int, forget_loader: AugmentedLoader | None = None) -> None:
        self.forget = np.array(forget, dtype=np.int64)  # a writable copy (torch warns on read-only arrays)
        self.num_classes = whole(num_classes, "num_classes", minimum=2)
        self.forget_loader = forget_loader
        self.side_trained_images = 0

    def retain_rows(self, batch: Batch) -> Tensor:
        """Boolean (N,): which rows of ``batch`` are retain samples."""
        return ~is_member(batch.indices, self.forget)

    def random_labels(self, labels: Tensor) -> Tensor:
        return torch.randint(0, self.num_classes, labels.shape, device=labels.device, dtype=labels.dtype)

    def relabel(self, batch: Batch) -> Tensor:
        """The labels to train on: true labels on retain rows, fresh uniform draws on forget rows."""
        return torch.where(self.retain_rows(batch), batch.labels, self.random_labels(batch.labels))

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model.forward_head(model.forward_features(batch.inputs))
        ce = F.cross_entropy(logits, self.relabel(batch))
        return ce, {"ce": ce.detach(), "logits": logits.detach()}

    def forget_pass_loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """CE of a forget batch against labels drawn uniformly at random."""
        return F.cross_entropy(model(batch.inputs), self.random_labels(batch.labels))

    def start_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        if self.forget_loader is not None:
            self.side_trained_images += extra_steps(self, model, optimizer, self.forget_loader.iterate(epoch),
                                                    self.forget_pass_loss)


def resolve_variant(variant: object, dataset_name: str) -> str:
    """``variant`` with ``auto`` resolved for the data set named ``dataset_name``."""
    variant = choice(variant, "variant", VARIANTS)
    if variant == "auto":
        return "forget_then_retain" if dataset_name.lower() in FORGET_FIRST_DATASETS else "union"
    return variant


def random_label_plan(model: nn.Module, data: ForgetData, config: TrainConfig, variant: object, objective_class,
                      **objective_args) -> Plan:
    """The plan of RL or SalUn (``objective_class``) from ``model`` in the resolved ``variant``."""
    if len(data.forget) == 0:
        raise ValueError("rl and salun need a non-empty forget set")
    if resolve_variant(variant, data.train.name) == "union":
        objective = objective_class(data.forget, data.train.num_classes, **objective_args)
        return Plan(model, objective, union_indices(data), loop="mixed")
    loader = run_loader(data.train, data.forget, data.normalization, config, "train", seed_offset=5)
    objective = objective_class(data.forget, data.train.num_classes, forget_loader=loader, **objective_args)
    return Plan(model, objective, np.asarray(data.retain), loop="retain")


def union_indices(data: ForgetData) -> np.ndarray:
    """The sorted union of the retain and forget indices (the loop of the ``union`` variant)."""
    return np.union1d(data.retain, data.forget).astype(np.int64)


def plan_rl(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """RL from a copy of ``original`` (left untouched); see the module docstring."""
    return random_label_plan(copy.deepcopy(original), data, config, hparams["variant"], RandomLabelObjective)


register(Method(
    name="rl", plan=plan_rl, uses_forget=True, defaults={"variant": "auto"},
    search={"variant": "auto (by data set, as the authors)", "lr": "[0.01, 0.1]"},
    summary="RL: fine-tune on forget (labels drawn at random each step) and retain; forget pass first on CIFAR-10",
    checks={"variant": one_of(VARIANTS)},
    protocol=OPTML_PROTOCOL, protocol_source=OPTML_SOURCE,
))
