"""CU, Contrastive Unlearning (Lee, Zhang, Yang, Lou, Xiong; IJCAI 2025; arXiv 2401.10458).

The loop runs over forget batches (anchors). Beside each forget batch (x_f, y_f) a retain batch
(x_r, y_r) is drawn from a shuffled stream and cut to the forget batch's size; both go through the
model in ONE forward pass (so batch norm sees the mixed batch, as in the authors' code). With z the
L2-normalised penultimate features (``forward_features``) and s_ia = z_i . z_a / tau, for forget
anchor i the retain batch splits into P(i) (same label) and N(i) (other labels), and

    L_UL(i) = -mean_{a in N(i)} s_ia + log sum_{p in P(i)} exp(s_ip)

(the paper's form: pull the anchor toward other classes' retain embeddings, push it away from its
own class's). Guards: an anchor with empty P(i) (always so in class unlearning; frequent with many
classes) gets 0 for the push term (the authors' later code: the denominator becomes 1), so it is
still pulled; an anchor with empty N(i) is left out of the mean (0 when every anchor is). Loss:

    L = scale * mean_i L_UL(i) + CE(h(f(x_r)), y_r),

gradients flowing into both the forget and the retain embeddings.

omega: the authors take omega SGD steps on each forget batch in a row, each with a new retain batch.
The one training loop takes one step per loop batch, so here the loop's indices are the forget set
repeated omega times: the same number of steps per epoch and of steps per forget sample, but the
repeats of a sample are spread over the epoch in shuffled batches (a batch may hold a sample twice).

Stopping rule (the authors' code, checked after every epoch; ``early_stop=True``): class unlearning
(the epoch's row has ``forgotten_class_test_acc``, from a per-epoch evaluation) stops once that is
<= 100 / C; sample unlearning stops once the forget accuracy (``forget_acc`` from a per-epoch
evaluation such as the experiment runner's, else the loop's running ``acc`` on the augmented forget
batches, train mode) is <= the threshold: ``stop_acc`` when given (%, e.g. the Original's test
accuracy), else the row's ``test_acc`` (the runner's per-epoch test accuracy); without either it
never fires.

Deviations from the authors' code (documented choices): the embedding is the penultimate feature,
L2-normalised (their models have a 128-d SupCon-style head whose normalised output the classifier
reads; ours have no such head); the paper's weight 1 on the push term instead of the code's
B/|N(i)|; retain batches are shuffled (theirs reuse the first omega batches, a bug); the ``train``
augmentation recipe (they use none); the protocol's optimiser (theirs: SGD lr 1e-3, no decay).

Hyperparameters: ``scale`` (lambda_UL; default 1; CoUn's range [0.1, 2]; code default 3),
``temperature`` (default 0.1; CoUn's range (0, 0.2]; code default 0.7), ``omega`` (default 4, the
code's; CoUn's range [1, 5]), ``early_stop`` (default True), ``stop_acc`` (default None).
Sources: /work/shared/research/contrastive_unlearning.md §1.2-1.7; coun_paper.md §5.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import (BatchStream, ForgetData, Method, Plan, at_least_one, boolean, non_negative, positive,
                                    register)


def contrastive_unlearning_loss(z_forget: Tensor, y_forget: Tensor, z_retain: Tensor, y_retain: Tensor,
                                temperature: float) -> tuple[Tensor, Tensor]:
    """``mean_i L_UL(i)`` over the forget anchors that have at least one other-class retain sample.

    Args:
        z_forget, z_retain: (M, D) and (B, D) features (L2-normalised here, in float32 at least).
        y_forget, y_retain: their labels.
        temperature: tau > 0.

    Returns:
        ``(loss, used)``: the scalar loss (0 when no anchor is usable) and the (M,) bool mask of
        the anchors in the mean.
    """
    temperature = positive(temperature, "temperature")
    dtype = torch.float64 if z_forget.dtype == torch.float64 else torch.float32
    zf = F.normalize(z_forget.to(dtype), dim=1)
    zr = F.normalize(z_retain.to(dtype), dim=1)
    s = zf @ zr.T / temperature
    same = y_forget[:, None] == y_retain[None, :]
    other = ~same
    has_pos, used = same.any(1), other.any(1)
    pull = -(s * other).sum(1) / other.sum(1).clamp(min=1)
    # log sum over P(i); rows without a positive get 0 (and no NaN gradient through an all -inf row)
    masked = torch.where(has_pos[:, None], s.masked_fill(other, float("-inf")), torch.zeros_like(s))
    push = torch.logsumexp(masked, dim=1) * has_pos
    loss = ((pull + push) * used).sum() / used.sum().clamp(min=1)
    return loss, used


def percentage_or_none(value: object, name: str) -> float | None:
    """None, or ``value`` as a percentage in [0, 100]; a ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    value = non_negative(value, name)
    if value > 100:
        raise ValueError(f"{name} is a percentage in [0, 100]; got {value!r}")
    return value


