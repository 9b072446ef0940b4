"""NoT (weight negation; Khalil et al., CVPR 2025, the first author of CoUn): negate the first
layer's weights, then fine-tune on the retain set.

    theta_l <- -theta_l   for the negated parameters l, then FT: minimise CE(h(f(x_r)), y_r)

Negated parameters (the paper's parameter indices, as CoUn's appendix states them):
  * CNNs (ResNet-18, VGG-16-BN, SmallCNN): the first convolution's weight, ``first_layer().weight``
    (parameter index 0; these convolutions have no bias);
  * the small-data ViT: the positional embedding ``pos_embedding`` (index 0) and the patch
    projection's weight ``patch_embed.proj.weight`` = ``first_layer().weight`` (index 4; its bias
    is not negated);
  * any other model without ``first_layer()``: its first parameter (index 0).
The fine-tuning is FT's objective (:class:`~coun_fast.unlearn.coun.CoUnObjective` with lam = 0),
so ``not+cl`` is CoUn started from the negated model. The forget set is never read.

Hyperparameters: none besides the optimiser's; CoUn protocol: SGD, 50 epochs, cosine to 1e-4,
lr in [0.01, 0.1].

Source: the CoUn paper's description of NoT (its appendix), no public reference code; see
coun_fast/models (``first_layer`` docstrings) for each model's first layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import Method, Plan, RetainData, register
from coun_fast.unlearn.coun import CoUnObjective


def negated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters NoT negates in ``model`` (see the module docstring)."""
    first_layer = getattr(model, "first_layer", None)
    if first_layer is None:
        return [next(model.parameters())]
    chosen = [first_layer().weight]
    position = getattr(model, "pos_embedding", None)
    if isinstance(position, nn.Parameter):
        chosen.insert(0, position)
    return chosen


@torch.no_grad()
def negate(model: nn.Module) -> nn.Module:
    """Negate ``model``'s NoT parameters in place; returns ``model``."""
    for p in negated_parameters(model):
        p.neg_()
    return model


def plan_not(original: nn.Module, data: RetainData, config: TrainConfig, hparams: dict) -> Plan:
    """NoT: a copy of ``original`` (left untouched) with its first layer negated, then FT on retain."""
    if not isinstance(data, RetainData) or hasattr(data, "forget"):
        raise TypeError("NoT takes RetainData (the retain set only); it never sees the forget set")
    return Plan(negate(copy.deepcopy(original)), CoUnObjective(lam=0.0), data.retain)


register(Method(
    name="not", plan=plan_not, uses_forget=False, defaults={}, search={"lr": "[0.01, 0.1]"},
    summary="NoT: negate the first layer's weights (ViT: + position embedding), then FT on the retain set",
    distributed=True,
))
