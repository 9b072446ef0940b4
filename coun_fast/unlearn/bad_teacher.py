"""Bad Teacher ("incompetent teacher"; Chundawat et al., AAAI 2023).

As the authors' code (vikram2000b/bad-teaching-unlearning, ``unlearn.py``): the student starts at
the Original weights theta0 and trains in train mode. Two frozen teachers in eval mode: the
competent one is theta0, the incompetent one a freshly initialised model of the same architecture
(``rebuild(original)`` under ``torch.manual_seed(config.seed)``). The loop runs over the union of the
forget set and a random ``retain_fraction`` of the retain set (drawn once, seeded by
``config.seed``), shuffled together ("mixed" batches; ``blindspot_unlearner``, L67-88). With
t_i the logits of the incompetent teacher on a forget row and of the competent one on a retain row,
p_i = softmax(t_i / T) and q_i = log_softmax(s_i / T) of the student's logits s_i:

* ``kl_reduction="mean"`` (default; their ``UnlearnerLoss``, L9-19: ``F.kl_div(q, p)`` with torch's
  default element-wise mean):  L = (1 / (N C)) sum_i sum_c p_ic (log p_ic - q_ic);
* ``kl_reduction="batchmean_t2"``: Hinton's scaling, L = (T^2 / N) sum_i KL(p_i || softmax(s_i / T))
  (:func:`coun_fast.unlearn.distill.distill_kl`): C T^2 times the default, so the gradient's size does
  not depend on the number of classes or on T.

Each sample passes through exactly one teacher (the one its row needs), so
``extra_forward_views = 1``. The batches are not augmented by default (their data sets apply no
augmentation: ``dataset.py`` L6-16; ``augment=True`` gives the ``train`` recipe).

Hyperparameters: ``temperature`` T (default 1, theirs and the CoUn protocol's), ``retain_fraction``
(default 0.3: their notebook's and the SSD repository's 30 % retain subset), ``kl_reduction``,
``augment``. Optimiser: the run's (the CoUn paper re-ran Bad Teacher under its protocol: SGD, 50
epochs, cosine, lr in [0.01, 0.1]); ``protocol="authors"`` gives theirs (notebook
``CIFARSuper20_Rocket_Unlearn.ipynb``, cell 15: Adam at lr 1e-4, 1 epoch, batch 256).

Under ``torchrun`` the loss is a mean over the rows of the batch and each teacher acts on each row
alone (eval mode), so the K ranks' rows of a global batch give the one-process step; every rank
distils rank 0's incompetent teacher (broadcast once).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from coun_fast import distributed
from coun_fast.data.loader import Batch
from coun_fast.models import rebuild
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import (ForgetData, Method, Plan, augment_recipe, boolean, choice, fraction, is_member,
                                    one_of, positive, register)
from coun_fast.unlearn.distill import distill_kl, freeze, frozen_copy

KL_REDUCTIONS = ("mean", "batchmean_t2")


def bad_teacher_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, reduction: str = "mean"
                     ) -> tuple[Tensor, Tensor]:
    """``(loss, rows)``: the loss over the batch (see the module docstring for ``reduction``) and
    its per-row contributions (``loss == rows.sum()``), in float32 at least."""
    reduction = choice(reduction, "kl_reduction", KL_REDUCTIONS)
    rows = distill_kl(student_logits, teacher_logits, temperature, reduction="none") / len(student_logits)
    if reduction == "mean":
        rows = rows / (temperature**2 * student_logits.shape[1])
    return rows.sum(), rows


@dataclasses.dataclass
class BadTeacherObjective:
    """KL to the incompetent teacher on forget rows and to the competent one on retain rows."""

    competent: nn.Module
    incompetent: nn.Module
    forget: np.ndarray
    temperature: float = 1.0
    kl_reduction: str = "mean"
    recipe: str = "eval"
    extra_forward_views: int = 1

    def __post_init__(self) -> None:
        self.temperature = positive(self.temperature, "temperature")
        self.kl_reduction = choice(self.kl_reduction, "kl_reduction", KL_REDUCTIONS)

    def retain_rows(self, batch: Batch) -> Tensor:
        return ~is_member(batch.indices, self.forget)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch.inputs
        logits = model.forward_head(model.forward_features(x))
        retain = self.retain_rows(batch)
        with torch.no_grad():
            teacher = torch.empty_like(logits)
            if retain.any():
                teacher[retain] = self.competent(x[retain]).to(logits.dtype)
            if (~retain).any():
                teacher[~retain] = self.incompetent(x[~retain]).to(logits.dtype)
        loss, rows = bad_teacher_loss(logits, teacher, self.temperature, self.kl_reduction)
        rows_kept = rows.detach() * len(rows)
        parts = {  # mean contribution of each kind of row in the batch (0 where the batch has none)
            "kl_forget": (rows_kept * ~retain).sum() / (~retain).sum().clamp(min=1),
            "kl_retain": (rows_kept * retain).sum() / retain.sum().clamp(min=1),
            "logits": logits.detach(),
        }
        return loss, parts


def retain_subset(retain: np.ndarray, retain_fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``retain_fraction`` of ``retain`` (at least one sample), in sorted order."""
    size = max(1, int(round(fraction(retain_fraction, "retain_fraction") * len(retain))))
    return np.sort(np.random.default_rng([seed, 0xBAD7]).choice(retain, size=size, replace=False))


def plan_bad_teacher(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """Bad Teacher from a copy of ``original`` (left untouched); see the module docstring."""
    temperature = hparams["temperature"]
    recipe = augment_recipe(hparams["augment"])
    subset = retain_subset(np.asarray(data.retain), hparams["retain_fraction"], config.seed)
    if len(data.forget) == 0:
        raise ValueError("bad_teacher needs a non-empty forget set")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        incompetent = distributed.broadcast_module(freeze(rebuild(original), config))
    objective = BadTeacherObjective(frozen_copy(original, config), incompetent, np.array(data.forget), temperature,
                                    hparams["kl_reduction"], recipe)
    indices = np.concatenate([np.asarray(data.forget), subset])
    return Plan(copy.deepcopy(original), objective, indices, loop="mixed")


register(Method(
    name="bad_teacher", plan=plan_bad_teacher, uses_forget=True,
    defaults={"temperature": 1.0, "retain_fraction": 0.3, "kl_reduction": "mean", "augment": False},
    search={"temperature": "1 (fixed)", "retain_fraction": "0.3 (authors)", "kl_reduction": "mean (authors)",
            "augment": "false (authors)", "lr": "[0.01, 0.1]"},
    summary="Bad Teacher: distil the Original on retain rows and a random network on forget rows (AAAI 2023)",
    checks={"temperature": positive, "retain_fraction": fraction, "kl_reduction": one_of(KL_REDUCTIONS),
            "augment": boolean},
    protocol={"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "epochs": 1, "batch_size": 256,
              "schedule": "constant"},
    distributed=True, mixes_rows=lambda hparams, dataset_name: True,
    protocol_source="vikram2000b/bad-teaching-unlearning CIFARSuper20_Rocket_Unlearn.ipynb cell 15 "
                    "(torch.optim.Adam(lr=0.0001), epochs=1, batch_size=256)",
))
