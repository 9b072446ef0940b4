"""NegGrad+ (Kurmanji et al., NeurIPS 2023, "Towards Unbounded Machine Unlearning").

Starting from a copy of the Original, loop over the retain set D_r; with each retain batch draw
the next forget batch (a :func:`~coun_fast.unlearn.base.forget_stream` cycling D_f, the run's batch
size) and minimise

    L = beta * CE(h(f(x_r)), y_r) - (1 - beta) * CE(h(f(x_f)), y_f)

as the authors' code (meghdadk/SCRUB, ``thirdparty/repdistiller/helper/loops.py`` ``train_negrad``).
Both batches pass through the model in train mode, separately (retain first). The forget images
are counted in the cost as ``side_trained_images``. When ``beta == 1`` the forget term has weight
zero and is skipped entirely (no forget batch, no forward pass), so NegGrad+ with beta = 1 is
exactly FT without augmentation. The batches are not augmented by default (the authors' notebooks
load every split with ``augment=False``); ``augment=True`` gives the ``train`` recipe.

Hyperparameters: ``beta`` in (0, 1], default 0.99; CoUn's search range [0.95, 0.9999]; ``augment``.
Optimiser: the run's (the CoUn paper re-ran NegGrad+ under its protocol: SGD, 50 epochs, cosine to
1e-4, lr in [0.01, 0.1]).
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import (BatchStream, ForgetData, Method, Plan, augment_recipe, boolean, forget_stream,
                                    fraction, register)


class NegGradPlusObjective:
    """``beta * CE(retain) - (1 - beta) * CE(forget)``; ``forget`` supplies a forget batch per step
    (it may be None only when ``beta == 1``). Parts: ``ce_retain``, ``ce_forget`` (absent when
    beta = 1) and ``logits`` (the retain batch's)."""

    extra_forward_views = 0

    def __init__(self, beta: float, forget: BatchStream | None, recipe: str = "eval") -> None:
        self.beta = fraction(beta, "beta")
        self.recipe = recipe
        if self.beta < 1 and forget is None:
            raise ValueError("NegGrad+ with beta < 1 needs a stream of forget batches")
        self.forget = forget
        self.side_trained_images = 0

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model.forward_head(model.forward_features(batch.inputs))
        ce_retain = F.cross_entropy(logits, batch.labels)
        parts = {"ce_retain": ce_retain.detach(), "logits": logits.detach()}
        if self.beta == 1:
            return ce_retain, parts
        forget = self.forget.next()
        self.side_trained_images += len(forget.labels)
        ce_forget = F.cross_entropy(model.forward_head(model.forward_features(forget.inputs)), forget.labels)
        parts["ce_forget"] = ce_forget.detach()
        return self.beta * ce_retain - (1 - self.beta) * ce_forget, parts


def plan_neggrad_plus(original: nn.Module, data: ForgetData, config: TrainConfig, hparams: dict) -> Plan:
    """NegGrad+ from a copy of ``original`` (left untouched): loop over retain, a forget batch per step."""
    beta = hparams["beta"]
    recipe = augment_recipe(hparams["augment"])
    stream = forget_stream(data, config, recipe) if beta < 1 else None
    return Plan(copy.deepcopy(original), NegGradPlusObjective(beta, stream, recipe), data.retain)


register(Method(
    name="neggrad_plus", plan=plan_neggrad_plus, uses_forget=True, defaults={"beta": 0.99, "augment": False},
    search={"beta": "[0.95, 0.9999]", "augment": "false (authors)", "lr": "[0.01, 0.1]"},
    summary="NegGrad+: beta x CE on retain batches - (1 - beta) x CE on forget batches",
    distributed=True,
    checks={"beta": fraction, "augment": boolean},
))
