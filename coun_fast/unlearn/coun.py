"""CoUn (Khalil, Setayesh, Li; NeurIPS 2025) and FT, its lambda = 0 special case.

Starting from the Original model, fine-tune on retain data only with

    L = CE(h(f(x1)), y) + lam * L_CL(f(x1), f(x2))

where x1, x2 are two independent ``train``-recipe views (random crop with 4-pixel zero padding,
horizontal flip, normalize) of the same retain batch, f is ``model.forward_features`` (the pooled
penultimate features; no projection head), h is ``model.forward_head`` and L_CL is the symmetric
cross-view InfoNCE of :func:`coun_fast.functional.cross_view_info_nce` at temperature tau (the two
directions summed, as in the paper's code). Both views pass through the model in train mode, with
gradients through both. The forget set is never read: the method receives a
:class:`~coun_fast.unlearn.base.RetainData`, which holds no forget indices.

Under ``torchrun`` (K ranks, global batch B, each rank holding B/K pairs), the hyperparameter
``cl_scope`` says what the contrastive term compares:

* ``"global"`` (the default): each rank's anchors against the candidates of all ranks
  (``cross_view_info_nce(..., gather_distributed=True)``): the loss of the whole global batch of B
  pairs, so K ranks train exactly as one process with batch B (the paper's loss at batch B);
* ``"rank"``: each rank's B/K pairs among themselves (fewer negatives, no gather): the paper's loss
  of a batch of B/K, as if K processes each trained with batch B/K and averaged their gradients.

In one process both are the same loss. With BatchNorm, ``sync_batchnorm`` (see
:class:`~coun_fast.train.TrainConfig`) decides whether the two views are normalized with the
statistics of their global batch (each view separately, as in one process) or of each rank's rows.

Optimiser (the paper's): SGD, momentum 0.9, weight decay 5e-4, cosine decay to 1e-4 over the
epochs (preset ``paper_unlearn``); lr searched in [0.01, 0.1], lam in [0.1, 6], tau in (0, 0.3]
with tau = 0.1 best in the paper's ablation.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.functional import cross_view_info_nce
from coun_fast.train import GraphCapturable, TrainConfig
from coun_fast.unlearn.base import (OPTML_PROTOCOL, Method, Plan, RetainData, choice, non_negative, one_of, positive,
                                    register)

CL_SCOPES = ("global", "rank")
"""What CoUn's contrastive term compares under torchrun: the global batch, or each rank's rows."""


def coun_objective(
    model: nn.Module, x1: Tensor, x2: Tensor | None, y: Tensor, *, lam: float, temperature: float,
    gather_distributed: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CoUn's loss on one retain batch.

    Args:
        model: timm-style classifier, in train mode.
        x1, x2: the two views (N, C, H, W); ``x2`` may be None when ``lam == 0`` (it is not used).
        y: labels (N,).
        lam: weight of the contrastive term, >= 0.
        temperature: tau > 0.
        gather_distributed: under a process group, compare this rank's anchors with the
            candidates of all ranks (``cl_scope="global"``); no effect in one process.

    Returns:
        ``(loss, parts)``: ``loss = ce + lam * cl`` and detached ``parts`` ``ce``, ``cl`` and
        ``logits`` (view 1's).
    """
    lam = non_negative(lam, "lam")
    temperature = positive(temperature, "temperature")
    if lam > 0 and x2 is None:
        raise ValueError("x2 (the second view) is needed when lam > 0")
    f1 = model.forward_features(x1)
    logits = model.forward_head(f1)
    f2 = model.forward_features(x2) if lam > 0 else None
    with torch.profiler.record_function("loss"):
        ce = F.cross_entropy(logits, y)
        parts = {"ce": ce.detach(), "logits": logits.detach()}
        if lam == 0:
            parts["cl"] = torch.zeros((), device=ce.device)
            return ce, parts
        cl = cross_view_info_nce(f1, f2, temperature, gather_distributed=gather_distributed)
        parts["cl"] = cl.detach()
        return ce + lam * cl, parts


@dataclasses.dataclass
class CoUnObjective(GraphCapturable):
    """:func:`coun_objective` as a training objective (two views; one when ``lam == 0``);
    ``cl_scope`` (:data:`CL_SCOPES`): the contrastive term over the global batch or each rank's
    (see the module's docstring)."""

    lam: float = 1.0
    temperature: float = 0.1
    cl_scope: str = "global"

    def __post_init__(self) -> None:
        self.lam = non_negative(self.lam, "lam")
        self.temperature = positive(self.temperature, "temperature")
        self.cl_scope = choice(self.cl_scope, "cl_scope", CL_SCOPES)

    @property
    def recipe(self) -> str:
        return "two_view" if self.lam > 0 else "train"

    @property
    def extra_forward_views(self) -> int:
        return 1 if self.lam > 0 else 0

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x1, x2 = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs, None)
        return coun_objective(model, x1, x2, batch.labels, lam=self.lam, temperature=self.temperature,
                              gather_distributed=self.cl_scope == "global")


def plan_coun(original: nn.Module, data: RetainData, config: TrainConfig, hparams: dict) -> Plan:
    """CoUn from a copy of ``original`` (left untouched) on the retain set; see the module docstring."""
    if not isinstance(data, RetainData) or hasattr(data, "forget"):
        raise TypeError("CoUn and FT take RetainData (the retain set only); they never see the forget set")
    objective = CoUnObjective(hparams["lam"], hparams["temperature"], hparams.get("cl_scope", "global"))
    return Plan(copy.deepcopy(original), objective, data.retain)


def plan_ft(original: nn.Module, data: RetainData, config: TrainConfig, hparams: dict) -> Plan:
    """FT: fine-tune on the retain set with cross-entropy alone (CoUn with lam = 0)."""
    return plan_coun(original, data, config, {"lam": 0.0, "temperature": 0.1})


register(Method(
    name="coun", plan=plan_coun, uses_forget=False, defaults={"lam": 1.0, "temperature": 0.1, "cl_scope": "global"},
    search={"lam": "[0.1, 6]", "temperature": "(0, 0.3], 0.1 best", "lr": "[0.01, 0.1]"},
    summary="CoUn: CE on the retain set + lam x cross-view InfoNCE between two views (NeurIPS 2025)",
    checks={"lam": non_negative, "temperature": positive, "cl_scope": one_of(CL_SCOPES)}, distributed=True,
    cl_refused="'coun' has the contrastive term already (ft+cl is coun)",
))
register(Method(
    name="ft", plan=plan_ft, uses_forget=False, defaults={}, search={"lr": "[0.01, 0.1]"},
    summary="FT: fine-tune on the retain set with cross-entropy (CoUn with lam = 0)", distributed=True,
    protocol=OPTML_PROTOCOL,
    protocol_source="OPTML-Group/Unlearn-Sparse README.MD L70 (--unlearn FT --unlearn_lr 0.01 --unlearn_epochs 10); "
                    "their arg_parser defaults otherwise",
))
