"""ℓ1-sparse (Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning").

Starting from a copy of the Original, fine-tune on the retain set D_r with

    L = CE(h(f(x_r)), y_r) + gamma_t * sum_p |p|       (every parameter element, BN and biases too)

    gamma_t = gamma * (1 - t / l1_epochs)   for epoch t < l1_epochs (0-based), else 0

a penalty decaying linearly over the first ``l1_epochs`` epochs and switched off afterwards (CoUn
applies it in the first 4 of its 50 epochs). The epoch is read through fit's ``start_epoch``
hook; epochs without penalty are plain FT.

As the authors' code (OPTML-Group/Unlearn-Saliency ``Classification/unlearn/FT.py`` ``FT_iter``,
L44-90: ``alpha * (1 - epoch / (unlearn_epochs - no_l1_epochs))``, then 0; ``l1_regularization``,
L13-17, the 1-norm of all parameters), with ``l1_epochs`` their ``unlearn_epochs - no_l1_epochs``.

Hyperparameters: ``gamma`` >= 0, default 5e-4 (CoUn's search range [1e-4, 1e-1]; the README's
``--alpha`` is a placeholder and 0.2 would wipe the weights out); ``l1_epochs`` a whole number
>= 0, default 4 (CoUn protocol). Optimiser: the run's (the CoUn protocol: SGD, 50 epochs, cosine
to 1e-4, lr in [0.01, 0.1]); ``protocol="authors"`` gives Unlearn-Sparse's README run (10 epochs at
lr 0.01, the OPTML defaults).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import OPTML_PROTOCOL, Method, Plan, RetainData, non_negative, register, whole


class L1SparseObjective:
    """CE plus ``gamma_t`` x the ℓ1 norm of all parameters. Parts: ``ce``, ``l1`` (the penalty
    ``gamma_t * sum|p|`` added to the loss, 0 once the schedule has ended) and ``logits``."""

    recipe = "train"
    extra_forward_views = 0
    start_epoch_synchronized = True  # start_epoch only sets gamma_t: the run may use several ranks

    def __init__(self, gamma: float, l1_epochs: int) -> None:
        self.gamma = non_negative(gamma, "gamma")
        self.l1_epochs = whole(l1_epochs, "l1_epochs")
        self.gamma_t = self.gamma_at(0)

    def gamma_at(self, epoch: int) -> float:
        """The penalty weight of 0-based ``epoch``."""
        return self.gamma * (1 - epoch / self.l1_epochs) if epoch < self.l1_epochs else 0.0

    def start_epoch(self, model: nn.Module, optimizer, epoch: int) -> None:
        self.gamma_t = self.gamma_at(epoch)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model.forward_head(model.forward_features(batch.inputs))
        ce = F.cross_entropy(logits, batch.labels)
        parts = {"ce": ce.detach(), "logits": logits.detach()}
        if self.gamma_t == 0:
            parts["l1"] = torch.zeros((), device=ce.device)
            return ce, parts
        penalty = self.gamma_t * sum(p.abs().sum() for p in model.parameters())
        parts["l1"] = penalty.detach()
        return ce + penalty, parts


def plan_l1_sparse(original: nn.Module, data: RetainData, config: TrainConfig, hparams: dict) -> Plan:
    """ℓ1-sparse from a copy of ``original`` (left untouched) on the retain set."""
    objective = L1SparseObjective(hparams["gamma"], hparams["l1_epochs"])
    return Plan(copy.deepcopy(original), objective, data.retain)


register(Method(
    name="l1_sparse", plan=plan_l1_sparse, uses_forget=False, defaults={"gamma": 5e-4, "l1_epochs": 4},
    search={"gamma": "[1e-4, 1e-1]", "l1_epochs": "4 (fixed in the CoUn protocol)", "lr": "[0.01, 0.1]"},
    summary="l1-sparse: FT on the retain set + gamma_t x sum|theta|, gamma_t decaying to 0 over the first l1_epochs",
    checks={"gamma": non_negative, "l1_epochs": whole}, distributed=True,
    protocol=OPTML_PROTOCOL,
    protocol_source="OPTML-Group/Unlearn-Sparse README.MD L86 (--unlearn FT_prune --unlearn_lr 0.01 "
                    "--unlearn_epochs 10); their arg_parser defaults otherwise",
))
