"""RL (random labels): relabel the forget set at random and fine-tune on retain + forget.

Starting from a copy of the Original, loop over the sorted union D_r ∪ D_f (shuffled batches
mixing both) and minimise the mean cross-entropy over the batch, where every forget row's label
is replaced by one drawn uniformly from the C classes (the true label included, as in SalUn's RL),
fresh at every step:

    L = mean_i CE(h(f(x_i)), y~_i),   y~_i ~ U{0..C-1} if i in D_f else y_i

The draws use torch's global generator on the batch's device, which :func:`coun_fast.train.fit`
seeds at every epoch, so runs are reproducible. This follows the CIFAR-100/TinyImageNet variant
of the OPTML code (a shuffled union); its CIFAR-10 variant (one pass over D_f, then one over D_r)
is not reproduced. ``retain_rows`` tells the CL plug-in which rows are retain samples (``rl+cl``
adds its term on those only).

Hyperparameters: none besides the optimiser's (CoUn protocol: SGD, 50 epochs, cosine to 1e-4,
lr in [0.01, 0.1]). :class:`RandomLabelObjective` is also SalUn's objective.

Sources: /work/shared/research/unlearning_anchors.md section 3 (RL row, [S1k][S28]).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import ForgetData, Method, Plan, is_member, register, whole


class RandomLabelObjective:
    """Cross-entropy with forget rows relabelled uniformly at random over ``num_classes``.

    Parts: ``ce`` (on the labels trained on) and ``logits`` (accuracy is read against the true
    labels).
    """

    recipe = "train"
    extra_forward_views = 0

    def __init__(self, forget: np.ndarray, num_classes: int) -> None:
        self.forget = np.array(forget, dtype=np.int64)  # a writable copy (torch warns on read-only arrays)
        self.num_classes = whole(num_classes, "num_classes", minimum=2)

    def retain_rows(self, batch: Batch) -> Tensor:
        """Boolean (N,): which rows of ``batch`` are retain samples."""
        return ~is_member(batch.indices, self.forget)

    def relabel(self, batch: Batch) -> Tensor:
        """The labels to train on: true labels on retain rows, fresh uniform draws on forget rows."""
        labels = batch.labels
        drawn = torch.randint(0, self.num_classes, labels.shape, device=labels.device, dtype=labels.dtype)
        return torch.where(self.retain_rows(batch), labels, drawn)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model.forward_head(model.forward_features(batch.inputs))
        ce = F.cross_entropy(logits, self.relabel(batch))
        return ce, {"ce": ce.detach(), "logits": logits.detach()}


def union_indices(data: ForgetData) -> np.ndarray:
    """The sorted union of the retain and forget indices (the loop of RL and SalUn)."""
    return np.union1d(data.retain, data.forget).astype(np.int64)


def plan_rl(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """RL from a copy of ``original`` (left untouched) over retain ∪ forget."""
    objective = RandomLabelObjective(data.forget, data.train.num_classes)
    return Plan(copy.deepcopy(original), objective, union_indices(data), loop="mixed")


register(Method(
    name="rl", plan=plan_rl, uses_forget=True, defaults={}, search={"lr": "[0.01, 0.1]"},
    summary="RL: fine-tune on retain + forget with forget labels drawn uniformly at random each step",
))
