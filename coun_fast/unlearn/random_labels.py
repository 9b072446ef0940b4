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
the ``train`` recipe (crop + flip), the run's batch size and optimiser. ``retain_rows`` tells the CL
plug-in which rows are retain samples.

The draws: at every step (each call of the objective, each step of the forget pass) the objective
draws one fresh label for every sample of the forget set, from a generator of its own on the
batch's device that :meth:`RandomLabelObjective.start_epoch` seeds with (seed, epoch), and a forget
row takes the label drawn for its sample. So the labels are a function of (seed, epoch, step,
sample) alone: runs are reproducible and resume exactly, and under ``torchrun`` every rank draws
the same table at every step, so the K ranks' rows of a global batch carry the labels one process
gives them (the tests check the weights against one process). The forget pass of
``forget_then_retain`` takes each rank's rows of global forget batches and steps through
DistributedDataParallel (:func:`coun_fast.unlearn.base.extra_steps`), as the loop does.

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

from coun_fast import distributed
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
    samples only. The draws follow from ``seed`` (see the module docstring). Parts: ``ce`` (on the
    labels trained on) and ``logits`` (accuracy is read against the true labels).
    """

    recipe = "train"
    extra_forward_views = 0
    start_epoch_synchronized = True  # the draws are the same on every rank; the forget pass steps through DDP

    def __init__(self, forget: np.ndarray, num_classes: int, forget_loader: AugmentedLoader | None = None,
                 seed: int = 0) -> None:
        self.forget = np.unique(np.asarray(forget, dtype=np.int64))  # sorted: a row's place in the label table
        self.num_classes = whole(num_classes, "num_classes", minimum=2)
        self.forget_loader = forget_loader
        self.seed = whole(seed, "seed")
        self.side_trained_images = 0
        self._generator: torch.Generator | None = None
        self._epoch = 0
        self._sorted: Tensor | None = None

    def retain_rows(self, batch: Batch) -> Tensor:
        """Boolean (N,): which rows of ``batch`` are retain samples."""
        return ~is_member(batch.indices, self.forget)

    def _table(self, device: torch.device) -> Tensor:
        """A fresh label for every forget sample (in sorted index order), from the objective's generator."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            seed = np.random.SeedSequence([self.seed, self._epoch, 0x4A8E1]).generate_state(1)[0]
            self._generator.manual_seed(int(seed))
            self._sorted = torch.from_numpy(self.forget).to(device)
        return torch.randint(0, self.num_classes, (len(self.forget),), generator=self._generator, device=device)

    def random_labels(self, indices: Tensor) -> Tensor:
        """Labels drawn for the forget samples ``indices`` (one table drawn per call: one step)."""
        table = self._table(indices.device)
        return table[torch.searchsorted(self._sorted, indices).clamp_(max=len(self.forget) - 1)]

    def relabel(self, batch: Batch) -> Tensor:
        """The labels to train on: true labels on retain rows, fresh uniform draws on forget rows."""
        drawn = self.random_labels(batch.indices).to(batch.labels.dtype)
        return torch.where(self.retain_rows(batch), batch.labels, drawn)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model.forward_head(model.forward_features(batch.inputs))
        ce = F.cross_entropy(logits, self.relabel(batch))
        return ce, {"ce": ce.detach(), "logits": logits.detach()}

    def forget_pass_loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """CE of a forget batch against labels drawn uniformly at random."""
        return F.cross_entropy(model(batch.inputs), self.random_labels(batch.indices).to(batch.labels.dtype))

    def start_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Seed the draws of ``epoch``; run the forget pass when there is one."""
        self._epoch, self._generator = epoch, None  # seeded again (on the batches' device) at the first draw
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
        objective = objective_class(data.forget, data.train.num_classes, seed=config.seed, **objective_args)
        return Plan(model, objective, union_indices(data), loop="mixed")
    loader = run_loader(data.train, data.forget, data.normalization, config, "train", seed_offset=5,
                        ranks=distributed.world())
    objective = objective_class(data.forget, data.train.num_classes, forget_loader=loader, seed=config.seed,
                                **objective_args)
    return Plan(model, objective, np.asarray(data.retain), loop="retain")


def mixes_rows(hparams: dict, dataset_name: str) -> bool:
    """Whether RL or SalUn with ``hparams`` runs the ``union`` variant (mixed batches) on ``dataset_name``."""
    return resolve_variant(hparams["variant"], dataset_name) == "union"


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
    protocol=OPTML_PROTOCOL, protocol_source=OPTML_SOURCE, distributed=True, mixes_rows=mixes_rows,
))
