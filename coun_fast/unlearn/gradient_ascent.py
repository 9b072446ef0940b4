"""GA (gradient ascent, a.k.a. NegGrad): push the Original away from the forget set.

Starting from a copy of the Original, loop over the forget set D_f only and minimise

    L = -CE(h(f(x_f)), y_f)

i.e. ascend the forget cross-entropy, with the run's optimiser (the CoUn protocol: SGD, momentum
0.9, weight decay 5e-4, cosine decay to 1e-4 over 50 epochs). The model stays in train mode (BN
statistics update), as in the OPTML reference code. The loss is unbounded below: GA is very
sensitive to the learning rate.

As the authors' code (OPTML-Group/Unlearn-Saliency ``Classification/unlearn/GA.py``, L45-100:
``loss = -criterion(output, target)`` over the forget loader, train mode, the training transform).

Hyperparameters: none besides the optimiser's. Search range of lr: [1e-5, 0.1] (Unlearn-Sparse's
grid); ``protocol="authors"`` gives their README's run (5 epochs at lr 1e-4, the OPTML defaults
otherwise). With ``ga+cl`` the CL plug-in adds its term on a retain batch drawn beside each forget
batch.
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import OPTML_PROTOCOL, ForgetData, Method, Plan, register


class GradientAscentObjective:
    """``-CE`` on a forget batch; parts ``ce`` (the forget cross-entropy) and ``logits``."""

    recipe = "train"
    extra_forward_views = 0

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model.forward_head(model.forward_features(batch.inputs))
        ce = F.cross_entropy(logits, batch.labels)
        return -ce, {"ce": ce.detach(), "logits": logits.detach()}


def plan_ga(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """GA from a copy of ``original`` (left untouched) over ``data.forget``."""
    return Plan(copy.deepcopy(original), GradientAscentObjective(), data.forget, loop="forget")


register(Method(
    name="ga", plan=plan_ga, uses_forget=True, defaults={}, search={"lr": "[1e-5, 0.1] (Unlearn-Sparse grid)"},
    summary="GA: gradient ascent on the forget set (minimise -CE on forget batches)",
    distributed=True,
    protocol={**OPTML_PROTOCOL, "lr": 1e-4, "epochs": 5},
    protocol_source="OPTML-Group/Unlearn-Sparse README.MD L74 (--unlearn GA --unlearn_lr 0.0001 --unlearn_epochs 5); "
                    "their arg_parser defaults otherwise",
))
