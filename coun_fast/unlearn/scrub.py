"""SCRUB (Kurmanji, Triantafillou, Hayes, Triantafillou; NeurIPS 2023).

Teacher = a frozen copy of the Original theta0 (eval mode); the student starts at theta0. Every
epoch e (0-based) runs, with the run's one SGD optimizer:

* if e < ``msteps``, a max-step pass: one shuffled pass over the forget set (``train`` recipe,
  batches of ``config.batch_size``) with a step per batch minimising ``-KL_T(teacher || student)``
  (i.e. moving the student away from the teacher on forget data);
* then the min-step pass, the training loop itself, over the retain set, minimising

      gamma * CE(student(x), y) + alpha * KL_T(teacher(x) || student(x)),

where ``KL_T`` is :func:`coun_fast.unlearn.distill.distill_kl` (temperature T, T^2 scaling, as
RepDistiller's DistillKL). Cost: each retain sample adds one teacher forward
(``extra_forward_views = 1``); a max-step pass trains on each forget image
(``side_trained_images``) and runs the teacher on it (``side_forward_images``).

Hyperparameters and defaults: ``temperature`` T = 1 (the CoUn protocol fixes T = 1), ``msteps`` = 2
(CoUn's range [1, 10]; the SCRUB notebooks use 2 at large scale, 3 at small scale), ``gamma`` = 1
and ``alpha`` = 0.5 (the small-scale notebook's values; CoUn's range for both [0.1, 3]; large scale
uses gamma 0.99, alpha 0.001, T 4). The reference max step uses the forget batch size 32 or 64; here
forget batches have ``config.batch_size`` samples. SCRUB-S's smoothing term is not implemented.
Sources: /work/shared/research/unlearning_anchors.md §1.3-1.4 and §3; coun_paper.md §5.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import AugmentedLoader, Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import ForgetData, Method, Plan, non_negative, positive, register, run_loader, whole
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
    recipe: str = "train"
    extra_forward_views: int = 1
    side_trained_images: int = 0
    side_forward_images: int = 0

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
        for batch in self.forget_loader.iterate(epoch):
            loss = self.max_step_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.side_trained_images += len(batch.labels)
            self.side_forward_images += len(batch.labels)


def plan_scrub(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """SCRUB from a copy of ``original`` (left untouched); see the module docstring."""
    msteps = hparams["msteps"]
    loader = None
    if msteps > 0:
        if len(data.forget) == 0:
            raise ValueError("scrub's max steps (msteps > 0) need a non-empty forget set")
        loader = run_loader(data.train, data.forget, data.normalization, config, "train", seed_offset=3)
    objective = ScrubObjective(frozen_copy(original, config), loader, hparams["temperature"], msteps,
                               hparams["gamma"], hparams["alpha"])
    return Plan(copy.deepcopy(original), objective, data.retain, loop="retain")


register(Method(
    name="scrub", plan=plan_scrub, uses_forget=True,
    defaults={"temperature": 1.0, "msteps": 2, "gamma": 1.0, "alpha": 0.5},
    search={"temperature": "1 (fixed)", "msteps": "[1, 10]", "gamma": "[0.1, 3]", "alpha": "[0.1, 3]",
            "lr": "[0.01, 0.1]"},
    summary="SCRUB: max-steps away from the Original on the forget set, CE + KL to it on the retain set (NeurIPS 2023)",
    checks={"temperature": positive, "msteps": whole, "gamma": non_negative, "alpha": non_negative},
))
