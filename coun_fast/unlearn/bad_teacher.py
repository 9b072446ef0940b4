"""Bad Teacher ("incompetent teacher"; Chundawat et al., AAAI 2023).

The student starts at the Original weights theta0. Two frozen teachers in eval mode: the competent
one is theta0, the incompetent one a freshly initialised model of the same architecture
(``rebuild(original)`` under ``torch.manual_seed(config.seed)``). The loop runs over the union of
the forget set and a random ``retain_fraction`` of the retain set (drawn once, seeded by
``config.seed``), shuffled together ("mixed" batches). Per row,

    L_i = T^2 * KL( softmax(t_i / T) || softmax(s_i / T) ),
    t_i = incompetent teacher's logits if i is a forget sample, else the competent teacher's,

averaged over the batch (:func:`coun_fast.unlearn.distill.distill_kl`). Each sample passes through
exactly one teacher (the one its row needs), so ``extra_forward_views = 1``.

Hyperparameters: ``temperature`` T (default 1; the CoUn protocol fixes T = 1) and
``retain_fraction`` (default 0.3, the SSD repository's 30 % retain subset). The reference code
(vikram2000b/bad-teaching-unlearning, ``UnlearnerLoss``) uses ``F.kl_div``'s default element-wise
mean, i.e. our per-row mean divided by the number of classes: a constant factor the learning rate
absorbs. Anchors: Adam lr 1e-4, 1 epoch, batch 256 (SSD repo); under the CoUn protocol SGD, 50
epochs, lr in [0.01, 0.1], cosine. Sources: /work/shared/research/unlearning_anchors.md §1.5-1.6,
§3; coun_paper.md §5.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.models import rebuild
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import ForgetData, Method, Plan, fraction, is_member, positive, register
from coun_fast.unlearn.distill import distill_kl, freeze, frozen_copy


@dataclasses.dataclass
class BadTeacherObjective:
    """KL to the incompetent teacher on forget rows and to the competent one on retain rows."""

    competent: nn.Module
    incompetent: nn.Module
    forget: np.ndarray
    temperature: float = 1.0
    recipe: str = "train"
    extra_forward_views: int = 1

    def __post_init__(self) -> None:
        self.temperature = positive(self.temperature, "temperature")

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
        rows = distill_kl(logits, teacher, self.temperature, reduction="none")
        rows_kept = rows.detach()
        parts = {  # mean KL of each kind of row in the batch (0 where the batch has none)
            "kl_forget": (rows_kept * ~retain).sum() / (~retain).sum().clamp(min=1),
            "kl_retain": (rows_kept * retain).sum() / retain.sum().clamp(min=1),
            "logits": logits.detach(),
        }
        return rows.mean(), parts


def retain_subset(retain: np.ndarray, retain_fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``retain_fraction`` of ``retain`` (at least one sample), in sorted order."""
    size = max(1, int(round(fraction(retain_fraction, "retain_fraction") * len(retain))))
    return np.sort(np.random.default_rng([seed, 0xBAD7]).choice(retain, size=size, replace=False))


def plan_bad_teacher(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """Bad Teacher from a copy of ``original`` (left untouched); see the module docstring."""
    temperature = hparams["temperature"]
    subset = retain_subset(np.asarray(data.retain), hparams["retain_fraction"], config.seed)
    if len(data.forget) == 0:
        raise ValueError("bad_teacher needs a non-empty forget set")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        incompetent = freeze(rebuild(original), config)
    objective = BadTeacherObjective(frozen_copy(original, config), incompetent, np.array(data.forget), temperature)
    indices = np.concatenate([np.asarray(data.forget), subset])
    return Plan(copy.deepcopy(original), objective, indices, loop="mixed")


register(Method(
    name="bad_teacher", plan=plan_bad_teacher, uses_forget=True,
    defaults={"temperature": 1.0, "retain_fraction": 0.3},
    search={"temperature": "1 (fixed)", "retain_fraction": "0.3 (SSD repo)", "lr": "[0.01, 0.1]"},
    summary="Bad Teacher: distil the Original on retain rows and a random network on forget rows (AAAI 2023)",
    checks={"temperature": positive, "retain_fraction": fraction},
))
