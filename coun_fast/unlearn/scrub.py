"""SCRUB (Kurmanji, Triantafillou, Hayes, Triantafillou; NeurIPS 2023).

As the authors' code (meghdadk/SCRUB: ``thirdparty/repdistiller/helper/loops.py`` ``train_distill``
L137-266 and the notebooks' unlearning loop): teacher = a frozen copy of the Original theta0 (eval
mode); the student starts at theta0. Every epoch e (0-based) runs, with the run's one optimizer:

* if e < ``msteps``, a max-step pass: one shuffled pass over the forget set in batches of
  ``forget_batch_size`` with a step per batch minimising ``-KL_T(teacher || student)`` (moving the
  student away from the teacher on forget data);
* then the min-step pass, the training loop itself, over the retain set in the run's batches,
  minimising

      gamma * CE(student(x), y) + alpha * KL_T(teacher(x) || student(x)),

where ``KL_T`` is :func:`coun_fast.unlearn.distill.distill_kl` (temperature T, T^2 scaling: their
``DistillKL``). Neither pass is augmented by default (their notebooks load every split with
``augment=False``); ``augment=True`` gives both the ``train`` recipe. Cost: each retain sample adds
one teacher forward (``extra_forward_views = 1``); a max-step pass trains on each forget image
(``side_trained_images``) and runs the teacher on it (``side_forward_images``).

Hyperparameters and defaults: ``temperature`` T = 1 (the CoUn protocol fixes T = 1), ``msteps`` = 2
(CoUn's range [1, 10]), ``gamma`` = 1 and ``alpha`` = 0.5 (CoUn's range for both [0.1, 3]; the
small-scale and ResNet-50/CIFAR-100 notebooks' values), ``forget_batch_size`` = 64 (the forget batch
of ``small_scale_unlearning.ipynb`` and ``resnet50_cifar100.ipynb``; ``large_scale_unlearning.ipynb``
declares ``del_batch_size = 32`` but builds its forget loader with 512), ``augment`` = false.
Optimiser: the run's (the CoUn paper re-ran SCRUB under its protocol: SGD, 50 epochs, cosine to
1e-4); ``protocol="authors"`` gives the large-scale CIFAR notebook's (cell 32: SGD lr 5e-4, momentum
0.9, weight decay 5e-4, 3 epochs, retain batches of 256, step decay x0.1 at epochs 3, 5 and 9,
which does not fire within the 3 epochs). That notebook's gamma 0.99, alpha 0.001, T 4 are
hyperparameters to set as well. SCRUB-S's smoothing term is not implemented.

Under ``torchrun`` both passes run as one process's: ``forget_batch_size`` is a global batch (K
ranks take its rows, so it must be divisible by K) and the max steps go through
DistributedDataParallel like the loop's (:func:`coun_fast.unlearn.base.extra_steps`); the teacher,
the Original in eval mode, acts on each row alone.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast import distributed
from coun_fast.data.loader import AugmentedLoader, Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import (ForgetData, Method, Plan, at_least_one, augment_recipe, boolean, extra_steps,
                                    non_negative, positive, register, run_loader, whole)
from coun_fast.unlearn.distill import distill_kl, frozen_copy


@dataclasses.dataclass
class ScrubObjective:
    """SCRUB's min step as the loop's loss; its max steps in :meth:`start_epoch`."""

    teacher: nn.Module
    forget_loader: AugmentedLoader | None
    temperature: float = 1.0
    msteps: int = 2
    gamma: float = 1.0
    alpha: float = 0.5
    recipe: str = "eval"
    extra_forward_views: int = 1
    side_trained_images: int = 0
    side_forward_images: int = 0
    start_epoch_synchronized = True  # the max steps take each rank's rows of global forget batches, through DDP

    def __post_init__(self) -> None:
        self.temperature = positive(self.temperature, "temperature")
        self.msteps = whole(self.msteps, "msteps")
        self.gamma = non_negative(self.gamma, "gamma")
        self.alpha = non_negative(self.alpha, "alpha")

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model.forward_head(model.forward_features(batch.inputs))
        with torch.no_grad():
            teacher = self.teacher(batch.inputs)
        ce = F.cross_entropy(logits, batch.labels)
        kl = distill_kl(logits, teacher, self.temperature)
        return self.gamma * ce + self.alpha * kl, {"ce": ce.detach(), "kl": kl.detach(), "logits": logits.detach()}

    def max_step_loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """``-KL_T(teacher || student)`` on a forget batch (minimised by the max steps)."""
        logits = model.forward_head(model.forward_features(batch.inputs))
        with torch.no_grad():
            teacher = self.teacher(batch.inputs)
        return -distill_kl(logits, teacher, self.temperature)

    def start_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        if epoch >= self.msteps or self.forget_loader is None:
            return
        images = extra_steps(self, model, optimizer, self.forget_loader.iterate(epoch), self.max_step_loss)
        self.side_trained_images += images
        self.side_forward_images += images


def plan_scrub(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """SCRUB from a copy of ``original`` (left untouched); see the module docstring."""
    msteps = hparams["msteps"]
    forget_batch_size = hparams["forget_batch_size"]
    recipe = augment_recipe(hparams["augment"])
    loader = None
    if msteps > 0:
        if len(data.forget) == 0:
            raise ValueError("scrub's max steps (msteps > 0) need a non-empty forget set")
        loader = run_loader(data.train, data.forget, data.normalization, config, recipe, seed_offset=3,
                            batch_size=forget_batch_size, ranks=distributed.world())
    objective = ScrubObjective(frozen_copy(original, config), loader, hparams["temperature"], msteps,
                               hparams["gamma"], hparams["alpha"], recipe)
    return Plan(copy.deepcopy(original), objective, data.retain, loop="retain")


register(Method(
    name="scrub", plan=plan_scrub, uses_forget=True,
    defaults={"temperature": 1.0, "msteps": 2, "gamma": 1.0, "alpha": 0.5, "forget_batch_size": 64, "augment": False},
    search={"temperature": "1 (fixed)", "msteps": "[1, 10]", "gamma": "[0.1, 3]", "alpha": "[0.1, 3]",
            "forget_batch_size": "64 (authors)", "augment": "false (authors)", "lr": "[0.01, 0.1]"},
    summary="SCRUB: max-steps away from the Original on the forget set, CE + KL to it on the retain set (NeurIPS 2023)",
    checks={"temperature": positive, "msteps": whole, "gamma": non_negative, "alpha": non_negative,
            "forget_batch_size": at_least_one, "augment": boolean},
    distributed=True, global_batches=("forget_batch_size",),
    protocol={"optimizer": "sgd", "lr": 5e-4, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 3, "batch_size": 256,
              "schedule": "multistep", "milestones": (1.0,), "gamma": 0.1},
    protocol_source="meghdadk/SCRUB large_scale_unlearning.ipynb cells 28 and 32 (sgda_learning_rate 0.0005, "
                    "momentum 0.9, weight decay 5e-4, sgda_epochs 3, lr_decay_epochs [3, 5, 9], retain loader "
                    "batch 256)",
))
