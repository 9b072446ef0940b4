"""NegGrad+ (Kurmanji et al., NeurIPS 2023, "Towards Unbounded Machine Unlearning").

Starting from a copy of the Original, loop over the retain set D_r; with each retain batch draw
the next forget batch (a :func:`~coun_fast.unlearn.base.forget_stream` cycling D_f, ``train``
recipe, the run's batch size) and minimise

    L = beta * CE(h(f(x_r)), y_r) - (1 - beta) * CE(h(f(x_f)), y_f)

Both batches pass through the model in train mode, separately (retain first). The forget images
are counted in the cost as ``side_trained_images``. When ``beta == 1`` the forget term has weight
zero and is skipped entirely (no forget batch, no forward pass), so NegGrad+ with beta = 1 is
exactly FT.

Hyperparameters: ``beta`` in (0, 1], default 0.99; CoUn's search range [0.95, 0.9999] (the
paper's loss is not printed; this is the SCRUB code's form). Optimiser as in the CoUn protocol:
SGD, 50 epochs, cosine to 1e-4, lr in [0.01, 0.1].

Sources: /work/shared/research/unlearning_anchors.md section 3 (NegGrad+ row, [S6b][S10d]);
/work/shared/research/coun_paper.md section 5.
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.data.loader import Batch
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import BatchStream, ForgetData, Method, Plan, forget_stream, fraction, register


class NegGradPlusObjective:
    """``beta * CE(retain) - (1 - beta) * CE(forget)``; ``forget`` supplies a forget batch per step
    (it may be None only when ``beta == 1``). Parts: ``ce_retain``, ``ce_forget`` (absent when
    beta = 1) and ``logits`` (the retain batch's)."""

    recipe = "train"
    extra_forward_views = 0

    def __init__(self, beta: float, forget: BatchStream | None) -> None:
        self.beta = fraction(beta, "beta")
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
    stream = forget_stream(data, config) if beta < 1 else None
    return Plan(copy.deepcopy(original), NegGradPlusObjective(beta, stream), data.retain)


register(Method(
    name="neggrad_plus", plan=plan_neggrad_plus, uses_forget=True, defaults={"beta": 0.99},
    search={"beta": "[0.95, 0.9999]", "lr": "[0.01, 0.1]"},
    summary="NegGrad+: beta x CE on retain batches - (1 - beta) x CE on forget batches",
    checks={"beta": fraction},
))