@dataclasses.dataclass
class ContrastiveUnlearningObjective:
    """CU's loss on a forget batch plus a retain batch from ``retain_stream``; see the module docstring."""

    retain_stream: BatchStream
    scale: float = 1.0
    temperature: float = 0.1
    num_classes: int = 10
    early_stop: bool = True
    stop_acc: float | None = None
    recipe: str = "train"
    extra_forward_views: int = 0
    side_trained_images: int = 0

    def __post_init__(self) -> None:
        self.scale = non_negative(self.scale, "scale")
        self.temperature = positive(self.temperature, "temperature")
        self.early_stop = boolean(self.early_stop, "early_stop")
        self.stop_acc = percentage_or_none(self.stop_acc, "stop_acc")

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        m = len(batch.labels)
        retain = self.retain_stream.next()
        x_r, y_r = retain.inputs[:m], retain.labels[:m]
        self.side_trained_images += len(y_r)
        features = model.forward_features(torch.cat([batch.inputs, x_r]))
        logits = model.forward_head(features)
        ul, used = contrastive_unlearning_loss(features[:m], batch.labels, features[m:], y_r, self.temperature)
        ce = F.cross_entropy(logits[m:], y_r)
        parts = {"ul": ul.detach(), "ce": ce.detach(), "anchors": used.float().mean(), "logits": logits[:m].detach()}
        return self.scale * ul + ce, parts

    def should_stop(self, epoch: int, row: dict) -> bool:
        if not self.early_stop:
            return False
        if "forgotten_class_test_acc" in row:  # class unlearning: the forgotten class at chance level
            return row["forgotten_class_test_acc"] <= 100.0 / self.num_classes
        forget = row.get("forget_acc", row.get("acc"))
        threshold = self.stop_acc if self.stop_acc is not None else row.get("test_acc")
        if forget is None or threshold is None or not math.isfinite(forget):
            return False
        return forget <= threshold


def plan_cu(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """CU from a copy of ``original`` (left untouched); see the module docstring."""
    omega = hparams["omega"]
    if len(data.forget) == 0:
        raise ValueError("cu needs a non-empty forget set")
    num_classes = getattr(original, "num_classes", None) or len(data.train.classes)
    objective = ContrastiveUnlearningObjective(
        None, hparams["scale"], hparams["temperature"], num_classes, hparams["early_stop"], hparams["stop_acc"])
    objective.retain_stream = BatchStream(data.train, np.asarray(data.retain), data.normalization, config, "train",
                                          seed_offset=4)
    return Plan(copy.deepcopy(original), objective, np.tile(np.asarray(data.forget), omega), loop="forget")


register(Method(
    name="cu", plan=plan_cu, uses_forget=True,
    defaults={"scale": 1.0, "temperature": 0.1, "omega": 4, "early_stop": True, "stop_acc": None},
    search={"scale": "[0.1, 2]", "temperature": "(0, 0.2]", "omega": "[1, 5]", "lr": "[0.01, 0.1]"},
    summary="CU: pull forget embeddings toward other classes' retain embeddings, CE on retain (IJCAI 2025)",
    checks={"scale": non_negative, "temperature": positive, "omega": at_least_one, "early_stop": boolean,
            "stop_acc": percentage_or_none},
))
